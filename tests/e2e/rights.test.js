// A person logs in through the page: mosquitto with a password file and docker/rights/mosquitto.acl (alice
// may watch "Test pattern", bob "Test pattern 720p"), mqtt-video with topics.guarded, headless Chromium. A wrong
// password is a clear message and no reconnect loop; alice's login plays her camera and is told she may not
// watch bob's; nothing of the login reaches the URL or the browser's storage unless "remember me" is ticked.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmodSync, copyFileSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { CHROMIUM_ARGS, chromiumPath, CLIENT_DIR, freePort, Mosquitto, onCleanup, REPO, scratch, startServer, stopAll, waitFor } from "./support.js";

const fx = {};
const SERVER_PASSWORD = "server-pw";

before(async () => {
  const dir = scratch();
  const passwordFile = path.join(dir, `passwd-${process.pid}`);
  execFileSync("mosquitto_passwd", ["-c", "-b", passwordFile, "mqtt-video", SERVER_PASSWORD]);
  execFileSync("mosquitto_passwd", ["-b", passwordFile, "alice", "alice-pw"]);
  execFileSync("mosquitto_passwd", ["-b", passwordFile, "bob", "bob-pw"]);
  const aclFile = path.join(dir, `acl-${process.pid}`);
  copyFileSync(path.join(REPO, "docker/rights/mosquitto.acl"), aclFile);
  // mosquitto started as root reads its files as the mosquitto user.
  chmodSync(dir, 0o755);
  chmodSync(passwordFile, 0o644);
  chmodSync(aclFile, 0o644);
  fx.mqttPort = await freePort();
  fx.httpPort = await freePort();
  fx.broker = new Mosquitto({ port: fx.mqttPort, login: { passwordFile, aclFile } });
  await fx.broker.start();
  onCleanup(() => fx.broker.stop());
  const config = [
    "[broker]",
    `port = ${fx.mqttPort}`,
    `client_id = "mqtt-video-rights-${process.pid}"`,
    'username = "mqtt-video"',
    `password = "${SERVER_PASSWORD}"`,
    "[gateway]",
    `listen = "127.0.0.1:${fx.httpPort}"`,
    `client_dir = "${CLIENT_DIR}"`,
    "[topics]",
    'reply_prefix = "pages/"',
    "guarded = true",
    "[[sources]]",
    'name = "Test pattern"',
    'url = "builtin://testsrc"',
    "[[sources]]",
    'name = "Test pattern 720p"',
    'url = "builtin://testsrc-720p"',
    "",
  ].join("\n");
  fx.server = await startServer(config);
  onCleanup(() => fx.server.kill());
  fx.browser = await chromium.launch({ executablePath: chromiumPath(), headless: true, args: CHROMIUM_ARGS });
  onCleanup(() => fx.browser.close());
});

after(stopAll);

const stats = (page) => page.evaluate(() => window.mqttVideo?.players[0]?.stats() ?? null);

async function logIn(page, username, password, remember = false) {
  await page.fill("#login-user", username);
  await page.fill("#login-password", password);
  if (remember) await page.check("#login-remember");
  await page.click("#login-submit");
}

test("a wrong password is a clear message, not an endless reconnect", { timeout: 60_000 }, async () => {
  const page = await fx.browser.newPage();
  const sockets = [];
  page.on("websocket", (ws) => sockets.push(ws.url()));
  await page.goto(`http://127.0.0.1:${fx.httpPort}/?url=${encodeURIComponent("builtin://testsrc")}&muted=1`);
  await logIn(page, "alice", "not-her-password");
  const pill = await waitFor("the refusal on the page", async () => {
    const t = await page.textContent("#login-state");
    return /refused/.test(t) ? t : false;
  }, { timeoutMs: 10_000 });
  assert.match(pill, /wrong user name or password|not authorized/);
  const s = await stats(page);
  assert.equal(s.state, "error");
  const before = sockets.length;
  await new Promise((r) => setTimeout(r, 3000));
  assert.equal(sockets.length, before, `the page kept reconnecting: ${sockets.length - before} more connections`);
  for (const url of sockets) assert.ok(!url.includes("not-her-password") && !url.includes("alice"), `credentials in ${url}`);
  assert.equal(await page.evaluate(() => localStorage.length), 0, "nothing stored without remember me");
  await page.close();
});

test("alice logs in, plays her camera, and is told she may not watch bob's", { timeout: 90_000 }, async () => {
  const page = await fx.browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`http://127.0.0.1:${fx.httpPort}/?muted=1`);
  await logIn(page, "alice", "alice-pw", true);
  await waitFor("logged in", async () => /logged in as alice/.test(await page.textContent("#login-state")), { timeoutMs: 10_000 });
  assert.ok(!page.url().includes("alice-pw"), "the password is not in the URL");
  const kept = await page.evaluate(() => localStorage.getItem("mqtt-video.login"));
  assert.deepEqual(JSON.parse(kept), { username: "alice", password: "alice-pw" }, "remember me keeps the login");

  // The list offers what this login may watch, and only that.
  const offered = await waitFor("her sources", async () => {
    const names = await page.$$eval(".player .source option", (os) => os.map((o) => o.textContent));
    return names.includes("Test pattern") ? names : false;
  }, { timeoutMs: 10_000 });
  assert.ok(!offered.includes("Test pattern 720p"), `bob's camera is offered to alice: ${offered}`);

  await page.evaluate(() => window.mqttVideo.players[0].play("builtin://testsrc"));
  const playing = await waitFor("her camera to play", async () => {
    const s = await stats(page);
    if (s?.state === "error") throw new Error(`${s.message} ${JSON.stringify(s.errors)}`);
    return s?.state === "playing" && s.decodedFrames > 10 ? s : false;
  }, { timeoutMs: 30_000, everyMs: 200 });
  assert.equal(playing.protocol, 2, "guarded delivery is protocol 2");

  await page.evaluate(() => window.mqttVideo.players[0].play("builtin://testsrc-720p"));
  const refused = await waitFor("bob's camera refused", async () => {
    const s = await stats(page);
    if (s?.state === "playing") throw new Error("alice plays bob's camera");
    return s?.state === "error" ? s : false;
  }, { timeoutMs: 20_000, everyMs: 200 });
  assert.match(refused.message, /may not watch/);
  assert.deepEqual(errors, []);

  // A reload logs in again from the remembered login, without the form.
  await page.reload();
  await waitFor("logged in again", async () => /logged in as alice/.test(await page.textContent("#login-state")), { timeoutMs: 10_000 });
  await page.close();
});
