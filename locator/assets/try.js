// The "try it" page: joins a room through the Locus client library and shows what it
// does. Everything about failover is the library's; this file only renders its events.
import { LocusClient } from "./locus-client.js";

const $ = (id) => document.getElementById(id);
const client = new LocusClient({ locators: [location.origin] });
let session = null;
let myName = "";

function text(id, value) {
  $(id).textContent = value === undefined || value === null || value === "" ? "–" : String(value);
}

function line(className, parts) {
  const li = document.createElement("li");
  li.className = className;
  for (const [cls, value] of parts) {
    const span = document.createElement("span");
    if (cls) span.className = cls;
    span.textContent = value;
    li.append(span);
  }
  $("log").append(li);
  $("log").scrollTop = $("log").scrollHeight;
}

function setState(state, detail = {}) {
  const el = $("state");
  el.textContent = state;
  el.dataset.state = state;
  el.className = `state state-${state}`;
  if (session) {
    text("edge", session.edge?.id);
    text("region", session.region);
    text("session", session.id);
    const a = session.answer;
    text("why", a ? `${a.reason}${a.fallback ? " (fallback)" : ""}` : "");
  }
  let why = detail.reason ?? "";
  if (state === "reconnecting" && detail.attempt) why += ` (attempt ${detail.attempt}, next in ${detail.retryInMs} ms)`;
  if (state === "moved" && detail.movedTo) why = `moved to edge ${detail.movedTo.edge}`;
  text("detail", why);
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${state}${why ? `: ${why}` : ""}`;
  $("history").append(li);
  $("history").scrollTop = $("history").scrollHeight;
  const live = state === "connected" || state === "reconnecting" || state === "moved" || state === "connecting";
  $("msg").disabled = !live;
  $("send").disabled = !live;
  $("leave").disabled = !live;
  $("join").disabled = live;
}

function renderPeople(participants) {
  const ul = $("people");
  ul.replaceChildren(...participants.map((p) => {
    const li = document.createElement("li");
    li.textContent = p === session?.you ? `${p.slice(0, 8)} (you)` : p.slice(0, 8);
    return li;
  }));
  $("count").textContent = String(participants.length);
}

$("join-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const room = $("room").value.trim();
  if (!room) return;
  myName = $("name").value.trim() || "guest";
  $("error").hidden = true;
  setState("connecting", { reason: `asking ${location.host} for room "${room}"` });
  $("join").disabled = true;
  try {
    session = await client.join({ key: room });
  } catch (error) {
    session = null;
    $("error").textContent = `Could not join: ${error.message}`;
    $("error").hidden = false;
    setState("closed", { reason: error.message });
    return;
  }
  const url = new URL(location.href);
  url.searchParams.set("room", room);
  history.replaceState(null, "", url);
  session.on("state", (state, detail) => {
    setState(state, detail);
    if (state === "ended" || state === "closed") renderPeople([]);
  });
  session.on("presence", renderPeople);
  session.on("message", (from, data) => {
    let name = from ? from.slice(0, 8) : "someone";
    let body = typeof data === "string" ? data : `(${data.byteLength} bytes)`;
    try {
      const m = JSON.parse(body);
      if (m && typeof m.text === "string") {
        body = m.text;
        if (typeof m.name === "string" && m.name) name = m.name;
      }
    } catch {
      // plain text from another kind of client
    }
    line("", [["who", name], ["", body]]);
  });
  session.on("dropped", (messages) => {
    for (const m of messages) line("sys", [["", `not sent (${m.reason}): ${String(m.data).slice(0, 80)}`]]);
  });
  setState(session.state, { reason: "joined the room" });
  renderPeople(session.participants);
});

$("leave").addEventListener("click", () => {
  session?.leave();
});

$("chat-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const value = $("msg").value;
  if (!value || !session) return;
  const queued = session.state !== "connected";
  if (session.send(JSON.stringify({ name: myName, text: value }))) {
    line(queued ? "sys" : "", [["who", `${myName} (you)`], ["", queued ? `${value} (queued until reconnected)` : value]]);
  }
  $("msg").value = "";
});

const preset = new URL(location.href).searchParams.get("room");
if (preset) $("room").value = preset;
