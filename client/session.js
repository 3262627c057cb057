// One player's MQTT session: the connection to the broker (MQTT.js over WebSocket) with a last will that stops
// its play, reconnects with backoff, the reply topics of each play, and the requests of protocol.js sent,
// repeated and renewed. It hands what arrives to its hooks and knows nothing about how media is played.
//
// One connection per player: a connection has one last will, and it must name that player's reply topic.
// Each play on a connection that already played gets a fresh connection, hence a fresh reply topic and will.

import mqtt from "./node_modules/mqtt/dist/mqtt.esm.js";
import {
  connectCredentials,
  controlTopics,
  describeRequest,
  guardedTopics,
  loginRefusal,
  parseJson,
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

/** Reply topics of dead connections remembered to stop once connected again. */
const MAX_STALE = 8;

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
   *   described(reply), status(status), media(payload), lost(fragments) (never received, before the next
   *   media), event(kind, detail), fail(code, message)}
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
    this._conn = null; // {client, topics, used, connected, subscribed, described, requests}
    this._attempt = 0;
    this._reconnectTimer = null;
    this._staleTopics = []; // reply topics of connections that died: stopped on the next connection
    this._destroyed = false;
    this.refused = null; // {code, message} when the broker refused the login: no reconnect until login()
    this._guardedSources = null; // a guarded server's list: id -> source, the entries this login may read
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
   * handles a client's SUBSCRIBE before its later PUBLISH, so no live fragment after the play is missed.
   */
  acceptDescribe() {
    const conn = this._conn;
    if (!conn?.requests) return;
    const topic = conn.describedStream;
    if (!topic) {
      this._apply(conn, conn.requests.play(performance.now()));
      return;
    }
    this._follow(conn, topic);
    conn.client.subscribe(topic, { qos: 0 }, (err) => {
      if (conn !== this._conn || !this.url) return;
      if (err) {
        this.hooks.fail("subscribe_failed", `cannot subscribe to the stream's topic ${topic}: ${err.message}`);
        return;
      }
      this._apply(conn, conn.requests.play(performance.now()));
    });
  }

  /** Version 2: media of `topic` from now on, merged with the join burst by a fresh merge. */
  _follow(conn, topic) {
    if (conn.stream && conn.stream !== topic) conn.client.unsubscribe(conn.stream);
    conn.stream = topic;
    conn.merge = new SequenceMerge();
  }

  /** The version 2 merge's figures of the current play: {protocol, duplicates, skipped}. */
  delivery() {
    const conn = this._conn;
    if (!conn?.merge) return { protocol: 1, duplicates: 0, skipped: 0 };
    return { protocol: 2, duplicates: conn.merge.duplicates, skipped: conn.merge.skipped };
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
    this._apply(conn, conn.requests.tick(performance.now()));
  }

  _finish() {
    this.url = null;
    const conn = this._conn;
    conn?.requests?.finish();
    // The stream topic carries media for everyone: not ours to receive any more.
    if (conn?.stream && conn.connected) conn.client.unsubscribe(conn.stream);
    if (conn?.inbox && conn.connected) conn.client.unsubscribe(conn.inbox.subscription);
    if (conn) conn.stream = conn.merge = conn.inbox = null;
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
        this._publish(this.topics.play, playRequest(this.url, conn.topics.media, conn.stream ? 2 : 1));
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
      stream: null, // ... and the one subscribed, with the merge of it and the reply topic
      merge: null,
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
    const lists = [this.topics.sources, sourceEntries(this.options.prefix)];
    conn.client.subscribe([...lists, conn.topics.subscription], { qos: 0 }, (err) => {
      if (conn !== this._conn) return;
      if (err) {
        this.hooks.fail("subscribe_failed", `cannot subscribe: ${err.message}`);
        return;
      }
      conn.subscribed = true;
      // Sent again when the server's source list arrives (it may not be subscribed yet after a broker restart).
      for (const topic of this._staleTopics) this._publish(this.topics.stop, stopRequest(topic));
      if (this.url && !conn.used) this._startPlay(conn);
    });
  }

  _onClose(conn) {
    if (conn !== this._conn) return; // one we replaced on purpose
    const wasConnected = conn.connected;
    // The broker publishes our last will (a stop) when it notices the loss, unless the broker itself died;
    // then the server keeps sending to the old reply topic. Stop it ourselves once connected again.
    if (conn.used) this._staleTopics.push(conn.topics.media);
    if (this._staleTopics.length > MAX_STALE) this._staleTopics.shift();
    conn.connected = false;
    this.connected = false;
    this._conn = null;
    conn.client.end(true);
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
    conn.client.subscribe(inbox.subscription, { qos: 0 }, (err) => {
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

  _onMessage(conn, topic, payload) {
    const now = performance.now();
    const inbox = conn.inbox;
    if (topic === conn.topics.media || topic === inbox?.media || (conn.stream && topic === conn.stream)) {
      conn.requests?.message(now);
      if (!this.url) return;
      if (!conn.merge) this.hooks.media(payload);
      else {
        const skipped = conn.merge.skipped;
        const due = conn.merge.push(payload);
        if (conn.merge.skipped > skipped) this.hooks.lost(conn.merge.skipped - skipped);
        for (const msg of due) this.hooks.media(msg);
      }
    } else if (topic === conn.topics.status || topic === inbox?.status) {
      conn.requests?.message(now);
      const status = parseJson(payload);
      if (!this.url || !status) return;
      // Another instance of a pool took the stream over: its topics, and its own sequence numbers.
      const moved = status.state === "playing" && conn.stream && streamMediaTopic(status);
      if (moved && moved !== conn.stream) {
        this.hooks.event("stream_topic", `${conn.stream} -> ${moved}`);
        this._follow(conn, moved);
        conn.client.subscribe(moved, { qos: 0 });
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
