// Unit tests of the page's box parser (client/mp4.js): synthetic boxes for every flag path, and the real
// output of the server's muxer (`mqtt-video probe --out`) when the binary is built.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  audioSpecificConfig,
  boxes,
  boxType,
  hevcCodec,
  NTP_UNIX_OFFSET_SECS,
  parseFragment,
  parseInit,
  parsePrft,
} from "../../client/mp4.js";
import { probeOutput } from "./support.js";

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

const fourcc = (s) => [...s].map((c) => c.charCodeAt(0));
const u16 = (n) => [(n >> 8) & 255, n & 255];
// avcC: version 1, High profile (0x64), compatibility 0, level 3.0 (0x1E), then lengths and one SPS/PPS.
const AVCC = [1, 0x64, 0x00, 0x1e, 0xff, 0xe1, ...u16(4), 0x67, 0x64, 0x00, 0x1e, 1, ...u16(2), 0x68, 0xee];
// AudioSpecificConfig: AAC LC (2), 48 kHz (index 3), 2 channels: 00010 0011 0010 000 = 0x11 0x90.
const ASC = [0x11, 0x90];

function avc1(width, height) {
  return box("avc1", new Array(6).fill(0), u16(1), new Array(16).fill(0), u16(width), u16(height), new Array(50).fill(0), box("avcC", AVCC));
}
function mp4a(channels, rate) {
  // esds: ES_Descriptor (tag 3) > DecoderConfigDescriptor (tag 4) > DecoderSpecificInfo (tag 5); sizes in the
  // 4-byte form for the outer one, as some muxers write them.
  const dsi = [0x05, ASC.length, ...ASC];
  const dcd = [0x04, 13 + dsi.length, 0x40, 0x15, 0, 0, 0, ...u32(0), ...u32(0), ...dsi];
  const es = [0x03, 0x80, 0x80, 0x80, 3 + dcd.length, ...u16(1), 0, ...dcd];
  return box("mp4a", new Array(6).fill(0), u16(1), new Array(8).fill(0), u16(channels), u16(16), u32(0), u32(rate * 65536), fullbox("esds", 0, 0, es));
}

