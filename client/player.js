// mqtt-video player: live fragmented MP4 over MQTT (WebSocket) into a <video> through MediaSource.
//
//   const player = new Player(videoElement, { broker: "ws://host:8080/mqtt" });
//   player.play("builtin://testsrc");
//   player.stats();   // {state, currentTime, latencyMs, decodedFrames, ...}
//   player.stop();
//
// Protocol (docs/PROTOCOL.md): describe -> isTypeSupported -> play, media on a fresh reply topic per play,
// statuses on `<reply_topic>/status`, stop (and the same stop as the MQTT last will). One MQTT connection per
// Player, because a connection has one last will and the will must name the reply topic being played.
//
// Live edge (docs/design.md, "Browser"): start every play at a keyframe (fragments are dropped until one whose
// video starts with a sync sample), then hold the playhead a small target behind `buffered.end` by nudging
// `playbackRate`, jump when far behind or when the playhead sits in a gap, trim old buffer.

import mqtt from "./node_modules/mqtt/dist/mqtt.esm.js";
import { boxType, parseFragment, parseInit, parsePrft } from "./mp4.js";

/** Every option of a Player, with its default. */
export const DEFAULTS = Object.freeze({
  /** MQTT-over-WebSocket URL; null: ws(s)://<page host>/mqtt (the mqtt-video gateway). */
  broker: null,
  /** Control topic prefix (`topics.prefix` of the server). */
  prefix: "video",
  /** Reply topics are `<replyPrefix>/<client id>/...` (`topics.reply_prefix` of the server, without the `/`). */
  replyPrefix: "pages",
  /** Seconds the playhead is held behind the live edge; null: 0.12 with audio, 0.06 video-only. */
  targetLatency: null,
  /** The target grows by this much (s) after each stall with media buffered, up to maxTargetLatency, and shrinks
   * back by targetDecay every targetDecayMs of smooth playback. */
  stallTargetStep: 0.04,
  maxTargetLatency: 0.5,
  targetDecay: 0.01,
  targetDecayMs: 10000,
  /** Jump (seek) to the live edge when more than this many seconds behind it. */
  maxBehind: 1.0,
  /** Jump to the live edge when more than this many seconds further behind than the target for catchUpAfterMs
   * (after a stall: draining 0.3 s at 5 % faster takes 6 s). */
  catchUpSeek: 0.3,
  /** For settleMs after joining, the rate controller uses settleRateGain and settleRateRange: Chromium starts
   * playback only with ~0.2 s buffered (after a seek too, so jumping does not help), and at rateGain it takes
   * ~5 s to reach the target. */
  settleMs: 4000,
  settleRateGain: 1.5,
  settleRateRange: 0.2,
  catchUpAfterMs: 1000,
  /** playbackRate stays within [1 - rateRange, 1 + catchUpRateRange]: slowing down is gentle (the buffer is
   * thin then); catching up may be quicker. */
  rateRange: 0.05,
  catchUpRateRange: 0.1,
  /** playbackRate change per second of distance from the target (proportional gain). */
  rateGain: 0.5,
  /** No rate change while the distance to the target is within ± this many seconds. */
  rateDeadband: 0.01,
  /** Seconds of media kept behind the playhead; older media is removed from the SourceBuffer. */
  keepBuffer: 10,
  /** MQTT keep-alive, seconds. */
  keepalive: 20,
  /** Reconnect delays after the connection to the broker is lost, ms (doubling from min to max). */
  reconnectMinMs: 500,
  reconnectMaxMs: 5000,
  /** How long to wait for the describe reply before giving up, ms. */
  describeTimeoutMs: 15000,
  /** Play again (a renewal for a server that still has us) after this long with no media and no status. */
  mediaTimeoutMs: 6000,
  /** Repeat the play this often while playing: the server ends viewers that do not renew within its
   * `limits.viewer_timeout_secs` (30 s by default). */
  renewMs: 10000,
  /** Start playing (video.play()) as soon as there is something to show. */
  autoplay: true,
  /** Start muted (browsers only autoplay muted video without a user gesture). */
  muted: false,
  /** HTMLMediaElement.preservesPitch. Chromium's pitch-preserving time stretch needs more audio buffered: with
   * it, a ~120 ms target stalled every few seconds whenever playbackRate was not 1; without it, audio is
   * resampled (pitch moves by under a semitone at ±5 %) and playback stays smooth. */
  preservesPitch: false,
});

/** The states a Player can be in, for people and for tests. */
export const STATES = ["idle", "connecting", "buffering", "playing", "reconnecting", "error", "stopped"];

const MAX_ERRORS = 20;
const MAX_EVENTS = 50;
const LATENCY_SAMPLES = 600;
const BITRATE_WINDOW_MS = 3000;
const MAX_QUEUE = 600; // media messages waiting for the SourceBuffer before the pipeline is reset

