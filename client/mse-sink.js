// The MediaSource renderer: a <video> fed through MediaSource + one SourceBuffer, an append queue that
// respects `updating`, keyframe gating, and the live-edge controller (live-edge.js) applied to the element.
// Knows nothing about MQTT: it is fed whole messages (init segments and [prft]+moof+mdat fragments).

import { LiveEdge, bufferAhead } from "./live-edge.js";
import { boxType, parseInit, parseMessage, sameBytes } from "./mp4.js";
import { prftPoint, Timeline } from "./timeline.js";

const MAX_QUEUE = 600; // media messages waiting for the SourceBuffer before the pipeline is reset

/** The MediaSource constructor of this browser (ManagedMediaSource where there is one), or null. */
function mediaSourceClass() {
  return globalThis.ManagedMediaSource || globalThis.MediaSource || null;
}

/** Whether this browser can play `mime` through MediaSource. */
export function mseSupports(mime) {
  const MS = mediaSourceClass();
  return !!MS && typeof mime === "string" && MS.isTypeSupported(mime);
}

export class MseSink {
  /**
   * @param {HTMLVideoElement} video
   * @param {object} options the Player's options (the live-edge ones are read by LiveEdge)
   * @param {{event(kind, detail), error(code, message)}} hooks
   */
  constructor(video, options, hooks) {
    this.kind = "mse";
    this.video = video;
    this.options = options;
    this.hooks = hooks;
    this.edge = new LiveEdge(options);
    this.timeline = new Timeline();
    this.mime = null;
    this.ms = null;
    this.sb = null;
    this.generation = 0;
    this.queue = []; // [{kind: "append", data} | {kind: "remove", start, end} | {kind: "changeType", mime}]
    this.init = null; // the last init segment received, kept to re-append after a reset
    this.initInfo = null; // parseInit(init)
    this.initQueued = false; // the init is queued or appended in the current SourceBuffer
    this.needKeyframe = true;
    this.lastResetAt = -Infinity;
    this.rebuildTimer = null;
    this.removePending = false;
    this.lastMediaTime = null; // video start time of the last fragment queued, seconds
    this.counters = newCounters();
    this.frameBase = { decoded: 0, dropped: 0 }; // frame counters of earlier MediaSources
    this.onStallEvent = () => this._onStall();
    video.addEventListener("waiting", this.onStallEvent);
    this.onMediaError = () => {
      const err = this.video.error;
      // Not for a MediaSource we already dropped (the SourceBuffer's own error event may have reset first).
      if (!err || !this.ms || performance.now() - this.lastResetAt < 250) return;
      this.reset(`media error ${err.code}${err.message ? `: ${err.message}` : ""}`, { failure: true });
    };
    video.addEventListener("error", this.onMediaError);
  }

  get hasAudio() {
    return this.edge.hasAudio;
  }

  /** Seconds the controller holds the playhead behind the live edge. */
  target() {
    return this.edge.target();
  }

  _view() {
    const v = this.video;
    const b = v.buffered;
    const ranges = [];
    for (let i = 0; i < b.length; i++) ranges.push([b.start(i), b.end(i)]);
    return {
      currentTime: v.currentTime,
      paused: v.paused,
      seeking: v.seeking,
      readyState: v.readyState,
      ranges,
      busy: !!this.sb?.updating || this.queue.length > 0,
      removePending: this.removePending,
    };
  }

  _onStall() {
    if (!this.sb) return;
    const stall = this.edge.stall(this._view(), performance.now());
    if (stall) {
      const ms = (s) => (s * 1000).toFixed(0);
      this.hooks.event("stall", `stalled with ${ms(stall.ahead)} ms buffered; target ${ms(stall.before)} -> ${ms(stall.after)} ms`);
    }
  }

  /** Starts (or restarts) the pipeline for a stream of this MIME type. */
  start(mime, hasAudio) {
    this.mime = mime;
    this.edge = new LiveEdge(this.options); // a new play starts from the configured target
    this.edge.hasAudio = hasAudio;
    this.init = null;
    this.initInfo = null;
    this.counters = newCounters();
    this._rebuild(false);
    this.frameBase = { decoded: 0, dropped: 0 }; // a new play counts its own frames
  }

  /** The stream's MIME type changed (a `playing` status): new SourceBuffer, wait for the new init segment. */
  changeMime(mime) {
    if (mime === this.mime) return;
    this.mime = mime;
    this.edge.hasAudio = /mp4a|opus|flac|ac-3|ec-3/i.test(mime);
    this.init = null;
    this.initInfo = null;
    this.hooks.event("mime", mime);
    this._rebuild(false);
  }

