// Tables of the page's rendition choice: the link meter (client/link-meter.js) and the controller
// (client/abr.js), then both over a simulated link: a token bucket with an 8 KiB burst and no queue of its
// own (the throttling proxy the browser tests used before links.test.js), carrying a 720p `main` and a 360p `low` of the
// sizes the server's transcoder makes of the test's noise picture (keyframes 50 KB and 15 KB, other frames
// 14 KB and 2.4 KB, 30 fps, a keyframe a second).

import { test } from "node:test";
import assert from "node:assert/strict";
import { ABR_DEFAULTS, AbrController } from "../../client/abr.js";
import { LinkMeter } from "../../client/link-meter.js";

test("the meter: lag above the least delay, keyframes against the small fragments before them", () => {
  const m = new LinkMeter();
  // [now, bytes, keyframe, delay] -> the lag of each
  const rows = [
    [0, 2000, false, 50, 0],
    [33, 2000, false, 40, 0], // a smaller delay: the new floor
    [66, 2000, false, 45, 5],
    [100, 2000, false, 41, 1],
    [133, 15000, true, 70, 30],
    [166, 2000, false, 40, 0],
  ];
  for (const [now, bytes, keyframe, delayMs, lag] of rows) {
    m.fragment({ now, bytes, mediaMs: 33, keyframe, delayMs });
    assert.equal(m.current.lagMs, lag, `lag at ${now}`);
  }
  const obs = m.take(200);
  assert.equal(obs.bytes, 25000);
  assert.equal(obs.mediaMs, 6 * 33);
  assert.equal(obs.fragments, 6);
  assert.equal(obs.lagMaxMs, 30);
  // The keyframe: 70 ms against the median 41 ms of the four before it; they were 1 ms over the floor.
  assert.deepEqual(obs.keyframes, [{ bytes: 15000, extraMs: 29, backlogMs: 1 }]);
  assert.deepEqual(m.take(300).keyframes, [], "each keyframe once");

  // The floor is the least of the last 10 s: a delay that goes down after it stays the floor.
  const w = new LinkMeter();
  w.fragment({ now: 0, bytes: 1, delayMs: 10 });
  w.fragment({ now: 5000, bytes: 1, delayMs: 30 });
  assert.equal(w.current.lagMs, 20);
  w.fragment({ now: 10_500, bytes: 1, delayMs: 30 });
  assert.equal(w.current.lagMs, 0, "10 ms fell out of the window");

  // Another clock (media time instead of prft) starts afresh; a keyframe needs three small ones before it.
  const c = new LinkMeter();
  c.fragment({ now: 0, bytes: 1, delayMs: 5, clock: "prft" });
  c.fragment({ now: 10, bytes: 1, delayMs: 900, clock: "media" });
  assert.equal(c.current.lagMs, 0);
  c.fragment({ now: 20, bytes: 20000, keyframe: true, delayMs: 950, clock: "media" });
  assert.deepEqual(c.take(30).keyframes, []);
  // The busy rate: late fragments queued behind a link come at its rate; a late burst, at once.
  const b = new LinkMeter();
  b.fragment({ now: 0, bytes: 5000, delayMs: 10 });
  for (const at of [140, 180, 220]) b.fragment({ now: at, bytes: 5000, delayMs: 110 }); // 5000 B in 40 ms
  b.fragment({ now: 221, bytes: 5000, delayMs: 20 }); // (not late)
  assert.equal(b.take(250).busyKbps, 1000);
  for (const at of [300, 300.1, 300.2]) b.fragment({ now: at, bytes: 5000, delayMs: 300 });
  assert.equal(b.take(350).busyKbps, 80_000, "at once: as good as 0.5 ms apart");
  assert.equal(b.take(400).busyKbps, null, "none late: no busy rate");

  // The link's jitter: the largest keyframe delay of the last 10 s, of keyframes not behind a backlog, not
  // a stall.
  const j = new LinkMeter();
  let now = 0;
  const second = (extras) => {
    for (const [extra, backlog = 0] of extras) {
      for (let i = 0; i < 10; i++) j.fragment({ now: (now += 33), bytes: 2000, delayMs: 10 + backlog });
      j.fragment({ now: (now += 33), bytes: 15000, keyframe: true, delayMs: 10 + backlog + extra });
    }
  };
  assert.equal(j.jitterMs(), 0, "none yet");
  second([[20]]);
  assert.equal(j.jitterMs(), 20, "one: that one");
  second([[40], [30], [90, 100], [400]]);
  assert.equal(j.jitterMs(), 40, "the one behind a backlog is not jitter, nor a stall of 400 ms");
  now += 11_000;
  second([[5], [8]]);
  assert.equal(j.jitterMs(), 8, "older than 10 s: gone");
    // After a switch the new rendition's keyframe is not compared with the old one's fragments.
  const s = new LinkMeter();
  for (let i = 0; i < 5; i++) s.fragment({ now: i * 33, bytes: 14000, delayMs: 10 });
  s.switched();
  s.fragment({ now: 200, bytes: 15000, keyframe: true, delayMs: 40 });
  assert.deepEqual(s.take(250).keyframes, []);
});

