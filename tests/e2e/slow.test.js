// A browser on a link slower than the stream (protocol version 2 through the gateway): it loses whole
// fragments up to a keyframe and stays live, it is back at its normal latency soon after the link recovers,
// and a second page on a fast link notices nothing. The slow link is tests/support/throttle.py, a token
// bucket between Chromium and the gateway whose small receive buffer leaves the backlog in the gateway.
//
//   cd tests/e2e && node --test slow.test.js        (needs what the player tests need)
//   SLOW_TRACE=1 prints every sample.

import { after, test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
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

/** The stream's bitrate over the link's (the "about 1.6 x the link"). */
const OVERLOAD = 1.6;
const THROTTLED_SECONDS = 20;
const RECOVERY_SECONDS = 10;

async function slowLink(renderer) {
  const { mqttPort, httpPort } = await brokerAndGatewayPorts();
  // Noise at 1.5 Mbit/s, 1 s GOP: the ball pattern compresses to a few hundred kbit/s.
  const rtsp = await startRtspSource(["--pattern", "snow", "--bitrate", "1500"]);
  onCleanup(() => rtsp.proc.kill());
  const server = await startServer(gatewayConfig({ mqttPort, httpPort, name: `slow-${renderer}`, urls: [rtsp.url], mode: "copy" }));
  onCleanup(() => server.kill());
  const throttle = await startThrottle(httpPort);
  const browser = await chromium.launch({ executablePath: chromiumPath(), headless: true, args: CHROMIUM_ARGS });
  onCleanup(() => browser.close());
  const pageErrors = [];
  const open = async (brokerUrl) => {
    const page = await browser.newPage();
    page.on("pageerror", (e) => pageErrors.push(e.message));
    const q = new URLSearchParams({ url: rtsp.url, autoplay: "1", muted: "1", renderer, broker: brokerUrl });
    await page.goto(`http://127.0.0.1:${httpPort}/?${q}`);
    return page;
  };
  const stats = (page) => page.evaluate(() => window.mqttVideo.players[0].stats());
  const fast = await open(`ws://127.0.0.1:${httpPort}/mqtt`);
  const slow = await open(`ws://127.0.0.1:${throttle.port}/mqtt`);
  for (const page of [fast, slow]) {
    await waitFor("both pages to play", async () => (await stats(page)).state === "playing", { timeoutMs: 20_000 });
  }

  // [phase, seconds since it began, slow page's stats, fast page's latency]
  const samples = [];
  const sample = async (phase, until) => {
    const started = performance.now();
    while (performance.now() - started < until * 1000) {
      await sleep(250);
      const [s, f] = await Promise.all([stats(slow), stats(fast)]);
      const row = { phase, t: (performance.now() - started) / 1000, slow: s, fastLatency: f.latencyMs, fast: f };
      samples.push(row);
      if (process.env.SLOW_TRACE) {
        console.log(`${phase} ${row.t.toFixed(1)} s: slow ${s.state} ${s.latencyMs} ms, ${s.decodedFrames} frames, ` +
          `${s.skippedFragments} skipped; fast ${f.latencyMs} ms`);
      }
    }
  };
  await sample("before", 6);
  const before = samples.at(-1);
  const streamKbps = before.fast.bitrateKbps;
  const linkBps = (streamKbps * 1000) / OVERLOAD;
  await throttle.setRate(linkBps);
  await sample("throttled", THROTTLED_SECONDS);
  const throttledEnd = samples.at(-1);
  await throttle.setRate(0);
  await sample("recovered", RECOVERY_SECONDS);
  const end = samples.at(-1);

  const of = (phase, pick, from = 0) => samples.filter((r) => r.phase === phase && r.t >= from).map(pick).filter(Number.isFinite);
  const lagAfter10 = of("throttled", (r) => r.slow.latencyMs, 10);
  const shownLast10 = throttledEnd.slow.decodedFrames - samples.find((r) => r.phase === "throttled" && r.t >= 10).slow.decodedFrames;
  const recovered = samples.find((r) => r.phase === "recovered" && r.slow.latencyMs < 300);
  const fastBefore = of("before", (r) => r.fastLatency);
  const fastThrottled = of("throttled", (r) => r.fastLatency);
  const figure = {
    renderer,
    streamKbps,
    linkKbps: Math.round(linkBps / 1000),
    slowLagMaxAfter10s: Math.max(...lagAfter10),
    slowLagP50AfterTenS: percentile(lagAfter10, 50),
    framesShownLast10s: shownLast10,
    skippedFragments: throttledEnd.slow.skippedFragments,
    slowBackUnder300msAfter: recovered ? Number(recovered.t.toFixed(1)) : null,
    slowLatencyAtEnd: end.slow.latencyMs,
    fastP50Before: percentile(fastBefore, 50),
    fastP50Throttled: percentile(fastThrottled, 50),
    fastP95Throttled: percentile(fastThrottled, 95),
    fastSkipped: end.fast.skippedFragments,
  };
  console.log(`slow link, ${renderer}: ${JSON.stringify(figure)}`);
  if (process.env.SLOW_TRACE) {
    const events = await slow.evaluate(() => window.mqttVideo.players[0].events.slice(-40));
    for (const e of events) console.log(`slow page event ${e.at} ${e.kind}: ${e.detail}`);
  }
  return { figure, samples, end, pageErrors, fastEnd: end.fast };
}

for (const renderer of ["webcodecs", "mse"]) {
  test(`${renderer}: a page on a link slower than the stream stays live and recovers; the other notices nothing`, { timeout: 120_000 }, async (t) => {
    t.after(stopAll); // the next case gets the machine to itself
    const { figure, end, pageErrors, fastEnd } = await slowLink(renderer);
    const f = JSON.stringify(figure);
    assert.equal(end.slow.protocol, 2, "the stream topic (the gateway sheds only its fragments)");
    assert.ok(figure.skippedFragments > 0, `the gateway shed fragments for the slow page: ${f}`);
    assert.ok(figure.slowLagMaxAfter10s < 1500, `the slow page stays within 1.5 s of live while throttled: ${f}`);
    assert.ok(figure.framesShownLast10s >= 30, `the slow page still shows frames while throttled: ${f}`);
    assert.ok(figure.slowBackUnder300msAfter !== null, `the slow page is back under 300 ms within ${RECOVERY_SECONDS} s: ${f}`);
    assert.equal(end.slow.state, "playing");
    assert.equal(figure.fastSkipped, 0, `the fast page lost nothing: ${f}`);
    assert.ok(figure.fastP50Throttled <= figure.fastP50Before + 50, `the fast page's latency is unchanged: ${f}`);
    assert.equal(fastEnd.state, "playing");
    assert.deepEqual(fastEnd.errors, []);
    assert.deepEqual(pageErrors, []);
  });
}
