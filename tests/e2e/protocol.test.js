// Table tests of the page's control protocol (client/protocol.js): topics, messages, and when describe and
// play are sent, repeated and renewed.

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  controlTopics,
  describeOutcome,
  parseRenditions,
  parseSources,
  PlayRequests,
  playRequest,
  replyTopics,
  startRendition,
  decodableStart,
  renditionLadder,
  videoCodecOf,
  stopRequest,
  streamMediaTopic,
} from "../../client/protocol.js";

const bytes = (s) => new TextEncoder().encode(s);

test("topics and requests are those of PROTOCOL.md", () => {
  assert.deepEqual(controlTopics("org/site/video"), {
    describe: "org/site/video/describe",
    play: "org/site/video/play",
    stop: "org/site/video/stop",
    sources: "org/site/video/sources",
  });
  const t = replyTopics("pages", "page_ab12");
  assert.deepEqual(t, {
    base: "pages/page_ab12",
    info: "pages/page_ab12/info",
    media: "pages/page_ab12/media",
    status: "pages/page_ab12/media/status",
    subscription: "pages/page_ab12/#",
  });
  assert.deepEqual(playRequest("builtin://testsrc", t.media), { url: "builtin://testsrc", reply_topic: t.media });
  assert.deepEqual(stopRequest(t.media), { reply_topic: t.media });
  assert.deepEqual(playRequest("builtin://testsrc", t.media, 2), { url: "builtin://testsrc", reply_topic: t.media, version: 2 });
});

test("version 2: the stream topic comes from the describe reply or a playing status, when the server names one", () => {
  const stream = { id: "front-door", init: "video/live/front-door/init", media: "video/live/front-door/media", state: "video/live/front-door/state" };
  // [what, message, topic]
  const rows = [
    ["a version 2 describe reply", { mimeCodec: "video/mp4", stream }, "video/live/front-door/media"],
    ["a playing status", { state: "playing", mimeCodec: "video/mp4", stream }, "video/live/front-door/media"],
    ["a version 1 server names none", { mimeCodec: "video/mp4" }, null],
    ["not a string", { stream: { media: 7 } }, null],
    ["empty", { stream: { media: "" } }, null],
    ["a wildcard is never subscribed", { stream: { media: "video/live/#" } }, null],
    ["no message", null, null],
  ];
  for (const [what, message, topic] of rows) assert.equal(streamMediaTopic(message), topic, what);
});

