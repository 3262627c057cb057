// Which rendition the page plays with `rendition=auto`, as a pure state machine: the link meter's
// per-interval observations (link-meter.js) in with `now`, decisions {switchTo, why} out. No MQTT, no clock:
// player.js applies them through session.js, tests/e2e/abr.test.js drives it with tables.
//
// Down, fast, when the rendition played does not fit the link: the gateway shed fragments of it (it does so
// once a browser is 600 ms behind), its fragments come later and later (lag), or less media than real
// time arrives over a couple of seconds. To the best rendition whose bitrate fits what the link delivered
// while it was queueing (then the link's own rate), else the lowest. But for shedding, only on late
// fragments that came one after the other at about the link's pace: late ones that came faster than the
// rendition needs were not held up by the link (a server that fell behind, a page that stood still), and
// nothing at all says nothing of the link: a lower rendition would not help, so they switch nothing.
//
// Up, slowly and only on evidence, when a higher one would fit: after a while with no shedding and no lag,
// when the link's capacity estimated from the keyframes (a keyframe of S bytes comes S / capacity later than
// the small fragments around it, less what a link passes at once) is well over the higher rendition's
// bitrate. Without that, it probes: it asks the player to time a burst of bytes from the gateway
// (link-probe.js), sized to a short stretch of the higher rendition, and switches only if the link carried it
// fast enough. A probe delays the picture by what the burst takes to cross (~100-250 ms), where a switch that
// does not fit would queue the higher rendition's GOP in front of it, seconds on a link with a deep queue.
// Probes that find no room come less often (doubling, up to maxProbeEveryMs), so the page is back up soon
// after the link recovers. Where there is no gateway to probe, it tries the higher rendition now and then
// instead (a blind probe). An up-switch that has to go down again soon after failed: the next waits longer
// (doubling) and needs more margin, so it does not flap; a probe that shows that margin overrides the wait.

/** Every setting of the controller, with its default (the Player's options of the same names). */
export const ABR_DEFAULTS = Object.freeze({
  /** Observations are taken this often by the Player, ms. */
  abrIntervalMs: 250,
  /** Down: the lag of the rendition played at or above this, ms... */
  downLagMs: 250,
  /** ... in this many observations in a row. */
  downLagObservations: 2,
  /** Down: media received over wall time below this share of real time over downWindowMs. */
  downRate: 0.85,
  downWindowMs: 2000,
  /** A lower rendition fits when its bitrate is at most this share of what the link delivered meanwhile. */
  downFit: 0.8,
  /** Late fragments that came at more than this many times the rendition's bitrate (the meter's busy rate)
   * were not queued behind the link. */
  notTheLink: 1.5,
  /** Observations this soon after a switch are the switch's (a join burst, a backlog of the last one). */
  settleMs: 1000,
  /** Up: not within this long of any switch... */
  upHoldMs: 5000,
  /** ... nor unless the last this-long had no shedding and no lag over upLagMs. */
  upStableMs: 5000,
  upLagMs: 100,
  /** Up: the estimated capacity over the higher rendition's bitrate by this factor. */
  upMargin: 1.2,
  /** The capacity estimate: the median of the last capacitySamples keyframes of the last capacityWindowMs,
   * from at least capacityMinSamples. */
  capacitySamples: 5,
  capacityMinSamples: 3,
  capacityWindowMs: 15000,
  /** What a link may pass at once before its rate shows (a token bucket's burst, TCP's window), bytes: a
   * keyframe's bytes beyond it are what its extra delay was spent on. */
  burstBytes: 8192,
  /** Extra delays under this are within the measurement's noise, ms (the estimate is then a lower bound). */
  noiseMs: 2,
  /** A keyframe that came when the link was already queueing this much tells nothing of its capacity, ms. */
  maxBacklogMs: 30,
  /** The blind probe (no gateway to time a burst from): without an estimate, try the higher rendition after
   * this long at this one, ms (doubling with each failed up-switch, up to maxBackoffMs). */
  probeAfterMs: 30000,
  /** A probe: a burst of this much of the higher rendition's bitrate, ms... */
  probeMs: 120,
  /** ... or of this much of the last probe's rate where that is less (the burst's delay on the picture stays
   * about this long), ms... */
  probeDelayMs: 250,
  /** ... and this many bytes at least (half of them more than a link's first burst: a token bucket's, TCP's
   * first window) and at most. */
  minProbeBytes: 48 * 1024,
  maxProbeBytes: 512 * 1024,
  /** Probes after a switch or a probe that found no room: not sooner than this, ms (doubling with each probe
   * that found no room, up to maxProbeEveryMs). */
  probeEveryMs: 5000,
  maxProbeEveryMs: 8000,
  /** A down-switch within this long of an up-switch: the up-switch failed, ms. */
  failWindowMs: 10000,
  /** After a failed up-switch, no other for this long (doubling with each failure, up to maxBackoffMs), and
   * each failure multiplies the margin by 1.5 (at most 4 x). */
  backoffMs: 20000,
  maxBackoffMs: 60000,
  /** A rendition's `bitrate_kbps` (the video's target) times this, for audio and the container, until its
   * real rate has been measured while it played. */
  overhead: 1.15,
  /** An observation later than this after the last one: the page itself stood still (a blocked main
   * thread, a hidden tab's timers); what arrived across it says nothing about the link, ms. */
  pauseMs: 1500,
});

