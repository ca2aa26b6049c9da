// The library's pure parts and its locator rules, without edges: back-off bounds, the
// message envelope, and locators tried in order (a dead address, a locator answering 503,
// then a real locator).

import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { backoffDelay, decodeMessage, encodeMessage, LocusClient } from "../dist/locus-client.js";
import WebSocket from "ws";
import { Topology, freePort } from "./harness.mjs";

test("backoff: full jitter under a doubling ceiling, never below the minimum", () => {
  const opts = { initialMs: 100, maxMs: 1000, minMs: 5 };
  assert.equal(backoffDelay(0, opts, () => 0.999), 99);
  assert.equal(backoffDelay(1, opts, () => 0.999), 199);
  assert.equal(backoffDelay(3, opts, () => 0.999), 799);
  assert.equal(backoffDelay(10, opts, () => 0.999), 999, "capped at maxMs");
  assert.equal(backoffDelay(100, opts, () => 0.5), 500, "no overflow for large attempts");
  assert.equal(backoffDelay(2, opts, () => 0), 5, "never below minMs");
});

test("envelope: text and binary round-trip with the sender; foreign frames have no sender", () => {
  assert.deepEqual(decodeMessage(encodeMessage("p1", "hi")), { from: "p1", data: "hi" });
  const bin = decodeMessage(encodeMessage("p2", new Uint8Array([9, 8, 7])));
  assert.equal(bin.from, "p2");
  assert.deepEqual([...new Uint8Array(bin.data)], [9, 8, 7]);
  assert.deepEqual(decodeMessage('{"lcm":1,broken'), { from: "", data: '{"lcm":1,broken' });
  assert.deepEqual(decodeMessage("plain"), { from: "", data: "plain" });
  const raw = new Uint8Array([1, 2]).buffer;
  assert.equal(decodeMessage(raw).from, "");
});

test("options are checked", () => {
  assert.throws(() => new LocusClient({ locators: [] }), /locators/);
  assert.throws(() => new LocusClient({ locators: ["http://x"], WebSocket: undefined, fetch: undefined }), /WebSocket/);
});

test("locators in the given order: a dead one and one answering 503 are passed over, with back-off between rounds", async (t) => {
  const topo = await Topology.start({ edges: ["us-east-1"] });
  t.after(() => topo.stop());
  let busyHits = 0;
  const busy = createServer((req, res) => {
    busyHits++;
    res.writeHead(503, { "content-type": "application/problem+json", "retry-after": "1" });
    res.end(JSON.stringify({ type: "no-edge", title: "Service unavailable", status: 503, detail: "busy" }));
  });
  await new Promise((r) => busy.listen(0, "127.0.0.1", r));
  t.after(() => busy.close());
  const dead = `http://127.0.0.1:${await freePort()}`;
  const busyUrl = `http://127.0.0.1:${busy.address().port}`;
  const waits = [];
  const c = new LocusClient({ locators: [dead, busyUrl, ...topo.locatorUrls], WebSocket, sleep: async (ms) => { waits.push(ms); } });
  const s = await c.join({ region: "us-east" });
  assert.equal(s.state, "connected");
  assert.equal(busyHits, 1, "the 503 locator was asked once, then the next one answered");
  assert.deepEqual(waits, [], "no back-off when a later locator of the round answers");
  s.leave();

  // Every locator failing: rounds with waits from the back-off (and Retry-After), then a clear error.
  const failing = new LocusClient({
    locators: [dead, busyUrl],
    WebSocket,
    joinTimeoutMs: 50,
    backoff: { initialMs: 10, maxMs: 20 },
    sleep: async (ms) => { waits.push(ms); },
  });
  await assert.rejects(failing.join({}), (e) => e.code === "locators-unavailable" && /busy/.test(e.message));
});

test("the try page embeds the library as built now (npm run page refreshes it)", async () => {
  const { readFileSync } = await import("node:fs");
  const { join } = await import("node:path");
  const { repoRoot } = await import("./harness.mjs");
  const built = readFileSync(new URL("../dist/locus-client.js", import.meta.url), "utf8");
  const embedded = readFileSync(join(repoRoot, "locator/assets/locus-client.js"), "utf8");
  assert.ok(built === embedded, "locator/assets/locus-client.js differs from a fresh build of clients/js: run `npm run page` in clients/js and commit it");
});

test("media in Node (no RTCPeerConnection): publish throws media-unavailable, a track listener hears `unavailable`, messages go on", async (t) => {
  const topo = await Topology.start({ edges: ["us-east-1"] });
  t.after(() => topo.stop());
  const c = new LocusClient({ locators: topo.locatorUrls, WebSocket });
  const a = await c.join({ key: "room-node-media", region: "us-east" });
  const b = await c.join({ key: "room-node-media", region: "us-east" });
  const media = [];
  a.on("media", (state, detail) => media.push([state, detail.reason]));
  a.on("track", () => assert.fail("no track without a peer connection"));
  assert.deepEqual(media.map((m) => m[0]), ["unavailable"]);
  assert.match(media[0][1], /RTCPeerConnection/);
  assert.throws(() => a.publish({ getTracks: () => [] }), (e) => e.code === "media-unavailable");
  assert.equal(a.peerConnection, null);
  const got = [];
  b.on("message", (from, data) => got.push([from, data]));
  a.send("still here");
  const { waitFor } = await import("./harness.mjs");
  await waitFor("b gets a's message", 5000, () => got.length === 1);
  assert.deepEqual(got, [[a.you, "still here"]]);
  a.leave();
  b.leave();
});

test("the declarations type-check in a Node project without the DOM lib (they bring the DOM types media needs)", async () => {
  const { mkdtempSync, writeFileSync, rmSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  const { execFileSync } = await import("node:child_process");
  const { fileURLToPath } = await import("node:url");
  const pkg = fileURLToPath(new URL("..", import.meta.url));
  const dir = mkdtempSync(join(tmpdir(), "locus-dts-"));
  try {
    writeFileSync(join(dir, "use.ts"), [
      `import { LocusClient, type Session } from ${JSON.stringify(join(pkg, "dist/locus-client.js"))};`,
      `import WebSocket from "ws";`,
      `const c = new LocusClient({ locators: ["http://127.0.0.1:1"], WebSocket: WebSocket as never });`,
      `export async function f(): Promise<Session> { const s = await c.join({ key: "k" }); s.on("track", (p: string, t) => void [p, t.kind]); return s; }`,
    ].join("\n"));
    writeFileSync(join(dir, "tsconfig.json"), JSON.stringify({
      compilerOptions: {
        target: "ES2022", module: "NodeNext", moduleResolution: "NodeNext", lib: ["ES2022"], types: ["node", "ws"],
        typeRoots: [join(pkg, "node_modules/@types")], baseUrl: pkg, paths: { ws: [join(pkg, "node_modules/@types/ws")] },
        strict: true, noEmit: true, skipLibCheck: false,
      },
      files: ["use.ts"],
    }));
    try {
      execFileSync(process.execPath, [join(pkg, "node_modules/typescript/bin/tsc"), "-p", dir], { stdio: "pipe" });
    } catch (error) {
      assert.fail(`tsc: ${error.stdout}${error.stderr}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
