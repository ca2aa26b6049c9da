// The "try it" page: joins a room through the Locus client library and shows what it
// does. Everything about failover is the library's; this file only renders its events.
import { LocusClient } from "./locus-client.js";

const $ = (id) => document.getElementById(id);
const client = new LocusClient({ locators: [location.origin] });
let session = null;
let myName = "";
/** The camera and microphone stream while it is on. */
let local = null;
/** Participant id -> its tile and the tracks shown in it. */
const tiles = new Map();
/** Participant id -> the name its chat messages carry. */
const names = new Map();
// For the browser console (and the browser tests): the current session.
window.locusTry = { get session() { return session; } };

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

function tile(key, label) {
  let t = tiles.get(key);
  if (!t) {
    const fig = document.createElement("figure");
    fig.className = "tile";
    fig.dataset.participant = key;
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    const caption = document.createElement("figcaption");
    fig.append(video, caption);
    $("tiles").append(fig);
    t = { fig, video, caption, tracks: new Set() };
    tiles.set(key, t);
  }
  t.caption.textContent = label;
  return t;
}

function dropTile(key) {
  const t = tiles.get(key);
  if (!t) return;
  t.video.srcObject = null;
  t.fig.remove();
  tiles.delete(key);
}

function labelOf(p) {
  return names.get(p) ?? p.slice(0, 8);
}

function onTrack(participant, track, stream) {
  const t = tile(participant, labelOf(participant));
  t.tracks.add(track);
  // The edge names each forwarded stream after its publisher, so audio and video share one.
  const shown = stream ?? new MediaStream([...t.tracks]);
  if (t.video.srcObject !== shown) t.video.srcObject = shown;
}

function onTrackEnded(participant, track) {
  const t = tiles.get(participant);
  if (!t) return;
  t.tracks.delete(track);
  if (t.tracks.size === 0) dropTile(participant);
}

async function toggleCamera() {
  if (!session) return;
  if (local) {
    session.unpublish(local);
    for (const track of local.getTracks()) track.stop();
    local = null;
    dropTile("local");
    $("camera").textContent = "Turn on camera and microphone";
    return;
  }
  $("camera").disabled = true;
  try {
    local = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 480 } });
    session.publish(local);
    const t = tile("local", `${myName} (you)`);
    t.video.muted = true;
    t.video.srcObject = local;
    $("camera").textContent = "Turn off camera and microphone";
  } catch (error) {
    local = null;
    note(`No camera or microphone: ${error.message}`);
  } finally {
    $("camera").disabled = !session || session.state === "ended" || session.state === "closed";
  }
}

function note(message) {
  $("media-note").textContent = message;
  $("media-note").hidden = !message;
}

function stopMedia() {
  if (local) for (const track of local.getTracks()) track.stop();
  local = null;
  for (const key of [...tiles.keys()]) dropTile(key);
  $("camera").textContent = "Turn on camera and microphone";
  $("camera").disabled = true;
}

function renderPeople(participants) {
  for (const key of [...tiles.keys()]) if (key !== "local" && !participants.includes(key)) dropTile(key);
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
    if (state === "ended" || state === "closed") {
      renderPeople([]);
      stopMedia();
    }
  });
  session.on("presence", renderPeople);
  // Listening for tracks opens the session's media link: others' cameras show even before ours is on.
  session.on("track", onTrack);
  session.on("trackended", onTrackEnded);
  session.on("media", (state, detail) => text("media", state === "unavailable" || state === "failed" ? `${state}: ${detail.reason}` : state));
  session.on("mediaerror", (detail) => text("media", `edge said: ${detail}`));
  if (navigator.mediaDevices?.getUserMedia) {
    $("camera").disabled = false;
    note("");
  } else {
    note("Camera and microphone need a secure page (https, or http on localhost); you still see and hear the others.");
  }
  session.on("message", (from, data) => {
    let name = from ? from.slice(0, 8) : "someone";
    let body = typeof data === "string" ? data : `(${data.byteLength} bytes)`;
    try {
      const m = JSON.parse(body);
      if (m && typeof m.text === "string") {
        body = m.text;
        if (typeof m.name === "string" && m.name) {
          name = m.name;
          if (from) {
            names.set(from, m.name);
            const t = tiles.get(from);
            if (t) t.caption.textContent = m.name;
          }
        }
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

$("camera").addEventListener("click", () => {
  void toggleCamera();
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
