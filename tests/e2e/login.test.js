// Table tests of the page's login and guarded delivery (client/protocol.js, client/credentials.js): the
// CONNECT credentials, what a refused login is, where a guarded server's answers come, and where a login is
// kept (only when remembered).

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  connectCredentials,
  guardedTopics,
  loginRefusal,
  replyTopics,
  sourceEntries,
  sourceEntry,
  sourcesGuarded,
} from "../../client/protocol.js";
import { keepLogin, rememberedLogin, STORAGE_KEY } from "../../client/credentials.js";

test("credentials go in CONNECT only with a user name", () => {
  const cases = [
    [{}, {}],
    [{ username: "", password: "pw" }, {}],
    [{ username: "alice" }, { username: "alice" }],
    [{ username: "alice", password: "" }, { username: "alice" }],
    [{ username: "alice", password: "pw" }, { username: "alice", password: "pw" }],
    [{ username: 7, password: "pw" }, {}],
    [undefined, {}],
  ];
  for (const [options, want] of cases) assert.deepEqual(connectCredentials(options), want, JSON.stringify(options));
});

test("CONNACK 4 and 5 are a refused login; other errors are not", () => {
  const cases = [
    [{ code: 4 }, "login_refused", /wrong user name or password/],
    [{ code: 5 }, "login_refused", /not authorized/],
    [{ code: 3 }, null],
    [{ code: 128 }, null],
    [new Error("connack timeout"), null],
    [null, null],
  ];
  for (const [error, code, message] of cases) {
    const got = loginRefusal(error);
    if (code === null) assert.equal(got, null, JSON.stringify(error));
    else {
      assert.equal(got.code, code);
      assert.match(got.message, message);
    }
  }
});

test("a guarded pointer names where this player's answers come", () => {
  const own = replyTopics("pages", "page_ab12");
  const pointer = {
    url: "builtin://testsrc",
    guarded: true,
    stream: { id: "front-door", media: "video/live/front-door/media", replies: "video/live/front-door/to/0a1b" },
  };
  assert.deepEqual(guardedTopics(pointer, own), {
    info: "video/live/front-door/to/0a1b/info",
    media: "video/live/front-door/to/0a1b/media",
    status: "video/live/front-door/to/0a1b/media/status",
    subscription: "video/live/front-door/to/0a1b/#",
  });
  const not = [
    { ...pointer, guarded: false },
    { url: "x", mimeCodec: "video/mp4", stream: pointer.stream }, // a full describe reply
    { ...pointer, stream: { ...pointer.stream, replies: "video/live/+/to/x" } },
    { ...pointer, stream: { ...pointer.stream, replies: "" } },
    { error: { code: "forbidden_url" } },
    null,
  ];
  for (const reply of not) assert.equal(guardedTopics(reply, own), null, JSON.stringify(reply));
});

function memoryStorage() {
  const items = new Map();
  return {
    items,
    getItem: (k) => (items.has(k) ? items.get(k) : null),
    setItem: (k, v) => items.set(k, String(v)),
    removeItem: (k) => items.delete(k),
  };
}

test("a login is kept only when remembered, and forgotten otherwise", () => {
  const storage = memoryStorage();
  keepLogin(storage, { username: "alice", password: "pw" }, false);
  assert.equal(storage.items.size, 0, "not remembered: nothing stored");
  assert.equal(rememberedLogin(storage), null);
  keepLogin(storage, { username: "alice", password: "pw" }, true);
  assert.deepEqual(rememberedLogin(storage), { username: "alice", password: "pw" });
  keepLogin(storage, { username: "alice", password: "pw" }, false);
  assert.equal(rememberedLogin(storage), null, "unticking forgets it");
  for (const junk of ["{", "null", '{"username": ""}', '{"username": 3}', "[]"]) {
    storage.setItem(STORAGE_KEY, junk);
    assert.equal(rememberedLogin(storage), null, junk);
  }
  assert.equal(rememberedLogin(null), null);
});

test("a guarded server's sources are entries of their own, one per source", () => {
  const bytes = (v) => new TextEncoder().encode(typeof v === "string" ? v : JSON.stringify(v));
  assert.equal(sourceEntries("org/video"), "org/video/live/+/source");
  assert.equal(sourcesGuarded(bytes({ version: 2, guarded: true, sources: [] })), true);
  assert.equal(sourcesGuarded(bytes({ version: 2, sources: [{ url: "x" }] })), false);
  assert.equal(sourcesGuarded(new Uint8Array()), false, "an empty list: no server");
  const entry = { name: "Front door", url: "rtsp://viewer:***@cam/1", description: null };
  const cases = [
    ["video/live/front-door/source", bytes(entry), { id: "front-door", source: entry }],
    ["video/live/front-door/source", new Uint8Array(), { id: "front-door", source: null }],
    ["video/live/front-door/source", bytes("not json"), null],
    ["video/live/front-door/source", bytes({ name: "no url" }), null],
    ["video/live/front-door/media", bytes(entry), null],
    ["video/live/a/b/source", bytes(entry), null],
    ["video/live//source", bytes(entry), null],
    ["other/live/front-door/source", bytes(entry), null],
  ];
  for (const [topic, payload, want] of cases) assert.deepEqual(sourceEntry("video", topic, payload), want, topic);
});
