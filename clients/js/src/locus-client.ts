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

/** The states a session goes through. */
export type SessionState = "connecting" | "connected" | "reconnecting" | "moved" | "ended" | "closed";

/** The edge a session lives on, as the locator names it. */
export interface EdgeRef {
  id: string;
  region: string;
  url: string;
}

/** One ICE server with TURN REST credentials, as the locator hands them out. */
export interface IceServer {
  urls: string[] | string;
  username?: string;
  credential?: string;
}

/** What comes with a state change. `reason` is for people, `code` for programs. */
export interface StateDetail {
  /** Why, in words. */
  reason: string;
  /**
   * Why, as a stable code: `joined`, `rejoined`, `edge-lost`, `moved`, `session-ended`,
   * `session-not-found`, `session-full`, `left`, `replaced`, `refused`.
   */
  code: string;
  /** The edge (when connected or moved: the one now hosting the session). */
  edge?: EdgeRef;
  region?: string;
  /** The locator's answer: whether the edge is outside the client's region, and why. */
  fallback?: boolean;
  locatorReason?: string;
  locatorReasonCode?: string;
  /** `moved`: the edge the room moved to and its session websocket, from the edge's `moved` frame. */
  movedTo?: { edge: string; url: string };
  /** The websocket close code that caused the change, when there was one. */
  closeCode?: number;
  /** Reconnection attempt (1 = the first retry) and the wait before it. */
  attempt?: number;
  retryInMs?: number;
}

/** Data of a message: text, or binary as an ArrayBuffer. */
export type MessageData = string | ArrayBuffer;

/** A message that could not be sent, and why. */
export interface DroppedMessage {
  data: MessageData;
  /** `queue-full`: the reconnect queue was at its bound; `session-ended`, `closed`: no session to send on. */
  reason: "queue-full" | "session-ended" | "closed";
}

/**
 * The media link's state: the peer connection's own (`new`, `connecting`, `connected`,
 * `disconnected`, `failed`, `closed`) as it goes, plus `closed` when the library drops
 * it (link lost, left) and `unavailable` when it cannot have one (no RTCPeerConnection,
 * the edge serves no more WebRTC peers).
 */
export type MediaState = "new" | "connecting" | "connected" | "disconnected" | "failed" | "closed" | "unavailable";

export interface SessionEvents {
  message: (from: string, data: MessageData) => void;
  presence: (participants: string[]) => void;
  state: (state: SessionState, detail: StateDetail) => void;
  dropped: (messages: DroppedMessage[]) => void;
  /**
   * Another participant's audio or video track arrived (`participant`: its participant
   * id, the forwarded stream's id). Registering a listener opens the media link.
   */
  track: (participant: string, track: MediaStreamTrack, stream: MediaStream | null) => void;
  /** A track of `track` is gone: its publisher stopped or left, or the media link was replaced. */
  trackended: (participant: string, track: MediaStreamTrack) => void;
  /** The media link's state changed (see {@link MediaState}). */
  media: (state: MediaState, detail: { reason: string }) => void;
  /** The edge refused a media signalling step (its `rtc` `error` frame, or a local failure). */
  mediaerror: (detail: string) => void;
}

/** The part of the WebSocket API the library uses (browsers' and the `ws` package's). */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string | ArrayBuffer | ArrayBufferView): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Jittered exponential back-off: wait `random() * min(maxMs, initialMs * 2^attempt)` ("full jitter"). */
export interface BackoffOptions {
  /** First ceiling, ms (default 250). */
  initialMs?: number;
  /** Largest ceiling, ms (default 5000). */
  maxMs?: number;
  /** Smallest wait, ms, so a retry never spins (default 10). */
  minMs?: number;
}

