// mqtt-video player: live fragmented MP4 over MQTT (WebSocket) into a <video>.
//
//   const player = new Player(videoElement, { broker: "ws://host:8080/mqtt" });
//   player.play("builtin://testsrc");
//   player.stats();   // {state, currentTime, latencyMs, decodedFrames, ...}
//   player.stop();
//
// The Player ties two parts together and owns the states and figures: the MQTT session and control
// protocol (session.js, protocol.js: describe -> play on a fresh reply topic, statuses, stop and last will,
// retries, renewals, reconnects), and a renderer that plays the media messages: WebCodecs
// (webcodecs-sink.js: decoders, frames shown as soon as they are decoded, audio through a jitter buffer) or
// MediaSource (mse-sink.js, with the live-edge controller of live-edge.js). Both get the same fMP4 messages,
// and their latency is measured the same way: the frame's expected display time minus the source's wall
// clock for it (timeline.js).
//
// With renditions (a describe reply that lists them) and `rendition: "auto"`, the Player also picks which one
// plays: the link meter (link-meter.js) measures what the fragments of the one played say about the link,
// the controller (abr.js) decides, the session switches (session.js, with the hand-over of switch.js), and
// the renderer takes the new rendition's init segment into the same pipeline.

import { ABR_DEFAULTS, AbrController } from "./abr.js";
import { FEED_DEFAULTS } from "./feed.js";
import { round, Samples } from "./figures.js";
import { JITTER_DEFAULTS } from "./jitter.js";
import { LinkMeter, METER_DEFAULTS } from "./link-meter.js";
import { LIVE_EDGE_DEFAULTS } from "./live-edge.js";
import { MseSink, mseSupports } from "./mse-sink.js";
import { AUTO_RENDITION, decodableStart, describeOutcome, renditionLadder, REQUEST_DEFAULTS, startRendition } from "./protocol.js";
import { Session } from "./session.js";
import { SWITCH_DEFAULTS } from "./switch.js";
import { webCodecsBlocker, webCodecsIssue } from "./capabilities.js";
import { brokerUrl } from "./page-urls.js";
import { probeLink, probeUrl } from "./link-probe.js";
import { VIDEO_OUTPUTS, WebCodecsSink } from "./webcodecs-sink.js";

/**
 * The renderers: `auto` is WebCodecs where the browser can decode the stream with it, else MediaSource;
 * `webcodecs` asks for WebCodecs, and still plays with MediaSource (saying why) where WebCodecs cannot.
 */
export const RENDERERS = ["auto", "webcodecs", "mse"];

export { VIDEO_OUTPUTS };

/** Every option of a Player, with its default. */
export const DEFAULTS = Object.freeze({
  /** One of RENDERERS. */
  renderer: "auto",
  /** Which of the stream's renditions plays: "auto" (the default: main to start with, then what the link
   * carries, switching down and up), or a rendition's name (that one only). Without renditions in the
   * describe reply it changes nothing. */
  rendition: AUTO_RENDITION,
  /** How WebCodecs frames reach the screen (one of VIDEO_OUTPUTS): "generator" (a MediaStreamTrackGenerator
   * into the <video>), "canvas" (drawn into a canvas laid over the <video>: on screen soonest, more CPU where
   * the page draws without a GPU), "captured" (a canvas's stream into the <video>); "auto" takes the first of
   * them the browser and page allow. */
  videoOutput: "auto",
  /** MQTT-over-WebSocket URL; null: `mqtt` beside the page, ws(s)://<page host>/<page's folder>/mqtt (the
   * mqtt-video gateway that served it, or the reverse proxy in front of it). */
  broker: null,
  /** Control topic prefix (`topics.prefix` of the server). */
  prefix: "video",
  /** Reply topics are `<replyPrefix>/<client id>/...` (`topics.reply_prefix` of the server, without the `/`). */
  replyPrefix: "pages",
  /** The newest protocol version to speak: 2 takes the stream's media from its own topic, which the broker
   * fans out, where the server names one (docs/PROTOCOL.md, "Shared delivery"); 1 has every fragment sent to
   * this page's reply topic. */
  protocol: 2,
  /** The broker login (MQTT CONNECT user name and password, or a token for brokers with a token plugin); an
   * empty user name connects anonymously. Kept in memory only (credentials.js stores it when asked to). */
  username: "",
  password: "",
  /** MQTT keep-alive, seconds. */
  keepalive: 20,
  /** Reconnect delays after the connection to the broker is lost, ms (doubling from min to max). */
  reconnectMinMs: 500,
  reconnectMaxMs: 5000,
  /** Start muted (browsers only autoplay muted video without a user gesture). */
  muted: false,
  /** HTMLMediaElement.preservesPitch. Chromium's pitch-preserving time stretch needs more audio buffered: with
   * it, a ~120 ms target stalled every few seconds whenever playbackRate was not 1; without it, audio is
   * resampled (pitch moves by under a semitone at ±5 %) and playback stays smooth. */
  preservesPitch: false,
  ...REQUEST_DEFAULTS,
  ...LIVE_EDGE_DEFAULTS,
  ...FEED_DEFAULTS,
  ...JITTER_DEFAULTS,
  ...SWITCH_DEFAULTS,
  ...METER_DEFAULTS,
  ...ABR_DEFAULTS,
});