  /**
   * Tears down the MediaSource and builds a new one, re-appending the kept init segment; playback resumes at
   * the next keyframe. `failure`: the media failed (decode or SourceBuffer error), see LiveEdge.failed.
   */
  reset(reason, { failure = false } = {}) {
    this.counters.resets++;
    if (failure) this.edge.failed(performance.now());
    this.hooks.event("reset", reason);
    this._rebuild(true);
  }

  /**
   * A rendition switch (session.js, switch.js): the new rendition's init segment, right before its first
   * fragment, a keyframe that follows what was fed of the old one with no gap and no overlap. It goes into
   * the same SourceBuffer (after `changeType` when the codec string differs), so nothing is torn down: the
   * playhead plays on into the new rendition's media. Not a join: the live edge has nothing to settle.
   */
  switchRendition(payload, mime) {
    const bytes = new Uint8Array(payload);
    const info = parseInit(bytes);
    if (!info || info.videoTrackId == null) {
      this.hooks.event("bad_init", "a rendition's init segment without a video track");
      return;
    }
    this.init = bytes;
    this.initInfo = info;
    this.edge.hasAudio = info.audioTrackId != null;
    this.needKeyframe = true;
    if (mime && mime !== this.mime) {
      this.mime = mime;
      if (this.sb && typeof this.sb.changeType !== "function") {
        // A browser without changeType: a new SourceBuffer for the new codec (a visible restart).
        this.reset(`rendition codec ${mime} without SourceBuffer.changeType`);
        return;
      }
      if (this.sb) this.queue.push({ kind: "changeType", mime });
    }
    if (!this.sb) {
      // Still being built: the SourceBuffer it makes takes this rendition's codec, and only its init.
      this.queue = this.queue.filter((op) => !(op.kind === "append" && boxType(op.data) === "ftyp"));
    }
    this.queue.push({ kind: "append", data: bytes });
    this.initQueued = true;
    this.edge.switched(performance.now());
    this._pump();
  }

  /** The link delays fragments by up to `ms` beyond its pace (link-meter.js): see LiveEdge.setLinkJitter. */
  linkJitter(ms) {
    this.edge.setLinkJitter(ms / 1000);
  }

  /** Fragments before the next one pushed never came (see LiveEdge.lost). */
  lost() {
    this.edge.lost(performance.now());
  }

  /** Detaches everything; the pipeline can be started again. */
  close() {
    clearTimeout(this.rebuildTimer);
    this._teardown();
    this.mime = null;
    this.init = null;
    this.initInfo = null;
    this.video.playbackRate = 1;
  }

  destroy() {
    this.close();
    this.video.removeEventListener("error", this.onMediaError);
    this.video.removeEventListener("waiting", this.onStallEvent);
  }

