// The WebCodecs renderer's audio jitter buffer, pure: decoded samples go in with their media time, the audio
// output pulls blocks out (an AudioWorklet's 128 frames), and the buffer decides how fast to read. No Web Audio
// here: audio-worklet.js runs it on the audio thread, tests/e2e/jitter.test.js drives it with tables.
//
// Audio arrives in bursts (with each video fragment, every 33 ms at 30 fps; longer fragments, longer gaps)
// and plays continuously, so the buffer level is a sawtooth. What matters is its trough: the least level over
// the last `windowMs` is how close the output came to running dry. The buffer holds that trough at `marginMs`
// by reading a little faster or slower (rate 1 ± maxRateChange, resampled linearly: inaudible at ±1 %), and
// drops what is far too much at once (a join brings a GOP of audio in one burst; a frozen tab its backlog).
// Playing starts (again) with the margin, the longest gap between arrivals lately and the largest arrival
// buffered: the trough of the sawtooth is then still at the margin. An underrun
// raises the margin by `underrunStepMs` (the arrivals are burstier than assumed), once per burst of them; it
// decays back while the output stays fed. The level never grows: the live edge is where the audio plays.
// And lip sync: told which media time the picture shows when, it drops audio that would be heard more than
// `maxAudioLagMs` behind the picture (ITU-R BT.1359 puts the limit of detectability at 125 ms), as far as it
// holds more than its margin and headroom need: a clean sound comes first, so a margin grown by underruns
// may leave the sound further behind (the offset is measured and shown).

/** Every setting of the jitter buffer, with its default. */
export const JITTER_DEFAULTS = Object.freeze({
  /** The least level (ms) the buffer aims to keep over each window. */
  marginMs: 10,
  /** The margin grows by this much after an underrun, up to maxMarginMs, and decays by marginDecayMs every
   * marginDecayEveryMs while the output stays fed. */
  underrunStepMs: 10,
  maxMarginMs: 200,
  marginDecayMs: 2,
  marginDecayEveryMs: 10000,
  /** The trough is the least level over this long. */
  windowMs: 1000,
  /** Until a whole window of arrivals has been seen, the gap between them is taken to be at least this (a
   * join's burst says nothing about the live pace). */
  startGapMs: 40,
  /** Read rate within 1 ± this; the rate moves by rateGain per second of trough above or below the margin,
   * plus rateIntegralGain per second of that error integrated over time (which takes out a lasting error: a
   * source clock a little faster or slower than the output's). */
  maxRateChange: 0.01,
  rateGain: 0.5,
  rateIntegralGain: 0.05,
  /** A trough this far above the margin is dropped at once rather than played off slowly. */
  dropAboveMs: 80,
  /** A gap in the media times of the input up to this long is filled with silence (to keep the media
   * timeline, hence lip sync); a longer one is a new timeline (a source restart). */
  maxSilenceMs: 500,
  /** Seconds of audio the buffer can hold (more is dropped, oldest first). */
  capacitySeconds: 4,
  /** Audio that would be heard more than this far behind the picture is dropped. */
  maxAudioLagMs: 100,
});

export class JitterBuffer {
  /**
   * @param {number} sampleRate of the input (the stream)
   * @param {number} channels of the input
   * @param {number} outputRate the output's sample rate (the AudioContext's)
   * @param {Partial<typeof JITTER_DEFAULTS>} options
   */
  constructor(sampleRate, channels, outputRate = sampleRate, options = {}) {
    this.options = { ...JITTER_DEFAULTS };
    for (const [k, v] of Object.entries(options)) if (v !== undefined && k in JITTER_DEFAULTS) this.options[k] = v;
    this.sampleRate = sampleRate;
    this.channels = channels;
    this.ratio = sampleRate / outputRate; // input samples per output sample at rate 1
    this.capacity = Math.ceil(this.options.capacitySeconds * sampleRate);
    this.ring = Array.from({ length: channels }, () => new Float32Array(this.capacity));
    this.margin = this.options.marginMs / 1000;
    this.floor = 0; // the least margin the link's jitter calls for (setFloor), s
    this.underruns = 0;
    this.syncDrops = 0; // drops to keep up with the picture
    this.droppedSeconds = 0;
    this.flush();
  }

  /** Forgets everything buffered (a seek, a new play); the next push starts a new timeline. */
  flush() {
    this.written = 0; // samples ever written
    this.readPos = 0; // samples ever read (fractional)
    this.marks = []; // [{index, media}]: media time (s) of sample `index` and those after it
    this.nextMedia = null; // the media time the next pushed sample should have
    this.playing = false; // false: starved, waiting for the margin to fill before playing
    this.rate = 1;
    this.integral = 0; // the trough's error integrated over time (s * s)
    this.troughs = []; // [{at, level}]: the least level seen in each tenth of the window
    this.arrivals = []; // [{at, gap, size}]: the time since the previous push (ms) and its length (s), for the
    // pushes of the last window
    this.lastPushAt = null;
    this.lastDecayAt = null;
    this.lastUnderrunAt = -Infinity;
    this.pictureRef = null; // {media, at}: see picture()
  }

