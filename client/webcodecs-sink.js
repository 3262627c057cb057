// The WebCodecs renderer: the same fMP4 messages as the MediaSource one, demuxed in the page (mp4.js), video
// decoded by a VideoDecoder configured from the init segment's avcC (optimizeForLatency) and each frame shown
// the moment it is decoded, audio decoded by an AudioDecoder into the jitter buffer of an AudioWorklet
// (audio-out.js) that plays at the live edge. No MediaSource buffer and no playhead to steer: the picture is as
// new as the last frame decoded.
//
// Frames go to the screen the moment they are decoded, by one of three outputs (videoOutput):
// - "generator", the default where the browser has one (Chromium): a MediaStreamTrackGenerator that the page's
//   <video> plays, so full screen, picture-in-picture and requestVideoFrameCallback work as with MediaSource.
// - "canvas", the default elsewhere: drawn into a canvas laid over the <video>, on screen at the next refresh,
//   without Chromium's video pipeline (up to ~30 ms less, and steadier), but at a cost where the page draws
//   without a GPU (43 % of a core against 30 % at 720p in headless Chromium). The <video> under it plays an
//   empty stream (`paused`, mute and volume work as with MediaSource); for picture-in-picture it plays the
//   canvas's captureStream() until the window closes, which all the time would cost a third more again.
// - "captured": drawn into a canvas that only its captureStream() into the <video> shows.
// What is decoded and shown is decided by feed.js.

import { audioContext, AudioOut, DEFAULT_AUDIO_RATE } from "./audio-out.js";
import { isAudioCodec, mimeCodecs, videoOutputs, webCodecsBlocker, webCodecsIssue } from "./capabilities.js";
import { Lateness, VideoGate } from "./feed.js";
import { Samples } from "./figures.js";
import { JITTER_DEFAULTS } from "./jitter.js";
import { boxType, parseInit, parseMessage, sameBytes } from "./mp4.js";
import { Presentation } from "./presentation.js";
import { prftPoint, Timeline } from "./timeline.js";

/** The values of the `videoOutput` option. */
export const VIDEO_OUTPUTS = ["auto", "canvas", "generator", "captured"];

/**
 * The output for option `want` with what the browser has (`videoOutputs()`): "generator", "canvas" (drawn into
 * a canvas over the <video>; needs the <video> in a document) or "captured" (a canvas's stream into the
 * <video>); `auto`, or one the browser cannot do, takes the first of them it can.
 */
export function chooseVideoOutput(want, have, inDocument) {
  const canvas = have.canvas && inDocument;
  if (want === "canvas" && canvas) return "canvas";
  if (want === "generator" && have.generator) return "generator";
  if (want === "captured" && have.canvas) return "captured";
  if (have.generator) return "generator";
  return canvas ? "canvas" : "captured";
}

/**
 * Whether this browser can play `mime` with WebCodecs (resolves to true or false); webCodecsIssue
 * (capabilities.js) says why not.
 */
export async function webCodecsSupports(mime) {
  return (await webCodecsIssue(mime)) === null;
}

const MAX_PENDING = 120; // decode times kept for frames the decoder has not returned

/** Whether two AudioDecoder configurations are the same (renditions share their audio track). */
function sameAudioConfig(a, b) {
  if (!a || !b || a.codec !== b.codec || a.sampleRate !== b.sampleRate || a.numberOfChannels !== b.numberOfChannels) return false;
  const da = a.description ? new Uint8Array(a.description) : null;
  const db = b.description ? new Uint8Array(b.description) : null;
  return da === db || (!!da && !!db && sameBytes(da, db));
}

export class WebCodecsSink {
  /**
   * Gets ready for a play that may come to this renderer: the page's AudioContext, whose making would hold up
   * the first frames by ~100 ms if it waited for them (Player.play calls this before its describe).
   */
  static prepare() {
    // Not where the renderer cannot play (a non-secure context has no AudioWorklet to load).
    if (!webCodecsBlocker()) audioContext();
  }

