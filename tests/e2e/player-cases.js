// End to end: mosquitto + the live GStreamer RTSP test source + `mqtt-video serve` + the page in client/,
// played by headless Debian Chromium driven by playwright-core. Everything runs on free loopback ports and
// is stopped at the end. The same cases run for each renderer of the page: player-mse.test.js and
// player-webcodecs.test.js call playerTests() with theirs.
//
//   cd tests/e2e && npm ci && node --test            (or from the repo root: node --test tests/e2e/)
//
// Needs: `cargo build` (target/debug/mqtt-video, or $MQTT_VIDEO_BIN), `npm ci` in client/ and tests/e2e/,
// mosquitto, /usr/bin/chromium (or $CHROMIUM), /usr/bin/python3 with GStreamer's RTSP server (scripts/setup.sh).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { parseInit, parseMessage } from "../../client/mp4.js";
import { MqttStreamEditor } from "./mqtt-stream.js";
import { assertPictureMoves as assertPictureMovesOf, playerStats, waitPlayerState } from "./page-checks.js";
import {
  CHROMIUM_ARGS,
  chromiumPath,
  CLIENT_DIR,
  freePort,
  Mosquitto,
  onCleanup,
  percentile,
  scratch,
  sleep,
  startRtspSource,
  startProcess,
  startServer,
  startStaticServer,
  stopAll,
  waitFor,
} from "./support.js";

// How the page reaches the broker. true: through the mqtt-video gateway (`[gateway]` of serve: it serves client/
// over HTTP and bridges ws://HOST:PORT/mqtt to the broker). false: client/ from a static server in this test
// and mosquitto's own WebSocket listener, which moves ~40 KB/s, so the stream is transcoded to ~200 kbit/s
// (useful to tell a page problem from a gateway problem). Override with E2E_GATEWAY=0 or E2E_GATEWAY=1.
const USE_GATEWAY = (process.env.E2E_GATEWAY ?? "1") === "1";

/** Live latency every sample must stay under (ms). */
const MAX_LATENCY_MS = USE_GATEWAY ? 1000 : 2000;
const PLAY_SECONDS = 10;
/** The server's `limits.viewer_timeout_secs` in this test. */
const VIEWER_TIMEOUT_SECS = 15;

const fx = {}; // the fixture: ports, processes, browser, page
const figures = []; // printed at the end

function note(line) {
  figures.push(line);
  console.log(line);
}

function pageErrors() {
  return fx.pageErrors.splice(0);
}

/** stats() of player i on the page (the test's main page unless another is given). */
function stats(i = 0, page = fx.page) {
  return playerStats(page, i);
}

/** Waits until player i is in `state` (and `extra(stats)` holds); returns its stats. */
function waitState(i, state, timeoutMs, extra = () => true, page = fx.page) {
  return waitPlayerState(page, i, state, timeoutMs, extra);
}

/** The RTSP test source's keyframe interval (tests/support/rtsp_server.py --gop 30 at 30 fps), ms. */
const GOP_MS = 1000;

/**
 * Damages one video fragment on its way to a page: the first NAL unit length of the frame `afterKeyframe`
 * frames after a keyframe is set past the end of the sample, which no H.264 decoder can take. `damage` is
 * {armed, afterKeyframe, init, sinceKey, doneAt, keyAt}: doneAt is when the damaged fragment went to the page,
 * keyAt when the next keyframe did. An MqttStreamEditor edit.
 */
function damageFragment(damage, topic, payload) {
  if (!topic.endsWith("/media")) return payload;
  const bytes = new Uint8Array(payload.buffer, payload.byteOffset, payload.length);
  if (String.fromCharCode(...bytes.subarray(4, 8)) === "ftyp") {
    damage.init = parseInit(bytes);
    return payload;
  }
  if (!damage.init) return payload;
  const msg = parseMessage(bytes, damage.init);
  const video = msg.fragment.trafs.find((t) => t.trackId === damage.init.videoTrackId && t.samples.length);
  if (!video) return payload;
  const sample = video.samples[0];
  damage.sinceKey = sample.sync ? 0 : damage.sinceKey === null ? null : damage.sinceKey + 1;
  if (sample.sync && damage.doneAt !== null && damage.keyAt === null) damage.keyAt = Date.now();
  if (damage.armed && damage.sinceKey === damage.afterKeyframe) {
    const at = msg.moof.byteOffset - bytes.byteOffset + sample.offset;
    payload.writeUInt32BE(0x7fffff00, at);
    damage.armed = false;
    damage.doneAt = Date.now();
  }
  return payload;
}