const median = (values) => {
  if (!values.length) return null;
  const s = values.slice().sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)];
};

/** The media played per rendition is measured over this long, ms. */
const NEED_WINDOW_MS = 10000;
/** ... once at least this much media time was received, ms. */
const NEED_MIN_MEDIA_MS = 3000;
/** Observations kept, ms. */
const HISTORY_MS = 20000;

export class AbrController {
  /**
   * @param {{name: string, bitrateKbps: number|null}[]} renditions the describe reply's, in any order (a
   *   null bitrate, main's in copy mode, ranks first)
   * @param {string} playing the rendition the page starts with
   * @param {number} now ms
   * @param {Partial<typeof ABR_DEFAULTS>} options
   */
  constructor(renditions, playing, now, options = {}) {
    this.options = { ...ABR_DEFAULTS };
    for (const [k, v] of Object.entries(options)) if (v !== undefined && k in ABR_DEFAULTS) this.options[k] = v;
    const rank = (r) => r.bitrateKbps ?? Infinity;
    this.renditions = renditions.slice().sort((a, b) => rank(b) - rank(a)); // best first
    this.playing = playing;
    this.pending = null; // the rendition a switch goes to, until switched() or failed()
    this.lastSwitchAt = now;
    this.lastUpAt = -Infinity;
    this.upBlockedUntil = -Infinity;
    this.failures = 0; // failed up-switches not yet made up for by one that held
    this.history = []; // observations of the rendition played, newest last
    this.lastObservationAt = null;
    this.capacity = []; // [{at, kbps}] from keyframes
    this.measured = new Map(); // rendition -> [{at, bytes, mediaMs}]
    this.gone = new Set(); // renditions the server refused: never chosen
    this.lastDecision = null;
    this.canProbe = true; // until the player says there is no gateway to probe
    this.probing = null; // the rendition a probe runs for
    this.probeResult = null; // {kbps, for} of the last probe, until used
    this.quietUntil = -Infinity; // observations before this are a probe's
    this.emptyProbes = 0; // probes in a row that found no room
    this.nextProbeAt = -Infinity;
    this.lastProbeKbps = null; // what the last probe that measured found
  }

  /** No gateway to time a burst from (the broker is elsewhere): blind probes from now on. */
  noProbe() {
    this.canProbe = false;
    this.probing = null;
  }

  /** The probe asked for came back: `kbps` what the link carried beside the rendition played (null: it
   * could not tell, e.g. it timed out), at `now`. */
  probed(kbps, now) {
    const o = this.options;
    const name = this.probing;
    this.probing = null;
    this.quietUntil = now + o.settleMs;
    if (kbps === null || name === null) {
      this._probeFoundNoRoom(now);
      return;
    }
    this.probeResult = { kbps, for: name };
    this.lastProbeKbps = kbps;
  }

  _probeFoundNoRoom(now) {
    const o = this.options;
    this.emptyProbes++;
    this.nextProbeAt = now + Math.min(o.maxProbeEveryMs, o.probeEveryMs * 2 ** (this.emptyProbes - 1));
  }

  _index(name) {
    return this.renditions.findIndex((r) => r.name === name);
  }

  /** The bitrate rendition `name` needs, kbit/s: as measured while it played, else its announced one. */
  need(name) {
    const seen = this.measured.get(name) ?? [];
    const bytes = seen.reduce((n, m) => n + m.bytes, 0);
    const mediaMs = seen.reduce((n, m) => n + m.mediaMs, 0);
    if (mediaMs >= NEED_MIN_MEDIA_MS) return (bytes * 8) / mediaMs;
    const announced = this.renditions[this._index(name)]?.bitrateKbps;
    return announced == null ? null : announced * this.options.overhead;
  }

