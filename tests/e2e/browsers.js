// Three browser engines behind one small interface, for the cases that must hold in each (engines.test.js):
//
//   const browser = await launchBrowser("firefox");          // "chromium" | "firefox" | "webkit"
//   const page = await browser.newPage({ width: 390, height: 844 });
//   await page.goto("https://127.0.0.1:8080/?url=...");
//   await page.evaluate((i) => window.mqttVideo.players[i].stats(), 0);   // JSON back
//   await page.errors();                                      // page errors and console errors since the last call
//   await page.click(".player .stop"); await page.fill("#login-user", "viewer");
//   await page.screenshot(".player .screen");                 // an element's picture: {width, height, channels, pixels}
//   await page.close(); await browser.close();
//   browser.pids();                                           // the browser's own processes (roots), for processTree()
//
// All from Debian 12 packages, nothing downloaded:
//   chromium     /usr/bin/chromium (package chromium) through playwright-core, headless, over CDP;
//   firefox      /usr/bin/firefox-esr (package firefox-esr) through puppeteer-core over WebDriver BiDi, headless;
//   webkit       WebKitGTK's MiniBrowser (package libwebkit2gtk-4.1-0) through WebKitWebDriver (package
//                webkit2gtk-driver), W3C WebDriver classic over HTTP, on an Xvfb display of its own (package xvfb).
//
// Every session accepts the gateway's self-signed certificate (Chromium: ignoreHTTPSErrors; Firefox and WebKit:
// the acceptInsecureCerts capability), so an https:// origin works as well as http://.
//
// What differs, and why:
// - WebKit: WebDriver classic has no preload script and no log events, and MiniBrowser's automation view does
//   not write console messages anywhere (its --enable-write-console-messages-to-stdout applies to the default
//   view only). So errors() in WebKit sees what happens after the page's load event: goto() installs listeners
//   for `error`, `unhandledrejection` and console.error then. (A page whose scripts fail while loading has no
//   window.mqttVideo, which every case waits for.) The other two report from the first byte.
// - WebKit: one page at a time (a WebDriver session each, one MiniBrowser window). MiniBrowser's toolbar keeps
//   its window at least 447 px wide, so the driver gives MiniBrowser's own GTK widgets (not the page: WebKit
//   draws web content itself) a style sheet that lets them shrink, and sizes the window so that the page's
//   viewport is the one asked for (checked, or newPage throws).
// - Playwright-only features (page.routeWebSocket) are not offered here: cases that need them stay in
//   player-cases.js, Chromium only.

import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import puppeteer from "puppeteer-core";
import { decodePng } from "./png.js";
import { CHROMIUM_ARGS, chromiumPath, freePort, scratch, startProcess, waitFor } from "./support.js";

export const ENGINES = ["chromium", "firefox", "webkit"];

/** The executables each engine needs, with the Debian package that has it. */
export function engineExecutables(engine) {
  switch (engine) {
    case "chromium":
      return [[chromiumPath(), "chromium"]];
    case "firefox":
      return [[process.env.FIREFOX || "/usr/bin/firefox-esr", "firefox-esr"]];
    case "webkit":
      return [
        [process.env.WEBKIT_WEBDRIVER || "/usr/bin/WebKitWebDriver", "webkit2gtk-driver"],
        [miniBrowserPath(), "libwebkit2gtk-4.1-0"],
        ["/usr/bin/Xvfb", "xvfb"],
      ];
    default:
      throw new Error(`unknown engine ${engine}: one of ${ENGINES.join(", ")}`);
  }
}

/** WebKitGTK's MiniBrowser (`dpkg -L libwebkit2gtk-4.1-0 | grep MiniBrowser`), or $MINIBROWSER. */
export function miniBrowserPath() {
  if (process.env.MINIBROWSER) return process.env.MINIBROWSER;
  const multiarch = { x64: "x86_64-linux-gnu", arm64: "aarch64-linux-gnu" }[process.arch] ?? "x86_64-linux-gnu";
  return `/usr/lib/${multiarch}/webkit2gtk-4.1/MiniBrowser`;
}

/** The first executable of `engine` that is missing, as "PATH (apt-get install PACKAGE)", or null. */
export function missingExecutable(engine) {
  const missing = engineExecutables(engine).find(([file]) => !existsSync(file));
  return missing ? `${missing[0]} is missing (apt-get install -y ${missing[1]})` : null;
}

