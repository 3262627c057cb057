// The WebCodecs renderer's audio output: the page's AudioContext at the stream's sample rate, the jitter
// buffer's AudioWorklet (audio-worklet.js), and a gain that follows the <video>'s muted and volume (the page's
// controls act on the element). It also knows which media time is heard at a given moment, for lip sync.

import { JITTER_DEFAULTS } from "./jitter.js";

/** The sample rate the server's transcoder writes, and the one audio contexts are prepared at. */
export const DEFAULT_AUDIO_RATE = 48000;

/** The page's AudioContexts by sample rate, shared by its players: {ctx, loaded (a promise of true/false)}. */
const contexts = new Map();

/**
 * The page's AudioContext at `sampleRate`, made on first use ({ctx, loaded}), or null where the page can have
 * none. Making one blocks the page for ~100 ms, so a player prepares it when a play starts, long before its
 * first frame (and the next player finds it made). Never throws: without an `audioWorklet` (a page that is
 * not a secure context) `loaded` resolves to false and the renderer plays no sound.
 */
export function audioContext(sampleRate = DEFAULT_AUDIO_RATE) {
  let entry = contexts.get(sampleRate);
  if (entry) return entry;
  let ctx = null;
  for (const options of [{ sampleRate, latencyHint: "interactive" }, { latencyHint: "interactive" }]) {
    try {
      ctx = new AudioContext(options); // without sampleRate when this rate is refused: the worklet resamples
      break;
    } catch {
      // no AudioContext at all, or too many of them
    }
  }
  if (!ctx) return null;
  let loaded;
  try {
    loaded = ctx.audioWorklet.addModule(new URL("./audio-worklet.js", import.meta.url)).then(
      () => true,
      () => false,
    );
  } catch {
    loaded = Promise.resolve(false); // ctx.audioWorklet is undefined outside a secure context
  }
  entry = { ctx, loaded };
  contexts.set(sampleRate, entry);
  return entry;
}

export class AudioOut {
  /**
   * @param {HTMLVideoElement} video whose muted/volume the output follows
   * @param {{event(kind, detail)}} hooks
   * @param {Partial<typeof JITTER_DEFAULTS>} jitter settings of the jitter buffer
   */
  constructor(video, hooks, jitter = {}) {
    this.video = video;
    this.hooks = hooks;
    this.jitter = jitter;
    this.onVolume = () => this._applyVolume();
    video.addEventListener("volumechange", this.onVolume);
    this.close();
  }

  /** Plays into the page's AudioContext at `sampleRate` (the stream's). */
  open(sampleRate) {
    if (this.ctx && this.rate === sampleRate) return;
    this.close();
    this.rate = sampleRate;
    const entry = audioContext(sampleRate);
    if (!entry) {
      this.hooks.event("audio", "cannot make an AudioContext: no sound");
      return;
    }
    const { ctx, loaded } = entry;
    this.ctx = ctx;
    this.loaded = loaded.then((ok) => {
      if (!ok) this.hooks.event("audio", "cannot load the audio worklet: no sound");
      return ok;
    });
  }

  /** Makes the jitter buffer's worklet for decoded audio of this rate and channel count (once per change). */
  configure(inputRate, channels) {
    if (!this.ctx || (this.config && this.config.inputRate === inputRate && this.config.channels === channels)) return;
    this.node?.disconnect();
    this.node = null;
    this.ready = false;
    const config = { inputRate, channels };
    this.config = config;
    const ctx = this.ctx;
    this.loaded.then((ok) => {
      if (!ok || this.ctx !== ctx || this.config !== config) return;
      this.node = new AudioWorkletNode(ctx, "mqtt-video-jitter", {
        numberOfInputs: 0,
        outputChannelCount: [channels],
        processorOptions: { inputRate, channels, jitter: this.jitter },
      });
      if (this.floorMs) this.node.port.postMessage({ type: "floor", ms: this.floorMs });
      this.node.port.onmessage = ({ data }) => {
        if (data.type !== "report") return;
        if (data.underruns > (this.report?.underruns ?? 0)) {
          this.hooks.event("underrun", `the audio ran dry; its margin is now ${(data.margin * 1000).toFixed(0)} ms`);
        }
        this.report = data;
      };
      if (!this.gain) {
        this.gain = new GainNode(ctx);
        this.gain.connect(ctx.destination);
      }
      this.node.connect(this.gain);
      this._applyVolume();
      this.ready = true;
      if (ctx.state !== "running" && !this.video.muted) {
        // Audio without a user gesture was refused: play muted; the page offers to unmute (a gesture).
        this.video.muted = true;
        this.hooks.event("muted", "audio without a user gesture was refused; playing muted");
      }
    });
  }

