// Renditions in a real browser (issue 15): a 720p stream at about 3.3 Mbit/s, copied, with a `low` rendition
// of 360p at about 0.6 Mbit/s (decoded from the copied source while it is watched), a page on `rendition=auto` behind a link throttled to 2 Mbit/s
// (tests/support/throttle.py, a token bucket with 8 KiB bursts between Chromium and the gateway). The page
// must be on `low` within 10 s of the throttle, then play under 400 ms of latency (its own figure) with no
// growing lag and no stall; within 15 s of the link recovering it must be back on `main`, under 300 ms.
//
// Then, on the built-in test pattern with a small `low`: a page that asks for `low` plays it and nothing else,
// one that asks for a rendition the server does not offer plays `main` and says so, and a switch whose new
// rendition never delivers a usable fragment is given up and the page goes on with `main`.
//
//   cd tests/e2e && node --test renditions.test.js     (needs what the player tests need)
//   RENDITIONS_RENDERERS=mse runs one renderer; RENDITIONS_TRACE=1 prints every sample and the page's events.

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
  percentile,
  sleep,
  startRtspSource,
  startServer,
  startThrottle,
  stopAll,
  waitFor,
} from "./support.js";

after(stopAll);

const LINK_BPS = 2_000_000;
// Long enough for the bounds below: down within 10 s and then 14 s on low (its lag in two halves, no stall, no
// flapping), and up within 15 s of the link recovering.
const BEFORE_SECONDS = 5;
const THROTTLED_SECONDS = 24;
const RECOVERY_SECONDS = 16;
/** The figures the issue asks for. */
const DOWN_WITHIN_S = 10;
const UP_WITHIN_S = 15;
const MAX_LATENCY_MS = 400;
const RECOVERED_LATENCY_MS = 300;
/** After the switch down, this long is the switch's own (the backlog of main drains) before "no stall". */
const SETTLE_S = 3;

const TRACE = !!process.env.RENDITIONS_TRACE;

async function throttledPage(renderer) {
  const { mqttPort, httpPort } = await brokerAndGatewayPorts();
  // Noise fills whatever bitrate it is given, as a busy camera picture does (the ball would not reach 3.3 Mbit/s).
  // Copied, not transcoded: the source's encoder, main's and low's on two cores beside the browser's decoder
  // left the page short of CPU now and then (a stall on low in about 1 run of 3), which is not what this
  // measures.
  const rtsp = await startRtspSource(["--width", "1280", "--height", "720", "--pattern", "snow", "--bitrate", "3300"]);
  onCleanup(() => rtsp.proc.kill());
  const extra = [
    "[[pipeline.renditions]]",
    'name = "low"',
    "max_height = 360",
    "bitrate_kbps = 500",
    "max_bitrate_kbps = 600",
  ];
  const config = gatewayConfig({ mqttPort, httpPort, name: `renditions-${renderer}`, urls: [rtsp.url], mode: "copy", extra });
  const server = await startServer(config);
  onCleanup(() => server.kill());
  const throttle = await startThrottle(httpPort);
  const browser = await chromium.launch({ executablePath: chromiumPath(), headless: true, args: CHROMIUM_ARGS });
  onCleanup(() => browser.close());
  const pageErrors = [];
  const page = await browser.newPage();
  page.on("pageerror", (e) => pageErrors.push(e.message));
  const q = new URLSearchParams({ url: rtsp.url, autoplay: "1", muted: "1", renderer, broker: `ws://127.0.0.1:${throttle.port}/mqtt` });
  if (process.env.RENDITIONS_OUTPUT) q.set("output", process.env.RENDITIONS_OUTPUT);
  await page.goto(`http://127.0.0.1:${httpPort}/?${q}`);
  const stats = () => page.evaluate(() => window.mqttVideo.players[0].stats());
  await waitFor("the page to play main", async () => {
    const s = await stats();
    return s.state === "playing" && s.rendition === "main";
  }, { timeoutMs: 30_000 });

  // Every 250 ms: [phase, seconds into it, stats, the latencies of the frames shown since the last sample].
  const samples = [];
  let mark = await page.evaluate(() => window.mqttVideo.players[0].latenciesSince(0).mark);
  const sample = async (phase, seconds) => {
    const started = performance.now();
    while (performance.now() - started < seconds * 1000) {
      await sleep(250);
      const { s, frames } = await page.evaluate((m) => {
        const p = window.mqttVideo.players[0];
        return { s: p.stats(), frames: p.latenciesSince(m) };
      }, mark);
      mark = frames.mark;
      const row = { phase, t: (performance.now() - started) / 1000, s, latencies: frames.latencies };
      samples.push(row);
      if (TRACE) {
        console.log(
          `${phase} ${row.t.toFixed(2)} s: ${s.state} ${s.rendition}${s.renditionSwitching ? `->${s.renditionSwitching}` : ""} ` +
            `${s.latencyMs} ms, ${s.width}x${s.height}, ${s.bitrateKbps} kbit/s, link ${s.linkKbps}, stalls ${s.stalls}, ` +
            `jumps ${s.jumps}, skipped ${s.skippedFragments}, switches ${s.renditionSwitches}, target ${s.targetLatencyMs} ms, buffer ${s.bufferSeconds}`,
        );
      }
    }
  };
  await sample("before", BEFORE_SECONDS);
  await throttle.setRate(LINK_BPS);
  await sample("throttled", THROTTLED_SECONDS);
  await throttle.setRate(0);
  await sample("recovered", RECOVERY_SECONDS);
  const events = await page.evaluate(() => window.mqttVideo.players[0].events.filter((e) => ["rendition", "stall", "jump", "reset", "lost"].includes(e.kind)));
  if (TRACE) for (const e of events) console.log(`event ${e.at} ${e.kind}: ${e.detail}`);
  return { samples, events, pageErrors };
}

