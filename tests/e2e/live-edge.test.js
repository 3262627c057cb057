// Table tests of the MediaSource player's live-edge controller (client/live-edge.js): views of the <video> and
// `now` in, actions out.

import { test } from "node:test";
import assert from "node:assert/strict";
import { bufferAhead, LiveEdge } from "../../client/live-edge.js";

/** A view of a playing <video>: playhead `t`, buffered `ranges`. */
function view(t, ranges, extra = {}) {
  return { currentTime: t, paused: false, seeking: false, readyState: 4, ranges, busy: false, removePending: false, ...extra };
}

/** A controller joined long before `now`, whose playhead has just been seen moving. */
function settled(options = {}, { hasAudio = true, now = 100_000 } = {}) {
  const edge = fresh(options, hasAudio);
  edge.tick(view(50, [[40, 50.12]]), now - 1000);
  return edge;
}

/** A controller joined at 0 that has seen nothing yet. */
function fresh(options = {}, hasAudio = true) {
  const edge = new LiveEdge(options);
  edge.hasAudio = hasAudio;
  edge.attach(0);
  return edge;
}

/** A `waiting` event at `now`, with video arriving as usual (`videoAgoMs` before it). */
function stallAt(edge, v, now, videoAgoMs = 20) {
  edge.videoArrived(null, now - videoAgoMs);
  return edge.stall(v, now);
}

const rateOf = (actions) => actions.find((a) => a.type === "rate")?.rate;

test("the playback rate holds the playhead at the target, within its bounds", () => {
  // behind the live edge (s) -> rate, for a settled player with audio (target 120 ms)
  const rows = [
    [0.12, 1], // on target
    [0.125, 1], // inside the dead band
    [0.22, 1.05], // 100 ms behind the target: +5 %
    [0.52, 1.1], // far behind: capped at catchUpRateRange
    [0.07, 0.975], // ahead of the target: slower
    [0.0, 0.95], // capped at rateRange
  ];
  for (const [behind, rate] of rows) {
    const edge = fresh();
    const now = 100_000;
    assert.equal(rateOf(edge.tick(view(60 - behind, [[50, 60]]), now)), rate, `${behind} s behind`);
  }
  // right after joining, the rate settles faster and may go up to +20 %
  for (const [behind, rate] of [
    [0.22, 1.15],
    [0.37, 1.2],
  ]) {
    const edge = fresh();
    edge.joined(99_000);
    assert.equal(rateOf(edge.tick(view(60 - behind, [[50, 60]]), 100_000)), rate, `settling, ${behind} s behind`);
  }
  // video only: a 60 ms target
  const edge = fresh({}, false);
  assert.equal(edge.target(), 0.06);
  assert.equal(rateOf(edge.tick(view(60 - 0.06, [[50, 60]]), 100_000)), 1);
  // targetLatency overrides
  assert.equal(new LiveEdge({ targetLatency: 0.3 }).target(), 0.3);
});

test("jumps: outside the newest range, far behind, stuck with media ahead, too long behind the target", () => {
  const seekOf = (actions) => actions.find((a) => a.type === "seek");
  // a join: the playhead at 0, media far from 0; only once the burst is appended
  let edge = settled();
  assert.equal(seekOf(edge.tick(view(0, [[5, 6]], { busy: true }), 100_000)), undefined, "waits while appending");
  let seek = seekOf(edge.tick(view(0, [[5, 6]]), 100_100));
  assert.ok(Math.abs(seek.to - 5.88) < 1e-9, `to ${seek.to}`);
  assert.equal(edge.joinedAt, 100_100, "a jump into a new range is a join: the rate settles afresh");
  // a gap: the playhead past the end of an old range, a newer range after it
  edge = settled();
  seek = seekOf(edge.tick(view(10.5, [[0, 10], [12, 13]]), 100_000));
  assert.ok(Math.abs(seek.to - 12.88) < 1e-9);
  // more than maxBehind behind
  edge = settled();
  seek = seekOf(edge.tick(view(3, [[0, 4.5]]), 100_000));
  assert.ok(Math.abs(seek.to - 4.38) < 1e-9);
  assert.match(seek.why, /1\.50 s behind/);
  // the playhead stuck for 1.5 s with 0.5 s ahead
  edge = settled();
  edge.tick(view(10, [[0, 10.5]]), 100_000);
  assert.equal(seekOf(edge.tick(view(10, [[0, 10.5]]), 101_400)), undefined, "not yet");
  assert.match(seekOf(edge.tick(view(10, [[0, 10.5]]), 101_600)).why, /stalled with media ahead/);
  // 0.38 s past the target, playing: after catchUpAfterMs
  edge = fresh();
  assert.equal(seekOf(edge.tick(view(10, [[0, 10.5]]), 100_000)), undefined);
  assert.equal(seekOf(edge.tick(view(10.5, [[0, 11]]), 100_900)), undefined);
  assert.ok(seekOf(edge.tick(view(11, [[0, 11.5]]), 101_100)));
  // ... at once right after a join (the GOP burst was still arriving at the first jump)
  edge = fresh();
  edge.joined(99_500);
  assert.ok(seekOf(edge.tick(view(10, [[0, 10.5]]), 100_000)));
  assert.equal(edge.jumps, 1);
});

