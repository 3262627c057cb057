// A live MPEG-TS source over UDP that loses datagrams on the way, played through the whole stack in headless
// Chromium (copy mode): damaged input stays on the server, so the page never sees a decoder error or has to
// rebuild its MediaSource, keeps playing, and stays near the live edge.
//
//   cd tests/e2e && node --test lossy.test.js        (needs what the player tests need, and the ffmpeg CLI)

import { after, test } from "node:test";
import assert from "node:assert/strict";
import dgram from "node:dgram";
import { createRequire } from "node:module";
import path from "node:path";
import { chromium } from "playwright-core";
import {
  brokerAndGatewayPorts,
  CHROMIUM_ARGS,
  chromiumPath,
  CLIENT_DIR,
  freePort,
  gatewayConfig,
  onCleanup,
  percentile,
  sleep,
  startProcess,
  startServer,
  stopAll,
  waitFor,
} from "./support.js";

// The page's own MQTT.js (Node build), to read the server's retained stats.
const mqtt = createRequire(import.meta.url)(path.join(CLIENT_DIR, "node_modules/mqtt"));

/** Seconds each case plays; LOSSY_SECONDS overrides it (and LOSSY_EVENTS=1 prints the player's events). */
const SECONDS = Number(process.env.LOSSY_SECONDS ?? 0);
/** The renderer: the page's default (`auto`: WebCodecs in Chromium, whose "resets" are decoder restarts);
 * LOSSY_RENDERER=mse runs the same with MediaSource, which after each freeze stands further behind and whose
 * state more often falls on "buffering" in a sample. */
const RENDERER = process.env.LOSSY_RENDERER ?? "auto";
const SAMPLE_MS = 2500;

after(stopAll);

/** ffmpeg sending MPEG-TS (1 s GOP) over UDP to a forwarder that drops `loss` of the datagrams. */
async function lossyUdpSource(loss) {
  const inlet = dgram.createSocket("udp4");
  const outlet = dgram.createSocket("udp4");
  await new Promise((resolve) => inlet.bind(0, "127.0.0.1", resolve));
  const target = await freePort();
  let seed = 0x2545f491;
  const counts = { forwarded: 0, dropped: 0 };
  inlet.on("message", (msg) => {
    // xorshift32: the same losses for the same datagrams in every run.
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    if ((seed >>> 0) / 2 ** 32 < loss) counts.dropped++;
    else {
      counts.forwarded++;
      outlet.send(msg, target, "127.0.0.1");
    }
  });
  const args = ["-v", "error", "-nostdin", "-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
    "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-pix_fmt", "yuv420p", "-g", "30",
    "-c:a", "aac", "-f", "mpegts", `udp://127.0.0.1:${inlet.address().port}?pkt_size=1316`];
  const proc = startProcess("ffmpeg", "ffmpeg", args);
  onCleanup(() => {
    proc.kill();
    inlet.close();
    outlet.close();
  });
  return { url: `udp://127.0.0.1:${target}`, counts };
}

/** The stream's entry in the server's retained stats, once `ok` holds for it. */
async function streamStats(mqttPort, url, ok) {
  const client = mqtt.connect(`mqtt://127.0.0.1:${mqttPort}`);
  try {
    let last = null;
    client.on("message", (_t, payload) => {
      last = JSON.parse(payload.toString()).streams?.find((s) => s.url === url) ?? last;
    });
    await new Promise((resolve) => client.on("connect", resolve));
    client.subscribe("video/stats");
    return await waitFor("the stream's stats", () => (last && ok(last) ? last : false), { timeoutMs: 10_000 });
  } finally {
    client.end(true);
  }
}