// ----- the controller, observation by observation ----------------------------------------------------------

const RENDITIONS = [
  { name: "main", bitrateKbps: 3300 },
  { name: "low", bitrateKbps: 600 },
];

/** An observation of 250 ms on pace: 250 ms of media, `kbps` delivered, no lag; `o` overrides. */
const obs = (now, o = {}) => ({
  now,
  intervalMs: 250,
  bytes: ((o.kbps ?? 3300) * 250) / 8,
  mediaMs: 250,
  fragments: 8,
  lagMs: 0,
  lagMaxMs: 0,
  keyframes: [],
  skipped: 0,
  ...o,
});

/**
 * Feeds `rows` of [from ms, to ms, observation fields, or a function of (now, rendition played, whether a
 * probe runs) giving them] every 250 ms; returns the switches with their time. `probe(now, {bytes, for})`
 * answers a probe: {kbps (null: timed out), afterMs}; without it there is no gateway to probe (blind probes).
 */
function drive(abr, rows, { probe } = {}) {
  if (!probe) abr.noProbe();
  const out = [];
  let answer = null; // {at, kbps}
  for (const [from, to, o] of rows) {
    for (let now = from; now < to; now += 250) {
      if (answer && now >= answer.at) {
        abr.probed(answer.kbps, now);
        answer = null;
      }
      const d = abr.observe(obs(now, typeof o === "function" ? o(now, abr.playing, abr.probing !== null) : o));
      if (d?.probe) {
        const { kbps, afterMs = 0 } = probe(now, d.probe);
        answer = { at: now + afterMs, kbps };
      } else if (d) {
        out.push({ at: now, ...d });
        abr.switched(d.switchTo, now); // (the hand-over is instant here)
      }
    }
  }
  return out;
}

test("down, fast, when the rendition played does not fit", () => {
  // [what, renditions, observations, the first decision: [at, to, why matches] or null]
  const three = [...RENDITIONS, { name: "mid", bitrateKbps: 1500 }];
  const rows = [
    ["the gateway shed fragments", RENDITIONS, [[0, 2000, {}], [2000, 3000, { skipped: 3 }]], [2000, "low", /shed 3 fragments of main/]],
    // (late fragments at the link's pace: busyKbps)
    ["lag in two observations in a row", RENDITIONS, [[0, 2000, {}], [2000, 2250, { lagMaxMs: 300, busyKbps: 2000 }], [2250, 2500, {}], [2500, 3000, { lagMaxMs: 260, busyKbps: 2000 }]], [2750, "low", /come 260 ms late/]],
    ["nothing arriving at all: the link or the source? nothing to tell", RENDITIONS, [[0, 2000, {}], [2000, 4000, { bytes: 0, mediaMs: 0, fragments: 0, lagMs: null, lagMaxMs: null }]], null],
    ["less than real time over 2 s", RENDITIONS, [[0, 2000, {}], [2000, 6000, { mediaMs: 150, kbps: 2000, busyKbps: 2000 }]], [2750, "low", /arrives; the link delivered 2\d\d\d kbit\/s/]],
    ["on pace with a join burst's 1.5 x: nothing", RENDITIONS, [[0, 6000, { mediaMs: 375 }]], null],
    ["the lowest already: nothing to do", [{ name: "low", bitrateKbps: 600 }], [[0, 3000, { skipped: 2 }]], null],
    ["to the best rendition that fits what the link delivered", three, [[0, 2000, { kbps: 2200 }], [2000, 6000, { mediaMs: 150, kbps: 2200, busyKbps: 2200 }]], [2750, "mid", /2200 kbit/]],
    ["to the lowest when none fits", three, [[0, 2000, { kbps: 800 }], [2000, 6000, { mediaMs: 60, kbps: 800, busyKbps: 800 }]], [2750, "low", /800 kbit/]],
  ];
  for (const [what, renditions, observations, expected] of rows) {
    const abr = new AbrController(renditions, renditions[0].name, 0);
    const [first] = drive(abr, observations);
    if (!expected) {
      assert.equal(first, undefined, what);
      continue;
    }
    assert.ok(first, `${what}: no decision`);
    assert.deepEqual([first.at, first.switchTo], expected.slice(0, 2), what);
    assert.match(first.why, expected[2], what);
  }
  // Late fragments that came in a burst, far faster than main needs, were not held up by the link.
  for (const [busyKbps, decided] of [[50_000, false], [2000, true]]) {
    const abr = new AbrController(RENDITIONS, "main", 0);
    const [first] = drive(abr, [[0, 2000, {}], [2000, 3000, { lagMaxMs: 400, busyKbps }]]);
    assert.equal(!!first, decided, `late fragments at ${busyKbps} kbit/s: ${first?.why}`);
  }
  // The first second after a switch is the switch's own.
  const abr = new AbrController(RENDITIONS, "main", 0);
  abr.observe(obs(0));
  abr.switched("main", 1000); // (say a switch to main just completed)
  assert.equal(abr.observe(obs(1250, { skipped: 4 })), null, "within settleMs");
  assert.equal(abr.observe(obs(2250, { skipped: 4 })).switchTo, "low", "after it");
  assert.equal(abr.observe(obs(2500, { skipped: 4 })), null, "nothing more while the switch is pending");
});

