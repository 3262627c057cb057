// Behind a reverse proxy, under a sub-path: Debian's nginx, then Debian's Caddy (with its internal CA), serve
// HTTPS at https://127.0.0.1:PORT/cameras/ and forward to the gateway's plain HTTP, each with the README's
// configuration read from the README. Headless Chromium opens the page there: it derives its WebSocket URL
// from its own location (wss:, the same /cameras/ prefix), is a secure context, and so plays with WebCodecs;
// the gateway sees each browser by the address the proxy forwards.

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
const CADDY = "/usr/bin/caddy";
const fx = {};

/** The README's block of `language`, read from the README so that the two cannot drift apart. */
function readmeBlock(language) {
  const readme = readFileSync(path.join(REPO, "README.md"), "utf8");
  const block = new RegExp("```" + language + "\\n([\\s\\S]*?)```").exec(readme)?.[1];
  if (!block) throw new Error(`README.md has no \`\`\`${language} block`);
  return block;
}

/** mqtt-video serve behind a proxy: its gateway's port; `gateway` lines go in [gateway]. */
async function startGateway(name, gateway) {
  const { mqttPort, httpPort } = await brokerAndGatewayPorts();
  const config = [
    "[broker]",
    `port = ${mqttPort}`,
    `client_id = "mqtt-video-${name}-${process.pid}"`,
    "[gateway]",
    `listen = "127.0.0.1:${httpPort}"`,
    ...gateway,
    "[gateway.tls]",
    `state_dir = ${JSON.stringify(path.join(scratch(), "tls-state"))}`,
  ].join("\n");
  const server = await startServer(config);
  onCleanup(() => server.kill());
  return { server, httpPort };
}

/** Opens the page at `base` and waits for it to play; returns {page, stats(), playing, sockets, errors}. */
async function playAt(base, logs) {
  const page = await fx.browser.newPage();
  const errors = [];
  const sockets = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("websocket", (ws) => sockets.push(ws.url()));
  await page.goto(`${base}?url=${encodeURIComponent("builtin://testsrc")}&autoplay=1&muted=1`);
  const stats = () => page.evaluate(() => window.mqttVideo?.players[0]?.stats() ?? null);
  const playing = await waitFor("the page behind the proxy to play", async () => {
    const s = await stats();
    if (s?.state === "error") throw new Error(JSON.stringify(s.errors));
    return s?.state === "playing" && s.decodedFrames > 30 ? s : false;
  }, { timeoutMs: 30_000 }).catch((e) => {
    throw new Error(`${e.message}\n${logs()}`);
  });
  assert.equal(await page.evaluate(() => window.isSecureContext), true);
  assert.equal(playing.renderer, "webcodecs", `WebCodecs over https through the proxy (off: ${playing.webCodecsOff})`);
  return { page, stats, playing, sockets, errors };
}

function nginxConfig(dir, port, gatewayPort) {
  // nginx reaches the gateway from 127.0.0.3, the one trusted proxy, so that the browser's own 127.0.0.1 is
  // an ordinary client address, as a LAN browser's is.
  const location = readmeBlock("nginx")
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
  for (const bin of [NGINX, CADDY]) if (!existsSync(bin)) throw new Error(`${bin} is missing: bash scripts/setup.sh installs it`);
  fx.browser = await chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    args: [...CHROMIUM_ARGS, "--ignore-certificate-errors"],
  });
  onCleanup(() => fx.browser.close());
});

after(stopAll);

