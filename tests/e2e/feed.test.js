// Table tests of what the WebCodecs renderer decodes and shows (client/feed.js).

import { test } from "node:test";
import assert from "node:assert/strict";
import { Lateness, VideoGate } from "../../client/feed.js";

const FRAME = 1 / 30;

test("lateness is measured against the stream's own pace, whatever the clocks", () => {
  // [stamp (s), arrival (ms), lateness (ms)]: a page clock 5 s off the stamps, jitter, a backlog
  const rows = [
    [0, 5000, 0],
    [FRAME, 5033.3, 0],
    [2 * FRAME, 5080, 13.3], // 13 ms of network jitter
    [3 * FRAME, 5100, 0],
    // a frozen tab: nothing for 3 s, then the backlog at once
    [4 * FRAME, 8200, 3066.7],
    [50 * FRAME, 8200, 1533.3],
    [95 * FRAME, 8200, 33.3],
    [96 * FRAME, 8200, 0], // the live edge: the new least
    [97 * FRAME, 8233.3, 0],
  ];
  const l = new Lateness();
  for (const [media, at, late] of rows) assert.ok(Math.abs(l.observe(media * 1000, at) - late) < 0.1, `media ${media.toFixed(3)} at ${at}`);
});

test("lateness forgets a pace older than its window, and a timeline that went back", () => {
  const l = new Lateness(10_000);
  l.observe(0, 0);
  // the clocks drift apart by 50 ms: late within the window, the new pace once the old one is out of it
  assert.ok(Math.abs(l.observe(5000, 5050) - 50) < 1e-6);
  assert.equal(l.observe(20_000, 20_050), 0);
  assert.ok(Math.abs(l.observe(20_033.3, 20_083.3)) < 0.1);
  // stamps restarted from 0 (media times of a source that restarted): their own pace, not "20 s late"
  assert.equal(l.observe(0, 21_000), 0);
  assert.ok(Math.abs(l.observe(33.3, 21_033.3)) < 1e-6);
});

test("decoding starts at a keyframe and stops at gaps and while hidden", () => {
  // [what, sample {media (frames), sync}, visible, decoded?]
  const rows = [
    ["a join mid-GOP: a delta frame", { at: 10, sync: false }, true, false],
    ["... still waiting", { at: 11, sync: false }, true, false],
    ["the keyframe", { at: 12, sync: true }, true, true],
    ["then every frame", { at: 13, sync: false }, true, true],
    ["a lost fragment (14 is missing)", { at: 15, sync: false }, true, false],
    ["... waits for the next keyframe", { at: 16, sync: false }, true, false],
    ["the keyframe after the gap", { at: 17, sync: true }, true, true],
    ["the page is hidden", { at: 18, sync: false }, false, false],
    ["a keyframe while hidden", { at: 19, sync: true }, false, false],
    ["visible again: a delta frame", { at: 20, sync: false }, true, false],
    ["visible again: the next keyframe", { at: 21, sync: true }, true, true],
    ["a source restart: media time jumps ahead, at a keyframe", { at: 900, sync: true }, true, true],
    ["a timeline that went back, at a keyframe", { at: 0, sync: true }, true, true],
    ["and on", { at: 1, sync: false }, true, true],
  ];
  const gate = new VideoGate();
  for (const [what, { at, sync }, visible, decoded] of rows) {
    const verdict = gate.admit({ media: at * FRAME, duration: FRAME, sync }, visible);
    assert.equal(verdict.decode, decoded, what);
    if (!decoded) assert.ok(verdict.why, `${what}: says why`);
  }
  // the renderer restarts it (a decoder error, a new init segment, a decoder that fell behind)
  gate.restart("decoder error");
  assert.deepEqual(gate.admit({ media: 2 * FRAME, duration: FRAME, sync: false }), { decode: false, why: "decoder error" });
  assert.deepEqual(gate.admit({ media: 3 * FRAME, duration: FRAME, sync: true }), { decode: true });
});

test("decode times that wobble by less than a quarter frame are not gaps", () => {
  const gate = new VideoGate();
  assert.equal(gate.admit({ media: 0, duration: FRAME, sync: true }).decode, true);
  assert.equal(gate.admit({ media: FRAME + 0.002, duration: FRAME, sync: false }).decode, true);
  assert.equal(gate.admit({ media: 2 * FRAME + 0.02, duration: FRAME, sync: false }).decode, false);
});
