/// <reference lib="dom" preserve="true" />
// (Its media API speaks the browser's types (MediaStream, RTCPeerConnection): the
// declarations bring them along, so a Node project type-checks without adding "dom".)
/**
 * Locus client library: ask a locator for a session, talk to the edge it names, and keep
 * the session alive across the failures an integrator would otherwise handle by hand.
 *
 * One ES module, no runtime dependency. Browsers use their own `WebSocket` and `fetch`;
 * Node >= 20 has `fetch` and takes a WebSocket implementation (e.g. the `ws` package) in
 * the options.
 *
 * What it does on each failure (the README's "Clients" section says the same for people):
 * - a locator that does not answer (network error, timeout) or answers 5xx/429: the next
 *   locator of the list, in the given order; after a whole round, a jittered back-off;
 * - the edge link lost (socket closed or refused, edge killed): state `reconnecting`, then
 *   `GET /v1/sessions/{id}` for a fresh join token and the edge that hosts the session now
 *   (a keyed room follows its room there), with jittered back-off until it works;
 * - the locator answers 410 (an ad-hoc session whose edge failed) or 404: state `ended`
 *   with the locator's reason; nothing more is tried;
 * - the edge drains and moves the room (close 4000 after a `moved` frame): state `moved`,
 *   then the same re-join, without the application doing anything;
 * - sends while not connected are queued (bounded) and flushed in order on reconnect;
 *   what does not fit, or is still queued when the session ends, is reported through the
 *   `dropped` event and `send` returning false: never lost silently.
 *
 * Messages are delivered at most once: the edge relays frames without acknowledgement, so
 * a frame written into a link that dies at that moment may be lost (see README).
 *
 * `from` of a message: the edge relays frames unchanged and does not say who sent them,
 * so this library wraps what it sends in a small envelope naming the sender's
 * participant id (text: `{"lcm":1,"from":…,"text":…}`; binary: `LCM\x01`, one length
 * byte, the id, the payload). The id is the sender's own claim, not vouched for by the
 * edge; frames from clients that do not use the envelope arrive with `from` = "".
 */