/** A keyframe sample on a link of `kbps` with the throttle's burst: {bytes, extraMs, backlogMs}. */
const keyframe = (kbps, bytes = 15000, burst = 8192) => ({ bytes, extraMs: ((bytes - burst) * 8) / kbps, backlogMs: 1 });

test("up, only on evidence that the higher rendition fits, and never flapping", () => {
  const on = (name) => new AbrController(RENDITIONS, name, 0);
  // The rendition played at its bitrate, with a keyframe a second that tells of a link of `kbps`.
  const keyEverySecond = (kbps, bytes) => (now, playing) => ({
    kbps: playing === "main" ? 3800 : 700,
    keyframes: now % 1000 === 0 ? [keyframe(kbps, bytes)] : [],
  });
  // [what, observations on low, the first decision: [at, to] or null]
  const rows = [
    ["a link of 2 Mbit/s: main does not fit, never up", [[0, 60_000, keyEverySecond(2000)]], null],
    ["a link of 4 Mbit/s: main fits, but not with the margin", [[0, 60_000, keyEverySecond(4000)]], null],
    ["an unlimited link: up once stable and held for 5 s", [[0, 60_000, keyEverySecond(100_000)]], [5000, "main"]],
    [
      "the link recovers: up once three keyframes of five say so",
      [[0, 20_000, keyEverySecond(2000)], [20_000, 60_000, keyEverySecond(100_000)]],
      [22_000, "main"],
    ],
    ["lag in the last 5 s: not yet", [[0, 4000, keyEverySecond(100_000)], [4000, 4250, { lagMaxMs: 150 }], [4250, 60_000, keyEverySecond(100_000)]], [9000, "main"]],
    [
      "keyframes backlogged behind the link's queue tell nothing",
      [[0, 60_000, (now) => ({ kbps: 700, keyframes: now % 1000 === 0 ? [{ ...keyframe(100_000), backlogMs: 80 }] : [] })]],
      [30_000, "main"], // (so only the probe, after probeAfterMs)
    ],
    ["keyframes within the burst give no estimate: a probe after 30 s", [[0, 60_000, keyEverySecond(2000, 6000)]], [30_000, "main"]],
  ];
  for (const [what, observations, expected] of rows) {
    const [first] = drive(on("low"), observations);
    if (!expected) assert.equal(first, undefined, `${what}: ${JSON.stringify(first)}`);
    else assert.deepEqual(first && [first.at, first.switchTo], expected, `${what}: ${first?.why}`);
  }

  // A failed up-switch (down again within failWindowMs) backs off, doubling, and needs more margin; one that
  // holds makes up for it.
  const abr = on("low");
  const decisions = drive(abr, [
    [0, 10_000, keyEverySecond(100_000)], // up at 5 s
    [10_000, 11_000, { skipped: 2 }], // main does not fit after all: down
    [11_000, 60_000, keyEverySecond(100_000)],
  ]);
  assert.deepEqual(
    decisions.map((d) => [d.at, d.switchTo]),
    [[5000, "main"], [10_000, "low"], [10_000 + ABR_DEFAULTS.backoffMs, "main"]],
  );
  assert.equal(abr.failures, 0, "the second up-switch held: the failure is made up for");
  const twice = on("low");
  drive(twice, [[0, 6000, keyEverySecond(100_000)], [6000, 7000, { skipped: 1 }]]);
  assert.equal(twice.failures, 1);
  assert.equal(twice.upBlockedUntil, 6000 + ABR_DEFAULTS.backoffMs);
  drive(twice, [[7000, 26_250, keyEverySecond(100_000)], [26_250, 28_000, { skipped: 1 }]]);
  assert.equal(twice.failures, 2);
  assert.equal(twice.upBlockedUntil, 27_000 + 2 * ABR_DEFAULTS.backoffMs, "the backoff doubles");
});