  /**
   * @param {HTMLVideoElement} video
   * @param {object} options the Player's options (FEED_DEFAULTS, JITTER_DEFAULTS, videoOutput)
   * @param {{event(kind, detail), error(code, message), unsupported(message)}} hooks
   */
  constructor(video, options, hooks) {
    this.kind = "webcodecs";
    this.video = video;
    this.options = options;
    this.hooks = hooks;
    this.timeline = new Timeline();
    const jitter = {};
    for (const k of Object.keys(JITTER_DEFAULTS)) if (options[k] !== undefined) jitter[k] = options[k];
    this.audio = new AudioOut(video, hooks, jitter);
    this.mime = null;
    this.hasAudio = false;
    this.stream = null;
    this.output = null; // {kind, writer} or {kind, canvas, ctx}
    this.presentation = new Presentation();
    this.raf = null;
    this._reset();
  }

  _reset() {
    this.init = null;
    this.initInfo = null;
    this.videoConfig = null;
    this.audioConfig = null;
    this._closeDecoders();
    this.draining = null; // the last rendition's decoder, flushed for its last frames after a switch
    this.gate = new VideoGate();
    this.lateness = new Lateness();
    this.pending = new Map(); // frame timestamp (µs) -> {at, late}
    this.audioNext = null; // the timestamp (µs) the next audio chunk should have
    this.shown = []; // [{media, at}] of the frames shown lately (for the canvas output)
    this.lastShown = null;
    this.lastSize = null;
    this.lastLate = false;
    this.decodeMs = new Samples(300);
    this.presentation.reset();
    this.counters = { decoded: 0, dropped: 0, late: 0, resets: 0, catchUps: 0, skippedToKeyframe: 0, droppedBeforeInit: 0, lateAudio: 0 };
    this.timeline.clear();
  }

  /** Starts (or restarts) for a stream of this MIME type. */
  start(mime, hasAudio) {
    this._reset();
    this.mime = mime;
    this.hasAudio = hasAudio;
    this.audio.flush();
    if (hasAudio) this.audio.open(DEFAULT_AUDIO_RATE); // the init segment says the real rate

    this._attach();
  }

  /** The stream's MIME type changed (a `playing` status): the new init segment that follows reconfigures. */
  changeMime(mime) {
    if (mime === this.mime) return;
    this.mime = mime;
    this.hasAudio = mimeCodecs(mime).some(isAudioCodec);
    this.hooks.event("mime", mime);
  }

  /** Decoding starts again at the next keyframe; the audio buffer is emptied. */
  reset(reason) {
    this.counters.resets++;
    this.hooks.event("reset", reason);
    this._resetVideoDecoder(reason);
    this.audio.flush();
  }

  /** Detaches everything; the renderer can be started again. */
  close() {
    this._reset();
    this.mime = null;
    this.audio.close();
    this._detach();
  }

  destroy() {
    this.close();
    this.audio.destroy();
  }

  // ----- the picture's way to the <video> --------------------------------------------------------------

  /** Whether frames are shown by this renderer itself (a visible canvas), not by the <video>. */
  get presentsFrames() {
    return this.output?.kind === "canvas";
  }

  _attach() {
    if (this.stream) return;
    const v = this.video;
    const kind = chooseVideoOutput(this.options.videoOutput, videoOutputs(), !!v.parentNode);
    if (kind === "generator") {
      const track = new MediaStreamTrackGenerator({ kind: "video" });
      this.output = { kind, writer: track.writable.getWriter() };
      this.stream = new MediaStream([track]);
    } else {
      const canvas = document.createElement("canvas");
      this.output = { kind, canvas, ctx: canvas.getContext("2d", { alpha: false }) };
      this.stream = kind === "canvas" ? new MediaStream() : canvas.captureStream();
      if (kind === "canvas") this._showCanvas(canvas);
    }
    v.removeAttribute("src"); // the MediaSource renderer's, if it played here before
    v.srcObject = this.stream;
    if (this.options.autoplay) v.play().catch((e) => e.name !== "AbortError" && this.hooks.event("autoplay", `${e.name}: ${e.message}`));
  }

  /** Lays the canvas over the <video> (the box the <video> fills) and starts following the display's refreshes. */
  _showCanvas(canvas) {
    canvas.className = "mqtt-video-canvas";
    canvas.setAttribute("aria-hidden", "true");
    // The page's stylesheet may place it; these make it cover a <video> that fills a positioned parent.
    canvas.style.cssText = "position:absolute;inset:0;width:100%;height:100%;object-fit:contain;pointer-events:none;";
    this.video.after(canvas);
    const onAnimationFrame = (ts) => {
      if (this.output?.canvas !== canvas) return;
      const shown = this.presentation.tick(ts);
      if (shown) this.hooks.presented?.(shown);
      this.raf = requestAnimationFrame(onAnimationFrame);
    };
    this.raf = requestAnimationFrame(onAnimationFrame);
  }

