// Browser benchmark: capture-to-screen latency and cold time to first frame, in headless Chromium, through the
// real stack (mosquitto + GStreamer RTSP 640x360@30 + `mqtt-video serve` with its gateway + client/), for each
// of the page's renderers in the same run.
//
//   cargo build --release && cd tests/e2e && npm ci && MQTT_VIDEO_BIN=../../target/release/mqtt-video node bench.js
//
// Options: --seconds N (per case, default 30), --cases copy-audio,copy-video,transcode-audio,transcode-video
// (default all four), --renderer mse,webcodecs (default both: each case is run with each, one after the other;
// `webcodecs:OUTPUT` picks the WebCodecs renderer's videoOutput, e.g. webcodecs:generator),
// --frame-end marker,parser (the server's `rtsp_frame_end`; default marker: each renderer runs with each),
// --rounds N (default 1), --json FILE. Each run starts its own server, so every first frame is cold (the
// renderers of a case share one RTSP source, whose sender clock the latency is measured against, and take
// turns going first); after the window a second player joins the running stream (the late joiner's first
// frame). Latency is measured per rendered frame (requestVideoFrameCallback: expected display time minus the
// source's wall clock of that frame, from the fragment's prft box), over the whole window after the first
// frame; so is, with WebCodecs, the audio-to-picture offset (the media time heard minus the one shown;
// positive: sound ahead).
// With --seconds 120 or more it also prints one line per minute, to show whether latency drifts.

import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";
import { VIDEO_OUTPUTS } from "../../client/webcodecs-sink.js";
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
    renderer: { type: "string", default: "mse,webcodecs" },
    "frame-end": { type: "string", default: "marker" },
    json: { type: "string" },
    trace: { type: "boolean", default: false },
  },
});
const SECONDS = Number(opts.seconds);
const POLL_MS = 2000; // the page keeps the last 600 frames (20 s at 30 fps)
const MINUTE_MS = 60_000;

