// What the page's link delivers, measured from the fragments of the rendition it plays, as a pure state
// machine: each fragment's arrival in (its size, its media duration, whether it is a keyframe, how long after
// its stamp it came), per-interval observations out for the rendition controller (abr.js). No clock: `now`
// comes with every call; tests/e2e/abr.test.js drives it with tables.
//
// - Lag: a fragment's delay (arrival minus its `prft` source wall clock, or minus its media time where the
//   stream has no prft) above the least delay of the last lagWindowMs. The least is the stream's own pace
//   (server, network and clock offsets), so the lag is what the link queued, whatever the clocks.
// - The busy rate: how fast the fragments that come late arrive one after the other (bytes over the time
//   since the one before). Queued behind a link, they come at the link's rate; late from their source (a
//   server that fell behind, a page that stood still), in a burst, much faster. abr.js tells the two apart.
// - Keyframes: how much later a keyframe comes than the small fragments before it, with its size. A link
//   that carries r bytes a second queues a keyframe of S bytes for about S / r (less what it passes at
//   once): abr.js estimates the link's capacity from it, the one measure of a link faster than the
//   rendition played without sending more over it.

/** Every setting of the meter, with its default (the Player's options of the same names). */
export const METER_DEFAULTS = Object.freeze({
  /** Window of the least delay, the lag's floor, ms. */
  lagWindowMs: 10000,
  /** A fragment this late (lag, ms) counts toward the busy rate. */
  busyLagMs: 50,
  /** The link's jitter: the keyframes' extra delays of the last this-long, ms... */
  jitterWindowMs: 10000,
  /** ... of those that came while the link was not queueing more than this already, ms (a backlog is not
   * jitter: the rendition does not fit, abr.js's business)... */
  jitterBacklogMs: 30,
  /** ... and no later than this, ms (later is a stall, of the page or the link, not the link's pace). */
  jitterMaxMs: 150,
  /** A keyframe is compared with the median of up to this many small fragments before it... */
  referenceFragments: 10,
  /** ... that arrived within this long before it, ms. */
  referenceWindowMs: 2000,
});

const median = (values) => {
  if (!values.length) return null;
  const s = values.slice().sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)];
};

export class LinkMeter {
  /** @param {Partial<typeof METER_DEFAULTS>} options */
  constructor(options = {}) {
    this.options = { ...METER_DEFAULTS };
    for (const [k, v] of Object.entries(options)) if (v !== undefined && k in METER_DEFAULTS) this.options[k] = v;
    this.reset();
  }

  /** Forgets everything (a new play: another timeline, maybe another link). */
  reset() {
    this.minima = []; // [{at, d}], ascending d: the sliding minimum of the delay
    this.clock = null; // what the delays are measured against: "prft" or "media"
    this.references = []; // [{at, delay}] of the latest small fragments
    this.keyDelays = []; // [{at, ms}]: keyframes' extra delays of the last jitterWindowMs
    this.lastTakeAt = null;
    this.lastArrivalAt = null;
    this._interval();
  }

  /**
   * Another rendition plays from now on: its keyframes are not compared with the last one's fragments (its
   * first keyframe comes with a join, and their sizes differ). The lag's floor and the link's jitter stay:
   * the same stream over the same link.
   */
  switched() {
    this.references = [];
  }

  _interval() {
    this.current = { bytes: 0, mediaMs: 0, fragments: 0, lagMs: null, lagMaxMs: null, keyframes: [], busy: [] };
  }

  /** The floor of the delays: the least of the last lagWindowMs, with `d` at `now`. */
  _floor(d, now) {
    const m = this.minima;
    while (m.length && m[m.length - 1].d >= d) m.pop();
    m.push({ at: now, d });
    while (m.length > 1 && now - m[0].at > this.options.lagWindowMs) m.shift();
    return m[0].d;
  }

  /**
   * One fragment of the rendition played arrived: {now (ms), bytes, mediaMs (the video it carries, 0 for
   * none), keyframe, delayMs (arrival minus its stamp, or null without one), clock ("prft" or "media": what
   * the stamp is)}.
   */
  fragment({ now, bytes, mediaMs = 0, keyframe = false, delayMs = null, clock = "prft" }) {
    const c = this.current;
    const sinceLast = this.lastArrivalAt === null ? null : now - this.lastArrivalAt;
    this.lastArrivalAt = now;
    c.bytes += bytes;
    c.mediaMs += mediaMs;
    c.fragments++;
    if (delayMs === null || !Number.isFinite(delayMs)) return;
    if (clock !== this.clock) {
      // Delays against another stamp are not comparable with the ones before.
      this.minima = [];
      this.references = [];
      this.keyDelays = [];
      this.clock = clock;
    }
    const floor = this._floor(delayMs, now);
    const lag = delayMs - floor;
    c.lagMs = lag;
    c.lagMaxMs = Math.max(c.lagMaxMs ?? 0, lag);
    const o = this.options;
    // (bits per ms: kbit/s; arrivals closer than 0.5 ms are as good as at once)
    if (lag >= o.busyLagMs && sinceLast !== null) c.busy.push((bytes * 8) / Math.max(sinceLast, 0.5));
    this.references = this.references.filter((r) => now - r.at <= o.referenceWindowMs);
    if (keyframe) {
      if (this.references.length >= 3) {
        const reference = median(this.references.map((r) => r.delay));
        // backlogMs: the link was already queueing before it (the fragments before it were late too).
        const sample = { bytes, extraMs: delayMs - reference, backlogMs: reference - floor };
        c.keyframes.push(sample);
        if (sample.backlogMs <= o.jitterBacklogMs && sample.extraMs <= o.jitterMaxMs) this.keyDelays.push({ at: now, ms: Math.max(0, sample.extraMs) });
        while (this.keyDelays.length && now - this.keyDelays[0].at > o.jitterWindowMs) this.keyDelays.shift();
      }
      return;
    }
    this.references.push({ at: now, delay: delayMs });
    if (this.references.length > o.referenceFragments) this.references.shift();
  }

  /**
   * How much later than the other fragments the link delivers a keyframe lately, ms (the most of the last
   * jitterWindowMs): what a renderer must hold to ride out the link's own pace, the stall each keyframe
   * would otherwise cause on a link just fast enough for the rendition.
   */
  jitterMs() {
    return this.keyDelays.reduce((most, k) => Math.max(most, k.ms), 0);
  }

  /**
   * What came since the last call: {now, intervalMs, bytes, mediaMs, fragments, lagMs (of the newest
   * fragment; null without stamps or without fragments: a link that carries nothing shows as media missing,
   * not as lag), lagMaxMs, keyframes: [{bytes, extraMs, backlogMs}], busyKbps (the median rate at which the
   * late fragments came, or null without late ones)}.
   */
  take(now) {
    const { busy, ...current } = this.current;
    const obs = { now, intervalMs: this.lastTakeAt === null ? 0 : now - this.lastTakeAt, ...current, busyKbps: median(busy) };
    this.lastTakeAt = now;
    this._interval();
    return obs;
  }
}
