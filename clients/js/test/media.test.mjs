// Media through the library in a real browser: headless Chromium with fake camera and
// microphone (`--use-fake-device-for-media-stream`), two windows on one room, real edge
// processes forwarding RTP (their WebRTC on 127.0.0.1). Each window publishes; each must
// receive the other's audio and video track, named by the other's participant id, and
// RTP packets must keep arriving (getStats inbound-rtp, not rendered pixels: a loaded
// machine may decode late, but packets either flow or do not). Then the room's edge is
// SIGKILLed, and later drained (moved): each time both windows re-join by themselves,
// publish again on the new edge and receive each other's new tracks, packets flowing.
// Then the same through the try page's camera and microphone tiles. Last, glare made
// certain: a page's WebSocket holds back the edge's frames while the edge offers and the
// library offers too; the library must ignore the crossing edge offer and end up, with
// the polite edge, sending and receiving every track.
//
// Every wait has a deadline and says what it waited for; none is a sleep.

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Topology, repoRoot, waitFor } from "./harness.mjs";
import { startBrowser } from "./webdriver.mjs";

const MEDIA_FLAGS = [
  "--use-fake-ui-for-media-stream",
  "--use-fake-device-for-media-stream",
  "--autoplay-policy=no-user-gesture-required",
  // The edge's candidates are on 127.0.0.1; Chromium's own must be real addresses, not mDNS names.
  "--allow-loopback-in-peer-connection",
  "--disable-features=WebRtcHideLocalIpsWithMdns",
];

/** In the page: joins `key` with the library and publishes the fake camera and microphone. */
const JOIN_AND_PUBLISH = `
const [key, done] = arguments;
(async () => {
  const { LocusClient } = await import("/try/assets/locus-client.js");
  const client = new LocusClient({ locators: [location.origin], backoff: { initialMs: 50, maxMs: 400 } });
  const t = (window.__media = { tracks: [], ended: [], media: [], errors: [], states: [] });
  const session = await client.join({ key, region: "us-east" });
  t.session = session;
  session.on("track", (p, track, stream) => t.tracks.push({ p, kind: track.kind, id: track.id, stream: stream?.id ?? null, at: Date.now() }));
  session.on("trackended", (p, track) => t.ended.push({ p, kind: track.kind, id: track.id }));
  session.on("media", (s, d) => t.media.push(s + ": " + d.reason));
  session.on("mediaerror", (d) => t.errors.push(d));
  session.on("state", (s, d) => t.states.push(s + ": " + d.code));
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 320, height: 240, frameRate: 15 } });
  session.publish(stream);
  return { you: session.you, edge: session.edge.id };
})().then(done, (e) => done({ error: String(e && e.stack || e) }));
`;

/** In the page: what the session and its media link look like now. */
const VIEW = `
const t = window.__media;
const s = t && t.session;
return s ? {
  state: s.state, you: s.you, edge: s.edge.id, participants: s.participants,
  pc: s.peerConnection ? s.peerConnection.connectionState : null,
  live: t.tracks.filter((x) => !t.ended.some((e) => e.id === x.id && e.p === x.p)).map((x) => ({ p: x.p, kind: x.kind })),
  errors: t.errors, media: t.media.slice(-6), states: t.states.slice(-6),
} : null;
`;

/** In the page: RTP packets received so far per kind, from the media link's getStats. */
const PACKETS = `
const done = arguments[arguments.length - 1];
const pc = window.__media?.session?.peerConnection ?? window.locusTry?.session?.peerConnection;
if (!pc) { done(null); } else {
  pc.getStats().then((stats) => {
    const got = { audio: 0, video: 0, sent: 0, pc: pc.connectionState };
    stats.forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind in got) got[r.kind] += r.packetsReceived ?? 0;
      if (r.type === "outbound-rtp") got.sent += r.packetsSent ?? 0;
    });
    done(got);
  }, (e) => done({ error: String(e) }));
}
`;

/** waitFor, with what was last seen in the error. */
async function waitSeeing(what, ms, check, every, seen) {
  try {
    return await waitFor(what, ms, check, every);
  } catch (error) {
    error.message += `; last seen: ${JSON.stringify(seen())}`;
    throw error;
  }
}

async function inWindow(driver, handle, fn) {
  await driver.switchTo(handle);
  return fn();
}

/** `script` in each window, one after the other (one WebDriver session has one current window). */
async function inEach(driver, windows, script) {
  const out = [];
  for (const w of windows) out.push(await inWindow(driver, w, () => driver.run(script)));
  return out;
}