  _applyVolume() {
    if (!this.gain) return;
    this.gain.gain.value = this.video.muted ? 0 : this.video.volume;
    // An unmute is a click: the gesture lets a suspended context start.
    if (!this.video.muted && this.ctx.state === "suspended") this.ctx.resume().catch(() => {});
  }

  /** Whether pushed audio is played now (the context runs and the worklet is loaded). */
  running() {
    return this.ready && this.ctx.state === "running";
  }

  /** Takes one decoded AudioData (and closes it); dropped while the output cannot play it. */
  push(data) {
    if (!this.running()) {
      data.close();
      return;
    }
    const planes = [];
    const transfer = [];
    for (let c = 0; c < data.numberOfChannels; c++) {
      const plane = new Float32Array(data.numberOfFrames);
      data.copyTo(plane, { planeIndex: c, format: "f32-planar" });
      planes.push(plane);
      transfer.push(plane.buffer);
    }
    const media = data.timestamp / 1e6;
    data.close();
    this.node.port.postMessage({ type: "push", media, planes }, transfer);
  }

  /** The jitter buffer's margin is at least `ms` from now on (JitterBuffer.setFloor). */
  floor(ms) {
    if (this.floorMs === ms) return;
    this.floorMs = ms;
    this.node?.port.postMessage({ type: "floor", ms });
  }

  /** Drops what is buffered (a new play, a reset). */
  flush() {
    this.report = null;
    this.node?.port.postMessage({ type: "flush" });
  }

  /** The context time (s) heard at performance time `perfMs`: the output device's latency included. */
  _heardContextTime(perfMs) {
    const out = this.ctx.getOutputTimestamp?.();
    if (out && out.performanceTime > 0) return out.contextTime + (perfMs - out.performanceTime) / 1000;
    return this.ctx.currentTime - (this.ctx.outputLatency || 0) - this.ctx.baseLatency + (perfMs - performance.now()) / 1000;
  }

  /** The media time (s) heard at performance time `perfMs`, or null when no audio plays. */
  heardAt(perfMs) {
    const r = this.report;
    if (!r || r.mediaTime === null || !this.running()) return null;
    return r.mediaTime + (this._heardContextTime(perfMs) - r.contextTime) * r.rate;
  }

  /** The picture shows media time `media` (s) at performance time `perfMs`: the worklet keeps up with it. */
  picture(media, perfMs) {
    if (this.running()) this.node.port.postMessage({ type: "picture", media, at: this._heardContextTime(perfMs) * 1000 });
  }

  /** {bufferMs, marginMs, underruns, syncDrops, rate, droppedMs, outputLatencyMs} of the output, or null before
   * it plays. */
  snapshot() {
    const r = this.report;
    // Closed (a play ended): the last report outlives the context it was measured on.
    if (!r || !this.ctx) return null;
    return {
      bufferMs: r.level * 1000,
      marginMs: r.margin * 1000,
      underruns: r.underruns,
      syncDrops: r.syncDrops,
      rate: r.rate,
      droppedMs: r.droppedSeconds * 1000,
      outputLatencyMs: ((this.ctx.outputLatency || 0) + this.ctx.baseLatency) * 1000,
    };
  }

  /** Stops playing; the page's AudioContext stays for the next play. */
  close() {
    this.node?.disconnect();
    this.gain?.disconnect();
    this.ctx = null;
    this.rate = null; // the stream's sample rate, the context's
    this.loaded = null; // resolves to whether the worklet module is in this.ctx
    this.node = null;
    this.gain = null;
    this.config = null; // {inputRate, channels} of the worklet
    this.floorMs = 0; // the margin's floor the link calls for (floor())
    this.ready = false;
    this.report = null; // the worklet's last report
  }

  destroy() {
    this.close();
    this.video.removeEventListener("volumechange", this.onVolume);
  }
}
