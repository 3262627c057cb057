// The control protocol the page speaks, v2 with v1 for older servers (docs/PROTOCOL.md), as pure code: the topics of a player, the
// request messages, reading the server's JSON, and when to send (or repeat) describe and play. No MQTT and no
// clock: session.js does the I/O, tests/e2e/protocol.test.js drives the scheduler with tables.

import { isAudioCodec, mimeCodecs } from "./capabilities.js";

/** The newest protocol version this page speaks (docs/PROTOCOL.md): 2 with a server whose describe reply names
 * the stream's topics, else 1. */
export const PROTOCOL_VERSION = 2;

/** The server's request topics under `prefix` (`topics.prefix`). */
export function controlTopics(prefix) {
  return { describe: `${prefix}/describe`, play: `${prefix}/play`, stop: `${prefix}/stop`, sources: `${prefix}/sources` };
}

/**
 * A player's own topics for MQTT client id `clientId`: `<replyPrefix>/<clientId>/info` for describe replies,
 * `.../media` for the play (statuses on `.../media/status`), and the one subscription covering them. Under
 * `<replyPrefix>/<client id>/` a broker ACL can give each page its own topics (`pattern readwrite pages/%c/#`,
 * docker/mosquitto.acl) and the server can insist on the prefix.
 */
export function replyTopics(replyPrefix, clientId) {
  const base = `${replyPrefix}/${clientId}`;
  return { base, info: `${base}/info`, media: `${base}/media`, status: `${base}/media/status`, subscription: `${base}/#` };
}

export const describeRequest = (url, replyTopic) => ({ url, reply_topic: replyTopic });
/**
 * A play; `version` 2 asks for the stream's media on its own topics (after a join burst on the reply topic),
 * and may name the `rendition` (only version 2 can: a version 1 play never carries one).
 */
export function playRequest(url, replyTopic, version = 1, rendition = null) {
  if (version !== 2) return { url, reply_topic: replyTopic };
  return rendition ? { url, reply_topic: replyTopic, version, rendition } : { url, reply_topic: replyTopic, version };
}

/**
 * The renditions of a describe reply, `main` (the stream's own output) first as the server lists them:
 * [{name, mimeCodec, width, height, fps, bitrateKbps (null: not known yet), media (its stream topic)}], or
 * null when the reply lists none (a server or stream without renditions: nothing about the play changes).
 * An entry without a name, a codec or a stream topic it can subscribe to is left out.
 */
export function parseRenditions(reply) {
  if (!Array.isArray(reply?.renditions)) return null;
  const list = [];
  for (const r of reply.renditions) {
    const media = streamMediaTopic(r);
    if (typeof r?.name !== "string" || !r.name || typeof r.mimeCodec !== "string" || !media) continue;
    if (list.some((x) => x.name === r.name)) continue;
    const number = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
    list.push({
      name: r.name,
      mimeCodec: r.mimeCodec,
      width: number(r.width),
      height: number(r.height),
      fps: number(r.fps),
      bitrateKbps: number(r.bitrate_kbps),
      media,
    });
  }
  return list.length ? list : null;
}

/** What the `rendition` option may be besides a rendition's name: the page picks (and switches). */
export const AUTO_RENDITION = "auto";

/**
 * The rendition a play starts with: {name, unknown}. `wanted` is the option (`auto` or a name), `previous`
 * what this play last played (a reconnect goes on with it). `auto` starts with what played before, else the
 * first listed (`main`); a name the server does not list plays the first, with `unknown` set to it.
 */
export function startRendition(renditions, wanted, previous = null) {
  const has = (name) => renditions.some((r) => r.name === name);
  if (wanted !== AUTO_RENDITION && wanted != null && !has(wanted)) return { name: renditions[0].name, unknown: wanted };
  if (wanted !== AUTO_RENDITION && wanted != null) return { name: wanted, unknown: null };
  return { name: previous && has(previous) ? previous : renditions[0].name, unknown: null };
}

/** The sample entry of a MIME type's video codec (`video/mp4; codecs="hvc1.1.6.L93.B0, mp4a.40.2"` -> "hvc1"). */
export function videoCodecOf(mime) {
  return (mimeCodecs(mime).find((c) => !isAudioCodec(c)) ?? "").split(".")[0];
}

/**
 * The rendition a play starts with when this browser may not decode every one (`decodable`: a Set of
 * names): `start` (startRendition's choice) when it decodes, else the first listed that does (an HEVC
 * `main` in a browser without HEVC: the stream's H.264 rendition), with `undecodable` naming the one passed
 * over; null when none decodes.
 */
export function decodableStart(renditions, start, decodable) {
  if (decodable.has(start.name)) return start;
  const first = renditions.find((r) => decodable.has(r.name));
  return first ? { name: first.name, unknown: start.unknown, undecodable: start.name } : null;
}