function configText({ mqttPort, httpPort, rtspPrefix, mode, frameEnd }) {
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
    "[pipeline.source]",
    `rtsp_frame_end = "${frameEnd}"`,
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

function offsetSummary(values) {
  return { n: values.length, p5: percentile(values, 5), p50: percentile(values, 50), p95: percentile(values, 95) };
}

const fmt = (x) => (x === null || x === undefined ? "-" : Number(x).toFixed(0));

async function runCase(browser, name, { mode, audio }, renderer, mqttPort, rtsp) {
  const [spec, frameEnd = "marker"] = renderer.split("@");
  const [kind, videoOutput] = spec.split(":");
  const rtspPrefix = /^rtsp:\/\/[^/]+\//.exec(rtsp.url)[0];
  const httpPort = await freePort();
  const server = await startServer(configText({ mqttPort, httpPort, rtspPrefix, mode, frameEnd }));
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  try {
    await page.goto(`http://127.0.0.1:${httpPort}/?url=${encodeURIComponent(rtsp.url)}&autoplay=1&muted=1&renderer=${kind}${videoOutput ? `&output=${videoOutput}` : ""}`);
    const stats = (i = 0) => page.evaluate((i) => window.mqttVideo.players[i]?.stats() ?? null, i);
    const playing = (i) =>
      waitFor(`${name} (${renderer}): player ${i}'s first frame`, async () => {
        const s = await stats(i);
        if (s?.state === "error") throw new Error(JSON.stringify(s.errors));
        return s?.state === "playing" && s.firstFrameMs !== null ? s : false;
      }, { timeoutMs: 20_000, everyMs: 20 });
    const first = await playing(0);
    if (first.renderer !== kind) throw new Error(`asked for ${kind}, the page plays with ${first.renderer}`);
    if (videoOutput && first.videoOutput !== videoOutput) throw new Error(`asked for ${videoOutput}, the page shows frames with ${first.videoOutput}`);

    const latencies = [];
    const offsets = [];
    let avMark = 0;
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
      const av = await page.evaluate((m) => window.mqttVideo.players[0].avOffsetsSince(m), avMark);
      avMark = av.mark;
      offsets.push(...av.offsets);
      if (opts.trace && (Date.now() - startedAt) % 10_000 < POLL_MS) {
        const s = await stats();
        console.log(
          `  t=${((Date.now() - startedAt) / 1000).toFixed(0)}s latency ${s.latencyMs} arrival ${s.arrivalLatencyMs} ` +
            `buffer ${s.bufferSeconds} rate ${s.playbackRate} target ${s.targetLatencyMs} stalls ${s.stalls} ` +
            `jumps ${s.jumps} queued ${s.queuedSegments} dropped ${s.droppedFrames} decoded ${s.decodedFrames} ` +
            `decode p50 ${s.decodeP50Ms} av ${s.avOffsetMs}`,
        );
      }
      if (Date.now() - minuteAt >= MINUTE_MS) {
        const m = { minute: minutes.length + 1, ...summary(minute) };
        minutes.push(m);
        if (SECONDS >= 120) console.log(`  ${name} ${renderer} minute ${m.minute}: p50 ${fmt(m.p50)} p95 ${fmt(m.p95)} max ${fmt(m.max)} ms (${m.frames} frames)`);
        minute = [];
        minuteAt = Date.now();
      }
    }
    const last = await stats();
    // A second player joins the running stream: its first frame is a late joiner's.
    await page.evaluate(
      ([url, renderer, videoOutput]) => window.mqttVideo.addPlayer({ url, autoplay: true, muted: true, renderer, videoOutput }),
      [rtsp.url, kind, videoOutput],
    );
    const joiner = await playing(1);
    return {
      case: name,
      renderer,
      videoOutput: first.videoOutput ?? null,
      mode,
      audio,
      firstFrameMs: first.firstFrameMs,
      joinFirstFrameMs: joiner.firstFrameMs,
      seconds: SECONDS,
      ...summary(latencies),
      minutes,
      avOffset: offsetSummary(offsets),
      decodeP50Ms: last.decodeP50Ms,
      arrivalP50Ms: last.arrivalP50Ms,
      displayDelayP50Ms: last.displayDelayP50Ms,
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
    await server.kill();
  }
}

async function main() {
  const names = opts.cases.split(",").map((s) => s.trim());
  for (const n of names) if (!CASES[n]) throw new Error(`unknown case ${n}: one of ${Object.keys(CASES).join(", ")}`);
  const renderers = opts.renderer.split(",").map((s) => s.trim());
  const known = ["mse", "webcodecs", ...VIDEO_OUTPUTS.map((o) => `webcodecs:${o}`)];
  for (const r of renderers) if (!known.includes(r)) throw new Error(`unknown renderer ${r}: one of ${known.join(", ")}`);
  const frameEnds = opts["frame-end"].split(",").map((s) => s.trim());
  for (const f of frameEnds) if (!["marker", "parser"].includes(f)) throw new Error(`unknown frame end ${f}: marker or parser`);
  // A renderer run with a frame end other than the default is named RENDERER@FRAME_END.
  const variants = renderers.flatMap((r) => frameEnds.map((f) => (frameEnds.length > 1 || f !== "marker" ? `${r}@${f}` : r)));
  console.log(`server binary: ${serverBinary()}; ${SECONDS} s per case and renderer`);
  const mqttPort = await freePort();
  const broker = new Mosquitto({ port: mqttPort });
  await broker.start();
  const browser = await chromium.launch({ executablePath: chromiumPath(), headless: true, args: CHROMIUM_ARGS });
  const results = [];
  const failures = [];
  try {
    for (let round = 0; round < Number(opts.rounds); round++) {
      for (const name of names) {
        const rtsp = await startRtspSource(CASES[name].audio ? [] : ["--no-audio"]);
        const order = round % 2 ? [...variants].reverse() : variants;
        for (const renderer of order) {
          let r;
          try {
            r = await runCase(browser, name, CASES[name], renderer, mqttPort, rtsp);
          } catch (e) {
            // One failed run (the server's, the source's) is reported; the others still run.
            console.log(`${name.padEnd(16)} ${renderer.padEnd(19)} FAILED: ${e.message.split("\n")[0]}`);
            failures.push({ case: name, renderer, error: e.message });
            continue;
          }
          results.push(r);
          const av = r.avOffset.n ? ` | audio-picture p5 ${fmt(r.avOffset.p5)} p50 ${fmt(r.avOffset.p50)} p95 ${fmt(r.avOffset.p95)} ms` : "";
          console.log(
            `${name.padEnd(16)} ${renderer.padEnd(19)} first frame ${fmt(r.firstFrameMs).padStart(5)} ms, joiner ${fmt(r.joinFirstFrameMs)} ms | ` +
              `latency p50 ${fmt(r.p50)} p95 ${fmt(r.p95)} p99 ${fmt(r.p99)} max ${fmt(r.max)} ms over ${r.frames} frames${av} | ` +
              `target ${r.targetMs} ms, stalls ${r.stalls}, jumps ${r.jumps}, dropped ${r.droppedFrames}, errors ${r.errors.length} | ` +
              `p50 of the last 20 s: arrival ${fmt(r.arrivalP50Ms)}, decode ${r.decodeP50Ms ?? "-"}, display ${fmt(r.displayDelayP50Ms)} ms`,
          );
        }
        await rtsp.proc.kill();
      }
    }
  } finally {
    await browser.close();
    await broker.stop();
    await stopAll();
  }
  console.log(`\nchromium ${chromiumPath()}, ${SECONDS} s per case; latency = expected display time - source wall clock (ms)`);
  console.log("| case | renderer | first frame (ms) | joiner's first frame | p50 | p95 | p99 | max | audio-picture p5 / p50 / p95 | stalls | jumps |");
  console.log("|---|---|---|---|---|---|---|---|---|---|---|");
  for (const r of results) {
    const av = r.avOffset.n ? `${fmt(r.avOffset.p5)} / ${fmt(r.avOffset.p50)} / ${fmt(r.avOffset.p95)}` : "-";
    console.log(
      `| ${r.case} | ${r.renderer} | ${fmt(r.firstFrameMs)} | ${fmt(r.joinFirstFrameMs)} | ${fmt(r.p50)} | ${fmt(r.p95)} | ${fmt(r.p99)} | ` +
        `${fmt(r.max)} | ${av} | ${r.stalls} | ${r.jumps} |`,
    );
  }
  if (opts.json) writeFileSync(opts.json, JSON.stringify({ results, failures }, null, 2));
  if (failures.length || results.some((r) => r.errors.length)) {
    console.error("errors:", results.filter((r) => r.errors.length).map((r) => [r.case, r.renderer, r.errors]), failures);
    process.exitCode = 1;
  }
}

main().catch(async (e) => {
  console.error(e);
  await stopAll();
  process.exit(1);
});
