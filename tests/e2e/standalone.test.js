// The binary alone serves a working page: a copy of `mqtt-video` in an empty temporary folder, run from there
// (so neither the checkout's client/ nor its node_modules can be reached) with its embedded broker (so no
// mosquitto either: a first start with nothing installed), serves the page built into it, and headless
// Chromium plays the built-in test pattern through it.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { CHROMIUM_ARGS, chromiumPath, freePort, onCleanup, serverBinary, startServer, stopAll, waitFor } from "./support.js";

const fx = {};

before(async () => {
  fx.dir = mkdtempSync(path.join(tmpdir(), "mqtt-video-alone-"));
  onCleanup(() => rmSync(fx.dir, { recursive: true, force: true }));
  fx.bin = path.join(fx.dir, "mqtt-video");
  copyFileSync(serverBinary(), fx.bin);
  fx.mqttPort = await freePort();
  fx.httpPort = await freePort();
  const config = [
    "[broker]",
    "embedded = true",
    `embedded_listen = "127.0.0.1:${fx.mqttPort}"`,
    `client_id = "mqtt-video-alone-${process.pid}"`,
    "",
    "[gateway]",
    `listen = "127.0.0.1:${fx.httpPort}"`,
    "",
  ].join("\n");
  fx.server = await startServer(config, { bin: fx.bin, cwd: fx.dir, configDir: fx.dir });
  onCleanup(() => fx.server.kill());
  fx.browser = await chromium.launch({ executablePath: chromiumPath(), headless: true, args: CHROMIUM_ARGS });
  onCleanup(() => fx.browser.close());
});

after(stopAll);

test("a copy of the binary in an empty folder, with its embedded broker, serves its page, which plays", { timeout: 60_000 }, async () => {
  assert.deepEqual(readdirSync(fx.dir).filter((f) => !f.endsWith(".toml")).sort(), ["mqtt-video"], "nothing but the binary");
  const base = `http://127.0.0.1:${fx.httpPort}`;
  const bundle = await fetch(`${base}/node_modules/mqtt/dist/mqtt.esm.js`);
  assert.equal(bundle.status, 200);
  assert.match(bundle.headers.get("content-type"), /javascript/);
  assert.ok((await bundle.text()).length > 100_000, "the MQTT.js bundle is built in");

  const page = await fx.browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${base}/?url=${encodeURIComponent("builtin://testsrc")}&autoplay=1&muted=1`);
  const stats = () => page.evaluate(() => window.mqttVideo?.players[0]?.stats() ?? null);
  const first = await waitFor("the test pattern to play", async () => {
    const s = await stats();
    if (s?.state === "error") throw new Error(JSON.stringify(s.errors));
    return s?.state === "playing" && s.decodedFrames > 0 ? s : false;
  }, { timeoutMs: 20_000, everyMs: 100 });
  const later = await waitFor("two more seconds of video", async () => {
    const s = await stats();
    return s && s.currentTime > first.currentTime + 2 ? s : false;
  }, { timeoutMs: 15_000, everyMs: 100 }).catch((e) => {
    throw new Error(`${e.message}\n${fx.server.log().slice(-3000)}`);
  });
  assert.ok(later.decodedFrames > first.decodedFrames + 40, `${later.decodedFrames - first.decodedFrames} frames decoded in ~2 s`);
  assert.equal(later.width, 640);
  assert.deepEqual(errors, [], "no page errors");
  console.log(`standalone binary: page played ${later.currentTime.toFixed(1)} s, ${later.decodedFrames} frames, first frame ${first.firstFrameMs} ms after play()`);
});
