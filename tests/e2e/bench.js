// Browser benchmark: capture-to-screen latency and cold time to first frame, in headless Chromium (or Firefox
// ESR and WebKitGTK, through browsers.js), through the real stack (mosquitto + GStreamer RTSP 640x360@30 +
// `mqtt-video serve` with its gateway + client/), for each of the page's renderers in the same run.
//
//   cargo build --release && cd tests/e2e && npm ci && MQTT_VIDEO_BIN=../../target/release/mqtt-video node bench.js
//   ... node bench.js --browser chromium,firefox,webkit --origin lan-https --seconds 20 --cases copy-audio
//
// Options: --seconds N (per case, default 30), --cases copy-audio,copy-video,transcode-audio,transcode-video
// (default all four), --renderer mse,webcodecs (default both: each case is run with each, one after the other;
// `webcodecs:OUTPUT` picks the WebCodecs renderer's videoOutput, e.g. webcodecs:generator),
// --frame-end marker,parser (the server's `rtsp_frame_end`; default marker: each renderer runs with each),
// --rounds N (default 1), --json FILE,
// --browser chromium,firefox,webkit (default chromium; each engine runs every case and renderer, one engine
// after the other), --origin secure|lan|lan-https (where the page comes from; default secure):
//   secure     http://127.0.0.1:PORT, loopback plain HTTP, a secure context (both renderers);
//   lan-https  https://198.18.0.1:PORT, the address of a veth pair of the run's own (lan.js, needs root) with the
//              server's self-made certificate (the browsers accept it): a secure context reached as from another
//              machine (both renderers);
//   lan        http://198.18.0.1:PORT, not a secure context: MediaSource only (webcodecs is left out, saying so;
//              the gateway's `tls.http = "serve"`, as its default redirects such a page to https).
// The browser's CPU is the CPU time of its process tree (browsers.js pids() and their descendants, from
// /proc/<pid>/stat; WebKitGTK's includes WebKitWebDriver and its Xvfb) over the measuring window, as % of one
// core: the server, the broker and the source are not in it. The renderer the page played with is reported
// beside the one asked for (a page may fall back to MediaSource). Each run starts its own server, so every first frame is cold (the
// renderers of a case share one RTSP source, whose sender clock the latency is measured against, and take
// turns going first); after the window a second player joins the running stream (the late joiner's first
// frame). Latency is measured per rendered frame (requestVideoFrameCallback: expected display time minus the
// source's wall clock of that frame, from the fragment's prft box), over the whole window after the first
// frame; so is, with WebCodecs, the audio-to-picture offset (the media time heard minus the one shown;
// positive: sound ahead).
// With --seconds 120 or more it also prints one line per minute, to show whether latency drifts.

import { writeFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { VIDEO_OUTPUTS } from "../../client/webcodecs-sink.js";
import { cpuSeconds, ENGINES, launchBrowser, processTree } from "./browsers.js";
import { lanAddress, removeLan } from "./lan.js";
import {
  CLIENT_DIR,
  freePort,
  Mosquitto,
  percentile,
  scratch,
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
    browser: { type: "string", default: "chromium" },
    origin: { type: "string", default: "secure" },
    trace: { type: "boolean", default: false },
  },
});
const SECONDS = Number(opts.seconds);
const POLL_MS = 2000; // the page keeps the last 600 frames (20 s at 30 fps)
/** Without requestVideoFrameCallback the page has no per-frame figures: stats().latencyMs, this often. */
const SAMPLE_MS = 250;
/** The origins: the page's scheme, the gateway's address, whether it is a secure context. */
const ORIGINS = {
  secure: { scheme: "http", lan: false, secure: true },
  "lan-https": { scheme: "https", lan: true, secure: true },
  lan: { scheme: "http", lan: true, secure: false },
};
const ORIGIN = ORIGINS[opts.origin];
if (!ORIGIN) throw new Error(`unknown origin ${opts.origin}: one of ${Object.keys(ORIGINS).join(", ")}`);
const MINUTE_MS = 60_000;