/** Waits until RTP packets of both kinds grow by `more` in the window. */
async function packetsFlow(driver, handle, what, more = 20, ms = 60000, kinds = ["audio", "video"]) {
  let first = null;
  let last = null;
  await waitSeeing(`${what}: audio and video RTP packets growing by ${more}`, ms, async () => {
    last = await inWindow(driver, handle, () => driver.runAsync(PACKETS));
    if (!last || last.error) return false;
    if (!first) first = last;
    return kinds.every((kind) => last[kind] - first[kind] >= more);
  }, 250, () => ({ first, last }));
  return last;
}

async function openWindows(driver, url) {
  const windows = [await driver.window(), await driver.newTab("window")];
  for (const w of windows) {
    await driver.switchTo(w);
    await driver.go(url);
  }
  return windows;
}

test("media: two browsers receive each other's tracks, again after an edge SIGKILL and after a drain", async (t) => {
  const topo = await Topology.start({ edges: ["us-east-1", "us-east-2"], drainDeadline: "1s" });
  t.after(() => topo.stop());
  const driver = await startBrowser(t, MEDIA_FLAGS);
  if (!driver) return;
  await driver.cmd("POST", "/timeouts", { script: 60000 });
  const windows = await openWindows(driver, `${topo.locatorUrls[0]}/try`);
  for (const w of windows) {
    const joined = await inWindow(driver, w, () => driver.runAsync(JOIN_AND_PUBLISH, "room-media"));
    assert.ok(!joined.error, `join and publish in the page: ${joined.error}`);
  }

  const views = () => inEach(driver, windows, VIEW);
  /** Both connected on one edge other than `not`, each with the other's live audio and video. */
  async function together(what, not, ms) {
    let last;
    await waitSeeing(what, ms, async () => {
      last = await views();
      const [a, b] = last;
      if (!a || !b || a.state !== "connected" || b.state !== "connected" || a.edge !== b.edge || a.edge === not) return false;
      const has = (v, p) => ["audio", "video"].every((k) => v.live.some((x) => x.p === p && x.kind === k));
      return has(a, b.you) && has(b, a.you);
    }, 200, () => last);
    return last;
  }

  const [a0, b0] = await together("each window receives the other's audio and video", null, 45000);
  for (const [i, w] of windows.entries()) await packetsFlow(driver, w, `window ${i}, first edge`);

  // SIGKILL: the library re-joins on the other edge, opens a new media link, publishes again.
  const first = a0.edge;
  const killedAt = performance.now();
  await topo.signalEdge(first, "SIGKILL");
  const [a1, b1] = await together("both re-joined on the other edge with each other's new tracks", first, 60000);
  const tracksAfter = performance.now() - killedAt;
  assert.notEqual(a1.you, a0.you, "a re-join is a new participant (its tracks are new)");
  for (const [i, w] of windows.entries()) await packetsFlow(driver, w, `window ${i}, after the SIGKILL`);
  // Reported, not asserted: polled over WebDriver (about 0.2-0.5 s resolution), packets
  // counted as 20 more of each kind in each window.
  const report = `media after an edge SIGKILL: each other's tracks back in ${tracksAfter.toFixed(0)} ms, RTP flowing both ways within ${(performance.now() - killedAt).toFixed(0)} ms`;
  console.log(report);
  t.diagnostic(report);
  for (const v of [a1, b1]) {
    assert.ok(v.live.every((x) => x.p !== a0.you && x.p !== b0.you), `tracks of the old link are reported ended: ${JSON.stringify(v.live)}`);
    assert.ok(v.states.some((s) => s.startsWith("reconnecting")), `the page saw the reconnection: ${v.states}`);
  }

  // Drain: the room moves back to the restarted edge; media follows.
  await topo.startEdge(first);
  await topo.waitActive([first], 20000);
  const second = a1.edge;
  await topo.signalEdge(second, "SIGTERM");
  const [a2] = await together("both followed the moved room with each other's tracks", second, 60000);
  assert.ok(a2.states.some((s) => s.startsWith("moved")), `the move was followed: ${a2.states}`);
  for (const [i, w] of windows.entries()) await packetsFlow(driver, w, `window ${i}, after the drain`);
});

const TILES = `
const s = window.locusTry.session;
return {
  state: document.getElementById("state").dataset.state,
  you: s ? s.you : null,
  media: document.getElementById("media").textContent,
  tiles: [...document.querySelectorAll("#tiles figure")].map((f) => {
    const v = f.querySelector("video");
    const tracks = v.srcObject ? v.srcObject.getTracks() : [];
    return { p: f.dataset.participant, label: f.querySelector("figcaption").textContent, kinds: tracks.filter((t) => t.readyState === "live").map((t) => t.kind).sort() };
  }),
};
`;