async function playLossy(loss, mode, seconds) {
  seconds = SECONDS || seconds;
  const source = await lossyUdpSource(loss);
  const { mqttPort, httpPort } = await brokerAndGatewayPorts();
  const config = gatewayConfig({ mqttPort, httpPort, name: `lossy-${loss}`, urls: [source.url], mode, extra: ["[stats]", "interval_secs = 1"] });
  const server = await startServer(config);
  onCleanup(() => server.kill());
  const browser = await chromium.launch({ executablePath: chromiumPath(), headless: true, args: CHROMIUM_ARGS });
  onCleanup(() => browser.close());
  const page = await browser.newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(e.message));
  await page.goto(`http://127.0.0.1:${httpPort}/?url=${encodeURIComponent(source.url)}&autoplay=1&muted=1&renderer=${RENDERER}`);
  const stats = () => page.evaluate(() => window.mqttVideo.players[0].stats());
  await waitFor("the page to play", async () => (await stats()).state === "playing", { timeoutMs: 15_000 });
  const states = [];
  const latencies = [];
  const started = performance.now();
  let nextSample = started + SAMPLE_MS;
  let s = await stats();
  while (performance.now() - started < seconds * 1000) {
    await sleep(250);
    s = await stats();
    if (Number.isFinite(s.latencyMs)) latencies.push(s.latencyMs);
    if (performance.now() >= nextSample) {
      states.push(s.state);
      nextSample += SAMPLE_MS;
    }
  }
  const onServer = await streamStats(mqttPort, source.url, (st) => st.damaged > 0);
  const decodeErrors = (s.errors ?? []).filter((e) => e.code !== "timeout");
  const figure = {
    loss: `${loss * 100} %`,
    renderer: RENDERER,
    mode,
    lost: source.counts.dropped,
    damagedOnServer: onServer.damaged,
    resets: s.resets,
    stalls: s.stalls,
    jumps: s.jumps,
    latencyP50: percentile(latencies, 50),
    latencyP95: percentile(latencies, 95),
    pageP50: s.latencyP50Ms,
    pageP95: s.latencyP95Ms,
    decoded: s.decodedFrames,
    dropped: s.droppedFrames,
    target: s.targetLatencyMs,
    states: states.join(","),
    errors: decodeErrors.map((e) => e.code),
  };
  console.log(`lossy UDP TS, ${seconds} s in Chromium: ${JSON.stringify(figure)}`);
  if (process.env.LOSSY_EVENTS) console.log(JSON.stringify(await page.evaluate(() => window.mqttVideo.players[0].events), null, 0).slice(-5000));
  await browser.close();
  await server.kill();
  return { figure, states, decodeErrors, pageErrors };
}

// Latency is printed, not asserted: it is a figure of the machine as much as of the code (see the README).
test("1 % of the datagrams lost, copy: no reset, no decoder error, still playing", { timeout: 150_000 }, async () => {
  const { figure, states, decodeErrors, pageErrors } = await playLossy(0.01, "copy", 30);
  assert.ok(figure.lost > 0 && figure.damagedOnServer > 0, JSON.stringify(figure));
  assert.equal(figure.resets, 0, JSON.stringify(figure));
  assert.deepEqual(decodeErrors, [], JSON.stringify(figure));
  // 1 % of ~140 datagrams a second damages a frame or two a second, and the server holds back the rest of each
  // damaged GOP: about half the frames never come (955-1001 of 1800 in 60 s), and the picture freezes until
  // the next keyframe several times a minute. A sample falls in such a freeze 1-4 times in 12 (measured), so
  // what is checked is that the page keeps coming back: it plays at most samples, decodes at least 40 % of
  // the source's frames, and is never in error or reconnecting.
  assert.ok(states.filter((st) => st === "playing").length > states.length / 2, JSON.stringify(figure));
  assert.ok(figure.decoded >= 0.4 * 30 * (SECONDS || 30), JSON.stringify(figure));
  assert.ok(states.every((st) => st === "playing" || st === "buffering"), JSON.stringify(figure));
  assert.deepEqual(pageErrors, []);
});

test("3 % of the datagrams lost, copy: at most one reset, no decoder error", { timeout: 150_000 }, async () => {
  const { figure, states, decodeErrors, pageErrors } = await playLossy(0.03, "copy", 20);
  assert.ok(figure.damagedOnServer > 0, JSON.stringify(figure));
  assert.ok(figure.resets <= 1, JSON.stringify(figure));
  assert.deepEqual(decodeErrors, [], JSON.stringify(figure));
  assert.ok(!states.includes("error"), JSON.stringify(figure));
  assert.deepEqual(pageErrors, []);
});

test("1 % lost, transcoded: the decoder conceals the damage and every frame plays", { timeout: 150_000 }, async () => {
  const { figure, states, decodeErrors, pageErrors } = await playLossy(0.01, "transcode", 20);
  assert.ok(figure.damagedOnServer > 0, JSON.stringify(figure));
  assert.equal(figure.resets, 0, JSON.stringify(figure));
  assert.deepEqual(decodeErrors, [], JSON.stringify(figure));
  assert.ok(states.every((st) => st === "playing"), JSON.stringify(figure));
  assert.deepEqual(pageErrors, []);
});