test("with the gateway's probe: up when a burst shows room, probes at most every 8 s, a probe's delay is no reason to move", () => {
  // On low (700 kbit/s) over a link of 2 Mbit/s that recovers at 30 s; a probe beside low gets what low leaves.
  const abr = new AbrController(RENDITIONS, "low", 0);
  const probes = [];
  const link = (now) => (now < 30_000 ? 2000 - 700 : 200_000);
  const probe = (now, p) => {
    probes.push({ at: now, ...p });
    return { kbps: link(now), afterMs: 250 };
  };
  const up = drive(abr, [[0, 60_000, (now, playing, probing) => ({ kbps: 700, lagMaxMs: probing ? 220 : 0 })]], { probe });
  assert.deepEqual(probes.map((p) => p.at), [5000, 10_250, 18_500, 26_750, 35_000], "held 5 s after the start, then 5 s, then every 8 s");
  // main needs 3300 x 1.15: 120 ms of it is 57 KB; once a probe measured 1300 kbit/s, 250 ms of that would be
  // 41 KB, under the least a probe sends (48 KB).
  assert.deepEqual(probes.map((p) => [p.bytes, p.for]), [[56_925, "main"], ...Array(4).fill([48 * 1024, "main"])]);
  // A keyframe let through at once by a link's burst is no reason to go up: only a probe is.
  const bursty = new AbrController(RENDITIONS, "low", 0);
  const fooled = drive(bursty, [[0, 20_000, (now) => ({ kbps: 700, keyframes: now % 1000 === 0 ? [{ bytes: 20_000, extraMs: 0, backlogMs: 0 }] : [] })]], {
    probe: () => ({ kbps: 1300, afterMs: 250 }),
  });
  assert.ok(bursty.capacityKbps(20_000) > 10_000, "the keyframes' estimate says a fast link");
  assert.deepEqual(fooled, [], "the probes say otherwise");
  assert.deepEqual(up.map((d) => [d.at, d.switchTo]), [[35_250, "main"]], "up at the first probe after the link recovered");
  assert.match(up[0].why, /a probe: the link carries about 200700 kbit\/s; main needs 3795/);

  // Three renditions, on mid: the lag a probe's burst puts on mid is no reason to go down, nor to wait.
  const three = [...RENDITIONS, { name: "mid", bitrateKbps: 1500 }];
  const m = new AbrController(three, "mid", 0);
  const moves = drive(m, [[0, 30_000, (now, playing, probing) => ({ kbps: 1700, lagMaxMs: probing ? 400 : 0, busyKbps: probing ? 1500 : null })]], {
    probe: () => ({ kbps: 300, afterMs: 500 }),
  });
  assert.deepEqual(moves, [], "no move: the probes found no room and their lag is their own");
  assert.ok(m.emptyProbes >= 3, `${m.emptyProbes} probes`);

  // A probe that timed out found no room; a page whose broker is elsewhere has no probe: blind ones.
  const t = new AbrController(RENDITIONS, "low", 0);
  drive(t, [[0, 5500, { kbps: 700 }]], { probe: () => ({ kbps: null, afterMs: 0 }) });
  assert.equal(t.emptyProbes, 1);
  const blind = new AbrController(RENDITIONS, "low", 0);
  const [b] = drive(blind, [[0, 40_000, { kbps: 700 }]]);
  assert.deepEqual([b.at, b.switchTo], [ABR_DEFAULTS.probeAfterMs, "main"]);
  assert.match(b.why, /a probe: no estimate/);
});

