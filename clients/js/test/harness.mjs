// Real processes for the client tests: the built `locator` and `edge` binaries of this
// workspace (target/debug, or LOCUS_BIN_DIR), on free loopback ports, with fast edge
// timing. Faults are signals to the pids of processes started here, never by name.
// Every wait has a deadline and says what it waited for.

import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, existsSync, openSync, rmSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createHmac, randomBytes } from "node:crypto";
import WebSocket from "ws";
import { LocusClient } from "../dist/locus-client.js";

const here = dirname(fileURLToPath(import.meta.url));

/**
 * The credential of edge `id` in `region` (generation 1), as `locator edge-credential`
 * prints it: computed here independently of the Rust code, so the format is checked too.
 */
export function edgeCredential(key, region, id, generation = 1) {
  const mac = createHmac("sha256", key)
    .update(`locus-edge-credential\0${generation}\0${region}\0${id}`)
    .digest("base64url");
  return `le1:${generation}:${region}:${id}:${mac}`;
}
export const repoRoot = resolve(here, "../../..");
export const binDir = process.env.LOCUS_BIN_DIR ?? join(repoRoot, "target/debug");

export const REGIONS = `
geoip: { database: builtin-demo }
trusted_proxies: [127.0.0.0/8, "::1"]
default_region: us-east
edges:
  report_interval: 500ms
  missed_reports: 4
  grace_period: 5s
  probe_timeout: 300ms
  drain_deadline: 2s
regions:
  - id: us-east
    name: US East
    location: { lat: 39.04, lon: -77.49 }
    countries: [US, CA]
    continents: [NA, SA]
    fallback: [eu-west]
  - id: eu-west
    name: Europe West
    location: { lat: 53.35, lon: -6.26 }
    countries: [GB, IE, FR]
    continents: [EU, AF, AS, OC]
    fallback: [us-east]
`;

/** A port that was free a moment ago (the child binds it next). */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` (sync or async, truthy = done) until `ms` pass; then throws naming `what`. */
export async function waitFor(what, ms, check, every = 25) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}${last instanceof Error ? ` (last error: ${last.message})` : ""}`);
    }
    await sleep(every);
  }
}

/** Resolves with the state detail once `session` reaches `state` (already there counts). */
export function waitState(session, state, ms, what = "") {
  if (session.state === state) return Promise.resolve({});
  return new Promise((resolveState, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${ms} ms waiting for state ${state}${what ? ` of ${what}` : ""}; it is ${session.state}`));
    }, ms);
    const off = session.on("state", (s, detail) => {
      if (s === state) {
        clearTimeout(timer);
        off();
        resolveState(detail);
      }
    });
  });
}

/** Collects a session's state changes and messages for assertions. */
export function record(session) {
  const log = { states: [], messages: [], presence: [], dropped: [] };
  session.on("state", (state, detail) => log.states.push({ state, detail, at: Date.now() }));
  session.on("message", (from, data) => log.messages.push({ from, data }));
  session.on("presence", (p) => log.presence.push(p));
  session.on("dropped", (m) => log.dropped.push(...m));
  return log;
}

/** A client on these locators with fast, bounded retry timing. */
export function client(locators, extra = {}) {
  return new LocusClient({
    locators,
    WebSocket,
    backoff: { initialMs: 50, maxMs: 400 },
    requestTimeoutMs: 2000,
    connectTimeoutMs: 3000,
    joinTimeoutMs: 15000,
    ...extra,
  });
}

function ensureBinaries() {
  for (const name of ["locator", "edge"]) {
    if (!existsSync(join(binDir, name))) {
      throw new Error(`${join(binDir, name)} is missing: run \`cargo build -p locus-locator -p locus-edge\` (scripts/test does)`);
    }
  }
}

/** A fresh Postgres database for replicas (LOCUS_TEST_POSTGRES, as scripts/test sets it). */
export function createDatabase() {
  const base = process.env.LOCUS_TEST_POSTGRES;
  if (!base) return null;
  const name = `locus_js_${process.pid}_${randomBytes(4).toString("hex")}`;
  execFileSync("psql", ["-w", "-q", base, "-c", `CREATE DATABASE ${name}`], { stdio: "pipe" });
  const url = new URL(base);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop() {
      try {
        execFileSync("psql", ["-w", "-q", base, "-c", `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`], { stdio: "pipe" });
      } catch {
        // best effort: a leftover test database is harmless
      }
    },
  };
}

export class Topology {
  constructor(options) {
    this.options = options;
    this.dir = mkdtempSync(join(tmpdir(), "locus-js-"));
    this.config = join(this.dir, "regions.yaml");
    writeFileSync(this.config, options.regions ?? REGIONS);
    // The locators' master edge key; each edge gets its own credential (edgeCredential).
    this.edgeKey = `js-edge-key-${randomBytes(16).toString("hex")}`;
    this.adminToken = `js-admin-${randomBytes(16).toString("hex")}`;
    this.locators = [];
    this.edges = new Map();
  }