  /**
   * The picture shows media time `media` (s) when the output plays what it reads at `at` (ms, the pull clock):
   * the reference for lip sync (the picture then moves on in real time).
   */
  picture(media, at) {
    this.pictureRef = { media, at };
  }

  /**
   * What the output may have to play between two arrivals (s): the longest gap between pushes over the last
   * window (at least startGapMs until a whole window is seen) plus the largest push.
   */
  headroom() {
    let gap = 0;
    let size = 0;
    for (const a of this.arrivals) {
      gap = Math.max(gap, a.gap);
      size = Math.max(size, a.size);
    }
    const seen = this.arrivals.length ? this.lastPushAt - this.arrivals[0].at + this.arrivals[0].gap : 0;
    if (seen < this.options.windowMs) gap = Math.max(gap, this.options.startGapMs);
    return gap / 1000 + size;
  }

  /** Seconds buffered. */
  level() {
    return (this.written - this.readPos) / this.sampleRate;
  }

  /** The media time (s) of the next sample to play, or null when nothing is buffered. */
  mediaTime() {
    if (this.written - this.readPos <= 0 || !this.marks.length) return null;
    const pos = this.readPos;
    let mark = this.marks[0];
    for (const m of this.marks) if (m.index <= pos) mark = m;
    return mark.media + (pos - mark.index) / this.sampleRate;
  }

  /**
   * Appends decoded audio: `planes` (one Float32Array per channel, equal lengths) starting at media time
   * `media` (s), arrived at `now` (ms). Overlaps with what is buffered are cut, small gaps filled with silence.
   */
  push(media, planes, now) {
    let frames = planes[0]?.length ?? 0;
    if (this.lastPushAt !== null) {
      this.arrivals.push({ at: now, gap: now - this.lastPushAt, size: frames / this.sampleRate });
      while (now - this.arrivals[0].at > this.options.windowMs) this.arrivals.shift();
    }
    this.lastPushAt = now;
    let skip = 0;
    if (this.nextMedia !== null) {
      const gap = media - this.nextMedia;
      const halfSample = 0.5 / this.sampleRate;
      if (gap > halfSample && gap <= this.options.maxSilenceMs / 1000) {
        this._write(null, Math.round(gap * this.sampleRate));
      } else if (gap < -halfSample && gap > -this.options.maxSilenceMs / 1000) {
        skip = Math.min(frames, Math.round(-gap * this.sampleRate)); // already buffered: cut the overlap
      } else if (Math.abs(gap) > halfSample) {
        this.marks.push({ index: this.written, media }); // a new timeline
      }
    } else {
      this.marks.push({ index: this.written, media });
    }
    frames -= skip;
    if (frames <= 0) return;
    this._write(planes, frames, skip);
    this.nextMedia = media + (skip + frames) / this.sampleRate;
    if (this.marks.length > 16) this.marks.splice(0, this.marks.length - 16);
  }

  _write(planes, frames, from = 0) {
    // More than the ring holds: drop the oldest.
    const over = this.written + frames - this.readPos - this.capacity;
    if (over > 0) this._drop(over);
    for (let c = 0; c < this.channels; c++) {
      const ring = this.ring[c];
      const src = planes ? planes[Math.min(c, planes.length - 1)] : null;
      for (let i = 0; i < frames; i++) ring[(this.written + i) % this.capacity] = src ? src[from + i] : 0;
    }
    this.written += frames;
  }

  _drop(samples) {
    this.readPos += samples;
    this.droppedSeconds += samples / this.sampleRate;
  }