test("renditions: the describe reply's list, the play that names one, the one a play starts with", () => {
  const topics = (path) => ({ id: "cam", init: `video/live/${path}/init`, media: `video/live/${path}/media`, state: `video/live/${path}/state` });
  const reply = {
    mimeCodec: 'video/mp4; codecs="avc1.64001f,mp4a.40.2"',
    stream: topics("cam"),
    renditions: [
      { name: "main", mimeCodec: 'video/mp4; codecs="avc1.64001f,mp4a.40.2"', width: 1280, height: 720, fps: 30, bitrate_kbps: null, stream: topics("cam") },
      { name: "low", mimeCodec: 'video/mp4; codecs="avc1.42c01e,mp4a.40.2"', width: 640, height: 360, fps: 30, bitrate_kbps: 600, stream: topics("cam/low") },
      { name: "no topic", mimeCodec: "video/mp4", stream: { media: "video/live/#" } },
      { mimeCodec: "video/mp4", stream: topics("x") },
      { name: "low", mimeCodec: "video/mp4", stream: topics("again") },
    ],
  };
  assert.deepEqual(parseRenditions(reply), [
    { name: "main", mimeCodec: 'video/mp4; codecs="avc1.64001f,mp4a.40.2"', width: 1280, height: 720, fps: 30, bitrateKbps: null, media: "video/live/cam/media" },
    { name: "low", mimeCodec: 'video/mp4; codecs="avc1.42c01e,mp4a.40.2"', width: 640, height: 360, fps: 30, bitrateKbps: 600, media: "video/live/cam/low/media" },
  ]);
  // [what, reply] -> null: nothing about the play changes
  for (const [what, r] of [["absent", { mimeCodec: "video/mp4" }], ["not a list", { renditions: {} }], ["none usable", { renditions: [{ name: "x" }] }]]) {
    assert.equal(parseRenditions(r), null, what);
  }
  const url = "rtsp://cam/1";
  assert.deepEqual(playRequest(url, "pages/p/media", 2, "low"), { url, reply_topic: "pages/p/media", version: 2, rendition: "low" });
  assert.deepEqual(playRequest(url, "pages/p/media", 2, null), { url, reply_topic: "pages/p/media", version: 2 }, "no renditions: as before");
  assert.deepEqual(playRequest(url, "pages/p/media", 1, "low"), { url, reply_topic: "pages/p/media" }, "never with version 1");
  const list = parseRenditions(reply);
  // [what, option, played before, {name, unknown}]
  const rows = [
    ["auto starts with main", "auto", null, { name: "main", unknown: null }],
    ["auto goes on with what played before (a reconnect)", "auto", "low", { name: "low", unknown: null }],
    ["... unless the server no longer lists it", "auto", "mid", { name: "main", unknown: null }],
    ["a name", "low", null, { name: "low", unknown: null }],
    ["a name the server does not list: main, and say so", "tiny", null, { name: "main", unknown: "tiny" }],
  ];
  for (const [what, wanted, previous, expected] of rows) assert.deepEqual(startRendition(list, wanted, previous), expected, what);
});

test("the server's replies are read, and what is not as documented is an error", () => {
  assert.deepEqual(
    parseSources(bytes('{"version":1,"sources":[{"name":"A","url":"builtin://testsrc"},{"name":"no url"},null]}')),
    [{ name: "A", url: "builtin://testsrc" }],
  );
  assert.deepEqual(parseSources(new Uint8Array()), [], "an empty retained payload: no server");
  assert.deepEqual(parseSources(bytes("not json")), []);
  const reply = { mimeCodec: 'video/mp4; codecs="avc1.42C01E"', width: 640 };
  assert.deepEqual(describeOutcome(reply), { reply });
  assert.deepEqual(describeOutcome({ error: { code: "forbidden_url", message: "no" } }), { error: { code: "forbidden_url", message: "no" } });
  assert.equal(describeOutcome(null).error.code, "bad_reply");
  assert.equal(describeOutcome({ width: 640 }).error.code, "bad_reply");
});

/** Runs `steps` ([now, method, expected sends/fails]) against one PlayRequests. */
function run(options, steps) {
  const r = new PlayRequests(options);
  for (const [now, method, expected] of steps) {
    const actions = r[method](now);
    const got = actions.map((a) => (a.fail ? `fail ${a.fail.code}` : `${a.send} ${a.why}`));
    assert.deepEqual(got, expected, `${method} at ${now} ms`);
  }
  return r;
}

test("describe and play are repeated until answered, then given up on", () => {
  run({}, [
    [0, "start", ["describe start"]],
    [1500, "tick", []],
    [2100, "tick", ["describe retry"]],
    [2200, "tick", []],
    [4200, "tick", ["describe retry"]],
    [4300, "described", []],
    [5000, "tick", []], // the Player has not accepted yet: nothing
    [5100, "play", ["play start"]],
    [8000, "tick", []],
    [8200, "tick", ["play retry"]],
    [8300, "message", []],
    [11300, "tick", []], // answered: no more retries
  ]);
  run({}, [
    [0, "start", ["describe start"]],
    [14000, "tick", ["describe retry"]],
    [15100, "tick", ["fail timeout"]],
    [17000, "tick", []],
  ]);
  run({}, [
    [0, "start", ["describe start"]],
    [100, "described", []],
    [200, "play", ["play start"]],
    [15300, "tick", ["fail timeout"]],
  ]);
});