/** Starts `engine`. Resolves to a Browser: {engine, version, newPage({width, height}), close()}. */
export async function launchBrowser(engine) {
  const missing = missingExecutable(engine);
  if (missing) throw new Error(missing);
  if (engine === "chromium") return launchChromium();
  if (engine === "firefox") return launchFirefox();
  return launchWebKit();
}

/** The pids whose parent is `parent` (from /proc/<pid>/stat). */
export function childPids(parent = process.pid) {
  return allStats().filter((s) => s.ppid === parent).map((s) => s.pid);
}

/** `roots` and every descendant of theirs alive now. */
export function processTree(roots) {
  const stats = allStats();
  const tree = new Set(roots);
  // Parents before children is not guaranteed by pid order (pids wrap): repeat until nothing is added.
  for (let grew = true; grew; ) {
    grew = false;
    for (const s of stats) {
      if (!tree.has(s.pid) && tree.has(s.ppid)) {
        tree.add(s.pid);
        grew = true;
      }
    }
  }
  return [...tree];
}

/**
 * CPU time (s) of `pids` so far: user + system, with their reaped children's (cutime, cstime: a renderer or
 * decoder process that exits inside a window is still counted, in its parent's figure).
 */
export function cpuSeconds(pids) {
  let ticks = 0;
  for (const pid of pids) {
    const s = readStat(pid);
    if (s) ticks += s.utime + s.stime + s.cutime + s.cstime;
  }
  return ticks / CLOCK_TICKS;
}

/** sysconf(_SC_CLK_TCK): 100 on every Linux this runs on (not readable from Node itself). */
const CLOCK_TICKS = 100;

function readStat(pid) {
  let text;
  try {
    text = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return null; // gone meanwhile
  }
  // The command name is in parentheses and may hold spaces or parentheses: the fields follow the last ")".
  const f = text.slice(text.lastIndexOf(")") + 2).split(" ");
  return { pid, ppid: Number(f[1]), utime: Number(f[11]), stime: Number(f[12]), cutime: Number(f[13]), cstime: Number(f[14]) };
}

function allStats() {
  return readdirSync("/proc").filter((d) => /^\d+$/.test(d)).map((d) => readStat(Number(d))).filter(Boolean);
}

/** Marks an error that says the page or its browser is gone (crashed, closed) as `fatal`: no use waiting on. */
function fatalIfGone(e) {
  if (/invalid session id|page crash|script timeout|aborted due to timeout|Target crashed|Target closed|Session closed|has been closed|browser has disconnected|No target with given id/i.test(e?.message ?? "")) {
    e.fatal = true;
  }
  throw e;
}

/** The part of a decoded picture under `rect` (CSS pixels, times rect.scale), clipped to the picture. */
function crop(image, rect) {
  const x0 = Math.max(0, Math.round(rect.x * rect.scale));
  const y0 = Math.max(0, Math.round(rect.y * rect.scale));
  const x1 = Math.min(image.width, Math.round((rect.x + rect.width) * rect.scale));
  const y1 = Math.min(image.height, Math.round((rect.y + rect.height) * rect.scale));
  if (x1 <= x0 || y1 <= y0) throw new Error(`the element (${JSON.stringify(rect)}) is outside the ${image.width}x${image.height} viewport`);
  const { channels } = image;
  const width = x1 - x0;
  const pixels = new Uint8Array(width * (y1 - y0) * channels);
  for (let y = y0; y < y1; y++) {
    pixels.set(image.pixels.subarray((y * image.width + x0) * channels, (y * image.width + x1) * channels), (y - y0) * width * channels);
  }
  return { width, height: y1 - y0, channels, pixels };
}

/** The script that turns a function's source and one argument into a call (WebDriver has no function values). */
const call = (fn) => `(${typeof fn === "function" ? fn.toString() : `() => (${fn})`})`;

// ----- Chromium: playwright-core over CDP ------------------------------------------------------------------

