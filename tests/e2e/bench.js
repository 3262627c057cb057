// Browser benchmark: capture-to-screen latency and cold time to first frame, in headless Chromium, through the
// real stack (mosquitto + GStreamer RTSP 640x360@30 + `mqtt-video serve` with its gateway + client/).
//
//   cargo build --release && cd tests/e2e && npm ci && MQTT_VIDEO_BIN=../../target/release/mqtt-video node bench.js
//
// Options: --seconds N (per case, default 30), --cases copy-audio,copy-video,transcode-audio,transcode-video
// (default all four), --rounds N (default 1), --json FILE. Each case starts its own source and server, so every
// first frame is cold. Latency is measured per rendered frame (requestVideoFrameCallback: expected display time
// minus the source's wall clock of that frame, from the fragment's prft box), over the whole window after the first
// frame. With --seconds 3600 it also prints one line per minute, to show whether latency grows.

import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";
import {
  CHROMIUM_ARGS,
  chromiumPath,
  CLIENT_DIR,
  freePort,
  Mosquitto,
  percentile,
  serverBinary,
  sleep,
  startRtspSource,
  startServer,
  stopAll,
  waitFor,
} from "./support.js";

const CASES = {
  "copy-audio": { mode: "copy", audio: true },
  "copy-video": { mode: "copy", audio: false },
  "transcode-audio": { mode: "transcode", audio: true },
  "transcode-video": { mode: "transcode", audio: false },
};

const { values: opts } = parseArgs({
  options: {
    seconds: { type: "string", default: "30" },
    cases: { type: "string", default: Object.keys(CASES).join(",") },
    rounds: { type: "string", default: "1" },
    json: { type: "string" },
    trace: { type: "boolean", default: false },
  },
});
const SECONDS = Number(opts.seconds);
const POLL_MS = 2000; // the page keeps the last 600 frames (20 s at 30 fps)
const MINUTE_MS = 60_000;

function configText({ mqttPort, httpPort, rtspPrefix, mode }) {
  return [
    "[broker]",
    `port = ${mqttPort}`,
    `client_id = "mqtt-video-bench-${process.pid}-${Date.now()}"`,
    "",
    "[gateway]",
    `listen = "127.0.0.1:${httpPort}"`,
    `client_dir = ${JSON.stringify(CLIENT_DIR)}`,
    "",
    "[allow]",
    `prefixes = [${JSON.stringify(rtspPrefix)}]`,
    "",
    // The default from issue 13 on: long runs go on only by the page's renewals of its play.
    "[limits]",
    "viewer_timeout_secs = 30",
    "",
    "[pipeline]",
    `mode = "${mode}"`,
    "",
  ].join("\n");
}

function summary(values) {
  return {
    frames: values.length,
    p50: percentile(values, 50),
    p95: percentile(values, 95),
    p99: percentile(values, 99),
    max: values.length ? Math.max(...values) : null,
  };
}

const fmt = (x) => (x === null || x === undefined ? "-" : Number(x).toFixed(0));

