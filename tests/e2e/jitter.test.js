// Tests of the WebCodecs renderer's audio jitter buffer (client/jitter.js): simulated arrivals (AAC frames of
// 1024 samples muxed with 30 fps video fragments, as the server sends them) against an output that pulls
// 128-frame blocks, as an AudioWorklet does.

import { test } from "node:test";
import assert from "node:assert/strict";
import { JitterBuffer } from "../../client/jitter.js";

const AAC = 1024;
const BLOCK = 128;

/**
 * Runs a buffer for `seconds` of output time. The source's clock runs `drift` faster than the output's;
 * fragments leave every 1/fps s (source time) and arrive `delay(t)` ms later; `burst` s of audio arrive at
 * once at the start (a joiner's GOP). With `pictureMs`, each fragment's frame is shown that long after it
 * arrives (JitterBuffer.picture). Returns the buffer and what the output saw, and the audio's lag behind the
 * picture over the last 5 s. `floorMs`: the margin's floor from the start (JitterBuffer.setFloor).
 */
function simulate({ seconds, fps = 30, inRate = 48000, outRate = 48000, drift = 0, delay = () => 0, burst = 0, pictureMs = null, options = {}, floorMs = 0 }) {
  const jb = new JitterBuffer(inRate, 2, outRate, options);
  if (floorMs) jb.setFloor(floorMs);
  const out = [new Float32Array(BLOCK), new Float32Array(BLOCK)];
  const levels = [];
  let nextAac = 0; // index of the next AAC frame to send
  let nextFragment = Math.ceil(burst * fps); // the fragments before it came in the burst
  const arrivals = []; // [{at, media, samples}]
  const send = (untilMedia, at) => {
    while ((nextAac + 1) * AAC <= untilMedia * inRate) {
      const media = (nextAac * AAC) / inRate;
      const plane = new Float32Array(AAC).map((_, i) => Math.sin((2 * Math.PI * 440 * (nextAac * AAC + i)) / inRate));
      arrivals.push({ at, media, planes: [plane, plane] });
      nextAac++;
    }
  };
  send(burst, 0);
  let silentBlocks = 0;
  let lastMedia = null;
  let backwards = 0;
  const blockMs = (BLOCK / outRate) * 1000;
  for (let now = 0; now < seconds * 1000; now += blockMs) {
    // Fragments leave the source at its clock (faster by `drift`) and arrive `delay` ms later.
    while ((nextFragment / fps) * 1000 / (1 + drift) + delay(nextFragment / fps) <= now + burst * 1000) {
      send((nextFragment + 1) / fps, now);
      if (pictureMs !== null) jb.picture(nextFragment / fps, now + pictureMs);
      nextFragment++;
    }
    while (arrivals.length && arrivals[0].at <= now) {
      const a = arrivals.shift();
      jb.push(a.media, a.planes, now);
    }
    const media = jb.playing ? jb.mediaTime() : null;
    const r = jb.pull(out, BLOCK, now);
    if (!r.played) silentBlocks++;
    if (media !== null && lastMedia !== null && media < lastMedia) backwards++;
    if (media !== null) lastMedia = media;
    const ref = jb.pictureRef;
    const lag = ref && media !== null ? (ref.media + (now - ref.at) / 1000 - media) * 1000 : null;
    levels.push({ now, level: jb.level(), lag });
  }
  const tail = levels.filter((l) => l.now > (seconds - 5) * 1000);
  const tailLevels = tail.map((l) => l.level * 1000);
  const lags = tail.map((l) => l.lag).filter((l) => l !== null);
  return { jb, silentBlocks, backwards, tailMin: Math.min(...tailLevels), tailMax: Math.max(...tailLevels), maxLag: Math.max(...lags) };
}

test("steady arrivals: no underrun, the trough held near the margin, the media time only goes forward", () => {
  const { jb, tailMin, tailMax, backwards } = simulate({ seconds: 30 });
  assert.equal(jb.underruns, 0);
  assert.equal(backwards, 0);
  assert.ok(tailMin >= 5 && tailMin <= 20, `trough ${tailMin.toFixed(1)} ms (margin 10)`);
  // the sawtooth: a fragment every 33 ms, audio in 21 ms frames
  assert.ok(tailMax < 10 + 33 + 22 + 5, `peak ${tailMax.toFixed(1)} ms: one fragment's audio above the margin, no more`);
  assert.ok(Math.abs(jb.rate - 1) < 0.002, `rate ${jb.rate}`);
});

