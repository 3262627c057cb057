// A person logs in through the page, on each broker that can say who may watch which camera:
// - mosquitto with a password file and docker/rights/mosquitto.acl;
// - RabbitMQ 3.10's MQTT plugin with docker/rights/rabbitmq.json (its topic permissions), the users created as
//   an administrator would before importing it. RabbitMQ closes a connection whose subscription it refuses
//   (mosquitto accepts it and delivers nothing), so there the page cannot list the entries of the sources it may
//   watch (`video/live/+/source`): it must say so, stop asking, and still play a URL.
// alice may watch "Test pattern", bob "Test pattern 720p"; mqtt-video runs with topics.guarded, the page in
// headless Chromium. A wrong password is a clear message and no reconnect loop; alice's login plays her camera
// and is told she may not watch bob's; nothing of the login reaches the URL or the browser's storage unless
// "remember me" is ticked.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmodSync, copyFileSync, readFileSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { RabbitMQ, rightsDefinitions } from "./rabbitmq.js";
import { CHROMIUM_ARGS, chromiumPath, CLIENT_DIR, freePort, Mosquitto, onCleanup, REPO, scratch, startServer, stopAll, waitFor } from "./support.js";

const SERVER_PASSWORD = "server-pw";
const USERS = [["mqtt-video", SERVER_PASSWORD], ["alice", "alice-pw"], ["bob", "bob-pw"]];

/** mosquitto with a real password file and docker/rights/mosquitto.acl. */
async function mosquitto(port) {
  const dir = scratch();
  const passwordFile = path.join(dir, `passwd-${process.pid}`);
  USERS.forEach(([user, password], i) => execFileSync("mosquitto_passwd", [...(i === 0 ? ["-c"] : []), "-b", passwordFile, user, password]));
  const aclFile = path.join(dir, `acl-${process.pid}`);
  copyFileSync(path.join(REPO, "docker/rights/mosquitto.acl"), aclFile);
  // mosquitto started as root reads its files as the mosquitto user.
  chmodSync(dir, 0o755);
  chmodSync(passwordFile, 0o644);
  chmodSync(aclFile, 0o644);
  const broker = new Mosquitto({ port, login: { passwordFile, aclFile } });
  await broker.start();
  return broker;
}

/** RabbitMQ with docker/rights/rabbitmq.json and the users. */
async function rabbitmq(port) {
  const rights = JSON.parse(readFileSync(path.join(REPO, "docker/rights/rabbitmq.json"), "utf8"));
  const broker = new RabbitMQ({ port, definitions: rightsDefinitions(rights, USERS) });
  await broker.start();
  return broker;
}

const BROKERS = { mosquitto, rabbitmq };

async function setUp(fx, kind) {
  fx.kind = kind;
  fx.mqttPort = await freePort();
  fx.httpPort = await freePort();
  const broker = await BROKERS[kind](fx.mqttPort);
  onCleanup(() => broker.stop());
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
}

const stats = (page) => page.evaluate(() => window.mqttVideo?.players[0]?.stats() ?? null);

async function logIn(page, username, password, remember = false) {
  await page.fill("#login-user", username);
  await page.fill("#login-password", password);
  if (remember) await page.check("#login-remember");
  await page.click("#login-submit");
}

after(stopAll);

for (const kind of Object.keys(BROKERS)) describe(kind, () => {
const fx = {};
before(() => setUp(fx, kind), { timeout: 90_000 });
after(stopAll); // the next broker gets the machine to itself

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

  const sockets = [];
  page.on("websocket", (ws) => sockets.push(ws.url()));
  const offeredNames = () => page.$$eval(".player .source option", (os) => os.map((o) => o.textContent));
  if (kind === "rabbitmq") {
    // RabbitMQ closed the connection at the entries' subscription, twice: the page says why it lists nothing
    // and subscribes to them no more.
    const said = await waitFor("the page to say the list is refused", async () => {
      const events = await page.evaluate(() => window.mqttVideo.players[0].events.filter((e) => e.kind === "sources").map((e) => e.detail));
      return events.length ? events : false;
    }, { timeoutMs: 15_000 });
    assert.match(said[0], /refused video\/live\/\+\/source/);
    const offered = await offeredNames();
    assert.ok(!offered.includes("Test pattern 720p") && !offered.includes("Test pattern"), `a camera is offered: ${offered}`);
  } else {
    // The list offers what this login may watch, and only that.
    const offered = await waitFor("her sources", async () => {
      const names = await offeredNames();
      return names.includes("Test pattern") ? names : false;
    }, { timeoutMs: 10_000 });
    assert.ok(!offered.includes("Test pattern 720p"), `bob's camera is offered to alice: ${offered}`);
  }

  await page.evaluate(() => window.mqttVideo.players[0].play("builtin://testsrc"));
  const playing = await waitFor("her camera to play", async () => {
    const s = await stats(page);
    if (s?.state === "error") throw new Error(`${s.message} ${JSON.stringify(s.errors)}`);
    return s?.state === "playing" && s.decodedFrames > 10 ? s : false;
  }, { timeoutMs: 30_000, everyMs: 200 });
  assert.equal(playing.protocol, 2, "guarded delivery is protocol 2");
  const whilePlaying = sockets.length;
  await new Promise((r) => setTimeout(r, 3000));
  assert.equal(sockets.length, whilePlaying, "the playing page kept one connection");

  await page.evaluate(() => window.mqttVideo.players[0].play("builtin://testsrc-720p"));
  const refused = await waitFor("bob's camera refused", async () => {
    const s = await stats(page);
    if (s?.state === "playing") throw new Error("alice plays bob's camera");
    return s?.state === "error" ? s : false;
  }, { timeoutMs: 20_000, everyMs: 200 }).catch(async (e) => {
    const events = await page.evaluate(() => window.mqttVideo.players[0].events.map((x) => `${x.at} ${x.kind}: ${x.detail}`));
    throw new Error(`${e.message} (${sockets.length} connections)\n${events.slice(-20).join("\n")}`);
  });
  assert.match(refused.message, /may not watch/);
  // After the refusal (on RabbitMQ, a close and one reconnect) the page stops knocking.
  await new Promise((r) => setTimeout(r, 1500));
  const afterRefusal = sockets.length;
  await new Promise((r) => setTimeout(r, 3000));
  assert.equal(sockets.length, afterRefusal, "the refused page kept reconnecting");
  assert.deepEqual(errors, []);

  // A reload logs in again from the remembered login, without the form.
  await page.reload();
  await waitFor("logged in again", async () => /logged in as alice/.test(await page.textContent("#login-state")), { timeoutMs: 10_000 });
  await page.close();
});
});