test("a rendition the server refused is never chosen again", () => {
  const three = [...RENDITIONS, { name: "mid", bitrateKbps: 1500 }];
  const down = new AbrController(three, "main", 0);
  down.drop("mid");
  const [d] = drive(down, [[0, 2000, { kbps: 2200 }], [2000, 6000, { mediaMs: 150, kbps: 2200, busyKbps: 2200 }]]);
  assert.equal(d.switchTo, "low", "mid would fit, but it is gone");
  const up = new AbrController(three, "low", 0);
  up.drop("mid");
  const [u] = drive(up, [[0, 10_000, (now) => ({ kbps: 700, keyframes: now % 1000 === 0 ? [keyframe(100_000)] : [] })]]);
  assert.equal(u.switchTo, "main", "over the gone one");
  const alone = new AbrController(RENDITIONS, "main", 0);
  alone.drop("low");
  assert.deepEqual(drive(alone, [[0, 3000, { skipped: 2 }]]), [], "nothing left to go down to");
});

test("a page that stood still (a blocked main thread) says nothing about the link", () => {
  const abr = new AbrController(RENDITIONS, "main", 0);
  drive(abr, [[0, 2000, {}]]);
  // 3 s without an observation, then the backlog arrives at once: late and fast, but not the link's doing.
  assert.equal(abr.observe(obs(5000, { lagMaxMs: 3000, mediaMs: 3000, intervalMs: 3000 })), null);
  assert.equal(abr.observe(obs(5250, { lagMaxMs: 40 })), null);
  assert.equal(abr.observe(obs(5500)), null);
});

// ----- both over a simulated link ------------------------------------------------------------------------------

const SIZES = { main: { key: 50_000, other: 14_000 }, low: { key: 15_000, other: 2400 } };
const FPS = 30;

/**
 * The stream through a link whose rate (bit/s, 0: unlimited) is `rate(t)`: a token bucket with an 8 KiB burst
 * sending 4 KiB at a time, behind the gateway's queue, which sheds fragments up
 * to a keyframe once its oldest has waited 400 ms (until a keyframe finds it under 150 ms). The meter and the
 * controller watch what arrives; a switch takes effect at the first keyframe 300 ms after the decision. The
 * server sends a fragment at `emit(produced)` (5 ms after it was captured).
 * Returns {switches: [{at, to, why}], samples: [{t, playing, lagMs}]}.
 */
function simulate(rate, seconds, start = "main", emit = (produced) => produced + 5) {
  const abr = new AbrController(RENDITIONS, start, 0);
  abr.noProbe(); // (the keyframes' estimate and blind probes: the gateway's probe is not simulated here)
  const meter = new LinkMeter();
  let playing = start;
  let next = null; // {to, from: ms}
  let tokens = 8192;
  let linkAt = 0; // when the link has sent everything accepted so far
  let last = 0; // when the bucket was last topped up
  const inFlight = []; // [{queued, finish}] accepted and not yet arrived
  let shedding = false;
  let skipped = 0;
  const arrivals = []; // [{at, bytes, keyframe, produced}] in arrival order
  const switches = [];
  const samples = [];
  let seed = 7;
  const jitter = () => ((seed = (seed * 48271) % 2147483647) / 2147483647) * 0.2 + 0.9;
  const send = (bytes, from) => {
    let t = Math.max(from, linkAt);
    for (let left = bytes; left > 0; left -= 4096) {
      const chunk = Math.min(4096, left);
      const bps = rate(t);
      if (bps > 0) {
        const perMs = bps / 8000;
        tokens = Math.min(8192, tokens + (t - last) * perMs);
        last = t;
        tokens -= chunk;
        if (tokens < 0) t += -tokens / perMs;
      } else {
        tokens = 8192;
        last = t;
      }
    }
    linkAt = t;
    return t + 1; // a millisecond of network
  };
  let nextObservation = 250;
  const frames = seconds * FPS;
  for (let i = 0; i < frames; i++) {
    const produced = (i * 1000) / FPS;
    // Everything that arrived by now goes to the meter, and the controller looks every 250 ms.
    for (; nextObservation <= produced; nextObservation += 250) {
      const now = nextObservation;
      while (arrivals.length && arrivals[0].at <= now) {
        const a = arrivals.shift();
        meter.fragment({ now: a.at, bytes: a.bytes, mediaMs: 1000 / FPS, keyframe: a.keyframe, delayMs: a.at - a.produced });
      }
      const o = { ...meter.take(now), skipped };
      skipped = 0;
      samples.push({ t: now, playing, lagMs: o.lagMaxMs });
      const d = abr.observe(o);
      if (d) {
        next = { to: d.switchTo, from: now + 300 };
        switches.push({ at: now, to: d.switchTo, why: d.why });
      }
    }
    const keyframe = i % FPS === 0;
    if (keyframe && next && produced >= next.from) {
      playing = next.to;
      next = null;
      abr.switched(playing, produced);
      meter.switched();
    }
    const bytes = Math.round(SIZES[playing][keyframe ? "key" : "other"] * jitter());
    const queued = emit(produced); // when it reaches the gateway's queue
    while (inFlight.length && inFlight[0].finish <= queued) inFlight.shift();
    const waited = inFlight.length ? queued - inFlight[0].queued : 0;
    if (!shedding && waited > 400) {
      shedding = true;
      skipped += inFlight.length; // (what is queued goes too; approximately: those not yet on the wire)
    }
    if (shedding && !(keyframe && waited < 150)) {
      skipped++;
      continue;
    }
    shedding = false;
    const at = send(bytes, queued);
    inFlight.push({ queued, finish: at });
    arrivals.push({ at, bytes, keyframe, produced });
  }
  return { switches, samples };
}

