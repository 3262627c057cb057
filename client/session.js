// One player's MQTT session: the connection to the broker (MQTT.js over WebSocket) with a last will that stops
// its play, reconnects with backoff, the reply topics of each play, and the requests of protocol.js sent,
// repeated and renewed. It hands what arrives to its hooks and knows nothing about how media is played.
//
// One connection per player: a connection has one last will, and it must name that player's reply topic.
// Each play on a connection that already played gets a fresh connection, hence a fresh reply topic and will.
//
// Renditions (a describe reply that lists them): each rendition played is a stream topic of its own with its
// own SequenceMerge (its sequence numbers are its own). A switch subscribes to the new one's topic, then
// plays with its name, which moves the viewer there; the old one goes on for a grace period, and switch.js
// decides what of both goes to the renderer until the hand-over at a keyframe; then the old topic is left.

import mqtt from "./node_modules/mqtt/dist/mqtt.esm.js";
import { SubscriptionRefusals } from "./refusals.js";
import {
  connectCredentials,
  controlTopics,
  describeRequest,
  guardedTopics,
  loginRefusal,
  parseJson,
  parseRenditions,
  parseSources,
  playRequest,
  PlayRequests,
  replyTopics,
  sourceEntries,
  sourceEntry,
  sourcesGuarded,
  stopRequest,
  streamMediaTopic,
} from "./protocol.js";
import { SequenceMerge } from "./merge.js";
import { boxType, messageFacts, sameBytes } from "./mp4.js";
import { Reassembler } from "./pieces.js";
import { Handover } from "./switch.js";

/** Reply topics of dead connections remembered to stop once connected again. */
const MAX_STALE = 8;
/** The name of the one feed of a stream without renditions (never sent: such a play names none). */
const MAIN = "main";
/** The `error` codes with which the server refuses a rendition (docs/PROTOCOL.md, "Renditions"): one it does
 * not have (bad_request), one that failed in this run of the source (internal_error). */
const RENDITION_REFUSALS = new Set(["bad_request", "internal_error"]);

/** Whether another rendition of `conn` than `feed`'s follows `feed`'s topic. */
function topicShared(conn, feed) {
  return [...conn.feeds.values()].some((f) => f !== feed && f.topic === feed.topic);
}