test("autoplay asks to play once, when there is something to show", () => {
  const edge = new LiveEdge();
  edge.attach(0);
  const paused = (readyState) => view(5, [[5, 6]], { paused: true, readyState });
  assert.deepEqual(edge.tick(paused(1), 10), []);
  assert.deepEqual(edge.tick(paused(2), 20).filter((a) => a.type === "play"), [{ type: "play" }]);
  assert.deepEqual(edge.tick(paused(2), 30).filter((a) => a.type === "play"), []);
  const manual = new LiveEdge({ autoplay: false });
  assert.deepEqual(manual.tick(paused(4), 10).filter((a) => a.type === "play"), []);
});

test("a stall with media buffered raises the target; others do not", () => {
  // [what, setup(edge) -> now of the stall, the view at the stall, counted]
  const rows = [
    ["a stop while playing, 50 ms ahead", () => 100_000, view(50, [[40, 50.05]]), true],
    ["plain starvation (nothing ahead)", () => 100_000, view(50, [[40, 50.01]]), false],
    ["paused", () => 100_000, view(50, [[40, 50.05]], { paused: true }), false],
    ["seeking", () => 100_000, view(50, [[40, 50.05]], { seeking: true }), false],
    ["right after a join", (e) => (e.joined(99_700), 100_000), view(50, [[40, 50.05]]), false],
    [
      "right after a jump",
      (e) => {
        e.tick(view(0, [[45, 46]]), 99_800);
        return 100_000;
      },
      view(45.88, [[45, 46]]),
      false,
    ],
    [
      "a repeat within a second",
      (e) => {
        stallAt(e, view(50, [[40, 50.05]]), 99_500);
        return 100_000;
      },
      view(50, [[40, 50.05]]),
      false,
    ],
    // Audio goes on but no video for 300 ms: the server holds back damaged video up to the next keyframe.
    ["while video is held back", () => 100_000, view(50, [[40, 50.05]]), false, 300],
  ];
  for (const [what, setup, v, counted, videoAgoMs = 20] of rows) {
    const edge = settled();
    const stallsBefore = edge.stalls;
    const now = setup(edge);
    const boostBefore = edge.boost;
    const result = stallAt(edge, v, now, videoAgoMs);
    assert.equal(!!result, counted, what);
    if (counted) {
      assert.equal(edge.stalls, stallsBefore + 1, what);
      assert.ok(Math.abs(edge.boost - boostBefore - 0.04) < 1e-9, what);
      assert.deepEqual([result.before, Math.round(result.after * 1000)], [0.12, 160], what);
    }
  }
  // the target never passes maxTargetLatency
  const edge = settled();
  for (let i = 0; i < 20; i++) stallAt(edge, view(50, [[40, 50.05]]), 100_000 + i * 1500);
  assert.equal(edge.target(), 0.5);
});

test("a raised target decays back while playback stays smooth", () => {
  const edge = settled();
  stallAt(edge, view(50, [[40, 50.05]]), 100_000);
  assert.ok(Math.abs(edge.target() - 0.16) < 1e-9);
  edge.tick(view(55, [[50, 55.2]]), 109_000);
  assert.ok(Math.abs(edge.target() - 0.16) < 1e-9, "not within targetDecayMs of the stall");
  edge.tick(view(61, [[50, 61.2]]), 110_500);
  assert.ok(Math.abs(edge.target() - 0.15) < 1e-9, "10 ms less after 10 s");
  edge.tick(view(62, [[50, 62.2]]), 115_000);
  assert.ok(Math.abs(edge.target() - 0.15) < 1e-9, "one step per targetDecayMs");
  for (let now = 121_000; now < 200_000; now += 10_100) edge.tick(view(now / 1000, [[50, now / 1000 + 0.2]]), now);
  assert.equal(edge.target(), 0.12, "back to the base target, not below");
});

