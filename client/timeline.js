// The source wall clock of media time, from the fragments' `prft` boxes (docs/PROTOCOL.md, "The prft box"):
// pure, shared by both renderers, so that their latency figures are computed the same way. It also keeps
// how long after its source wall clock each fragment arrived (the server's and the network's part).

import { Samples } from "./figures.js";

/** prft points kept; older ones go first (at 30 fragments/s, 4000 are over two minutes). */
const MAX_POINTS = 4000;

export class Timeline {
  constructor() {
    this.points = []; // [{media: seconds, wall: ms since epoch}], ascending media time
    this.arrivals = new Samples(600); // arrival minus source wall clock, ms, per fragment
  }

  clear() {
    this.points = [];
    this.arrivals = new Samples(600);
  }

  /**
   * Adds a prft point: media time `media` (s) was captured at wall clock `wall` (ms since the epoch), and
   * its fragment arrived at wall clock `arrived`.
   */
  add(media, wall, arrived) {
    this.arrivals.add(arrived - wall);
    const tl = this.points;
    if (tl.length && media < tl[tl.length - 1].media) tl.length = 0; // the stream's timeline restarted
    tl.push({ media, wall });
    if (tl.length > MAX_POINTS) tl.splice(0, tl.length - (MAX_POINTS * 3) / 4);
  }

  /** The source wall clock (ms since the epoch) of media time `t` (seconds), from the prft at or before it. */
  wallClockAt(t) {
    const tl = this.points;
    let lo = 0;
    let hi = tl.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (tl[mid].media <= t + 1e-6) {
        found = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    if (found < 0) return null;
    return tl[found].wall + (t - tl[found].media) * 1000;
  }
}

/**
 * The prft of a fragment as a timeline point: {media (s), wall (ms)} from the reference track's timescale
 * (the video track's when the prft names none we know), or null.
 */
export function prftPoint(prft, initInfo) {
  const track = initInfo.tracks.get(prft.trackId) ?? initInfo.tracks.get(initInfo.videoTrackId);
  if (!track || !track.timescale) return null;
  return { media: prft.mediaTime / track.timescale, wall: prft.wallMs };
}