  /** The link's capacity estimated from the keyframes, kbit/s, or null without enough of them. */
  capacityKbps(now) {
    const o = this.options;
    const recent = this.capacity.filter((c) => now - c.at <= o.capacityWindowMs).slice(-o.capacitySamples);
    return recent.length >= o.capacityMinSamples ? median(recent.map((c) => c.kbps)) : null;
  }

  /** Rendition `name` is gone (the server refused it, or it failed there): never chosen again. */
  drop(name) {
    this.gone.add(name);
    if (this.pending === name) this.pending = null;
  }

  /** A switch to `name` the controller did not ask for began (Player.switchRendition): nothing else meanwhile. */
  expect(name) {
    this.pending = name;
  }

  /** A switch the controller asked for happened: `name` plays from now on. */
  switched(name, now) {
    const up = this._index(name) < this._index(this.playing);
    this.playing = name;
    this.pending = null;
    this.lastSwitchAt = now;
    if (up) this.lastUpAt = now;
    this.history = [];
    this.emptyProbes = 0;
    this.probeResult = null;
  }

  /** A switch to `name` was given up: the rendition played goes on; try again later. */
  failed(name, now) {
    this.pending = null;
    this.lastSwitchAt = now;
    if (this._index(name) < this._index(this.playing)) this._upFailed(now);
  }

  _upFailed(now) {
    const o = this.options;
    this.failures++;
    this.lastUpAt = -Infinity; // counted once
    this.upBlockedUntil = now + Math.min(o.maxBackoffMs, o.backoffMs * 2 ** (this.failures - 1));
  }

  /**
   * One observation of the link meter (LinkMeter.take) plus {skipped: fragments of the rendition played
   * the gateway shed in the interval}. Returns {switchTo, down (a move down), why}, {probe: {bytes, for}, why} (time a burst, then probed()) or null.
   */
  observe(obs) {
    const o = this.options;
    const now = obs.now;
    const paused = this.lastObservationAt !== null && now - this.lastObservationAt > o.pauseMs;
    this.lastObservationAt = now;
    if (paused) {
      this.history = [];
      return null;
    }
    // What a probe's burst did to the fragments behind it says nothing of the rendition played.
    this.history.push({ ...obs, probe: this.probing !== null || now < this.quietUntil });
    while (this.history.length && now - this.history[0].now > HISTORY_MS) this.history.shift();
    const seen = this.measured.get(this.playing) ?? [];
    seen.push({ at: now, bytes: obs.bytes, mediaMs: obs.mediaMs });
    while (seen.length && now - seen[0].at > NEED_WINDOW_MS) seen.shift();
    this.measured.set(this.playing, seen);
    for (const k of obs.keyframes ?? []) {
      const beyond = k.bytes - o.burstBytes;
      if (beyond <= 0 || k.backlogMs > o.maxBacklogMs) continue;
      this.capacity.push({ at: now, kbps: (beyond * 8) / Math.max(k.extraMs, o.noiseMs) });
    }
    while (this.capacity.length > 4 * o.capacitySamples) this.capacity.shift();
    if (this.pending) return null;
    if (this.lastUpAt > -Infinity && now - this.lastUpAt >= o.failWindowMs) {
      // The last up-switch held: one failure before it is made up for.
      this.failures = Math.max(0, this.failures - 1);
      this.lastUpAt = -Infinity;
    }
    const decision = this._down(now) ?? this._up(now);
    if (decision) {
      if (decision.switchTo) this.pending = decision.switchTo;
      this.lastDecision = { at: now, ...decision };
    }
    return decision;
  }

