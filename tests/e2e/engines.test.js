// The page in three browser engines (issue 25): Chromium (playwright-core), Firefox ESR (puppeteer-core over
// WebDriver BiDi) and WebKitGTK (WebKitWebDriver and MiniBrowser on Xvfb), all Debian packages, driven through
// browsers.js; each on three origins:
//
//   secure   https://127.0.0.1:PORT/ with the gateway's own self-signed certificate (the browsers accept it),
//            or http://127.0.0.1:PORT/ (also a secure context) with ENGINES_SECURE_ORIGIN=http (see below);
//   lan      http://198.18.0.1:PORT/, an address of this run's veth pair (lan.js): plain HTTP from "another
//            machine", not a secure context, gateway.tls.http = "serve" so that it is not redirected to https;
//   lan-https https://198.18.0.1:PORT/, the same address over the gateway's TLS (its made certificate names the
//            address; the browsers accept it): a secure context from "another machine", both renderers.
//
// Per engine and origin one broker (logins required), one live RTSP source and one server with a `low`
// rendition; on each page load, in order: the login (anonymous is refused, the form logs in and the play
// starts), a cold play (time advances, frames are shown, no page errors, latency under 1 s, the picture is not
// blank and moves), a late second player, a switch to `low` and back, the source dropping and coming back, and
// Stop. With each renderer the origin offers: WebCodecs and MediaSource on a secure one, MediaSource on the
// other (where the page's `auto` must pick it). Then the page at a phone's 390x844: nothing wider than the
// viewport, the status row inside it, buttons at least 44 px. The figures are printed at the end.
//
// The damaged-frame case needs playwright's page.routeWebSocket: it stays in player-cases.js (Chromium only).
//
//   cd tests/e2e && node --test engines.test.js
//   ENGINES=firefox,webkit          engines to run (default all three)
//   ENGINES_ORIGINS=secure          origins to run (default secure,lan,lan-https)
//   ENGINES_SECURE_ORIGIN=http      the secure origin over plain HTTP on loopback instead of HTTPS; `http,https`: both
//   ENGINES_TRACE=1                 every sample of the cold play

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmodSync, writeFileSync } from "node:fs";
import path from "node:path";
import { ENGINES, launchBrowser, missingExecutable } from "./browsers.js";
import { LAN_ADDRESS, lanAddress, removeLan } from "./lan.js";
import { assertPictureMoves, playerSnapshot, playerStats, until, waitFrames, waitPlayerState } from "./page-checks.js";
import { CLIENT_DIR, freePort, Mosquitto, percentile, scratch, startRtspSource, startServer, stopAll } from "./support.js";

/**
 * THE SWITCH for the secure origin: "https" (the gateway's TLS, `[gateway.tls]`, on the same port as plain
 * HTTP) or "http" (loopback plain HTTP, the only secure origin before the gateway had TLS). ENGINES_SECURE_ORIGIN
 * overrides it; "http,https" runs both.
 */
const SECURE_ORIGIN_DEFAULT = "https";

const engines = (process.env.ENGINES ?? ENGINES.join(",")).split(",").map((e) => e.trim()).filter(Boolean);
const originKinds = (process.env.ENGINES_ORIGINS ?? "secure,lan,lan-https").split(",").map((e) => e.trim()).filter(Boolean);
const secureSchemes = (process.env.ENGINES_SECURE_ORIGIN ?? SECURE_ORIGIN_DEFAULT).split(",").map((e) => e.trim()).filter(Boolean);
const TRACE = !!process.env.ENGINES_TRACE;
for (const e of engines) assert.ok(ENGINES.includes(e), `ENGINES: unknown engine ${e}`);
for (const s of secureSchemes) assert.ok(["http", "https"].includes(s), `ENGINES_SECURE_ORIGIN: ${s} is not http or https`);

/** The origins: {name, kind ("secure" | "lan"), scheme, secure (a secure context expected)}. */
const ORIGINS = [
  ...(originKinds.includes("secure") ? secureSchemes.map((scheme) => ({ name: `${scheme}://127.0.0.1`, kind: "secure", scheme, secure: true })) : []),
  ...(originKinds.includes("lan") ? [{ name: `http://${LAN_ADDRESS}`, kind: "lan", scheme: "http", secure: false }] : []),
  ...(originKinds.includes("lan-https") ? [{ name: `https://${LAN_ADDRESS}`, kind: "lan", scheme: "https", secure: true }] : []),
];
for (const k of originKinds) assert.ok(["secure", "lan", "lan-https"].includes(k), `ENGINES_ORIGINS: unknown origin ${k}`);

