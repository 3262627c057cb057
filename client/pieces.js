// Segments the server sent in pieces because the broker limits its packets (docs/PROTOCOL.md, "Pieces"): a
// segment's bytes in order over consecutive messages of one topic. The first piece starts with a known
// top-level box and holds every box header up to the `mdat` (or an init segment's `moov`), which give the
// segment's length; the server never lets a later piece start like a segment. Pure: messages in, whole
// segments out, one Reassembler per topic (topics are not ordered among themselves).

/** Top-level boxes a segment starts with, and those that may come before its `mdat` or `moov`. */
const STARTS = new Set(["ftyp", "styp", "prft", "moof", "sidx", "emsg"]);
const LEADING = new Set([...STARTS, "free", "skip"]);
/** A box larger than this is no box of ours (the server's own limit). */
const MAX_BOX = 256 * 1024 * 1024;

/** The box header at `at`: {type, headerLen, size}, or null when it is not all there or cannot be one. */
function header(bytes, at) {
  if (bytes.length < at + 8) return null;
  const size32 = ((bytes[at] << 24) >>> 0) + (bytes[at + 1] << 16) + (bytes[at + 2] << 8) + bytes[at + 3];
  const type = String.fromCharCode(bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]);
  if (size32 === 1) {
    if (bytes.length < at + 16) return null;
    const view = new DataView(bytes.buffer, bytes.byteOffset + at + 8, 8);
    const size = view.getUint32(0) * 2 ** 32 + view.getUint32(4);
    return size >= 16 && size <= MAX_BOX ? { type, headerLen: 16, size } : null;
  }
  return size32 >= 8 && size32 <= MAX_BOX ? { type, headerLen: 8, size: size32 } : null;
}

/** Whether a message starts a segment (a known top-level box of a size that could be real). */
export function startsSegment(bytes) {
  const h = header(bytes, 0);
  return h !== null && STARTS.has(h.type);
}

/** The length of the segment that starts `bytes`, from its boxes up to `mdat` or `moov`; null if not all there. */
export function segmentLength(bytes) {
  let at = 0;
  for (;;) {
    const h = header(bytes, at);
    if (!h) return null;
    if (h.type === "mdat" || h.type === "moov") return at + h.size;
    if (!LEADING.has(h.type)) return null;
    at += h.size;
  }
}

/** One topic's pieces back into segments. */
export class Reassembler {
  constructor() {
    this.parts = null; // pieces of the segment being put together
    this.have = 0;
    this.need = 0;
    /** Segments given up: a piece of them never came (or more came than their boxes say). */
    this.broken = 0;
    /** Messages that were neither a segment's start nor a piece of one being put together. */
    this.orphans = 0;
  }

  /** Takes the topic's next message; returns a whole segment (a Uint8Array) or null while pieces are due. */
  push(bytes) {
    if (startsSegment(bytes)) {
      if (this.parts) this.broken++;
      this.parts = null;
      const need = segmentLength(bytes);
      if (need === null) {
        this.orphans++;
        return null;
      }
      // Longer than its boxes say: a sender that does not split; left as it is.
      if (bytes.length >= need) return bytes;
      this.parts = [bytes];
      this.have = bytes.length;
      this.need = need;
      return null;
    }
    if (!this.parts) {
      this.orphans++;
      return null;
    }
    this.parts.push(bytes);
    this.have += bytes.length;
    if (this.have < this.need) return null;
    const parts = this.parts;
    this.parts = null;
    if (this.have > this.need) {
      this.broken++;
      return null;
    }
    const whole = new Uint8Array(this.need);
    let at = 0;
    for (const p of parts) {
      whole.set(p, at);
      at += p.length;
    }
    return whole;
  }
}
