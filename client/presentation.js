// When the frames drawn into a visible canvas reach the screen. A frame drawn before an animation frame's
// callbacks run is in the picture that animation frame paints, which is on screen one refresh later: the
// convention of requestVideoFrameCallback's expectedDisplayTime, so the latency figures of the outputs compare.
// Of the frames drawn within one refresh only the last is seen; the others are counted as overdrawn.
// Pure: the sink feeds it the draws and the animation frames' timestamps.

const DEFAULT_INTERVAL_MS = 1000 / 60;
const KEPT_INTERVALS = 31;
// Gaps longer than this are a tab in the background or a busy main thread, not the display's refresh.
const MAX_INTERVAL_MS = 100;

/** The frames of a canvas output, from drawn to presented. */
export class Presentation {
  constructor() {
    this.drawn = null; // {mediaTime, at} of the newest frame drawn since the last animation frame
    this.overdrawn = 0;
    this.lastTick = null;
    this.intervals = [];
  }

  /** A frame of media time `mediaTime` (s) was drawn at performance time `at`. */
  draw(mediaTime, at) {
    if (this.drawn) this.overdrawn++;
    this.drawn = { mediaTime, at };
  }

  /** The display's refresh interval (ms): the median of the animation frames' spacing. */
  interval() {
    if (!this.intervals.length) return DEFAULT_INTERVAL_MS;
    const sorted = this.intervals.slice().sort((a, b) => a - b);
    return sorted[Math.floor(sorted.length / 2)];
  }

  /**
   * An animation frame at `ts` (its requestAnimationFrame timestamp). Returns the frame it shows for the
   * first time, as requestVideoFrameCallback describes one ({mediaTime, presentationTime,
   * expectedDisplayTime}), or null when nothing new was drawn.
   */
  tick(ts) {
    if (this.lastTick !== null) {
      const d = ts - this.lastTick;
      if (d > 0 && d <= MAX_INTERVAL_MS) {
        this.intervals.push(d);
        if (this.intervals.length > KEPT_INTERVALS) this.intervals.shift();
      }
    }
    this.lastTick = ts;
    const frame = this.drawn;
    if (!frame) return null;
    this.drawn = null;
    return { mediaTime: frame.mediaTime, presentationTime: frame.at, expectedDisplayTime: ts + this.interval() };
  }

  /** Starts over (a new play): forgets the frame waiting to be shown, and the count of frames overdrawn. */
  reset() {
    this.drawn = null;
    this.overdrawn = 0;
  }
}