  /**
   * Opens picture-in-picture (resolves when open): the <video> plays the canvas's stream while the window is
   * open, then the empty one again.
   */
  async pictureInPicture() {
    const out = this.output;
    if (out?.kind !== "canvas") return this.video.requestPictureInPicture();
    const captured = out.canvas.captureStream();
    const back = () => {
      for (const t of captured.getTracks()) t.stop();
      if (this.output !== out || this.video.srcObject !== captured) return;
      this.video.srcObject = this.stream; // a new source: the element loads it paused
      this.video.play().catch(() => {});
    };
    this.video.srcObject = captured;
    this.video.addEventListener("leavepictureinpicture", back, { once: true });
    try {
      await this.video.play();
      return await this.video.requestPictureInPicture();
    } catch (e) {
      this.video.removeEventListener("leavepictureinpicture", back);
      back();
      throw e;
    }
  }

  /** The size of the frames shown: {width, height}, or null before the first. */
  frameSize() {
    return this.lastSize;
  }

  _detach() {
    if (!this.stream) return;
    this.output.writer?.close().catch(() => {});
    if (this.output.kind === "canvas") {
      cancelAnimationFrame(this.raf);
      this.raf = null;
      this.output.canvas.remove();
    }
    for (const t of this.stream.getTracks()) t.stop();
    this.stream = null;
    this.output = null;
    if (this.video.srcObject) this.video.srcObject = null;
  }

  _onFrame(frame, decoder) {
    const ts = frame.timestamp;
    if (decoder === this.draining && this.lastShown !== null && ts / 1e6 <= this.lastShown.media) {
      // The last rendition's frame, after the new one's first: never a step back.
      this.pending.delete(ts);
      frame.close();
      return;
    }
    const now = performance.now();
    const info = this.pending.get(ts);
    this.pending.delete(ts);
    if (info) this.decodeMs.add(now - info.at);
    this.counters.decoded++;
    const out = this.output;
    // A frame with newer chunks still waiting in the decoder is not shown: of a joiner's GOP burst, only the
    // first frame (a picture at once) and the last (the live one) are. Nor is a late one (it came with a
    // backlog) when a newer one is in hand already: the next live one is shown (a catch-up, not a slow
    // motion). A late frame with nothing newer behind it is the newest there is (a slow link delivering
    // at its pace, later and later until the gateway sheds to a keyframe): shown, or that link shows nothing.
    const newer = this.lastShown !== null && (decoder?.decodeQueueSize ?? 0) > 0;
    const backlog = this.pending.size > 0 || (decoder?.decodeQueueSize ?? 0) > 0;
    if (!out || newer || (info && info.late > this.options.maxLateMs && backlog)) {
      frame.close();
      this.counters.late++;
      if (!this.lastLate) this.counters.catchUps++;
      this.lastLate = true;
      return;
    }
    this.lastLate = false;
    if (this.lastSize?.width !== frame.displayWidth || this.lastSize?.height !== frame.displayHeight) {
      this.lastSize = { width: frame.displayWidth, height: frame.displayHeight };
    }
    if (out.writer) {
      if (out.writer.desiredSize !== null && out.writer.desiredSize <= 0) {
        frame.close(); // the <video> has not taken the last one yet: never queue frames
        this.counters.dropped++;
        return;
      }
      out.writer.write(frame).catch(() => {});
    } else {
      const { canvas, ctx } = out;
      if (canvas.width !== frame.displayWidth || canvas.height !== frame.displayHeight) {
        canvas.width = frame.displayWidth;
        canvas.height = frame.displayHeight;
      }
      ctx.drawImage(frame, 0, 0);
      frame.close();
      if (out.kind === "canvas") this.presentation.draw(ts / 1e6, now);
    }
    this.lastShown = { media: ts / 1e6, at: now };
    this.shown.push(this.lastShown);
    if (this.shown.length > 30) this.shown.shift();
  }