test("a joiner's burst of a second of audio is dropped to the live edge at once", () => {
  const { jb, tailMax, silentBlocks } = simulate({ seconds: 10, burst: 1 });
  assert.ok(jb.droppedSeconds > 0.85 && jb.droppedSeconds < 1.0, `dropped ${jb.droppedSeconds.toFixed(3)} s`);
  assert.ok(tailMax < 70, `peak ${tailMax.toFixed(1)} ms`);
  assert.ok(silentBlocks < 5, `${silentBlocks} silent blocks`);
  assert.equal(jb.underruns, 0);
});

test("clock drift is absorbed by the rate, never by a growing buffer or repeated underruns", () => {
  for (const drift of [0.005, -0.005]) {
    const { jb, tailMin, tailMax } = simulate({ seconds: 60, drift });
    assert.ok(jb.underruns <= 1, `drift ${drift}: ${jb.underruns} underruns`);
    assert.ok(tailMax < 80, `drift ${drift}: peak ${tailMax.toFixed(1)} ms`);
    assert.ok(tailMin > 0, `drift ${drift}: trough ${tailMin.toFixed(1)} ms`);
    assert.ok(Math.abs(jb.rate - (1 + drift)) < 0.003, `drift ${drift}: rate ${jb.rate.toFixed(4)}`);
  }
});

test("an arrival hiccup is one underrun that raises the margin once; the margin decays back", () => {
  // 150 ms without arrivals at t = 5 s (the page's main thread was busy), then the backlog at once
  const delay = (t) => (t >= 5 && t < 5.15 ? (5.15 - t) * 1000 : 0);
  const { jb } = simulate({ seconds: 8, delay });
  assert.equal(jb.underruns, 1);
  assert.ok(Math.abs(jb.margin - 0.02) < 1e-9, `margin ${jb.margin}`);
  // ... and back to 10 ms after 50 s of smooth playback (2 ms per 10 s)
  const long = simulate({ seconds: 70, delay });
  assert.ok(Math.abs(long.jb.margin - 0.01) < 1e-9, `margin ${long.jb.margin}`);
});

test("a link that delays each keyframe: underruns until the margin grows, none with the floor the link meter measures", () => {
  // A keyframe a second comes 25-45 ms late (a token bucket just fast enough for the stream), the fragment
  // after it by what is left of that beyond its own 33 ms.
  const keyDelay = (k) => 25 + 5 * (k % 5);
  const delay = (t) => {
    const i = Math.round(t * 30);
    const k = Math.floor(i / 30);
    return i % 30 === 0 ? keyDelay(k) : i % 30 === 1 ? Math.max(0, keyDelay(k) - 33) : 0;
  };
  const plain = simulate({ seconds: 30, delay });
  assert.ok(plain.jb.underruns >= 1, `${plain.jb.underruns} underruns without a floor`);
  const floored = simulate({ seconds: 30, delay, floorMs: 45 });
  assert.equal(floored.jb.underruns, 0);
  assert.ok(floored.tailMin >= 0 && Math.abs(floored.jb.margin - 0.055) < 1e-9, `margin ${floored.jb.margin}: 10 ms over the delay`);
  // The floor holds the margin up against its decay; lifted, the margin decays back.
  const jb = new JitterBuffer(48000, 2, 48000);
  jb.setFloor(30);
  assert.ok(Math.abs(jb.margin - 0.04) < 1e-9, `${jb.margin}`);
  jb.setFloor(0);
  assert.ok(Math.abs(jb.margin - 0.04) < 1e-9, "a margin is not cut at once");
});

test("long fragments (200 ms) start with their gap buffered and do not underrun", () => {
  const { jb, tailMin } = simulate({ seconds: 20, fps: 5 });
  assert.ok(jb.underruns <= 1, `${jb.underruns} underruns`);
  assert.ok(tailMin >= 0, `trough ${tailMin}`);
});

