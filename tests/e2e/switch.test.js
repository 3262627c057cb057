// Tables of the rendition hand-over (client/switch.js): what of renditions A and B goes to the renderer while
// the page moves from A to B. Synthetic facts at 10 frames a second with a keyframe every 10 frames, then the
// server's real fragments (`mqtt-video probe --out`) as both renditions, through mp4.js's messageFacts.

import { test } from "node:test";
import assert from "node:assert/strict";
import { messageFacts, parseInit } from "../../client/mp4.js";
import { Handover, SWITCH_DEFAULTS } from "../../client/switch.js";
import { probeOutput } from "./support.js";

const FRAME = 0.1;
/** Frame `n` of a rendition as facts: media [n/10, (n+1)/10) s. */
const frag = (n, keyframe = false) => ({ kind: "fragment", bytes: 100, seq: n, video: true, keyframe, start: n * FRAME, end: (n + 1) * FRAME, wallMs: null });
const INIT = { kind: "init", init: {} };

/**
 * Runs events through a hand-over from A to B, A fed up to `fedEnd`: ["A", n, key] and ["B", n, key] are
 * fragments, ["B init"] B's init segment, ["C", n] another rendition's fragment, ["wait", ms] lets time pass
 * (with a tick). Every message takes 5 ms. Returns what was fed ("A5", "B10K", "B init") and the outcome.
 */
function run(fedEnd, events, options = {}) {
  const h = new Handover({ from: "A", to: "B", fedEnd, now: 0, ...options });
  let now = 0;
  const fed = [];
  let done = null;
  const take = (step) => {
    for (const f of step.feed) fed.push(f.init ? `${f.rendition} init` : f.payload);
    done = step.done;
  };
  for (const [what, n, key] of events) {
    if (what === "wait") {
      now += n;
      take(h.tick(now));
      continue;
    }
    now += 5;
    const name = what === "B init" ? "B" : what;
    const facts = what === "B init" ? INIT : frag(n, key);
    take(h.push(name, what === "B init" ? "B init" : `${what}${n}${key ? "K" : ""}`, facts, now));
    take(h.tick(now));
  }
  return { fed, done, handover: h };
}

test("a switch down over a slow link: A is fed no more, and B's first keyframe after what A showed switches", () => {
  // B's keyframes come 3 frames behind A's (queued behind them on the link); A's keyframes go out before.
  const late = [["B init"], ["B", 5, true], ["A", 10, true], ["wait", 300], ["A", 11], ["A", 12], ["A", 13], ["B", 10, true], ["A", 14], ["A", 15], ["A", 20, true], ["wait", 300], ["A", 21], ["B", 20, true], ["B", 21]];
  // Without it the hand-over waits on, A's keyframes are released after the hold, and B's come past their time.
  const seamless = run(0.95, late, { switchHoldMs: 200 });
  assert.equal(seamless.done, null, "not switched: each of B's keyframes came after A was shown past it");
  // With it: B's join-burst keyframe (5) is older than what A showed; B's at 10 switches, with the gap A left.
  const cut = run(0.95, late, { switchHoldMs: 200, switchCut: true });
  assert.deepEqual(cut.fed, ["B init", "B10K"]); // (then the caller feeds B)
  assert.equal(cut.done?.ok, true, JSON.stringify(cut.done));
  assert.equal(cut.done.at, 1.0);
  assert.equal(cut.done.gapMs, 50, "A was shown up to 0.95 s");
});