  // ----- decoders ---------------------------------------------------------------------------------------

  _closeDecoders() {
    for (const d of [this.videoDecoder, this.audioDecoder, this.draining]) {
      if (d && d.state !== "closed") d.close();
    }
    this.videoDecoder = null;
    this.audioDecoder = null;
    this.draining = null;
  }

  /** A configured VideoDecoder, made at the first keyframe after a restart. */
  _videoDecoder() {
    if (this.videoDecoder && this.videoDecoder.state === "configured") return this.videoDecoder;
    const decoder = new VideoDecoder({
      output: (frame) => (decoder === this.videoDecoder || decoder === this.draining ? this._onFrame(frame, decoder) : frame.close()),
      error: (e) => decoder === this.videoDecoder && this._onDecoderError("video", e),
    });
    decoder.configure(this.videoConfig);
    this.videoDecoder = decoder;
    return decoder;
  }

  _audioDecoder() {
    if (this.audioDecoder && this.audioDecoder.state === "configured") return this.audioDecoder;
    const decoder = new AudioDecoder({
      output: (data) => {
        if (decoder !== this.audioDecoder) return data.close();
        this.audio.configure(data.sampleRate, data.numberOfChannels);
        this.audio.push(data);
      },
      error: (e) => decoder === this.audioDecoder && this._onDecoderError("audio", e),
    });
    decoder.configure(this.audioConfig);
    this.audioDecoder = decoder;
    return decoder;
  }

  _onDecoderError(which, e) {
    if (e.name === "NotSupportedError") {
      this.hooks.unsupported(`this browser's ${which} decoder refused the stream (${e.message})`);
      return;
    }
    this.counters.resets++;
    this.hooks.event("reset", `${which} decoder error: ${e.message}`);
    if (which === "video") {
      this._resetVideoDecoder("decoder error");
    } else {
      this.audioDecoder = null;
    }
  }

  /** A new decoder, configured now so that it is ready when the next keyframe comes (which it waits for). */
  _resetVideoDecoder(why) {
    if (this.videoDecoder && this.videoDecoder.state !== "closed") this.videoDecoder.close();
    this.videoDecoder = null;
    this.pending.clear();
    this.gate.restart(why);
    if (this.videoConfig) {
      try {
        this._videoDecoder();
      } catch (e) {
        this.hooks.unsupported(`this browser's video decoder refused the stream (${e.message})`);
      }
    }
  }

  // ----- media in -----------------------------------------------------------------------------------------

  /** Takes one binary message from the reply topic. */
  push(payload) {
    const bytes = new Uint8Array(payload); // a copy: decoding happens later, the MQTT library reuses memory
    if (boxType(bytes) === "ftyp") return this._onInit(bytes);
    if (!this.initInfo) {
      this.counters.droppedBeforeInit++;
      return;
    }
    let msg;
    try {
      msg = parseMessage(bytes, this.initInfo);
    } catch (e) {
      this.hooks.event("bad_fragment", e.message);
      return;
    }
    const point = msg.prft && prftPoint(msg.prft, this.initInfo);
    if (point) {
      this.timeline.add(point.media, point.wall, Date.now());
    }
    const now = performance.now();
    const tracks = msg.fragment.trafs
      .map((traf) => ({ traf, track: this.initInfo.tracks.get(traf.trackId) }))
      .filter(({ traf, track }) => track?.timescale && traf.baseMediaDecodeTime !== null && traf.samples.length);
    if (!tracks.length) return;
    // How late this fragment comes, by its source wall clock: its prft's, or (a fragment without video has
    // none) the timeline's for its media time; by its media time when the stream has no prft at all.
    const media = tracks[0].traf.baseMediaDecodeTime / tracks[0].track.timescale;
    const wall = point ? point.wall : this.timeline.wallClockAt(media);
    const late = wall !== null ? this.lateness.observe(wall, Date.now()) : this.lateness.observe(media * 1000, now);
    for (const { traf, track } of tracks) {
      if (traf.trackId === this.initInfo.videoTrackId && this.videoConfig) this._video(msg.moof, traf, track.timescale, now, late);
      else if (traf.trackId === this.initInfo.audioTrackId && this.audioConfig) this._audio(msg.moof, traf, track.timescale, late);
    }
  }