const MAX_LATENCY_MS = 1000;
/**
 * Frames shown a second by a player alone on its page (the source has 30). WebKitGTK composites in software
 * here (Xvfb, no GPU) and shows 25-31 while the server and the source's encoder share the 2 cores with it.
 */
const MIN_FPS = 20;
/** The same with two players on the page (the late joiner's case). */
const MIN_FPS_TWO = 5;
/** Frames the cold play samples over (3 s of the 30 fps source). */
const COLD_FRAMES = 90;
const VIEWER = { username: "viewer", password: "viewer-pw" };
const SERVER_PASSWORD = "server-pw";
/** The source's size (tests/support/rtsp_server.py's default) and its `low` rendition's. */
const MAIN_HEIGHT = 360;
const LOW_HEIGHT = 180;

const figures = []; // {engine, origin, renderer, ...}: printed at the end

after(async () => {
  printFigures();
  await stopAll();
  removeLan();
});

function printFigures() {
  if (!figures.length) return;
  const cols = [
    ["engine", (f) => f.engine],
    ["origin", (f) => f.origin],
    ["renderer", (f) => f.renderer],
    ["first frame", (f) => ms(f.firstFrameMs)],
    ["latency p50/p95", (f) => pair(f.latencyP50, f.latencyP95)],
    ["per frame p50/p95", (f) => pair(f.frameP50, f.frameP95)],
    ["late join", (f) => ms(f.lateFirstFrameMs)],
    ["to low / back", (f) => pair(f.toLowMs, f.toMainMs)],
    ["source back", (f) => ms(f.sourceBackMs)],
  ];
  const rows = [cols.map(([h]) => h), ...figures.map((f) => cols.map(([, get]) => get(f)))];
  const widths = cols.map((_, c) => Math.max(...rows.map((r) => String(r[c]).length)));
  const lines = rows.map((r) => r.map((v, c) => String(v).padEnd(widths[c])).join("  "));
  console.log(`figures (ms; latency: stats().latencyMs sampled every 250 ms; per frame: requestVideoFrameCallback):\n${lines.map((l) => `  ${l}`).join("\n")}`);
}
const ms = (x) => (x === null || x === undefined ? "-" : `${Math.round(x)}`);
const pair = (a, b) => `${ms(a)} / ${ms(b)}`;

/** A broker that wants a login (anonymous clients are refused); a logged-in client may use every topic. */
async function startBroker(name, cleanups) {
  const dir = scratch();
  const passwordFile = path.join(dir, `passwd-${name}`);
  execFileSync("mosquitto_passwd", ["-c", "-b", passwordFile, "mqtt-video", SERVER_PASSWORD]);
  execFileSync("mosquitto_passwd", ["-b", passwordFile, VIEWER.username, VIEWER.password]);
  const aclFile = path.join(dir, `acl-${name}`);
  writeFileSync(aclFile, "pattern readwrite #\n");
  // mosquitto started as root reads its files as the mosquitto user.
  chmodSync(dir, 0o755);
  chmodSync(passwordFile, 0o644);
  chmodSync(aclFile, 0o644);
  const port = await freePort();
  const broker = new Mosquitto({ port, login: { passwordFile, aclFile } });
  await broker.start();
  cleanups.push(() => broker.stop());
  return { port, broker };
}

/**
 * What one origin's cases run against: a broker, the RTSP source, and a server whose gateway listens on `host`.
 * Returns {base (the page's origin), metricsUrl, rtsp, server, restartSource(), stop()}.
 */
async function startFixture(origin, engine) {
  const cleanups = [];
  const fx = {
    async stop() {
      while (cleanups.length) {
        try {
          await cleanups.pop()();
        } catch {}
      }
    },
  };
  try {
    await startParts(fx, cleanups, origin, engine);
  } catch (e) {
    await fx.stop();
    throw e;
  }
  return fx;
}