async function launchChromium() {
  // playwright's Browser does not say its process: the child of this process that the launch added.
  const before = new Set(childPids());
  const browser = await chromium.launch({ executablePath: chromiumPath(), headless: true, args: CHROMIUM_ARGS });
  const roots = childPids().filter((pid) => !before.has(pid));
  return {
    engine: "chromium",
    version: `Chromium ${browser.version()}`,
    pids: () => roots,
    async newPage({ width = 1280, height = 900 } = {}) {
      // A context each: its own storage, as a fresh profile (the login cases look at localStorage).
      const context = await browser.newContext({ viewport: { width, height }, ignoreHTTPSErrors: true });
      const page = await context.newPage();
      const errors = [];
      page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
      page.on("console", (m) => {
        if (m.type() === "error") errors.push(`console: ${m.text()}`);
      });
      return {
        goto: (url) => page.goto(url).then(() => undefined),
        evaluate: (fn, arg) => page.evaluate(fn, arg).catch(fatalIfGone),
        errors: async () => errors.splice(0),
        click: (selector) => page.click(selector),
        fill: (selector, text) => page.fill(selector, text),
        screenshot: async (selector) => decodePng(await page.locator(selector).first().screenshot()),
        close: () => context.close(),
      };
    },
    close: () => browser.close(),
  };
}

// ----- Firefox: puppeteer-core over WebDriver BiDi ---------------------------------------------------------

