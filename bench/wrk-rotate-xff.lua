-- wrk script: GET <path> with X-Forwarded-For rotating over a file of client addresses.
-- Usage: wrk -s bench/wrk-rotate-xff.lua URL -- ADDRESSES_FILE PATH
local addresses = {}
local i = 1
local path = "/v1/locate"

function init(args)
  for line in io.lines(args[1]) do
    addresses[#addresses + 1] = line
  end
  if args[2] then path = args[2] end
  -- Each thread starts at a different place in the list.
  i = math.random(#addresses)
end

function request()
  i = i % #addresses + 1
  return wrk.format("GET", path, { ["X-Forwarded-For"] = addresses[i] })
end

function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), errors))
end