test("another output rate is resampled: 48 kHz in, 44.1 kHz out", () => {
  const { jb, tailMax } = simulate({ seconds: 20, outRate: 44100 });
  assert.equal(jb.underruns, 0);
  assert.ok(tailMax < 80, `peak ${tailMax.toFixed(1)} ms`);
});

test("lip sync: audio beyond what the buffer needs is dropped when it lags the picture", () => {
  const rate = 48000;
  const out = [new Float32Array(BLOCK)];
  /** `seconds` of audio from media time `from`, in AAC frames (as the decoder hands them over), at `now`. */
  const push = (jb, from, seconds, now) => {
    for (let i = 0; i < Math.round((seconds * rate) / AAC); i++) jb.push(from + (i * AAC) / rate, [new Float32Array(AAC).fill(0.5)], now);
  };
  const run = (options) => {
    const jb = new JitterBuffer(rate, 1, rate, { marginMs: 10, startGapMs: 40, ...options });
    push(jb, 0, (5 * AAC) / rate, 0);
    jb.pull(out, BLOCK, 0); // starts playing at the live edge
    // a late burst while it plays: 400 ms more at once; the picture is at the newest media time, 30 ms later
    push(jb, (5 * AAC) / rate, (19 * AAC) / rate, 3);
    jb.picture(0.47, 3);
    const lagBefore = 0.47 - jb.mediaTime();
    jb.pull(out, BLOCK, 3);
    return { jb, lagBefore, lagAfter: 0.47 + BLOCK / rate - jb.mediaTime() };
  };
  const held = run({});
  assert.ok(held.lagBefore > 0.3, `${held.lagBefore}`);
  assert.ok(held.lagAfter <= 0.1, `${(held.lagAfter * 1000).toFixed(0)} ms behind after the drop`);
  assert.equal(held.jb.syncDrops, 1);
  assert.ok(held.jb.level() >= 0.01 + 0.04, `keeps what it needs: ${held.jb.level()}`);
  // A margin grown by underruns is not given up for lip sync: the sound stays clean and further behind.
  const big = run({ marginMs: 300 });
  assert.ok(big.jb.level() >= 0.3, `level ${big.jb.level()}`);
  assert.ok(big.lagAfter > 0.1);
  // No reference for 2 s (no picture shown): nothing is dropped for it.
  const stale = new JitterBuffer(rate, 1, rate, { marginMs: 10 });
  stale.picture(10, 0);
  push(stale, 0, 0.5, 5000);
  stale.pull(out, BLOCK, 5000);
  stale.pull(out, BLOCK, 5003);
  assert.equal(stale.syncDrops, 0);
});

test("the lip-sync limit never starves a buffer that plays steadily (the transcoder's late audio)", () => {
  // Audio 45 ms later than its picture on arrival (FFmpeg's AAC encoder holds 2048 samples), the picture
  // shown 30 ms after its fragment: the sound is near the limit, which must not turn into underruns.
  const { jb } = simulate({ seconds: 20, pictureMs: -45 + 30 });
  assert.ok(jb.underruns <= 1, `${jb.underruns} underruns`);
});

test("gaps in the media times are filled with silence, overlaps cut, a new timeline marked", () => {
  // A margin that starts playing with all of it buffered: 33 + a 1 ms gap + the 10-sample pushes + a block.
  const jb = new JitterBuffer(1000, 1, 1000, { marginMs: 33, startGapMs: 0 });
  const ones = (n) => [new Float32Array(n).fill(1)];
  jb.push(0, ones(10), 0);
  jb.push(0.02, ones(10), 1); // 10 ms gap: 10 samples of silence
  assert.equal(jb.level(), 0.03);
  jb.push(0.025, ones(10), 2); // overlaps 5 samples of what is buffered
  assert.equal(jb.level(), 0.035);
  jb.push(100, ones(10), 3); // a new timeline
  assert.equal(jb.level(), 0.045);
  const out = [new Float32Array(45)];
  jb.pull(out, 1, 4); // starts playing
  assert.equal(jb.mediaTime(), 0.001);
  jb.pull([new Float32Array(38)], 38, 5);
  assert.ok(Math.abs(jb.mediaTime() - 100.004) < 1e-9, `media ${jb.mediaTime()}`);
});