async function startParts(fx, cleanups, origin, engine) {
  const host = origin.kind === "lan" ? (await lanAddress()).address : "127.0.0.1";
  const name = `${engine}-${origin.kind}-${origin.scheme}`;
  const { port: mqttPort } = await startBroker(name, cleanups);
  const httpPort = await freePort();
  fx.rtsp = await startRtspSource();
  cleanups.push(() => fx.rtsp.proc.kill());
  const rtspPrefix = /^rtsp:\/\/[^/]+\//.exec(fx.rtsp.url)[0];
  const config = [
    "[broker]",
    `port = ${mqttPort}`,
    `client_id = "mqtt-video-engines-${name}-${process.pid}"`,
    'username = "mqtt-video"',
    `password = "${SERVER_PASSWORD}"`,
    "reconnect_min_ms = 100",
    "reconnect_max_ms = 1000",
    "[limits]",
    "linger_secs = 2",
    "[retry]",
    "initial_backoff_ms = 200",
    "max_backoff_ms = 1000",
    "[allow]",
    `prefixes = [${JSON.stringify(rtspPrefix)}]`,
    "[[pipeline.renditions]]",
    'name = "low"',
    `max_height = ${LOW_HEIGHT}`,
    "bitrate_kbps = 200",
    "[gateway]",
    `listen = "${host}:${httpPort}"`,
    `client_dir = ${JSON.stringify(CLIENT_DIR)}`,
    "[gateway.tls]",
    `state_dir = ${JSON.stringify(path.join(scratch(), `tls-${name}`))}`,
    // A plain-HTTP page from another machine is served as it is (the default redirects it to https).
    'http = "serve"',
    ...(origin.kind === "lan" ? [`names = [${JSON.stringify(host)}]`] : []),
    "",
  ].join("\n");
  fx.server = await startServer(config);
  cleanups.push(() => fx.server.kill());
  fx.host = host;
  fx.port = httpPort;
  fx.base = `${origin.scheme}://${host}:${httpPort}`;
  // Plain HTTP on the same port, from this process: /metrics.
  fx.metricsUrl = `http://${host}:${httpPort}/metrics`;
  fx.restartSource = async () => {
    const port = new URL(fx.rtsp.url).port;
    fx.rtsp = await startRtspSource([], port);
  };
}

/** The server's count of viewers (its /metrics). */
async function viewers(fx) {
  const text = await (await fetch(fx.metricsUrl)).text();
  const m = /^mqtt_video_viewers (\d+)/m.exec(text);
  assert.ok(m, "mqtt_video_viewers in /metrics");
  return Number(m[1]);
}