  _video(bytes, traf, timescale, now, late) {
    const visible = globalThis.document?.visibilityState !== "hidden";
    if (this.videoDecoder && this.videoDecoder.decodeQueueSize > this.options.maxDecodeQueue) {
      this.counters.resets++;
      this.hooks.event("reset", `the video decoder is ${this.videoDecoder.decodeQueueSize} chunks behind`);
      this._resetVideoDecoder("the decoder fell behind");
    }
    for (const s of traf.samples) {
      const media = s.decodeTime / timescale;
      // A keyframe in a backlog: what the decoder still holds is older and would not be shown; start over here.
      if (s.sync && late > this.options.maxLateMs && this.pending.size > 0) this._resetVideoDecoder("a newer keyframe in a backlog");
      const verdict = this.gate.admit({ media, duration: s.duration / timescale, sync: s.sync }, visible);
      if (!verdict.decode) {
        this.counters.skippedToKeyframe++;
        continue;
      }
      const timestamp = Math.round(((s.decodeTime + s.compositionOffset) / timescale) * 1e6);
      try {
        this._videoDecoder().decode(
          new EncodedVideoChunk({
            type: s.sync ? "key" : "delta",
            timestamp,
            duration: Math.round((s.duration / timescale) * 1e6),
            data: bytes.subarray(s.offset, s.offset + s.size),
          }),
        );
      } catch (e) {
        this._onDecoderError("video", e);
        continue;
      }
      this.pending.set(timestamp, { at: now, late });
      if (this.pending.size > MAX_PENDING) this.pending.delete(this.pending.keys().next().value);
    }
  }

  _audio(bytes, traf, timescale, late) {
    // Audio that came with a backlog is not played: the jitter buffer would only drop it.
    if (late > this.options.maxLateMs) {
      this.counters.lateAudio += traf.samples.length;
      return;
    }
    for (const s of traf.samples) {
      const timestamp = Math.round(((s.decodeTime + s.compositionOffset) / timescale) * 1e6);
      // Chromium's AudioDecoder dates its output by counting samples from the first chunk after a configure,
      // whatever the chunks' own timestamps: after a gap (audio dropped here, a source restart) the sound
      // would be dated seconds off. A new decoder after every gap dates it right again.
      if (this.audioNext !== null && Math.abs(timestamp - this.audioNext) > 1000 && this.audioDecoder) {
        this.audioDecoder.close();
        this.audioDecoder = null;
      }
      this.audioNext = timestamp + Math.round((s.duration / timescale) * 1e6);
      try {
        this._audioDecoder().decode(
          new EncodedAudioChunk({
            type: "key",
            timestamp,
            duration: Math.round((s.duration / timescale) * 1e6),
            data: bytes.subarray(s.offset, s.offset + s.size),
          }),
        );
      } catch (e) {
        this._onDecoderError("audio", e);
      }
    }
  }

  /**
   * A rendition switch (session.js, switch.js): the new rendition's init segment, right before its first
   * fragment, a keyframe that follows what was fed of the old one with no gap. A new video decoder for it,
   * while the old one is flushed for its last frames (shown unless the new one got past them); the audio
   * decoder goes on when the audio is the same (renditions share it), so the sound does not break.
   */
  switchRendition(payload, mime) {
    if (mime) this.mime = mime;
    this._onInit(new Uint8Array(payload), { rendition: true });
  }