async function runCase(browser, name, { mode, audio }, mqttPort) {
  const rtsp = await startRtspSource(audio ? [] : ["--no-audio"]);
  const rtspPrefix = /^rtsp:\/\/[^/]+\//.exec(rtsp.url)[0];
  const httpPort = await freePort();
  const server = await startServer(configText({ mqttPort, httpPort, rtspPrefix, mode }));
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  try {
    await page.goto(`http://127.0.0.1:${httpPort}/?url=${encodeURIComponent(rtsp.url)}&autoplay=1&muted=1`);
    const stats = () => page.evaluate(() => window.mqttVideo.players[0]?.stats() ?? null);
    const first = await waitFor(`${name}: the first frame`, async () => {
      const s = await stats();
      if (s?.state === "error") throw new Error(JSON.stringify(s.errors));
      return s?.state === "playing" ? s : false;
    }, { timeoutMs: 20_000, everyMs: 20 });

    const latencies = [];
    const minutes = [];
    let minute = [];
    let mark = 0;
    const startedAt = Date.now();
    let minuteAt = startedAt;
    while (Date.now() - startedAt < SECONDS * 1000) {
      await sleep(Math.min(POLL_MS, SECONDS * 1000 - (Date.now() - startedAt)));
      const got = await page.evaluate((m) => window.mqttVideo.players[0].latenciesSince(m), mark);
      mark = got.mark;
      latencies.push(...got.latencies);
      minute.push(...got.latencies);
      if (opts.trace && (Date.now() - startedAt) % 10_000 < POLL_MS) {
        const s = await stats();
        console.log(
          `  t=${((Date.now() - startedAt) / 1000).toFixed(0)}s latency ${s.latencyMs} arrival ${s.arrivalLatencyMs} ` +
            `buffer ${s.bufferSeconds} rate ${s.playbackRate} target ${s.targetLatencyMs} stalls ${s.stalls} ` +
            `jumps ${s.jumps} queued ${s.queuedSegments} dropped ${s.droppedFrames} decoded ${s.decodedFrames}`,
        );
      }
      if (Date.now() - minuteAt >= MINUTE_MS) {
        const m = { minute: minutes.length + 1, ...summary(minute) };
        minutes.push(m);
        if (SECONDS >= 120) console.log(`  ${name} minute ${m.minute}: p50 ${fmt(m.p50)} p95 ${fmt(m.p95)} max ${fmt(m.max)} ms (${m.frames} frames)`);
        minute = [];
        minuteAt = Date.now();
      }
    }
    const last = await stats();
    return {
      case: name,
      mode,
      audio,
      firstFrameMs: first.firstFrameMs,
      seconds: SECONDS,
      ...summary(latencies),
      minutes,
      decodedFrames: last.decodedFrames,
      droppedFrames: last.droppedFrames,
      stalls: last.stalls,
      jumps: last.jumps,
      resets: last.resets,
      targetMs: last.targetLatencyMs,
      mimeCodec: last.mimeCodec,
      events: await page.evaluate(() => window.mqttVideo.players[0].events),
      errors: [...last.errors.map((e) => `${e.code}: ${e.message}`), ...errors],
    };
  } finally {
    await page.close();
    server.kill();
    rtsp.proc.kill();
  }
}

async function main() {
  const names = opts.cases.split(",").map((s) => s.trim());
  for (const n of names) if (!CASES[n]) throw new Error(`unknown case ${n}: one of ${Object.keys(CASES).join(", ")}`);
  console.log(`server binary: ${serverBinary()}; ${SECONDS} s per case`);
  const mqttPort = await freePort();
  const broker = new Mosquitto({ port: mqttPort });
  await broker.start();
  const browser = await chromium.launch({ executablePath: chromiumPath(), headless: true, args: CHROMIUM_ARGS });
  const results = [];
  try {
    for (let round = 0; round < Number(opts.rounds); round++) {
      for (const name of names) {
        const r = await runCase(browser, name, CASES[name], mqttPort);
        results.push(r);
        console.log(
          `${name.padEnd(16)} first frame ${fmt(r.firstFrameMs).padStart(5)} ms | latency p50 ${fmt(r.p50)} p95 ${fmt(r.p95)} ` +
            `p99 ${fmt(r.p99)} max ${fmt(r.max)} ms over ${r.frames} frames | target ${r.targetMs} ms, stalls ${r.stalls}, ` +
            `jumps ${r.jumps}, dropped ${r.droppedFrames}, errors ${r.errors.length}`,
        );
      }
    }
  } finally {
    await browser.close();
    await broker.stop();
    await stopAll();
  }
  console.log(`\nchromium ${chromiumPath()}, ${SECONDS} s per case; latency = expected display time - source wall clock (ms)`);
  console.log("| case | first frame (ms) | p50 | p95 | p99 | max | stalls | jumps |");
  console.log("|---|---|---|---|---|---|---|---|");
  for (const r of results) {
    console.log(`| ${r.case} | ${fmt(r.firstFrameMs)} | ${fmt(r.p50)} | ${fmt(r.p95)} | ${fmt(r.p99)} | ${fmt(r.max)} | ${r.stalls} | ${r.jumps} |`);
  }
  if (opts.json) writeFileSync(opts.json, JSON.stringify(results, null, 2));
  if (results.some((r) => r.errors.length)) {
    console.error("errors:", results.filter((r) => r.errors.length).map((r) => [r.case, r.errors]));
    process.exitCode = 1;
  }
}

main().catch(async (e) => {
  console.error(e);
  await stopAll();
  process.exit(1);
});