  /** Starts the locators (SQLite, or one Postgres database for several) and the edges. */
  static async start({ edges, locators = 1, database = null, drainDeadline = "1s", linger = "2s", regions } = {}) {
    ensureBinaries();
    const t = new Topology({ database, drainDeadline, linger, regions });
    try {
      for (let i = 0; i < locators; i++) t.locators.push({ port: await freePort(), child: null });
      for (let i = 0; i < locators; i++) t.spawnLocator(i);
      for (let i = 0; i < locators; i++) await t.waitHealthy(i);
      for (const id of edges) await t.startEdge(id);
      await t.waitActive(edges);
      return t;
    } catch (error) {
      t.stop();
      throw error;
    }
  }

  get locatorUrls() {
    return this.locators.map((l) => `http://127.0.0.1:${l.port}`);
  }

  log(name) {
    return openSync(join(this.dir, `${name}.log`), "a");
  }

  logText(name) {
    try {
      return readFileSync(join(this.dir, `${name}.log`), "utf8");
    } catch {
      return "";
    }
  }

  spawnLocator(i) {
    const database = this.options.database ?? join(this.dir, "locator.sqlite");
    const child = spawn(
      join(binDir, "locator"),
      ["serve", "--config", this.config, "--listen", `127.0.0.1:${this.locators[i].port}`, "--database", database],
      {
        env: { ...process.env, LOCATOR_EDGE_KEY: this.edgeKey, LOCATOR_ADMIN_TOKEN: this.adminToken, RUST_LOG: process.env.LOCUS_CHILD_LOG ?? "warn" },
        stdio: ["ignore", "ignore", this.log(`locator-${i}`)],
      },
    );
    this.locators[i].child = child;
  }

  async waitHealthy(i) {
    const url = `${this.locatorUrls[i]}/healthz`;
    await waitFor(`locator ${i} healthy on ${url} (log: ${this.dir}/locator-${i}.log)`, 30000, async () => {
      if (this.locators[i].child.exitCode !== null) throw new Error(`locator ${i} exited: ${this.logText(`locator-${i}`)}`);
      return (await fetch(url)).ok;
    }, 50);
  }

  /** Starts (or restarts) edge `id` (its region is the id without the trailing `-N`). */
  async startEdge(id) {
    const region = id.replace(/-\d+$/, "");
    const port = await freePort();
    const child = spawn(
      join(binDir, "edge"),
      [
        "--locator", this.locatorUrls.join(","),
        "--region", region,
        "--id", id,
        "--listen", `127.0.0.1:${port}`,
        "--public-url", `http://127.0.0.1:${port}`,
        "--linger", this.options.linger,
        "--drain-deadline", this.options.drainDeadline,
        "--spool-dir", join(this.dir, `spool-${id}`),
        // WebRTC on loopback: the browser tests' Chromium reaches the edge there.
        "--rtc-listen", "127.0.0.1",
      ],
      {
        env: { ...process.env, LOCATOR_EDGE_TOKEN: edgeCredential(this.edgeKey, region, id), RUST_LOG: process.env.LOCUS_CHILD_LOG ?? "warn" },
        stdio: ["ignore", "ignore", this.log(`edge-${id}`)],
      },
    );
    const exited = new Promise((r) => child.once("exit", (code, signal) => r({ code, signal })));
    this.edges.set(id, { id, region, port, child, exited });
  }

  async adminStatus(i = 0) {
    const response = await fetch(`${this.locatorUrls[i]}/v1/admin/status`, {
      headers: { authorization: `Bearer ${this.adminToken}` },
    });
    if (!response.ok) throw new Error(`admin status: ${response.status}`);
    return response.json();
  }

  /** Edge id -> state, as locator `i` sees it. */
  async edgeStates(i = 0) {
    const status = await this.adminStatus(i);
    const states = {};
    for (const region of status.regions ?? []) for (const edge of region.edges ?? []) states[edge.id] = edge.state;
    return states;
  }

  /** Waits until every edge of `ids` is `active` on every live locator. */
  async waitActive(ids, ms = 30000) {
    await waitFor(`edges ${ids.join(", ")} active (logs: ${this.dir})`, ms, async () => {
      for (let i = 0; i < this.locators.length; i++) {
        if (this.locators[i].child.exitCode !== null || this.locators[i].child.signalCode) continue;
        const states = await this.edgeStates(i);
        if (!ids.every((id) => states[id] === "active")) return false;
      }
      return true;
    }, 50);
  }

  /** Sends `signal` to edge `id`'s process; SIGKILL also waits until it is gone. */
  async signalEdge(id, signal) {
    const edge = this.edges.get(id);
    if (!edge) throw new Error(`no edge ${id}`);
    edge.child.kill(signal);
    if (signal === "SIGKILL") await this.edgeExited(id, 5000);
  }

  async edgeExited(id, ms) {
    const edge = this.edges.get(id);
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`edge ${id} did not exit within ${ms} ms`)), ms);
    });
    try {
      return await Promise.race([edge.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  async killLocator(i) {
    const child = this.locators[i].child;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGKILL");
    await Promise.race([exited, sleep(5000)]);
  }

  stop() {
    for (const edge of this.edges.values()) if (edge.child.exitCode === null && !edge.child.signalCode) edge.child.kill("SIGKILL");
    for (const l of this.locators) if (l.child && l.child.exitCode === null && !l.child.signalCode) l.child.kill("SIGKILL");
    if (!process.env.LOCUS_KEEP_LOGS) {
      rmSync(this.dir, { recursive: true, force: true });
    }
  }
}