function figures(renderer, samples) {
  const of = (phase) => samples.filter((r) => r.phase === phase);
  const before = of("before");
  const throttled = of("throttled");
  const recovered = of("recovered");
  const down = throttled.find((r) => r.s.rendition === "low");
  const after = down ? throttled.filter((r) => r.t >= down.t + SETTLE_S) : [];
  const latencies = after.flatMap((r) => r.latencies);
  const half = Math.floor(after.length / 2);
  const p50 = (rows) => percentile(rows.flatMap((r) => r.latencies), 50);
  const up = recovered.find((r) => r.s.rendition === "main" && r.s.latencyMs !== null && r.s.latencyMs < RECOVERED_LATENCY_MS);
  const upEnd = recovered.at(-1);
  return {
    renderer,
    mainKbps: before.at(-1).s.bitrateKbps,
    mainLatencyP50Ms: p50(before),
    downAfterS: down ? Number(down.t.toFixed(2)) : null,
    lowKbps: after.at(-1)?.s.bitrateKbps ?? null,
    lowSize: after.length ? `${after.at(-1).s.width}x${after.at(-1).s.height}` : null,
    afterSwitchLatencyP50Ms: percentile(latencies, 50),
    afterSwitchLatencyP95Ms: percentile(latencies, 95),
    afterSwitchLatencyMaxMs: latencies.length ? Math.max(...latencies) : null,
    // growing lag: the second half's p50 against the first's
    lagFirstHalfP50Ms: p50(after.slice(0, half)),
    lagSecondHalfP50Ms: p50(after.slice(half)),
    stallsAfterSwitch: after.length ? after.at(-1).s.stalls - after[0].s.stalls : null,
    jumpsAfterSwitch: after.length ? after.at(-1).s.jumps - after[0].s.jumps : null,
    skippedAfterSwitch: after.length ? after.at(-1).s.skippedFragments - after[0].s.skippedFragments : null,
    switchesWhileThrottled: throttled.at(-1).s.renditionSwitches - before.at(-1).s.renditionSwitches,
    linkEstimateThrottledKbps: throttled.at(-1).s.linkKbps,
    upAfterS: up ? Number(up.t.toFixed(2)) : null,
    recoveredLatencyP50Ms: up ? p50(recovered.filter((r) => r.t > up.t)) : null,
    recoveredRendition: upEnd.s.rendition,
    switches: upEnd.s.renditionSwitches,
    switchFailures: upEnd.s.renditionSwitchFailures,
  };
}

const renderers = (process.env.RENDITIONS_RENDERERS ?? "webcodecs,mse").split(",").filter(Boolean);
for (const renderer of renderers) {
  test(`${renderer}: on a 2 Mbit/s link the page moves to low, plays live on it, and is back on main when the link recovers`, { timeout: 180_000 }, async (t) => {
    t.after(stopAll); // the next case gets the machine to itself
    const { samples, events, pageErrors } = await throttledPage(renderer);
    const f = figures(renderer, samples);
    console.log(`renditions, ${renderer}: ${JSON.stringify(f)}`);
    const why = `${JSON.stringify(f)}\n${events.map((e) => `${e.kind}: ${e.detail}`).join("\n")}`;
    assert.ok(f.downAfterS !== null && f.downAfterS <= DOWN_WITHIN_S, `on low within ${DOWN_WITHIN_S} s of the throttle: ${why}`);
    assert.equal(f.lowSize, "640x360", why);
    assert.ok(f.afterSwitchLatencyMaxMs !== null && f.afterSwitchLatencyMaxMs < MAX_LATENCY_MS, `under ${MAX_LATENCY_MS} ms on low: ${why}`);
    assert.ok(f.lagSecondHalfP50Ms <= f.lagFirstHalfP50Ms + 50, `no growing lag on low: ${why}`);
    assert.equal(f.stallsAfterSwitch, 0, `no stall on low: ${why}`);
    assert.equal(f.skippedAfterSwitch, 0, `nothing shed on low: ${why}`);
    assert.equal(f.switchesWhileThrottled, 1, `one switch while throttled, no flapping: ${why}`);
    assert.ok(f.upAfterS !== null && f.upAfterS <= UP_WITHIN_S, `back on main under ${RECOVERED_LATENCY_MS} ms within ${UP_WITHIN_S} s: ${why}`);
    assert.equal(f.recoveredRendition, "main", why);
    assert.equal(f.switchFailures, 0, why);
    const end = samples.at(-1).s;
    assert.equal(end.state, "playing");
    assert.deepEqual(end.errors, []);
    assert.deepEqual(pageErrors, []);
  });
}

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