test("a media failure (decode error) does not leave the target raised", () => {
  // The stalls that come with a failing decoder raised the target; the rebuild takes them back.
  let edge = settled();
  stallAt(edge, view(50, [[40, 50.05]]), 100_000);
  stallAt(edge, view(51, [[40, 51.05]]), 102_000);
  assert.ok(Math.abs(edge.target() - 0.2) < 1e-9);
  edge.failed(103_000);
  assert.equal(edge.target(), 0.12, "the failure's stalls raise nothing");
  // After the rebuild: the new MediaSource's first stalls are the failure's aftermath too.
  edge.attach(103_100);
  edge.joined(103_100);
  edge.tick(view(0, [[60, 60.1]]), 104_000); // the jump into the new media
  edge.tick(view(60.1, [[60, 60.3]]), 105_000);
  edge.tick(view(60.2, [[60, 60.4]]), 105_600);
  assert.ok(stallAt(edge, view(60.2, [[60, 60.3]]), 106_000), "counted");
  assert.equal(edge.target(), 0.12, "but not raising the target");
  edge.tick(view(61, [[60, 61.2]]), 108_000);
  edge.tick(view(62, [[60, 62.2]]), 109_000);
  stallAt(edge, view(62, [[60, 62.1]]), 109_000);
  assert.ok(Math.abs(edge.target() - 0.16) < 1e-9, "a stall after the failure window counts again");

  // A stall long before the failure was a real one: it stays.
  edge = settled();
  stallAt(edge, view(50, [[40, 50.05]]), 100_000);
  edge.failed(106_000);
  assert.ok(Math.abs(edge.target() - 0.16) < 1e-9);
});

test("a hole in the video (held back by the server) is stepped over once the keyframe after it is in", () => {
  const edge = settled();
  let now = 100_000;
  for (let i = 0; i < 30; i++) edge.videoArrived(49 + i / 30, (now += 33));
  // 1 s of video held back; the next video is the keyframe at 51.
  edge.videoArrived(51, (now += 1000));
  assert.deepEqual(edge.gap, { start: 49 + 29 / 30 + 1 / 30, end: 51 });
  // Audio kept the range going across the hole; the playhead reaches it before the keyframe is buffered.
  assert.equal(edge.tick(view(50.01, [[40, 50.9]]), (now += 10)).find((a) => a.type === "seek"), undefined);
  assert.equal(edge.tick(view(50.2, [[40, 51.1]], { busy: true }), (now += 10)).find((a) => a.type === "seek"), undefined, "not during an append");
  const seek = edge.tick(view(50.2, [[40, 51.1]]), (now += 10)).find((a) => a.type === "seek");
  assert.ok(seek && seek.to >= 51 && /held-back video/.test(seek.why), JSON.stringify(seek));
  assert.equal(edge.gap, null, "once");
  // A steady 30 fps stream, or one whose frames come 0.15 s apart, has no hole.
  const steady = settled();
  for (let i = 0; i < 60; i++) steady.videoArrived(i * 0.15, 1000 + i * 150);
  assert.equal(steady.gap, null);
});

test("stalls around fragments lost on a slow link do not raise the target", () => {
  const edge = settled();
  stallAt(edge, view(50, [[40, 50.05]]), 100_000); // the buffer ran dry: the link is slower than the stream
  edge.lost(100_500); // ... and the gateway shed up to the next keyframe
  assert.equal(edge.target(), 0.12, "the stall before the loss gives its step back");
  edge.tick(view(51, [[40, 51.2]]), 101_000);
  edge.tick(view(52, [[40, 52.2]]), 102_000);
  assert.ok(stallAt(edge, view(52, [[40, 52.05]]), 103_000), "counted");
  assert.equal(edge.target(), 0.12, "but raising nothing while the losses go on");
});

test("after fragments were lost on a slow link, the hole is stepped over as soon as the keyframe after it is in", () => {
  const edge = settled({ maxBehind: 5 }); // (not the jump for being far behind)
  let now = 100_000;
  for (let i = 0; i < 30; i++) edge.videoArrived(49 + i / 30, (now += 33));
  edge.lost(now + 500);
  edge.videoArrived(51, (now += 1000)); // the keyframe after what the gateway shed
  // The playhead is still 0.6 s before the hole: without the loss it would play that out first.
  const seek = edge.tick(view(49.4, [[40, 51.1]]), (now += 10)).find((a) => a.type === "seek");
  assert.ok(seek && seek.to >= 51, JSON.stringify(seek));
  // A later hole (video held back by the server) waits for the playhead again.
  for (let i = 1; i < 30; i++) edge.videoArrived(51 + i / 30, (now += 33));
  edge.videoArrived(53, (now += 1000));
  assert.equal(edge.tick(view(51.5, [[40, 53.1]]), (now += 10)).find((a) => a.type === "seek"), undefined);
});

