// Table tests of why the page cannot use WebCodecs (client/capabilities.js), with fake globals for the
// browsers and contexts it meets: a non-secure origin (http://nas.lan:8080) has no WebCodecs and no
// AudioWorklet, but Chromium still has the AudioWorkletNode constructor there.

import { test } from "node:test";
import assert from "node:assert/strict";
import { hasAudioWorklet, isLinuxWebKit, mimeCodecs, videoOutputs, webCodecsBlocker, webCodecsIssue } from "../../client/capabilities.js";

const H264_AAC = 'video/mp4; codecs="avc1.42C01E, mp4a.40.2"';
const H264 = 'video/mp4; codecs="avc1.42C01E"';

/** A decoder class whose isConfigSupported accepts the codecs in `accepts` (or throws for "throw"). */
function decoder(accepts) {
  return class {
    static async isConfigSupported(config) {
      if (accepts === "throw") throw new TypeError("bad config");
      return { supported: accepts.includes(config.codec), config };
    }
  };
}

class Canvas {
  captureStream() {}
}
class AudioContextWithWorklet {
  get audioWorklet() {
    return {};
  }
}
class AudioContextWithoutWorklet {}
class AudioWorkletNode {}
class Generator {}

/** Chromium on https: or localhost. */
const chromium = {
  isSecureContext: true,
  VideoDecoder: decoder(["avc1.42C01E"]),
  AudioDecoder: decoder(["mp4a.40.2"]),
  AudioContext: AudioContextWithWorklet,
  AudioWorkletNode,
  MediaStreamTrackGenerator: Generator,
  HTMLCanvasElement: Canvas,
};
/** Chromium on http://nas.lan:8080: the secure-context-only APIs are gone, AudioWorkletNode is not. */
const chromiumInsecure = {
  isSecureContext: false,
  AudioContext: AudioContextWithoutWorklet,
  AudioWorkletNode,
  HTMLCanvasElement: Canvas,
};

test("why WebCodecs cannot play at all, by context and browser", () => {
  const without = (name) => {
    const g = { ...chromium };
    delete g[name];
    return g;
  };
  // [what, globals, the stream has audio, reason]
  const rows = [
    ["secure Chromium", chromium, true, null],
    ["non-secure Chromium", chromiumInsecure, true, "not a secure context"],
    ["non-secure, video only", chromiumInsecure, false, "not a secure context"],
    ["non-secure, but the decoders there (an old browser)", { ...chromium, isSecureContext: false }, true, "not a secure context"],
    ["no isSecureContext at all", without("isSecureContext"), true, "not a secure context"],
    ["no VideoDecoder (Firefox before 130)", without("VideoDecoder"), true, "no VideoDecoder"],
    ["no AudioDecoder (Safari 16)", without("AudioDecoder"), true, "no AudioDecoder"],
    ["no AudioDecoder, video only", without("AudioDecoder"), false, null],
    ["no AudioContext", without("AudioContext"), true, "no AudioContext"],
    ["no audioWorklet on the context", { ...chromium, AudioContext: AudioContextWithoutWorklet }, true, "no AudioWorklet"],
    ["no AudioWorkletNode", without("AudioWorkletNode"), true, "no AudioWorklet"],
    ["no AudioWorklet, video only", { ...chromium, AudioContext: AudioContextWithoutWorklet }, false, null],
    ["no generator: the canvas", without("MediaStreamTrackGenerator"), true, null],
    ["no generator, no captureStream", { ...without("MediaStreamTrackGenerator"), HTMLCanvasElement: class {} }, true, "no way to show decoded frames"],
    ["no generator, no canvas (a worker)", { ...without("MediaStreamTrackGenerator"), HTMLCanvasElement: undefined }, true, "no way to show decoded frames"],
  ];
  for (const [what, g, audio, reason] of rows) assert.equal(webCodecsBlocker(g, { audio }), reason, what);
});

