// Behind a reverse proxy, under a sub-path: Debian's nginx serves HTTPS at https://127.0.0.1:PORT/cameras/ and
// forwards to the gateway's plain HTTP (the README's nginx configuration, written out here as the README has
// it). Headless Chromium opens the page there: it derives its WebSocket URL from its own location (wss:, the
// same /cameras/ prefix), is a secure context, and so plays with WebCodecs; the gateway sees each browser by
// the address nginx forwards.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import {
  brokerAndGatewayPorts,
  CHROMIUM_ARGS,
  chromiumPath,
  freePort,
  onCleanup,
  REPO,
  scratch,
  startProcess,
  startServer,
  stopAll,
  waitFor,
  waitPort,
} from "./support.js";

const NGINX = "/usr/sbin/nginx";
const fx = {};

/** The README's nginx `location` block for a sub-path, read from the README so the two cannot drift apart. */
function readmeNginxLocation() {
  const readme = readFileSync(path.join(REPO, "README.md"), "utf8");
  const block = /```nginx\n([\s\S]*?)```/.exec(readme)?.[1];
  if (!block) throw new Error("README.md has no ```nginx block");
  return block;
}

function nginxConfig(dir, port, gatewayPort) {
  // nginx reaches the gateway from 127.0.0.3, the one trusted proxy, so that the browser's own 127.0.0.1 is
  // an ordinary client address, as a LAN browser's is.
  const location = readmeNginxLocation()
    .replaceAll("127.0.0.1:8080", `127.0.0.1:${gatewayPort}`)
    .replace("proxy_http_version 1.1;", "proxy_http_version 1.1;\n    proxy_bind 127.0.0.3;");
  const temp = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
    .map((kind) => `${kind}_temp_path ${path.join(dir, kind)};`)
    .join("\n  ");
  return `
${process.getuid?.() === 0 ? "user root;" : ""}
worker_processes 1;
daemon off;
pid ${path.join(dir, "nginx.pid")};
error_log ${path.join(dir, "error.log")} info;
events { worker_connections 256; }
http {
  access_log ${path.join(dir, "access.log")};
  ${temp}
  map $http_upgrade $connection_upgrade { default upgrade; '' close; }
  server {
    listen 127.0.0.1:${port} ssl;
    ssl_certificate ${path.join(dir, "cert.pem")};
    ssl_certificate_key ${path.join(dir, "key.pem")};
${location}
  }
}
`;
}

before(async () => {
  if (!existsSync(NGINX)) throw new Error(`${NGINX} is missing: bash scripts/setup.sh installs nginx-light`);
  const { mqttPort, httpPort } = await brokerAndGatewayPorts();
  fx.httpPort = httpPort;
  const config = [
    "[broker]",
    `port = ${mqttPort}`,
    `client_id = "mqtt-video-proxy-${process.pid}"`,
    "[gateway]",
    `listen = "127.0.0.1:${httpPort}"`,
    // Each browser behind nginx gets one WebSocket: a second from the same forwarded address is refused.
    "max_connections_per_address = 1",
    'trusted_proxies = ["127.0.0.3"]',
    "[gateway.tls]",
    `state_dir = ${JSON.stringify(path.join(scratch(), "tls-state"))}`,
  ].join("\n");
  fx.server = await startServer(config);
  onCleanup(() => fx.server.kill());

  const dir = path.join(scratch(), "nginx");
  mkdirSync(dir, { recursive: true });
  const made = spawnSync("openssl", ["req", "-x509", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-days", "2",
    "-subj", "/CN=home.example", "-addext", "subjectAltName=DNS:home.example,IP:127.0.0.1",
    "-keyout", path.join(dir, "key.pem"), "-out", path.join(dir, "cert.pem")], { encoding: "utf8" });
  assert.equal(made.status, 0, made.stderr);
  fx.nginxPort = await freePort();
  writeFileSync(path.join(dir, "nginx.conf"), nginxConfig(dir, fx.nginxPort, httpPort));
  const nginx = startProcess("nginx", NGINX, ["-c", path.join(dir, "nginx.conf"), "-p", dir]);
  onCleanup(() => nginx.kill());
  await waitPort(fx.nginxPort).catch((e) => {
    throw new Error(`${e.message}\n${nginx.log()}\n${existsSync(path.join(dir, "error.log")) ? readFileSync(path.join(dir, "error.log"), "utf8") : ""}`);
  });
  fx.nginxLog = () => readFileSync(path.join(dir, "error.log"), "utf8");
  fx.browser = await chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    args: [...CHROMIUM_ARGS, "--ignore-certificate-errors"],
  });
  onCleanup(() => fx.browser.close());
});

after(stopAll);

test("through nginx at https://host/cameras/ the page connects to wss://host/cameras/mqtt and plays with WebCodecs", { timeout: 90_000 }, async () => {
  const base = `https://127.0.0.1:${fx.nginxPort}/cameras/`;
  const page = await fx.browser.newPage();
  const errors = [];
  const sockets = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("websocket", (ws) => sockets.push(ws.url()));
  await page.goto(`${base}?url=${encodeURIComponent("builtin://testsrc")}&autoplay=1&muted=1`);
  const stats = () => page.evaluate(() => window.mqttVideo?.players[0]?.stats() ?? null);
  const playing = await waitFor("the page behind nginx to play", async () => {
    const s = await stats();
    if (s?.state === "error") throw new Error(JSON.stringify(s.errors));
    return s?.state === "playing" && s.decodedFrames > 30 ? s : false;
  }, { timeoutMs: 30_000 }).catch((e) => {
    throw new Error(`${e.message}\nserver:\n${fx.server.log().slice(-2000)}\nnginx:\n${fx.nginxLog().slice(-2000)}`);
  });
  assert.deepEqual(sockets, [`wss://127.0.0.1:${fx.nginxPort}/cameras/mqtt`], "one WebSocket, under the page's own prefix");
  assert.equal(await page.evaluate(() => window.isSecureContext), true);
  assert.equal(playing.renderer, "webcodecs", `WebCodecs over https through the proxy (off: ${playing.webCodecsOff})`);
  assert.deepEqual(errors, [], "no page errors");

  // The gateway counts this browser by the address nginx forwards (nginx's own address is trusted, so it is
  // never limited): a second WebSocket from the browser is refused with 429 at the upgrade.
  const second = await page.evaluate(async (url) => {
    const ws = new WebSocket(url, "mqtt");
    return await new Promise((resolve) => {
      ws.onopen = () => resolve("open");
      ws.onerror = () => resolve("refused");
    });
  }, `wss://127.0.0.1:${fx.nginxPort}/cameras/mqtt`);
  assert.equal(second, "refused", "a second WebSocket from one forwarded client");
  await waitFor("nginx to log the gateway's 429", () => /" 429 /.test(readFileSync(path.join(scratch(), "nginx", "access.log"), "utf8")));
  const later = await stats();
  assert.ok(later.state === "playing" && later.decodedFrames > playing.decodedFrames, "the first plays on");
  console.log(`behind nginx at /cameras/: ${later.renderer}, first frame ${later.firstFrameMs} ms, latency p50 ${later.latencyP50Ms ?? later.latency?.p50 ?? "?"} ms`);
  await page.close();
});