test("media long played is removed, one range at a time", () => {
  const removeOf = (actions) => actions.find((a) => a.type === "remove");
  const edge = settled();
  assert.deepEqual(removeOf(edge.tick(view(20, [[0, 20.12]]), 100_000)), { type: "remove", start: 0, end: 10 });
  assert.equal(removeOf(edge.tick(view(21, [[0, 21.12]]), 101_000)), undefined, "not again within 2 s");
  assert.equal(removeOf(edge.tick(view(23, [[0, 23.12]], { removePending: true }), 103_000)), undefined, "not while one runs");
  assert.ok(removeOf(edge.tick(view(23.1, [[0, 23.22]]), 103_100)));
  assert.equal(removeOf(edge.tick(view(30, [[19, 30.12]]), 110_000)), undefined, "only 11 s kept");
});

test("bufferAhead is measured in the range that holds the playhead", () => {
  assert.equal(bufferAhead(view(5, [[0, 4], [4.5, 5.25]])), 0.25);
  assert.equal(bufferAhead(view(4.2, [[0, 4], [4.5, 5]])), 0);
});

test("renditions: the link's keyframe delay is kept in the target; after a switch the playhead catches up as after a join", () => {
  // [what, link jitter (s), boost after stalls (stalls), target (s)]
  const rows = [
    ["no jitter: the base target", 0, 0, 0.12],
    ["40 ms of keyframe delay on top of it", 0.04, 0, 0.16],
    ["stalls raised it more: the larger counts, not both", 0.02, 2, 0.2],
    ["never past maxTargetLatency", 1, 0, 0.5],
  ];
  for (const [what, jitter, stalls, target] of rows) {
    const edge = settled();
    edge.boost = stalls * 0.04;
    edge.setLinkJitter(jitter);
    assert.ok(Math.abs(edge.target() - target) < 1e-9, `${what}: ${edge.target()}`);
  }
  // 400 ms behind the target: after a switch the seek comes as soon as the smoothed distance shows it (as after
  // a join), else only after catchUpAfterMs more.
  const firstSeek = (edge) => {
    for (let now = 100_100; now < 104_000; now += 100) {
      if (edge.tick(view(59.48, [[50, 60]]), now).some((a) => a.type === "seek")) return now;
    }
    return null;
  };
  const switched = settled();
  switched.switched(100_000);
  const plain = settled();
  const [a, b] = [firstSeek(switched), firstSeek(plain)];
  assert.ok(a !== null && b !== null && b - a >= 900, `after a switch at ${a}, without one at ${b}`);
  // Unlike a join, a switch does not hide the stalls right after it.
  const s = settled();
  s.tick(view(59.9, [[50, 60]]), 100_000);
  s.switched(100_100);
  s.tick(view(59.95, [[50, 60]]), 100_200);
  assert.ok(stallAt(s, view(59.95, [[50, 60]]), 100_300), "a stall 200 ms after a switch counts");
});

test("a <video> left paused with media buffered is recovered: a jump to the live edge and a play, backing off", () => {
  const recoveryOf = (actions) => {
    const seek = actions.find((a) => a.type === "seek");
    return seek?.recovery ? { to: seek.to, play: actions.some((a) => a.type === "play"), why: seek.why } : null;
  };
  // Played until 100 s, then WebKitGTK under load: paused at readyState 1, the buffer growing to 20 s ahead.
  const edge = settled();
  edge.tick(view(50.1, [[40, 50.3]]), 99_900); // playing: moved with the element playing
  const stuck = (t, end, extra = {}) => view(t, [[40, end]], { paused: true, readyState: 1, ...extra });
  // [now, view, recovered (to), why]
  const rows = [
    [100_500, stuck(50.1, 50.8), null, "not for a moment"],
    [101_900, stuck(50.1, 52), null, "not before recoverAfterMs"],
    [102_100, stuck(50.1, 70.1), 69.98, "2 s without playing, 20 s ahead"],
    [103_000, stuck(69.98, 71), null, "did not help, but not again at once"],
    [106_000, stuck(69.98, 74), null, "the next waits twice as long: 4 s"],
    [106_200, stuck(69.98, 74.2), 74.08, "4 s after the first"],
    [113_000, stuck(74.08, 81), null, "then 8 s"],
    [114_300, stuck(74.08, 82.3), 82.18, "8 s after the second"],
  ];
  for (const [now, v, to, why] of rows) {
    const r = recoveryOf(edge.tick(v, now));
    if (to === null) assert.equal(r, null, why);
    else {
      assert.ok(r && Math.abs(r.to - to) < 1e-9 && r.play, `${why}: ${JSON.stringify(r)}`);
      assert.match(r.why, /stuck paused at readyState 1 with [\d.]+ s buffered ahead/);
    }
  }
  assert.equal(edge.recoveries, 3);
  // Playing again resets the back-off: a later stuck spell is recovered after 2 s.
  edge.tick(view(82.2, [[40, 82.4]]), 115_000);
  assert.equal(recoveryOf(edge.tick(stuck(82.3, 84), 116_900)), null);
  assert.ok(recoveryOf(edge.tick(stuck(82.3, 85), 117_100)));
  assert.equal(edge.recoveries, 4);
});