test("the try page: camera and microphone tiles of each other in two windows, RTP flowing, back after an edge SIGKILL", async (t) => {
  const topo = await Topology.start({ edges: ["us-east-1", "us-east-2"] });
  t.after(() => topo.stop());
  const driver = await startBrowser(t, MEDIA_FLAGS);
  if (!driver) return;
  const windows = await openWindows(driver, `${topo.locatorUrls[0]}/try?room=tiles-room`);
  const names = ["Ada", "Grace"];
  for (const [i, w] of windows.entries()) {
    await driver.switchTo(w);
    await driver.type("#name", names[i]);
    await driver.click("#join");
  }
  for (const w of windows) {
    await driver.switchTo(w);
    await waitFor("the camera button enabled after joining", 20000, async () => driver.run(`return !document.getElementById("camera").disabled;`), 100);
    await driver.click("#camera");
  }
  let last;
  /** Each window shows exactly its own tile and the other's, with live `kinds`. */
  const tilesShown = (what, kinds = "audio,video") => waitSeeing(what, 45000, async () => {
    last = await inEach(driver, windows, TILES);
    return last.every((v, i) => {
      const other = last[1 - i].you;
      const own = v.tiles.find((x) => x.p === "local");
      const theirs = v.tiles.find((x) => x.p === other);
      return v.state === "connected" && v.tiles.length === 2 && own && theirs && (kinds === "any" ? theirs.kinds.length > 0 : theirs.kinds.join() === kinds);
    });
  }, 250, () => last);
  await tilesShown("each window shows its own tile and the other's with live audio and video");
  for (const [i, w] of windows.entries()) await packetsFlow(driver, w, `try page window ${i}`);
  const before = last.map((v) => v.you);
  const edge = await inWindow(driver, windows[0], () => driver.run(`return document.getElementById("edge").textContent;`));
  await topo.signalEdge(edge, "SIGKILL");
  await tilesShown("after the edge SIGKILL: the other's tile again (its new participant id), no stale tile");
  assert.ok(last.every((v, i) => v.you !== before[i]), "both re-joined as new participants");
  for (const [i, w] of windows.entries()) await packetsFlow(driver, w, `try page window ${i} after the SIGKILL`);
  // Once the other has chatted, its tile carries its name.
  await driver.switchTo(windows[1]);
  await driver.type("#msg", "hello with video");
  await driver.click("#send");
  await waitFor("Ada's window names Grace's tile after her message", 10000, async () => {
    const v = await inWindow(driver, windows[0], () => driver.run(TILES));
    return v.tiles.some((x) => x.label === "Grace");
  }, 150);
  // The README's docs/try-media.png.
  await driver.switchTo(windows[0]);
  mkdirSync(join(repoRoot, "target"), { recursive: true });
  writeFileSync(join(repoRoot, "target/try-media.png"), await driver.screenshot());
});

/**
 * In the page: joins with a WebSocket that can hold back the edge's frames (the test's
 * lever for glare) and records what the library sends; publishes audio and video when
 * `publish` is true, listens for tracks either way.
 */
const JOIN_HOLDING = `
const [key, publish, done] = arguments;
(async () => {
  const { LocusClient } = await import("/try/assets/locus-client.js");
  const t = (window.__media = { tracks: [], ended: [], media: [], errors: [], states: [], sent: [], received: [], held: [], hold: false });
  class HoldingWebSocket extends WebSocket {
    #handler = null;
    constructor(url) {
      super(url);
      super.onmessage = (ev) => {
        if (typeof ev.data === "string" && ev.data.startsWith('{"locus":"rtc"')) t.received.push(JSON.parse(ev.data).type);
        if (t.hold) t.held.push({ socket: this, ev });
        else this.#handler?.(ev);
      };
    }
    set onmessage(handler) { this.#handler = handler; }
    get onmessage() { return this.#handler; }
    deliver(ev) { this.#handler?.(ev); }
    send(data) {
      if (typeof data === "string" && data.startsWith('{"locus":"rtc"')) t.sent.push(JSON.parse(data).type);
      super.send(data);
    }
  }
  t.release = () => {
    t.hold = false;
    for (const { socket, ev } of t.held.splice(0)) socket.deliver(ev);
  };
  const client = new LocusClient({ locators: [location.origin], WebSocket: HoldingWebSocket });
  const session = await client.join({ key, region: "us-east" });
  t.session = session;
  session.on("track", (p, track) => t.tracks.push({ p, kind: track.kind, id: track.id }));
  session.on("trackended", (p, track) => t.ended.push({ p, kind: track.kind, id: track.id }));
  session.on("media", (s, d) => t.media.push(s + ": " + d.reason));
  session.on("mediaerror", (d) => t.errors.push(d));
  session.on("state", (s, d) => t.states.push(s + ": " + d.code));
  if (publish) session.publish(await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 320, height: 240, frameRate: 15 } }));
  return { you: session.you };
})().then(done, (e) => done({ error: String(e && e.stack || e) }));
`;

