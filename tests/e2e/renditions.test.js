// Renditions in a real browser (issue 15), on the built-in test pattern with a small `low`: a page that asks
// for `low` plays it and nothing else, one that asks for a rendition the server does not offer plays `main` and
// says so, and a switch whose new rendition never delivers a usable fragment is given up and the page goes on
// with `main`. The page's own choice over a link that cannot carry `main` (`rendition=auto`) is in
// links.test.js, behind a real bottleneck.
//
//   cd tests/e2e && node --test renditions.test.js     (needs what the player tests need)

import { after, test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { MqttStreamEditor } from "./mqtt-stream.js";
import {
  brokerAndGatewayPorts,
  CHROMIUM_ARGS,
  chromiumPath,
  gatewayConfig,
  onCleanup,
  sleep,
  startServer,
  stopAll,
  waitFor,
} from "./support.js";

after(stopAll);

test("a rendition asked for by name, one not offered, and a switch that cannot complete", { timeout: 120_000 }, async (t) => {
  t.after(stopAll);
  const { mqttPort, httpPort } = await brokerAndGatewayPorts();
  const url = "builtin://testsrc";
  const extra = ["[[pipeline.renditions]]", 'name = "low"', "max_height = 180", "bitrate_kbps = 200"];
  const server = await startServer(gatewayConfig({ mqttPort, httpPort, name: "renditions-named", urls: [url], mode: "transcode", extra }));
  onCleanup(() => server.kill());
  const browser = await chromium.launch({ executablePath: chromiumPath(), headless: true, args: CHROMIUM_ARGS });
  onCleanup(() => browser.close());
  const pageErrors = [];
  const open = async (rendition, route = null) => {
    const page = await browser.newPage();
    page.on("pageerror", (e) => pageErrors.push(e.message));
    if (route) await page.routeWebSocket(/\/mqtt$/, route);
    const q = new URLSearchParams({ url, autoplay: "1", muted: "1", ...(rendition ? { rendition } : {}) });
    await page.goto(`http://127.0.0.1:${httpPort}/?${q}`);
    return page;
  };
  const stats = (page) => page.evaluate(() => window.mqttVideo.players[0].stats());
  const events = (page) => page.evaluate(() => window.mqttVideo.players[0].events.filter((e) => e.kind === "rendition").map((e) => e.detail));
  const playing = (page, what) => waitFor(what, async () => ((await stats(page)).state === "playing" ? stats(page) : false), { timeoutMs: 20_000 });

  // Every fragment of low's stream topic made unreadable on its way to the page (its boxes renamed `skip`):
  // low's init comes (on the reply topic), its fragments never do.
  const broken = (ws) => {
    const server = ws.connectToServer();
    const editor = new MqttStreamEditor((topic, payload) => {
      if (!topic.endsWith("/low/media") || payload.length < 8) return payload;
      const out = Buffer.from(payload);
      out.write("skip", 4, "latin1");
      return out;
    });
    server.onMessage((m) => {
      const out = editor.push(m);
      if (out.length) ws.send(out);
    });
  };
  // (Nobody watches low yet: the switch's join burst is low's init alone, its fragments all come live.)
  const unknown = await open("tiny");
  const failing = await open(null, broken);
  const [u, f] = await Promise.all([playing(unknown, "the page on tiny to play"), playing(failing, "the page on auto to play")]);
  assert.equal(u.rendition, "main");
  assert.ok((await events(unknown)).some((e) => /offers no rendition "tiny".*playing main/.test(e)), JSON.stringify(await events(unknown)));
  assert.equal(f.rendition, "main");

  const before = await stats(failing);
  assert.equal(await failing.evaluate(() => window.mqttVideo.players[0].switchRendition("low")), true);
  const given = await waitFor("the switch to be given up", async () => {
    const s = await stats(failing);
    return s.renditionSwitchFailures > 0 ? s : false;
  }, { timeoutMs: 12_000 });
  await sleep(3000);
  const after = await stats(failing);
  const why = (await events(failing)).join("; ");
  console.log(`a switch that cannot complete: ${why}; ${after.decodedFrames - before.decodedFrames} frames decoded meanwhile`);
  assert.match(why, /the switch to low was given up: low sent its init segment but no fragments/);
  assert.equal(given.renditionSwitching, null);
  assert.equal(after.rendition, "main");
  assert.equal(after.renditionSwitches, 0);
  assert.equal(after.state, "playing");
  assert.equal(after.height, 360, "main's picture all along");
  assert.ok(after.decodedFrames - before.decodedFrames > 30 * 6, `${after.decodedFrames - before.decodedFrames} frames decoded`);
  assert.ok(after.currentTime > before.currentTime + 6, "the play went on over the attempt");

  // A rendition the server refuses (one it no longer has: here one the page was told of by the test) is given
  // up at once, on the server's word, and main plays on; it is not tried again.
  const refused = await failing.evaluate(() => {
    const p = window.mqttVideo.players[0];
    const r = p.session.renditions;
    r.push({ ...r[1], name: "ghost", media: r[1].media.replace(/low\/media$/, "ghost/media") });
    const at = performance.now();
    p.switchRendition("ghost");
    return new Promise((resolve) => {
      const poll = setInterval(() => {
        const s = p.stats();
        if (s.renditionSwitchFailures < 2) return;
        clearInterval(poll);
        resolve({ ms: performance.now() - at, s, again: p.switchRendition("ghost") });
      }, 20);
    });
  });
  console.log(`a rendition the server refuses: given up after ${refused.ms.toFixed(0)} ms`);
  assert.ok(refused.ms < 2000, `given up on the server's word, not after the timeout: ${refused.ms} ms`);
  assert.equal(refused.again, false, "not tried again");
  assert.equal(refused.s.rendition, "main");
  assert.deepEqual(refused.s.errors, []);
  assert.match((await events(failing)).join("; "), /the switch to ghost was given up: the server refused ghost: /);
  await sleep(1000);
  assert.equal((await stats(failing)).state, "playing");

  const named = await open("low");
  const n = await playing(named, "the page on low to play");
  assert.equal(n.rendition, "low");
  assert.equal(n.renditionMode, "low");
  assert.deepEqual(n.renditions, ["main", "low"]);
  await sleep(3000);

  // The stats panel says which plays, how it was chosen and what became of the switches.
  const panel = (page) => page.evaluate(() => document.querySelector('[data-stat="rendition"]').textContent);
  assert.match(await panel(named), /^low \(fixed, 0 switches\)$/);
  assert.match(await panel(failing), /^main \(auto, 0 switches, 2 given up/);
  const end = await stats(named);
  assert.equal(end.rendition, "low", "a rendition asked for by name stays");
  assert.equal(end.height, 180);
  assert.equal(end.renditionSwitches, 0);
  for (const s of [end, after, await stats(unknown)]) assert.deepEqual(s.errors, []);
  assert.deepEqual(pageErrors, []);
});