const mbps = (m) => m * 1e6;

test("over a token-bucket link like the browser test's: down within a second or two, no flapping, up after it recovers", () => {
  // Unlimited, then 2 Mbit/s from 10 s to 40 s, then unlimited again.
  const { switches, samples } = simulate((t) => (t >= 10_000 && t < 40_000 ? mbps(2) : 0), 70);
  const trace = switches.map((s) => `${(s.at / 1000).toFixed(2)} s -> ${s.to}: ${s.why}`).join("\n");
  assert.equal(switches.length, 2, trace);
  const [down, up] = switches;
  assert.equal(down.to, "low", trace);
  assert.ok(down.at > 10_000 && down.at < 12_000, `down within 2 s of the throttle:\n${trace}`);
  assert.equal(up.to, "main", trace);
  assert.ok(up.at > 40_000 && up.at < 48_000, `up within 8 s of the recovery:\n${trace}`);
  // On low the 2 Mbit/s link carries it: no lag left once the backlog of main is gone.
  const onLow = samples.filter((s) => s.t > down.at + 3000 && s.t < 40_000);
  assert.ok(onLow.every((s) => s.playing === "low" && (s.lagMs ?? 0) < 100), `lag on low: ${Math.max(...onLow.map((s) => s.lagMs ?? 0))} ms`);
  console.log(`simulated 2 Mbit/s link: ${trace.replace(/\n/g, "; ")}`);
});

test("over links that carry main, or never carry it, nothing flaps", () => {
  // [what, link bit/s, start, switches expected]
  const rows = [
    ["6 Mbit/s carries main: it stays", mbps(6), "main", []],
    ["4 Mbit/s carries main's 3.7 Mbit/s, keyframes queued ~90 ms: it stays", mbps(4), "main", []],
    ["1.5 Mbit/s: down to low once, and never up again in 5 minutes", mbps(1.5), "main", ["low"]],
    ["2.5 Mbit/s from the start on low: main would not fit, never up", mbps(2.5), "low", []],
    ["unlimited from the start on low: up once", 0, "low", ["main"]],
  ];
  // The server falls behind for 1.5 s (it holds the fragments of 20-21.5 s, then sends them at once) on a
  // link that carries main: late, but not the link's doing; nothing to switch.
  const behind = simulate(() => mbps(20), 40, "main", (p) => (p >= 20_000 && p < 21_500 ? 21_500 : p + 5));
  assert.deepEqual(behind.switches, [], behind.switches.map((x) => x.why).join("; "));
  for (const [what, bps, start, expected] of rows) {
    const { switches } = simulate(() => bps, what.includes("5 minutes") ? 300 : 60, start);
    assert.deepEqual(switches.map((s) => s.to), expected, `${what}: ${switches.map((s) => `${s.at} ${s.to} ${s.why}`).join("; ")}`);
  }
});
