// Test support: processes on free loopback ports (mosquitto, the RTSP test source, mqtt-video serve, a static
// file server), bounded waits, and headless Chromium through playwright-core. Everything started here is
// stopped by `stopAll()`, and killed when the test process exits.

import { spawn, spawnSync } from "node:child_process";
import { createReadStream, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { percentile as percentileOfSorted } from "../../client/figures.js";

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const CLIENT_DIR = path.join(REPO, "client");

/** The server binary: $MQTT_VIDEO_BIN, else target/debug/mqtt-video. */
export function serverBinary() {
  return process.env.MQTT_VIDEO_BIN ? path.resolve(process.env.MQTT_VIDEO_BIN) : path.join(REPO, "target/debug/mqtt-video");
}

/** Chromium: $CHROMIUM, else Debian's /usr/bin/chromium. */
export function chromiumPath() {
  return process.env.CHROMIUM || "/usr/bin/chromium";
}

export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--autoplay-policy=no-user-gesture-required",
];

const children = new Set();
const cleanups = [];
let workDir = null;

/** Whether process `pid` still runs (one of another user counts). */
export function processAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code === "EPERM";
  }
}

/** A scratch folder for this run, removed by stopAll(). */
export function scratch() {
  if (!workDir) workDir = mkdtempSync(path.join(tmpdir(), "mqtt-video-e2e-"));
  return workDir;
}

process.on("exit", () => {
  for (const c of children) {
    try {
      c.kill("SIGKILL");
    } catch {}
  }
});

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A free TCP port on 127.0.0.1 (bound, then released). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Polls `check` (sync or async) until it returns a truthy value; throws `what` after `timeoutMs`. */
export async function waitFor(what, check, { timeoutMs = 10_000, everyMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      const detail = last instanceof Error ? `: ${last.message}` : last === undefined ? "" : `: last ${JSON.stringify(last)}`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`);
    }
    await sleep(everyMs);
  }
}

export function waitPort(port, timeoutMs = 10_000) {
  return waitFor(
    `127.0.0.1:${port} to accept connections`,
    () =>
      new Promise((resolve) => {
        const s = net.connect(port, "127.0.0.1");
        s.on("connect", () => {
          s.destroy();
          resolve(true);
        });
        s.on("error", () => resolve(false));
      }),
    { timeoutMs, everyMs: 50 },
  );
}

/**
 * A child process whose output is kept (the last 64 KiB) for failure messages.
 * Returns {child, name, log(), kill(signal), exited: Promise<code>}.
 */
export function startProcess(name, cmd, args, options = {}) {
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], ...options });
  children.add(child);
  let output = "";
  const keep = (chunk) => {
    output += chunk.toString();
    if (output.length > 65536) output = output.slice(-65536);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  const exited = new Promise((resolve) =>
    child.on("exit", (code, signal) => {
      children.delete(child);
      resolve(code ?? signal);
    }),
  );
  child.on("error", (e) => keep(`\n[${name}] spawn error: ${e.message}\n`));
  return {
    child,
    name,
    exited,
    log: () => output,
    async kill(signal = "SIGTERM", graceMs = 3000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill(signal);
      const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
}

/**
 * mosquitto with a TCP listener and, when wsPort is given, its own WebSocket listener. `login` ({passwordFile,
 * aclFile}) turns anonymous clients away and checks users and rights.
 */
export class Mosquitto {
  constructor({ port, wsPort = null, login = null, extra = [] }) {
    this.port = port;
    this.wsPort = wsPort;
    this.conf = path.join(scratch(), `mosquitto-${port}.conf`);
    const access = login
      ? ["allow_anonymous false", `password_file ${login.passwordFile}`, `acl_file ${login.aclFile}`]
      : ["allow_anonymous true"];
    const lines = [
      "per_listener_settings false",
      ...access,
      "persistence false",
      // Without it a small message (a status, a reply) waits behind unacknowledged bytes for up to 40 ms.
      "set_tcp_nodelay true",
      "log_dest stderr",
      "log_type error",
      "log_type warning",
      ...extra,
      `listener ${port} 127.0.0.1`,
      "protocol mqtt",
    ];
    if (wsPort) lines.push(`listener ${wsPort} 127.0.0.1`, "protocol websockets");
    writeFileSync(this.conf, `${lines.join("\n")}\n`);
    this.proc = null;
  }

  async start() {
    this.proc = startProcess("mosquitto", "mosquitto", ["-c", this.conf]);
    await waitPort(this.port);
    if (this.wsPort) await waitPort(this.wsPort);
  }

  /** SIGKILL, as a crash would: no last wills are published. */
  async kill() {
    await this.proc?.kill("SIGKILL");
  }

  async stop() {
    await this.proc?.kill("SIGTERM");
  }
}

/** tests/support/rtsp_server.py: a live GStreamer RTSP source (port 0: a free one). Resolves with {url, proc}. */
export async function startRtspSource(extraArgs = [], port = 0) {
  const script = path.join(REPO, "tests/support/rtsp_server.py");
  const proc = startProcess("rtsp_server", "/usr/bin/python3", [script, "--port", String(port), ...extraArgs]);
  const url = await waitFor("the RTSP source's READY line", () => /READY (rtsp:\/\/\S+)/.exec(proc.log())?.[1], {
    timeoutMs: 15_000,
    everyMs: 50,
  }).catch((e) => {
    throw new Error(`${e.message}\n${proc.log()}`);
  });
  return { url, proc };
}

/**
 * The config of a server whose gateway serves client/ at `host`:`httpPort`, on the broker at `mqttPort`, allowing
 * `urls`, in pipeline mode `mode`; `extra` lines (whole tables) go at the end.
 */
export function gatewayConfig({ mqttPort, httpPort, host = "127.0.0.1", name, urls, mode = "auto", broker = [], extra = [] }) {
  return [
    "[broker]",
    `port = ${mqttPort}`,
    `client_id = "mqtt-video-${name}-${process.pid}"`,
    ...broker,
    "[gateway]",
    `listen = "${host}:${httpPort}"`,
    `client_dir = ${JSON.stringify(CLIENT_DIR)}`,
    "[pipeline]",
    `mode = ${JSON.stringify(mode)}`,
    "[allow]",
    `urls = [${urls.map((u) => JSON.stringify(u)).join(", ")}]`,
    ...extra,
  ].join("\n");
}

/**
 * A mosquitto on a free port, stopped at cleanup, and a free port for the server's gateway: what every test of
 * one server behind the gateway starts with. Returns {mqttPort, httpPort}.
 */
export async function brokerAndGatewayPorts() {
  const mqttPort = await freePort();
  const httpPort = await freePort();
  const broker = new Mosquitto({ port: mqttPort });
  await broker.start();
  onCleanup(() => broker.stop());
  return { mqttPort, httpPort };
}

/**
 * mqtt-video serve with a generated config. Resolves once it is connected to the broker. `bin` and `cwd`
 * (default: the built binary, run in the checkout) let a test run a copy of the binary somewhere else.
 */
export async function startServer(configText, { bin = serverBinary(), cwd = REPO, configDir = scratch() } = {}) {
  const file = path.join(configDir, `serve-${Date.now()}.toml`);
  writeFileSync(file, configText);
  if (!existsSync(bin)) throw new Error(`${bin} is missing: run \`cargo build\` first`);
  const proc = startProcess("mqtt-video", bin, ["serve", "--config", file], {
    cwd,
    env: { ...process.env, NO_COLOR: "1" },
  });
  await waitFor("mqtt-video serve to connect to the broker", () => {
    if (proc.child.exitCode !== null) throw new Error(`mqtt-video serve exited:\n${proc.log()}`);
    return /connected to the broker/.test(proc.log());
  }, { timeoutMs: 15_000 });
  return proc;
}

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".map": "application/json",
  ".png": "image/png",
  ".svg": "image/svg+xml",
};

