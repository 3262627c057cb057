// The hand-over from one rendition to another, as a pure state machine: while the page moves from rendition A
// to rendition B, messages of both arrive (the server goes on publishing A for a grace period after the play
// that moved the viewer to B), and this decides what goes to the renderer so that the picture goes from A to B
// at a keyframe of B with no gap and no overlap in media time. The facts of each message in (mp4.js
// messageFacts) with `now`, the messages to feed out. No MQTT, no clock: session.js applies it,
// tests/e2e/switch.test.js drives it with tables.
//
// Every rendition of a stream has the same media timeline and its keyframes at the same media times,
// produced at the same moment (docs/PROTOCOL.md, "Renditions"). So at a keyframe of B at media time T, A is
// fed up to T (exclusive), then B's init segment and B from T on, and nothing more of A:
//
// - Until then A goes on being fed as it comes.
// - A keyframe of A at T, while B has not got past T: held, with what of A comes behind it, for at most
//   holdMs (the renderer's buffer pays for the wait): B's keyframe at T is about to come. It does, and A's is
//   dropped; or it does not (B is late, or passed T without a keyframe) and A's goes out.
// - A keyframe of B at T, A fed up to T: the switch. A fed past T: too late, B's next keyframe. A not yet at
//   T (B came first): B waits, at most holdMs, for A's fragments up to T; A's first fragment at or after T
//   (those before it were lost on the way) switches at once, and so does the end of the wait.
// - No switch within timeoutMs: the hand-over gives up and says why (session.js then moves back to A).

/** Every setting of the hand-over, with its default (the Player's options of the same names). */
export const SWITCH_DEFAULTS = Object.freeze({
  /** Longest wait for the other rendition's fragment of the same media time, ms: an A keyframe held for B's,
   * or B's keyframe held for A's last fragments before it. */
  switchHoldMs: 200,
  /** A switch that has not happened after this long is given up, ms (session.js makes it three of the
   * stream's keyframe intervals when that is longer). The server publishes the rendition left for 4 s, or
   * three keyframe intervals, after the play that moved the viewer. */
  switchTimeoutMs: 5000,
  /** A switch down from a rendition the link cannot carry: A is fed no more, and B's first keyframe after
   * what A showed switches (the picture waits for it, as it does through the gateway's shedding of A). A
   * seamless hand-over failed over a slow link in half the runs, each of B's keyframes coming after A had
   * been shown past it: they come behind A's queued fragments, and the gateway sheds both. */
  switchCut: false,
});

/** Media times closer than this are the same instant, s (renditions may have other timescales). */
const EPSILON = 0.002;

export class Handover {
  /**
   * @param {object} o {from, to: rendition names; fedEnd: the media time (s) A has been fed up to, null if
   *   unknown; now (ms); switchHoldMs, switchTimeoutMs (SWITCH_DEFAULTS)}
   */
  constructor({ from, to, fedEnd = null, now, ...options }) {
    this.from = from;
    this.to = to;
    this.options = { ...SWITCH_DEFAULTS };
    for (const [k, v] of Object.entries(options)) if (v !== undefined && k in SWITCH_DEFAULTS) this.options[k] = v;
    this.startedAt = now;
    this.fedEnd = fedEnd;
    this.cutA = this.options.switchCut; // A is fed no more
    // {at: s, since: ms, messages: [{payload, facts}]}: an A keyframe (and what followed) held for B's, and
    // B's keyframe (and what followed) held for A's last fragments before it
    this.aHold = null;
    this.bHold = null;
    this.bInit = null; // B's latest init segment: {payload, facts}
    this.bNewest = null; // the end (s) of the newest B fragment seen
    this.done = null; // {ok: true, at, gapMs, waitedMs} | {ok: false, why}
    this.seen = { inits: 0, fragments: 0, keyframes: 0, missed: 0 }; // of B, for the reason of a failure
  }

  /**
   * One message of rendition `name` (in its own order: after its SequenceMerge), with `facts` of it
   * (messageFacts). Returns {feed: [{rendition, payload, facts, init}], done}: what goes to the renderer now,
   * in order (`init`: B's init segment, which the renderer takes as a new rendition's), and the outcome once
   * there is one (then nothing more is taken: the caller feeds B and drops A from there on).
   */
  push(name, payload, facts, now) {
    if (this.done) return this._step([]);
    if (name === this.from) return this._fromA(payload, facts, now);
    if (name === this.to) return this._fromB(payload, facts, now);
    return this._step([]); // a rendition left before: nothing of it is shown any more
  }

  /** The hold and give-up deadlines at `now`; call it often (every 100 ms). */
  tick(now) {
    if (this.done) return this._step([]);
    const feed = [];
    if (this.aHold && now - this.aHold.since >= this.options.switchHoldMs) feed.push(...this._releaseA());
    if (this.bHold && now - this.bHold.since >= this.options.switchHoldMs) return this._switch(feed, now);
    if (now - this.startedAt >= this.options.switchTimeoutMs) {
      feed.push(...this._releaseA());
      this.done = { ok: false, why: this._whyNot(now) };
    }
    return this._step(feed);
  }

  _step(feed) {
    return { feed, done: this.done };
  }