function randomHex(bytes) {
  const a = new Uint8Array(bytes);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** ws(s)://<page host>/mqtt: the mqtt-video gateway that served this page. */
export function defaultBrokerUrl(loc = globalThis.location) {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc.host}/mqtt`;
}

function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

function round(x, digits = 1) {
  if (x === null || x === undefined || !Number.isFinite(x)) return null;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

// ---------------------------------------------------------------------------------------------------------
// MediaPipeline: MediaSource + SourceBuffer + append queue + live-edge controller for one <video>.
// Knows nothing about MQTT: it is fed whole segments (init segments and [prft]+moof+mdat fragments).
// ---------------------------------------------------------------------------------------------------------

class MediaPipeline {
  constructor(video, options, hooks) {
    this.video = video;
    this.options = options;
    this.hooks = hooks; // {event(kind, detail), error(code, message)}
    this.mime = null;
    this.hasAudio = false;
    this.ms = null;
    this.sb = null;
    this.generation = 0;
    this.queue = []; // [{kind: "append", data} | {kind: "remove", start, end}]
    this.init = null; // the last init segment received, kept to re-append after a reset
    this.initInfo = null; // parseInit(init)
    this.initQueued = false; // the init is queued or appended in the current SourceBuffer
    this.needKeyframe = true;
    this.timeline = []; // [{media: seconds, wall: ms since epoch}] from prft boxes, ascending media time
    this.lastResetAt = -Infinity;
    this.rebuildTimer = null;
    this.removePending = false;
    this.lastTrimAt = 0;
    this.joinedAt = -Infinity;
    this.lastMediaTime = null; // video start time of the last fragment queued, seconds
    this.smoothedBehind = null;
    this.farSince = null;
    this.lastTime = 0;
    this.lastAdvanceAt = -Infinity; // the playhead last moved by playing (not by a seek)
    this.lastProgressAt = performance.now(); // ... by playing or by a seek: for the stall watchdog
    this.playRequested = false;
    this.counters = { resets: 0, jumps: 0, stalls: 0, dropped: 0, appended: 0, droppedBeforeInit: 0, skippedToKeyframe: 0 };
    this.frameBase = { decoded: 0, dropped: 0 }; // frame counters of earlier MediaSources
    this.targetBoost = 0; // seconds added to the target after stalls
    this.lastVideoAt = -Infinity; // when the last fragment carrying video arrived
    this.lastVideoTime = null; // media time of the last video fragment, its usual spacing, and a hole after it
    this.videoInterval = null;
    this.gap = null;
    this.lastStallAt = -Infinity;
    this.lastSeekAt = -Infinity;
    this.lastDecayAt = 0;
    this.onStallEvent = () => this._onStall();
    video.addEventListener("waiting", this.onStallEvent);
    this.onMediaError = () => {
      const err = this.video.error;
      // Not for a MediaSource we already dropped (the SourceBuffer's own error event may have reset first).
      if (!err || !this.ms || performance.now() - this.lastResetAt < 250) return;
      this.reset(`media error ${err.code}${err.message ? `: ${err.message}` : ""}`);
    };
    video.addEventListener("error", this.onMediaError);
  }

  /** Seconds the controller holds the playhead behind the live edge. */
  target() {
    return Math.min(this.options.maxTargetLatency, this.baseTarget() + this.targetBoost);
  }

  /** The configured target: `targetLatency`, or 0.12 s with audio, 0.06 s video-only. */
  baseTarget() {
    if (this.options.targetLatency != null) return this.options.targetLatency;
    return this.hasAudio ? 0.12 : 0.06;
  }

  /**
   * The playhead stopped with media ahead of it: the browser's renderers wanted more buffer than the target
   * leaves (Chromium's audio renderer underflows below ~100 ms and then waits for more each time). Raise the
   * target; it decays back while playback stays smooth.
   */
  _onStall() {
    const v = this.video;
    if (!this.sb || v.seeking || v.paused) return;
    // Only a stop during playback counts: not the wait after a seek or before the first frame.
    const now = performance.now();
    if (this.lastAdvanceAt < this.lastSeekAt || now - this.lastSeekAt < 500 || now - this.joinedAt < 500) return;
    // Chromium fires `waiting` again each time a thin buffer runs dry while it refills: one stall, not four
    // (counting each took the target from 60 to 220 ms within 0.2 s).
    if (now - this.lastStallAt < 1000) return;
    const ahead = this.bufferAhead();
    if (ahead < 0.02) return; // plain starvation: nothing arrived, a bigger target would not have helped
    // Fragments keep coming without video: the server is holding back damaged video until the next keyframe
    // (a gap in the source, not a renderer that wanted more buffer). The jump over the gap follows its end.
    if (now - this.lastVideoAt > 100) return;
    this.counters.stalls++;
    this.lastStallAt = now;
    const before = this.target();
    this.targetBoost = Math.min(this.options.maxTargetLatency - this.baseTarget(), this.targetBoost + this.options.stallTargetStep);
    this.hooks.event("stall", `stalled with ${(ahead * 1000).toFixed(0)} ms buffered; target ${(before * 1000).toFixed(0)} -> ${(this.target() * 1000).toFixed(0)} ms`);
  }

  /** Starts (or restarts) the pipeline for a stream of this MIME type. */
  start(mime, hasAudio) {
    this.mime = mime;
    this.hasAudio = hasAudio;
    this.init = null;
    this.initInfo = null;
    this.counters = { resets: 0, jumps: 0, stalls: 0, dropped: 0, appended: 0, droppedBeforeInit: 0, skippedToKeyframe: 0 };
    this._rebuild(false);
    this.frameBase = { decoded: 0, dropped: 0 }; // a new play counts its own frames
  }

  /** The stream's MIME type changed (a `playing` status): new SourceBuffer, wait for the new init segment. */
  changeMime(mime) {
    if (mime === this.mime) return;
    this.mime = mime;
    this.hasAudio = /mp4a|opus|flac|ac-3|ec-3/i.test(mime);
    this.init = null;
    this.initInfo = null;
    this.hooks.event("mime", mime);
    this._rebuild(false);
  }

  /** Tears down the MediaSource and builds a new one, re-appending the kept init segment. */
  reset(reason) {
    this.counters.resets++;
    this.hooks.event("reset", reason);
    this._rebuild(true);
  }

  /** Detaches everything; the pipeline can be started again. */
  close() {
    clearTimeout(this.rebuildTimer);
    this._teardown();
    this.mime = null;
    this.init = null;
    this.initInfo = null;
    this.timeline = [];
  }

  destroy() {
    this.close();
    this.video.removeEventListener("error", this.onMediaError);
    this.video.removeEventListener("waiting", this.onStallEvent);
  }

  _teardown() {
    this.generation++;
    const q = this._quality();
    this.frameBase = { decoded: q.decoded, dropped: q.dropped };
    this.sb = null;
    this.queue = [];
    this.initQueued = false;
    this.removePending = false;
    this.needKeyframe = true;
    this.timeline = [];
    this.smoothedBehind = null;
    this.farSince = null;
    this.playRequested = false;
    this.lastMediaTime = null;
    this.lastVideoTime = null;
    this.gap = null;
    this.lastTime = 0;
    this.lastAdvanceAt = -Infinity;
    if (this.ms) {
      this.ms = null;
      this.video.removeAttribute("src");
      this.video.load(); // drops the old MediaSource; fires "emptied", not "error"
    }
  }

  _rebuild(throttle) {
    clearTimeout(this.rebuildTimer);
    this._teardown();
    // A reset right after another one waits a little, so a stream that keeps failing cannot spin.
    const now = performance.now();
    const wait = throttle && now - this.lastResetAt < 1000 ? 1000 : 0;
    this.lastResetAt = now;
    if (this.init) this._queueInit();
    const build = () => {
      const MS = globalThis.ManagedMediaSource || globalThis.MediaSource;
      if (!MS) {
        this.hooks.error("no_mse", "This browser has no MediaSource API.");
        return;
      }
      const gen = this.generation;
      const ms = new MS();
      this.ms = ms;
      if (globalThis.ManagedMediaSource && MS === globalThis.ManagedMediaSource) {
        this.video.disableRemotePlayback = true;
      }
      const url = URL.createObjectURL(ms);
      ms.addEventListener(
        "sourceopen",
        () => {
          URL.revokeObjectURL(url);
          if (gen === this.generation) this._createSourceBuffer();
        },
        { once: true },
      );
      this.video.src = url;
    };
    if (wait) this.rebuildTimer = setTimeout(build, wait);
    else build();
  }

  _createSourceBuffer() {
    if (!this.ms || this.ms.readyState !== "open" || this.sb || !this.mime) return;
    const gen = this.generation;
    try {
      this.sb = this.ms.addSourceBuffer(this.mime);
    } catch (e) {
      this.hooks.error("media_error", `cannot create a SourceBuffer for ${this.mime}: ${e.message}`);
      return;
    }
    this.sb.addEventListener("updateend", () => {
      if (gen !== this.generation) return;
      if (this.removePending && !this.sb.updating) this.removePending = false;
      this._pump();
      this.control();
    });
    this.sb.addEventListener("error", () => {
      if (gen === this.generation) this.reset("SourceBuffer error");
    });
    this._pump();
  }

  _queueInit() {
    this.queue.push({ kind: "append", data: this.init });
    this.initQueued = true;
    this.joinedAt = performance.now();
  }

  /** Takes one binary message from the reply topic. */
  push(payload) {
    // Copy: the MQTT library may reuse the memory under the payload, and appendBuffer reads it later.
    const bytes = new Uint8Array(payload);
    const type = boxType(bytes);
    if (type === "ftyp") return this._onInit(bytes);
    if (!this.init) {
      this.counters.droppedBeforeInit++; // e.g. left over from an earlier play, or the init is yet to come
      return;
    }
    let prft = null;
    let frag = bytes;
    let video = null;
    try {
      if (type === "prft") {
        prft = parsePrft(bytes);
        if (!prft) throw new Error("malformed prft");
        frag = bytes.subarray(prft.size); // strip it: not every MSE accepts a top-level prft
      }
      if (boxType(frag) !== "moof") throw new Error(`unexpected box "${boxType(frag)}"`);
      const info = parseFragment(frag, this.initInfo);
      video = info.trafs.find((t) => t.trackId === this.initInfo.videoTrackId && t.sampleCount > 0) ?? null;
    } catch (e) {
      this.counters.dropped++;
      this.hooks.event("bad_fragment", e.message);
      return;
    }
    const timescale = this.initInfo.tracks.get(this.initInfo.videoTrackId)?.timescale;
    const mediaTime = video && video.baseMediaDecodeTime !== null && timescale ? video.baseMediaDecodeTime / timescale : null;
    if (mediaTime !== null) {
      // The timeline went back (a source that restarted from 0): the old buffer sits after the new media and
      // would swallow it. Start a fresh MediaSource at the next keyframe.
      if (this.lastMediaTime !== null && mediaTime < this.lastMediaTime - 0.5) {
        this.reset(`the media timeline went back from ${this.lastMediaTime.toFixed(2)} s to ${mediaTime.toFixed(2)} s`);
      }
    }
    if (this.needKeyframe) {
      if (!video || !video.firstSampleSync) {
        this.counters.skippedToKeyframe++;
        return;
      }
      this.needKeyframe = false;
    }
    if (mediaTime !== null) this.lastMediaTime = mediaTime;
    if (video) {
      this.lastVideoAt = performance.now();
      if (mediaTime !== null) this._trackVideoGap(mediaTime);
    }
    if (prft) this._addTimeline(prft);
    if (this.queue.length >= MAX_QUEUE) {
      this.reset(`${this.queue.length} segments waiting for the SourceBuffer`);
      return;
    }
    this.queue.push({ kind: "append", data: frag });
    this._pump();
  }


  _onInit(bytes) {
    const info = parseInit(bytes);
    if (!info || info.videoTrackId == null) {
      this.hooks.event("bad_init", "init segment without a video track");
      return;
    }
    const same = this.init !== null && sameBytes(this.init, bytes);
    this.init = bytes;
    this.initInfo = info;
    this.hasAudio = info.audioTrackId != null;
    if (same && this.initQueued) return; // the server repeated what this SourceBuffer already has
    this.needKeyframe = true;
    this._queueInit();
    this._pump();
  }

  _addTimeline(prft) {
    const track = this.initInfo.tracks.get(prft.trackId) ?? this.initInfo.tracks.get(this.initInfo.videoTrackId);
    if (!track || !track.timescale) return;
    const media = prft.mediaTime / track.timescale;
    const tl = this.timeline;
    if (tl.length && media < tl[tl.length - 1].media) tl.length = 0; // the stream's timeline restarted
    tl.push({ media, wall: prft.wallMs });
    this.arrivalLatencyMs = Date.now() - prft.wallMs; // network and server only: the rest is the page's
    if (tl.length > 4000) tl.splice(0, tl.length - 3000);
  }

  /** The source wall clock (ms since the epoch) of media time `t` (seconds), from the prft at or before it. */
  wallClockAt(t) {
    const tl = this.timeline;
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

  _pump() {
    const sb = this.sb;
    if (!sb || sb.updating || !this.ms || this.ms.readyState !== "open") return;
    while (this.queue.length) {
      const op = this.queue.shift();
      try {
        if (op.kind === "append") {
          sb.appendBuffer(op.data);
          this.counters.appended++;
        } else {
          if (op.end <= op.start) continue;
          sb.remove(op.start, op.end);
          this.removePending = true;
        }
        return;
      } catch (e) {
        if (e.name === "QuotaExceededError") this.reset("QuotaExceededError: the SourceBuffer is full");
        else this.reset(`${op.kind} failed: ${e.name}: ${e.message}`);
        return;
      }
    }
  }

  _quality() {
    const v = this.video;
    let decoded = 0;
    let dropped = 0;
    if (typeof v.getVideoPlaybackQuality === "function") {
      const q = v.getVideoPlaybackQuality();
      decoded = q.totalVideoFrames;
      dropped = q.droppedVideoFrames;
    } else {
      decoded = v.webkitDecodedFrameCount ?? 0;
      dropped = v.webkitDroppedFrameCount ?? 0;
    }
    // A new MediaSource starts the element's counters again; keep the totals of the old ones.
    return { decoded: this.frameBase.decoded + decoded, dropped: this.frameBase.dropped + dropped };
  }

  /** Seconds buffered ahead of the playhead (0 when the playhead is outside every range). */
  bufferAhead() {
    const b = this.video.buffered;
    const t = this.video.currentTime;
    for (let i = 0; i < b.length; i++) if (t >= b.start(i) && t <= b.end(i)) return b.end(i) - t;
    return 0;
  }

  _seek(to, why) {
    this.counters.jumps++;
    this.smoothedBehind = null;
    this.farSince = null;
    this.hooks.event("jump", `${why}: ${this.video.currentTime.toFixed(3)} -> ${to.toFixed(3)}`);
    this.video.currentTime = to;
    this.lastSeekAt = performance.now();
    this.lastTime = to; // a seek is not playback progress
    this.lastProgressAt = performance.now();
  }

  /**
   * Video that jumps ahead in media time: the server held back damaged video up to this keyframe (audio went
   * on). Browsers stop at such a hole, and may report one buffered range across it, so the controller steps
   * over it as soon as the keyframe is in.
   */
  _trackVideoGap(mediaTime) {
    if (this.lastVideoTime !== null) {
      const d = mediaTime - this.lastVideoTime;
      const interval = this.videoInterval ?? 1 / 30;
      if (d > 0 && d <= 0.2) this.videoInterval = this.videoInterval === null ? d : this.videoInterval * 0.9 + d * 0.1;
      else if (d > Math.max(0.1, 3 * interval)) this.gap = { start: this.lastVideoTime + interval, end: mediaTime };
    }
    this.lastVideoTime = mediaTime;
  }

  /** The live-edge controller; runs on every append and on a timer. */
  control() {
    const v = this.video;
    if (!this.sb || !this.ms || v.seeking) return;
    const b = v.buffered;
    if (!b.length) return;
    const now = performance.now();
    const t = v.currentTime;
    const last = b.length - 1;
    const start = b.start(last);
    const end = b.end(last);
    const target = this.target();
    const live = Math.max(start, end - target);

    if (t !== this.lastTime) {
      this.lastTime = t;
      this.lastAdvanceAt = now;
      this.lastProgressAt = now;
    }
    if (this.gap && t >= this.gap.end) this.gap = null;
    if (this.gap && t >= this.gap.start - 0.25 && end >= this.gap.end && !this.sb.updating) {
      const over = this.gap;
      this.gap = null;
      this._seek(Math.max(over.end, end - target), `over ${((over.end - over.start) * 1000).toFixed(0)} ms of held-back video`);
      return;
    }

    if (this.options.autoplay && v.paused && !this.playRequested && v.readyState >= 2) {
      this.playRequested = true;
      v.play().catch((e) => {
        if (e.name === "NotAllowedError" && !v.muted) {
          // Autoplay with sound was refused: play muted, the page offers to unmute.
          v.muted = true;
          this.hooks.event("muted", "autoplay with sound was refused; playing muted");
          v.play().catch((e2) => this.hooks.event("autoplay", e2.message));
        } else if (e.name !== "AbortError") {
          this.hooks.event("autoplay", `${e.name}: ${e.message}`);
        }
      });
    }

    // Outside the newest range: the start of a play (media time does not start at 0), a late join, or a gap
    // left by a source restart. Go to the live edge of the newest range, which starts at a keyframe.
    if (t < start - 0.001 || t > end + 0.25) {
      // A joiner gets the GOP so far in one burst: append it all first, then seek once.
      if (this.sb.updating || this.queue.length) return;
      this._seek(live, "playhead outside the newest range");
      this.joinedAt = now;
      return;
    }
    const behind = end - t;
    if (behind > this.options.maxBehind) {
      this._seek(end - target, `${behind.toFixed(2)} s behind the live edge`);
      return;
    }
    // Stalled with media ahead (e.g. a hole inside a range that the decoder will not cross): step over it.
    if (!v.paused && now - this.lastProgressAt > 1500 && behind > target + 0.3) {
      this._seek(end - target, "stalled with media ahead");
      return;
    }

    if (!v.paused) {
      this.smoothedBehind = this.smoothedBehind === null ? behind : this.smoothedBehind * 0.8 + behind * 0.2;
      const err = this.smoothedBehind - target;
      // Far behind for a while (a stall, a slow start): jump rather than crawl back at a few percent.
      if (err > this.options.catchUpSeek) {
        this.farSince ??= now;
        // Right after joining, the GOP burst may still have been arriving at the first seek: jump again at once.
        const justJoined = now - this.joinedAt < 2000;
        if (justJoined || now - this.farSince > this.options.catchUpAfterMs) {
          this.farSince = null;
          this._seek(end - target, `${(err * 1000).toFixed(0)} ms behind the target for ${this.options.catchUpAfterMs} ms`);
          return;
        }
      } else {
        this.farSince = null;
      }
      const settling = now - this.joinedAt < this.options.settleMs;
      const gain = settling ? this.options.settleRateGain : this.options.rateGain;
      const up = settling ? this.options.settleRateRange : this.options.catchUpRateRange;
      let rate = 1;
      if (Math.abs(err) > this.options.rateDeadband) {
        rate = 1 + Math.max(-this.options.rateRange, Math.min(up, err * gain));
      }
      rate = Math.round(rate * 200) / 200; // steps of 0.005: fewer rate changes for the audio renderer
      if (v.playbackRate !== rate) v.playbackRate = rate;
    }

    if (this.targetBoost > 0 && now - this.lastStallAt > this.options.targetDecayMs && now - this.lastDecayAt > this.options.targetDecayMs) {
      this.lastDecayAt = now;
      this.targetBoost = Math.max(0, this.targetBoost - this.options.targetDecay);
    }

    // Trim media far behind the playhead so the SourceBuffer never fills up.
    const keep = this.options.keepBuffer;
    if (!this.removePending && now - this.lastTrimAt > 2000 && t - b.start(0) > keep + 2) {
      this.lastTrimAt = now;
      this.removePending = true;
      this.queue.push({ kind: "remove", start: 0, end: t - keep });
      this._pump();
    }
  }

  quality() {
    return this._quality();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Player: one MQTT connection, the control protocol, states and figures.
// ---------------------------------------------------------------------------------------------------------

export class Player extends EventTarget {
  /**
   * @param {HTMLVideoElement} video the element to play into
   * @param {Partial<typeof DEFAULTS>} options see DEFAULTS
   */
  constructor(video, options = {}) {
    super();
    this.video = video;
    this.options = { ...DEFAULTS };
    for (const [k, v] of Object.entries(options)) if (v !== undefined) this.options[k] = v;
    this.broker = this.options.broker || defaultBrokerUrl();
    this.prefix = this.options.prefix;
    if (this.options.muted) video.muted = true;
    video.playsInline = true;
    if ("preservesPitch" in video) video.preservesPitch = this.options.preservesPitch;

    this.state = "idle";
    this.message = "";
    this.url = null; // the source being played; null when not playing
    this.describeReply = null;
    this.sources = null; // null: no list received yet; []: no server
    this.connected = false;
    this.errors = [];
    this.events = [];

    this._conn = null; // {client, base, infoTopic, mediaTopic, used, connected}
    this._attempt = 0;
    this._reconnectTimer = null;
    this._serverReconnecting = false;
    this._staleTopics = []; // reply topics of connections that died: stopped on the next connection
    this._everConnected = false;
    this._destroyed = false;
    this._resetPlayFigures();

    this.media = new MediaPipeline(video, this.options, {
      event: (kind, detail) => this._event(kind, detail),
      error: (code, message) => this._fail(code, message),
    });
    this._tick = setInterval(() => this._onTick(), 100);
    this._watchFrames();
    this._connect();
  }

  // ----- public API -------------------------------------------------------------------------------------

  /** Plays `url` (a source URL as listed on `<prefix>/sources`, or any URL the server allows). */
  play(url) {
    url = String(url ?? "").trim();
    if (!url || this._destroyed) return;
    if (this.url) this._sendStop();
    this.url = url;
    this.describeReply = null;
    this._serverReconnecting = false;
    this._resetPlayFigures();
    this.media.close();
    this._setState("connecting", `connecting to ${url}`);
    const conn = this._conn;
    if (conn && !conn.used) {
      // An unused connection: its reply topic and last will are fresh. Play now, or once it is subscribed.
      if (conn.subscribed) this._startPlay(conn);
    } else {
      this._reconnectNow(); // a fresh connection: a fresh reply topic and a last will naming it
    }
  }

  /** Stops playing; the connection stays for the source list. */
  stop() {
    if (!this.url) return;
    this._sendStop();
    this.url = null;
    this.media.close();
    this.video.playbackRate = 1;
    this._setState("stopped", "stopped");
  }

  /** Stops and closes the connection for good. */
  destroy() {
    this.stop();
    this._destroyed = true;
    clearInterval(this._tick);
    clearTimeout(this._reconnectTimer);
    this.media.destroy();
    if (this._conn) this._conn.client.end(false);
    this._conn = null;
  }

  /** A snapshot of what the player is doing, for the page and for tests. */
  stats() {
    const v = this.video;
    const q = this.media.quality();
    const now = performance.now();
    while (this._bytes.length && now - this._bytes[0].at > BITRATE_WINDOW_MS) this._bytes.shift();
    const span = this._bytes.length ? Math.max(1000, now - this._bytes[0].at) : BITRATE_WINDOW_MS;
    const bytes = this._bytes.reduce((n, e) => n + e.n, 0);
    const sorted = this._latencies.slice().sort((a, b) => a - b);
    return {
      state: this.state,
      message: this.message,
      url: this.url,
      broker: this.broker,
      connected: this.connected,
      replyTopic: this._conn?.used ? this._conn.mediaTopic : null,
      currentTime: round(v.currentTime, 3),
      paused: v.paused,
      playbackRate: v.playbackRate,
      latencyMs: round(this.latencyNow(), 1),
      latencyP50Ms: round(percentile(sorted, 50), 1),
      latencyP95Ms: round(percentile(sorted, 95), 1),
      latencySamples: sorted.length,
      targetLatencyMs: round(this.media.target() * 1000, 0),
      firstFrameMs: round(this._firstFrameMs, 1), // from play() to the first frame shown
      firstFrameAtMs: this._firstFrameMs === null ? null : round(this._playStartedAt + this._firstFrameMs, 1),
      decodedFrames: q.decoded,
      droppedFrames: q.dropped,
      bufferSeconds: round(this.media.bufferAhead(), 3),
      arrivalLatencyMs: round(this.media.arrivalLatencyMs ?? null, 1),
      queuedSegments: this.media.queue.length,
      width: v.videoWidth || this.describeReply?.width || 0,
      height: v.videoHeight || this.describeReply?.height || 0,
      mimeCodec: this.media.mime ?? this.describeReply?.mimeCodec ?? null,
      hasAudio: this.media.hasAudio,
      bitrateKbps: round((bytes * 8) / span, 1), // bits per ms = kbit/s
      receivedBytes: this._receivedBytes,
      resets: this.media.counters.resets,
      jumps: this.media.counters.jumps,
      stalls: this.media.counters.stalls,
      skippedToKeyframe: this.media.counters.skippedToKeyframe,
      reconnects: this._reconnects,
      errors: this.errors.slice(),
    };
  }

  /** now − the source wall clock of the frame at currentTime, in ms; null before any prft. */
  latencyNow() {
    const wall = this.media.wallClockAt(this.video.currentTime);
    if (wall === null || this.state !== "playing") return null;
    return Date.now() - wall;
  }

  /** The latency of the frames rendered since the play started (ms), oldest first (at most the last 600). */
  latencyHistory() {
    return this._latencies.slice();
  }

  /**
   * The frames rendered after the first `mark` of this play (ms, oldest first) and the next mark: poll with the
   * returned mark to see every frame once (poll more often than every 600 frames, or the oldest are lost).
   */
  latenciesSince(mark = 0) {
    const first = this._latencyCount - this._latencies.length;
    return { latencies: this._latencies.slice(Math.max(0, mark - first)), mark: this._latencyCount };
  }

  // ----- MQTT connection ----------------------------------------------------------------------------

  _connect() {
    if (this._destroyed) return;
    // Reply topics under pages/<client id>/: a broker ACL can then give each page its own topics
    // (`pattern readwrite pages/%c/#`, docker/mosquitto.acl) and the server can insist on the prefix.
    const clientId = `page_${randomHex(12)}`;
    const base = `${this.options.replyPrefix}/${clientId}`;
    const conn = {
      base,
      infoTopic: `${base}/info`,
      mediaTopic: `${base}/media`,
      used: false,
      connected: false,
      client: null,
    };
    const stop = JSON.stringify({ reply_topic: conn.mediaTopic });
    conn.client = mqtt.connect(this.broker, {
      clientId,
      protocolVersion: 4,
      clean: true,
      keepalive: this.options.keepalive,
      reconnectPeriod: 0, // reconnects are ours: each one gets a new reply topic and last will
      connectTimeout: 5000,
      will: { topic: `${this.prefix}/stop`, payload: stop, qos: 0, retain: false },
    });
    conn.client.on("connect", () => this._onConnect(conn));
    conn.client.on("message", (topic, payload) => {
      if (conn === this._conn) this._onMessage(conn, topic, payload);
    });
    conn.client.on("close", () => this._onClose(conn));
    conn.client.on("error", (e) => {
      if (conn === this._conn) this._event("mqtt_error", e.message);
    });
    this._conn = conn;
  }

  /** Drops the current connection (cleanly: no last will) and opens a new one at once. */
  _reconnectNow() {
    clearTimeout(this._reconnectTimer);
    const old = this._conn;
    this._conn = null;
    if (old) old.client.end(false);
    this._connect();
  }

  _onConnect(conn) {
    if (conn !== this._conn) return;
    conn.connected = true;
    this.connected = true;
    this._everConnected = true;
    this._attempt = 0;
    this._dispatch("connection");
    const topics = [`${this.prefix}/sources`, `${conn.base}/#`];
    conn.client.subscribe(topics, { qos: 0 }, (err) => {
      if (conn !== this._conn) return;
      if (err) {
        this._fail("subscribe_failed", `cannot subscribe: ${err.message}`);
        return;
      }
      conn.subscribed = true;
      // Sent again when the server's source list arrives (it may not be subscribed yet after a broker restart).
      for (const topic of this._staleTopics) this._publish(`${this.prefix}/stop`, { reply_topic: topic });
      if (this.url && !conn.used) this._startPlay(conn);
    });
  }

  _onClose(conn) {
    if (conn !== this._conn) return; // one we replaced on purpose
    const wasConnected = conn.connected;
    // The broker publishes our last will (a stop) when it notices the loss, unless the broker itself died;
    // then the server keeps sending to the old reply topic. Stop it ourselves once connected again.
    if (conn.used) this._staleTopics.push(conn.mediaTopic);
    if (this._staleTopics.length > 8) this._staleTopics.shift();
    conn.connected = false;
    this.connected = false;
    this._conn = null;
    conn.client.end(true);
    if (this._destroyed) return;
    this._dispatch("connection");
    if (this.url && wasConnected) this._reconnects++;
    const delay = Math.min(this.options.reconnectMaxMs, this.options.reconnectMinMs * 2 ** this._attempt);
    if (this.url && this.state !== "error") {
      if (this._everConnected) this._setState("reconnecting", `lost the connection to ${this.broker}; reconnecting`);
      else this._setState("connecting", `cannot reach the broker at ${this.broker}; trying again in ${(delay / 1000).toFixed(1)} s`);
    }
    this._attempt = Math.min(this._attempt + 1, 10);
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = setTimeout(() => this._connect(), delay);
  }

  _publish(topic, message) {
    const conn = this._conn;
    if (!conn || !conn.connected) return;
    conn.client.publish(topic, JSON.stringify(message), { qos: 0, retain: false });
  }

  _sendStop() {
    const conn = this._conn;
    if (conn && conn.used) this._publish(`${this.prefix}/stop`, { reply_topic: conn.mediaTopic });
  }

  // ----- the play exchange --------------------------------------------------------------------------

  _startPlay(conn) {
    conn.used = true;
    conn.described = false;
    // Media from the previous connection's play is gone with its reply topic; the pipeline starts afresh
    // (the kept init segment is re-appended if the server does not resend it).
    if (this.media.mime) this.media.reset("new play after reconnecting");
    if (this.state !== "reconnecting") this._setState("connecting", `asking the server for ${this.url}`);
    conn.describeFirstAt = performance.now();
    conn.playFirstAt = conn.playSentAt = null;
    conn.lastMessageAt = performance.now();
    conn.answered = false;
    this._sendDescribe(conn, conn.describeFirstAt);
  }

  /** Publishes this play's describe request; `at` is when, for the retries. */
  _sendDescribe(conn, at) {
    conn.describeSentAt = at;
    this._publish(`${this.prefix}/describe`, { url: this.url, reply_topic: conn.infoTopic });
  }

  /** Publishes this play's play request; `at` is when, for the retries. */
  _sendPlay(conn, at) {
    conn.playSentAt = at;
    this._publish(`${this.prefix}/play`, { url: this.url, reply_topic: conn.mediaTopic });
  }

  /**
   * Requests are QoS 0 and the server may not be subscribed yet (right after a broker restart both sides
   * reconnect at once), so describe and play are repeated until answered; both are safe to repeat.
   */
  _retryRequests(conn) {
    const now = performance.now();
    const limit = this.options.describeTimeoutMs;
    if (!conn.described) {
      if (now - conn.describeFirstAt > limit) {
        this._fail("timeout", "no answer from the server (is mqtt-video serve running on this broker?)");
      } else if (now - conn.describeSentAt > 2000) {
        this._event("retry", "describe");
        this._sendDescribe(conn, now);
      }
    } else if (conn.playSentAt !== null && !conn.answered) {
      if (now - conn.playFirstAt > limit) {
        this._fail("timeout", "the server accepted the source but sent nothing for the play request");
      } else if (now - conn.playSentAt > 3000) {
        this._event("retry", "play");
        this._sendPlay(conn, now);
      }
    } else if (conn.answered && now - conn.lastMessageAt > this.options.mediaTimeoutMs && now - conn.playSentAt > this.options.mediaTimeoutMs) {
      // Nothing at all (no media, no status) for a while: the server that served us may be gone (another
      // instance of a pool takes over on a new play). For a server that still has us, a play only renews.
      this._event("retry", `play (nothing received for ${this.options.mediaTimeoutMs / 1000} s)`);
      this._sendPlay(conn, now);
    } else if (conn.answered && now - conn.playSentAt > this.options.renewMs) {
      this._sendPlay(conn, now);
    }
  }

  _onMessage(conn, topic, payload) {
    if (topic === conn.mediaTopic) {
      conn.answered = true;
      conn.lastMessageAt = performance.now();
      this._onMedia(payload);
    } else if (topic === `${conn.mediaTopic}/status`) {
      conn.answered = true;
      conn.lastMessageAt = performance.now();
      this._onStatus(this._json(payload));
    } else if (topic === conn.infoTopic) {
      this._onDescribe(conn, this._json(payload));
    } else if (topic === `${this.prefix}/sources`) {
      this._onSources(payload);
    }
  }

  _json(payload) {
    try {
      return JSON.parse(new TextDecoder().decode(payload));
    } catch {
      return null;
    }
  }

  _onSources(payload) {
    let list = [];
    if (payload.length) {
      const msg = this._json(payload);
      if (msg && Array.isArray(msg.sources)) list = msg.sources.filter((s) => s && typeof s.url === "string");
    }
    this.sources = list; // empty: no server serves this broker right now
    this._dispatch("sources");
    // The server publishes this list right after it (re)subscribed: requests it may have missed go again now.
    const conn = this._conn;
    if (!list.length || !conn) return;
    for (const topic of this._staleTopics.splice(0)) this._publish(`${this.prefix}/stop`, { reply_topic: topic });
    if (this.url && conn.used && !conn.described) {
      this._event("retry", "describe (the server is back)");
      this._sendDescribe(conn, performance.now());
    }
  }

  _onDescribe(conn, reply) {
    if (!this.url || !conn.used || conn.described || this.state === "error") return;
    conn.described = true;
    if (!reply || typeof reply !== "object") {
      this._fail("bad_reply", "the server's describe reply is not JSON");
      return;
    }
    if (reply.error) {
      this._fail(reply.error.code ?? "error", reply.error.message ?? JSON.stringify(reply.error));
      return;
    }
    const mime = reply.mimeCodec;
    const MS = globalThis.ManagedMediaSource || globalThis.MediaSource;
    if (!MS) {
      this._fail("no_mse", "This browser has no MediaSource API: it cannot play live fMP4.");
      return;
    }
    if (typeof mime !== "string" || !MS.isTypeSupported(mime)) {
      this._fail("unsupported_codec", `This browser cannot play ${mime} (MediaSource.isTypeSupported is false).`);
      return;
    }
    const first = this.describeReply === null;
    this.describeReply = reply;
    if (first && !this.media.mime) this.media.start(mime, !!reply.has_audio);
    else if (mime !== this.media.mime) this.media.changeMime(mime);
    this._setState(this.state === "reconnecting" ? "reconnecting" : "buffering", "waiting for media");
    conn.playFirstAt = performance.now();
    this._sendPlay(conn, conn.playFirstAt);
  }

  _onStatus(status) {
    if (!status || !this.url) return;
    this._event("status", JSON.stringify(status));
    switch (status.state) {
      case "playing":
        this._serverReconnecting = false;
        if (status.mimeCodec && status.mimeCodec !== this.media.mime) {
          const MS = globalThis.ManagedMediaSource || globalThis.MediaSource;
          if (!MS.isTypeSupported(status.mimeCodec)) {
            this._fail("unsupported_codec", `The source changed to ${status.mimeCodec}, which this browser cannot play.`);
            return;
          }
          this.media.changeMime(status.mimeCodec);
        }
        break;
      case "buffering":
        if (this.state !== "playing") this._setState("buffering", "the server is opening the source");
        break;
      case "reconnecting":
        this._serverReconnecting = true;
        this._setState(
          "reconnecting",
          `the source dropped; the server reconnects (attempt ${status.attempt}, in ${status.retry_in_ms} ms)`,
        );
        break;
      case "waiting":
        // A pushed source lost its publisher: the session stays, media resumes when one is back.
        this._serverReconnecting = true;
        this._setState("reconnecting", status.message ?? "waiting for the publisher");
        break;
      case "error":
        this._fail(status.code ?? "error", status.message ?? "error");
        break;
      case "ended":
        this.url = null;
        this.media.close();
        this._setState("stopped", `ended: ${status.reason ?? "?"}`);
        break;
      default:
        break;
    }
  }

  _onMedia(payload) {
    if (!this.url || this.state === "error" || this.state === "stopped") return;
    this._receivedBytes += payload.length;
    this._bytes.push({ at: performance.now(), n: payload.length });
    if (this._bytes.length > 2000) this._bytes.splice(0, 1000);
    this._serverReconnecting = false;
    this.media.push(payload);
  }

  // ----- states, figures, events -----------------------------------------------------------------

  _onTick() {
    if (!this.url) return;
    this.media.control();
    if (this.state === "error" || this.state === "stopped") return;
    const conn = this._conn;
    if (conn && conn.connected && conn.used) this._retryRequests(conn);
    if (this.state === "error") return;
    if (!this.connected && !this._everConnected) return; // still connecting for the first time
    if (!this.connected || this._serverReconnecting) {
      if (this.state !== "reconnecting") this._setState("reconnecting", "reconnecting");
      return;
    }
    if (!this.describeReply) return; // still connecting
    const v = this.video;
    const advancing = !v.paused && performance.now() - this.media.lastAdvanceAt < 500 && this.media.lastTime > 0;
    if (advancing) {
      if (this._firstFrameMs === null) this._firstFrameMs = performance.now() - this._playStartedAt;
      if (this.state !== "playing") this._setState("playing", "playing");
    } else if (this.state === "playing" || this.state === "reconnecting" || this.state === "connecting") {
      this._setState("buffering", v.paused && this.media.lastTime > 0 ? "paused" : "waiting for media");
    }
  }

  _watchFrames() {
    const v = this.video;
    if (typeof v.requestVideoFrameCallback !== "function") return;
    const onFrame = (_now, meta) => {
      if (this._destroyed) return;
      if (this.url && this.state !== "error") {
        if (this._firstFrameMs === null && meta.mediaTime > 0) {
          this._firstFrameMs = performance.now() - this._playStartedAt;
        }
        const wall = this.media.wallClockAt(meta.mediaTime);
        if (wall !== null) {
          const shown = performance.timeOrigin + meta.expectedDisplayTime;
          this._latencies.push(shown - wall);
          this._latencyCount++;
          if (this._latencies.length > LATENCY_SAMPLES) this._latencies.shift();
        }
      }
      v.requestVideoFrameCallback(onFrame);
    };
    v.requestVideoFrameCallback(onFrame);
  }

  _resetPlayFigures() {
    this._playStartedAt = performance.now();
    this._firstFrameMs = null;
    this._latencies = [];
    this._latencyCount = 0;
    this._bytes = [];
    this._receivedBytes = 0;
    this._reconnects = 0;
    this.errors = [];
  }

  _fail(code, message) {
    this.errors.push({ at: new Date().toISOString(), code, message });
    if (this.errors.length > MAX_ERRORS) this.errors.shift();
    this._event("error", `${code}: ${message}`);
    if (this.url) {
      this._sendStop();
      this.url = null;
    }
    this.media.close();
    this._setState("error", message, code);
  }

  _setState(state, message = "", code = null) {
    if (this.state === state && this.message === message) return;
    this.state = state;
    this.message = message;
    this.errorCode = state === "error" ? code : null;
    this._dispatch("state");
  }

  _event(kind, detail) {
    this.events.push({ at: new Date().toISOString(), kind, detail });
    if (this.events.length > MAX_EVENTS) this.events.shift();
    this._dispatch("event");
  }

  _dispatch(type) {
    this.dispatchEvent(new Event(type));
  }
}