for (const engine of engines) {
  describe(engine, () => {
    const eng = { browser: null, page: null, missing: missingExecutable(engine) };

    before(async () => {
      if (eng.missing) return;
      const startedAt = performance.now();
      eng.browser = await launchBrowser(engine);
      console.log(`${engine}: launched in ${(performance.now() - startedAt).toFixed(0)} ms`);
    });

    after(async () => {
      await eng.page?.close().catch(() => {});
      if (eng.browser) console.log(`${engine}: ${eng.browser.version}`);
      await eng.browser?.close().catch(() => {});
    });

    /** A page of this engine at `width`x`height` (the one before it is closed: WebKit has one at a time). */
    async function openPage(width, height) {
      await eng.page?.close().catch(() => {});
      eng.page = null;
      eng.page = await eng.browser.newPage({ width, height });
      return eng.page;
    }

    for (const origin of ORIGINS) {
      describe(`${engine} ${origin.name}`, () => {
        const at = { fx: null, skip: null };

        before(async () => {
          if (eng.missing) return;
          if (origin.kind === "lan") {
            const lan = await lanAddress();
            if (lan.skip) {
              at.skip = lan.skip;
              return;
            }
          }
          at.fx = await startFixture(origin, engine);
        });

        after(async () => {
          await eng.page?.close().catch(() => {});
          eng.page = null;
          await at.fx?.stop();
        });

        /** Why this origin's cases cannot run here (a missing browser fails, no LAN address skips). */
        function precondition(t) {
          assert.equal(eng.missing, null, eng.missing ?? "");
          if (at.skip) {
            t.skip(at.skip);
            return false;
          }
          return true;
        }

        // On a secure origin both renderers, asked for by name; elsewhere the page's own choice (auto), which
        // must be MediaSource.
        const renderers = origin.secure ? ["webcodecs", "mse"] : ["auto"];
        for (const renderer of renderers) rendererCases(engine, origin, renderer, { eng, at, openPage, precondition });

        test(`${engine} ${origin.name}: at a phone's 390x844 nothing is wider than the screen and buttons are at least 44 px`, { timeout: 60_000 }, async (t) => {
          if (!precondition(t)) return;
          const page = await openPage(390, 844);
          // MediaSource (WebKitGTK's WebCodecs crashes on audio, see knownFailure): the layout is the same.
          await page.goto(`${at.fx.base}/?${new URLSearchParams({ url: at.fx.rtsp.url, autoplay: "1", muted: "1", renderer: "mse" })}`);
          await logIn(page);
          await waitPlayerState(page, 0, "playing", 20_000);
          if (!origin.secure) await until("the secure page's notice", () => page.evaluate(() => !document.getElementById("secure-notice").hidden), { timeoutMs: 5000 });
          const layout = await page.evaluate(() => {
            const shown = (el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== "hidden";
            const box = (el) => {
              const r = el.getBoundingClientRect();
              const label = el.id ? `#${el.id}` : `${el.tagName.toLowerCase()}${el.className ? `.${String(el.className).split(" ").join(".")}` : ""}`;
              return { label, left: r.left, right: r.right, width: r.width, height: r.height };
            };
            const status = document.querySelector(".player .status");
            return {
              innerWidth,
              innerHeight,
              scrollWidth: document.documentElement.scrollWidth,
              status: [status, ...status.querySelectorAll("*")].filter(shown).map(box),
              // Touch targets: every button, and the secure page's link where it is offered.
              targets: [...document.querySelectorAll("button, #secure-notice a")].filter(shown).map(box),
            };
          });
          const wide = layout.status.filter((b) => b.left < -0.5 || b.right > layout.innerWidth + 0.5);
          const small = layout.targets.filter((b) => b.width < 44 || b.height < 44);
          const fmt = (bs) => bs.map((b) => `${b.label} ${b.width.toFixed(0)}x${b.height.toFixed(0)} at ${b.left.toFixed(0)}..${b.right.toFixed(0)}`).join(", ");
          console.log(
            `${engine} ${origin.name} phone: viewport ${layout.innerWidth}x${layout.innerHeight}, scrollWidth ${layout.scrollWidth}; ` +
              `${layout.targets.length} touch targets, smallest ${Math.min(...layout.targets.map((b) => Math.min(b.width, b.height))).toFixed(0)} px`,
          );
          assert.deepEqual([layout.innerWidth, layout.innerHeight], [390, 844], "the viewport is a phone's");
          assert.ok(layout.targets.length >= 6, `the page's buttons are there: ${fmt(layout.targets)}`);
          assert.ok(layout.scrollWidth <= layout.innerWidth, `the page is ${layout.scrollWidth} px wide in a ${layout.innerWidth} px viewport`);
          assert.deepEqual(wide, [], `the status row leaves the viewport: ${fmt(wide)}`);
          assert.deepEqual(small, [], `touch targets under 44 px: ${fmt(small)}`);
          assert.deepEqual(await pageErrors(page), []);
        });
      });
    }
  });
}

/**
 * A failure that is the engine's own, known and reported, or null. It still fails (shown as TODO with the
 * reason, and the run goes on): the case passes again by itself once the engine or the page changes.
 */
function knownFailure(engine, renderer, error, browserLog) {
  // WebKitGTK 2.50.6 (Debian 12): AudioData.copyTo() kills the web process ("free(): invalid pointer"), even
  // for an AudioData made in JavaScript; the WebCodecs renderer copies every decoded audio frame to its
  // AudioWorklet, so a stream with sound crashes the tab at its first audio frame (without sound it plays).
  if (engine === "webkit" && renderer === "webcodecs" && error.fatal && /page crash/.test(error.message)) {
    const freed = /free\(\): invalid pointer/.test(browserLog) ? " (MiniBrowser: free(): invalid pointer)" : "";
    return `WebKitGTK's web process crashed${freed}: AudioData.copyTo() crashes WebKitGTK 2.50, and the WebCodecs renderer copies every audio frame`;
  }
  return null;
}

/** The login form: user and password typed, Log in clicked (nothing remembered). */
async function logIn(page) {
  await page.fill("#login-user", VIEWER.username);
  await page.fill("#login-password", VIEWER.password);
  const typed = await page.evaluate(() => [document.getElementById("login-user").value, document.getElementById("login-password").value]);
  assert.deepEqual(typed, [VIEWER.username, VIEWER.password], "the login form holds what was typed");
  await page.click("#login-submit");
  const pill = await until("the page to say who is logged in", async () => {
    const text = await page.evaluate(() => document.getElementById("login-state").textContent);
    return /logged in as/.test(text) ? text : false;
  }, { timeoutMs: 10_000 });
  assert.equal(pill, `logged in as ${VIEWER.username}`);
}

/** Page errors since the last call, without the refused anonymous connection's own console lines. */
async function pageErrors(page) {
  return page.errors();
}

/**
 * The cases of one page load with `renderer` (a URL option: webcodecs, mse or auto) on `origin`, in order; a case
 * after one that left no playing page is skipped with the reason.
 */
function rendererCases(engine, origin, renderer, { eng, at, openPage, precondition }) {
  // WebKitGTK: WebCodecs asked for plays with MediaSource, saying why (capabilities.js: AudioData.copyTo()
  // crashes WebKitGTK 2.50's web process, and the renderer copies every audio frame).
  const webkitNoWebCodecs = engine === "webkit" && renderer === "webcodecs";
  const expected = renderer === "auto" || webkitNoWebCodecs ? "mse" : renderer;
  const label = `${engine} ${origin.name} ${renderer === "auto" ? "auto (MediaSource)" : renderer === "mse" ? "MediaSource" : "WebCodecs"}`;
  const g = { page: null, broken: null, fig: { engine, origin: origin.name, renderer: renderer === "auto" ? "auto: mse" : renderer } };
  const events = () =>
    g.page
      ?.evaluate(() =>
        window.mqttVideo?.players.map((p) => {
          const v = p.video;
          const buffered = Array.from({ length: v.buffered.length }, (_, i) => [v.buffered.start(i), v.buffered.end(i)].map((t) => Number(t.toFixed(3))));
          return {
            state: p.state,
            message: p.message,
            video: { readyState: v.readyState, networkState: v.networkState, paused: v.paused, currentTime: v.currentTime, buffered, error: v.error?.message ?? null },
            events: p.events.slice(-15).map((e) => `${e.at.slice(11)} ${e.kind}: ${e.detail}`),
          };
        }),
      )
      .catch((e) => e.message);

  /** A case of this page: skipped once an earlier one left nothing to go on; a failure says why and adds the logs. */
  function pageCase(name, timeout, fn, { breaks = false } = {}) {
    test(`${label}: ${name}`, { timeout }, async (t) => {
      if (!precondition(t)) return;
      if (g.broken) {
        t.skip(`nothing to go on: ${g.broken}`);
        return;
      }
      try {
        await fn(t);
      } catch (e) {
        if (breaks) g.broken = `${name} failed`;
        const known = knownFailure(engine, expected, e, eng.browser?.log?.() ?? "");
        if (known) t.todo(known);
        if (!e.fatal) e.message += `\n--- the page: state and last events ---\n${JSON.stringify(await events())}`;
        e.message += `\n--- mqtt-video serve ---\n${at.fx?.server.log().slice(-3000)}`;
        throw e;
      }
    });
  }

  pageCase("anonymous is refused; the login form logs in and the play starts", 60_000, async () => {
    figures.push(g.fig);
    g.page = await openPage(1280, 900);
    const q = new URLSearchParams({ url: at.fx.rtsp.url, autoplay: "1", muted: "1", renderer, rendition: "main" });
    await g.page.goto(`${at.fx.base}/?${q}`);
    const context = await g.page.evaluate(() => ({ secure: isSecureContext, videoDecoder: typeof VideoDecoder !== "undefined", href: location.href }));
    assert.equal(context.secure, origin.secure, `${context.href} is ${context.secure ? "" : "not "}a secure context`);
    // (WebKitGTK 2.50 has VideoDecoder outside a secure context too; the page goes by isSecureContext.)
    if (!origin.secure && context.videoDecoder) console.log(`${label}: VideoDecoder exists on a page that is not a secure context`);
    const refused = await until("the broker's refusal on the page", async () => {
      const t = await g.page.evaluate(() => document.getElementById("login-state").textContent);
      return /refused/.test(t) ? t : false;
    }, { timeoutMs: 10_000 });
    assert.match(refused, /not authori[sz]ed|wrong user name or password/);
    if (!origin.secure) {
      // The page offers its secure twin (tls.json beside it): https on the same port, the same path and query.
      const href = await until("the secure page's notice", () => g.page.evaluate(() => !document.getElementById("secure-notice").hidden && document.getElementById("secure-link").href), { timeoutMs: 5000 });
      assert.equal(href, `https://${at.fx.host}:${at.fx.port}/?${q}`, "the secure page's link");
    }
    assert.equal((await playerStats(g.page)).state, "error", "no play without a login");
    await logIn(g.page);
    assert.equal(await g.page.evaluate(() => localStorage.length), 0, "nothing stored without remember me");
    assert.ok(!(await g.page.evaluate(() => location.href)).includes(VIEWER.password), "the password is not in the URL");
    await pageErrors(g.page); // the refused connection's own messages are not the page's errors
  }, { breaks: true });

  pageCase("cold play: time advances, frames decode, latency under 1 s, the picture moves, no page errors", 60_000, async () => {
    const first = await waitPlayerState(g.page, 0, "playing", 20_000, (s) => s.firstFrameMs !== null);
    assert.equal(first.url, at.fx.rtsp.url);
    assert.equal(first.renderer, expected, `the renderer (WebCodecs off: ${first.webCodecsOff})`);
    if (!origin.secure) assert.match(first.webCodecsOff ?? "", /not a secure context/, "why WebCodecs is off");
    else if (webkitNoWebCodecs) assert.equal(first.webCodecsOff, "AudioData.copyTo crashes WebKitGTK", "why WebCodecs is off");
    assert.equal(first.protocol, 2, "media on the stream topic (protocol version 2)");
    assert.equal(first.rendition, "main");
    g.fig.firstFrameMs = first.firstFrameMs;

    // Samples every 250 ms until COLD_FRAMES more frames are decoded.
    const samples = [];
    const startedAt = Date.now();
    let mark = (await g.page.evaluate(() => window.mqttVideo.players[0].latenciesSince(0))).mark;
    const frameLatencies = [];
    for (;;) {
      const { s, l } = await g.page.evaluate((m) => {
        const p = window.mqttVideo.players[0];
        return { s: { ...p.stats(), shownFrames: p.displaysSince(Number.MAX_SAFE_INTEGER).mark }, l: p.latenciesSince(m) };
      }, mark);
      mark = l.mark;
      frameLatencies.push(...l.latencies);
      samples.push({ at: Date.now(), s });
      if (TRACE) console.log(`${label} ${((Date.now() - startedAt) / 1000).toFixed(2)} s: ${s.state} ${s.latencyMs} ms, ${s.shownFrames} shown, ${s.decodedFrames} decoded, t ${s.currentTime}`);
      if (s.state !== "playing" || s.shownFrames >= samples[0].s.shownFrames + COLD_FRAMES) break;
      assert.ok(Date.now() - startedAt < 15_000, `${s.shownFrames - samples[0].s.shownFrames} frames shown in 15 s`);
      await new Promise((r) => setTimeout(r, 250)); // (the sampling period)
    }
    const last = samples.at(-1).s;
    for (const { s } of samples) assert.equal(s.state, "playing", `state stays playing: ${JSON.stringify(s)}`);
    assert.deepEqual(last.errors, [], "no player errors");
    assert.deepEqual(await pageErrors(g.page), [], "no page errors");
    const wallS = (samples.at(-1).at - samples[0].at) / 1000;
    const advanced = last.currentTime - samples[0].s.currentTime;
    assert.ok(advanced > wallS * 0.85, `currentTime advanced ${advanced.toFixed(2)} s in ${wallS.toFixed(2)} s`);
    const fps = (last.shownFrames - samples[0].s.shownFrames) / wallS;
    assert.ok(fps >= MIN_FPS, `${fps.toFixed(1)} frames shown a second (the source has 30)`);
    assert.ok(last.decodedFrames > 0, "the decoder counts frames");
    assert.ok(last.width > 0 && last.height === MAIN_HEIGHT, `the video's size ${last.width}x${last.height}`);
    assert.match(last.mimeCodec, /^video\/mp4; codecs="avc1\.[0-9A-F]{6}, mp4a\.40\.2"$/i);
    const latencies = samples.map(({ s }) => s.latencyMs).filter((x) => x !== null);
    assert.ok(latencies.length >= samples.length * 0.9, `latency known in ${latencies.length} of ${samples.length} samples`);
    const max = Math.max(...latencies);
    assert.ok(max < MAX_LATENCY_MS, `live latency reached ${max} ms (limit ${MAX_LATENCY_MS} ms)`);
    assert.ok(frameLatencies.length >= COLD_FRAMES * 0.8, `${frameLatencies.length} rendered frames' latencies (requestVideoFrameCallback)`);
    Object.assign(g.fig, {
      latencyP50: percentile(latencies, 50),
      latencyP95: percentile(latencies, 95),
      frameP50: percentile(frameLatencies, 50),
      frameP95: percentile(frameLatencies, 95),
    });
    console.log(
      `${label}: first frame ${first.firstFrameMs} ms after play(); latency p50 ${g.fig.latencyP50} ms, p95 ${g.fig.latencyP95} ms, max ${max} ms ` +
        `(${latencies.length} samples over ${wallS.toFixed(1)} s); per rendered frame p50 ${g.fig.frameP50} ms, p95 ${g.fig.frameP95} ms; ` +
        `${fps.toFixed(1)} frames shown a second, decoder's count ${samples[0].s.decodedFrames} -> ${last.decodedFrames}, ${last.droppedFrames} dropped, resets ${last.resets}, stalls ${last.stalls}, output ${last.videoOutput ?? "<video>"}`,
    );

    // The picture as the page shows it (the card's picture box: a canvas output lies over the <video>).
    let shotAt = await playerSnapshot(g.page);
    const shot = await assertPictureMoves(() => g.page.screenshot(".player .screen"), {
      between: async () => {
        shotAt = await waitFrames(g.page, 0, shotAt, 10, 5000);
      },
    });
    console.log(`${label}: the picture ${shot.width}x${shot.height}, luma mean ${shot.luma.mean.toFixed(0)}, std ${shot.luma.std.toFixed(0)}`);
  }, { breaks: true });

  pageCase("a late second player plays at once", 40_000, async () => {
    const index = await g.page.evaluate(
      ([url, renderer]) => window.mqttVideo.players.indexOf(window.mqttVideo.addPlayer({ url, autoplay: true, muted: true, renderer, rendition: "main" })),
      [at.fx.rtsp.url, renderer],
    );
    assert.equal(index, 1);
    try {
      const s1 = await waitPlayerState(g.page, 1, "playing", 15_000, (s) => s.firstFrameMs !== null);
      const p0before = await playerSnapshot(g.page, 0);
      // Two seconds of its media played within five, and pictures shown meanwhile: at least MIN_FPS_TWO a
      // second each, "moving" (WebKitGTK composites in software here: its web process takes 80 % of a core for
      // one 360p video and 120 % for two, which then show 8-22 frames a second each; the pace is printed).
      const s2 = await until("the late player to play 2 s of media", async () => {
        const s = await playerSnapshot(g.page, 1);
        if (s.state === "error") throw Object.assign(new Error(`the late player failed: ${JSON.stringify(s.errors)}`), { fatal: true });
        return s.currentTime >= s1.currentTime + 2 ? s : false;
      }, { timeoutMs: 5000 });
      const p0 = await playerSnapshot(g.page, 0);
      const wallS = (s2.at - s1.at) / 1000;
      const fps = [(s2.shownFrames - s1.shownFrames) / wallS, (p0.shownFrames - p0before.shownFrames) / ((p0.at - p0before.at) / 1000)];
      assert.equal(s2.state, "playing");
      assert.deepEqual(s2.errors, []);
      assert.equal(s2.renderer, expected);
      assert.ok(fps[0] >= MIN_FPS_TWO, `the late player showed ${fps[0].toFixed(1)} frames a second`);
      assert.equal(s2.skippedFragments, 0, "no fragment lost in the hand-over from the join burst to the stream topic");
      assert.notEqual(s2.replyTopic, p0.replyTopic, "each player has its own reply topic");
      assert.equal(p0.state, "playing", "the first player plays on");
      assert.ok(fps[1] >= MIN_FPS_TWO, `the first player showed ${fps[1].toFixed(1)} frames a second meanwhile`);
      assert.ok(s2.latencyMs !== null && s2.latencyMs < MAX_LATENCY_MS, `late player latency ${s2.latencyMs} ms`);
      g.fig.lateFirstFrameMs = s2.firstFrameMs;
      console.log(
        `${label}: late player's first frame ${s2.firstFrameMs} ms after play(), latency then ${s2.latencyMs} ms, ${fps[0].toFixed(1)} frames shown a second; ` +
          `the first player meanwhile ${p0.latencyMs} ms, ${fps[1].toFixed(1)} frames a second`,
      );
    } finally {
      // The Remove button, whatever happened: the cases after this one have one player.
      await g.page.click(".player:nth-of-type(2) .remove");
    }
    assert.equal(await g.page.evaluate(() => window.mqttVideo.players.length), 1, "the Remove button removed it");
    assert.deepEqual(await pageErrors(g.page), []);
  });

  pageCase("a switch to the low rendition and back", 60_000, async () => {
    const before = await playerStats(g.page);
    assert.deepEqual(before.renditions, ["main", "low"], "the describe reply offers main and low");
    const switchTo = async (name, height) => {
      const askedAt = Date.now();
      assert.equal(await g.page.evaluate((n) => window.mqttVideo.players[0].switchRendition(n), name), true, `a switch to ${name} starts`);
      const on = await waitPlayerState(g.page, 0, "playing", 15_000, (s) => s.rendition === name && s.renditionSwitching === null && s.height === height);
      const tookMs = Date.now() - askedAt;
      const later = await waitFrames(g.page, 0, on, 30, 5000);
      assert.equal(later.rendition, name);
      assert.equal(later.height, height, `${name}'s picture`);
      assert.ok(later.latencyMs !== null && later.latencyMs < MAX_LATENCY_MS, `latency on ${name}: ${later.latencyMs} ms`);
      return { tookMs, s: later };
    };
    const low = await switchTo("low", LOW_HEIGHT);
    const main = await switchTo("main", MAIN_HEIGHT);
    assert.equal(main.s.renditionSwitches, before.renditionSwitches + 2, "two switches");
    assert.equal(main.s.renditionSwitchFailures, 0);
    assert.deepEqual(main.s.errors, []);
    assert.equal(main.s.replyTopic, before.replyTopic, "the same play");
    assert.deepEqual(await pageErrors(g.page), []);
    g.fig.toLowMs = low.tookMs;
    g.fig.toMainMs = main.tookMs;
    console.log(`${label}: on low (${low.s.width}x${low.s.height}) ${low.tookMs} ms after asking, back on main ${main.tookMs} ms after asking`);
  });

  pageCase("the source dropping and coming back resumes playback", 60_000, async () => {
    // WebKit has no SourceBuffer.changeType: the switch back to main just before rebuilt its MediaSource,
    // and it buffers for a moment (seen in a full run: 48 ms buffered, readyState 1), so wait for playing.
    const before = await waitPlayerState(g.page, 0, "playing", 10_000);
    await at.fx.rtsp.proc.kill("SIGKILL");
    const down = await waitPlayerState(g.page, 0, "reconnecting", 15_000);
    assert.match(down.message, /source dropped/);
    await at.fx.restartSource();
    const backAt = Date.now();
    const resumed = await waitPlayerState(g.page, 0, "playing", 30_000);
    const resumeMs = Date.now() - backAt;
    const later = await until("2 s of media played after the source came back", async () => {
      const s = await playerSnapshot(g.page, 0);
      return s.currentTime >= resumed.currentTime + 2 ? s : false;
    }, { timeoutMs: 5000 });
    const fps = (later.shownFrames - resumed.shownFrames) / ((later.at - resumed.at) / 1000);
    assert.equal(later.state, "playing");
    assert.ok(fps >= MIN_FPS, `${fps.toFixed(1)} frames shown a second after the source came back`);
    assert.deepEqual(later.errors, []);
    assert.equal(later.replyTopic, before.replyTopic, "the same play went on (no new play was needed)");
    assert.ok(later.latencyMs !== null && later.latencyMs < MAX_LATENCY_MS, `latency after the source came back: ${later.latencyMs} ms`);
    assert.deepEqual(await pageErrors(g.page), []);
    g.fig.sourceBackMs = resumeMs;
    console.log(`${label}: source back: playing again ${resumeMs} ms after it came back (resets ${later.resets}, jumps ${later.jumps}), latency then ${later.latencyMs} ms`);
  });

  pageCase("Stop stops the play, at the server too", 30_000, async () => {
    assert.equal(await viewers(at.fx), 1, "one viewer before Stop");
    await g.page.click(".player .stop");
    const stopped = await waitPlayerState(g.page, 0, "stopped", 5000);
    assert.equal(stopped.url, null);
    await until("the server to drop the viewer", async () => (await viewers(at.fx)) === 0, { timeoutMs: 5000 });
    assert.equal((await playerStats(g.page)).state, "stopped", "it stays stopped");
    assert.deepEqual(await pageErrors(g.page), []);
  });
}