export interface LocusClientOptions {
  /** Locator base URLs, tried in this order (any locator answers any client). */
  locators: string[];
  /** WebSocket implementation (default: the global one; Node 20 needs e.g. `ws`). */
  WebSocket?: WebSocketConstructor;
  /** fetch implementation (default: the global one). */
  fetch?: typeof fetch;
  backoff?: BackoffOptions;
  /** Random numbers in [0, 1) for the jitter (default Math.random; tests pass their own). */
  random?: () => number;
  /** Waits (default setTimeout); tests may pass their own. */
  sleep?: (ms: number) => Promise<void>;
  /** Timeout of one locator request, ms (default 5000). */
  requestTimeoutMs?: number;
  /** Timeout of opening the edge websocket until the first presence, ms (default 5000). */
  connectTimeoutMs?: number;
  /** How long `join()` keeps trying before it rejects, ms (default 30000). */
  joinTimeoutMs?: number;
  /** Messages kept while reconnecting (default 256); more are dropped and reported. */
  sendQueue?: number;
  /** RTCPeerConnection implementation for media (default: the global one; none in Node). */
  RTCPeerConnection?: typeof RTCPeerConnection;
  /** How long an offer waits for the browser's ICE candidates before it is sent anyway, ms (default 3000). */
  iceGatherTimeoutMs?: number;
  /** How long an offer waits for the edge's answer before it is taken back and made again, ms (default 10000). */
  answerTimeoutMs?: number;
}

export interface JoinOptions {
  /** A stable room key: the same key joins the same room. */
  key?: string;
  /** A preferred region instead of the one the locator derives from the address. */
  region?: string;
  /** Join an existing session by id (what another participant shares). */
  sessionId?: string;
}

/** The locator's session answer (`POST /v1/sessions`, `GET /v1/sessions/{id}`). */
export interface SessionAnswer {
  session_id: string;
  key?: string;
  created: boolean;
  region: string;
  fallback: boolean;
  reason: string;
  reason_code: string;
  edge: EdgeRef;
  ws_url: string;
  join_token: string;
  join_token_expires_at: number;
  ice_servers: IceServer[];
}

/** The locator's locate answer (`GET /v1/locate`). */
export interface LocateAnswer {
  region: string;
  rule: string;
  fallback: boolean;
  reason: string;
  reason_code: string;
  edge: EdgeRef;
  ice_servers: IceServer[];
}

/** An error a program can act on: `code` is the problem type (e.g. `session-ended`). */
export class LocusError extends Error {
  readonly code: string;
  readonly status?: number;
  constructor(code: string, message: string, status?: number) {
    super(message);
    this.name = "LocusError";
    this.code = code;
    this.status = status;
  }
}

/** The wait before retry number `attempt` (0-based) under full jitter. */
export function backoffDelay(attempt: number, options: BackoffOptions, random: () => number): number {
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
} as const;