function trak(id, handler, timescale, tkhdVersion = 0) {
  const times = tkhdVersion === 1 ? [...u64(0), ...u64(0)] : [...u32(0), ...u32(0)];
  const entry = handler === "vide" ? avc1(640, 360) : mp4a(1, 44100);
  return box(
    "trak",
    fullbox("tkhd", tkhdVersion, 3, times, u32(id), u32(0), u32(0)),
    box(
      "mdia",
      fullbox("mdhd", 0, 0, u32(0), u32(0), u32(timescale), u32(0), u32(0)),
      fullbox("hdlr", 0, 0, u32(0), fourcc(handler), u32(0), u32(0), u32(0), [0]),
      box("minf", box("stbl", fullbox("stsd", 0, 0, u32(1), entry))),
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

test("parseInit reads the sample entries a WebCodecs decoder is configured with", () => {
  const info = parseInit(init());
  const video = info.tracks.get(1).entry;
  assert.equal(video.format, "avc1");
  assert.equal(video.codec, "avc1.64001E");
  assert.deepEqual([...video.description], AVCC);
  assert.deepEqual([video.width, video.height], [640, 360]);
  const audio = info.tracks.get(2).entry;
  assert.equal(audio.codec, "mp4a.40.2");
  assert.deepEqual([...audio.description], ASC);
  // the AudioSpecificConfig wins over the sample entry's own (often placeholder) rate and channel count
  assert.deepEqual([audio.sampleRate, audio.channels], [48000, 2]);
});

test("hevcCodec spells an hvcC's codec string as the server does (annex E), for four libx265 records", () => {
  // The records of crates/wire/testdata, whose strings the server's Rust unit tests check too.
  const records = {
    "hevc-main.hvcc": "hvc1.1.6.L63.90",
    "hevc-main10.hvcc": "hvc1.2.4.L120.90",
    "hevc-high.hvcc": "hvc1.1.6.H153.90",
    "hevc-rext444.hvcc": "hvc1.4.10.L93.9E.08",
  };
  for (const [file, expected] of Object.entries(records)) {
    const record = new Uint8Array(readFileSync(new URL(`../../crates/wire/testdata/${file}`, import.meta.url)));
    assert.equal(hevcCodec("hvc1", record), expected, file);
  }
  const b0 = new Uint8Array([1, 0x01, 0x60, 0, 0, 0, 0xb0, 0, 0, 0, 0, 0, 93]);
  assert.equal(hevcCodec("hev1", b0), "hev1.1.6.L93.B0", "the issue's example");
});

test("audioSpecificConfig reads escaped object types and explicit rates", () => {
  assert.deepEqual(audioSpecificConfig(Uint8Array.from(ASC)), { objectType: 2, sampleRate: 48000, channels: 2 });
  // HE-AAC v2 written as object type 29: 11101 0110 (24 kHz) 0001
  assert.deepEqual(audioSpecificConfig(Uint8Array.from([0xeb, 0x08])), { objectType: 29, sampleRate: 24000, channels: 1 });
  // escape (31) + 6 bits: 32 + 10 = 42; index 15: a 24-bit rate (16000), then 2 channels
  const bits = "11111" + "001010" + "1111" + (16000).toString(2).padStart(24, "0") + "0010";
  const packed = Uint8Array.from(bits.padEnd(48, "0").match(/.{8}/g).map((b) => parseInt(b, 2)));
  assert.deepEqual(audioSpecificConfig(packed), { objectType: 42, sampleRate: 16000, channels: 2 });
  assert.equal(audioSpecificConfig(Uint8Array.from([0xf8])), null);
});

test("parseFragment lists every sample: offsets from the moof, durations, sizes, flags, composition offsets", () => {
  const info = parseInit(init());
  // default-base-is-moof, a data_offset, per-sample duration/size/flags and signed (version 1) offsets
  const samples = [
    { duration: 3000, size: 4, flags: SYNC, cto: 3000 },
    { duration: 3000, size: 2, flags: NON_SYNC, cto: -3000 },
  ];
  const trun = (dataOffset) =>
    fullbox("trun", 1, 0xf01, u32(samples.length), u32(dataOffset), ...samples.map((x) => [...u32(x.duration), ...u32(x.size), ...u32(x.flags), ...u32(x.cto >>> 0)]));
  const trafBox = (off) => box("traf", fullbox("tfhd", 0, 0x020000, u32(1)), fullbox("tfdt", 1, 0, u64(90000)), trun(off));
  const moofLen = box("moof", fullbox("mfhd", 0, 0, u32(7)), trafBox(0)).length;
  const frag = bytes(box("moof", fullbox("mfhd", 0, 0, u32(7)), trafBox(moofLen + 8)), box("mdat", [1, 2, 3, 4, 5, 6]));
  const { sequence, trafs } = parseFragment(frag, info);
  assert.equal(sequence, 7);
  assert.deepEqual(
    trafs[0].samples.map((x) => [x.offset, x.size, x.duration, x.sync, x.decodeTime, x.compositionOffset]),
    [
      [moofLen + 8, 4, 3000, true, 90000, 3000],
      [moofLen + 12, 2, 3000, false, 93000, -3000],
    ],
  );
  assert.deepEqual([...frag.subarray(trafs[0].samples[1].offset, trafs[0].samples[1].offset + 2)], [5, 6]);
  // first_sample_flags applies to the first sample only; tfhd defaults to the others
  const f2 = fragment(traf(1, { trunFlags: 0x104, first: SYNC, tfhdFlags: 0x20, tfhdDefault: NON_SYNC, samples: [{}, {}] }));
  assert.deepEqual(parseFragment(f2, info).trafs[0].samples.map((x) => x.sync), [true, false]);
  // a sample count the trun cannot hold is not believed
  const lying = bytes(box("moof", box("traf", fullbox("tfhd", 0, 0, u32(1)), fullbox("trun", 0, 0x300, u32(1000000), u32(1)))));
  assert.equal(parseFragment(lying, info).trafs[0].sampleCount, 0);
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
  const probe = probeOutput(2);
  if (!probe) {
    t.skip("the server binary is not built");
    return;
  }
  const keyframes = Number(/\((\d+) start with a keyframe\)/.exec(probe.stdout)?.[1]);
  const info = parseInit(probe.init);
  assert.ok(info.videoTrackId !== null, "a video track");
  assert.ok(info.audioTrackId !== null, "an audio track (testsrc beeps)");
  const timescale = info.tracks.get(info.videoTrackId).timescale;
  assert.ok(timescale > 0);
  const mime = /mime\s+(.*)/.exec(probe.stdout)[1];
  const entries = [info.videoTrackId, info.audioTrackId].map((id) => info.tracks.get(id).entry);
  assert.equal(mime, `video/mp4; codecs="${entries[0].codec}, ${entries[1].codec}"`, "the codecs the server announces");
  assert.equal(entries[0].description[0], 1, "an avcC version 1");
  assert.deepEqual([entries[1].sampleRate, entries[0].width], [48000, 640]);

  let syncCount = 0;
  let fragments = 0;
  let lastMedia = -1;
  for (const [n, data] of probe.fragments.entries()) {
    const f = `fragment ${n}`;
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
    // Each video sample is a run of length-prefixed NAL units that ends exactly at the sample's end, and a
    // sync sample holds an IDR slice (NAL type 5).
    for (const sample of video.samples) {
      assert.ok(sample.offset >= 0 && sample.offset + sample.size <= frag.length, `${f}: a sample inside the fragment`);
      const types = [];
      let pos = sample.offset;
      while (pos < sample.offset + sample.size) {
        const len = new DataView(frag.buffer, frag.byteOffset + pos).getUint32(0);
        types.push(frag[pos + 4] & 0x1f);
        pos += 4 + len;
      }
      assert.equal(pos, sample.offset + sample.size, `${f}: NAL lengths add up to the sample size`);
      assert.equal(types.includes(5), sample.sync, `${f}: NAL types ${types} for a ${sample.sync ? "sync" : "non-sync"} sample`);
    }
    if (video.firstSampleSync) syncCount++;
  }
  assert.ok(fragments >= 50, `${fragments} video fragments`);
  assert.equal(syncCount, keyframes, "sync fragments found by the page's parser = the probe's keyframe count");
});