  /**
   * Fills `out` (one Float32Array per output channel, `frames` long) from the buffer at `now` (ms), reading at
   * the rate the trough calls for; silence while starved. Returns what happened: {played, underrun, dropped}
   * (dropped in seconds).
   */
  pull(out, frames, now) {
    const o = this.options;
    let dropped = 0;
    this._decay(now);
    const level = this.level();
    this._trough(level, now);
    if (!this.playing) {
      // Starved: wait for the margin and the headroom between arrivals (a join, a new play, an underrun).
      const start = this.margin + this.headroom();
      if (level >= start + (frames * this.ratio) / this.sampleRate) {
        this.playing = true;
        this.troughs = [];
        // Start at the live edge: what is above that is old already.
        const excess = level - start;
        if (excess > 0.005) {
          this._drop(Math.floor(excess * this.sampleRate));
          dropped += excess;
        }
      } else {
        for (const ch of out) ch.fill(0);
        return { played: false, underrun: false, dropped };
      }
    } else {
      const trough = this._troughLevel(now);
      if (trough !== null && trough - this.margin > o.dropAboveMs / 1000) {
        const excess = trough - this.margin;
        this._drop(Math.floor(excess * this.sampleRate));
        dropped += excess;
        this.troughs = [];
      }
      const err = trough === null ? 0 : trough - this.margin;
      const limit = o.maxRateChange / o.rateIntegralGain; // no wind-up past what the rate can use
      this.integral = Math.max(-limit, Math.min(limit, this.integral + err * ((frames * this.ratio) / this.sampleRate)));
      const change = err * o.rateGain + this.integral * o.rateIntegralGain;
      this.rate = 1 + Math.max(-o.maxRateChange, Math.min(o.maxRateChange, change));
    }
    dropped += this._lipSync(now, frames);
    const step = this.rate * this.ratio;
    for (let i = 0; i < frames; i++) {
      const idx = Math.floor(this.readPos);
      if (idx + 1 >= this.written) {
        // Ran dry: silence for the rest, and a bigger margin from now on (once for a burst of underruns: one
        // hiccup of the page starves the output again right after it restarts).
        for (const ch of out) ch.fill(0, i);
        this.playing = false;
        this.underruns++;
        if (now - this.lastUnderrunAt > o.windowMs) this.margin = Math.min(o.maxMarginMs / 1000, this.margin + o.underrunStepMs / 1000);
        this.lastUnderrunAt = now;
        this.readPos = Math.min(this.readPos, this.written);
        return { played: i > 0, underrun: true, dropped };
      }
      const frac = this.readPos - idx;
      const a = idx % this.capacity;
      const b = (idx + 1) % this.capacity;
      for (let c = 0; c < out.length; c++) {
        const ring = this.ring[Math.min(c, this.channels - 1)];
        out[c][i] = ring[a] + (ring[b] - ring[a]) * frac;
      }
      this.readPos += step;
    }
    return { played: true, underrun: false, dropped };
  }

  /**
   * Drops what is buffered beyond the margin and headroom when the audio would be heard more than
   * maxAudioLagMs behind the picture; returns seconds dropped.
   */
  _lipSync(now, frames) {
    const ref = this.pictureRef;
    const media = this.mediaTime();
    if (!ref || media === null || Math.abs(now - ref.at) > 2000) return 0; // no picture lately: no reference
    const lag = ref.media + (now - ref.at) / 1000 - media;
    const max = this.options.maxAudioLagMs / 1000;
    if (lag <= max) return 0;
    // Down to half the limit, but never below what the buffer needs to ride out the gaps between arrivals.
    const needed = this.margin + this.headroom() + (frames * this.ratio) / this.sampleRate;
    const drop = Math.min(lag - max / 2, this.level() - needed);
    if (drop <= 0) return 0;
    this._drop(Math.floor(drop * this.sampleRate));
    this.syncDrops++;
    return drop;
  }

  _decay(now) {
    const o = this.options;
    if (this.lastDecayAt === null) this.lastDecayAt = now;
    if (now - this.lastDecayAt < o.marginDecayEveryMs) return;
    this.lastDecayAt = now;
    if (now - this.lastUnderrunAt < o.marginDecayEveryMs) return;
    this.margin = Math.max(o.marginMs / 1000, this.floor, this.margin - o.marginDecayMs / 1000);
  }

  /**
   * The link delays some arrivals by up to `ms` beyond its pace (a keyframe that takes longer to come:
   * link-meter.js measures it on the main thread): the margin is at least marginMs more than that from now
   * on, so that such an arrival finds audio still buffered (the underrun it would cause is known before it
   * happens). 0 lifts it.
   */
  setFloor(ms) {
    const o = this.options;
    this.floor = ms > 0 ? Math.min(o.maxMarginMs, o.marginMs + ms) / 1000 : 0;
    this.margin = Math.max(this.margin, this.floor);
  }

  _trough(level, now) {
    const bucketMs = this.options.windowMs / 10;
    const last = this.troughs[this.troughs.length - 1];
    if (last && now - last.at < bucketMs) last.level = Math.min(last.level, level);
    else this.troughs.push({ at: now, level });
    while (this.troughs.length && now - this.troughs[0].at > this.options.windowMs) this.troughs.shift();
  }

  /** The least level over the window, or null until a whole window has been seen. */
  _troughLevel(now) {
    if (!this.troughs.length || now - this.troughs[0].at < (this.options.windowMs * 9) / 10) return null;
    return Math.min(...this.troughs.map((t) => t.level));
  }
}