/** The states a Player can be in, for people and for tests. */
export const STATES = ["idle", "connecting", "buffering", "playing", "reconnecting", "error", "stopped"];

const SINKS = { mse: MseSink, webcodecs: WebCodecsSink };
const MAX_ERRORS = 20;
const MAX_EVENTS = 50;
const LATENCY_SAMPLES = 600;
const BITRATE_WINDOW_MS = 3000;
/** A link probe that has not finished after this long found no room, ms. */
const PROBE_TIMEOUT_MS = 3000;

/** The MQTT WebSocket beside this page: `mqtt` in the page's folder, over wss: on an https: page (page-urls.js). */
export function defaultBrokerUrl(loc = globalThis.location) {
  return brokerUrl(loc);
}

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
    if (!RENDERERS.includes(this.options.renderer)) throw new TypeError(`renderer must be one of ${RENDERERS.join(", ")}`);
    if (typeof this.options.rendition !== "string" || !this.options.rendition) throw new TypeError('rendition must be "auto" or a name');
    if (!VIDEO_OUTPUTS.includes(this.options.videoOutput)) throw new TypeError(`videoOutput must be one of ${VIDEO_OUTPUTS.join(", ")}`);
    this.broker = this.options.broker || defaultBrokerUrl();
    if (this.options.muted) video.muted = true;
    video.playsInline = true;
    if ("preservesPitch" in video) video.preservesPitch = this.options.preservesPitch;

    this.state = "idle";
    this.message = "";
    this._degraded = null; // the server's message while it says the stream is degraded (overloaded), else null
    this.url = null; // the source being played; null when not playing
    this.describeReply = null;
    this.sources = null; // null: no list received yet; []: no server
    this.errors = [];
    this.events = [];
    this._serverReconnecting = false;
    this._destroyed = false;
    this._playId = 0; // which play an answer that arrives after an await belongs to
    this._resetPlayFigures();

    this._sinks = {}; // made when first used, kept for later plays
    // Why WebCodecs does not play (stats().webCodecsOff): known from the page's context now, from the stream's
    // codecs at its describe; null while it plays.
    this._webCodecsOff = this.options.renderer === "mse" ? "renderer=mse asked for" : webCodecsBlocker(globalThis, { audio: false });
    this.media = this._sink(this.options.renderer === "webcodecs" && !this._webCodecsOff ? "webcodecs" : "mse");
    this.session = new Session({ ...this.options, broker: this.broker }, {
      connection: (c) => this._onConnection(c),
      sources: (list) => {
        this.sources = list;
        this._dispatch("sources");
      },
      newPlay: () => this._onNewPlay(),
      described: (reply) => this._onDescribe(reply),
      status: (status) => this._onStatus(status),
      media: (payload, rendition) => this._onMedia(payload, rendition),
      arrival: (name, facts, now) => this._onArrival(facts, now),
      switched: (s) => this._onSwitched(s),
      switchFailed: ({ to, why }) => {
        this._event("rendition", `the switch to ${to} was given up: ${why}`);
        this._abr?.failed(to, performance.now());
      },
      unavailable: (name) => {
        this._abr?.drop(name);
        if (this.session.switching) this._abr?.expect(this.session.switching);
      },
      lost: (n) => {
        this._event("lost", `${n} fragments never came (shed for a slow link)`);
        this.media?.lost();
      },
      event: (kind, detail) => this._event(kind, detail),
      fail: (code, message) => this._fail(code, message),
    });
    this._tick = setInterval(() => this._onTick(), 100);
    this._watchFrames();
  }

  /** The renderer `kind` ("mse" or "webcodecs"). */
  _sink(kind) {
    this._sinks[kind] ??= new SINKS[kind](this.video, this.options, {
      event: (k, detail) => this._event(k, detail),
      error: (code, message) => this._fail(code, message),
      unsupported: (message) => this._onUnsupported(kind, message),
      presented: (frame) => this.media === this._sinks[kind] && this._frameShown(frame, frame.mediaTime),
    });
    return this._sinks[kind];
  }

  /** Plays the stream with renderer `kind` from now on. */
  _use(kind) {
    if (this.media.kind === kind) return;
    this.media.close();
    this.media = this._sink(kind);
  }

  /**
   * The renderer for `mime`: WebCodecs where the `renderer` option allows it and it can play the stream, else
   * MediaSource (an explicit `webcodecs` too: a page that plays beats an error). Resolves to
   * {kind, why}: kind null when neither can, why: what keeps WebCodecs off (null when it plays).
   */
  async _chooseRenderer(mime) {
    const chosen = await this._rendererFor(mime);
    if (this.options.renderer === "webcodecs" && chosen.kind === "mse") this._event("renderer", `WebCodecs was asked for, but ${chosen.why}; using MediaSource`);
    return chosen;
  }

  /** The renderer that plays `mime` here ({kind, why}; kind null when none does), saying nothing. */
  async _rendererFor(mime) {
    const mse = mseSupports(mime) ? "mse" : null;
    if (this.options.renderer === "mse") return { kind: mse, why: "renderer=mse asked for" };
    const why = await webCodecsIssue(mime);
    return why ? { kind: mse, why } : { kind: "webcodecs", why: null };
  }

  /** The names of the renditions `kind` decodes here (any renderer when kind is null). */
  async _decodable(renditions, kind) {
    const names = new Set();
    for (const r of renditions) {
      const ok = kind === "mse" ? mseSupports(r.mimeCodec) : kind === "webcodecs" ? !(await webCodecsIssue(r.mimeCodec)) : !!(await this._rendererFor(r.mimeCodec)).kind;
      if (ok) names.add(r.name);
    }
    return names;
  }

  /** The WebCodecs renderer met something its decoders refuse: MediaSource takes over, or an error. */
  _onUnsupported(kind, message) {
    if (kind !== "webcodecs" || this.media.kind !== "webcodecs" || !this.url) return;
    const mime = this.media.mime;
    if (!mseSupports(mime)) {
      this._fail("unsupported_codec", `WebCodecs cannot play this stream: ${message}`);
      return;
    }
    this._webCodecsOff = message;
    this._event("renderer", `WebCodecs cannot play this stream (${message}); using MediaSource`);
    const init = this.media.init;
    const hasAudio = this.media.hasAudio;
    this._use("mse");
    this.media.start(mime, hasAudio);
    if (init) this.media.push(init);
  }

  /** Whether the MQTT connection is up. */
  get connected() {
    return this.session.connected;
  }

  // ----- public API -------------------------------------------------------------------------------------

  /** Plays `url` (a source URL as listed on `<prefix>/sources`, or any URL the server allows). */
  play(url) {
    url = String(url ?? "").trim();
    if (!url || this._destroyed) return;
    this.url = url;
    this._playId++;
    this.describeReply = null;
    this._serverReconnecting = false;
    this._resetPlayFigures();
    this.media.close();
    if (this.options.renderer !== "mse") WebCodecsSink.prepare(); // (not where WebCodecs cannot play)
    this._setState("connecting", `connecting to ${url}`);
    this.session.play(url);
  }

  /**
   * Switches to rendition `name` now, at its next keyframe (with `rendition: "auto"` the controller may move
   * again later, as the link says). Returns false when there is nothing to switch: no renditions, no such
   * one, it plays already, or a switch is in progress.
   */
  switchRendition(name) {
    const from = this.session.rendition;
    if (!this.session.switchRendition(name)) return false;
    this._abr?.expect(name);
    this._event("rendition", `switching ${from} -> ${name}: asked for`);
    return true;
  }

  /**
   * Opens picture-in-picture, or closes it when it is open. Resolves to whether that worked (why not is an
   * event). WebCodecs' canvas output feeds the window only while it is open.
   */
  async pictureInPicture() {
    try {
      if (document.pictureInPictureElement === this.video) await document.exitPictureInPicture();
      else if (this.media.pictureInPicture) await this.media.pictureInPicture();
      else await this.video.requestPictureInPicture();
      return true;
    } catch (e) {
      this._event("pip", `picture-in-picture: ${e.name}: ${e.message}`);
      return false;
    }
  }

  /** Stops playing; the connection stays for the source list. */
  stop() {
    if (!this.url) return;
    this.session.stop();
    this.url = null;
    this.media.close();
    this._setState("stopped", "stopped");
  }

  /** Stops and closes the connection for good. */
  destroy() {
    this.stop();
    this._destroyed = true;
    clearInterval(this._tick);
    for (const sink of Object.values(this._sinks)) sink.destroy();
    this.session.destroy();
  }

  /** A snapshot of what the player is doing, for the page and for tests. */
  stats() {
    const v = this.video;
    const q = this.media.quality();
    const now = performance.now();
    while (this._bytes.length && now - this._bytes[0].at > BITRATE_WINDOW_MS) this._bytes.shift();
    const span = this._bytes.length ? Math.max(1000, now - this._bytes[0].at) : BITRATE_WINDOW_MS;
    const bytes = this._bytes.reduce((n, e) => n + e.n, 0);
    const latency = this._latencies.summary();
    const av = this._avOffsets.summary();
    const lastAv = this._avOffsets.values.at(-1);
    const sink = this.media.snapshot();
    const shown = this.media.frameSize?.() ?? null; // the frames' own size (a canvas output's <video> has none)
    const delivery = this.session.delivery();
    return {
      ...sink,
      state: this.state,
      // the server cannot keep up with the source and skips ahead to stay live (a `degraded` status)
      degraded: this._degraded !== null,
      message: this.message,
      url: this.url,
      broker: this.broker,
      connected: this.connected,
      replyTopic: this.session.replyTopic,
      renderer: this.media.kind,
      // why WebCodecs does not play ("not a secure context", "no VideoDecoder", "codec not supported: ..."), or null
      webCodecsOff: this.media.kind === "webcodecs" ? null : this._webCodecsOff,
      currentTime: round(this.media.currentTime(), 3),
      paused: v.paused,
      playbackRate: sink.playbackRate,
      latencyMs: round(this.latencyNow(), 1),
      latencyP50Ms: round(latency.p50, 1),
      latencyP95Ms: round(latency.p95, 1),
      latencySamples: latency.n,
      // audio heard minus picture shown (ms; positive: the sound is ahead), per rendered frame; WebCodecs only
      avOffsetMs: lastAv === undefined ? null : round(lastAv, 1),
      avOffsetP50Ms: round(av.p50, 1),
      avOffsetP5Ms: round(this._avOffsets.percentile(5), 1),
      avOffsetP95Ms: round(av.p95, 1),
      targetLatencyMs: round(sink.targetLatencyMs, 0),
      firstFrameMs: round(this._firstFrameMs, 1), // from play() to the first frame shown
      firstFrameAtMs: this._firstFrameMs === null ? null : round(this._playStartedAt + this._firstFrameMs, 1),
      decodedFrames: q.decoded,
      droppedFrames: q.dropped,
      bufferSeconds: round(sink.bufferSeconds, 3),
      // Where the latency goes: arrival is the server's and the network's part (fragment arrival minus its
      // source wall clock); display, the browser's (a frame's expected display time minus its presentation).
      arrivalLatencyMs: round(this.media.timeline.arrivals.values.at(-1) ?? null, 1),
      arrivalP50Ms: round(this.media.timeline.arrivals.summary().p50, 1),
      displayDelayP50Ms: round(this._displayDelays.summary().p50, 1),
      queuedSegments: sink.queuedSegments,
      width: shown?.width || v.videoWidth || this.describeReply?.width || 0,
      height: shown?.height || v.videoHeight || this.describeReply?.height || 0,
      mimeCodec: this.media.mime ?? this.describeReply?.mimeCodec ?? null,
      hasAudio: this.media.hasAudio,
      bitrateKbps: round((bytes * 8) / span, 1), // bits per ms = kbit/s
      receivedBytes: this._receivedBytes,
      resets: sink.resets,
      jumps: sink.jumps,
      // MediaSource: jumps that also played again a <video> left paused with media buffered (live-edge.js)
      recoveries: sink.recoveries ?? 0,
      stalls: sink.stalls,
      skippedToKeyframe: sink.skippedToKeyframe,
      decodeP50Ms: round(sink.decodeP50Ms ?? null, 1),
      decodeP95Ms: round(sink.decodeP95Ms ?? null, 1),
      // protocol 2: media on the stream topic; fragments that came on both topics, and never received ones
      // stepped over (shed by the gateway for a slow link)
      protocol: delivery.protocol,
      duplicateFragments: delivery.duplicates,
      skippedFragments: delivery.skipped,
      reconnects: this.session.reconnects,
      renewals: this.session.renewals,
      // renditions: the one the renderer is fed (null: the stream has none), a switch in progress, the
      // switches done and given up, and the link's capacity the controller estimates (kbit/s)
      rendition: this.session.rendition,
      renditionMode: this.session.renditions ? this.options.rendition : null,
      renditions: this.session.renditions?.map((r) => r.name) ?? null,
      renditionSwitching: this.session.switching,
      renditionSwitches: this.session.switches,
      renditionSwitchFailures: this.session.switchFailures,
      linkKbps: round(this._abr?.capacityKbps(now) ?? null, 0),
      abrReason: this._abr?.lastDecision?.why ?? null,
      errors: this.errors.slice(),
    };
  }

  /** now − the source wall clock of the frame on screen, in ms; null before any prft. */
  latencyNow() {
    const wall = this.media.wallClockAt(this.media.currentTime());
    if (wall === null || this.state !== "playing") return null;
    return Date.now() - wall;
  }

  /** The latency of the frames rendered since the play started (ms), oldest first (at most the last 600). */
  latencyHistory() {
    return this._latencies.values.slice();
  }

  /**
   * The frames rendered after the first `mark` of this play (ms, oldest first) and the next mark: poll with the
   * returned mark to see every frame once (poll more often than every 600 frames, or the oldest are lost).
   */
  latenciesSince(mark = 0) {
    const { values, mark: next } = this._latencies.since(mark);
    return { latencies: values, mark: next };
  }

  /** When the frames rendered after the first `mark` were expected on screen (ms since the epoch), as latenciesSince. */
  displaysSince(mark = 0) {
    const { values, mark: next } = this._displays.since(mark);
    return { displays: values, mark: next };
  }

  /** The audio-to-picture offsets (ms) of the frames rendered after the first `mark`, as latenciesSince. */
  avOffsetsSince(mark = 0) {
    const { values, mark: next } = this._avOffsets.since(mark);
    return { offsets: values, mark: next };
  }

  // ----- the session's news -------------------------------------------------------------------------

  /** Logs in to the broker as `username` (see the option): a fresh connection, the play (if any) goes on. */
  login({ username = "", password = "" } = {}) {
    this.options.username = username;
    this.options.password = password;
    if (this.state === "error" && this.errors.at(-1)?.code === "login_refused") this._setState("idle", "");
    this.session.login({ username, password });
    const again = this._refusedUrl;
    this._refusedUrl = null;
    if (again) this.play(again);
  }

  /** {code, message} while the broker refuses this player's login, else null. */
  get loginRefused() {
    return this.session.refused;
  }

  _onConnection({ connected, everConnected, delayMs, refused }) {
    this._dispatch("connection");
    if (refused) {
      // Not a passing outage: the same login would be refused again, so no reconnecting until login().
      this._refusedUrl = this.url ?? this._refusedUrl;
      this._fail(refused.code, refused.message);
      return;
    }
    if (connected || !this.url || this.state === "error") return;
    if (everConnected) this._setState("reconnecting", `lost the connection to ${this.broker}; reconnecting`);
    else this._setState("connecting", `cannot reach the broker at ${this.broker}; trying again in ${(delayMs / 1000).toFixed(1)} s`);
  }

  /** A play on a fresh reply topic: media of the previous one is gone with it, the renderer starts afresh. */
  _onNewPlay() {
    this._degraded = null;
    if (this.media.mime) this.media.reset("new play after reconnecting");
    if (this.state !== "reconnecting") this._setState("connecting", `asking the server for ${this.url}`);
  }

  async _onDescribe(json) {
    if (!this.url || this.state === "error") return;
    const { reply, error } = describeOutcome(json);
    if (error) {
      this._fail(error.code, error.message);
      return;
    }
    // With renditions, the one the play starts with (a reconnect: the one that played) says the codec; one
    // this browser cannot decode (HEVC without a decoder for it) gives way to one it can.
    const renditions = this.session.renditions;
    const playId = this._playId;
    let start = renditions ? startRendition(renditions, this.options.rendition, this.session.lastRendition) : null;
    if (renditions && !this.media.mime) {
      const decodable = await this._decodable(renditions, null);
      if (playId !== this._playId || !this.url || this.state === "error") return;
      const decoded = decodableStart(renditions, start, decodable);
      if (decoded?.undecodable) {
        const passed = renditions.find((r) => r.name === decoded.undecodable).mimeCodec;
        this._event("rendition", `this browser does not decode ${decoded.undecodable} (${passed}); playing ${decoded.name}`);
      }
      start = decoded ?? start;
    }
    const mime = start ? renditions.find((r) => r.name === start.name).mimeCodec : reply.mimeCodec;
    // A describe again (a reconnect) keeps the renderer this play has.
    const chosen = this.media.mime ? { kind: this.media.kind, why: this._webCodecsOff } : await this._chooseRenderer(mime);
    // What the controller may switch between: the renditions this renderer decodes.
    const ladderNames = renditions && chosen.kind ? await this._decodable(renditions, chosen.kind) : new Set();
    if (playId !== this._playId || !this.url || this.state === "error") return; // played or stopped meanwhile
    const { kind, why } = chosen;
    this._webCodecsOff = why;
    if (!kind) {
      const webcodecs = this.options.renderer === "mse" ? "" : ` (WebCodecs: ${why})`;
      this._fail("unsupported_codec", `This browser cannot play ${mime} with MediaSource${webcodecs}.`);
      return;
    }
    const first = this.describeReply === null;
    this.describeReply = reply;
    if (kind !== this.media.kind) this._use(kind);
    if (first && !this.media.mime) this.media.start(mime, !!reply.has_audio);
    else if (mime !== this.media.mime) this.media.changeMime(mime);
    this._setState(this.state === "reconnecting" ? "reconnecting" : "buffering", "waiting for media");
    if (start?.unknown) {
      this._event("rendition", `the server offers no rendition "${start.unknown}" (${renditions.map((r) => r.name).join(", ")}); playing ${start.name}`);
    } else if (!renditions && this.options.rendition !== AUTO_RENDITION) {
      this._event("rendition", `this stream has no renditions; rendition "${this.options.rendition}" is ignored`);
    }
    this._startAbr(renditions, start, ladderNames);
    this.session.acceptDescribe(start?.name ?? null);
  }

  /**
   * With `rendition: "auto"` and two renditions or more the renderer can play, a controller picks which plays
   * from now on (a fresh one per describe: a reconnect starts measuring again).
   */
  _startAbr(renditions, start, decodable) {
    this._abr = null;
    this._meter = null;
    if (!renditions || this.options.rendition !== AUTO_RENDITION) return;
    const playable = renditionLadder(renditions, decodable, start.name);
    if (playable.length < 2 || !playable.some((r) => r.name === start.name)) return;
    const now = performance.now();
    this._abr = new AbrController(playable, start.name, now, this.options);
    this._meter = new LinkMeter(this.options);
    this._abrAt = now;
    this._abrSkipped = this.session.delivery().skipped;
  }

  /** A fragment of the rendition played arrived (before any hand-over hold): what it says of the link. */
  _onArrival(facts, now) {
    if (!this._meter) return;
    const prft = facts.wallMs !== null;
    const delayMs = prft ? Date.now() - facts.wallMs : facts.start !== null ? now - facts.start * 1000 : null;
    const mediaMs = facts.video && facts.start !== null ? (facts.end - facts.start) * 1000 : 0;
    this._meter.fragment({ now, bytes: facts.bytes, mediaMs, keyframe: !!facts.keyframe, delayMs, clock: prft ? "prft" : "media" });
  }

  _onSwitched({ from, to, at, gapMs, waitedMs }) {
    const now = performance.now();
    this._abr?.switched(to, now);
    this._meter?.switched();
    const gap = gapMs ? `, ${gapMs} ms of ${from} missing before it` : "";
    this._event("rendition", `${from} -> ${to} at ${at.toFixed(3)} s, ${Math.round(waitedMs)} ms after the play${gap}`);
    this._dispatch("rendition");
  }

  /** The controller's look at the link, every abrIntervalMs while media should be flowing. */
  _abrTick(now) {
    if (!this._abr || now - this._abrAt < this.options.abrIntervalMs) return;
    this._abrAt = now;
    const skipped = this.session.delivery().skipped;
    const obs = { ...this._meter.take(now), skipped: skipped - this._abrSkipped };
    this._abrSkipped = skipped;
    // The renderer holds enough to ride out the keyframes' extra delay on this link, not a stall after each.
    this.media.linkJitter(this._meter.jitterMs());
    const decision = this._abr.observe(obs);
    if (!decision) return;
    if (decision.probe) {
      this._probe(decision.probe);
      return;
    }
    const from = this.session.rendition;
    // Down because the link cannot carry what plays: no seamless hand-over (the new rendition's keyframes come
    // behind the old one's queued fragments, too late for one), the picture waits for its first keyframe.
    const down = decision.down ? { cut: true } : {};
    if (this.session.switchRendition(decision.switchTo, down)) {
      this._event("rendition", `switching ${from} -> ${decision.switchTo}: ${decision.why}`);
    } else {
      this._abr.failed(decision.switchTo, now);
    }
  }

  /** Times a burst from the gateway for the controller (link-probe.js); a broker elsewhere has none. */
  async _probe({ bytes, for: name }) {
    const abr = this._abr;
    const url = probeUrl(this.broker, bytes, `${Date.now()}`);
    if (!url) {
      abr.noProbe();
      return;
    }
    const r = await probeLink(url, { timeoutMs: PROBE_TIMEOUT_MS });
    if (abr !== this._abr) return; // another play meanwhile
    if (r.error && !r.timedOut) {
      this._event("rendition", `no link probe (${r.error}): switching up to find out from now on`);
      abr.noProbe();
      return;
    }
    this._event("rendition", r.error ? `a probe for ${name}: ${r.error}` : `a probe for ${name}: ${r.bytes} bytes at ${Math.round(r.kbps)} kbit/s${r.bound ? " or more" : ""}`);
    abr.probed(r.error ? null : r.kbps, performance.now());
  }

  _onStatus(status) {
    if (!this.url) return;
    this._event("status", JSON.stringify(status));
    switch (status.state) {
      case "playing":
        this._serverReconnecting = false;
        if (this._degraded !== null) {
          this._degraded = null;
          if (this.state === "playing") this._setState("playing", "playing");
        }
        // A rendition's `playing` (a switch moved the play): its init segment comes at the hand-over, which
        // tells the renderer its codec there.
        if (status.mimeCodec && status.mimeCodec !== this.media.mime && !(status.rendition && this.session.renditions)) {
          // WebCodecs finds out from the init segment that follows (unsupported() falls back).
          if (this.media.kind === "mse" && !mseSupports(status.mimeCodec)) {
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
      case "degraded":
        // Media goes on, with gaps: say so beside the state until the server says `playing` again.
        this._degraded = status.message ?? "the server cannot keep up with this source";
        if (this.state === "playing") this._setState("playing", `degraded: ${this._degraded}`);
        break;
      case "error":
        this._fail(status.code ?? "error", status.message ?? "error");
        break;
      case "ended":
        this.url = null;
        this.session.forget();
        this.media.close();
        this._setState("stopped", `ended: ${status.reason ?? "?"}`);
        break;
      default:
        break;
    }
  }

  _onMedia(payload, rendition) {
    if (!this.url || this.state === "error" || this.state === "stopped") return;
    this._receivedBytes += payload.length;
    this._bytes.push({ at: performance.now(), n: payload.length });
    if (this._bytes.length > 2000) this._bytes.splice(0, 1000);
    this._serverReconnecting = false;
    if (!rendition) {
      this.media.push(payload);
      return;
    }
    // A switch: the new rendition's init, into the same pipeline (MediaSource: the same SourceBuffer).
    if (this.media.kind === "mse" && rendition.mime && !mseSupports(rendition.mime)) {
      this._fail("unsupported_codec", `This browser cannot play rendition ${rendition.name} (${rendition.mime}).`);
      return;
    }
    this.media.switchRendition(payload, rendition.mime);
  }

  // ----- states, figures, events -----------------------------------------------------------------

  _onTick() {
    if (!this.url) return;
    this.media.tick();
    if (this.state === "error" || this.state === "stopped") return;
    this.session.tick();
    if (this.state === "error") return;
    if (!this.connected && !this.session.everConnected) return; // still connecting for the first time
    if (!this.connected || this._serverReconnecting) {
      if (this.state !== "reconnecting") this._setState("reconnecting", "reconnecting");
      return;
    }
    if (!this.describeReply) return; // still connecting
    const now = performance.now();
    this._abrTick(now);
    if (this.media.advancing(now)) {
      // (With requestVideoFrameCallback the first frame's own presentation time is taken instead.)
      if (this._firstFrameMs === null && !this._framesWatched && !this.media.presentsFrames) this._firstFrameMs = now - this._playStartedAt;
      if (this.state !== "playing") this._setState("playing", this._degraded === null ? "playing" : `degraded: ${this._degraded}`);
    } else if (this.state === "playing" || this.state === "reconnecting" || this.state === "connecting") {
      this._setState("buffering", this.video.paused && this.media.currentTime() > 0 ? "paused" : "waiting for media");
    }
  }

  _watchFrames() {
    const v = this.video;
    this._framesWatched = typeof v.requestVideoFrameCallback === "function";
    if (!this._framesWatched) return;
    const onFrame = (now, meta) => {
      if (this._destroyed) return;
      // A renderer that shows frames itself (a canvas over the <video>) reports them (hooks.presented).
      if (!this.media.presentsFrames) this._frameShown(meta, this.media.shownMediaTime(meta, now));
      v.requestVideoFrameCallback(onFrame);
    };
    v.requestVideoFrameCallback(onFrame);
  }

  /** The frame of media time `t` was presented as `meta` (requestVideoFrameCallback's) says: the figures. */
  _frameShown(meta, t) {
    if (this._destroyed || !this.url || this.state === "error") return;
    if (this._firstFrameMs === null && t > 0) this._firstFrameMs = Math.max(0, meta.presentationTime - this._playStartedAt);
    const wall = t === null ? null : this.media.wallClockAt(t);
    this._displays.add(performance.timeOrigin + meta.expectedDisplayTime);
    if (wall !== null) this._latencies.add(performance.timeOrigin + meta.expectedDisplayTime - wall);
    this._displayDelays.add(meta.expectedDisplayTime - meta.presentationTime);
    const av = t === null ? null : this.media.frameShown(meta.expectedDisplayTime, t);
    if (av !== null) this._avOffsets.add(av);
  }

  _resetPlayFigures() {
    this._playStartedAt = performance.now();
    this._firstFrameMs = null;
    this._latencies = new Samples(LATENCY_SAMPLES);
    this._displays = new Samples(LATENCY_SAMPLES);
    this._avOffsets = new Samples(LATENCY_SAMPLES);
    this._displayDelays = new Samples(LATENCY_SAMPLES);
    this._bytes = [];
    this._receivedBytes = 0;
    this.errors = [];
    this._abr = null;
    this._meter = null;
  }

  _fail(code, message) {
    this.errors.push({ at: new Date().toISOString(), code, message });
    if (this.errors.length > MAX_ERRORS) this.errors.shift();
    this._event("error", `${code}: ${message}`);
    if (this.url) {
      this.session.stop();
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