test("through nginx at https://host/cameras/ the page connects to wss://host/cameras/mqtt and plays with WebCodecs", { timeout: 90_000 }, async () => {
  // Each browser behind nginx gets one WebSocket: a second from the same forwarded address is refused.
  const { server, httpPort } = await startGateway("nginx", ["max_connections_per_address = 1", 'trusted_proxies = ["127.0.0.3"]']);
  const dir = path.join(scratch(), "nginx");
  mkdirSync(dir, { recursive: true });
  const made = spawnSync("openssl", ["req", "-x509", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-days", "2",
    "-subj", "/CN=home.example", "-addext", "subjectAltName=DNS:home.example,IP:127.0.0.1",
    "-keyout", path.join(dir, "key.pem"), "-out", path.join(dir, "cert.pem")], { encoding: "utf8" });
  assert.equal(made.status, 0, made.stderr);
  const port = await freePort();
  writeFileSync(path.join(dir, "nginx.conf"), nginxConfig(dir, port, httpPort));
  const nginx = startProcess("nginx", NGINX, ["-c", path.join(dir, "nginx.conf"), "-p", dir]);
  onCleanup(() => nginx.kill());
  const file = (name) => (existsSync(path.join(dir, name)) ? readFileSync(path.join(dir, name), "utf8") : "");
  const logs = () => `server:\n${server.log().slice(-2000)}\nnginx:\n${nginx.log()}${file("error.log").slice(-2000)}`;
  await waitPort(port).catch((e) => {
    throw new Error(`${e.message}\n${logs()}`);
  });

  const { page, stats, playing, sockets, errors } = await playAt(`https://127.0.0.1:${port}/cameras/`, logs);
  assert.deepEqual(sockets, [`wss://127.0.0.1:${port}/cameras/mqtt`], "one WebSocket, under the page's own prefix");
  // The gateway counts this browser by the address nginx forwards (nginx's own address is trusted, so it is
  // never limited): a second WebSocket from the browser is refused with 429 at the upgrade.
  const second = await page.evaluate(async (url) => {
    const ws = new WebSocket(url, "mqtt");
    return await new Promise((resolve) => {
      ws.onopen = () => resolve("open");
      ws.onerror = () => resolve("refused");
    });
  }, `wss://127.0.0.1:${port}/cameras/mqtt`);
  assert.equal(second, "refused", "a second WebSocket from one forwarded client");
  await waitFor("nginx to log the gateway's 429", () => /" 429 /.test(file("access.log")));
  const later = await waitFor("the first WebSocket's page to play on", async () => {
    const s = await stats();
    return s.state === "playing" && s.decodedFrames > playing.decodedFrames + 30 ? s : false;
  }, { timeoutMs: 5_000 });
  assert.deepEqual(errors, [], "no page errors");
  console.log(`behind nginx at /cameras/: ${later.renderer}, first frame ${later.firstFrameMs} ms`);
  await page.close();
});

test("through Caddy (its internal CA) at https://host/cameras/ the page plays with WebCodecs", { timeout: 90_000 }, async () => {
  const { server, httpPort } = await startGateway("caddy", []);
  const dir = path.join(scratch(), "caddy");
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const site = readmeBlock("caddy").replaceAll("127.0.0.1:8080", `127.0.0.1:${httpPort}`).replace("home.example", `https://127.0.0.1:${port}`);
  // admin off: no fixed admin port; skip_install_trust: the internal CA stays out of the system's store.
  const caddyfile = `{\n\tadmin off\n\tskip_install_trust\n\tauto_https disable_redirects\n}\n${site}`;
  writeFileSync(path.join(dir, "Caddyfile"), caddyfile);
  const caddy = startProcess("caddy", CADDY, ["run", "--config", path.join(dir, "Caddyfile"), "--adapter", "caddyfile"], {
    env: { ...process.env, XDG_DATA_HOME: path.join(dir, "data"), XDG_CONFIG_HOME: path.join(dir, "config"), HOME: dir },
  });
  onCleanup(() => caddy.kill());
  const logs = () => `server:\n${server.log().slice(-2000)}\ncaddy:\n${caddy.log().slice(-3000)}`;
  await waitPort(port, 20_000).catch((e) => {
    throw new Error(`${e.message}\n${logs()}`);
  });
  const { page, playing, sockets, errors } = await playAt(`https://127.0.0.1:${port}/cameras/`, logs);
  assert.deepEqual(sockets, [`wss://127.0.0.1:${port}/cameras/mqtt`], "one WebSocket, under the page's own prefix");
  assert.deepEqual(errors, [], "no page errors");
  console.log(`behind Caddy at /cameras/: ${playing.renderer}, first frame ${playing.firstFrameMs} ms`);
  await page.close();
});