test("media glare: an edge offer crossing the library's own is ignored; the edge (polite) answers ours and offers again", async (t) => {
  const topo = await Topology.start({ edges: ["us-east-1"] });
  t.after(() => topo.stop());
  const driver = await startBrowser(t, MEDIA_FLAGS);
  if (!driver) return;
  await driver.cmd("POST", "/timeouts", { script: 60000 });
  const [a, b] = await openWindows(driver, `${topo.locatorUrls[0]}/try`);
  const joinedA = await inWindow(driver, a, () => driver.runAsync(JOIN_HOLDING, "room-glare", true));
  assert.ok(!joinedA.error, joinedA.error);
  // Settled: connected, nothing outstanding, its audio and video negotiated as sending.
  await waitFor("a's media link connected and its tracks negotiated", 30000, () => inWindow(driver, a, () => driver.run(`
    const pc = window.__media.session.peerConnection;
    return pc?.connectionState === "connected" && pc.signalingState === "stable" &&
      pc.getTransceivers().filter((t) => t.sender.track && /send/.test(t.currentDirection ?? "")).length === 2;`)), 200);

  // Hold what the edge says to a; b joins and publishes, so the edge offers a b's tracks.
  const atHold = await inWindow(driver, a, () => driver.run(`window.__media.hold = true; return { sent: window.__media.sent.length, received: window.__media.received.length };`));
  const joinedB = await inWindow(driver, b, () => driver.runAsync(JOIN_HOLDING, "room-glare", true));
  assert.ok(!joinedB.error, joinedB.error);
  await waitFor("the edge's offer to a, held back", 30000, () => inWindow(driver, a, () => driver.run(
    `return window.__media.held.some((h) => typeof h.ev.data === "string" && h.ev.data.startsWith('{"locus":"rtc","type":"offer"'));`)), 200);

  // Meanwhile a publishes one more track: its offer crosses the edge's.
  const sentBefore = await inWindow(driver, a, () => driver.run(`return window.__media.sent.length;`));
  const published = await inWindow(driver, a, () => driver.runAsync(`
    const done = arguments[arguments.length - 1];
    navigator.mediaDevices.getUserMedia({ video: { width: 160, height: 120, frameRate: 10 } })
      .then((s) => { window.__media.session.publish(s); done(true); }, (e) => done(String(e)));`));
  assert.equal(published, true);
  await waitFor("a's own offer sent while the edge's is outstanding", 30000, () => inWindow(driver, a, () => driver.run(
    `return window.__media.sent.slice(${sentBefore}).includes("offer") && window.__media.session.peerConnection.signalingState === "have-local-offer";`)), 100);
  // Give the edge a's offer first (it is on the wire), then let the held frames in.
  await inWindow(driver, a, () => driver.run(`window.__media.release();`));

  let last;
  await waitSeeing("after the glare: a has b's audio and video, b has a's audio and two videos", 45000, async () => {
    last = await inEach(driver, [a, b], VIEW);
    const [va, vb] = last;
    const kinds = (v, p) => v.live.filter((x) => x.p === p).map((x) => x.kind).sort().join();
    return va && vb && kinds(va, vb.you) === "audio,video" && kinds(vb, va.you) === "audio,video,video";
  }, 200, () => last);
  for (const [i, w] of [a, b].entries()) await packetsFlow(driver, w, `window ${i} after the glare`);
  // Every edge offer since the hold was answered but the crossing one (the edge, polite,
  // dropped it). The edge may need no second offer at all: its answer to a's offer can
  // already carry b's tracks on the m-lines a offered.
  await waitFor("a's media link stable", 10000, () => inWindow(driver, a, () => driver.run(`return window.__media.session.peerConnection.signalingState === "stable";`)), 100);
  const { sent, received } = await inWindow(driver, a, () => driver.run(`return { sent: window.__media.sent, received: window.__media.received };`));
  const offers = received.slice(atHold.received).filter((x) => x === "offer").length;
  const answers = sent.slice(atHold.sent).filter((x) => x === "answer").length;
  assert.equal(sent[atHold.sent], "offer", `a's first frame after the hold is its crossing offer: ${sent}`);
  assert.ok(offers >= 1, "the edge offered a b's tracks");
  assert.equal(answers, offers - 1, `a answered every edge offer but the crossing one (edge offers ${received}; a sent ${sent})`);
  const errors = await inWindow(driver, a, () => driver.run(`return window.__media.errors;`));
  assert.deepEqual(errors, [], "no signalling step was refused");
});