test("the picture goes from A to B at a keyframe of B, with no gap and no overlap", () => {
  // [what, A fed up to (s), events, fed, switched at (s), gap (ms)]
  const rows = [
    [
      "B's keyframe after A's fragments up to it: the switch, at once",
      0.5,
      [["B init"], ["B", 5], ["A", 5], ["A", 6], ["B", 6], ["A", 7], ["A", 8], ["A", 9], ["B", 10, true], ["A", 10, true], ["A", 11]],
      ["A5", "A6", "A7", "A8", "A9", "B init", "B10K"],
      1.0,
      0,
    ],
    [
      "A's keyframe first: held until B's at the same time comes, then dropped",
      1.0,
      [["B init"], ["B", 9], ["A", 10, true], ["A", 11], ["B", 10, true], ["B", 11]],
      ["B init", "B10K"],
      1.0,
      0,
    ],
    [
      "B first, A behind: B waits for A's last fragments before its keyframe",
      0.8,
      [["B init"], ["B", 10, true], ["B", 11], ["A", 8], ["A", 9], ["A", 10, true]],
      ["A8", "A9", "B init", "B10K", "B11"],
      1.0,
      0,
    ],
    [
      "A's fragments before T lost on the way: A's first one at T switches at once",
      0.8,
      [["B init"], ["B", 10, true], ["A", 10, true]],
      ["B init", "B10K"],
      1.0,
      200,
    ],
    [
      "B waits for A no longer than switchHoldMs",
      0.8,
      [["B init"], ["B", 10, true], ["wait", 100], ["B", 11], ["wait", 150], ["A", 8]],
      ["B init", "B10K", "B11"],
      1.0,
      200,
    ],
    [
      "the join burst's keyframe is older than what A showed: B's next keyframe is the switch",
      1.5,
      [["B init"], ["B", 10, true], ["B", 11], ["B", 15], ["A", 15], ["B", 16], ["A", 16], ["B", 19], ["A", 19], ["A", 20, true], ["B", 20, true]],
      ["A15", "A16", "A19", "B init", "B20K"],
      2.0,
      0,
    ],
    [
      "what A was fed up to is unknown: B's first keyframe switches",
      null,
      [["B init"], ["B", 10, true]],
      ["B init", "B10K"],
      1.0,
      0,
    ],
    [
      "a new init of B drops what was held of the old one: B's next keyframe after it",
      0.8,
      [["B init"], ["B", 10, true], ["B init"], ["B", 11], ["A", 8], ["A", 9], ["A", 10, true], ["B", 12], ["A", 11], ["wait", 100], ["A", 19], ["A", 20, true], ["B", 20, true]],
      ["A8", "A9", "A10K", "A11", "A19", "B init", "B20K"],
      2.0,
      0,
    ],
    [
      "another rendition's fragments are dropped",
      0.9,
      [["B init"], ["C", 9], ["A", 9], ["C", 10, true], ["B", 10, true]],
      ["A9", "B init", "B10K"],
      1.0,
      0,
    ],
  ];
  for (const [what, fedEnd, events, fed, at, gapMs] of rows) {
    const out = run(fedEnd, events);
    assert.deepEqual(out.fed, fed, what);
    assert.equal(out.done?.ok, true, what);
    assert.ok(Math.abs(out.done.at - at) < 1e-9, `${what}: at ${out.done.at}`);
    assert.equal(out.done.gapMs, gapMs, what);
  }
});

test("an A keyframe is held only while B's at the same time may still come", () => {
  // [what, events, fed (no switch yet)]
  const rows = [
    [
      "held no longer than switchHoldMs, with what of A came behind it; then fed in order",
      [["B init"], ["B", 9], ["A", 10, true], ["A", 11], ["wait", 100], ["A", 12], ["wait", 100], ["A", 13]],
      ["A10K", "A11", "A12", "A13"],
    ],
    [
      "B got to the time of A's keyframe without one: A's goes out at once",
      [["B init"], ["B", 9], ["A", 10, true], ["B", 10], ["A", 11]],
      ["A10K", "A11"],
    ],
    ["B is already past it: not held", [["B init"], ["B", 11], ["A", 10, true]], ["A10K"]],
    [
      "held before B's init came (B's encoder starts at this keyframe)",
      [["A", 10, true], ["wait", 150], ["A", 11]],
      [],
    ],
  ];
  for (const [what, events, fed] of rows) {
    const out = run(0.9, events);
    assert.deepEqual(out.fed, fed, what);
    assert.equal(out.done, null, what);
  }
  // Held past the hold, B's keyframe at the same time is too late: the next one is the switch.
  const late = run(0.9, [["B init"], ["A", 10, true], ["wait", SWITCH_DEFAULTS.switchHoldMs], ["B", 10, true], ["A", 11], ["B", 11], ["A", 19], ["A", 20, true], ["B", 20, true]]);
  assert.deepEqual(late.fed, ["A10K", "A11", "A19", "B init", "B20K"]);
  assert.equal(late.handover.seen.missed, 1);
});

