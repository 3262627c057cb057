// Brokers as users run them (issue 29), the page in Chromium through each: a broker that limits its packets to
// AWS IoT Core's 128 KB (mosquitto's `max_packet_size`), a 720p stream whose keyframe fragments are several
// times that, and the server told the limit (`broker.max_packet_bytes`): it sends those fragments in pieces
// (docs/PROTOCOL.md, "Pieces"), and the page plays them with WebCodecs (which puts pieces back together) and
// with MediaSource; aedes, another implementation (Node.js); and RabbitMQ 3.10's MQTT plugin (Debian's
// rabbitmq-server). The embedded broker's page is standalone.test.js's; RabbitMQ with logins and rights is
// rights.test.js's.
//
//   cd tests/e2e && node --test brokers.test.js

import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { chromium } from "playwright-core";
import { playerSnapshot, waitFrames, waitPlayerState } from "./page-checks.js";
import { RabbitMQ } from "./rabbitmq.js";
import { CHROMIUM_ARGS, chromiumPath, freePort, gatewayConfig, Mosquitto, onCleanup, scratch, startProcess, startServer, stopAll, waitFor } from "./support.js";

after(stopAll);

const LIMIT = 128 * 1024;

/** 6 s of 720p noise with a keyframe a second, keyframes about three times the other frames: looped by the server. */
function clip() {
  const file = path.join(scratch(), "noise-720p-keyframes.mp4");
  const run = spawnSync("ffmpeg", [
    "-hide_banner", "-loglevel", "error", "-y",
    "-f", "lavfi", "-i", "color=c=gray:s=1280x720:r=30:d=6,noise=alls=30:allf=t+u",
    "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "30", "-keyint_min", "30", "-sc_threshold", "0",
    "-x264-params", "ipratio=3", "-b:v", "4M", "-maxrate", "8M", "-bufsize", "8M", "-pix_fmt", "yuv420p", file,
  ], { encoding: "utf8", timeout: 120_000 });
  assert.equal(run.status, 0, run.stderr);
  const probe = spawnSync("ffprobe", ["-v", "error", "-select_streams", "v", "-show_entries", "packet=size,flags", "-of", "csv=p=0", file], { encoding: "utf8" });
  const keyframes = probe.stdout.split("\n").filter((l) => l.includes("K")).map((l) => Number(l.split(",")[0]));
  return { file, largestKeyframe: Math.max(...keyframes) };
}

/** Plays `url` with each renderer through the server's gateway; returns the figures. */
async function playsWithEachRenderer(httpPort, url) {
  const browser = await chromium.launch({ executablePath: chromiumPath(), headless: true, args: CHROMIUM_ARGS });
  onCleanup(() => browser.close().catch(() => {}));
  const figures = [];
  for (const renderer of ["webcodecs", "mse"]) {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(`http://127.0.0.1:${httpPort}/?url=${encodeURIComponent(url)}&autoplay=1&muted=1&renderer=${renderer}`);
    const playing = await waitPlayerState(page, 0, "playing", 30_000);
    // Three seconds of frames: three keyframes of the clip, each in pieces under a limit.
    const later = await waitFrames(page, 0, playing, 90, 20_000);
    const s = await playerSnapshot(page, 0);
    const figure = { renderer: s.renderer, shown: later.shownFrames, latencyP50Ms: s.latencyP50Ms, latencyP95Ms: s.latencyP95Ms, resets: s.resets, errors: s.errors };
    figures.push(figure);
    assert.equal(s.renderer, renderer, JSON.stringify(figure));
    assert.deepEqual(s.errors, [], JSON.stringify(figure));
    assert.deepEqual(errors, []);
    assert.ok(s.latencyP50Ms !== null && s.latencyP50Ms < 1000, JSON.stringify(figure));
    await page.close();
  }
  await browser.close();
  return figures;
}

test("behind a broker that takes packets of 128 KB at most, a 720p stream with 300 KB keyframes plays with WebCodecs and MediaSource", { timeout: 180_000 }, async () => {
  const { file, largestKeyframe } = clip();
  assert.ok(largestKeyframe > 2 * LIMIT, `the clip's largest keyframe is ${largestKeyframe} bytes`);
  const mqttPort = await freePort();
  const httpPort = await freePort();
  const broker = new Mosquitto({ port: mqttPort, extra: [`max_packet_size ${LIMIT}`] });
  await broker.start();
  onCleanup(() => broker.stop());
  const url = `file://${file}`;
  const server = await startServer(gatewayConfig({
    mqttPort, httpPort, name: "brokers", urls: [url], mode: "copy",
    broker: [`max_packet_bytes = ${LIMIT}`],
    extra: ["[pipeline.source]", "looping = true"],
  }));
  onCleanup(() => server.kill());
  console.log(`brokers, mosquitto with 128 KB packets: ${JSON.stringify(await playsWithEachRenderer(httpPort, url))}`);
  assert.doesNotMatch(server.log(), /broker connection lost/, "the broker never dropped the server");
  await stopAll();
});

/** The noise clip copied by a server on `mqttPort`'s broker, played with each renderer through its gateway. */
async function playsThrough(name, mqttPort) {
  const { file } = clip();
  const httpPort = await freePort();
  const url = `file://${file}`;
  const server = await startServer(gatewayConfig({
    mqttPort, httpPort, name: `brokers-${name}`, urls: [url], mode: "copy",
    extra: ["[pipeline.source]", "looping = true"],
  }));
  onCleanup(() => server.kill());
  console.log(`brokers, ${name}: ${JSON.stringify(await playsWithEachRenderer(httpPort, url))}`);
  assert.doesNotMatch(server.log(), /broker connection lost/, "the broker never dropped the server");
}

test("through aedes, the page plays the same stream with WebCodecs and MediaSource", { timeout: 180_000 }, async () => {
  const mqttPort = await freePort();
  const aedes = startProcess("aedes", process.execPath, [path.join(import.meta.dirname, "aedes-broker.js"), String(mqttPort)]);
  onCleanup(() => aedes.child.kill());
  await waitFor("aedes to listen", () => /READY/.test(aedes.log()), { timeoutMs: 10_000 });
  await playsThrough("aedes", mqttPort);
});

test("through RabbitMQ's MQTT plugin, the page plays the same stream with WebCodecs and MediaSource", { timeout: 180_000 }, async () => {
  const mqttPort = await freePort();
  const rabbit = new RabbitMQ({ port: mqttPort });
  await rabbit.start();
  onCleanup(() => rabbit.stop());
  await playsThrough("RabbitMQ", mqttPort);
});