async function launchFirefox() {
  const browser = await puppeteer.launch({
    browser: "firefox",
    protocol: "webDriverBiDi",
    executablePath: engineExecutables("firefox")[0][0],
    headless: true,
    acceptInsecureCerts: true,
    extraPrefsFirefox: {
      // As Chromium's --autoplay-policy=no-user-gesture-required: the page starts muted video and its audio
      // output (WebCodecs) without a click.
      "media.autoplay.default": 0,
      "media.autoplay.blocking_policy": 0,
    },
  });
  const version = await browser.version();
  return {
    engine: "firefox",
    version: version.replace(/^firefox\//i, "Firefox "),
    pids: () => [browser.process().pid],
    async newPage({ width = 1280, height = 900 } = {}) {
      const context = await browser.createBrowserContext();
      const page = await context.newPage();
      await page.setViewport({ width, height });
      const errors = [];
      page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
      page.on("console", (m) => {
        if (m.type() === "error") errors.push(`console: ${m.text()}`);
      });
      return {
        goto: (url) => page.goto(url).then(() => undefined),
        evaluate: (fn, arg) => page.evaluate(fn, arg).catch(fatalIfGone),
        errors: async () => errors.splice(0),
        click: (selector) => page.click(selector),
        async fill(selector, text) {
          await page.$eval(selector, (el) => {
            el.value = "";
          });
          await page.type(selector, text);
        },
        async screenshot(selector) {
          const el = await page.$(selector);
          if (!el) throw new Error(`no ${selector} to take a picture of`);
          return decodePng(Buffer.from(await el.screenshot()));
        },
        close: () => context.close(),
      };
    },
    close: () => browser.close(),
  };
}

// ----- WebKitGTK: WebKitWebDriver, W3C WebDriver classic over HTTP ------------------------------------------
//
// The client is the dozen endpoints these cases use, over fetch(): WebKitWebDriver speaks only WebDriver classic
// (a BiDi session request, `webSocketUrl: true`, never completes with 2.50), and for that a package
// (selenium-webdriver, webdriverio) would bring more code, and its own driver management, than it saves.

/** MiniBrowser's GTK widgets (toolbar, URL field, buttons) may shrink: the window can be a phone's width. */
const GTK_CSS = "entry, button, toolbar, toolitem, box, label, image, headerbar, progressbar { min-width: 0; padding: 0; margin: 0; border-width: 0; font-size: 1px; }\n";

/** Xvfb's screen: room for a 1280x900 viewport and MiniBrowser's toolbar. */
const SCREEN = { width: 1920, height: 1200 };

/** Xvfb on a display it picks itself (-displayfd). Resolves to the display number. */
async function startXvfb() {
  const proc = startProcess("Xvfb", "/usr/bin/Xvfb", ["-displayfd", "3", "-screen", "0", `${SCREEN.width}x${SCREEN.height}x24`, "-nolisten", "tcp", "-noreset"], {
    stdio: ["ignore", "pipe", "pipe", "pipe"],
  });
  let display = "";
  proc.child.stdio[3].on("data", (d) => {
    display += d;
  });
  await waitFor("Xvfb to name its display", () => /^\d+\n/.test(display) || proc.child.exitCode !== null, { timeoutMs: 10_000, everyMs: 20 });
  if (proc.child.exitCode !== null) throw new Error(`Xvfb exited: ${proc.log()}`);
  return { display: `:${display.trim()}`, proc };
}

async function launchWebKit() {
  const xvfb = await startXvfb();
  const display = xvfb.display;
  const home = path.join(scratch(), `webkit-${process.pid}`);
  mkdirSync(path.join(home, "gtk-3.0"), { recursive: true });
  writeFileSync(path.join(home, "gtk-3.0", "gtk.css"), GTK_CSS);
  // MiniBrowser through a wrapper that keeps its output (WebKitWebDriver drops it): a crash says why there.
  const browserLog = path.join(home, "MiniBrowser.log");
  const wrapper = path.join(home, "MiniBrowser.sh");
  writeFileSync(wrapper, `#!/bin/sh\nexec ${JSON.stringify(miniBrowserPath())} "$@" >>${JSON.stringify(browserLog)} 2>&1\n`, { mode: 0o755 });
  const port = await freePort();
  const driver = startProcess("WebKitWebDriver", engineExecutables("webkit")[0][0], [`--port=${port}`], {
    env: { ...process.env, DISPLAY: display, XDG_CONFIG_HOME: home },
  });
  const sessions = new Set(); // the close() of each open page
  const base = `http://127.0.0.1:${port}`;

  /** One WebDriver command; resolves to its `value`, throws its error. */
  async function command(method, route, body) {
    let res;
    try {
      res = await fetch(base + route, {
        method,
        headers: { "content-type": "application/json; charset=utf-8" },
        body: body === undefined ? undefined : JSON.stringify(body),
        // (above the session's own timeouts: a driver that never answers is gone)
        signal: AbortSignal.timeout(60_000),
      });
    } catch (e) {
      fatalIfGone(new Error(`WebKitWebDriver ${method} ${route}: ${e.cause?.message ?? e.message}\n${driver.log().slice(-2000)}`));
    }
    const json = await res.json().catch(() => ({}));
    if (!res.ok || json.value?.error) {
      const v = json.value ?? {};
      fatalIfGone(new Error(`WebKitWebDriver ${method} ${route}: ${v.error ?? res.status}: ${v.message ?? ""}`));
    }
    return json.value;
  }
  await waitFor("WebKitWebDriver to answer", () => fetch(`${base}/status`).then((r) => r.ok, () => false), { timeoutMs: 10_000, everyMs: 50 });

  let version = "WebKitGTK";
  return {
    engine: "webkit",
    get version() {
      return version;
    },
    // WebKitWebDriver starts MiniBrowser (whose web and network processes are its children); Xvfb is counted
    // too: it is where WebKitGTK's windows are drawn, work the headless engines do in their own processes.
    pids: () => [driver.child.pid, xvfb.proc.child.pid],
    /** The end of MiniBrowser's own output (its messages, a crash). */
    log: () => (existsSync(browserLog) ? readFileSync(browserLog, "utf8").slice(-4000) : ""),
    async newPage({ width = 1280, height = 900 } = {}) {
      const created = await command("POST", "/session", {
        capabilities: {
          alwaysMatch: {
            acceptInsecureCerts: true,
            "webkitgtk:browserOptions": { binary: wrapper, args: ["--automation", "--autoplay-policy=allow"] },
          },
        },
      });
      const id = created.sessionId;
      version = `WebKitGTK ${created.capabilities.browserVersion} (MiniBrowser)`;
      const session = `/session/${id}`;
      let closed = false;
      const close = async () => {
        if (closed) return;
        closed = true;
        sessions.delete(close);
        await command("DELETE", session).catch(() => {});
      };
      sessions.add(close);

      const evaluate = async (fn, arg) => {
        const script =
          "const done = arguments[arguments.length - 1];" +
          `Promise.resolve().then(() => ${call(fn)}(arguments[0]))` +
          ".then((v) => done({ ok: v === undefined ? null : v }), (e) => done({ thrown: `${e}\\n${(e && e.stack) || \"\"}` }));";
        const out = await command("POST", `${session}/execute/async`, { script, args: [arg ?? null] });
        if (out && "thrown" in out) throw new Error(`in the page: ${out.thrown}`);
        return out?.ok;
      };
      const element = async (selector) => {
        const found = await command("POST", `${session}/element`, { using: "css selector", value: selector });
        return Object.values(found)[0];
      };

      // The viewport asked for: the window is the viewport plus MiniBrowser's toolbar (measured once a resize
      // has landed, then set again). Centred on the screen: with no window manager the keyboard goes to the
      // window under the pointer, which Xvfb puts in the middle of its screen.
      try {
        // A script that has not answered in 20 s is a page that hangs (the cases' own take milliseconds).
        await command("POST", `${session}/timeouts`, { script: 20_000, pageLoad: 30_000 });
        let asked = null;
        const place = async (w, h) => {
          asked = { w, h };
          await command("POST", `${session}/window/rect`, { x: Math.round((SCREEN.width - w) / 2), y: Math.round((SCREEN.height - h) / 2), width: w, height: h });
        };
        await place(width, height);
        let size = null;
        await waitFor(`MiniBrowser's viewport to be ${width}x${height}`, async () => {
          size = await evaluate(() => ({ w: innerWidth, h: innerHeight, ow: outerWidth, oh: outerHeight }));
          if (size.w === width && size.h === height) return true;
          if (size.ow === asked.w && size.oh === asked.h) await place(width + size.ow - size.w, height + size.oh - size.h);
          return false;
        }, { timeoutMs: 5000, everyMs: 50 }).catch((e) => {
          throw new Error(`${e.message}: it is ${size?.w}x${size?.h} in a ${size?.ow}x${size?.oh} window`);
        });
      } catch (e) {
        await close();
        throw e;
      }

      return {
        async goto(url) {
          await command("POST", `${session}/url`, { url });
          // WebKitWebDriver may answer at readyState "interactive", before the page's module scripts ran: the
          // load event, as the other two wait for. From then on (see the top of this file): errors and
          // console.error, kept in the page.
          await evaluate(async () => {
            if (document.readyState !== "complete") await new Promise((resolve) => addEventListener("load", resolve, { once: true }));
            const kept = (window.__e2eErrors = []);
            addEventListener("error", (e) => kept.push(`pageerror: ${e.message}`));
            addEventListener("unhandledrejection", (e) => kept.push(`pageerror: unhandled rejection: ${e.reason?.message ?? e.reason}`));
            const original = console.error;
            console.error = (...args) => {
              kept.push(`console: ${args.map(String).join(" ")}`);
              original.apply(console, args);
            };
          });
        },
        evaluate,
        errors: () => evaluate(() => (window.__e2eErrors ?? []).splice(0)),
        async click(selector) {
          await command("POST", `${session}/element/${await element(selector)}/click`, {});
        },
        async fill(selector, text) {
          const el = await element(selector);
          // A click first: in a new MiniBrowser window GTK's focus may still be on its URL field, which then
          // takes the first keys.
          await command("POST", `${session}/element/${el}/click`, {});
          const focused = () => evaluate((sel) => document.hasFocus() && document.activeElement === document.querySelector(sel), selector);
          await waitFor(`${selector} to have the keyboard`, focused, { timeoutMs: 5000, everyMs: 20 });
          await command("POST", `${session}/element/${el}/clear`, {});
          await command("POST", `${session}/element/${el}/value`, { text });
        },
        async screenshot(selector) {
          // WebKitGTK's element screenshot leaves composited layers out (a playing <video> comes back black, and
          // so does the page's header): the viewport's screenshot, which has them, cut to the element.
          const rect = await evaluate((sel) => {
            const el = document.querySelector(sel);
            if (!el) return null;
            el.scrollIntoView({ block: "nearest", inline: "nearest" });
            const r = el.getBoundingClientRect();
            return { x: r.left, y: r.top, width: r.width, height: r.height, scale: devicePixelRatio };
          }, selector);
          if (!rect) throw new Error(`no ${selector} to take a picture of`);
          const shot = decodePng(Buffer.from(await command("GET", `${session}/screenshot`), "base64"));
          return crop(shot, rect);
        },
        close,
      };
    },
    async close() {
      for (const close of [...sessions]) await close();
      await driver.kill();
      await xvfb.proc.kill();
    },
  };
}