/** An error a program can act on: `code` is the problem type (e.g. `session-ended`). */
export class LocusError extends Error {
    code;
    status;
    constructor(code, message, status) {
        super(message);
        this.name = "LocusError";
        this.code = code;
        this.status = status;
    }
}
/** The wait before retry number `attempt` (0-based) under full jitter. */
export function backoffDelay(attempt, options, random) {
    const initial = options.initialMs ?? 250;
    const max = options.maxMs ?? 5000;
    const min = options.minMs ?? 10;
    const ceiling = Math.min(max, initial * 2 ** Math.min(attempt, 30));
    return Math.max(min, Math.floor(random() * ceiling));
}
/** Close codes the edge uses (README "Edge sessions"). */
export const CloseCode = {
    GOING_AWAY: 1001,
    POLICY: 1008,
    TOO_BIG: 1009,
    MOVED: 4000,
    REPLACED: 4001,
    SESSION_FULL: 4409,
    UNAVAILABLE: 4503,
};
const OPEN = 1;
const ENVELOPE_MAGIC = [0x4c, 0x43, 0x4d, 0x01]; // "LCM\x01"
const encoder = new TextEncoder();
const decoder = new TextDecoder();
/** Wraps an outgoing message with the sender's id (see the module comment). */
export function encodeMessage(from, data) {
    if (typeof data === "string") {
        return JSON.stringify({ lcm: 1, from, text: data });
    }
    const payload = data instanceof ArrayBuffer
        ? new Uint8Array(data)
        : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const id = encoder.encode(from).subarray(0, 255);
    const out = new Uint8Array(ENVELOPE_MAGIC.length + 1 + id.length + payload.length);
    out.set(ENVELOPE_MAGIC, 0);
    out[ENVELOPE_MAGIC.length] = id.length;
    out.set(id, ENVELOPE_MAGIC.length + 1);
    out.set(payload, ENVELOPE_MAGIC.length + 1 + id.length);
    return out.buffer;
}
/** Unwraps an incoming message; frames without the envelope come with `from` = "". */
export function decodeMessage(data) {
    if (typeof data === "string") {
        if (data.startsWith('{"lcm":1,')) {
            try {
                const m = JSON.parse(data);
                if (typeof m.from === "string" && typeof m.text === "string")
                    return { from: m.from, data: m.text };
            }
            catch {
                // not an envelope after all: delivered as it is
            }
        }
        return { from: "", data };
    }
    const bytes = new Uint8Array(data);
    const head = ENVELOPE_MAGIC.length;
    if (bytes.length > head && ENVELOPE_MAGIC.every((b, i) => bytes[i] === b) && bytes.length >= head + 1 + bytes[head]) {
        const len = bytes[head];
        const from = decoder.decode(bytes.subarray(head + 1, head + 1 + len));
        return { from, data: bytes.slice(head + 1 + len).buffer };
    }
    return { from: "", data };
}
/** Entry point: holds the locators and the transport; makes sessions. */
export class LocusClient {
    locators;
    #WebSocket;
    #fetch;
    #options;
    constructor(options) {
        if (!options || !Array.isArray(options.locators) || options.locators.length === 0) {
            throw new TypeError("LocusClient: `locators` must list at least one locator URL");
        }
        this.locators = options.locators.map((url) => url.replace(/\/+$/, ""));
        const ws = options.WebSocket ?? globalThis.WebSocket;
        if (!ws) {
            throw new TypeError("LocusClient: no WebSocket implementation: pass `WebSocket` (in Node 20, e.g. the `ws` package)");
        }
        const f = options.fetch ?? globalThis.fetch;
        if (!f)
            throw new TypeError("LocusClient: no fetch implementation: pass `fetch`");
        this.#WebSocket = ws;
        this.#fetch = f.bind(globalThis);
        this.#options = {
            backoff: options.backoff ?? {},
            random: options.random ?? Math.random,
            sleep: options.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms))),
            requestTimeoutMs: options.requestTimeoutMs ?? 5000,
            connectTimeoutMs: options.connectTimeoutMs ?? 5000,
            joinTimeoutMs: options.joinTimeoutMs ?? 30000,
            sendQueue: options.sendQueue ?? 256,
            RTCPeerConnection: options.RTCPeerConnection ?? globalThis.RTCPeerConnection,
            iceGatherTimeoutMs: options.iceGatherTimeoutMs ?? 3000,
            answerTimeoutMs: options.answerTimeoutMs ?? 10000,
        };
    }
    /** `GET /v1/locate`: where a new session would go, with ICE servers. */
    async locate(options = {}) {
        const query = options.region ? `?region=${encodeURIComponent(options.region)}` : "";
        return (await this.#request("GET", `/v1/locate${query}`, undefined, Date.now() + this.#options.joinTimeoutMs));
    }
    /**
     * Starts or joins a session and resolves once connected to its edge. `sessionId` joins
     * that session; `key` starts or joins the room with that key; neither starts an ad-hoc
     * session. Rejects with a {@link LocusError} (`session-ended`, `session-not-found`, a
     * 4xx problem, or `join-timeout`).
     */
    async join(options = {}) {
        const deadline = Date.now() + this.#options.joinTimeoutMs;
        let answer;
        if (options.sessionId) {
            answer = await this.session(options.sessionId, deadline);
        }
        else {
            const body = {};
            if (options.key !== undefined)
                body.key = options.key;
            if (options.region !== undefined)
                body.region = options.region;
            answer = (await this.#request("POST", "/v1/sessions", body, deadline));
        }
        const session = new Session(this, answer, this.#options);
        await session._start(deadline);
        return session;
    }
    /** `GET /v1/sessions/{id}`: where the session lives now, with a fresh join token. */
    async session(id, deadline = Date.now() + this.#options.joinTimeoutMs) {
        return (await this.#request("GET", `/v1/sessions/${encodeURIComponent(id)}`, undefined, deadline));
    }
    /** @internal */
    _open(url) {
        return new this.#WebSocket(url);
    }
    /**
     * One request, through the locators in the given order: the next one on a network
     * error, a timeout, 5xx or 429; a jittered back-off after each whole round; until the
     * deadline. Any other answer is final (2xx: the body; 4xx: a LocusError).
     */
    async #request(method, path, body, deadline) {
        const { random, sleep, backoff, requestTimeoutMs } = this.#options;
        let lastProblem = "no locator answered";
        for (let round = 0;; round++) {
            let retryAfterMs = 0;
            for (const base of this.locators) {
                const controller = new AbortController();
                const timer = setTimeout(() => controller.abort(), requestTimeoutMs);
                let response;
                try {
                    response = await this.#fetch(base + path, {
                        method,
                        headers: body === undefined ? {} : { "content-type": "application/json" },
                        body: body === undefined ? undefined : JSON.stringify(body),
                        signal: controller.signal,
                    });
                }
                catch (error) {
                    lastProblem = `${base}: ${errorText(error)}`;
                    continue;
                }
                finally {
                    clearTimeout(timer);
                }
                if (response.ok)
                    return await response.json();
                const problem = await readProblem(response);
                if (response.status >= 500 || response.status === 429) {
                    lastProblem = `${base}: ${response.status} ${problem.detail}`;
                    retryAfterMs = Math.max(retryAfterMs, retryAfter(response));
                    continue;
                }
                throw new LocusError(problem.code, problem.detail, response.status);
            }
            const wait = Math.max(backoffDelay(round, backoff, random), Math.min(retryAfterMs, backoff.maxMs ?? 5000));
            if (Date.now() + wait > deadline) {
                throw new LocusError("locators-unavailable", `no locator could answer ${method} ${path}: ${lastProblem}`);
            }
            await sleep(wait);
        }
    }
}
/** A joined session: messages, presence, state, and failover. */
export class Session {
    id;
    /** The edge the session lives on now. */
    edge;
    /** The region it is served from now. */
    region;
    /** Participant ids present, in join order (this client included). */
    participants = [];
    /** This client's participant id on the current edge (a new one after each re-join). */
    you = "";
    state = "connecting";
    /** The locator's last answer (ICE servers, reason, fallback). */
    answer;
    #client;
    #options;
    #listeners = {
        message: new Set(),
        presence: new Set(),
        state: new Set(),
        dropped: new Set(),
        track: new Set(),
        trackended: new Set(),
        media: new Set(),
        mediaerror: new Set(),
    };
    #socket = null;
    #queue = [];
    #rejoining = false;
    /** Bumped for every socket opened: events of an older socket are ignored. */
    #generation = 0;
    /** Bumped when the session ends or is left: a re-join loop of an older epoch stops. */
    #epoch = 0;
    /** Media wanted: `publish` was called or a `track` listener registered. */
    #wantMedia = false;
    #published = [];
    /** The media link of the current edge connection (one per connection: a re-join makes a new one). */
    #media = null;
    /** Media links that failed in a row on this connection (reset when one connects or on re-join). */
    #mediaFailures = 0;
    #mediaTimer = null;
    /** @internal Use {@link LocusClient.join}. */
    constructor(client, answer, options) {
        this.#client = client;
        this.#options = options;
        this.answer = answer;
        this.id = answer.session_id;
        this.edge = answer.edge;
        this.region = answer.region;
    }
    on(event, listener) {
        const set = this.#listeners[event];
        if (!set)
            throw new TypeError(`Session.on: unknown event ${String(event)}`);
        set.add(listener);
        if (event === "track") {
            this.#wantMedia = true;
            this.#startMedia();
        }
        return () => this.off(event, listener);
    }
    off(event, listener) {
        this.#listeners[event]?.delete(listener);
    }
    /**
     * Sends to every other participant. While the link is being re-established the message
     * is queued (up to `sendQueue`) and sent in order once connected. Returns false when it
     * was dropped instead (reported through `dropped` too).
     */
    send(data) {
        if (this.state === "ended" || this.state === "closed") {
            this.#drop([{ data: copyData(data), reason: this.state === "ended" ? "session-ended" : "closed" }]);
            return false;
        }
        const socket = this.#socket;
        if (this.state === "connected" && socket && socket.readyState === OPEN && this.#queue.length === 0) {
            socket.send(encodeMessage(this.you, data));
            return true;
        }
        if (this.#queue.length >= this.#options.sendQueue) {
            this.#drop([{ data: copyData(data), reason: "queue-full" }]);
            return false;
        }
        this.#queue.push(copyData(data));
        return true;
    }
    /**
     * Publishes the audio and video tracks of `stream` to the other participants (through
     * the edge, over WebRTC). Opens the media link if needed; after a re-join or a move the
     * tracks are published again on the new edge by themselves. Tracks added to the stream
     * later are not followed: publish it again. Throws a {@link LocusError}
     * `media-unavailable` where there is no RTCPeerConnection (Node).
     */
    publish(stream) {
        if (!this.#options.RTCPeerConnection) {
            throw new LocusError("media-unavailable", "no RTCPeerConnection here: media needs a browser (or the `RTCPeerConnection` option)");
        }
        if (this.state === "ended" || this.state === "closed") {
            throw new LocusError(this.state === "ended" ? "session-ended" : "closed", `cannot publish: the session is ${this.state}`);
        }
        if (!this.#published.includes(stream))
            this.#published.push(stream);
        this.#wantMedia = true;
        if (this.#media)
            this.#media.publish(stream);
        else
            this.#startMedia();
    }
    /** Stops publishing `stream` (every published stream when omitted). The tracks themselves are left running. */
    unpublish(stream) {
        const gone = stream ? this.#published.filter((s) => s === stream) : this.#published;
        this.#published = stream ? this.#published.filter((s) => s !== stream) : [];
        for (const s of gone)
            this.#media?.unpublish(s);
    }
    /** The streams published now. */
    get published() {
        return [...this.#published];
    }
    /** The current media link's peer connection (for `getStats()`), or null. */
    get peerConnection() {
        return this.#media?.pc ?? null;
    }
    /** Messages waiting for the link to come back. */
    get queued() {
        return this.#queue.length;
    }
    /** Leaves the session for good: state `closed`; queued messages are reported dropped. */
    leave() {
        if (this.state === "closed" || this.state === "ended")
            return;
        this.#generation++;
        this.#epoch++;
        const socket = this.#socket;
        this.#socket = null;
        if (socket) {
            detach(socket);
            try {
                socket.close(1000, "left");
            }
            catch {
                // already closing
            }
        }
        this.#finish("closed", { reason: "left the session", code: "left" }, "closed");
    }
    /** @internal First connection, during `join()`. */
    async _start(deadline) {
        let attempt = 0;
        for (;;) {
            const outcome = await this.#connect(this.answer);
            if (outcome.ok) {
                this.#connected("joined", "joined the session");
                return;
            }
            if (outcome.final) {
                this.#finish(outcome.state, outcome.detail, outcome.state === "ended" ? "session-ended" : "closed");
                throw new LocusError(outcome.detail.code, outcome.detail.reason);
            }
            const wait = backoffDelay(attempt++, this.#options.backoff, this.#options.random);
            if (Date.now() + wait > deadline) {
                throw new LocusError("join-timeout", `could not connect to the session's edge: ${outcome.detail.reason}`);
            }
            await this.#options.sleep(wait);
            try {
                this.answer = await this.#client.session(this.id, deadline);
            }
            catch (error) {
                if (error instanceof LocusError)
                    this.#finish("ended", { reason: error.message, code: error.code }, "session-ended");
                throw error;
            }
        }
    }
    #emit(event, ...args) {
        for (const listener of [...this.#listeners[event]]) {
            try {
                listener(...args);
            }
            catch (error) {
                // A listener's bug must not break the session's own bookkeeping.
                setTimeout(() => {
                    throw error;
                });
            }
        }
    }
    #setState(state, detail) {
        this.state = state;
        this.#emit("state", state, detail);
    }
    #drop(messages) {
        if (messages.length > 0)
            this.#emit("dropped", messages);
    }
    #finish(state, detail, reason) {
        this.#generation++;
        this.#epoch++;
        this.#stopMedia(detail.reason);
        this.#setState(state, detail);
        const dropped = this.#queue.map((data) => ({ data, reason }));
        this.#queue = [];
        this.#drop(dropped);
    }
    #connected(code, reason) {
        const socket = this.#socket;
        // Flush what was queued, in order, before anything sent from now on.
        while (socket && this.#queue.length > 0 && socket.readyState === OPEN) {
            socket.send(encodeMessage(this.you, this.#queue.shift()));
        }
        this.#setState("connected", {
            reason,
            code,
            edge: this.edge,
            region: this.region,
            fallback: this.answer.fallback,
            locatorReason: this.answer.reason,
            locatorReasonCode: this.answer.reason_code,
        });
        this.#mediaFailures = 0;
        this.#startMedia();
    }
    /**
     * Opens the edge websocket of `answer` and waits for the first presence frame (the
     * edge sends it once the participant is admitted). On success the socket stays
     * attached and its later close starts a re-join.
     */
    #connect(answer) {
        this.edge = answer.edge;
        this.region = answer.region;
        const generation = ++this.#generation;
        return new Promise((resolve) => {
            let settled = false;
            let socket;
            const settle = (outcome) => {
                if (settled)
                    return;
                settled = true;
                clearTimeout(timer);
                if (!outcome.ok) {
                    detach(socket);
                    try {
                        socket.close();
                    }
                    catch {
                        // never opened
                    }
                }
                resolve(outcome);
            };
            const url = `${answer.ws_url}${answer.ws_url.includes("?") ? "&" : "?"}token=${encodeURIComponent(answer.join_token)}`;
            try {
                socket = this.#client._open(url);
            }
            catch (error) {
                resolve({ ok: false, final: false, detail: { reason: `cannot open ${answer.ws_url}: ${errorText(error)}`, code: "edge-lost" } });
                return;
            }
            socket.binaryType = "arraybuffer";
            const timer = setTimeout(() => settle({ ok: false, final: false, detail: { reason: `edge ${answer.edge.id} did not admit us within ${this.#options.connectTimeoutMs} ms`, code: "edge-lost" } }), this.#options.connectTimeoutMs);
            socket.onmessage = (ev) => {
                if (generation !== this.#generation)
                    return;
                const control = this.#onFrame(ev.data);
                if (control === "presence" && !settled) {
                    this.#socket = socket;
                    settle({ ok: true });
                }
            };
            socket.onerror = () => {
                // A close event follows; it says more.
            };
            socket.onclose = (ev) => {
                if (!settled) {
                    settle(this.#closeOutcome(ev.code, ev.reason, answer));
                    return;
                }
                if (generation === this.#generation && this.#socket === socket) {
                    this.#socket = null;
                    this.#stopMedia(`lost the link to edge ${answer.edge.id}`);
                    this.#linkLost(ev.code, ev.reason);
                }
            };
        });
    }
    /** Handles one frame; says whether it was presence. */
    #onFrame(raw) {
        if (typeof raw === "string" && raw.startsWith('{"locus"')) {
            let frame;
            try {
                frame = JSON.parse(raw);
            }
            catch {
                return "ignored";
            }
            if (frame.locus === "presence" && Array.isArray(frame.participants)) {
                this.participants = frame.participants.filter((p) => typeof p === "string");
                if (typeof frame.you === "string")
                    this.you = frame.you;
                this.#emit("presence", [...this.participants]);
                return "presence";
            }
            if (frame.locus === "rtc") {
                this.#media?.signal(frame);
                return "ignored";
            }
            if (frame.locus === "moved") {
                this.#movedTo = { edge: String(frame.edge ?? ""), url: String(frame.url ?? "") };
                return "moved";
            }
            return "ignored";
        }
        if (typeof raw === "string" || raw instanceof ArrayBuffer) {
            const message = decodeMessage(raw);
            this.#emit("message", message.from, message.data);
            return "message";
        }
        return "ignored";
    }
    #movedTo = null;
    /** Opens the media link on the current connection when media is wanted and there is none. */
    #startMedia() {
        if (!this.#wantMedia || this.#media || this.state !== "connected" || !this.#socket)
            return;
        const Ctor = this.#options.RTCPeerConnection;
        if (!Ctor) {
            this.#emit("media", "unavailable", { reason: "no RTCPeerConnection here: media needs a browser (or the `RTCPeerConnection` option)" });
            return;
        }
        const generation = this.#generation;
        const host = {
            sendRtc: (frame) => {
                const socket = this.#socket;
                if (generation !== this.#generation || !socket || socket.readyState !== OPEN)
                    return false;
                socket.send(JSON.stringify({ locus: "rtc", ...frame }));
                return true;
            },
            emit: (event, ...args) => this.#emit(event, ...args),
            message: (raw) => {
                if (typeof raw === "string" || raw instanceof ArrayBuffer) {
                    const message = decodeMessage(raw);
                    this.#emit("message", message.from, message.data);
                }
            },
            published: () => this.#published,
            connected: () => {
                this.#mediaFailures = 0;
            },
            failed: (link, reason, retry) => {
                if (link !== this.#media)
                    return;
                this.#stopMedia(reason);
                if (!retry || ++this.#mediaFailures > MEDIA_RETRIES) {
                    this.#emit("media", "unavailable", {
                        reason: retry ? `${reason} (gave up after ${MEDIA_RETRIES} attempts; a re-join tries again)` : reason,
                    });
                    return;
                }
                const wait = backoffDelay(this.#mediaFailures, this.#options.backoff, this.#options.random);
                this.#mediaTimer = setTimeout(() => {
                    this.#mediaTimer = null;
                    if (generation === this.#generation)
                        this.#startMedia();
                }, wait);
            },
        };
        try {
            this.#media = new MediaLink(Ctor, this.answer.ice_servers ?? [], host, this.#options);
        }
        catch (error) {
            this.#media = null;
            this.#emit("mediaerror", `cannot open a peer connection: ${errorText(error)}`);
        }
    }
    /** Drops the media link (its remote tracks are reported ended). */
    #stopMedia(reason) {
        if (this.#mediaTimer)
            clearTimeout(this.#mediaTimer);
        this.#mediaTimer = null;
        const media = this.#media;
        this.#media = null;
        media?.close(reason);
    }
    /** What a close before admission means. */
    #closeOutcome(code, reason, answer) {
        if (code === CloseCode.SESSION_FULL) {
            return { ok: false, final: true, state: "closed", detail: { reason: reason || "session full", code: "session-full", closeCode: code } };
        }
        return {
            ok: false,
            final: false,
            detail: { reason: reason || `edge ${answer.edge.id} closed the connection (${code})`, code: "edge-lost", closeCode: code },
        };
    }
    /** The attached link closed: decide, then re-join in the background. */
    #linkLost(code, reason) {
        if (this.state === "closed" || this.state === "ended")
            return;
        if (code === CloseCode.REPLACED) {
            this.#finish("closed", { reason: reason || "replaced by another connection", code: "replaced", closeCode: code }, "closed");
            return;
        }
        const moved = this.#movedTo;
        this.#movedTo = null;
        if (code === CloseCode.MOVED) {
            this.#setState("moved", {
                reason: reason || `moved to ${moved?.edge ?? "another edge"}`,
                code: "moved",
                closeCode: code,
                edge: this.edge,
                movedTo: moved ?? undefined,
            });
            void this.#rejoin("moved", `moved to ${moved?.edge ?? "another edge"}`);
            return;
        }
        void this.#rejoin("edge-lost", reason || `lost the link to edge ${this.edge.id} (close ${code})`, code);
    }
    /** Re-join: fresh answer from a locator, connect, repeat with back-off until it works or the session ends. */
    async #rejoin(code, why, closeCode) {
        if (this.#rejoining)
            return;
        this.#rejoining = true;
        const epoch = this.#epoch;
        const { backoff, random, sleep } = this.#options;
        let reason = why;
        try {
            for (let attempt = 0;; attempt++) {
                if (this.state === "closed" || this.state === "ended" || epoch !== this.#epoch)
                    return;
                // The first try after a move is at once: the new edge is already waiting.
                const wait = attempt === 0 && code === "moved" ? 0 : backoffDelay(attempt, backoff, random);
                this.#setState("reconnecting", { reason, code, closeCode, attempt: attempt + 1, retryInMs: wait, edge: this.edge, region: this.region });
                if (wait > 0)
                    await sleep(wait);
                if (this.state !== "reconnecting" || epoch !== this.#epoch)
                    return;
                let answer;
                try {
                    answer = await this.#client.session(this.id, Date.now() + Math.max(this.#options.requestTimeoutMs, backoff.maxMs ?? 5000));
                }
                catch (error) {
                    if (this.state !== "reconnecting" || epoch !== this.#epoch)
                        return;
                    if (error instanceof LocusError && (error.status === 410 || error.status === 404)) {
                        this.#finish("ended", { reason: error.message, code: error.code, closeCode }, "session-ended");
                        return;
                    }
                    reason = errorText(error);
                    continue;
                }
                if (this.state !== "reconnecting" || epoch !== this.#epoch)
                    return;
                this.answer = answer;
                const outcome = await this.#connect(answer);
                if (this.state !== "reconnecting") {
                    // Left meanwhile: drop the fresh link.
                    if (outcome.ok)
                        this.#socket?.close(1000, "left");
                    return;
                }
                if (outcome.ok) {
                    this.#connected("rejoined", `re-joined on edge ${answer.edge.id}`);
                    return;
                }
                if (outcome.final) {
                    this.#finish(outcome.state, outcome.detail, "closed");
                    return;
                }
                reason = outcome.detail.reason;
            }
        }
        finally {
            this.#rejoining = false;
            // A link that died while this loop finished (state connected, no socket) starts another.
        }
    }
}
/** A media link gives up after this many failed peer connections in a row (until the next re-join). */
const MEDIA_RETRIES = 3;
/**
 * Client offers at most this often: the edge takes at most 2 per second by default
 * (`--rtc-renegotiations-per-second`) and refuses more with an error frame.
 */
const OFFER_SPACING_MS = 600;
/**
 * One WebRTC peer connection to the edge of the current session connection, negotiated
 * over the session websocket (README "Edge sessions"): the client offers first (a `locus`
 * data channel and the published tracks), the edge answers, and offers again whenever the
 * tracks this client receives change. The edge is the polite side of glare, so an edge
 * offer that crosses one of ours is ignored (the edge rolls its own back and offers again
 * after answering ours). Offers wait for ICE gathering (bounded) so they carry their
 * candidates; later ones are trickled. All signalling steps run one at a time, in order.
 */
class MediaLink {
    pc;
    #host;
    #options;
    #chain = Promise.resolve();
    #closed = false;
    /** Our offer is with the edge, waiting for its answer. */
    #awaitingAnswer = false;
    #answerTimer = null;
    #offerTimer = null;
    #lastOfferAt = 0;
    /** Offers refused or unanswered in a row. */
    #refusals = 0;
    /** Candidates found after an offer left are trickled. */
    #offerSent = false;
    #senders = new Map();
    /** Remote tracks alive now, with their publisher. */
    #remote = new Map();
    constructor(Ctor, iceServers, host, options) {
        this.#host = host;
        this.#options = options;
        this.pc = new Ctor({
            iceServers: iceServers.map((s) => ({ urls: s.urls, username: s.username, credential: s.credential })),
        });
        const channel = this.pc.createDataChannel("locus");
        channel.binaryType = "arraybuffer";
        // While this channel is open the edge delivers the session's messages on it instead of the websocket.
        channel.onmessage = (ev) => {
            if (!this.#closed)
                host.message(ev.data);
        };
        this.pc.onnegotiationneeded = () => this.negotiate();
        this.pc.ontrack = (ev) => this.#onTrack(ev);
        this.pc.onicecandidate = (ev) => {
            // mDNS names (`….local`) mean nothing to the edge: it learns the address from the checks.
            if (!this.#offerSent || this.#closed || !ev.candidate || /\.local\b/.test(ev.candidate.candidate))
                return;
            host.sendRtc({ type: "candidate", candidate: ev.candidate.toJSON() });
        };
        this.pc.onconnectionstatechange = () => {
            if (this.#closed)
                return;
            const state = this.pc.connectionState;
            host.emit("media", state, { reason: `peer connection ${state}` });
            if (state === "connected")
                host.connected();
            if (state === "failed")
                host.failed(this, "the WebRTC connection to the edge failed", true);
        };
        for (const stream of host.published())
            this.publish(stream);
        host.emit("media", "new", { reason: "opening the media link" });
    }
    publish(stream) {
        if (this.#closed)
            return;
        for (const track of stream.getTracks()) {
            if (!this.#senders.has(track))
                this.#senders.set(track, this.pc.addTrack(track, stream));
        }
    }
    unpublish(stream) {
        if (this.#closed)
            return;
        for (const track of stream.getTracks()) {
            const sender = this.#senders.get(track);
            if (!sender)
                continue;
            this.#senders.delete(track);
            try {
                this.pc.removeTrack(sender);
            }
            catch {
                // the connection is closing
            }
        }
    }
    /** Handles an `rtc` frame from the edge. */
    signal(frame) {
        if (this.#closed)
            return;
        const sdp = typeof frame.sdp === "string" ? frame.sdp : "";
        switch (frame.type) {
            case "offer":
                this.#run(() => this.#edgeOffer(sdp));
                break;
            case "answer":
                this.#run(() => this.#edgeAnswer(sdp));
                break;
            case "error": {
                const detail = typeof frame.detail === "string" ? frame.detail : "error";
                this.#host.emit("mediaerror", detail);
                this.#run(() => this.#edgeError(detail));
                break;
            }
            default:
                // The edge sends no candidates (they are in its SDP); anything else is newer than this library.
                break;
        }
    }
    /** Offers (now, or once the spacing allows) when the connection is stable. */
    negotiate() {
        if (this.#closed || this.#offerTimer)
            return;
        const wait = this.#lastOfferAt + OFFER_SPACING_MS - Date.now();
        if (wait > 0) {
            this.#offerTimer = setTimeout(() => {
                this.#offerTimer = null;
                this.negotiate();
            }, wait);
            return;
        }
        this.#run(() => this.#offer());
    }
    close(reason) {
        if (this.#closed)
            return;
        this.#closed = true;
        for (const timer of [this.#answerTimer, this.#offerTimer])
            if (timer)
                clearTimeout(timer);
        for (const track of [...this.#remote.keys()])
            this.#trackGone(track);
        try {
            this.pc.close();
        }
        catch {
            // already closed
        }
        this.#host.emit("media", "closed", { reason });
    }
    #run(step) {
        this.#chain = this.#chain.then(async () => {
            if (this.#closed)
                return;
            try {
                await step();
            }
            catch (error) {
                if (!this.#closed)
                    this.#host.emit("mediaerror", errorText(error));
            }
        });
    }
    async #offer() {
        if (this.pc.signalingState !== "stable")
            return; // an answer is due first; negotiationneeded fires again after
        this.#lastOfferAt = Date.now();
        await this.pc.setLocalDescription();
        await this.#gathered();
        const sdp = this.pc.localDescription?.sdp;
        if (this.#closed || !sdp || this.pc.signalingState !== "have-local-offer")
            return;
        if (!this.#host.sendRtc({ type: "offer", sdp }))
            return;
        this.#offerSent = true;
        this.#lastOfferAt = Date.now();
        this.#awaitingAnswer = true;
        this.#answerTimer = setTimeout(() => {
            this.#answerTimer = null;
            // The edge may yet apply this offer: rolling it back here could leave the two
            // sides disagreeing about the m-lines, so the whole link is made anew.
            if (!this.#closed)
                this.#host.failed(this, `the edge did not answer an offer within ${this.#options.answerTimeoutMs} ms`, true);
        }, this.#options.answerTimeoutMs);
    }
    async #edgeAnswer(sdp) {
        if (!this.#awaitingAnswer || this.pc.signalingState !== "have-local-offer")
            return;
        this.#awaitingAnswer = false;
        if (this.#answerTimer)
            clearTimeout(this.#answerTimer);
        this.#answerTimer = null;
        try {
            await this.pc.setRemoteDescription({ type: "answer", sdp });
        }
        catch (error) {
            // The edge has applied our offer; only a new link brings the two sides together again.
            this.#host.failed(this, `the edge's answer was not accepted: ${errorText(error)}`, true);
            return;
        }
        this.#refusals = 0;
    }
    async #edgeOffer(sdp) {
        // Glare: ours is outstanding. The edge is polite: it answers ours, then offers again.
        if (this.pc.signalingState !== "stable")
            return;
        try {
            await this.pc.setRemoteDescription({ type: "offer", sdp });
            await this.pc.setLocalDescription();
        }
        catch (error) {
            this.#host.emit("mediaerror", `the edge's offer was not accepted: ${errorText(error)}`);
            if (this.pc.signalingState !== "stable") {
                await this.pc.setRemoteDescription({ type: "rollback" }).catch(() => { });
            }
            return;
        }
        const answer = this.pc.localDescription?.sdp;
        if (answer)
            this.#host.sendRtc({ type: "answer", sdp: answer });
    }
    async #edgeError(detail) {
        if (/^edge full/.test(detail)) {
            this.#host.failed(this, detail, false);
            return;
        }
        if (/connection failed or closed/.test(detail)) {
            this.#host.failed(this, detail, true);
            return;
        }
        // The edge answers an offer in order, before anything else it says about later frames:
        // an error while ours waits is the refusal of ours (refused offers are not applied).
        if (this.#awaitingAnswer)
            await this.#refused(detail);
    }
    /**
     * The edge refused our offer (it did not apply it): take it back and offer again later
     * (jittered back-off).
     */
    async #refused(why) {
        this.#awaitingAnswer = false;
        if (this.#answerTimer)
            clearTimeout(this.#answerTimer);
        this.#answerTimer = null;
        if (this.pc.signalingState === "have-local-offer") {
            await this.pc.setLocalDescription({ type: "rollback" }).catch(() => { });
        }
        this.#refusals++;
        if (this.#refusals > MEDIA_RETRIES) {
            this.#host.failed(this, `the edge refused ${this.#refusals} offers in a row (last: ${why})`, true);
            return;
        }
        const wait = Math.max(OFFER_SPACING_MS, backoffDelay(this.#refusals, this.#options.backoff, this.#options.random));
        if (this.#offerTimer)
            clearTimeout(this.#offerTimer);
        this.#offerTimer = setTimeout(() => {
            this.#offerTimer = null;
            this.negotiate();
        }, wait);
    }
    /** Resolves when ICE gathering is complete, or after `iceGatherTimeoutMs`. */
    #gathered() {
        const pc = this.pc;
        if (pc.iceGatheringState === "complete")
            return Promise.resolve();
        return new Promise((resolve) => {
            const done = () => {
                clearTimeout(timer);
                pc.removeEventListener("icegatheringstatechange", check);
                resolve();
            };
            const check = () => {
                if (pc.iceGatheringState === "complete")
                    done();
            };
            const timer = setTimeout(done, this.#options.iceGatherTimeoutMs);
            pc.addEventListener("icegatheringstatechange", check);
        });
    }
    #onTrack(ev) {
        if (this.#closed)
            return;
        const stream = ev.streams[0] ?? null;
        // The edge names each forwarded stream after its publisher's participant id.
        const participant = stream?.id ?? "";
        const track = ev.track;
        this.#remote.set(track, participant);
        track.onended = () => this.#trackGone(track);
        if (stream)
            stream.onremovetrack = (e) => this.#trackGone(e.track);
        this.#host.emit("track", participant, track, stream);
    }
    #trackGone(track) {
        const participant = this.#remote.get(track);
        if (participant === undefined)
            return;
        this.#remote.delete(track);
        this.#host.emit("trackended", participant, track);
    }
}
function detach(socket) {
    if (!socket)
        return;
    socket.onopen = null;
    socket.onmessage = null;
    socket.onclose = null;
    socket.onerror = null;
}
function copyData(data) {
    if (typeof data === "string")
        return data;
    if (data instanceof ArrayBuffer)
        return data.slice(0);
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice().buffer;
}
function errorText(error) {
    if (error instanceof Error) {
        const cause = error.cause;
        return cause instanceof Error ? `${error.message} (${cause.message})` : error.message;
    }
    return String(error);
}
async function readProblem(response) {
    let code = `http-${response.status}`;
    let detail = `${response.status} ${response.statusText}`;
    try {
        const body = (await response.json());
        if (typeof body.type === "string" && body.type)
            code = body.type.replace(/^.*[/#:]/, "") || code;
        if (typeof body.detail === "string")
            detail = body.detail;
        else if (typeof body.title === "string")
            detail = body.title;
    }
    catch {
        // not problem+json: status line only
    }
    return { code, detail };
}
function retryAfter(response) {
    const value = Number(response.headers.get("retry-after"));
    return Number.isFinite(value) && value > 0 ? value * 1000 : 0;
}