const OPEN = 1;
const ENVELOPE_MAGIC = [0x4c, 0x43, 0x4d, 0x01]; // "LCM\x01"
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Wraps an outgoing message with the sender's id (see the module comment). */
export function encodeMessage(from: string, data: string | ArrayBuffer | ArrayBufferView): string | ArrayBuffer {
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
export function decodeMessage(data: string | ArrayBuffer): { from: string; data: MessageData } {
  if (typeof data === "string") {
    if (data.startsWith('{"lcm":1,')) {
      try {
        const m = JSON.parse(data) as { from?: unknown; text?: unknown };
        if (typeof m.from === "string" && typeof m.text === "string") return { from: m.from, data: m.text };
      } catch {
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

type Listeners = { [K in keyof SessionEvents]: Set<SessionEvents[K]> };

interface Resolved {
  backoff: BackoffOptions;
  random: () => number;
  sleep: (ms: number) => Promise<void>;
  requestTimeoutMs: number;
  connectTimeoutMs: number;
  joinTimeoutMs: number;
  sendQueue: number;
  RTCPeerConnection: typeof RTCPeerConnection | undefined;
  iceGatherTimeoutMs: number;
  answerTimeoutMs: number;
}

/** Entry point: holds the locators and the transport; makes sessions. */
export class LocusClient {
  readonly locators: readonly string[];
  readonly #WebSocket: WebSocketConstructor;
  readonly #fetch: typeof fetch;
  readonly #options: Resolved;

  constructor(options: LocusClientOptions) {
    if (!options || !Array.isArray(options.locators) || options.locators.length === 0) {
      throw new TypeError("LocusClient: `locators` must list at least one locator URL");
    }
    this.locators = options.locators.map((url) => url.replace(/\/+$/, ""));
    const ws = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!ws) {
      throw new TypeError("LocusClient: no WebSocket implementation: pass `WebSocket` (in Node 20, e.g. the `ws` package)");
    }
    const f = options.fetch ?? globalThis.fetch;
    if (!f) throw new TypeError("LocusClient: no fetch implementation: pass `fetch`");
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
      RTCPeerConnection: options.RTCPeerConnection ?? (globalThis as { RTCPeerConnection?: typeof RTCPeerConnection }).RTCPeerConnection,
      iceGatherTimeoutMs: options.iceGatherTimeoutMs ?? 3000,
      answerTimeoutMs: options.answerTimeoutMs ?? 10000,
    };
  }

  /** `GET /v1/locate`: where a new session would go, with ICE servers. */
  async locate(options: { region?: string } = {}): Promise<LocateAnswer> {
    const query = options.region ? `?region=${encodeURIComponent(options.region)}` : "";
    return (await this.#request("GET", `/v1/locate${query}`, undefined, Date.now() + this.#options.joinTimeoutMs)) as LocateAnswer;
  }

  /**
   * Starts or joins a session and resolves once connected to its edge. `sessionId` joins
   * that session; `key` starts or joins the room with that key; neither starts an ad-hoc
   * session. Rejects with a {@link LocusError} (`session-ended`, `session-not-found`, a
   * 4xx problem, or `join-timeout`).
   */
  async join(options: JoinOptions = {}): Promise<Session> {
    const deadline = Date.now() + this.#options.joinTimeoutMs;
    let answer: SessionAnswer;
    if (options.sessionId) {
      answer = await this.session(options.sessionId, deadline);
    } else {
      const body: { key?: string; region?: string } = {};
      if (options.key !== undefined) body.key = options.key;
      if (options.region !== undefined) body.region = options.region;
      answer = (await this.#request("POST", "/v1/sessions", body, deadline)) as SessionAnswer;
    }
    const session = new Session(this, answer, this.#options);
    await session._start(deadline);
    return session;
  }

  /** `GET /v1/sessions/{id}`: where the session lives now, with a fresh join token. */
  async session(id: string, deadline = Date.now() + this.#options.joinTimeoutMs): Promise<SessionAnswer> {
    return (await this.#request("GET", `/v1/sessions/${encodeURIComponent(id)}`, undefined, deadline)) as SessionAnswer;
  }

  /** @internal */
  _open(url: string): WebSocketLike {
    return new this.#WebSocket(url);
  }

  /**
   * One request, through the locators in the given order: the next one on a network
   * error, a timeout, 5xx or 429; a jittered back-off after each whole round; until the
   * deadline. Any other answer is final (2xx: the body; 4xx: a LocusError).
   */
  async #request(method: string, path: string, body: unknown, deadline: number): Promise<unknown> {
    const { random, sleep, backoff, requestTimeoutMs } = this.#options;
    let lastProblem = "no locator answered";
    for (let round = 0; ; round++) {
      let retryAfterMs = 0;
      for (const base of this.locators) {
        const controller = new AbortController();
        const timer = setTimeout(() => controller.abort(), requestTimeoutMs);
        let response: Response;
        try {
          response = await this.#fetch(base + path, {
            method,
            headers: body === undefined ? {} : { "content-type": "application/json" },
            body: body === undefined ? undefined : JSON.stringify(body),
            signal: controller.signal,
          });
        } catch (error) {
          lastProblem = `${base}: ${errorText(error)}`;
          continue;
        } finally {
          clearTimeout(timer);
        }
        if (response.ok) return await response.json();
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
  readonly id: string;
  /** The edge the session lives on now. */
  edge: EdgeRef;
  /** The region it is served from now. */
  region: string;
  /** Participant ids present, in join order (this client included). */
  participants: string[] = [];
  /** This client's participant id on the current edge (a new one after each re-join). */
  you = "";
  state: SessionState = "connecting";
  /** The locator's last answer (ICE servers, reason, fallback). */
  answer: SessionAnswer;

  readonly #client: LocusClient;
  readonly #options: Resolved;
  readonly #listeners: Listeners = {
    message: new Set(),
    presence: new Set(),
    state: new Set(),
    dropped: new Set(),
    track: new Set(),
    trackended: new Set(),
    media: new Set(),
    mediaerror: new Set(),
  };
  #socket: WebSocketLike | null = null;
  #queue: Array<string | ArrayBuffer> = [];
  #rejoining = false;
  /** Bumped for every socket opened: events of an older socket are ignored. */
  #generation = 0;
  /** Bumped when the session ends or is left: a re-join loop of an older epoch stops. */
  #epoch = 0;
  /** Media wanted: `publish` was called or a `track` listener registered. */
  #wantMedia = false;
  #published: MediaStream[] = [];
  /** The media link of the current edge connection (one per connection: a re-join makes a new one). */
  #media: MediaLink | null = null;
  /** Media links that failed in a row on this connection (reset when one connects or on re-join). */
  #mediaFailures = 0;
  #mediaTimer: ReturnType<typeof setTimeout> | null = null;

  /** @internal Use {@link LocusClient.join}. */
  constructor(client: LocusClient, answer: SessionAnswer, options: Resolved) {
    this.#client = client;
    this.#options = options;
    this.answer = answer;
    this.id = answer.session_id;
    this.edge = answer.edge;
    this.region = answer.region;
  }

  on<K extends keyof SessionEvents>(event: K, listener: SessionEvents[K]): () => void {
    const set = this.#listeners[event] as Set<SessionEvents[K]>;
    if (!set) throw new TypeError(`Session.on: unknown event ${String(event)}`);
    set.add(listener);
    if (event === "track") {
      this.#wantMedia = true;
      this.#startMedia();
    }
    return () => this.off(event, listener);
  }

  off<K extends keyof SessionEvents>(event: K, listener: SessionEvents[K]): void {
    (this.#listeners[event] as Set<SessionEvents[K]>)?.delete(listener);
  }

  /**
   * Sends to every other participant. While the link is being re-established the message
   * is queued (up to `sendQueue`) and sent in order once connected. Returns false when it
   * was dropped instead (reported through `dropped` too).
   */
  send(data: string | ArrayBuffer | ArrayBufferView): boolean {
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
  publish(stream: MediaStream): void {
    if (!this.#options.RTCPeerConnection) {
      throw new LocusError("media-unavailable", "no RTCPeerConnection here: media needs a browser (or the `RTCPeerConnection` option)");
    }
    if (this.state === "ended" || this.state === "closed") {
      throw new LocusError(this.state === "ended" ? "session-ended" : "closed", `cannot publish: the session is ${this.state}`);
    }
    if (!this.#published.includes(stream)) this.#published.push(stream);
    this.#wantMedia = true;
    if (this.#media) this.#media.publish(stream);
    else this.#startMedia();
  }

  /** Stops publishing `stream` (every published stream when omitted). The tracks themselves are left running. */
  unpublish(stream?: MediaStream): void {
    const gone = stream ? this.#published.filter((s) => s === stream) : this.#published;
    this.#published = stream ? this.#published.filter((s) => s !== stream) : [];
    for (const s of gone) this.#media?.unpublish(s);
  }

  /** The streams published now. */
  get published(): readonly MediaStream[] {
    return [...this.#published];
  }

  /** The current media link's peer connection (for `getStats()`), or null. */
  get peerConnection(): RTCPeerConnection | null {
    return this.#media?.pc ?? null;
  }

  /** Messages waiting for the link to come back. */
  get queued(): number {
    return this.#queue.length;
  }

  /** Leaves the session for good: state `closed`; queued messages are reported dropped. */
  leave(): void {
    if (this.state === "closed" || this.state === "ended") return;
    this.#generation++;
    this.#epoch++;
    const socket = this.#socket;
    this.#socket = null;
    if (socket) {
      detach(socket);
      try {
        socket.close(1000, "left");
      } catch {
        // already closing
      }
    }
    this.#finish("closed", { reason: "left the session", code: "left" }, "closed");
  }

  /** @internal First connection, during `join()`. */
  async _start(deadline: number): Promise<void> {
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
      } catch (error) {
        if (error instanceof LocusError) this.#finish("ended", { reason: error.message, code: error.code }, "session-ended");
        throw error;
      }
    }
  }

  #emit<K extends keyof SessionEvents>(event: K, ...args: Parameters<SessionEvents[K]>): void {
    for (const listener of [...this.#listeners[event]]) {
      try {
        (listener as (...a: Parameters<SessionEvents[K]>) => void)(...args);
      } catch (error) {
        // A listener's bug must not break the session's own bookkeeping.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }

  #setState(state: SessionState, detail: StateDetail): void {
    this.state = state;
    this.#emit("state", state, detail);
  }

  #drop(messages: DroppedMessage[]): void {
    if (messages.length > 0) this.#emit("dropped", messages);
  }

  #finish(state: "ended" | "closed", detail: StateDetail, reason: DroppedMessage["reason"]): void {
    this.#generation++;
    this.#epoch++;
    this.#stopMedia(detail.reason);
    this.#setState(state, detail);
    const dropped = this.#queue.map((data) => ({ data, reason }));
    this.#queue = [];
    this.#drop(dropped);
  }

  #connected(code: string, reason: string): void {
    const socket = this.#socket;
    // Flush what was queued, in order, before anything sent from now on.
    while (socket && this.#queue.length > 0 && socket.readyState === OPEN) {
      socket.send(encodeMessage(this.you, this.#queue.shift() as string | ArrayBuffer));
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
  #connect(answer: SessionAnswer): Promise<ConnectOutcome> {
    this.edge = answer.edge;
    this.region = answer.region;
    const generation = ++this.#generation;
    return new Promise((resolve) => {
      let settled = false;
      let socket: WebSocketLike;
      const settle = (outcome: ConnectOutcome) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (!outcome.ok) {
          detach(socket);
          try {
            socket.close();
          } catch {
            // never opened
          }
        }
        resolve(outcome);
      };
      const url = `${answer.ws_url}${answer.ws_url.includes("?") ? "&" : "?"}token=${encodeURIComponent(answer.join_token)}`;
      try {
        socket = this.#client._open(url);
      } catch (error) {
        resolve({ ok: false, final: false, detail: { reason: `cannot open ${answer.ws_url}: ${errorText(error)}`, code: "edge-lost" } });
        return;
      }
      socket.binaryType = "arraybuffer";
      const timer = setTimeout(
        () => settle({ ok: false, final: false, detail: { reason: `edge ${answer.edge.id} did not admit us within ${this.#options.connectTimeoutMs} ms`, code: "edge-lost" } }),
        this.#options.connectTimeoutMs,
      );
      socket.onmessage = (ev) => {
        if (generation !== this.#generation) return;
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
  #onFrame(raw: unknown): "presence" | "moved" | "message" | "ignored" {
    if (typeof raw === "string" && raw.startsWith('{"locus"')) {
      let frame: { locus?: string; participants?: unknown; you?: unknown; edge?: unknown; url?: unknown };
      try {
        frame = JSON.parse(raw);
      } catch {
        return "ignored";
      }
      if (frame.locus === "presence" && Array.isArray(frame.participants)) {
        this.participants = frame.participants.filter((p): p is string => typeof p === "string");
        if (typeof frame.you === "string") this.you = frame.you;
        this.#emit("presence", [...this.participants]);
        return "presence";
      }
      if (frame.locus === "rtc") {
        this.#media?.signal(frame as RtcFrame);
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

  #movedTo: { edge: string; url: string } | null = null;

  /** Opens the media link on the current connection when media is wanted and there is none. */
  #startMedia(): void {
    if (!this.#wantMedia || this.#media || this.state !== "connected" || !this.#socket) return;
    const Ctor = this.#options.RTCPeerConnection;
    if (!Ctor) {
      this.#emit("media", "unavailable", { reason: "no RTCPeerConnection here: media needs a browser (or the `RTCPeerConnection` option)" });
      return;
    }
    const generation = this.#generation;
    const host: MediaHost = {
      sendRtc: (frame) => {
        const socket = this.#socket;
        if (generation !== this.#generation || !socket || socket.readyState !== OPEN) return false;
        socket.send(JSON.stringify({ locus: "rtc", ...frame }));
        return true;
      },
      emit: (event, ...args) => (this.#emit as (e: string, ...a: unknown[]) => void)(event, ...args),
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
        if (link !== this.#media) return;
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
          if (generation === this.#generation) this.#startMedia();
        }, wait);
      },
    };
    try {
      this.#media = new MediaLink(Ctor, this.answer.ice_servers ?? [], host, this.#options);
    } catch (error) {
      this.#media = null;
      this.#emit("mediaerror", `cannot open a peer connection: ${errorText(error)}`);
    }
  }

  /** Drops the media link (its remote tracks are reported ended). */
  #stopMedia(reason: string): void {
    if (this.#mediaTimer) clearTimeout(this.#mediaTimer);
    this.#mediaTimer = null;
    const media = this.#media;
    this.#media = null;
    media?.close(reason);
  }

  /** What a close before admission means. */
  #closeOutcome(code: number, reason: string, answer: SessionAnswer): ConnectOutcome {
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
  #linkLost(code: number, reason: string): void {
    if (this.state === "closed" || this.state === "ended") return;
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
  async #rejoin(code: string, why: string, closeCode?: number): Promise<void> {
    if (this.#rejoining) return;
    this.#rejoining = true;
    const epoch = this.#epoch;
    const { backoff, random, sleep } = this.#options;
    let reason = why;
    try {
      for (let attempt = 0; ; attempt++) {
        if (this.state === "closed" || this.state === "ended" || epoch !== this.#epoch) return;
        // The first try after a move is at once: the new edge is already waiting.
        const wait = attempt === 0 && code === "moved" ? 0 : backoffDelay(attempt, backoff, random);
        this.#setState("reconnecting", { reason, code, closeCode, attempt: attempt + 1, retryInMs: wait, edge: this.edge, region: this.region });
        if (wait > 0) await sleep(wait);
        if (this.state !== "reconnecting" || epoch !== this.#epoch) return;
        let answer: SessionAnswer;
        try {
          answer = await this.#client.session(this.id, Date.now() + Math.max(this.#options.requestTimeoutMs, backoff.maxMs ?? 5000));
        } catch (error) {
          if (this.state !== "reconnecting" || epoch !== this.#epoch) return;
          if (error instanceof LocusError && (error.status === 410 || error.status === 404)) {
            this.#finish("ended", { reason: error.message, code: error.code, closeCode }, "session-ended");
            return;
          }
          reason = errorText(error);
          continue;
        }
        if (this.state !== "reconnecting" || epoch !== this.#epoch) return;
        this.answer = answer;
        const outcome = await this.#connect(answer);
        if (this.state !== "reconnecting") {
          // Left meanwhile: drop the fresh link.
          if (outcome.ok) this.#socket?.close(1000, "left");
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
    } finally {
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

/** An `rtc` frame from the edge. */
interface RtcFrame {
  locus: "rtc";
  type?: unknown;
  sdp?: unknown;
  detail?: unknown;
}

/** What a media link needs of its session. */
interface MediaHost {
  /** Sends `{"locus":"rtc",…frame}` on the session websocket; false when it is not open. */
  sendRtc(frame: Record<string, unknown>): boolean;
  emit(event: keyof SessionEvents, ...args: unknown[]): void;
  /** A message that arrived on the `locus` data channel. */
  message(raw: unknown): void;
  published(): MediaStream[];
  connected(): void;
  /** The link cannot go on: `retry` says whether a new one may help. */
  failed(link: MediaLink, reason: string, retry: boolean): void;
}

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
  readonly pc: RTCPeerConnection;
  readonly #host: MediaHost;
  readonly #options: Resolved;
  #chain: Promise<void> = Promise.resolve();
  #closed = false;
  /** Our offer is with the edge, waiting for its answer. */
  #awaitingAnswer = false;
  #answerTimer: ReturnType<typeof setTimeout> | null = null;
  #offerTimer: ReturnType<typeof setTimeout> | null = null;
  #lastOfferAt = 0;
  /** Offers refused or unanswered in a row. */
  #refusals = 0;
  /** Candidates found after an offer left are trickled. */
  #offerSent = false;
  readonly #senders = new Map<MediaStreamTrack, RTCRtpSender>();
  /** Remote tracks alive now, with their publisher. */
  readonly #remote = new Map<MediaStreamTrack, string>();

  constructor(Ctor: typeof RTCPeerConnection, iceServers: IceServer[], host: MediaHost, options: Resolved) {
    this.#host = host;
    this.#options = options;
    this.pc = new Ctor({
      iceServers: iceServers.map((s) => ({ urls: s.urls, username: s.username, credential: s.credential })),
    });
    const channel = this.pc.createDataChannel("locus");
    channel.binaryType = "arraybuffer";
    // While this channel is open the edge delivers the session's messages on it instead of the websocket.
    channel.onmessage = (ev) => {
      if (!this.#closed) host.message(ev.data);
    };
    this.pc.onnegotiationneeded = () => this.negotiate();
    this.pc.ontrack = (ev) => this.#onTrack(ev);
    this.pc.onicecandidate = (ev) => {
      // mDNS names (`….local`) mean nothing to the edge: it learns the address from the checks.
      if (!this.#offerSent || this.#closed || !ev.candidate || /\.local\b/.test(ev.candidate.candidate)) return;
      host.sendRtc({ type: "candidate", candidate: ev.candidate.toJSON() });
    };
    this.pc.onconnectionstatechange = () => {
      if (this.#closed) return;
      const state = this.pc.connectionState;
      host.emit("media", state, { reason: `peer connection ${state}` });
      if (state === "connected") host.connected();
      if (state === "failed") host.failed(this, "the WebRTC connection to the edge failed", true);
    };
    for (const stream of host.published()) this.publish(stream);
    host.emit("media", "new", { reason: "opening the media link" });
  }

  publish(stream: MediaStream): void {
    if (this.#closed) return;
    for (const track of stream.getTracks()) {
      if (!this.#senders.has(track)) this.#senders.set(track, this.pc.addTrack(track, stream));
    }
  }

  unpublish(stream: MediaStream): void {
    if (this.#closed) return;
    for (const track of stream.getTracks()) {
      const sender = this.#senders.get(track);
      if (!sender) continue;
      this.#senders.delete(track);
      try {
        this.pc.removeTrack(sender);
      } catch {
        // the connection is closing
      }
    }
  }

  /** Handles an `rtc` frame from the edge. */
  signal(frame: RtcFrame): void {
    if (this.#closed) return;
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
  negotiate(): void {
    if (this.#closed || this.#offerTimer) return;
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

  close(reason: string): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const timer of [this.#answerTimer, this.#offerTimer]) if (timer) clearTimeout(timer);
    for (const track of [...this.#remote.keys()]) this.#trackGone(track);
    try {
      this.pc.close();
    } catch {
      // already closed
    }
    this.#host.emit("media", "closed", { reason });
  }

  #run(step: () => Promise<void>): void {
    this.#chain = this.#chain.then(async () => {
      if (this.#closed) return;
      try {
        await step();
      } catch (error) {
        if (!this.#closed) this.#host.emit("mediaerror", errorText(error));
      }
    });
  }

  async #offer(): Promise<void> {
    if (this.pc.signalingState !== "stable") return; // an answer is due first; negotiationneeded fires again after
    this.#lastOfferAt = Date.now();
    await this.pc.setLocalDescription();
    await this.#gathered();
    const sdp = this.pc.localDescription?.sdp;
    if (this.#closed || !sdp || (this.pc.signalingState as RTCSignalingState) !== "have-local-offer") return;
    if (!this.#host.sendRtc({ type: "offer", sdp })) return;
    this.#offerSent = true;
    this.#lastOfferAt = Date.now();
    this.#awaitingAnswer = true;
    this.#answerTimer = setTimeout(() => {
      this.#answerTimer = null;
      // The edge may yet apply this offer: rolling it back here could leave the two
      // sides disagreeing about the m-lines, so the whole link is made anew.
      if (!this.#closed) this.#host.failed(this, `the edge did not answer an offer within ${this.#options.answerTimeoutMs} ms`, true);
    }, this.#options.answerTimeoutMs);
  }

  async #edgeAnswer(sdp: string): Promise<void> {
    if (!this.#awaitingAnswer || this.pc.signalingState !== "have-local-offer") return;
    this.#awaitingAnswer = false;
    if (this.#answerTimer) clearTimeout(this.#answerTimer);
    this.#answerTimer = null;
    try {
      await this.pc.setRemoteDescription({ type: "answer", sdp });
    } catch (error) {
      // The edge has applied our offer; only a new link brings the two sides together again.
      this.#host.failed(this, `the edge's answer was not accepted: ${errorText(error)}`, true);
      return;
    }
    this.#refusals = 0;
  }

  async #edgeOffer(sdp: string): Promise<void> {
    // Glare: ours is outstanding. The edge is polite: it answers ours, then offers again.
    if (this.pc.signalingState !== "stable") return;
    try {
      await this.pc.setRemoteDescription({ type: "offer", sdp });
      await this.pc.setLocalDescription();
    } catch (error) {
      this.#host.emit("mediaerror", `the edge's offer was not accepted: ${errorText(error)}`);
      if (this.pc.signalingState !== "stable") {
        await this.pc.setRemoteDescription({ type: "rollback" }).catch(() => {});
      }
      return;
    }
    const answer = this.pc.localDescription?.sdp;
    if (answer) this.#host.sendRtc({ type: "answer", sdp: answer });
  }

  async #edgeError(detail: string): Promise<void> {
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
    if (this.#awaitingAnswer) await this.#refused(detail);
  }

  /**
   * The edge refused our offer (it did not apply it): take it back and offer again later
   * (jittered back-off).
   */
  async #refused(why: string): Promise<void> {
    this.#awaitingAnswer = false;
    if (this.#answerTimer) clearTimeout(this.#answerTimer);
    this.#answerTimer = null;
    if (this.pc.signalingState === "have-local-offer") {
      await this.pc.setLocalDescription({ type: "rollback" }).catch(() => {});
    }
    this.#refusals++;
    if (this.#refusals > MEDIA_RETRIES) {
      this.#host.failed(this, `the edge refused ${this.#refusals} offers in a row (last: ${why})`, true);
      return;
    }
    const wait = Math.max(OFFER_SPACING_MS, backoffDelay(this.#refusals, this.#options.backoff, this.#options.random));
    if (this.#offerTimer) clearTimeout(this.#offerTimer);
    this.#offerTimer = setTimeout(() => {
      this.#offerTimer = null;
      this.negotiate();
    }, wait);
  }

  /** Resolves when ICE gathering is complete, or after `iceGatherTimeoutMs`. */
  #gathered(): Promise<void> {
    const pc = this.pc;
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      };
      const check = () => {
        if (pc.iceGatheringState === "complete") done();
      };
      const timer = setTimeout(done, this.#options.iceGatherTimeoutMs);
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  #onTrack(ev: RTCTrackEvent): void {
    if (this.#closed) return;
    const stream = ev.streams[0] ?? null;
    // The edge names each forwarded stream after its publisher's participant id.
    const participant = stream?.id ?? "";
    const track = ev.track;
    this.#remote.set(track, participant);
    track.onended = () => this.#trackGone(track);
    if (stream) stream.onremovetrack = (e) => this.#trackGone(e.track);
    this.#host.emit("track", participant, track, stream);
  }

  #trackGone(track: MediaStreamTrack): void {
    const participant = this.#remote.get(track);
    if (participant === undefined) return;
    this.#remote.delete(track);
    this.#host.emit("trackended", participant, track);
  }
}

type ConnectOutcome =
  | { ok: true }
  | { ok: false; final: false; detail: StateDetail }
  | { ok: false; final: true; state: "ended" | "closed"; detail: StateDetail };

function detach(socket: WebSocketLike | undefined): void {
  if (!socket) return;
  socket.onopen = null;
  socket.onmessage = null;
  socket.onclose = null;
  socket.onerror = null;
}

function copyData(data: string | ArrayBuffer | ArrayBufferView): string | ArrayBuffer {
  if (typeof data === "string") return data;
  if (data instanceof ArrayBuffer) return data.slice(0);
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice().buffer;
}

function errorText(error: unknown): string {
  if (error instanceof Error) {
    const cause = (error as { cause?: unknown }).cause;
    return cause instanceof Error ? `${error.message} (${cause.message})` : error.message;
  }
  return String(error);
}

async function readProblem(response: Response): Promise<{ code: string; detail: string }> {
  let code = `http-${response.status}`;
  let detail = `${response.status} ${response.statusText}`;
  try {
    const body = (await response.json()) as { type?: unknown; detail?: unknown; title?: unknown };
    if (typeof body.type === "string" && body.type) code = body.type.replace(/^.*[/#:]/, "") || code;
    if (typeof body.detail === "string") detail = body.detail;
    else if (typeof body.title === "string") detail = body.title;
  } catch {
    // not problem+json: status line only
  }
  return { code, detail };
}

function retryAfter(response: Response): number {
  const value = Number(response.headers.get("retry-after"));
  return Number.isFinite(value) && value > 0 ? value * 1000 : 0;
}