  _onInit(bytes, { rendition = false } = {}) {
    const info = parseInit(bytes);
    const video = info?.tracks.get(info.videoTrackId)?.entry;
    if (!info || !video) {
      this.hooks.event("bad_init", "init segment without a video track");
      return;
    }
    if (this.init && sameBytes(this.init, bytes)) return; // the server repeated it
    this.init = bytes;
    this.initInfo = info;
    if (!video.codec) {
      this.hooks.unsupported(`no WebCodecs configuration for a "${video.format}" video track`);
      return;
    }
    this.videoConfig = {
      codec: video.codec,
      description: video.description,
      codedWidth: video.width,
      codedHeight: video.height,
      optimizeForLatency: true,
    };
    const old = this.videoDecoder;
    if (rendition && old && old.state === "configured") {
      if (this.draining && this.draining.state !== "closed") this.draining.close();
      this.draining = old;
      this.videoDecoder = null;
      old.flush().catch(() => {}).finally(() => {
        if (old.state !== "closed") old.close();
        if (this.draining === old) this.draining = null;
      });
    }
    this._resetVideoDecoder(rendition ? "another rendition" : "new init segment");
    const audio = info.audioTrackId != null ? info.tracks.get(info.audioTrackId)?.entry : null;
    this.hasAudio = !!audio;
    const audioConfig = audio?.codec ? { codec: audio.codec, sampleRate: audio.sampleRate, numberOfChannels: audio.channels, description: audio.description } : null;
    if (rendition && audioConfig && sameAudioConfig(audioConfig, this.audioConfig)) return; // the same sound goes on
    if (this.audioDecoder && this.audioDecoder.state !== "closed") this.audioDecoder.close();
    this.audioDecoder = null;
    this.audioConfig = null;
    if (audio) {
      if (!audio.codec) {
        this.hooks.unsupported(`no WebCodecs configuration for a "${audio.format}" audio track`);
        return;
      }
      this.audioConfig = audioConfig;
      this.audio.open(audio.sampleRate);
    }
  }

  /** Any housekeeping the renderer needs on the Player's timer (none: it is driven by arrivals). */
  tick() {}

  /** The link delays fragments by up to `ms` beyond its pace (link-meter.js): the audio margin covers it. */
  linkJitter(ms) {
    this.audio.floor(Math.round(ms));
  }

  /** Fragments before the next one pushed never came: the feed's gap handling waits for a keyframe. */
  lost() {}

  // ----- figures ----------------------------------------------------------------------------------------

  /** The source wall clock (ms since the epoch) of media time `t` (seconds), or null. */
  wallClockAt(t) {
    return this.timeline.wallClockAt(t);
  }

  /**
   * The media time (s) of the frame a requestVideoFrameCallback at `now` reports: the generator's frames carry
   * ours; a captured canvas's stream has its own, so it is the newest frame drawn by then.
   */
  shownMediaTime(meta, now) {
    if (this.output?.writer) return meta.mediaTime;
    let found = null;
    for (const s of this.shown) if (s.at <= now) found = s.media;
    return found;
  }

  /** The media time (s) of the newest frame shown. */
  currentTime() {
    return this.lastShown?.media ?? 0;
  }

  /** Whether frames were shown within the last 500 ms. */
  advancing(now) {
    return !this.video.paused && this.lastShown !== null && now - this.lastShown.at < 500;
  }

  /** Frames decoded, and decoded but not shown (late, the <video> not ready for them, or drawn over unseen). */
  quality() {
    return { decoded: this.counters.decoded, dropped: this.counters.dropped + this.counters.late + this.presentation.overdrawn };
  }

  /**
   * The frame of media time `t` is displayed at performance time `displayAt`: the audio keeps up with it (it
   * is never heard more than maxAudioLagMs behind the picture). Returns the audio heard then minus the picture,
   * in ms: positive when the sound is ahead; null without audio playing.
   */
  frameShown(displayAt, t) {
    if (!this.hasAudio) return null;
    this.audio.picture(t, displayAt);
    const heard = this.audio.heardAt(displayAt);
    return heard === null ? null : (heard - t) * 1000;
  }

  /** The renderer's part of Player.stats(). */
  snapshot() {
    const audio = this.audio.snapshot();
    const decode = this.decodeMs.summary();
    return {
      videoOutput: this.output?.kind ?? null,
      playbackRate: audio?.rate ?? 1,
      bufferSeconds: (audio?.bufferMs ?? 0) / 1000,
      targetLatencyMs: audio?.marginMs ?? 0,
      queuedSegments: this.videoDecoder?.decodeQueueSize ?? 0,
      resets: this.counters.resets,
      jumps: this.counters.catchUps,
      stalls: audio?.underruns ?? 0,
      skippedToKeyframe: this.counters.skippedToKeyframe,
      decodeP50Ms: decode.p50,
      decodeP95Ms: decode.p95,
      audioOutputLatencyMs: audio?.outputLatencyMs ?? null,
      lateFrames: this.counters.late,
      lateAudio: this.counters.lateAudio,
      audioSyncDrops: audio?.syncDrops ?? 0,
    };
  }
}