  _teardown() {
    this.generation++;
    const q = this.quality();
    this.frameBase = { decoded: q.decoded, dropped: q.dropped };
    this.sb = null;
    this.queue = [];
    this.initQueued = false;
    this.removePending = false;
    this.needKeyframe = true;
    this.timeline.clear();
    this.lastMediaTime = null;
    this.edge.attach(performance.now());
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
      const MS = mediaSourceClass();
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
      this.video.srcObject = null; // the WebCodecs renderer's stream, if it played here before
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
      this.tick();
    });
    this.sb.addEventListener("error", () => {
      if (gen === this.generation) this.reset("SourceBuffer error", { failure: true });
    });
    this._pump();
  }

  _queueInit() {
    this.queue.push({ kind: "append", data: this.init });
    this.initQueued = true;
    this.edge.joined(performance.now());
  }

  /** Takes one binary message from the reply topic. */
  push(payload) {
    // Copy: the MQTT library may reuse the memory under the payload, and appendBuffer reads it later.
    const bytes = new Uint8Array(payload);
    if (boxType(bytes) === "ftyp") return this._onInit(bytes);
    if (!this.init) {
      this.counters.droppedBeforeInit++; // e.g. left over from an earlier play, or the init is yet to come
      return;
    }
    let msg;
    let video;
    try {
      msg = parseMessage(bytes, this.initInfo);
      video = msg.fragment.trafs.find((t) => t.trackId === this.initInfo.videoTrackId && t.sampleCount > 0) ?? null;
    } catch (e) {
      this.counters.dropped++;
      this.hooks.event("bad_fragment", e.message);
      return;
    }
    const timescale = this.initInfo.tracks.get(this.initInfo.videoTrackId)?.timescale;
    const mediaTime = video && video.baseMediaDecodeTime !== null && timescale ? video.baseMediaDecodeTime / timescale : null;
    // The timeline went back (a source that restarted from 0): the old buffer sits after the new media and
    // would swallow it. Start a fresh MediaSource at the next keyframe.
    if (mediaTime !== null && this.lastMediaTime !== null && mediaTime < this.lastMediaTime - 0.5) {
      this.reset(`the media timeline went back from ${this.lastMediaTime.toFixed(2)} s to ${mediaTime.toFixed(2)} s`);
    }
    if (this.needKeyframe) {
      if (!video || !video.firstSampleSync) {
        this.counters.skippedToKeyframe++;
        return;
      }
      this.needKeyframe = false;
    }
    if (mediaTime !== null) this.lastMediaTime = mediaTime;
    if (video) this.edge.videoArrived(mediaTime, performance.now());
    const point = msg.prft && prftPoint(msg.prft, this.initInfo);
    if (point) {
      this.timeline.add(point.media, point.wall, Date.now());
    }
    if (this.queue.length >= MAX_QUEUE) {
      this.reset(`${this.queue.length} segments waiting for the SourceBuffer`);
      return;
    }
    this.queue.push({ kind: "append", data: msg.moof });
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
    this.edge.hasAudio = info.audioTrackId != null;
    if (same && this.initQueued) return; // the server repeated what this SourceBuffer already has
    this.needKeyframe = true;
    this._queueInit();
    this._pump();
  }

  /** The source wall clock (ms since the epoch) of media time `t` (seconds), or null. */
  wallClockAt(t) {
    return this.timeline.wallClockAt(t);
  }

  /** The media time (s) of the frame a requestVideoFrameCallback reports. */
  shownMediaTime(meta) {
    return meta.mediaTime;
  }

  /** A frame was displayed: MediaSource keeps its tracks in sync itself and does not tell the offset (null). */
  frameShown() {
    return null;
  }

  /** The media time (s) on screen now. */
  currentTime() {
    return this.video.currentTime;
  }

  /** Whether the picture moved by playing within the last 500 ms. */
  advancing(now) {
    return !this.video.paused && this.edge.advancing(now);
  }

  _pump() {
    const sb = this.sb;
    if (!sb || sb.updating || !this.ms || this.ms.readyState !== "open") return;
    while (this.queue.length) {
      const op = this.queue.shift();
      try {
        if (op.kind === "changeType") {
          sb.changeType(op.mime); // synchronous: no updateend follows
          continue;
        }
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
        else this.reset(`${op.kind} failed: ${e.name}: ${e.message}`, { failure: true });
        return;
      }
    }
  }

  /** Frames decoded and dropped by the element, across the MediaSources of this play. */
  quality() {
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

  /** Seconds buffered ahead of the playhead. */
  bufferAhead() {
    return bufferAhead(this._view());
  }

  /** The live-edge controller, applied; runs on every append and on a timer. */
  tick() {
    if (!this.sb || !this.ms) return;
    const v = this.video;
    for (const action of this.edge.tick(this._view(), performance.now())) {
      if (action.type === "play") this._play();
      else if (action.type === "seek") {
        this.hooks.event(action.recovery ? "recovery" : "jump", `${action.why}: ${v.currentTime.toFixed(3)} -> ${action.to.toFixed(3)}`);
        v.currentTime = action.to;
      } else if (action.type === "rate") {
        if (v.playbackRate !== action.rate) v.playbackRate = action.rate;
      } else if (action.type === "remove") {
        this.removePending = true;
        this.queue.push({ kind: "remove", start: action.start, end: action.end });
        this._pump();
      }
    }
  }

  _play() {
    const v = this.video;
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

  /** The renderer's part of Player.stats(). */
  snapshot() {
    return {
      playbackRate: this.video.playbackRate,
      bufferSeconds: this.bufferAhead(),
      targetLatencyMs: this.target() * 1000,
      queuedSegments: this.queue.length,
      resets: this.counters.resets,
      jumps: this.edge.jumps,
      recoveries: this.edge.recoveries,
      stalls: this.edge.stalls,
      skippedToKeyframe: this.counters.skippedToKeyframe,
    };
  }
}

function newCounters() {
  return { resets: 0, dropped: 0, appended: 0, droppedBeforeInit: 0, skippedToKeyframe: 0 };
}