/**
 * Two screenshots of a <video> 400 ms apart: the first is not blank and the two differ (the picture moves).
 * Keeps the first in `file` when given. Returns {width, height, luma} of the first.
 */
function assertPictureMoves(video, file = null) {
  return assertPictureMovesOf(() => video.screenshot(), { between: () => sleep(400), file });
}

/**
 * The display times (ms since the epoch) of the frames the page's first player showed after wall clock
 * `since`, as the player reports them (requestVideoFrameCallback, or its canvas output's presentation), and
 * the longest time between two of them, with when the frame that ended it was shown.
 */
async function longestGap(page, since) {
  const shown = (await page.evaluate(() => window.mqttVideo.players[0].displaysSince(0).displays)).filter((t) => t >= since - 2000);
  assert.ok(shown.filter((t) => t > since).length >= 30, `${shown.length} frames shown around the damage`);
  let gap = 0;
  let endedAt = null;
  for (let i = 1; i < shown.length; i++) {
    if (shown[i] > since && shown[i] - shown[i - 1] > gap) {
      gap = shown[i] - shown[i - 1];
      endedAt = shown[i];
    }
  }
  return { gap, endedAt };
}

/** ffmpeg pushing a test pattern with a tone as MPEG-TS to the server's TCP ingest endpoint. */
function startPublisher(size) {
  return startProcess("ffmpeg publisher", "ffmpeg", [
    "-hide_banner", "-nostdin", "-loglevel", "error", "-re",
    "-f", "lavfi", "-i", `testsrc2=size=${size}:rate=30`,
    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
    "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", "30", "-pix_fmt", "yuv420p",
    "-c:a", "aac", "-pes_payload_size", "0", "-f", "mpegts", `tcp://127.0.0.1:${fx.ingestPort}`,
  ]);
}

/** Waits for the server to log that the ingest endpoint's publisher number `n` (from 1) sends playable media. */
function waitPublishing(n) {
  return waitFor(`publisher ${n} to be publishing`, () => (fx.server.log().match(/publishing/g) ?? []).length >= n, {
    timeoutMs: 15_000,
  });
}

/**
 * Defines every case for the page's `renderer` ("mse" or "webcodecs"): its own broker, source, server and
 * browser, so that the two files can run apart.
 */
