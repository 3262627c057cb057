// What the WebCodecs renderer decodes and shows, as pure state machines: the samples of each fragment and
// `now` in, decisions out. No WebCodecs here: webcodecs-sink.js applies them, tests/e2e/feed.test.js drives
// them with tables.

/** Every setting of the feed, with its default (the Player's options of the same names). */
export const FEED_DEFAULTS = Object.freeze({
  /** A frame arriving this much later than the stream's own pace is not shown when a newer one is in hand
   * (audio: not played): it is decoded if later frames need it, and the picture goes on with the newest. */
  maxLateMs: 250,
  /** More chunks than this waiting in a decoder: it cannot keep up; drop to the next keyframe. */
  maxDecodeQueue: 30,
});

/**
 * How late fragments arrive: the arrival time minus the fragment's stamp (its source wall clock from the prft
 * box, or without one its media time), above the least of it over the last `windowMs`. The least is the
 * stream's own pace (network, server and clock offsets included), so a fragment that comes with a backlog (a
 * frozen tab, a stalled link) is late by how much it waited, and the clocks of the page and the server never
 * need to agree. The wall clock is the better stamp: it goes on at the same pace when a source restarts,
 * while the media time then jumps by about the outage.
 */
export class Lateness {
  constructor(windowMs = 10000) {
    this.windowMs = windowMs;
    this.reset();
  }

  /** Forgets the pace (a new timeline). */
  reset() {
    this.minima = []; // [{at, d}] with ascending d: the sliding minimum of d = now - stamp
    this.lastStamp = null;
  }

  /** A fragment stamped `stamp` (ms) arrived at `now` (ms): its lateness in ms (0 for one on pace). */
  observe(stamp, now) {
    // Stamps that went back (a source restarted from 0, a clock set back) have a pace of their own. (Ones that
    // jump forward only lower the minimum.)
    if (this.lastStamp !== null && stamp < this.lastStamp - 500) this.reset();
    this.lastStamp = stamp;
    const d = now - stamp;
    const m = this.minima;
    while (m.length && m[m.length - 1].d >= d) m.pop();
    m.push({ at: now, d });
    while (m.length > 1 && now - m[0].at > this.windowMs) m.shift();
    return d - m[0].d;
  }
}

/**
 * Which video samples go to the decoder. Decoding starts at a keyframe (a join, and whenever the renderer
 * restarts it: a new decoder, a decoder error, a new init segment, a decoder that fell behind) and stops at a
 * gap in the decode times (a fragment lost: what follows cannot be decoded until the next keyframe) and while
 * the page is hidden (no frames nobody sees; it starts again at the next keyframe when it is visible).
 */
export class VideoGate {
  constructor() {
    this.needKeyframe = true;
    this.why = "start";
    this.expected = null; // the decode time (s) the next sample should have
  }

  /** Decoding starts again at the next keyframe. */
  restart(why) {
    this.needKeyframe = true;
    this.why = why;
  }

  /**
   * One video sample, {media: decode time (s), duration (s), sync}, while the page is `visible` or not.
   * Returns {decode: true}, or {decode: false, why} with why the renderer waits for a keyframe.
   */
  admit(sample, visible = true) {
    const expected = this.expected;
    this.expected = sample.media + sample.duration;
    if (expected !== null && Math.abs(sample.media - expected) > Math.max(0.001, sample.duration / 4)) {
      this.restart(`a gap of ${((sample.media - expected) * 1000).toFixed(0)} ms`);
    }
    if (!visible) this.restart("hidden");
    if (this.needKeyframe) {
      if (!sample.sync || !visible) return { decode: false, why: this.why };
      this.needKeyframe = false;
    }
    return { decode: true };
  }
}
