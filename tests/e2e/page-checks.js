// What the browser cases ask of the page, whatever drives it: anything with `evaluate(fn, arg)` (a playwright
// Page, or a page of browsers.js for Chromium, Firefox and WebKit). Used by player-cases.js and engines.test.js.

import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { decodePng, lumaStats } from "./png.js";

/** stats() of player i on the page, or null while there is none. */
export function playerStats(page, i = 0) {
  return page.evaluate((i) => window.mqttVideo?.players[i]?.stats() ?? null, i);
}

/**
 * stats() of player i with `at` (the page's performance.now()) and `shownFrames`: the frames it has shown in
 * this play, as the page counts them
 * (requestVideoFrameCallback, or its canvas output's presentations). That count means the same in every engine;
 * the decoder's own (`decodedFrames`, getVideoPlaybackQuality() with MediaSource) does not: WebKitGTK's goes
 * up and down.
 */
export function playerSnapshot(page, i = 0) {
  return page.evaluate((i) => {
    const p = window.mqttVideo?.players[i];
    return p ? { ...p.stats(), shownFrames: p.displaysSince(Number.MAX_SAFE_INTEGER).mark, at: performance.now() } : null;
  }, i);
}

/**
 * Polls `check` until it returns a truthy value, as support.js's waitFor, except that an error marked `fatal`
 * (the page or its browser is gone: browsers.js) ends the wait at once.
 */
export async function until(what, check, { timeoutMs = 10_000, everyMs = 50 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      if (e.fatal) throw e;
      last = e;
    }
    if (Date.now() > deadline) {
      const detail = last instanceof Error ? `: ${last.message}` : last === undefined ? "" : `: last ${JSON.stringify(last)}`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`);
    }
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

/** Waits until player i is in `state` (and `extra(stats)` holds); returns its stats. An error state fails at once. */
export function waitPlayerState(page, i, state, timeoutMs, extra = () => true) {
  return until(
    `player ${i} to be ${state}`,
    async () => {
      const s = await playerSnapshot(page, i);
      if (s && state !== "error" && s.state === "error") throw Object.assign(new Error(`player ${i} failed: ${JSON.stringify(s.errors)}`), { fatal: true });
      return s && s.state === state && extra(s) ? s : false;
    },
    { timeoutMs },
  );
}

/** Waits until player i has shown `frames` more frames than `from` (a playerSnapshot); returns its snapshot then. */
export function waitFrames(page, i, from, frames, timeoutMs) {
  return until(
    `player ${i} to show ${frames} more frames`,
    async () => {
      const s = await playerSnapshot(page, i);
      if (s?.state === "error") throw Object.assign(new Error(`player ${i} failed: ${JSON.stringify(s.errors)}`), { fatal: true });
      return s && s.shownFrames >= from.shownFrames + frames ? s : false;
    },
    { timeoutMs },
  );
}

/**
 * Two pictures of the video (`shoot()` resolves to PNG bytes or a decoded picture, png.js's), with `between()`
 * awaited between them: the first is not blank and the two differ (the picture moves). Keeps the first in
 * `file` when given (PNG bytes only). Returns {width, height, luma} of the first.
 */
export async function assertPictureMoves(shoot, { between, file = null }) {
  const shotA = await shoot();
  await between();
  const shotB = await shoot();
  if (file && Buffer.isBuffer(shotA)) writeFileSync(file, shotA);
  const decoded = (shot) => (Buffer.isBuffer(shot) ? decodePng(shot) : shot);
  const a = decoded(shotA);
  const b = decoded(shotB);
  const luma = lumaStats(a);
  // A blank picture (black, grey, a frozen colour) is flat: std under 2. The test camera's is a white ball on
  // black: mean 2-3 and std 21-27 in 28 pictures of three clean-clone runs, and 19.4 once (the ball at an
  // edge), which a bound of 20 took for blank.
  assert.ok(luma.std > 8, `the video's picture looks blank: luma mean ${luma.mean.toFixed(1)}, std ${luma.std.toFixed(1)}`);
  assert.equal(`${b.width}x${b.height}x${b.channels}`, `${a.width}x${a.height}x${a.channels}`, "two pictures of the same size");
  let diff = 0;
  for (let i = 0; i < a.pixels.length; i++) diff += Math.abs(a.pixels[i] - b.pixels[i]);
  assert.ok(diff / a.pixels.length > 0.05, "two pictures of the video differ (the picture moves)");
  return { width: a.width, height: a.height, luma };
}
