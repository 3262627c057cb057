// Protocol version 2 (docs/PROTOCOL.md, "Shared delivery"): a viewer's media comes on two topics, its join
// burst on its reply topic and the stream's live fragments on the stream topic, which overlap and interleave.
// This merges them back into one sequence by the fragments' `mfhd` sequence numbers, which the server counts
// up by one for the stream's whole life. Pure: messages in, messages out in order; no MQTT, no clock.
//
// - It starts at the first keyframe it can read (the burst's first fragment); fragments that overtook it wait.
// - A fragment it has had (on both topics across the hand-over) is dropped.
// - A fragment that comes early waits for the ones before it, but a waiting keyframe is taken at once: what is
//   missing before it was shed by the gateway for a slow link, which sheds up to a keyframe, so the page goes
//   on from a whole GOP instead of waiting for fragments that are not coming.
// - A missing fragment is given up after MAX_OUT_OF_ORDER later ones.
// - Init segments pass at once (the fragments waiting before one are let out first, being older).
//
// Whether a fragment starts with a keyframe needs the init segment (its video track id, `trex` defaults), and
// live fragments can overtake the burst's init: those are classified again once an init has passed.

import { boxType, parseInit, parseMessage } from "./mp4.js";

/** Fragments held back waiting for a missing one before it is given up (1 s at 30 fps). */
export const MAX_OUT_OF_ORDER = 30;
/** Fragments kept while no init segment has come (the rest, oldest first, are dropped). */
const MAX_BEFORE_INIT = 4 * MAX_OUT_OF_ORDER;

/**
 * What a media message is, from the bytes and the last init segment passed (null before one):
 * {kind: "init", init} for an init segment (init: parsed, or null when it cannot be read); else
 * {kind: "fragment", seq, keyframe}: its sequence number (null when it has none) and whether its video
 * starts with a sync sample (null when that cannot be known yet).
 */
export function classify(bytes, init) {
  try {
    if (boxType(bytes) === "ftyp") return { kind: "init", init: parseInit(bytes) };
    const msg = parseMessage(bytes, init);
    const seq = msg.fragment?.sequence ?? null;
    if (!init || !msg.fragment) return { kind: "fragment", seq, keyframe: null };
    const video = msg.fragment.trafs.find((t) => t.trackId === init.videoTrackId && t.sampleCount > 0);
    return { kind: "fragment", seq, keyframe: !!video?.firstSampleSync };
  } catch {
    // Passed on as it is: the renderer says what is wrong with it.
    return boxType(bytes) === "ftyp" ? { kind: "init", init: null } : { kind: "fragment", seq: null, keyframe: null };
  }
}

export class SequenceMerge {
  /** @param {(bytes: Uint8Array, init: object|null) => object} classifier `classify`, or a test's own. */
  constructor(classifier = classify) {
    this.classifier = classifier;
    this.init = null;
    this.next = null; // the sequence number due next; null until started
    this.waiting = new Map(); // seq -> {bytes, keyframe}
    this.duplicates = 0; // fragments that came twice
    this.skipped = 0; // fragments never received, stepped over (shed on the way, or given up)
  }

  /** Takes one media message; returns the messages that are now due, in order. */
  push(payload) {
    const c = this.classifier(payload, this.init);
    if (c.kind === "init") {
      const out = this._flush();
      out.push(payload);
      this.init = c.init ?? this.init;
      this.next = null; // what follows a new init starts at a keyframe
      for (const w of this.waiting.values()) if (w.keyframe === null) w.keyframe = this.classifier(w.bytes, this.init).keyframe ?? false;
      out.push(...this._drain());
      return out;
    }
    if (c.seq === null) return [payload];
    if ((this.next !== null && c.seq < this.next) || this.waiting.has(c.seq)) {
      this.duplicates++;
      return [];
    }
    // A copy: the MQTT library may reuse the memory of a payload once its handler returns.
    this.waiting.set(c.seq, { bytes: new Uint8Array(payload), keyframe: c.keyframe });
    if (!this.init && this.waiting.size > MAX_BEFORE_INIT) this.waiting.delete(Math.min(...this.waiting.keys()));
    return this._drain();
  }

  _sorted() {
    return [...this.waiting.keys()].sort((a, b) => a - b);
  }

  /** Everything waiting, in order (before an init segment: those fragments are older than it). */
  _flush() {
    if (this.next === null) return [];
    const out = this._sorted().map((seq) => this.waiting.get(seq).bytes);
    this.waiting.clear();
    return out;
  }

  _drain() {
    if (this.next === null) {
      if (!this.init) return [];
      const seqs = this._sorted();
      const key = seqs.find((s) => this.waiting.get(s).keyframe);
      if (key !== undefined) this.next = key;
      else if (this.waiting.size > MAX_OUT_OF_ORDER) this.next = seqs[0];
      else return [];
      for (const s of seqs) if (s < this.next) this.waiting.delete(s);
    }
    const out = [];
    for (;;) {
      const here = this.waiting.get(this.next);
      if (here) {
        this.waiting.delete(this.next);
        out.push(here.bytes);
        this.next++;
        continue;
      }
      if (!this.waiting.size) break;
      const first = this._sorted()[0];
      if (this.waiting.get(first).keyframe || this.waiting.size > MAX_OUT_OF_ORDER) {
        this.skipped += first - this.next;
        this.next = first;
        continue;
      }
      break;
    }
    return out;
  }
}
