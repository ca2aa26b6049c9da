// A minimal W3C WebDriver client over fetch for the browser tests: the system's headless
// Chromium through chromedriver (started on a free port; no client package). Chromium and
// chromedriver come from the Debian packages `chromium` and `chromium-driver` (scripts/test
// installs them). Without them a test fails with the command to run;
// LOCUS_SKIP_BROWSER_TEST=1 skips it loudly on a developer machine and is refused when
// CI=true. LOCUS_CHROMIUM and LOCUS_CHROMEDRIVER point elsewhere.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join, delimiter } from "node:path";
import { freePort, waitFor } from "./harness.mjs";

export function findProgram(env, names) {
  if (process.env[env]) return process.env[env];
  for (const name of names) {
    if (name.startsWith("/")) {
      if (existsSync(name)) return name;
      continue;
    }
    for (const dir of (process.env.PATH ?? "").split(delimiter)) {
      if (dir && existsSync(join(dir, name))) return join(dir, name);
    }
  }
  return null;
}

/**
 * Ceiling of one WebDriver command (a hung browser fails the test instead of hanging it);
 * above the async-script timeout the tests set (60 s).
 */
const COMMAND_TIMEOUT_MS = 90000;

/** A minimal W3C WebDriver client over fetch. */
export class Driver {
  constructor(base, id) {
    this.base = base;
    this.id = id;
  }

  static async start(url, chromium, extraArgs = []) {
    const response = await fetch(`${url}/session`, {
      signal: AbortSignal.timeout(COMMAND_TIMEOUT_MS),
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        capabilities: {
          alwaysMatch: {
            browserName: "chrome",
            "goog:chromeOptions": {
              binary: chromium,
              args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1060", ...extraArgs],
            },
          },
        },
      }),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(`cannot start Chromium through chromedriver: ${JSON.stringify(body.value)}`);
    return new Driver(url, body.value.sessionId);
  }

  async cmd(method, path, body) {
    const response = await fetch(`${this.base}/session/${this.id}${path}`, {
      signal: AbortSignal.timeout(COMMAND_TIMEOUT_MS),
      method,
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await response.json();
    if (!response.ok) throw new Error(`webdriver ${method} ${path}: ${JSON.stringify(json.value).slice(0, 400)}`);
    return json.value;
  }

  go(url) {
    return this.cmd("POST", "/url", { url });
  }

  run(script, ...args) {
    return this.cmd("POST", "/execute/sync", { script, args });
  }

  /** Runs `script` with a callback as its last argument (`arguments[arguments.length - 1]`). */
  runAsync(script, ...args) {
    return this.cmd("POST", "/execute/async", { script, args });
  }

  async type(css, text) {
    const el = await this.cmd("POST", "/element", { using: "css selector", value: css });
    const ref = Object.values(el)[0];
    await this.cmd("POST", `/element/${ref}/clear`, {});
    await this.cmd("POST", `/element/${ref}/value`, { text });
  }

  async click(css) {
    const el = await this.cmd("POST", "/element", { using: "css selector", value: css });
    await this.cmd("POST", `/element/${Object.values(el)[0]}/click`, {});
  }

  async newTab(type = "tab") {
    const { handle } = await this.cmd("POST", "/window/new", { type });
    return handle;
  }

  window() {
    return this.cmd("GET", "/window");
  }

  switchTo(handle) {
    return this.cmd("POST", "/window", { handle });
  }

  async screenshot() {
    return Buffer.from(await this.cmd("GET", "/screenshot"), "base64");
  }

  quit() {
    return fetch(`${this.base}/session/${this.id}`, { method: "DELETE", signal: AbortSignal.timeout(20000) }).catch(() => {});
  }
}

/**
 * Starts chromedriver and one headless Chromium session (cleaned up after `t`), or skips
 * the test as described at the top. Returns the driver, or null when skipped.
 */
export async function startBrowser(t, extraArgs = []) {
  const chromium = findProgram("LOCUS_CHROMIUM", ["chromium", "chromium-browser", "/usr/lib/chromium/chromium"]);
  const chromedriver = findProgram("LOCUS_CHROMEDRIVER", ["chromedriver", "/usr/lib/chromium/chromedriver"]);
  if (!chromium || !chromedriver) {
    if (process.env.LOCUS_SKIP_BROWSER_TEST === "1" && process.env.CI !== "true") {
      t.skip("LOCUS_SKIP_BROWSER_TEST=1: NOT tested in a browser");
      return null;
    }
    assert.fail("headless Chromium and chromedriver are needed: apt-get install chromium chromium-driver (scripts/test does)");
  }
  const port = await freePort();
  // Its own process group, which Chromium joins: the cleanup ends the browser with the
  // driver even when the WebDriver session cannot be closed (a browser left behind would
  // slow every later test on the machine).
  const driverProcess = spawn(chromedriver, [`--port=${port}`], { stdio: "ignore", detached: true });
  const killGroup = () => {
    try {
      process.kill(-driverProcess.pid, "SIGKILL");
    } catch {
      // already gone
    }
  };
  process.once("exit", killGroup);
  let driver = null;
  t.after(async () => {
    if (driver) await driver.quit();
    killGroup();
  });
  const driverUrl = `http://127.0.0.1:${port}`;
  await waitFor("chromedriver ready", 30000, async () => (await (await fetch(`${driverUrl}/status`)).json()).value?.ready, 100);
  driver = await Driver.start(driverUrl, chromium, extraArgs);
  return driver;
}