/**
 * The renditions the page's controller may move between: those it decodes, less any that only repeats
 * another at the same size in another codec (an H.264 copy of an HEVC `main`, made for browsers without
 * HEVC): the start's codec is kept, so a browser that decodes both never asks the server to encode it.
 */
export function renditionLadder(renditions, decodable, startName) {
  const family = videoCodecOf(renditions.find((r) => r.name === startName)?.mimeCodec);
  const ok = renditions.filter((r) => decodable.has(r.name));
  const repeats = (r) =>
    videoCodecOf(r.mimeCodec) !== family &&
    ok.some((q) => videoCodecOf(q.mimeCodec) === family && q.width === r.width && q.height === r.height);
  return ok.filter((r) => !repeats(r));
}

/**
 * The stream topic a version 2 viewer subscribes to, from a describe reply or a `playing` status (their
 * `stream` object), or null when the server does not name one (a version 1 server).
 */
export function streamMediaTopic(message) {
  const topic = message?.stream?.media;
  return typeof topic === "string" && topic.length > 0 && !/[#+]/.test(topic) ? topic : null;
}
export const stopRequest = (replyTopic) => ({ reply_topic: replyTopic });

/**
 * A server with `topics.guarded` answers a describe on the reply topic with a pointer only (`"guarded":
 * true`): every answer about the stream comes under `stream.replies`, which the broker lets only those who may
 * watch the stream read. Returns the topics this player then listens on, the last levels of its own reply
 * topics under `stream.replies` ({info, media, status, subscription}), or null for any other message.
 */
export function guardedTopics(reply, own) {
  const replies = reply?.guarded === true ? reply?.stream?.replies : null;
  if (typeof replies !== "string" || !replies.length || /[#+]/.test(replies)) return null;
  const last = (topic) => topic.slice(topic.lastIndexOf("/") + 1);
  const media = `${replies}/${last(own.media)}`;
  return { info: `${replies}/${last(own.info)}`, media, status: `${media}/status`, subscription: `${replies}/#` };
}

/**
 * An MQTT.js error as a refused login, {code, message}, or null for any other error. CONNACK return codes 4
 * (bad user name or password) and 5 (not authorized) of MQTT 3.1.1: the broker will refuse the same login
 * again, so the page says so and does not reconnect.
 */
export function loginRefusal(error) {
  if (error?.code === 4) return { code: "login_refused", message: "The broker refused this login: wrong user name or password." };
  if (error?.code === 5) return { code: "login_refused", message: "The broker refused this login: not authorized (log in with a user it knows)." };
  return null;
}

/** The MQTT CONNECT credentials of the options {username, password}: none without a user name. */
export function connectCredentials({ username, password } = {}) {
  if (typeof username !== "string" || !username.length) return {};
  return typeof password === "string" && password.length ? { username, password } : { username };
}

/** A JSON payload (bytes) as a value, or null when it is not JSON. */
export function parseJson(payload) {
  try {
    return JSON.parse(new TextDecoder().decode(payload));
  } catch {
    return null;
  }
}

/** The retained `<prefix>/sources` payload as a list of {name, url, description}; [] when no server serves. */
export function parseSources(payload) {
  if (!payload.length) return [];
  const msg = parseJson(payload);
  if (!msg || !Array.isArray(msg.sources)) return [];
  return msg.sources.filter((s) => s && typeof s.url === "string");
}

/** Whether the `<prefix>/sources` payload is a guarded server's: the sources are entries of their own. */
export function sourcesGuarded(payload) {
  return payload.length > 0 && parseJson(payload)?.guarded === true;
}

/** The subscription to a guarded server's entries of the sources list, one per source. */
export const sourceEntries = (prefix) => `${prefix}/live/+/source`;

/**
 * A guarded server's entry: {id, source} from `<prefix>/live/<id>/source` (source null: the entry was
 * cleared), or null for any other topic or a payload that is not an entry.
 */
export function sourceEntry(prefix, topic, payload) {
  const head = `${prefix}/live/`;
  if (!topic.startsWith(head) || !topic.endsWith("/source")) return null;
  const id = topic.slice(head.length, -"/source".length);
  if (!id || id.includes("/")) return null;
  if (!payload.length) return { id, source: null };
  const s = parseJson(payload);
  return s && typeof s.url === "string" ? { id, source: s } : null;
}

/**
 * A describe reply as {reply} (the stream's facts: mimeCodec, width, height, has_audio, ...) or {error: {code,
 * message}}: the server's own error, or one of ours for a reply that is not what PROTOCOL.md says.
 */
export function describeOutcome(reply) {
  if (!reply || typeof reply !== "object") return { error: { code: "bad_reply", message: "the server's describe reply is not JSON" } };
  if (reply.error) {
    return { error: { code: reply.error.code ?? "error", message: reply.error.message ?? JSON.stringify(reply.error) } };
  }
  if (typeof reply.mimeCodec !== "string") return { error: { code: "bad_reply", message: "the server's describe reply has no mimeCodec" } };
  return { reply };
}

/** When requests are sent and repeated (the Player's options of the same names). */
export const REQUEST_DEFAULTS = Object.freeze({
  /** Repeat an unanswered describe after this long, ms. */
  describeRetryMs: 2000,
  /** Repeat an unanswered play after this long, ms. */
  playRetryMs: 3000,
  /** Give up on a describe (or a first play) unanswered for this long, ms. */
  describeTimeoutMs: 15000,
  /** Play again (a renewal for a server that still has us) after this long with no media and no status. */
  mediaTimeoutMs: 6000,
  /** Renew the play (send it again) this often while it plays, well within the server's
   * `limits.viewer_timeout_secs` (a viewer that does not renew is dropped). */
  renewMs: 10000,
});

/**
 * The requests of one play on one reply topic. Requests are QoS 0 and the server may not be subscribed yet
 * (right after a broker restart both sides reconnect at once), so describe and play are repeated until
 * answered; both are safe to repeat, and a repeated play renews the viewer (PROTOCOL.md, "Viewer timeout").
 *
 * Every method takes `now` (ms) and returns the actions to take: {send: "describe" | "play", why} or
 * {fail: {code, message}}.
 */
export class PlayRequests {
  constructor(options = {}, now = 0) {
    this.options = { ...REQUEST_DEFAULTS };
    for (const [k, v] of Object.entries(options)) if (v !== undefined && k in REQUEST_DEFAULTS) this.options[k] = v;
    this.describedAt = null;
    this.describeFirstAt = now;
    this.describeSentAt = now;
    this.playFirstAt = null;
    this.playSentAt = null;
    this.answered = false;
    this.lastMessageAt = now;
    this.renewals = 0;
    this.done = false; // failed or ended: nothing more is sent
  }

  /** The first describe of the play. */
  start(now) {
    this.describeFirstAt = this.describeSentAt = this.lastMessageAt = now;
    return [{ send: "describe", why: "start" }];
  }

  /** The describe was answered (the Player decides whether to play). */
  described(now) {
    this.describedAt = now;
    return [];
  }

  /** The Player accepted the describe reply: the first play. */
  play(now) {
    if (this.done) return [];
    this.playFirstAt = this.playSentAt = now;
    return [{ send: "play", why: "start" }];
  }

  /** A status or media message arrived on the play's reply topic. */
  message(now) {
    this.answered = true;
    this.lastMessageAt = now;
    return [];
  }

  /** The server republished its source list (it has just (re)subscribed): an unanswered describe goes again. */
  serverBack(now) {
    if (this.done || this.describedAt !== null) return [];
    this.describeSentAt = now;
    return [{ send: "describe", why: "the server is back" }];
  }

  /** Nothing more: the play failed or ended. */
  finish() {
    this.done = true;
  }

  /** An unanswered `kind` request: repeated every `every` ms, given up describeTimeoutMs after `firstAt`. */
  _repeat(kind, firstAt, every, failure, now) {
    if (now - firstAt > this.options.describeTimeoutMs) {
      this.done = true;
      return [{ fail: { code: "timeout", message: failure } }];
    }
    if (now - this[`${kind}SentAt`] > every) {
      this[`${kind}SentAt`] = now;
      return [{ send: kind, why: "retry" }];
    }
    return [];
  }

  tick(now) {
    if (this.done) return [];
    const o = this.options;
    if (this.describedAt === null) {
      return this._repeat("describe", this.describeFirstAt, o.describeRetryMs, "no answer from the server (is mqtt-video serve running on this broker?)", now);
    }
    if (this.playSentAt === null) return []; // the Player has not accepted the describe (yet)
    if (!this.answered) {
      return this._repeat("play", this.playFirstAt, o.playRetryMs, "the server accepted the source but sent nothing for the play request", now);
    }
    const silentFor = now - this.lastMessageAt;
    if (silentFor > o.mediaTimeoutMs && now - this.playSentAt > o.mediaTimeoutMs) {
      // Nothing at all (no media, no status) for a while: the server that served us may be gone (another
      // instance of a pool takes over on a new play). For a server that still has us, a play only renews.
      this.playSentAt = now;
      return [{ send: "play", why: `nothing received for ${o.mediaTimeoutMs / 1000} s` }];
    }
    if (o.renewMs > 0 && now - this.playSentAt >= o.renewMs) {
      this.playSentAt = now;
      this.renewals++;
      return [{ send: "play", why: "renew" }];
    }
    return [];
  }
}