function configText({ mqttPort, host, httpPort, rtspPrefix, mode, frameEnd }) {
  return [
    "[broker]",
    `port = ${mqttPort}`,
    `client_id = "mqtt-video-bench-${process.pid}-${Date.now()}"`,
    "",
    "[gateway]",
    `listen = "${host}:${httpPort}"`,
    `client_dir = ${JSON.stringify(CLIENT_DIR)}`,
    "",
    // On the LAN address: a certificate that names it, kept in the run's scratch folder; a plain-HTTP page is
    // served as it is (the `lan` origin) rather than redirected.
    ...(ORIGIN.lan
      ? ["[gateway.tls]", `state_dir = ${JSON.stringify(path.join(scratch(), "tls"))}`, `names = [${JSON.stringify(host)}]`, 'http = "serve"', ""]
      : []),
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

async function runCase(browser, host, name, { mode, audio }, renderer, mqttPort, rtsp) {
  const [spec, frameEnd = "marker"] = renderer.split("@");
  const [kind, videoOutput] = spec.split(":");
  const rtspPrefix = /^rtsp:\/\/[^/]+\//.exec(rtsp.url)[0];
  const httpPort = await freePort();
  const server = await startServer(configText({ mqttPort, host, httpPort, rtspPrefix, mode, frameEnd }));
  let page = null;
  try {
    page = await browser.newPage({ width: 1280, height: 900 });
    await page.goto(`${ORIGIN.scheme}://${host}:${httpPort}/?url=${encodeURIComponent(rtsp.url)}&autoplay=1&muted=1&renderer=${kind}${videoOutput ? `&output=${videoOutput}` : ""}`);
    const context = await page.evaluate(() => ({ secure: isSecureContext, perFrame: typeof HTMLVideoElement.prototype.requestVideoFrameCallback === "function" }));
    if (context.secure !== ORIGIN.secure) throw new Error(`the page is ${context.secure ? "" : "not "}a secure context on the ${opts.origin} origin`);
    const stats = (i = 0) => page.evaluate((i) => window.mqttVideo.players[i]?.stats() ?? null, i);
    let seen = null; // the last stats, for a timeout's message
    const playing = (i) =>
      waitFor(`${name} (${renderer}): player ${i}'s first frame`, async () => {
        const s = (seen = await stats(i));
        if (s?.state === "error") throw new Error(JSON.stringify(s.errors));
        return s?.state === "playing" && s.firstFrameMs !== null ? s : false;
      }, { timeoutMs: 20_000, everyMs: 20 }).catch((e) => {
        if (seen) e.message += ` (state ${seen.state}: ${seen.message}; renderer ${seen.renderer}, WebCodecs off: ${seen.webCodecsOff ?? "-"})`;
        throw e;
      });
    const first = await playing(0);
    // A page that falls back (WebKitGTK's WebCodecs and sound) is measured as it plays, and said so.
    if (first.renderer !== kind) console.log(`  ${browser.engine} ${name}: asked for ${kind}, the page plays with ${first.renderer} (WebCodecs off: ${first.webCodecsOff ?? "-"})`);
    if (first.renderer === kind && videoOutput && first.videoOutput !== videoOutput) throw new Error(`asked for ${videoOutput}, the page shows frames with ${first.videoOutput}`);

    const latencies = [];
    const offsets = [];
    let avMark = 0;
    const minutes = [];
    let minute = [];
    let mark = 0;
    const startedAt = Date.now();
    let minuteAt = startedAt;
    // The browser's CPU over the window: its process tree now, and again at the end (processes started meanwhile
    // count whole; ones that ended are in their parent's cutime/cstime).
    const cpuAt = { s: cpuSeconds(processTree(browser.pids())), ms: performance.now() };
    const pollMs = context.perFrame ? POLL_MS : SAMPLE_MS;
    while (Date.now() - startedAt < SECONDS * 1000) {
      await sleep(Math.min(pollMs, SECONDS * 1000 - (Date.now() - startedAt)));
      const got = context.perFrame
        ? await page.evaluate((m) => window.mqttVideo.players[0].latenciesSince(m), mark)
        : { mark, latencies: [await page.evaluate(() => window.mqttVideo.players[0].stats().latencyMs)].filter((x) => x !== null) };
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
    const cpuPercent = ((cpuSeconds(processTree(browser.pids())) - cpuAt.s) / ((performance.now() - cpuAt.ms) / 1000)) * 100;
    const last = await stats();
    // A second player joins the running stream: its first frame is a late joiner's.
    await page.evaluate(
      // (WebDriver turns undefined into null, which the page refuses as an output: none is left out.)
      ([url, renderer, videoOutput]) => window.mqttVideo.addPlayer({ url, autoplay: true, muted: true, renderer, ...(videoOutput ? { videoOutput } : {}) }),
      [rtsp.url, kind, videoOutput],
    );
    const joiner = await playing(1);
    return {
      engine: browser.engine,
      origin: opts.origin,
      case: name,
      renderer,
      played: first.renderer,
      latencySource: context.perFrame ? "rVFC" : "sampled",
      cpuPercent,
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
      errors: [...last.errors.map((e) => `${e.code}: ${e.message}`), ...(await page.errors())],
    };
  } catch (e) {
    // What the page's players were doing: a <video> left paused at readyState 1 (WebKitGTK under load) says so.
    const players = await page
      ?.evaluate(() =>
        window.mqttVideo?.players.map((p) => ({
          state: p.state,
          video: { readyState: p.video.readyState, paused: p.video.paused, currentTime: p.video.currentTime, buffered: p.video.buffered.length ? [p.video.buffered.start(0), p.video.buffered.end(p.video.buffered.length - 1)] : [] },
          events: p.events.slice(-8).map((ev) => `${ev.at.slice(11)} ${ev.kind}: ${ev.detail}`),
        })),
      )
      .catch(() => null);
    if (players) e.message += `\n--- the page's players ---\n${JSON.stringify(players)}`;
    throw e;
  } finally {
    await page?.close().catch(() => {});
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
  const engines = opts.browser.split(",").map((s) => s.trim());
  for (const e of engines) if (!ENGINES.includes(e)) throw new Error(`unknown browser ${e}: one of ${ENGINES.join(", ")}`);
  // Not a secure context: no WebCodecs (the page would fall back to MediaSource, measured twice).
  const offered = ORIGIN.secure ? renderers : renderers.filter((r) => !r.startsWith("webcodecs"));
  if (offered.length < renderers.length) console.log(`origin ${opts.origin} is not a secure context: WebCodecs left out, MediaSource only`);
  if (!offered.length) throw new Error(`no renderer to run on the ${opts.origin} origin (it offers mse only)`);
  // A renderer run with a frame end other than the default is named RENDERER@FRAME_END.
  const variants = offered.flatMap((r) => frameEnds.map((f) => (frameEnds.length > 1 || f !== "marker" ? `${r}@${f}` : r)));
  let host = "127.0.0.1";
  if (ORIGIN.lan) {
    const lan = await lanAddress();
    if (lan.skip) throw new Error(`--origin ${opts.origin}: ${lan.skip}`);
    host = lan.address;
  }
  console.log(`server binary: ${serverBinary()}; ${SECONDS} s per case and renderer; origin ${ORIGIN.scheme}://${host} (${opts.origin})`);
  const mqttPort = await freePort();
  const broker = new Mosquitto({ port: mqttPort });
  await broker.start();
  const results = [];
  const failures = [];
  const versions = [];
  try {
    for (const engine of engines) {
      let browser;
      try {
        browser = await launchBrowser(engine);
      } catch (e) {
        console.log(`${engine}: FAILED to start: ${e.message.split("\n")[0]}`);
        failures.push({ engine, error: e.message });
        continue;
      }
      try {
        for (let round = 0; round < Number(opts.rounds); round++) {
          for (const name of names) {
            const rtsp = await startRtspSource(CASES[name].audio ? [] : ["--no-audio"]);
            const order = round % 2 ? [...variants].reverse() : variants;
            for (const renderer of order) {
              let r;
              try {
                r = await runCase(browser, host, name, CASES[name], renderer, mqttPort, rtsp);
              } catch (e) {
                // One failed run (the server's, the source's, a crashed tab) is reported; the others still run.
                console.log(`${engine.padEnd(8)} ${name.padEnd(16)} ${renderer.padEnd(19)} FAILED: ${e.message.split("\n")[0]}`);
                failures.push({ engine, case: name, renderer, error: e.message, browserLog: browser.log?.() });
                continue;
              }
              results.push(r);
              const av = r.avOffset.n ? ` | audio-picture p5 ${fmt(r.avOffset.p5)} p50 ${fmt(r.avOffset.p50)} p95 ${fmt(r.avOffset.p95)} ms` : "";
              console.log(
                `${engine.padEnd(8)} ${name.padEnd(16)} ${renderer.padEnd(19)} played ${r.played} | first frame ${fmt(r.firstFrameMs).padStart(5)} ms, joiner ${fmt(r.joinFirstFrameMs)} ms | ` +
                  `latency (${r.latencySource}) p50 ${fmt(r.p50)} p95 ${fmt(r.p95)} p99 ${fmt(r.p99)} max ${fmt(r.max)} ms over ${r.frames} ${r.latencySource === "rVFC" ? "frames" : "samples"}${av} | ` +
                  `browser CPU ${fmt(r.cpuPercent)} % | target ${r.targetMs} ms, stalls ${r.stalls}, jumps ${r.jumps}, dropped ${r.droppedFrames}, errors ${r.errors.length} | ` +
                  `p50 of the last 20 s: arrival ${fmt(r.arrivalP50Ms)}, decode ${r.decodeP50Ms ?? "-"}, display ${fmt(r.displayDelayP50Ms)} ms`,
              );
            }
            await rtsp.proc.kill();
          }
        }
      } finally {
        versions.push(browser.version);
        await browser.close().catch(() => {});
      }
    }
  } finally {
    await broker.stop();
    await stopAll();
    removeLan();
  }
  console.log(
    `\n${versions.join(", ")}; origin ${ORIGIN.scheme}://${host} (${opts.origin}), ${SECONDS} s per case; latency = expected display time - ` +
      `source wall clock (ms), per rendered frame (rVFC: requestVideoFrameCallback) or stats().latencyMs every ${SAMPLE_MS} ms (sampled); ` +
      "CPU = the browser's process tree, % of one core",
  );
  console.log("| engine | case | renderer (played) | latency | first frame (ms) | joiner's first frame | p50 | p95 | p99 | max | frames | browser CPU % | audio-picture p5 / p50 / p95 | stalls | jumps |");
  console.log("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
  for (const r of results) {
    const av = r.avOffset.n ? `${fmt(r.avOffset.p5)} / ${fmt(r.avOffset.p50)} / ${fmt(r.avOffset.p95)}` : "-";
    const played = r.played === r.renderer.split(/[:@]/)[0] ? r.renderer : `${r.renderer} (played ${r.played})`;
    console.log(
      `| ${r.engine} | ${r.case} | ${played} | ${r.latencySource} | ${fmt(r.firstFrameMs)} | ${fmt(r.joinFirstFrameMs)} | ${fmt(r.p50)} | ${fmt(r.p95)} | ${fmt(r.p99)} | ` +
        `${fmt(r.max)} | ${r.frames} | ${fmt(r.cpuPercent)} | ${av} | ${r.stalls} | ${r.jumps} |`,
    );
  }
  for (const f of failures) console.log(`| ${f.engine} | ${f.case ?? "-"} | ${f.renderer ?? "-"} | FAILED: ${f.error.split("\n")[0].slice(0, 200)} |`);
  if (opts.json) writeFileSync(opts.json, JSON.stringify({ results, failures }, null, 2));
  if (failures.length || results.some((r) => r.errors.length)) {
    // (MiniBrowser's log stays in --json's output: it is long.)
    console.error("errors:", results.filter((r) => r.errors.length).map((r) => [r.engine, r.case, r.renderer, r.errors]), failures.map(({ browserLog, ...f }) => f));
    process.exitCode = 1;
  }
}

main().catch(async (e) => {
  console.error(e);
  await stopAll();
  process.exit(1);
});
