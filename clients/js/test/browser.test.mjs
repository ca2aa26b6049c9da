// The "try it" page in a real browser: the system's headless Chromium, driven over
// WebDriver (chromedriver, started here on a free port; the W3C protocol spoken with
// fetch, no client package). A real locator serves the page; real edge processes host
// the room. Two tabs join one room and chat; the room's edge is SIGKILLed; both tabs
// recover without a reload (a marker set in each page before the kill is still there) and
// chat again. Saves a screenshot to target/try-page.png (the README's docs/try.png).
//
// Chromium and chromedriver: see webdriver.mjs.

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Topology, repoRoot, waitFor } from "./harness.mjs";
import { startBrowser } from "./webdriver.mjs";

const VIEW = `return {
  state: document.getElementById("state").dataset.state,
  edge: document.getElementById("edge").textContent,
  region: document.getElementById("region").textContent,
  count: Number(document.getElementById("count").textContent),
  log: [...document.querySelectorAll("#log li")].map((li) => li.textContent),
  marker: window.__notReloaded === true,
};`;

test("the try page: two tabs chat, the edge is killed, both recover without a reload", async (t) => {
  const topo = await Topology.start({ edges: ["us-east-1", "us-east-2"] });
  t.after(() => topo.stop());
  const driver = await startBrowser(t);
  if (!driver) return;

  const page = `${topo.locatorUrls[0]}/try?room=browser-room`;
  const tabs = [await driver.window()];
  tabs.push(await driver.newTab());
  const names = ["Ada", "Grace"];
  for (const [i, tab] of tabs.entries()) {
    await driver.switchTo(tab);
    await driver.go(page);
    await driver.type("#name", names[i]);
    await driver.click("#join");
  }
  async function view(tab) {
    await driver.switchTo(tab);
    return driver.run(VIEW);
  }
  async function bothSee(what, ms, check) {
    let last;
    await waitFor(`${what} (last: ${JSON.stringify(last)})`, ms, async () => {
      last = [await view(tabs[0]), await view(tabs[1])];
      return last.every(check);
    }, 150);
    return last;
  }
  async function say(tab, text) {
    await driver.switchTo(tab);
    await driver.type("#msg", text);
    await driver.click("#send");
  }

  const [a] = await bothSee("both tabs connected with 2 people", 20000, (v) => v.state === "connected" && v.count === 2);
  const firstEdge = a.edge;
  assert.match(firstEdge, /^us-east-\d$/);
  await say(tabs[0], "hello from Ada");
  await say(tabs[1], "hi Ada, Grace here");
  await bothSee("both tabs show the chat", 10000, (v) => v.log.some((l) => l.includes("hello from Ada")) && v.log.some((l) => l.includes("Grace here")));
  for (const tab of tabs) {
    await driver.switchTo(tab);
    await driver.run("window.__notReloaded = true;");
  }

  await topo.signalEdge(firstEdge, "SIGKILL");
  const after = await bothSee("both tabs connected again on the other edge", 30000, (v) => v.state === "connected" && v.edge !== firstEdge && v.count === 2);
  assert.ok(after.every((v) => v.marker), "the pages were not reloaded");
  await say(tabs[0], "still here after the crash");
  await say(tabs[1], "me too");
  await bothSee("chat flows again", 10000, (v) => v.log.some((l) => l.includes("still here after the crash")) && v.log.some((l) => l.includes("me too")));
  await driver.switchTo(tabs[1]);
  const history = await driver.run(`return document.getElementById("history").textContent;`);
  assert.match(history, /reconnecting/, "the page showed the reconnection");

  const shot = await driver.screenshot();
  mkdirSync(join(repoRoot, "target"), { recursive: true });
  writeFileSync(join(repoRoot, "target/try-page.png"), shot);
});