test("why WebCodecs cannot play a stream: the context first, then the codecs", async () => {
  // [what, globals, mime, reason]
  const rows = [
    ["secure, H.264 + AAC", chromium, H264_AAC, null],
    ["secure, H.264 only", chromium, H264, null],
    ["non-secure", chromiumInsecure, H264_AAC, "not a secure context"],
    ["a video codec refused", chromium, 'video/mp4; codecs="hvc1.1.6.L93.B0, mp4a.40.2"', "codec not supported: hvc1.1.6.L93.B0"],
    ["an audio codec refused", chromium, 'video/mp4; codecs="avc1.42C01E, opus"', "codec not supported: opus"],
    ["isConfigSupported throws", { ...chromium, VideoDecoder: decoder("throw") }, H264, "codec not supported: avc1.42C01E (bad config)"],
    ["no codecs named", chromium, "video/mp4", 'not one video and at most one audio codec in "video/mp4"'],
    ["two video codecs", chromium, 'video/mp4; codecs="avc1.42C01E, avc1.64001F"', 'not one video and at most one audio codec in "video/mp4; codecs="avc1.42C01E, avc1.64001F""'],
    ["a video-only stream needs no AudioWorklet", { ...chromium, AudioContext: AudioContextWithoutWorklet }, H264, null],
    ["a stream with sound does", { ...chromium, AudioContext: AudioContextWithoutWorklet }, H264_AAC, "no AudioWorklet"],
  ];
  for (const [what, g, mime, reason] of rows) assert.equal(await webCodecsIssue(mime, g), reason, what);
});

test("the parts: codecs of a MIME type, the ways to show frames, the worklet", () => {
  assert.deepEqual(mimeCodecs(H264_AAC), ["avc1.42C01E", "mp4a.40.2"]);
  assert.deepEqual(mimeCodecs("video/mp4; codecs=avc1.42C01E"), ["avc1.42C01E"]);
  assert.deepEqual(mimeCodecs(null), []);
  assert.deepEqual(videoOutputs(chromium), { generator: true, canvas: true });
  assert.deepEqual(videoOutputs(chromiumInsecure), { generator: false, canvas: true });
  assert.deepEqual(videoOutputs({}), { generator: false, canvas: false });
  assert.equal(hasAudioWorklet(chromium), true);
  assert.equal(hasAudioWorklet(chromiumInsecure), false);
  assert.equal(hasAudioWorklet({}), false);
});

// Real user agents: Linux WebKit (WebKitGTK, WPE) crashes on AudioData.copyTo, Apple's Safari and Chromium
// on Linux (which also says AppleWebKit) do not. [what, userAgent, vendor, Linux WebKit]
const AGENTS = [
  ["WebKitGTK 2.50 MiniBrowser (Debian 12)", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Safari/605.1.15", "Apple Computer, Inc.", true],
  ["Epiphany (Ubuntu)", "Mozilla/5.0 (X11; Ubuntu; Linux x86_64) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15 Epiphany/605.1.15", "Apple Computer, Inc.", true],
  ["WPE (Cog, aarch64)", "Mozilla/5.0 (Linux; aarch64) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15 WPE", "Apple Computer, Inc.", true],
  ["WebKitGTK on Wayland (no X11 token)", "Mozilla/5.0 (Linux x86_64) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Safari/605.1.15", "Apple Computer, Inc.", true],
  ["Safari 18 (macOS)", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15", "Apple Computer, Inc.", false],
  ["Safari (iPhone)", "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1", "Apple Computer, Inc.", false],
  ["Chrome on iPhone (WebKit, Apple's)", "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1", "Apple Computer, Inc.", false],
  ["Chromium (Linux)", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36", "Google Inc.", false],
  ["headless Chromium (Linux)", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36", "Google Inc.", false],
  ["Chrome (Android)", "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36", "Google Inc.", false],
  ["Edge (Linux)", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0", "Google Inc.", false],
  ["Firefox ESR (Linux)", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0", "", false],
  ["no navigator (node)", undefined, undefined, false],
];

test("Linux WebKit (WebKitGTK, WPE) by its user agent, and WebCodecs off there with the reason", async () => {
  for (const [what, userAgent, vendor, linuxWebKit] of AGENTS) {
    const navigator = userAgent === undefined ? undefined : { userAgent, vendor };
    assert.equal(isLinuxWebKit(navigator), linuxWebKit, what);
    // Everything else that WebCodecs needs is there (WebKitGTK 2.50 has it all on a secure origin).
    const g = { ...chromium, navigator };
    const reason = linuxWebKit ? "AudioData.copyTo crashes WebKitGTK" : null;
    assert.equal(webCodecsBlocker(g, { audio: true }), reason, `${what}, with sound`);
    assert.equal(webCodecsBlocker(g, { audio: false }), reason, `${what}, video only (the play may gain sound later)`);
    assert.equal(await webCodecsIssue(H264_AAC, g), reason, `${what}: a stream`);
  }
  // Not a secure context stays the reason there: it is what the page tells (and offers the https link for).
  assert.equal(webCodecsBlocker({ ...chromiumInsecure, navigator: { userAgent: AGENTS[0][1] } }), "not a secure context");
});