/** `bytes` random bytes in hex. getRandomValues works on any page; crypto.randomUUID only in a secure context. */
function randomHex(bytes) {
  const a = new Uint8Array(bytes);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

export class Session {
  /**
   * @param {object} options {broker, prefix, replyPrefix, protocol, keepalive, reconnectMinMs, reconnectMaxMs,
   *   username, password} and the request timings of protocol.js (REQUEST_DEFAULTS)
   * @param {object} hooks {connection({connected, everConnected, delayMs, refused}), sources(list), newPlay(),
   *   described(reply), status(status), media(payload, rendition) (rendition: {name, mime} with a new
   *   rendition's init segment at a switch), arrival(rendition, facts, now) (a fragment of the rendition the
   *   renderer is fed arrived: mp4.js messageFacts), lost(fragments) (never received, before the next media),
   *   switched({from, to, at, gapMs, waitedMs}), switchFailed({to, why}), unavailable(rendition) (the
   *   server refused it, or it failed there: no play of it will do), event(kind, detail),
   *   fail(code, message)}
   */
  constructor(options, hooks) {
    this.options = options;
    this.hooks = hooks;
    this.topics = controlTopics(options.prefix);
    this.url = null; // what is being played; null when not playing
    this.connected = false;
    this.everConnected = false;
    this.reconnects = 0; // connections lost while playing
    this.renewals = 0; // plays renewed, over every connection of this play
    this.switches = 0; // rendition switches completed, and given up, over this play
    this.switchFailures = 0;
    this.lastRendition = null; // the rendition this play fed last: a reconnect goes on with it
    this._conn = null; // {client, topics, used, connected, subscribed, described, requests}
    this._attempt = 0;
    this._reconnectTimer = null;
    this._staleTopics = []; // reply topics of connections that died: stopped on the next connection
    this._destroyed = false;
    this.refused = null; // {code, message} when the broker refused the login: no reconnect until login()
    this._guardedSources = null; // a guarded server's list: id -> source, the entries this login may read
    this._refusals = new SubscriptionRefusals(); // subscriptions the broker refused by closing (refusals.js)
    this._connect();
  }

  /**
   * Logs in as `username` with `password` (or a token) from now on: a fresh connection with these CONNECT
   * credentials (an empty user name: anonymous). A play in progress goes on over it.
   */
  login({ username = "", password = "" } = {}) {
    if (this._destroyed) return;
    this.options = { ...this.options, username, password };
    this.refused = null;
    this._attempt = 0;
    this._reconnectNow();
  }

  /** The reply topic of the current play, or null. */
  get replyTopic() {
    return this._conn?.used ? this._conn.topics.media : null;
  }

  /** Plays `url`: describe at once on a fresh connection (the hooks then get described(reply)). */
  play(url) {
    if (this._destroyed) return;
    if (this.url) this._sendStop();
    this.url = url;
    this.reconnects = 0;
    this.renewals = 0;
    this.switches = 0;
    this.switchFailures = 0;
    this.lastRendition = null;
    const conn = this._conn;
    if (conn && !conn.used) {
      // An unused connection: its reply topic and last will are fresh. Play now, or once it is subscribed.
      if (conn.subscribed) this._startPlay(conn);
    } else {
      this._reconnectNow(); // a fresh connection: a fresh reply topic and a last will naming it
    }
  }

  /**
   * The Player accepted the describe reply: send the play (repeated until answered, then renewed). With a
   * server that names the stream's topics (protocol version 2) the stream topic is subscribed first: a broker
   * handles a client's SUBSCRIBE before its later PUBLISH, so no live fragment after the play is missed. With
   * renditions, `rendition` is the one to start with (default: the first listed, `main`).
   */
  acceptDescribe(rendition = null) {
    const conn = this._conn;
    if (!conn?.requests) return;
    if (!conn.describedStream) {
      this._apply(conn, conn.requests.play(performance.now()));
      return;
    }
    const r = conn.renditions ? (conn.renditions.find((x) => x.name === rendition) ?? conn.renditions[0]) : null;
    const name = r ? r.name : MAIN;
    const topic = r ? r.media : conn.describedStream;
    conn.requested = conn.playing = name;
    if (r) this.lastRendition = name;
    this._follow(conn, name, topic);
    this._subscribe(conn, topic, topic, (err) => {
      if (conn !== this._conn || !this.url) return;
      if (err) {
        this.hooks.fail("subscribe_failed", `cannot subscribe to the stream's topic ${topic}: ${err.message}`);
        return;
      }
      this._apply(conn, conn.requests.play(performance.now()));
    });
  }

  /** The renditions of the current play's describe reply (protocol.js parseRenditions), or null. */
  get renditions() {
    return this._conn?.renditions ?? null;
  }

  /** The rendition the renderer is fed now, or null when the stream has no renditions. */
  get rendition() {
    const conn = this._conn;
    return conn?.renditions && conn.playing ? conn.playing : null;
  }

  /** The rendition a switch in progress goes to, or null. */
  get switching() {
    return this._conn?.switchingTo ?? null;
  }

  /**
   * Moves the play to rendition `name`: its stream topic subscribed first, then a play naming it (which moves
   * the viewer's lease there), and the hand-over of switch.js until the renderer is fed `name` (hooks.switched)
   * or the switch is given up (hooks.switchFailed: the play moves back). Returns false when there is nothing
   * to switch (no renditions, no such one, it plays already, a switch is in progress).
   * `cut`: a switch down from a link that cannot carry what plays (switch.js, switchCut).
   */
  switchRendition(name, { cut = false } = {}) {
    const conn = this._conn;
    const r = conn?.renditions?.find((x) => x.name === name);
    if (!this.url || !r || !conn.connected || conn.switchingTo || name === conn.playing || !conn.feeds.has(conn.playing)) return false;
    if (conn.unavailable.has(name)) return false;
    conn.switchingTo = name;
    this._follow(conn, name, r.media);
    this._subscribe(conn, r.media, r.media, (err) => {
      if (conn !== this._conn || !this.url || conn.switchingTo !== name) return;
      if (err) {
        this._switchOver(conn, { ok: false, why: `cannot subscribe to ${r.media}: ${err.message}` }, name);
        return;
      }
      const now = performance.now();
      // A camera's keyframes may be seconds apart (copy mode): the switch may take that long, and the
      // server goes on publishing the old rendition for three keyframe intervals (at least 4 s).
      const switchTimeoutMs = Math.max(this.options.switchTimeoutMs ?? 0, 3000 * (conn.keyframeInterval ?? 0));
      conn.handover = new Handover({ ...this.options, switchTimeoutMs, switchCut: cut, from: conn.playing, to: name, fedEnd: conn.fedEnd, now });
      if (cut) this._pause(conn, conn.playing);
      conn.requested = name;
      this._publish(this.topics.play, playRequest(this.url, conn.topics.media, 2, name));
    });
    return true;
  }

  /**
   * Version 2: media of rendition `name` from `topic` from now on, merged with its join burst by a fresh
   * merge (a rendition's sequence numbers are its own). A topic no other rendition uses is left.
   */
  _follow(conn, name, topic) {
    const old = conn.feeds.get(name);
    if (old && old.topic !== topic) this._leave(conn, name);
    conn.feeds.set(name, { name, topic, merge: new SequenceMerge(), init: null });
  }

  /**
   * A switch down that feeds `name` no more (cut): its topic is left at once, so that the link the page could
   * not keep up on carries the new rendition alone (the server goes on publishing the old one for seconds);
   * taken again if the switch is given up (_resume).
   */
  _pause(conn, name) {
    const feed = conn.feeds.get(name);
    if (!feed || topicShared(conn, feed)) return;
    conn.paused = feed.topic;
    if (conn.connected) conn.client.unsubscribe(feed.topic);
  }

  _resume(conn) {
    if (conn.paused && conn.connected) this._subscribe(conn, conn.paused, conn.paused);
    conn.paused = null;
  }

  /** Drops rendition `name`'s merge and leaves its topic (unless another rendition uses it). */
  _leave(conn, name) {
    const feed = conn.feeds.get(name);
    if (!feed) return;
    conn.feeds.delete(name);
    conn.duplicates += feed.merge.duplicates;
    if (!topicShared(conn, feed) && conn.connected) conn.client.unsubscribe(feed.topic);
  }

  /**
   * The version 2 merges' figures of the current play: {protocol, duplicates, skipped} (skipped: of the
   * rendition fed to the renderer, the fragments the gateway shed for a slow link).
   */
  delivery() {
    const conn = this._conn;
    if (!conn?.feeds.size) return { protocol: 1, duplicates: 0, skipped: 0 };
    let duplicates = conn.duplicates;
    for (const f of conn.feeds.values()) duplicates += f.merge.duplicates;
    return { protocol: 2, duplicates, skipped: conn.skipped };
  }

  /** Stops the current play (the server gets a stop); the connection stays, for the source list. */
  stop() {
    if (!this.url) return;
    this._sendStop();
    this._finish();
  }

  /** The play ended or failed: nothing more is sent for it (no stop: the server already ended it). */
  forget() {
    this._finish();
  }

  /** Closes the connection for good. */
  destroy() {
    this.stop();
    this._destroyed = true;
    clearTimeout(this._reconnectTimer);
    if (this._conn) this._conn.client.end(false);
    this._conn = null;
  }

  /** Repeats and renews requests as protocol.js decides; call it often (every 100 ms). */
  tick() {
    const conn = this._conn;
    if (!this.url || !conn || !conn.connected || !conn.requests) return;
    const now = performance.now();
    this._apply(conn, conn.requests.tick(now));
    if (conn.handover) this._handover(conn, conn.handover.tick(now));
  }

  _finish() {
    this.url = null;
    const conn = this._conn;
    conn?.requests?.finish();
    if (!conn) return;
    // The stream topics carry media for everyone: not ours to receive any more.
    for (const name of [...conn.feeds.keys()]) this._leave(conn, name);
    if (conn.inbox && conn.connected) conn.client.unsubscribe(conn.inbox.subscription);
    conn.inbox = conn.handover = conn.switchingTo = null;
  }

  _apply(conn, actions) {
    for (const a of actions) {
      if (a.fail && conn.inbox && !conn.described) {
        // The server answered (its pointer came) but nothing came where the broker guards the answers: with
        // mosquitto, which grants such a subscription and then delivers nothing, that is how a login without
        // rights to the stream looks (or, rarer, a source that gave no picture in time).
        this.hooks.fail("not_allowed", "This login may not watch this source: the server answered, but the broker let nothing of it through.");
      } else if (a.fail) {
        this.hooks.fail(a.fail.code, a.fail.message);
      } else if (a.send === "describe") {
        if (a.why !== "start") this.hooks.event("retry", `describe (${a.why})`);
        this._publish(this.topics.describe, describeRequest(this.url, conn.topics.info));
      } else if (a.send === "play") {
        if (a.why === "renew") this.renewals++;
        else if (a.why !== "start") this.hooks.event("retry", `play (${a.why})`);
        const rendition = conn.renditions ? conn.requested : null;
        this._publish(this.topics.play, playRequest(this.url, conn.topics.media, conn.feeds.size ? 2 : 1, rendition));
      }
    }
  }

  _connect() {
    if (this._destroyed) return;
    const clientId = `page_${randomHex(12)}`;
    const topics = replyTopics(this.options.replyPrefix, clientId);
    const conn = {
      topics,
      used: false,
      connected: false,
      subscribed: false,
      described: false,
      describedStream: null, // version 2: the stream topic the describe reply named
      renditions: null, // ... and its renditions (protocol.js parseRenditions), or null
      pieces: new Map(), // media topic -> Reassembler (pieces.js)
      feeds: new Map(), // version 2: rendition (MAIN without renditions) -> {name, topic, merge} subscribed
      requested: null, // the rendition the plays name: the reply topic's join bursts are its
      playing: null, // the rendition the renderer is fed
      paused: null, // a cut switch down: the old rendition's topic, left until the switch is done or given up
      switchingTo: null, // a switch in progress, and its hand-over (switch.js) once the play is sent
      handover: null,
      unavailable: new Set(), // renditions the server refused (or that failed on it) in this play
      fedEnd: null, // the media time (s) the renderer has been fed up to
      lastKeyframe: null, // ... the last keyframe fed (s), and the media time between the last two
      keyframeInterval: null,
      skipped: 0, // fragments of the rendition fed never received (shed on the way, or given up)
      duplicates: 0, // fragments that came twice, of merges dropped since
      inbox: null, // guarded server: where its answers about the stream come (protocol.js, guardedTopics)
      requests: null,
      client: null,
    };
    conn.client = mqtt.connect(this.options.broker, {
      clientId,
      protocolVersion: 4,
      clean: true,
      keepalive: this.options.keepalive,
      reconnectPeriod: 0, // reconnects are ours: each one gets a new reply topic and last will
      connectTimeout: 5000,
      ...connectCredentials(this.options),
      will: { topic: this.topics.stop, payload: JSON.stringify(stopRequest(topics.media)), qos: 0, retain: false },
    });
    conn.client.on("connect", () => this._onConnect(conn));
    conn.client.on("message", (topic, payload) => {
      if (conn === this._conn) this._onMessage(conn, topic, payload);
    });
    conn.client.on("close", () => this._onClose(conn));
    conn.client.on("error", (e) => {
      if (conn !== this._conn) return;
      const refused = loginRefusal(e);
      if (refused) this.refused = refused; // the close that follows does not reconnect
      this.hooks.event("mqtt_error", e.message);
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
    this.everConnected = true;
    this._attempt = 0;
    this.hooks.connection({ connected: true, everConnected: true, delayMs: 0 });
    this._refusals.connected();
    // The sources list and this connection's reply topics, which every login may read; a guarded server's
    // entries after them, alone, since a broker may refuse those by closing the connection (refusals.js).
    this._subscribe(conn, [this.topics.sources, conn.topics.subscription], "replies", (err) => {
      if (conn !== this._conn) return;
      if (err) {
        this.hooks.fail("subscribe_failed", `cannot subscribe: ${err.message}`);
        return;
      }
      conn.subscribed = true;
      if (!this._refusals.refused("entries")) this._subscribe(conn, sourceEntries(this.options.prefix), "entries");
      // Sent again when the server's source list arrives (it may not be subscribed yet after a broker restart).
      for (const topic of this._staleTopics) this._publish(this.topics.stop, stopRequest(topic));
      if (this.url && !conn.used) this._startPlay(conn);
    });
  }

  _onClose(conn) {
    if (conn !== this._conn) return; // one we replaced on purpose
    const wasConnected = conn.connected;
    const refused = this._refusals.closed();
    // The broker publishes our last will (a stop) when it notices the loss, unless the broker itself died;
    // then the server keeps sending to the old reply topic. Stop it ourselves once connected again.
    if (conn.used) this._staleTopics.push(conn.topics.media);
    if (this._staleTopics.length > MAX_STALE) this._staleTopics.shift();
    conn.connected = false;
    this.connected = false;
    this._conn = null;
    conn.client.end(true);
    this._refused(conn, refused);
    if (this._destroyed) return;
    if (this.refused) {
      // The same login would be refused again: wait for login() instead of knocking forever.
      this.hooks.connection({ connected: false, everConnected: this.everConnected, delayMs: null, refused: this.refused });
      return;
    }
    if (this.url && wasConnected) this.reconnects++;
    const delayMs = Math.min(this.options.reconnectMaxMs, this.options.reconnectMinMs * 2 ** this._attempt);
    this.hooks.connection({ connected: false, everConnected: this.everConnected, delayMs });
    this._attempt = Math.min(this._attempt + 1, 10);
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = setTimeout(() => this._connect(), delayMs);
  }

  /**
   * SUBSCRIBE `topics` (QoS 0) for `kind` (refusals.js: what a refusal would be of), then `done(err)`. A
   * connection that closes meanwhile answers with an error too (MQTT.js), which is no answer of the broker's.
   */
  _subscribe(conn, topics, kind, done = () => {}) {
    const token = this._refusals.sent(kind);
    conn.client.subscribe(topics, { qos: 0 }, (err) => {
      if (!err || typeof err.code === "number") this._refusals.answered(token);
      done(err);
    });
  }

  /** `conn` closed with `closed` (refusals.js) the oldest subscription in flight, or null. */
  _refused(conn, closed) {
    if (!closed) return;
    this.hooks.event("closed", `the connection closed with a subscription unanswered: ${closed.kind} (${closed.strikes} in a row)`);
    if (!closed.refused) return;
    const kind = closed.kind;
    if (kind === "entries") {
      this.hooks.event("sources", `the broker refused ${sourceEntries(this.options.prefix)} (it closed the connection): no list of this login's sources; a source's URL still plays`);
    } else if (this.url && kind === `inbox ${this.url}`) {
      this.hooks.fail("not_allowed", "This login may not watch this source: the broker closed the connection when the page subscribed to its topics.");
    }
  }

  _publish(topic, message) {
    const conn = this._conn;
    if (!conn || !conn.connected) return;
    conn.client.publish(topic, JSON.stringify(message), { qos: 0, retain: false });
  }

  _sendStop() {
    const conn = this._conn;
    if (conn && conn.used) this._publish(this.topics.stop, stopRequest(conn.topics.media));
  }

  _startPlay(conn) {
    conn.used = true;
    conn.described = false;
    conn.describedStream = null;
    conn.renditions = null;
    conn.inbox = null;
    conn.requests = new PlayRequests(this.options);
    // Media from the previous connection's play is gone with its reply topic.
    this.hooks.newPlay();
    this._apply(conn, conn.requests.start(performance.now()));
  }

  /**
   * A guarded server's pointer: its answers about the stream come under `inbox` (which the broker lets this
   * login read only if it may watch the stream). Subscribe there, then describe again: the facts come there.
   */
  _guard(conn, inbox) {
    if (conn.inbox?.subscription === inbox.subscription) return;
    if (conn.inbox) conn.client.unsubscribe(conn.inbox.subscription);
    conn.inbox = inbox;
    // Its kind is the source's: each connection's inbox is a topic of its own (the key is the reply topic's).
    this._subscribe(conn, inbox.subscription, `inbox ${this.url}`, (err) => {
      if (conn !== this._conn || !this.url || conn.inbox !== inbox) return;
      if (err?.code === 128) {
        // Brokers that check subscriptions say so at once (mosquitto checks on delivery instead).
        this.hooks.fail("not_allowed", "This login may not watch this source: the broker refused its topics.");
      } else if (err) {
        this.hooks.fail("subscribe_failed", `cannot subscribe to ${inbox.subscription}: ${err.message}`);
      } else {
        this._publish(this.topics.describe, describeRequest(this.url, conn.topics.info));
      }
    });
  }

  /** A media message of rendition `feed`, in its order: to the renderer, or to the hand-over of a switch. */
  _deliver(conn, feed, msg, now) {
    const facts = messageFacts(msg, feed.merge.init);
    if (feed.name === conn.playing && facts.kind === "fragment") this.hooks.arrival(feed.name, facts, now);
    if (conn.handover) this._handover(conn, conn.handover.push(feed.name, msg, facts, now));
    else if (feed.name === conn.playing) this._feed(conn, feed.name, msg, facts, false);
    // (Else a rendition left: what it sends in its grace period is nobody's.)
  }

  _feed(conn, name, msg, facts, init) {
    if (facts.kind === "fragment" && facts.end !== null) conn.fedEnd = facts.end;
    if (facts.kind === "fragment" && facts.keyframe && facts.start !== null) {
      const d = conn.lastKeyframe === null ? null : facts.start - conn.lastKeyframe;
      if (d !== null && d > 0 && d < 60) conn.keyframeInterval = d;
      conn.lastKeyframe = facts.start;
    }
    if (!init) {
      this.hooks.media(msg);
      return;
    }
    const mime = conn.renditions?.find((r) => r.name === name)?.mimeCodec ?? null;
    this.hooks.media(msg, { name, mime });
  }

  /** A step of the hand-over: what it lets through, then its outcome. */
  _handover(conn, step) {
    const h = conn.handover;
    for (const f of step.feed) {
      this._feed(conn, f.rendition, f.payload, f.facts, f.init);
      if (conn !== this._conn || !this.url) return;
    }
    if (step.done && conn.handover === h) this._switchOver(conn, step.done, h.to);
  }

  /** A switch to `to` ended: done (`to` plays, the old rendition is left) or given up (the play moves back). */
  _switchOver(conn, done, to) {
    const from = conn.playing;
    conn.handover = null;
    conn.switchingTo = null;
    if (done.ok) {
      conn.paused = null;
      conn.playing = to;
      this.lastRendition = to;
      this.switches++;
      this._leave(conn, from);
      this.hooks.switched({ from, to, at: done.at, gapMs: done.gapMs, waitedMs: done.waitedMs });
      return;
    }
    this.switchFailures++;
    this._resume(conn);
    if (conn.requested !== from) {
      conn.requested = from;
      this._publish(this.topics.play, playRequest(this.url, conn.topics.media, 2, from));
    }
    this._leave(conn, to);
    this.hooks.switchFailed({ to, why: done.why });
    if (done.unavailable) {
      conn.unavailable.add(to);
      this.hooks.unavailable(to);
    }
  }

  /**
   * An `error` status that concerns a rendition, not the play: the refusal of a switch's play (the viewer
   * keeps what it plays), or the failure of the rendition played (the play of it ended, main plays on).
   * Returns whether it was one, handled here.
   */
  _renditionError(conn, status) {
    if (!conn.renditions || status.state !== "error" || !RENDITION_REFUSALS.has(status.code)) return false;
    const message = status.message ?? status.code;
    const pending = conn.switchingTo;
    if (pending) {
      this._switchOver(conn, { ok: false, why: `the server refused ${pending}: ${message}`, unavailable: true }, pending);
      return true;
    }
    const main = conn.renditions[0].name;
    if (conn.playing === main || status.code !== "internal_error") return false;
    const failed = conn.playing;
    conn.unavailable.add(failed);
    this.hooks.event("rendition", `${failed} failed on the server (${message}); going on with ${main}`);
    this.hooks.unavailable(failed);
    return this.switchRendition(main);
  }

  _onMessage(conn, topic, payload) {
    const now = performance.now();
    const inbox = conn.inbox;
    const reply = topic === conn.topics.media || topic === inbox?.media;
    const feed = reply ? conn.feeds.get(conn.requested) : [...conn.feeds.values()].find((f) => f.topic === topic);
    if (reply || feed) {
      conn.requests?.message(now);
      if (!this.url) return;
      // A segment the server cut for the broker's packet limit comes whole out of its topic's pieces.
      if (!conn.pieces.has(topic)) conn.pieces.set(topic, new Reassembler());
      payload = conn.pieces.get(topic).push(payload);
      if (!payload) return;
      if (!conn.feeds.size) {
        this.hooks.media(payload); // version 1: everything on the reply topic, in order
        return;
      }
      if (!feed) return;
      if (boxType(payload) === "ftyp") {
        // The same init again (a join burst after a switch given up moved the play back): the renderer has
        // it, and the merge goes on where it was instead of starting over at the burst's old keyframe.
        if (feed.init && sameBytes(feed.init, payload)) return;
        feed.init = new Uint8Array(payload);
      }
      const skipped = feed.merge.skipped;
      const due = feed.merge.push(payload);
      if (feed.merge.skipped > skipped && feed.name === conn.playing) {
        conn.skipped += feed.merge.skipped - skipped;
        this.hooks.lost(feed.merge.skipped - skipped);
      }
      for (const msg of due) {
        this._deliver(conn, feed, msg, now);
        if (conn !== this._conn || !this.url) return; // a hook stopped the play
      }
    } else if (topic === conn.topics.status || topic === inbox?.status) {
      conn.requests?.message(now);
      const status = parseJson(payload);
      if (!this.url || !status) return;
      if (this._renditionError(conn, status)) return;
      // Another instance of a pool took the stream over: its topics, and its own sequence numbers. (A
      // rendition's `playing` names that rendition's topics, which are not a move.)
      const moved = status.state === "playing" && streamMediaTopic(status);
      const name = conn.renditions ? status.rendition ?? conn.renditions[0].name : MAIN;
      const feed = moved && conn.feeds.get(name);
      if (feed && moved !== feed.topic) {
        this.hooks.event("stream_topic", `${feed.topic} -> ${moved}`);
        this._follow(conn, name, moved);
        this._subscribe(conn, moved, moved);
      }
      this.hooks.status(status);
    } else if (topic === conn.topics.info || topic === inbox?.info) {
      if (!this.url || !conn.used || conn.described) return;
      const reply = parseJson(payload);
      const guarded = guardedTopics(reply, conn.topics);
      if (guarded) return this._guard(conn, guarded);
      // A guarded server's facts come only where the broker guards them; anything else is not its answer.
      if (inbox && topic !== inbox.info && !reply?.error) return;
      conn.described = true;
      conn.requests.described(now);
      conn.describedStream = this.options.protocol >= 2 ? streamMediaTopic(reply) : null;
      conn.renditions = conn.describedStream ? parseRenditions(reply) : null;
      this.hooks.described(reply);
    } else if (sourceEntry(this.options.prefix, topic, payload)) {
      // A guarded server's entry: the broker delivers only those of sources this login may watch.
      const { id, source } = sourceEntry(this.options.prefix, topic, payload);
      this._guardedSources ??= new Map();
      if (source) this._guardedSources.set(id, source);
      else this._guardedSources.delete(id);
      if (this._guarded) this.hooks.sources([...this._guardedSources.values()]);
    } else if (topic === this.topics.sources) {
      this._guarded = sourcesGuarded(payload);
      const list = this._guarded ? [...(this._guardedSources?.values() ?? [])] : parseSources(payload);
      this.hooks.sources(list); // empty: no server serves this broker right now
      // The server publishes this list right after it (re)subscribed: requests it may have missed go again now.
      if (!payload.length) return;
      for (const stale of this._staleTopics.splice(0)) this._publish(this.topics.stop, stopRequest(stale));
      if (this.url && conn.requests) this._apply(conn, conn.requests.serverBack(now));
    }
  }
}