test("no recovery: playing, a thin buffer, just joined, seeking, or autoplay off", () => {
  const anySeek = (actions) => actions.some((a) => a.type === "seek" && a.recovery);
  // [what, options, view at 110 s (joined at 0, played at 99.9 s)]
  const rows = [
    ["playing (readyState 4)", {}, view(60, [[50, 60.5]])],
    ["paused with a thin buffer (starved: nothing to recover to)", {}, view(60, [[50, 60.4]], { paused: true, readyState: 1 })],
    ["seeking", {}, view(60, [[50, 70]], { paused: true, readyState: 1, seeking: true })],
    ["autoplay off: a paused player is the user's", { autoplay: false }, view(60, [[50, 70]], { paused: true, readyState: 4 })],
  ];
  for (const [what, options, v] of rows) {
    const edge = settled(options);
    edge.tick(view(59.9, [[50, 60]]), 99_900);
    assert.equal(anySeek(edge.tick(v, 110_000)), false, what);
  }
  // just joined (a new MediaSource): the first frame may take a moment
  const edge = fresh();
  edge.joined(109_000);
  assert.equal(anySeek(edge.tick(view(60, [[50, 70]], { paused: true, readyState: 1 }), 110_000)), false, "just joined");
  assert.ok(anySeek(edge.tick(view(60, [[50, 71]], { paused: true, readyState: 1 }), 111_100)), "... until recoverAfterMs after the join");
  // playing at readyState 1 (nothing to show, not paused) with media ahead: recovered too
  const r = fresh();
  r.joined(0);
  assert.ok(anySeek(r.tick(view(60, [[50, 70]], { readyState: 1 }), 110_000)), "readyState 1, not paused");
});

test("a seek that never ends (WebKitGTK under load: paused, seeking, readyState 1, 20 s buffered) is recovered", () => {
  const edge = fresh();
  // The join's jump to 0.055; the seek never completes while the buffer grows.
  const seeking = (end) => view(0.055, [[0.004, end]], { paused: true, readyState: 1, seeking: true });
  const recovery = (actions) => actions.find((a) => a.type === "seek" && a.recovery);
  edge.joined(100_000);
  assert.deepEqual(edge.tick(seeking(1), 100_100), [], "a seek that runs: nothing to decide");
  assert.deepEqual(edge.tick(seeking(2), 101_000), []);
  assert.deepEqual(edge.tick(seeking(3), 102_000), [], "not before recoverAfterMs of seeking");
  const actions = edge.tick(seeking(19.78), 102_200);
  const seek = recovery(actions);
  assert.ok(seek && Math.abs(seek.to - 19.66) < 1e-9, JSON.stringify(actions));
  assert.match(seek.why, /stuck paused, seeking at readyState 1 with 19\.73 s buffered ahead/);
  assert.ok(actions.some((a) => a.type === "play"));
  // The new seek gets its own time, and the next recovery backs off (4 s after the first).
  assert.deepEqual(edge.tick(view(19.66, [[0.004, 20.5]], { paused: true, readyState: 1, seeking: true }), 104_500), []);
  assert.deepEqual(edge.tick(view(19.66, [[0.004, 24]], { paused: true, readyState: 1, seeking: true }), 106_300), [], "seeking for 1.8 s only");
  assert.ok(recovery(edge.tick(view(19.66, [[0.004, 24.3]], { paused: true, readyState: 1, seeking: true }), 106_600)));
  assert.equal(edge.recoveries, 2);
});