test("a switch that never happens is given up after switchTimeoutMs, saying why", () => {
  const t = SWITCH_DEFAULTS.switchTimeoutMs;
  // [what, events, the reason matches]
  const rows = [
    ["no init segment", [["A", 9], ["wait", t]], /no init segment of B came in 5\.0 s/],
    ["an init and nothing else", [["B init"], ["wait", t]], /B sent its init segment but no fragments/],
    ["fragments, never a keyframe", [["B init"], ["B", 11], ["B", 12], ["wait", t]], /2 fragments of B in 5\.0 s, none a keyframe/],
    ["only the join burst's keyframe, too old", [["B init"], ["B", 10, true], ["wait", t]], /the one keyframe of B that came \(its join burst's\) was older than what A had shown, and no later one came in 5\.0 s/],
    ["keyframes, all too late", [["B init"], ["B", 10, true], ["B", 11], ["B", 14, true], ["wait", t]], /each of the 2 keyframes of B came after A had been shown past its time/],
  ];
  for (const [what, events, why] of rows) {
    const out = run(1.5, events);
    assert.equal(out.done?.ok, false, what);
    assert.match(out.done.why, why, what);
  }
  // A held keyframe is not lost with the switch: it goes out when the hand-over gives up.
  const held = run(0.9, [["A", 10, true], ["wait", t]], { switchHoldMs: 10 * t });
  assert.deepEqual(held.fed, ["A10K"]);
  assert.equal(held.done.ok, false);
  // Nothing is taken once it is over.
  assert.deepEqual(held.handover.push("A", "A11", frag(11), t + 100).feed, []);
});

test("the server's real fragments as A and B: A up to a keyframe, then B's init and B from it", { timeout: 60_000 }, (t) => {
  const probe = probeOutput(3);
  if (!probe) {
    t.skip("the server binary is not built");
    return;
  }
  const { init, fragments } = probe;
  const info = parseInit(init);
  const facts = fragments.map((f) => messageFacts(f, info));
  const keys = facts.map((f, i) => (f.keyframe ? i : -1)).filter((i) => i > 0);
  assert.ok(keys.length >= 1, "a keyframe after the first");
  const k = keys[0];
  assert.ok(facts.every((f) => f.start !== null && f.end > f.start), "every fragment has its media time");
  for (let i = 1; i < facts.length; i++) assert.ok(Math.abs(facts[i].start - facts[i - 1].end) < 1e-6, `fragment ${i} follows the one before`);
  // A fed up to 5 fragments before the keyframe; then both arrive interleaved, B a little behind A.
  const h = new Handover({ from: "A", to: "B", fedEnd: facts[k - 5].end, now: 0 });
  const fed = [];
  let now = 0;
  const order = [["B", init, { kind: "init", init: info }]];
  for (let i = k - 4; i < fragments.length; i++) order.push(["A", fragments[i], facts[i], i], ["B", fragments[i], facts[i], i]);
  for (const [name, payload, f, i] of order) {
    now += 3;
    const step = h.push(name, payload, f, now);
    for (const out of step.feed) fed.push(out.init ? "B init" : `${out.rendition}${fragments.indexOf(out.payload)}`);
    if (step.done) break;
    assert.equal(h.tick(now).done, null, `no switch before the keyframe (fragment ${i})`);
  }
  const expected = [];
  for (let i = k - 4; i < k; i++) expected.push(`A${i}`);
  expected.push("B init", `B${k}`);
  assert.deepEqual(fed, expected);
  assert.equal(h.done.gapMs, 0);
  assert.ok(Math.abs(h.done.at - facts[k].start) < 1e-9);
});
