// Subscriptions a broker refuses by closing the connection. RabbitMQ 3.x (Debian 12 ships 3.10) closes an
// MQTT connection whose SUBSCRIBE its topic permissions refuse, where mosquitto accepts it and delivers
// nothing and brokers that say so answer with SUBACK's failure code (128). A page that subscribed again after
// each reconnect would knock forever, so the page keeps, per connection, its subscriptions in flight in the
// order it sent them: a broker handles a connection's packets in order, so when the connection closes, the
// oldest one still unanswered is the one it refused. A close can also be the network's, which strikes
// whatever was in flight by chance: a subscription counts as refused only after `times` closes in a row.
//
// Pure: the session (session.js) tells it what it sent, what was answered and when a connection closed.

/** The subscriptions of one session's connections, and which the broker refused by closing one. */
export class SubscriptionRefusals {
  /** `times`: closes in a row, with the same subscription the oldest in flight, that make it refused. */
  constructor(times = 2) {
    this.times = times;
    this.inFlight = []; // the current connection's unanswered subscriptions, oldest first: {kind}
    this.strikes = new Map(); // kind -> closes in a row with it the oldest in flight
  }

  /** A fresh connection: nothing of it is in flight yet. */
  connected() {
    this.inFlight = [];
  }

  /** A SUBSCRIBE of `kind` (what it is for: "entries", "inbox <topic>", a topic) went out; the token to answer. */
  sent(kind) {
    const token = { kind };
    this.inFlight.push(token);
    return token;
  }

  /** The broker answered `token`'s SUBSCRIBE (with or without an error): it did not close for it. */
  answered(token) {
    const at = this.inFlight.indexOf(token);
    if (at >= 0) this.inFlight.splice(at, 1);
    this.strikes.delete(token.kind);
  }

  /**
   * The connection closed: the oldest subscription in flight takes a strike. Returns {kind, strikes, refused
   * (that made `times` in a row)}, or null when nothing was in flight.
   */
  closed() {
    const oldest = this.inFlight[0];
    this.inFlight = [];
    if (!oldest) return null;
    const strikes = (this.strikes.get(oldest.kind) ?? 0) + 1;
    this.strikes.set(oldest.kind, strikes);
    return { kind: oldest.kind, strikes, refused: strikes >= this.times };
  }

  /** Whether `kind` counts as refused (so not worth sending on the next connection). */
  refused(kind) {
    return (this.strikes.get(kind) ?? 0) >= this.times;
  }
}
