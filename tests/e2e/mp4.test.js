// Unit tests of the page's box parser (client/mp4.js): synthetic boxes for every flag path, and the real
// output of the server's muxer (`mqtt-video probe --out`) when the binary is built.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { boxes, boxType, NTP_UNIX_OFFSET_SECS, parseFragment, parseInit, parsePrft } from "../../client/mp4.js";
import { REPO, serverBinary } from "./support.js";

// ----- tiny box builders ----------------------------------------------------------------------------------

function u32(n) {
  return [(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255];
}
function u64(n) {
  const big = BigInt(n);
  return [...u32(Number(big >> 32n)), ...u32(Number(big & 0xffffffffn))];
}
function box(type, ...payload) {
  const body = payload.flat();
  return [...u32(8 + body.length), ...[...type].map((c) => c.charCodeAt(0)), ...body];
}
function fullbox(type, version, flags, ...payload) {
  return box(type, [version, (flags >> 16) & 255, (flags >> 8) & 255, flags & 255], ...payload);
}
function bytes(...parts) {
  return Uint8Array.from(parts.flat());
}

const NON_SYNC = 0x00010000;
const SYNC = 0x02000000; // sample_depends_on = 2 (an I-frame), sync

function trak(id, handler, timescale, tkhdVersion = 0) {
  const times = tkhdVersion === 1 ? [...u64(0), ...u64(0)] : [...u32(0), ...u32(0)];
  return box(
    "trak",
    fullbox("tkhd", tkhdVersion, 3, times, u32(id), u32(0), u32(0)),
    box(
      "mdia",
      fullbox("mdhd", 0, 0, u32(0), u32(0), u32(timescale), u32(0), u32(0)),
      fullbox("hdlr", 0, 0, u32(0), [...handler].map((c) => c.charCodeAt(0)), u32(0), u32(0), u32(0), [0]),
    ),
  );
}
function trex(id, flags) {
  return fullbox("trex", 0, 0, u32(id), u32(1), u32(0), u32(0), u32(flags));
}
function init({ videoTrex = NON_SYNC } = {}) {
  return bytes(
    box("ftyp", [..."isom"].map((c) => c.charCodeAt(0)), u32(512)),
    box(
      "moov",
      fullbox("mvhd", 0, 0, new Array(96).fill(0)),
      trak(1, "vide", 90000),
      trak(2, "soun", 48000, 1),
      box("mvex", trex(1, videoTrex), trex(2, SYNC)),
    ),
  );
}
function prft(trackId, wallMs, mediaTime) {
  const secs = Math.floor(wallMs / 1000) + NTP_UNIX_OFFSET_SECS;
  const frac = Math.round(((wallMs % 1000) / 1000) * 2 ** 32);
  return fullbox("prft", 1, 0, u32(trackId), u32(secs), u32(frac), u64(mediaTime));
}
function traf(id, { tfhdFlags = 0, tfhdDefault, trunFlags = 0, first, samples = [], tfdt = 0 }) {
  const tfhd = [...u32(id)];
  if (tfhdFlags & 0x20) tfhd.push(...u32(tfhdDefault));
  const trun = [...u32(samples.length || 1)];
  if (trunFlags & 0x1) trun.push(...u32(0));
  if (trunFlags & 0x4) trun.push(...u32(first));
  for (const s of samples) {
    if (trunFlags & 0x100) trun.push(...u32(s.duration ?? 3000));
    if (trunFlags & 0x200) trun.push(...u32(s.size ?? 100));
    if (trunFlags & 0x400) trun.push(...u32(s.flags));
  }
  return box("traf", fullbox("tfhd", 0, tfhdFlags, tfhd), fullbox("tfdt", 1, 0, u64(tfdt)), fullbox("trun", 0, trunFlags, trun));
}
function fragment(...trafs) {
  return bytes(box("moof", fullbox("mfhd", 0, 0, u32(1)), ...trafs), box("mdat", [1, 2, 3]));
}

// ----- synthetic ------------------------------------------------------------------------------------------

test("parseInit finds tracks, handlers, timescales and trex defaults", () => {
  const info = parseInit(init());
  assert.equal(info.videoTrackId, 1);
  assert.equal(info.audioTrackId, 2);
  assert.equal(info.tracks.get(1).timescale, 90000);
  assert.equal(info.tracks.get(2).timescale, 48000);
  assert.equal(info.tracks.get(2).handler, "soun");
  assert.equal(info.tracks.get(1).trex.defaultSampleFlags, NON_SYNC);
  assert.equal(parseInit(bytes(box("ftyp", u32(0)))), null);
});

test("parsePrft reads the NTP wall clock and the media time", () => {
  const wall = Date.UTC(2026, 0, 2, 3, 4, 5, 678);
  const p = parsePrft(bytes(prft(1, wall, 2 ** 33 + 5)));
  assert.equal(p.size, 32);
  assert.equal(p.trackId, 1);
  assert.ok(Math.abs(p.wallMs - wall) < 0.01, `${p.wallMs} vs ${wall}`);
  assert.equal(p.mediaTime, 2 ** 33 + 5);
  assert.equal(parsePrft(bytes(box("moof"))), null);
});

test("sync detection follows first_sample_flags, sample flags, tfhd and trex defaults", () => {
  const info = parseInit(init());
  const first = (frag) => parseFragment(frag, info).trafs.find((t) => t.trackId === 1).firstSampleSync;
  // first_sample_flags wins over everything
  assert.equal(first(fragment(traf(1, { trunFlags: 0x5, first: SYNC, samples: [{}] }))), true);
  assert.equal(first(fragment(traf(1, { trunFlags: 0x5, first: NON_SYNC, tfhdFlags: 0x20, tfhdDefault: SYNC }))), false);
  // per-sample flags, after duration and size
  assert.equal(first(fragment(traf(1, { trunFlags: 0x701, samples: [{ flags: SYNC }, { flags: NON_SYNC }] }))), true);
  assert.equal(first(fragment(traf(1, { trunFlags: 0x400, samples: [{ flags: NON_SYNC }] }))), false);
  // tfhd default_sample_flags
  assert.equal(first(fragment(traf(1, { tfhdFlags: 0x20, tfhdDefault: SYNC, samples: [{}] }))), true);
  // trex default (NON_SYNC for video in this init)
  assert.equal(first(fragment(traf(1, { samples: [{}] }))), false);
  const syncTrex = parseInit(init({ videoTrex: 0 }));
  assert.equal(parseFragment(fragment(traf(1, { samples: [{}] })), syncTrex).trafs[0].firstSampleSync, true);
});

test("parseFragment reports every traf with its tfdt and sample count", () => {
  const info = parseInit(init());
  const frag = fragment(
    traf(2, { trunFlags: 0x300, samples: [{}, {}, {}], tfdt: 96000 }),
    traf(1, { trunFlags: 0x4, first: SYNC, tfdt: 180000 }),
  );
  const { trafs } = parseFragment(frag, info);
  assert.deepEqual(
    trafs.map((t) => [t.trackId, t.baseMediaDecodeTime, t.sampleCount, t.firstSampleSync]),
    [
      [2, 96000, 3, true],
      [1, 180000, 1, true],
    ],
  );
  assert.equal(parseFragment(bytes(box("mdat", [0])), info), null);
});

test("boxes stops at truncated or malformed boxes and handles largesize", () => {
  const good = box("free", [1, 2]);
  assert.deepEqual(
    boxes(bytes(good, u32(100), [..."mdat"].map((c) => c.charCodeAt(0)))).map((b) => b.type),
    ["free"],
  );
  const large = bytes([0, 0, 0, 1], [..."mdat"].map((c) => c.charCodeAt(0)), u64(20), [9, 9, 9, 9]);
  assert.deepEqual(boxes(large).map((b) => [b.type, b.body, b.end]), [["mdat", 16, 20]]);
  assert.equal(boxType(bytes([0, 0])), "");
});

// ----- the server's real muxer output ---------------------------------------------------------------------

test("real fMP4 from `mqtt-video probe --out`: prft, tracks and keyframes", { timeout: 60_000 }, (t) => {
  const bin = serverBinary();
  if (!existsSync(bin)) {
    t.skip(`${bin} is not built`);
    return;
  }
  const dir = mkdtempSync(path.join(tmpdir(), "mqtt-video-probe-"));
  try {
    const run = spawnSync(bin, ["probe", "builtin://testsrc", "--seconds", "2", "--out", dir], {
      cwd: REPO,
      encoding: "utf8",
      timeout: 50_000,
    });
    assert.equal(run.status, 0, `probe failed: ${run.stderr}`);
    const keyframes = Number(/\((\d+) start with a keyframe\)/.exec(run.stdout)?.[1]);
    const files = readdirSync(dir).sort();
    const initFile = files.find((f) => f.startsWith("init"));
    const info = parseInit(new Uint8Array(readFileSync(path.join(dir, initFile))));
    assert.ok(info.videoTrackId !== null, "a video track");
    assert.ok(info.audioTrackId !== null, "an audio track (testsrc beeps)");
    const timescale = info.tracks.get(info.videoTrackId).timescale;
    assert.ok(timescale > 0);

    let syncCount = 0;
    let fragments = 0;
    let lastMedia = -1;
    for (const f of files.filter((f) => f.endsWith(".m4s"))) {
      const data = new Uint8Array(readFileSync(path.join(dir, f)));
      let frag = data;
      const p = parsePrft(data);
      if (p) {
        frag = data.subarray(p.size);
        assert.equal(p.trackId, info.videoTrackId);
        assert.ok(Math.abs(Date.now() - p.wallMs) < 120_000, `prft wall clock ${new Date(p.wallMs).toISOString()}`);
      }
      assert.equal(boxType(frag), "moof", `${f} starts with moof after the prft`);
      const video = parseFragment(frag, info).trafs.find((t) => t.trackId === info.videoTrackId);
      if (!video) continue;
      assert.ok(p, `${f} holds video and has a prft`);
      assert.equal(p.mediaTime, video.baseMediaDecodeTime, `${f}: prft media time is the video tfdt`);
      assert.ok(video.baseMediaDecodeTime > lastMedia, "media time grows");
      lastMedia = video.baseMediaDecodeTime;
      fragments++;
      if (video.firstSampleSync) syncCount++;
    }
    assert.ok(fragments >= 50, `${fragments} video fragments`);
    assert.equal(syncCount, keyframes, "sync fragments found by the page's parser = the probe's keyframe count");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