  _a(payload, facts) {
    if (facts.kind === "fragment" && facts.end !== null) this.fedEnd = Math.max(this.fedEnd ?? -Infinity, facts.end);
    return { rendition: this.from, payload, facts, init: false };
  }

  _fromA(payload, facts, now) {
    if (this.cutA) return this._step([]);
    if (facts.kind === "init" || facts.start === null) {
      // A new init of A (its source restarted) or a fragment without times: nothing to hand over at.
      return this._step([...this._releaseA(), this._a(payload, facts)]);
    }
    if (this.bHold) {
      // B waits at T for A. A at or past T: what was missing of A before T is not coming; switch.
      if (facts.start >= this.bHold.at - EPSILON) return this._switch([], now);
      const feed = [this._a(payload, facts)];
      if (this.fedEnd >= this.bHold.at - EPSILON) return this._switch(feed, now);
      return this._step(feed);
    }
    if (this.aHold) {
      this.aHold.messages.push({ payload, facts });
      return this._step([]);
    }
    if (facts.keyframe && (this.bNewest === null || this.bNewest <= facts.start + EPSILON)) {
      // B has not got past this keyframe's time: its own keyframe there is about to come.
      this.aHold = { at: facts.start, since: now, messages: [{ payload, facts }] };
      return this._step([]);
    }
    return this._step([this._a(payload, facts)]);
  }

  /** The held A messages, to the renderer. */
  _releaseA() {
    if (!this.aHold) return [];
    const out = this.aHold.messages.map(({ payload, facts }) => this._a(payload, facts));
    this.aHold = null;
    return out;
  }

  _fromB(payload, facts, now) {
    if (facts.kind === "init") {
      // Fragments held of an earlier init of B cannot follow this one.
      this.bInit = { payload, facts };
      this.bHold = null;
      this.seen.inits++;
      return this._step([]);
    }
    if (!this.bInit || facts.start === null) return this._step([]);
    this.seen.fragments++;
    this.bNewest = Math.max(this.bNewest ?? -Infinity, facts.end ?? facts.start);
    if (this.bHold) {
      this.bHold.messages.push({ payload, facts });
      return this._step([]);
    }
    const feed = [];
    if (!facts.keyframe) {
      // B got to the held A keyframe's time without a keyframe of its own: A's goes on.
      if (this.aHold && facts.start >= this.aHold.at - EPSILON) feed.push(...this._releaseA());
      return this._step(feed);
    }
    this.seen.keyframes++;
    const at = facts.start;
    if (this.aHold) {
      if (Math.abs(at - this.aHold.at) <= EPSILON) {
        this.aHold = null; // A up to T was fed; A's keyframe at T is B's to show
        return this._switch([], now, { at, payload, facts });
      }
      if (at > this.aHold.at) {
        feed.push(...this._releaseA());
      } else if (this.fedEnd !== null && this.fedEnd > at + EPSILON) {
        this.seen.missed++; // an old keyframe of B (its burst's): A was shown past it
        return this._step(feed);
      } else {
        // B's keyframe is before A's held one, and A was fed only up to before it: A's fragments between
        // were lost on the way, the held ones are past T. Switch here.
        this.aHold = null;
        return this._switch(feed, now, { at, payload, facts });
      }
    }
    if (this.fedEnd === null) return this._switch(feed, now, { at, payload, facts });
    if (this.fedEnd > at + EPSILON) {
      this.seen.missed++;
      return this._step(feed);
    }
    // (Cut: A's fragments before B's keyframe are not coming, nothing to wait for.)
    if (this.cutA || this.fedEnd >= at - EPSILON) return this._switch(feed, now, { at, payload, facts });
    this.bHold = { at, since: now, messages: [{ payload, facts }] };
    return this._step(feed);
  }

  /** The switch: `feed` (the last of A), then B's init and B from its keyframe on. */
  _switch(feed, now, keyframe = null) {
    const at = keyframe ? keyframe.at : this.bHold.at;
    const messages = keyframe ? [keyframe] : this.bHold.messages;
    this.bHold = null;
    const gap = this.fedEnd === null ? 0 : Math.max(0, at - this.fedEnd);
    this.done = { ok: true, at, gapMs: Math.round(gap * 1000), waitedMs: now - this.startedAt };
    feed.push({ rendition: this.to, ...this.bInit, init: true });
    for (const { payload, facts } of messages) feed.push({ rendition: this.to, payload, facts, init: false });
    return this._step(feed);
  }

  _whyNot(now) {
    const s = ((now - this.startedAt) / 1000).toFixed(1);
    const { inits, fragments, keyframes, missed } = this.seen;
    if (!inits) return `no init segment of ${this.to} came in ${s} s`;
    if (!fragments) return `${this.to} sent its init segment but no fragments in ${s} s`;
    if (!keyframes) return `${fragments} fragments of ${this.to} in ${s} s, none a keyframe`;
    if (missed === 1 && keyframes === 1) {
      return `the one keyframe of ${this.to} that came (its join burst's) was older than what ${this.from} had shown, and no later one came in ${s} s`;
    }
    if (missed === keyframes) {
      return `each of the ${keyframes} keyframes of ${this.to} came after ${this.from} had been shown past its time (their keyframes are not at the same media times?)`;
    }
    return `no keyframe of ${this.to} met ${this.from}'s media time in ${s} s`;
  }
}