  _down(now) {
    const o = this.options;
    const settled = this.history.filter((h) => h.now - this.lastSwitchAt >= o.settleMs && !h.probe);
    const window = settled.filter((h) => now - h.now < o.downWindowMs);
    if (!window.length) return null;
    const lag = (h) => h.lagMaxMs ?? 0;
    const shed = window.reduce((n, h) => n + (h.skipped ?? 0), 0);
    const last = settled.slice(-o.downLagObservations);
    const lagging = last.length === o.downLagObservations && last.every((h) => lag(h) >= o.downLagMs);
    const span = window.reduce((n, h) => n + h.intervalMs, 0);
    const mediaMs = window.reduce((n, h) => n + h.mediaMs, 0);
    const slow = span >= 0.9 * o.downWindowMs && mediaMs / span < o.downRate;
    if (!shed && !lagging && !slow) return null;
    // Unless the gateway shed, the link's doing only if late fragments came at about its pace: nothing late
    // (nothing came: the link or the source?) or late ones in a burst is no reason to switch.
    const busy = median(window.map((h) => h.busyKbps).filter((b) => b !== null && b !== undefined));
    const needNow = this.need(this.playing);
    if (!shed && (busy === null || (needNow !== null && busy > needNow * o.notTheLink))) return null;
    const at = this._index(this.playing);
    const lower = this.renditions.slice(at + 1).filter((r) => !this.gone.has(r.name));
    if (!lower.length) return null; // the lowest already: nothing left to shed but what the gateway sheds
    const throughput = span > 0 ? (window.reduce((n, h) => n + h.bytes, 0) * 8) / span : 0;
    const fits = lower.find((r) => {
      const need = this.need(r.name);
      return need !== null && need <= throughput * o.downFit;
    });
    const to = fits ?? lower[lower.length - 1];
    if (now - this.lastUpAt < o.failWindowMs) this._upFailed(now);
    const why = shed
      ? `the gateway shed ${shed} fragments of ${this.playing}`
      : lagging
        ? `the fragments of ${this.playing} come ${Math.round(lag(last.at(-1)))} ms late`
        : `${Math.round((mediaMs / span) * 100)} % of real time of ${this.playing} arrives`;
    return { switchTo: to.name, down: true, why: `${why}; the link delivered ${Math.round(throughput)} kbit/s` };
  }

  _up(now) {
    const o = this.options;
    const at = this._index(this.playing);
    const higher = this.renditions.slice(0, Math.max(0, at)).filter((r) => !this.gone.has(r.name)).at(-1);
    if (!higher) return null;
    if (now - this.lastSwitchAt < o.upHoldMs || this.probing) return null;
    const stable = this.history.filter((h) => now - h.now < o.upStableMs);
    const covered = stable.reduce((n, h) => n + h.intervalMs, 0);
    if (covered < 0.9 * o.upStableMs) return null;
    if (stable.some((h) => !h.probe && ((h.skipped ?? 0) > 0 || (h.lagMaxMs ?? 0) > o.upLagMs))) return null;
    const need = this.need(higher.name);
    const margin = o.upMargin * Math.min(4, 1.5 ** this.failures);
    const probed = this.probeResult;
    this.probeResult = null;
    if (probed && probed.for === higher.name && need !== null) {
      // The burst shared the link with the rendition played: what the link carries is the two together.
      const carries = probed.kbps + (this.need(this.playing) ?? 0);
      if (carries >= need * margin) {
        return { switchTo: higher.name, why: `a probe: the link carries about ${Math.round(carries)} kbit/s; ${higher.name} needs ${Math.round(need)}` };
      }
      this._probeFoundNoRoom(now);
      return null;
    }
    // With the gateway's probe, only a probe moves up: a keyframe that a link's burst let through at once
    // looks like a fast link (a 2 Mbit/s token bucket with a 16 KB burst read as 12 Mbit/s).
    if (this.canProbe && need !== null) {
      if (now < this.nextProbeAt) return null;
      const delayBytes = this.lastProbeKbps === null ? Infinity : (this.lastProbeKbps * o.probeDelayMs) / 8;
      const bytes = Math.round(Math.min(o.maxProbeBytes, Math.max(o.minProbeBytes, Math.min((need * o.probeMs) / 8, delayBytes))));
      this.probing = higher.name;
      return { probe: { bytes, for: higher.name }, why: `probing the link for ${higher.name} (${Math.round(need)} kbit/s)` };
    }
    if (now < this.upBlockedUntil) return null;
    const capacity = this.capacityKbps(now);
    if (capacity !== null && need !== null) {
      if (capacity < need * margin) return null;
      return { switchTo: higher.name, why: `the link carries about ${Math.round(capacity)} kbit/s; ${higher.name} needs ${Math.round(need)}` };
    }
    const wait = Math.min(o.maxBackoffMs, o.probeAfterMs * 2 ** this.failures);
    if (now - this.lastSwitchAt < wait) return null;
    return { switchTo: higher.name, why: `a probe: no estimate of the link after ${Math.round((now - this.lastSwitchAt) / 1000)} s on ${this.playing}` };
  }
}
