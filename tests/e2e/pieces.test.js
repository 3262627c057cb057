// Tables of the page's reassembly of segments sent in pieces (client/pieces.js, docs/PROTOCOL.md "Pieces"):
// synthetic segments, then the server's real fMP4 (`mqtt-video probe --out`) cut as the server cuts it.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Reassembler, segmentLength, startsSegment } from "../../client/pieces.js";
import { probeOutput } from "./support.js";

function boxed(type, payload) {
  const b = new Uint8Array(payload.length + 8);
  new DataView(b.buffer).setUint32(0, b.length);
  for (let i = 0; i < 4; i++) b[4 + i] = type.charCodeAt(i);
  b.set(payload, 8);
  return b;
}
const concat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};
/** Bytes that look like no box (xorshift). */
function noise(len, seed) {
  let x = (seed * 2654435761) >>> 0 || 1;
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}
const fragment = (media) => concat(boxed("prft", new Uint8Array(24)), boxed("moof", new Uint8Array(292).fill(7)), boxed("mdat", media));

/** The server's cut (crates/wire/src/pieces.rs): the headers whole in the first piece, no later piece starting like a segment. */
function cut(segment, max) {
  const pieces = [];
  let start = 0;
  let end = Math.min(segment.length, Math.max(max, segmentHeaders(segment)));
  for (;;) {
    while (end < segment.length && startsSegment(segment.subarray(end))) end++;
    pieces.push(segment.subarray(start, end));
    if (end === segment.length) return pieces;
    start = end;
    end = Math.min(segment.length, start + max);
  }
}
function segmentHeaders(segment) {
  // Up to the mdat's or moov's header: its start plus 8.
  let at = 0;
  while (at + 8 <= segment.length) {
    const type = String.fromCharCode(...segment.subarray(at + 4, at + 8));
    if (type === "mdat" || type === "moov") return at + 8;
    at += new DataView(segment.buffer, segment.byteOffset + at, 4).getUint32(0);
  }
  return segment.length;
}

function reassemble(messages) {
  const r = new Reassembler();
  const whole = [];
  for (const m of messages) {
    const s = r.push(m);
    if (s) whole.push(s);
  }
  return { whole, broken: r.broken, orphans: r.orphans };
}

test("a segment that fits is passed as it came", () => {
  const f = fragment(noise(1000, 1));
  assert.equal(segmentLength(f), f.length);
  const { whole } = reassemble([f]);
  assert.equal(whole.length, 1);
  assert.equal(whole[0], f, "the same array, not a copy");
});

test("a 579 KB keyframe in 128 KB pieces comes back whole, and a lost piece costs only its segment", () => {
  const a = fragment(noise(579 * 1024, 2));
  const b = fragment(noise(3000, 3));
  const pa = cut(a, 131000);
  assert.equal(pa.length, 5);
  assert.ok(startsSegment(pa[0]) && pa.slice(1).every((p) => !startsSegment(p)));
  let r = reassemble([...pa, b]);
  assert.deepEqual(r.whole, [a, b]);
  assert.equal(r.broken, 0);
  // A middle piece lost: b still comes out, a is counted broken.
  r = reassemble([...pa.filter((_, i) => i !== 2), b]);
  assert.deepEqual(r.whole, [b]);
  assert.equal(r.broken, 1);
  // The first piece lost: the rest are orphans.
  r = reassemble([...pa.slice(1), b]);
  assert.deepEqual(r.whole, [b]);
  assert.equal(r.orphans, 4);
});

test("more bytes than the boxes say is a broken segment, not a segment", () => {
  const f = fragment(noise(2000, 4));
  const r = new Reassembler();
  assert.equal(r.push(f.subarray(0, 1000)), null);
  assert.equal(r.push(noise(1500, 5)), null);
  assert.equal(r.broken, 1);
  assert.deepEqual(r.push(f), f);
});

test("an init segment is told by its moov, and a first piece without its length is dropped", () => {
  const init = concat(boxed("ftyp", new Uint8Array(8)), boxed("moov", noise(3000, 6)));
  assert.deepEqual(reassemble(cut(init, 1000)).whole, [init]);
  const r = new Reassembler();
  assert.equal(r.push(boxed("moof", new Uint8Array(100)).subarray(0, 50)), null);
  assert.equal(r.orphans, 1);
});

test("the server's own fragments, cut at every size, come back byte for byte", { timeout: 60_000 }, (t) => {
  const out = probeOutput(2);
  if (!out) return t.skip("no server binary (cargo build)");
  const messages = [out.init, ...out.fragments];
  for (const max of [64, 1000, 4096, 65536]) {
    const { whole, broken, orphans } = reassemble(messages.flatMap((m) => cut(m, max)));
    assert.equal(whole.length, messages.length, `max ${max}`);
    whole.forEach((w, i) => assert.deepEqual(w, messages[i], `max ${max}, message ${i}`));
    assert.equal(broken + orphans, 0);
  }
});