export function playerTests(renderer) {
  /** The page playing `url` at once with this file's renderer. */
  const pageUrl = (url) => `${fx.pageBase}/?url=${encodeURIComponent(url)}&autoplay=1&muted=1&renderer=${renderer}${fx.brokerParam}`;

  before(async () => {
    for (const f of ["node_modules/mqtt/dist/mqtt.esm.js", "index.html", "player.js"]) {
      assert.ok(existsSync(path.join(CLIENT_DIR, f)), `client/${f} is missing (run \`npm ci\` in client/)`);
    }
    assert.ok(existsSync(chromiumPath()), `${chromiumPath()} is missing: apt-get install -y chromium`);

    fx.mqttPort = await freePort();
    fx.httpPort = await freePort();
    fx.ingestPort = await freePort();
    fx.wsPort = USE_GATEWAY ? null : await freePort();
    fx.broker = new Mosquitto({ port: fx.mqttPort, wsPort: fx.wsPort });
    await fx.broker.start();
    onCleanup(() => fx.broker.stop());

    // Low bitrate without the gateway: mosquitto's WebSocket listener cannot carry more.
    fx.rtspArgs = USE_GATEWAY ? [] : ["--width", "320", "--height", "180", "--bitrate", "150"];
    fx.rtsp = await startRtspSource(fx.rtspArgs);
    onCleanup(() => fx.rtsp.proc.kill());
    const rtspPrefix = `${/^rtsp:\/\/[^/]+\//.exec(fx.rtsp.url)[0]}`;

    const config = [
      "[broker]",
      `port = ${fx.mqttPort}`,
      `client_id = "mqtt-video-e2e-${process.pid}"`,
      "reconnect_min_ms = 100",
      "reconnect_max_ms = 1000",
      "",
      "[limits]",
      "linger_secs = 2",
      // Viewers that do not renew their play are dropped (issue 13 makes 30 s the default): the first player
      // plays longer than this, on the page's own renewals (renewMs, every 10 s).
      `viewer_timeout_secs = ${VIEWER_TIMEOUT_SECS}`,
      "",
      "[retry]",
      "initial_backoff_ms = 200",
      "max_backoff_ms = 1000",
      "",
      "[allow]",
      `prefixes = [${JSON.stringify(rtspPrefix)}]`,
      "",
      "[[ingest]]",
      'name = "e2e"',
      `listen = "tcp://127.0.0.1:${fx.ingestPort}"`,
      "",
    ];
    if (USE_GATEWAY) {
      config.push("[gateway]", `listen = "127.0.0.1:${fx.httpPort}"`, `client_dir = ${JSON.stringify(CLIENT_DIR)}`, "");
    } else {
      config.push(
        "[gateway]",
        "enabled = false",
        "",
        "[pipeline]",
        'mode = "transcode"',
        "[pipeline.video]",
        "max_width = 320",
        "bitrate_kbps = 150",
        "max_bitrate_kbps = 200",
        "[pipeline.audio]",
        "bitrate_kbps = 32",
        "",
      );
    }
    fx.configText = config.join("\n");
    fx.server = await startServer(fx.configText);
    onCleanup(() => fx.server.kill());

    if (USE_GATEWAY) {
      fx.pageBase = `http://127.0.0.1:${fx.httpPort}`;
      fx.brokerParam = ""; // the page's default: ws://<page host>/mqtt
    } else {
      const http = await startStaticServer(CLIENT_DIR, fx.httpPort);
      onCleanup(() => new Promise((resolve) => http.close(resolve)));
      fx.pageBase = `http://127.0.0.1:${fx.httpPort}`;
      fx.brokerParam = `&broker=${encodeURIComponent(`ws://127.0.0.1:${fx.wsPort}`)}`;
    }

    const launchedAt = performance.now();
    fx.browser = await chromium.launch({ executablePath: chromiumPath(), headless: true, args: CHROMIUM_ARGS });
    onCleanup(() => fx.browser.close());
    note(`mode: ${USE_GATEWAY ? "gateway" : "mosquitto WebSocket listener (slow, low bitrate)"}; chromium ${fx.browser.version()} launched in ${(performance.now() - launchedAt).toFixed(0)} ms`);
    fx.pageErrors = [];
    fx.page = await fx.browser.newPage({ viewport: { width: 1280, height: 900 } });
    fx.page.on("pageerror", (e) => fx.pageErrors.push(`pageerror: ${e.message}`));
    fx.page.on("console", (m) => {
      if (m.type() === "error") fx.pageErrors.push(`console: ${m.text()}`);
    });
  });

  after(async () => {
    if (figures.length) console.log(`figures:\n${figures.map((f) => `  ${f}`).join("\n")}`);
    await stopAll();
  });

  /** When a step fails, the logs of the processes help more than the assertion alone. */
  async function withLogs(fn) {
    try {
      await fn();
    } catch (e) {
      const events = await fx.page?.evaluate(() => window.mqttVideo?.players.map((p) => p.events)).catch(() => null);
      e.message +=
        `\n--- player events ---\n${JSON.stringify(events, null, 1)?.slice(-6000)}` +
        `\n--- mqtt-video serve ---\n${fx.server?.log().slice(-6000)}`;
      throw e;
    }
  }

  test("autoplay: the RTSP source plays live for 10 s with sub-second latency", { timeout: 60_000 }, () =>
    withLogs(async () => {
      await fx.page.goto(pageUrl(fx.rtsp.url));
      const first = await waitState(0, "playing", 15_000, (s) => s.firstFrameMs !== null);
      assert.equal(first.url, fx.rtsp.url);
      assert.equal(first.renderer, renderer, "the renderer asked for in the URL");
      assert.equal(first.protocol, 2, "media on the stream topic (protocol version 2)");
      note(`autoplay (cold source): first frame ${first.firstFrameMs} ms after play(), ${first.firstFrameAtMs} ms after navigation start`);

      // Sample for PLAY_SECONDS.
      const samples = [];
      const startedAt = Date.now();
      while (Date.now() - startedAt < PLAY_SECONDS * 1000) {
        samples.push(await stats(0));
        await sleep(250);
      }
      const last = samples.at(-1);
      assert.deepEqual(last.errors, [], "no player errors");
      assert.deepEqual(pageErrors(), [], "no page errors");
      for (const s of samples) assert.equal(s.state, "playing", `state stays playing: ${JSON.stringify(s)}`);

      const advanced = last.currentTime - samples[0].currentTime;
      assert.ok(advanced > PLAY_SECONDS * 0.85, `currentTime advanced ${advanced.toFixed(2)} s in ${PLAY_SECONDS} s`);
      // Decoded frames keep increasing: every 2 s window adds frames (the source runs at 30 fps).
      for (let i = 8; i < samples.length; i += 8) {
        const added = samples[i].decodedFrames - samples[i - 8].decodedFrames;
        assert.ok(added >= 30, `only ${added} frames decoded between samples ${i - 8} and ${i}`);
      }
      assert.ok(last.decodedFrames >= PLAY_SECONDS * 25, `${last.decodedFrames} frames decoded`);
      assert.ok(last.width > 0 && last.height > 0, "the video has a size");
      assert.match(last.mimeCodec, /^video\/mp4; codecs="avc1\.[0-9A-F]{6}, mp4a\.40\.2"$/i);
      assert.ok(last.bitrateKbps > 20, `bitrate ${last.bitrateKbps} kbit/s`);

      const latencies = samples.map((s) => s.latencyMs).filter((x) => x !== null);
      assert.ok(latencies.length >= samples.length * 0.9, "latency is known while playing");
      const max = Math.max(...latencies);
      assert.ok(max < MAX_LATENCY_MS, `live latency reached ${max} ms (limit ${MAX_LATENCY_MS} ms)`);
      note(
        `live latency over ${PLAY_SECONDS} s (stats().latencyMs, ${latencies.length} samples): p50 ${percentile(latencies, 50)} ms, ` +
          `p95 ${percentile(latencies, 95)} ms, max ${max} ms; per rendered frame (requestVideoFrameCallback, ` +
          `${last.latencySamples} frames): p50 ${last.latencyP50Ms} ms, p95 ${last.latencyP95Ms} ms`,
      );
      note(
        `where it goes (p50): the fragment arrives ${last.arrivalP50Ms} ms after its source wall clock, decoding ` +
          `${last.decodeP50Ms ?? "(inside MediaSource)"} ms, the browser's display ${last.displayDelayP50Ms} ms after presentation`,
      );
      note(
        `after ${PLAY_SECONDS} s: ${last.width}x${last.height} ${last.mimeCodec}, ${last.bitrateKbps} kbit/s, ` +
          `${last.decodedFrames} decoded / ${last.droppedFrames} dropped frames, buffer ${last.bufferSeconds} s, ` +
          `resets ${last.resets}, jumps ${last.jumps}, target ${last.targetLatencyMs} ms`,
      );
      if (renderer === "webcodecs") {
        // Lip sync within ITU-R BT.1359's detectability (sound at most 125 ms behind, 45 ms ahead).
        assert.ok(last.avOffsetP50Ms !== null, "the audio-to-picture offset is measured");
        assert.ok(last.avOffsetP50Ms > -125 && last.avOffsetP50Ms < 45, `audio-to-picture offset p50 ${last.avOffsetP50Ms} ms`);
        assert.ok(last.decodeP50Ms !== null && last.decodeP50Ms < 20, `decode p50 ${last.decodeP50Ms} ms`);
        note(
          `audio - picture (sound ahead > 0): p5 ${last.avOffsetP5Ms} ms, p50 ${last.avOffsetP50Ms} ms, p95 ${last.avOffsetP95Ms} ms; ` +
            `decode p50 ${last.decodeP50Ms} ms, p95 ${last.decodeP95Ms} ms; audio underruns ${last.stalls}`,
        );
      }

      // The picture: a screenshot of the video element is not blank, and it moves.
      const file = path.join(scratch(), "video.png");
      const shot = await assertPictureMoves(fx.page.locator("video").first(), file);
      note(`video screenshot: ${shot.width}x${shot.height}, luma mean ${shot.luma.mean.toFixed(0)}, std ${shot.luma.std.toFixed(0)}` +
        (process.env.E2E_KEEP ? ` (${file})` : ""));
    }),
  );

  test("a late player on the same source plays at once", { timeout: 30_000 }, () =>
    withLogs(async () => {
      const index = await fx.page.evaluate(
        ([url, renderer]) => window.mqttVideo.players.indexOf(window.mqttVideo.addPlayer({ url, autoplay: true, muted: true, renderer })),
        [fx.rtsp.url, renderer],
      );
      assert.equal(index, 1);
      const s1 = await waitState(1, "playing", 10_000, (s) => s.firstFrameMs !== null);
      await sleep(3000);
      const s2 = await stats(1);
      assert.equal(s2.state, "playing");
      assert.deepEqual(s2.errors, []);
      assert.ok(s2.currentTime - s1.currentTime > 2.4, `the late player advanced ${s2.currentTime - s1.currentTime} s in 3 s`);
      assert.ok(s2.decodedFrames - s1.decodedFrames >= 60, "the late player decodes frames");
      // A joiner's burst and the stream topic overlap; the merge drops what came twice, and misses nothing.
      assert.equal(s2.protocol, 2);
      assert.equal(s2.skippedFragments, 0, "no fragment lost in the hand-over from the burst to the stream topic");
      assert.notEqual(s2.replyTopic, (await stats(0)).replyTopic, "each player has its own reply topic");
      const p0 = await stats(0);
      assert.equal(p0.state, "playing", "the first player plays on");
      assert.ok(s2.latencyMs !== null && s2.latencyMs < MAX_LATENCY_MS, `late player latency ${s2.latencyMs} ms`);
      note(
        `late player (warm source): first frame ${s2.firstFrameMs} ms after play(); latency p50 ${s2.latencyP50Ms} ms, ` +
          `p95 ${s2.latencyP95Ms} ms; first player meanwhile ${p0.latencyMs} ms`,
      );
      await fx.page.evaluate(() => window.mqttVideo.players[1].card.querySelector(".remove").click());
      assert.equal(await fx.page.evaluate(() => window.mqttVideo.players.length), 1);
      assert.deepEqual(pageErrors(), []);
    }),
  );

  test("the page renews its play: the first player outlives the server's viewer timeout", { timeout: 30_000 }, () =>
    withLogs(async () => {
      const started = await stats(0);
      // firstFrameAtMs is on the page's clock: compare it with the page's performance.now()
      const pageNow = () => fx.page.evaluate(() => performance.now());
      while ((await pageNow()) - started.firstFrameAtMs < (VIEWER_TIMEOUT_SECS + 2) * 1000) await sleep(500);
      const s = await stats(0);
      assert.equal(s.state, "playing", `still playing after ${VIEWER_TIMEOUT_SECS + 2} s`);
      assert.equal(s.replyTopic, started.replyTopic, "the same play (no new play was needed)");
      assert.ok(s.renewals >= 1, `${s.renewals} renewals`);
      assert.doesNotMatch(fx.server.log(), /viewer timed out/, "the server dropped no viewer");
      note(`renewals: the first player played ${((await pageNow()) - started.firstFrameAtMs) / 1000 | 0} s with a ${VIEWER_TIMEOUT_SECS} s viewer timeout, ${s.renewals} renewals`);
    }),
  );

  test("a page that could not run for 3 s plays live again at once, without its backlog", { timeout: 30_000 }, () =>
    withLogs(async () => {
      // The page's main thread blocked for 3 s, as a tab frozen in the background is: messages queue up and
      // arrive at once afterwards. (CDP's Page.setWebLifecycleState does not freeze a visible page, and a
      // headless page cannot be hidden.)
      const before = await stats(0);
      assert.equal(before.state, "playing");
      const avMark = await fx.page.evaluate(() => window.mqttVideo.players[0].avOffsetsSince().mark);
      await fx.page.evaluate(() => {
        const until = performance.now() + 3000;
        while (performance.now() < until);
      });
      const thawedAt = Date.now();
      const live = await waitFor("the page to be live again", async () => {
        const s = await stats(0);
        return s.state === "playing" && s.latencyMs !== null && s.latencyMs < 400 ? s : false;
      }, { timeoutMs: 10_000, everyMs: 50 });
      const liveMs = Date.now() - thawedAt;
      await sleep(2000);
      const later = await stats(0);
      assert.equal(later.state, "playing");
      assert.ok(later.latencyMs < 400, `latency 2 s later: ${later.latencyMs} ms`);
      assert.equal(later.replyTopic, before.replyTopic, "the same play");
      assert.deepEqual(later.errors, []);
      assert.ok(liveMs < 3000, `live again ${liveMs} ms after`);
      if (renderer === "webcodecs") {
        // The audio of the backlog was dropped: what plays after it is still dated right (in sync).
        const { offsets } = await fx.page.evaluate((m) => window.mqttVideo.players[0].avOffsetsSince(m), avMark);
        const recent = percentile(offsets.slice(-30), 50);
        assert.ok(recent !== null && recent > -125 && recent < 45, `audio - picture after the backlog: ${recent} ms`);
      }
      note(
        `page blocked for 3 s: live again (latency ${live.latencyMs} ms) ${liveMs} ms after; jumps ${later.jumps - before.jumps}, ` +
          `frames not shown ${later.droppedFrames - before.droppedFrames}`,
      );
    }),
  );

  test("a damaged frame (Chromium only: page.routeWebSocket): playback resumes at the next keyframe, and the target is not raised", { timeout: 60_000 }, () =>
    withLogs(async () => {
      // A page of its own, whose WebSocket goes through the test: one video fragment gets damaged.
      const page = await fx.browser.newPage({ viewport: { width: 800, height: 600 } });
      onCleanup(() => page.close());
      const damage = { armed: false, afterKeyframe: 5, init: null, sinceKey: null, doneAt: null, keyAt: null };
      await page.routeWebSocket(/\/mqtt$/, (ws) => {
        const server = ws.connectToServer();
        const editor = new MqttStreamEditor((topic, payload) => damageFragment(damage, topic, payload));
        server.onMessage((m) => {
          const out = editor.push(m);
          if (out.length) ws.send(out);
        });
      });
      await page.goto(pageUrl(fx.rtsp.url));
      await waitState(0, "playing", 15_000, () => true, page);
      await sleep(3000);
      const before = await stats(0, page);
      damage.armed = true;
      await waitFor("the damaged fragment to be sent", () => damage.doneAt !== null, { timeoutMs: 5000 });
      const reset = await waitFor("the renderer to answer the damage", async () => {
        const s = await stats(0, page);
        return s.resets > before.resets ? s : false;
      }, { timeoutMs: 5000, everyMs: 50 });
      await sleep(4000);
      const after = await stats(0, page);
      const { gap, endedAt } = await longestGap(page, damage.doneAt - 200);
      // No decoder shows anything new between the damaged frame and the next keyframe: the gap is at least
      // that long (here (GOP - 5 + 1) frames, 867 ms). What the renderer adds is from the keyframe's arrival
      // to its display.
      const restartMs = endedAt - damage.keyAt;
      const events = await page.evaluate(() => window.mqttVideo.players[0].events.filter((e) => e.kind === "reset").map((e) => e.detail));
      note(
        `damaged frame (${damage.afterKeyframe} after a keyframe): ${events.join("; ")}; longest gap between frames shown ` +
          `${gap.toFixed(0)} ms (GOP ${GOP_MS} ms), the next keyframe shown ${restartMs.toFixed(0)} ms after it reached the page; ` +
          `target ${before.targetLatencyMs} -> ${after.targetLatencyMs} ms`,
      );
      assert.equal(after.state, "playing");
      assert.deepEqual(after.errors, []);
      assert.equal(after.resets, before.resets + 1, "one reset");
      assert.equal(reset.renderer, renderer);
      assert.ok(damage.keyAt !== null && restartMs < 300, `the keyframe after the damage shown ${restartMs} ms after it came`);
      assert.ok(gap < GOP_MS + 300, `no frame shown for ${gap.toFixed(0)} ms`);
      // (WebCodecs has no playhead target: its targetLatencyMs is the audio jitter margin, which a video decoder
      // error does not touch, and which this page's slower, relayed WebSocket may raise.)
      if (renderer === "mse") {
        assert.ok(after.targetLatencyMs <= before.targetLatencyMs, `target ${before.targetLatencyMs} -> ${after.targetLatencyMs} ms`);
      }
      assert.ok(after.decodedFrames > reset.decodedFrames + 60, "frames are decoded again");
      await page.close();
    }),
  );

  if (renderer === "webcodecs") {
    test("auto picks WebCodecs and its track generator; the canvas over the <video> and the captured output play too", { timeout: 30_000 }, () =>
      withLogs(async () => {
        const outputs = ["canvas", "auto", "captured"];
        const indices = await fx.page.evaluate(
          ([url, outputs]) => {
            const { players, addPlayer } = window.mqttVideo;
            return outputs.map((videoOutput, i) =>
              players.indexOf(addPlayer({ url, autoplay: true, muted: true, renderer: i === 1 ? "auto" : "webcodecs", videoOutput })),
            );
          },
          [fx.rtsp.url, outputs],
        );
        const first = [];
        for (const i of indices) first.push(await waitState(i, "playing", 10_000));
        assert.equal(first[1].renderer, "webcodecs");
        assert.deepEqual(first.map((s) => s.videoOutput), ["canvas", "generator", "captured"]);
        await sleep(3000);
        for (const [k, i] of indices.entries()) {
          const s = await stats(i);
          assert.equal(s.state, "playing");
          assert.ok(s.decodedFrames - first[k].decodedFrames >= 60, `${s.videoOutput}: frames are decoded`);
          assert.ok(s.latencyP50Ms !== null && s.latencyP50Ms < MAX_LATENCY_MS, `${s.videoOutput}: latency p50 ${s.latencyP50Ms} ms`);
          note(`${s.videoOutput} output: latency p50 ${s.latencyP50Ms} ms, p95 ${s.latencyP95Ms} ms, display delay p50 ${s.displayDelayP50Ms} ms`);
        }
        // What is seen is the canvas: it moves, and it covers the <video> under it.
        const card = fx.page.locator(".player").nth(indices[0]);
        await assertPictureMoves(card.locator("canvas.mqtt-video-canvas"));
        const [videoBox, canvasBox] = [await card.locator("video").boundingBox(), await card.locator("canvas").boundingBox()];
        assert.deepEqual(canvasBox, videoBox, "the canvas lies over the <video>");
        for (const i of indices.slice(1)) assert.equal(await fx.page.locator(".player").nth(i).locator("canvas").count(), 0);
        await assertPictureMoves(fx.page.locator("video").nth(indices[1]));
        // Picture-in-picture from the card's button: the <video> under the canvas plays the canvas's frames
        // while the window is open, and its empty stream again once it is closed.
        const pip = () =>
          fx.page.evaluate(async (i) => {
            const v = window.mqttVideo.players[i].video;
            const frames = await new Promise((resolve) => {
              let n = 0;
              const onFrame = () => (++n === 10 ? resolve(n) : v.requestVideoFrameCallback(onFrame));
              v.requestVideoFrameCallback(onFrame);
              setTimeout(() => resolve(n), 2000);
            });
            return { open: document.pictureInPictureElement === v, frames, tracks: v.srcObject?.getVideoTracks().length ?? 0 };
          }, indices[0]);
        await card.locator("button.pip").click();
        await waitFor("picture-in-picture to open", () => fx.page.evaluate(() => !!document.pictureInPictureElement), { timeoutMs: 5000 });
        const open = await pip();
        assert.deepEqual(open, { open: true, frames: 10, tracks: 1 }, "the picture-in-picture window gets the frames");
        await card.locator("button.pip").click();
        await waitFor("picture-in-picture to close", () => fx.page.evaluate(() => !document.pictureInPictureElement), { timeoutMs: 5000 });
        const closed = await pip();
        assert.equal(closed.tracks, 0, "the <video> is back on its empty stream");
        assert.equal((await stats(indices[0])).state, "playing", "the canvas plays on after picture-in-picture");
        note(`picture-in-picture: ${open.frames} frames in the window, then closed`);
        for (const i of indices.reverse()) await fx.page.evaluate((i) => window.mqttVideo.players[i].card.querySelector(".remove").click(), i);
        assert.deepEqual(pageErrors(), []);
      }),
    );
  }

  test("a forbidden URL shows the server's error", { timeout: 20_000 }, () =>
    withLogs(async () => {
      const forbidden = "rtsp://127.0.0.1:1/not-allowed";
      const index = await fx.page.evaluate(
        ([url, renderer]) => window.mqttVideo.players.indexOf(window.mqttVideo.addPlayer({ url, autoplay: true, muted: true, renderer })),
        [forbidden, renderer],
      );
      const s = await waitState(index, "error", 10_000);
      assert.equal(s.errors.length, 1);
      assert.equal(s.errors[0].code, "forbidden_url");
      assert.match(s.errors[0].message, /not allowed|allow-list/i);
      const shown = await fx.page.evaluate((i) => {
        const card = window.mqttVideo.players[i].card;
        return { message: card.querySelector(".message").textContent, overlay: card.querySelector(".overlay").textContent };
      }, index);
      assert.equal(shown.message, s.errors[0].message, "the card shows the server's message");
      assert.equal(shown.overlay, s.errors[0].message, "the video overlay shows it too");
      note(`forbidden URL: "${s.errors[0].message}"`);
      await fx.page.evaluate((i) => window.mqttVideo.players[i].card.querySelector(".remove").click(), index);
      assert.equal((await stats(0)).state, "playing", "the first player is not disturbed");
      pageErrors(); // a refused play is not a page error, whatever the console says
    }),
  );

  test("killing and restarting the broker resumes playback", { timeout: 60_000 }, () =>
    withLogs(async () => {
      const before = await stats(0);
      assert.equal(before.state, "playing");
      await fx.broker.kill();
      const killedAt = Date.now();
      await waitState(0, "reconnecting", 10_000);
      note(`broker killed: the page showed "reconnecting" after ${Date.now() - killedAt} ms`);
      await sleep(1000);
      await fx.broker.start();
      const restartedAt = Date.now();
      const resumed = await waitState(0, "playing", 30_000, (s) => s.reconnects >= 1);
      const resumeMs = Date.now() - restartedAt;
      await sleep(3000);
      const later = await stats(0);
      assert.equal(later.state, "playing");
      assert.ok(later.currentTime - resumed.currentTime > 2.4, `currentTime advanced ${later.currentTime - resumed.currentTime} s in 3 s after the restart`);
      assert.ok(later.decodedFrames > resumed.decodedFrames + 60, "frames are decoded again");
      assert.notEqual(later.replyTopic, before.replyTopic, "the replay used a new reply topic");
      assert.deepEqual(later.errors, []);
      assert.ok(later.latencyMs !== null && later.latencyMs < MAX_LATENCY_MS, `latency after the restart ${later.latencyMs} ms`);
      note(
        `broker restart: playing again ${resumeMs} ms after the broker came back (reconnects ${later.reconnects}, ` +
          `resets ${later.resets}); latency then ${later.latencyMs} ms`,
      );
      const allErrors = pageErrors().filter((e) => !/WebSocket|ERR_CONNECTION_REFUSED|net::/i.test(e));
      assert.deepEqual(allErrors, [], "no page errors besides the refused WebSocket connections");
    }),
  );

  test("the source dropping and coming back resumes playback", { timeout: 60_000 }, (t) =>
    withLogs(async () => {
      const before = await stats(0);
      assert.equal(before.state, "playing");
      const port = new URL(fx.rtsp.url).port;
      await fx.rtsp.proc.kill("SIGKILL");
      const killedAt = Date.now();
      const down = await waitState(0, "reconnecting", 15_000);
      assert.match(down.message, /source dropped/);
      note(`source killed: the page showed "${down.message}" after ${Date.now() - killedAt} ms`);
      fx.rtsp = await startRtspSource(fx.rtspArgs, port); // the same URL
      const restartedAt = Date.now();
      const resumed = await waitState(0, "playing", 30_000);
      const resumeMs = Date.now() - restartedAt;
      await sleep(3000);
      const later = await stats(0);
      assert.equal(later.state, "playing");
      assert.ok(later.currentTime - resumed.currentTime > 2.4, `currentTime advanced ${later.currentTime - resumed.currentTime} s in 3 s after the source came back`);
      assert.ok(later.decodedFrames > resumed.decodedFrames + 60, "frames are decoded again");
      assert.deepEqual(later.errors, []);
      assert.equal(later.replyTopic, before.replyTopic, "the same play went on (no new play was needed)");
      note(`source restart: playing again ${resumeMs} ms after the source came back (resets ${later.resets}, jumps ${later.jumps}); reported latency then ${later.latencyMs} ms`);
      // Known server issue (reported): after a source restart the prft wall clock of new fragments stops
      // advancing, so the latency the page computes grows by a second every second although playback is live.
      await t.test("the reported latency is right after the source came back", async () => {
        const again = await stats(0);
        assert.ok(again.latencyMs !== null && again.latencyMs < MAX_LATENCY_MS, `latency after the source came back ${again.latencyMs} ms`);
      });
    }),
  );

  test("a pushed stream plays, and resumes when its publisher comes back", { timeout: 90_000 }, () =>
    withLogs(async () => {
      let publisher = startPublisher("640x360");
      onCleanup(() => publisher.kill());
      await waitPublishing(1);
      const index = await fx.page.evaluate(
        ([url, renderer]) => window.mqttVideo.players.indexOf(window.mqttVideo.addPlayer({ url, autoplay: true, muted: true, renderer })),
        ["ingest://e2e", renderer],
      );
      const first = await waitState(index, "playing", 15_000, (s) => s.firstFrameMs !== null);
      await sleep(3000);
      const playing = await stats(index);
      assert.equal(playing.state, "playing");
      assert.ok(playing.decodedFrames - first.decodedFrames >= 60, "the pushed stream's frames are decoded");
      assert.equal(playing.width, 640);
      note(`pushed stream (TCP ingest): first frame ${first.firstFrameMs} ms after play(); latency p50 ${playing.latencyP50Ms} ms, p95 ${playing.latencyP95Ms} ms`);

      await publisher.kill("SIGKILL");
      const down = await waitState(index, "reconnecting", 15_000);
      assert.match(down.message, /publisher/);
      note(`publisher killed: the page showed "${down.message}"`);

      publisher = startPublisher("320x240");
      const backAt = Date.now();
      await waitPublishing(2);
      const resumed = await waitState(index, "playing", 20_000, (s) => s.width === 320);
      const resumeMs = Date.now() - backAt;
      await sleep(3000);
      const later = await stats(index);
      assert.equal(later.state, "playing");
      assert.ok(later.currentTime - resumed.currentTime > 2.4, `currentTime advanced ${later.currentTime - resumed.currentTime} s in 3 s`);
      assert.ok(later.decodedFrames > resumed.decodedFrames + 60, "frames are decoded again");
      assert.deepEqual(later.errors, []);
      assert.equal(later.replyTopic, playing.replyTopic, "the same play went on");
      assert.equal(later.renderer, renderer, "the new init segment is played by the same renderer");
      note(`publisher back with another size: playing 320x240 ${resumeMs} ms after it started (resets ${later.resets})`);
      await fx.page.evaluate((i) => window.mqttVideo.players[i].card.querySelector(".remove").click(), index);
      await publisher.kill();
      assert.deepEqual(pageErrors(), []);
    }),
  );
}
