// Tables of the page's version 2 merge (client/merge.js): the join burst and the stream topic back into one
// sequence. Synthetic messages through a stand-in classifier, then the server's real fMP4 (`mqtt-video probe
// --out`) through the real one.

import { test } from "node:test";
import assert from "node:assert/strict";
import { classify, MAX_OUT_OF_ORDER, SequenceMerge } from "../../client/merge.js";
import { parseInit } from "../../client/mp4.js";
import { probeOutput } from "./support.js";

// A synthetic message is three bytes: kind (0 init, 1 fragment, 2 no sequence number), sequence, keyframe.
const INIT = Uint8Array.of(0, 0, 0);
const frag = (seq, key = false) => Uint8Array.of(1, seq, key ? 1 : 0);
const standIn = (bytes, init) => {
  if (bytes[0] === 0) return { kind: "init", init: {} };
  if (bytes[0] === 2) return { kind: "fragment", seq: null, keyframe: null };
  return { kind: "fragment", seq: bytes[1], keyframe: init ? bytes[2] === 1 : null };
};
/** What came out, as "init", or sequence numbers with a K for a keyframe. */
const show = (msgs) => msgs.map((m) => (m[0] === 0 ? "init" : m[0] === 2 ? "bare" : `${m[1]}${m[2] ? "K" : ""}`));

function run(messages) {
  const merge = new SequenceMerge(standIn);
  const out = [];
  for (const m of messages) out.push(...merge.push(m));
  return { out: show(out), merge };
}

test("the burst and the stream topic come out as one gapless sequence", () => {
  // [what, messages in arrival order, what comes out, duplicates, skipped]
  const rows = [
    ["the burst, then live", [INIT, frag(10, true), frag(11), frag(12), frag(13)], ["init", "10K", "11", "12", "13"], 0, 0],
    [
      "live fragments overtake the end of the burst",
      [INIT, frag(10, true), frag(13), frag(11), frag(14), frag(12)],
      ["init", "10K", "11", "12", "13", "14"],
      0,
      0,
    ],
    [
      "a fragment on both topics across the hand-over",
      [INIT, frag(10, true), frag(11), frag(12), frag(12), frag(11), frag(13)],
      ["init", "10K", "11", "12", "13"],
      2,
      0,
    ],
    [
      "live fragments before the burst's init wait for it and its keyframe",
      [frag(13), frag(14), INIT, frag(10, true), frag(11), frag(12)],
      ["init", "10K", "11", "12", "13", "14"],
      0,
      0,
    ],
    [
      "fragments before the first keyframe are not shown",
      [INIT, frag(8), frag(9), frag(10, true), frag(11)],
      ["init", "10K", "11"],
      0,
      0,
    ],
    [
      "the gateway shed up to a keyframe: go on from it at once",
      [INIT, frag(10, true), frag(11), frag(20, true), frag(21)],
      ["init", "10K", "11", "20K", "21"],
      0,
      8,
    ],
    [
      "a late fragment of a GOP already left behind is dropped",
      [INIT, frag(10, true), frag(11), frag(20, true), frag(12)],
      ["init", "10K", "11", "20K"],
      1,
      8,
    ],
    [
      "a new init segment in band lets the older fragments out first",
      [INIT, frag(10, true), frag(12), INIT, frag(13, true)],
      ["init", "10K", "12", "init", "13K"],
      0,
      0,
    ],
    ["a message without a sequence number passes as it is", [INIT, frag(10, true), Uint8Array.of(2, 0, 0)], ["init", "10K", "bare"], 0, 0],
  ];
  for (const [what, messages, expected, duplicates, skipped] of rows) {
    const { out, merge } = run(messages);
    assert.deepEqual(out, expected, what);
    assert.deepEqual([merge.duplicates, merge.skipped], [duplicates, skipped], what);
  }
});

test("a fragment that never comes is given up after MAX_OUT_OF_ORDER later ones", () => {
  const later = Array.from({ length: MAX_OUT_OF_ORDER + 1 }, (_, i) => frag(12 + i));
  const { out, merge } = run([INIT, frag(10, true), ...later.slice(0, MAX_OUT_OF_ORDER)]);
  assert.deepEqual(out, ["init", "10K"], "held while it may still come");
  const more = merge.push(later[MAX_OUT_OF_ORDER]);
  assert.deepEqual(show(more), later.map((m) => `${m[1]}`));
  assert.equal(merge.skipped, 1);
  // With no keyframe at all, the lowest starts once that many are waiting.
  const { out: unkeyed } = run([INIT, ...Array.from({ length: MAX_OUT_OF_ORDER + 1 }, (_, i) => frag(5 + i))]);
  assert.equal(unkeyed.length, 1 + MAX_OUT_OF_ORDER + 1);
  assert.equal(unkeyed[1], "5");
});

test("without an init segment nothing comes out, and what waits is bounded", () => {
  const merge = new SequenceMerge(standIn);
  for (let i = 0; i < 250; i++) assert.deepEqual(merge.push(frag(i % 250, i % 30 === 0)), []);
  assert.ok(merge.waiting.size <= 4 * MAX_OUT_OF_ORDER, `${merge.waiting.size} waiting`);
});

test("the server's real fragments, split over two topics as a join does, merge back in order", { timeout: 60_000 }, (t) => {
  const probe = probeOutput(3);
  if (!probe) {
    t.skip("the server binary is not built");
    return;
  }
  const { init, fragments } = probe;
  assert.ok(fragments.length > 60, `${fragments.length} fragments`);
  // The burst: init and the first 40 fragments on the reply topic; live from fragment ~31 on the stream
  // topic, its first ones arriving before the burst's init. Interleaved as two topics on one connection are.
  const burst = [init, ...fragments.slice(0, 40)];
  // (Not starting at a keyframe: one that overtook the init would rightly start the play there.)
  const info = parseInit(init);
  const from = [31, 32, 33, 34, 35].find((i) => !classify(fragments[i], info).keyframe);
  const live = fragments.slice(from);
  const arrivals = [live[0], live[1]];
  let b = 0;
  let l = 2;
  while (b < burst.length || l < live.length) {
    if (b < burst.length) arrivals.push(burst[b++]);
    if (b < burst.length) arrivals.push(burst[b++]);
    if (l < live.length) arrivals.push(live[l++]);
  }
  const merge = new SequenceMerge();
  const out = arrivals.flatMap((m) => merge.push(m));
  assert.equal(out.length, 1 + fragments.length, "every fragment once");
  assert.deepEqual(out[0], init);
  for (let i = 0; i < fragments.length; i++) assert.deepEqual(out[i + 1], fragments[i], `fragment ${i} in its place`);
  assert.equal(merge.duplicates, 40 - from, "the overlap dropped");
  assert.equal(merge.skipped, 0);
});