/** A static file server for client/ (used only when pages talk to mosquitto's own WebSocket listener). */
export function startStaticServer(root, port) {
  const server = http.createServer((req, res) => {
    let rel = decodeURIComponent(new URL(req.url, "http://x").pathname);
    if (rel.endsWith("/")) rel += "index.html";
    const file = path.join(root, path.normalize(rel));
    if (!file.startsWith(root + path.sep) || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404).end("not found");
      return;
    }
    res.writeHead(200, { "content-type": TYPES[path.extname(file)] ?? "application/octet-stream" });
    createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(port, "127.0.0.1", () => resolve(server)));
}

export function onCleanup(fn) {
  cleanups.push(fn);
}

/** Runs the cleanups (last first), kills what is left, removes the scratch folder. */
export async function stopAll() {
  while (cleanups.length) {
    try {
      await cleanups.pop()();
    } catch {}
  }
  for (const c of children) {
    try {
      c.kill("SIGKILL");
    } catch {}
  }
  if (workDir && !process.env.E2E_KEEP) rmSync(workDir, { recursive: true, force: true });
  workDir = null;
}

/** p-th percentile (nearest rank) of numbers in any order (non-finite ones left out). */
export function percentile(values, p) {
  return percentileOfSorted(values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b), p);
}

/**
 * What `mqtt-video probe builtin://testsrc --seconds N --out DIR` writes: {stdout, init, fragments} (bytes, in
 * order), or null when the binary is not built. Throws when the probe fails.
 */
export function probeOutput(seconds) {
  const bin = serverBinary();
  if (!existsSync(bin)) return null;
  const dir = mkdtempSync(path.join(tmpdir(), "mqtt-video-probe-"));
  try {
    const run = spawnSync(bin, ["probe", "builtin://testsrc", "--seconds", String(seconds), "--out", dir], {
      cwd: REPO,
      encoding: "utf8",
      timeout: 50_000,
    });
    if (run.status !== 0) throw new Error(`probe failed: ${run.stderr}`);
    const files = readdirSync(dir).sort();
    const read = (f) => new Uint8Array(readFileSync(path.join(dir, f)));
    const init = read(files.find((f) => f.startsWith("init")));
    return { stdout: run.stdout, init, fragments: files.filter((f) => f.endsWith(".m4s")).map(read) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
