// An HEVC camera in every engine (issue 27), with the server's defaults (`mode = "auto"`): the server copies
// the camera's HEVC as `main` (hvc1) and offers a full-size H.264 rendition, `h264`, made from it only while
// someone watches it. Each engine plays what it
// decodes: `main` where its MediaSource or WebCodecs takes the stream's own codec string (Firefox and WebKit
// here), the `h264` rendition where neither does (headless Chromium, without a platform HEVC decoder), and
// says so. What each engine decodes is asked of the engine itself, not assumed.
//
//   cd tests/e2e && node --test hevc.test.js        (ENGINES=firefox to run one; needs what engines.test.js needs)

import { after, test } from "node:test";
import assert from "node:assert/strict";
import { ENGINES, launchBrowser, missingExecutable } from "./browsers.js";
import { playerSnapshot, waitFrames, waitPlayerState } from "./page-checks.js";
import { brokerAndGatewayPorts, gatewayConfig, onCleanup, startRtspSource, startServer, stopAll } from "./support.js";

after(stopAll);

const engines = (process.env.ENGINES ?? ENGINES.join(",")).split(",").map((e) => e.trim()).filter(Boolean);

async function startHevcServer() {
  const camera = await startRtspSource(["--codec", "h265", "--width", "1280", "--height", "720", "--bitrate", "1500"]);
  onCleanup(() => camera.proc.kill());
  const { mqttPort, httpPort } = await brokerAndGatewayPorts();
  const server = await startServer(gatewayConfig({ mqttPort, httpPort, name: "hevc", urls: [camera.url], mode: "auto" }));
  onCleanup(() => server.kill());
  return { camera, httpPort, server };
}

for (const engine of engines) {
  test(`${engine}: an HEVC camera plays, as HEVC where the engine decodes it and as its H.264 rendition where not`, { timeout: 120_000 }, async () => {
    assert.equal(missingExecutable(engine), null);
    const fx = await startHevcServer();
    const browser = await launchBrowser(engine);
    onCleanup(() => browser.close().catch(() => {}));
    const page = await browser.newPage({ width: 1280, height: 900 });
    const url = `http://127.0.0.1:${fx.httpPort}/?url=${encodeURIComponent(fx.camera.url)}&autoplay=1&muted=1`;
    const started = performance.now();
    await page.goto(url);
    const playing = await waitPlayerState(page, 0, "playing", 30_000);
    const firstFrameMs = performance.now() - started;
    const later = await waitFrames(page, 0, playing, 30, 15_000);
    const main = (await page.evaluate(() => window.mqttVideo.players[0].describeReply.renditions?.[0]?.mimeCodec)) ?? null;
    assert.match(main ?? "", /^video\/mp4; codecs="hvc1\.1\.6\.L\d+\.[0-9A-F]+/, "main is the camera's HEVC, with its codec string");
    // What this engine decodes, asked of the engine: MediaSource, or WebCodecs where the page may use it.
    const decodes = await page.evaluate(async (mime) => {
      const mse = typeof MediaSource !== "undefined" && MediaSource.isTypeSupported(mime);
      const codec = /codecs="([^,"]+)/.exec(mime)[1];
      let wc = false;
      try {
        wc = window.isSecureContext && typeof VideoDecoder !== "undefined" && (await VideoDecoder.isConfigSupported({ codec })).supported;
      } catch {}
      return mse || wc;
    }, main);
    const s = await playerSnapshot(page, 0);
    const figure = { engine, decodesHevc: decodes, rendition: s.rendition, renderer: s.renderer, mimeCodec: s.mimeCodec, firstFrameMs: Math.round(firstFrameMs), latencyP50Ms: s.latencyP50Ms, shown: later.shownFrames };
    console.log(`hevc: ${JSON.stringify(figure)}`);
    if (decodes) {
      assert.equal(s.rendition, "main", JSON.stringify(figure));
      assert.match(s.mimeCodec, /hvc1\./, JSON.stringify(figure));
    } else {
      assert.equal(s.rendition, "h264", JSON.stringify(figure));
      assert.match(s.mimeCodec, /avc1\./, JSON.stringify(figure));
      const events = await page.evaluate(() => window.mqttVideo.players[0].events.map((e) => `${e.kind}: ${e.detail}`).join("\n"));
      assert.match(events, /does not decode main/, "the page says why it plays h264");
    }
    assert.ok(s.latencyP50Ms !== null && s.latencyP50Ms < 1000, JSON.stringify(figure));
    await page.close();
    await browser.close();
    await stopAll();
  });
}