test("a describe the server may have missed goes again when it is back", () => {
  run({}, [
    [0, "start", ["describe start"]],
    [500, "serverBack", ["describe the server is back"]],
    [2000, "tick", []], // the retry timer restarted
    [2600, "tick", ["describe retry"]],
    [2700, "described", []],
    [2800, "serverBack", []], // answered: not again
  ]);
});

test("a playing viewer renews its play every renewMs, and plays again after a silence", () => {
  const r = run({ renewMs: 10000 }, [
    [0, "start", ["describe start"]],
    [100, "described", []],
    [200, "play", ["play start"]],
    [300, "message", []],
    [5000, "message", []],
    [10100, "tick", []],
    [10200, "message", []],
    [10200, "tick", ["play renew"]],
    [15000, "message", []],
    [20199, "tick", []],
    [20200, "tick", ["play renew"]],
  ]);
  assert.equal(r.renewals, 2);
  // No message for mediaTimeoutMs: play again (the pool's other server takes over); renewals go on after it.
  run({ renewMs: 10000, mediaTimeoutMs: 6000 }, [
    [0, "start", ["describe start"]],
    [100, "described", []],
    [200, "play", ["play start"]],
    [300, "message", []],
    [6400, "tick", ["play nothing received for 6 s"]],
    [6500, "message", []],
    [12000, "message", []],
    [16300, "tick", []],
    [16400, "tick", ["play renew"]],
  ]);
  // renewMs 0: no renewals (a server with viewer_timeout_secs = 0)
  run({ renewMs: 0 }, [
    [0, "start", ["describe start"]],
    [100, "described", []],
    [200, "play", ["play start"]],
    [300, "message", []],
    [50_000, "message", []],
    [50_000, "tick", []],
  ]);
});

test("nothing is sent once the play is finished", () => {
  const r = run({}, [
    [0, "start", ["describe start"]],
    [100, "described", []],
  ]);
  r.finish();
  assert.deepEqual(r.play(200), []);
  assert.deepEqual(r.tick(60_000), []);
  assert.deepEqual(r.serverBack(60_000), []);
});

test("a rendition this browser cannot decode gives way to one it can, and codec repeats stay off the ladder", () => {
  const r = (name, codec, width, height) => ({ name, mimeCodec: `video/mp4; codecs="${codec}, mp4a.40.2"`, width, height });
  // An HEVC camera copied as main, with an H.264 copy of it and a small H.264 rendition.
  const list = [r("main", "hvc1.1.6.L120.90", 1920, 1080), r("h264", "avc1.640028", 1920, 1080), r("low", "avc1.42C01E", 640, 360)];
  assert.equal(videoCodecOf(list[0].mimeCodec), "hvc1");
  assert.equal(videoCodecOf("video/mp4"), "");
  const firefox = new Set(["main", "h264", "low"]);
  const chromium = new Set(["h264", "low"]);
  const start = { name: "main", unknown: null };
  assert.deepEqual(decodableStart(list, start, firefox), start, "HEVC decoded: main");
  assert.deepEqual(decodableStart(list, start, chromium), { name: "h264", unknown: null, undecodable: "main" });
  assert.equal(decodableStart(list, start, new Set()), null, "nothing decodes");
  const names = (ladder) => ladder.map((x) => x.name);
  assert.deepEqual(names(renditionLadder(list, firefox, "main")), ["main", "low"], "the H.264 copy is never asked for");
  assert.deepEqual(names(renditionLadder(list, chromium, "h264")), ["h264", "low"]);
  // H.264 streams as before: every rendition decodable is on the ladder.
  const plain = [r("main", "avc1.64001F", 1280, 720), r("low", "avc1.42C01E", 640, 360)];
  assert.deepEqual(names(renditionLadder(plain, new Set(["main", "low"]), "main")), ["main", "low"]);
});
