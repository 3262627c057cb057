// Just enough ISO BMFF (fragmented MP4) parsing for a live player. Pure functions over Uint8Array, no DOM,
// so they also run under node (tests/e2e/mp4.test.js).
//
// What the players need from the bytes:
//   init segment (ftyp + moov): per track its ID, handler (vide/soun), timescale (mdhd), trex defaults and
//   its sample entry (avcC for H.264, the AudioSpecificConfig for AAC: what a WebCodecs decoder is
//   configured with);
//   fragment ([prft] + moof + mdat): the prft wall clock and media time, whether the video of the fragment
//   starts with a sync sample (trun first_sample_flags / sample flags / tfhd / trex defaults), and every
//   sample's place in the bytes, duration, flags and composition offset (for WebCodecs, which is fed samples,
//   not fragments).

/** Seconds between the NTP epoch (1900-01-01) and the Unix epoch (1970-01-01). */
export const NTP_UNIX_OFFSET_SECS = 2208988800;

/** ISO/IEC 14496-12 sample flags: sample_is_non_sync_sample. */
const SAMPLE_IS_NON_SYNC = 0x00010000;

/** The four-character type of the box at `offset`, or "" if there are not 8 bytes. */
export function boxType(bytes, offset = 0) {
  if (bytes.length < offset + 8) return "";
  return String.fromCharCode(bytes[offset + 4], bytes[offset + 5], bytes[offset + 6], bytes[offset + 7]);
}

/** Whether two byte arrays hold the same bytes. */
export function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function view(bytes) {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * The boxes directly inside bytes[start, end): [{type, start, end, body}] where body is the offset of the
 * payload (after the size/type/largesize header). Stops at the first malformed box.
 */
export function boxes(bytes, start = 0, end = bytes.length) {
  const dv = view(bytes);
  const out = [];
  let pos = start;
  while (pos + 8 <= end) {
    let size = dv.getUint32(pos);
    let header = 8;
    if (size === 1) {
      if (pos + 16 > end) break;
      const big = dv.getBigUint64(pos + 8);
      if (big > BigInt(end - pos)) break;
      size = Number(big);
      header = 16;
    } else if (size === 0) {
      size = end - pos; // extends to the end of its container
    }
    if (size < header || pos + size > end) break;
    out.push({ type: boxType(bytes, pos), start: pos, end: pos + size, body: pos + header });
    pos += size;
  }
  return out;
}

function child(bytes, box, type) {
  return boxes(bytes, box.body, box.end).find((b) => b.type === type);
}

function children(bytes, box, type) {
  return boxes(bytes, box.body, box.end).filter((b) => b.type === type);
}

/**
 * Parses an init segment. Returns {tracks: Map<trackId, {id, handler, timescale, trex, entry}>, videoTrackId,
 * audioTrackId} or null when there is no moov.
 * trex = {defaultSampleDuration, defaultSampleSize, defaultSampleFlags} (or null without mvex/trex);
 * entry = the first sample entry (see sampleEntry) or null.
 */
export function parseInit(bytes) {
  const moov = boxes(bytes).find((b) => b.type === "moov");
  if (!moov) return null;
  const dv = view(bytes);
  const tracks = new Map();
  for (const trak of children(bytes, moov, "trak")) {
    const tkhd = child(bytes, trak, "tkhd");
    const mdia = child(bytes, trak, "mdia");
    if (!tkhd || !mdia) continue;
    const tkhdVersion = bytes[tkhd.body];
    // tkhd: version/flags, creation + modification time (4 or 8 bytes each), then track_ID.
    const id = dv.getUint32(tkhd.body + 4 + (tkhdVersion === 1 ? 16 : 8));
    const mdhd = child(bytes, mdia, "mdhd");
    const hdlr = child(bytes, mdia, "hdlr");
    let timescale = 0;
    if (mdhd) timescale = dv.getUint32(mdhd.body + 4 + (bytes[mdhd.body] === 1 ? 16 : 8));
    // hdlr: version/flags, pre_defined, handler_type.
    const handler = hdlr ? boxType(bytes, hdlr.body + 4) : "";
    const minf = child(bytes, mdia, "minf");
    const stbl = minf && child(bytes, minf, "stbl");
    const stsd = stbl && child(bytes, stbl, "stsd");
    tracks.set(id, { id, handler, timescale, trex: null, entry: stsd ? sampleEntry(bytes, stsd) : null });
  }
  const mvex = child(bytes, moov, "mvex");
  if (mvex) {
    for (const trex of children(bytes, mvex, "trex")) {
      // trex: version/flags, track_ID, default_sample_description_index, duration, size, flags.
      const id = dv.getUint32(trex.body + 4);
      const track = tracks.get(id);
      if (!track) continue;
      track.trex = {
        defaultSampleDuration: dv.getUint32(trex.body + 12),
        defaultSampleSize: dv.getUint32(trex.body + 16),
        defaultSampleFlags: dv.getUint32(trex.body + 20),
      };
    }
  }
  const find = (handler) => [...tracks.values()].find((t) => t.handler === handler)?.id ?? null;
  return { tracks, videoTrackId: find("vide"), audioTrackId: find("soun") };
}

const hex2 = (n) => n.toString(16).toUpperCase().padStart(2, "0");

/**
 * The codec string of an HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 annex E), as the server's mimeCodec
 * spells it: profile space as a letter (none for 0) and profile idc, the 32 compatibility flags in reverse bit
 * order in hex, L or H (the tier) and the level idc, then the 6 constraint bytes in hex without trailing zero
 * bytes. E.g. "hvc1.1.6.L93.B0".
 */
export function hevcCodec(format, hvcC) {
  const space = ["", "A", "B", "C"][hvcC[1] >> 6];
  const tier = hvcC[1] & 0x20 ? "H" : "L";
  const profile = hvcC[1] & 0x1f;
  let flags = ((hvcC[2] << 24) | (hvcC[3] << 16) | (hvcC[4] << 8) | hvcC[5]) >>> 0;
  let reversed = 0;
  for (let i = 0; i < 32; i++, flags >>>= 1) reversed = ((reversed << 1) | (flags & 1)) >>> 0;
  const constraints = Array.from(hvcC.subarray(6, 12));
  while (constraints.length && constraints[constraints.length - 1] === 0) constraints.pop();
  const tail = constraints.map((b) => `.${hex2(b)}`).join("");
  return `${format}.${space}${profile}.${reversed.toString(16).toUpperCase()}.${tier}${hvcC[12]}${tail}`;
}

/**
 * The first sample entry of an stsd box: {format, codec, description, ...}. For avc1/avc3: codec
 * "avc1.PPCCLL" (RFC 6381, as the server's mimeCodec spells it), description = the avcC payload, width,
 * height. For hvc1/hev1 the same with the hvcC (hevcCodec). For mp4a: codec "mp4a.40.<audio object type>", description = the AudioSpecificConfig, sampleRate
 * and channels (from the AudioSpecificConfig when it says, else from the entry). Other formats: {format,
 * codec: null, description: null}.
 */
function sampleEntry(bytes, stsd) {
  // stsd: version/flags, entry_count, then the entries.
  const entry = boxes(bytes, stsd.body + 8, stsd.end)[0];
  if (!entry) return null;
  const dv = view(bytes);
  const format = entry.type;
  if (format === "avc1" || format === "avc3") {
    // VisualSampleEntry: 8 bytes SampleEntry, 16 pre_defined/reserved, width, height, then 50 more bytes
    // (resolutions, frame_count, compressorname, depth, pre_defined) before the child boxes.
    const width = dv.getUint16(entry.body + 24);
    const height = dv.getUint16(entry.body + 26);
    const avcC = boxes(bytes, entry.body + 78, entry.end).find((b) => b.type === "avcC");
    if (!avcC || avcC.end - avcC.body < 4) return { format, codec: null, description: null, width, height };
    const p = avcC.body;
    return {
      format,
      codec: `avc1.${hex2(bytes[p + 1])}${hex2(bytes[p + 2])}${hex2(bytes[p + 3])}`,
      description: bytes.slice(avcC.body, avcC.end),
      width,
      height,
    };
  }
  if (format === "hvc1" || format === "hev1") {
    const width = dv.getUint16(entry.body + 24);
    const height = dv.getUint16(entry.body + 26);
    const hvcC = boxes(bytes, entry.body + 78, entry.end).find((b) => b.type === "hvcC");
    if (!hvcC || hvcC.end - hvcC.body < 13) return { format, codec: null, description: null, width, height };
    const description = bytes.slice(hvcC.body, hvcC.end);
    return { format, codec: hevcCodec(format, description), description, width, height };
  }
  if (format === "mp4a") {
    // AudioSampleEntry: 8 bytes SampleEntry, 8 reserved, channelcount, samplesize, 4 more, samplerate 16.16.
    const entryChannels = dv.getUint16(entry.body + 16);
    const entryRate = dv.getUint32(entry.body + 24) >>> 16;
    const esds = boxes(bytes, entry.body + 28, entry.end).find((b) => b.type === "esds");
    const asc = esds ? decoderSpecificInfo(bytes, esds.body + 4, esds.end) : null;
    const config = asc ? audioSpecificConfig(asc) : null;
    return {
      format,
      codec: config ? `mp4a.40.${config.objectType}` : null,
      description: asc,
      sampleRate: config?.sampleRate || entryRate,
      channels: config?.channels || entryChannels,
    };
  }
  return { format, codec: null, description: null };
}

/** Reads an MPEG-4 descriptor header (tag, then a size of 1-4 bytes of 7 bits each) at `pos`. */
function descriptor(bytes, pos, end) {
  if (pos + 2 > end) return null;
  const tag = bytes[pos++];
  let size = 0;
  for (let i = 0; i < 4; i++) {
    if (pos >= end) return null;
    const b = bytes[pos++];
    size = (size << 7) | (b & 0x7f);
    if (!(b & 0x80)) break;
  }
  if (pos + size > end) return null;
  return { tag, body: pos, end: pos + size };
}

/** The DecoderSpecificInfo (for AAC: the AudioSpecificConfig) inside an esds payload, or null. */
function decoderSpecificInfo(bytes, start, end) {
  const es = descriptor(bytes, start, end);
  if (!es || es.tag !== 0x03) return null;
  // ES_Descriptor: ES_ID, then flags saying which optional fields follow.
  const flags = bytes[es.body + 2];
  let pos = es.body + 3;
  if (flags & 0x80) pos += 2; // dependsOn_ES_ID
  if (flags & 0x40) pos += 1 + (bytes[pos] ?? 0); // URL
  if (flags & 0x20) pos += 2; // OCR_ES_Id
  const dc = descriptor(bytes, pos, es.end);
  if (!dc || dc.tag !== 0x04) return null;
  // DecoderConfigDescriptor: objectTypeIndication, streamType, bufferSizeDB(3), maxBitrate, avgBitrate.
  const dsi = descriptor(bytes, dc.body + 13, dc.end);
  if (!dsi || dsi.tag !== 0x05) return null;
  return bytes.slice(dsi.body, dsi.end);
}

const AAC_RATES = [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

/** {objectType, sampleRate, channels} of an AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1), or null. */
export function audioSpecificConfig(asc) {
  if (asc.length < 2) return null;
  let bit = 0;
  const read = (n) => {
    let v = 0;
    for (let i = 0; i < n; i++, bit++) {
      if (bit >> 3 >= asc.length) throw new RangeError("short AudioSpecificConfig");
      v = (v << 1) | ((asc[bit >> 3] >> (7 - (bit & 7))) & 1);
    }
    return v;
  };
  try {
    let objectType = read(5);
    if (objectType === 31) objectType = 32 + read(6);
    const index = read(4);
    const sampleRate = index === 15 ? read(24) : (AAC_RATES[index] ?? 0);
    const channels = read(4);
    return { objectType, sampleRate, channels };
  } catch {
    return null;
  }
}

/**
 * Parses a 32-byte version-1 prft box (or a version-0 one) at the start of `bytes`.
 * Returns {size, trackId, wallMs, mediaTime} (mediaTime in the reference track's timescale) or null.
 */
export function parsePrft(bytes) {
  if (boxType(bytes) !== "prft") return null;
  const dv = view(bytes);
  const size = dv.getUint32(0);
  const version = bytes[8];
  if (size < (version === 1 ? 32 : 28) || size > bytes.length) return null;
  const trackId = dv.getUint32(12);
  const secs = dv.getUint32(16);
  const frac = dv.getUint32(20);
  const wallMs = (secs - NTP_UNIX_OFFSET_SECS) * 1000 + (frac / 2 ** 32) * 1000;
  const mediaTime = version === 1 ? Number(dv.getBigUint64(24)) : dv.getUint32(24);
  return { size, trackId, wallMs, mediaTime };
}

/**
 * Facts about one fragment (the moof of `bytes`, after any prft): its mfhd sequence number and, for each track
 * fragment, its track ID, base media decode time (tfdt), sample count, whether its first sample is a sync
 * sample, and its samples: [{offset, size, duration, flags, sync, decodeTime, compositionOffset}] with
 * `offset` into `bytes` and times in the track's timescale (decodeTime null without a tfdt).
 * `init` is the result of parseInit (for trex defaults); it may be null.
 * Returns {sequence, trafs: [{trackId, baseMediaDecodeTime, sampleCount, firstSampleSync, samples}]} or null
 * without moof.
 */
export function parseFragment(bytes, init) {
  const moof = boxes(bytes).find((b) => b.type === "moof");
  if (!moof) return null;
  const dv = view(bytes);
  const mfhd = child(bytes, moof, "mfhd");
  const sequence = mfhd ? dv.getUint32(mfhd.body + 4) : null;
  const trafs = [];
  let dataEnd = moof.start; // where the previous track fragment's data ended (the implicit base)
  for (const traf of children(bytes, moof, "traf")) {
    const tfhd = child(bytes, traf, "tfhd");
    if (!tfhd) continue;
    const tfhdFlags = dv.getUint32(tfhd.body) & 0xffffff;
    const trackId = dv.getUint32(tfhd.body + 4);
    const trex = init?.tracks.get(trackId)?.trex;
    let p = tfhd.body + 8;
    /** The next 32-bit field of a box when `present`, else `fallback`. */
    const field = (present, fallback) => {
      if (!present) return fallback;
      p += 4;
      return dv.getUint32(p - 4);
    };
    let base = tfhdFlags & 0x020000 ? moof.start : dataEnd; // default-base-is-moof
    if (tfhdFlags & 0x000001) {
      base = Number(dv.getBigUint64(p)); // base_data_offset: from the start of these bytes
      p += 8;
    }
    field(tfhdFlags & 0x000002); // sample_description_index
    const defaultDuration = field(tfhdFlags & 0x000008, trex?.defaultSampleDuration ?? 0);
    const defaultSize = field(tfhdFlags & 0x000010, trex?.defaultSampleSize ?? 0);
    const defaultFlags = field(tfhdFlags & 0x000020, trex?.defaultSampleFlags ?? 0);

    let baseMediaDecodeTime = null;
    const tfdt = child(bytes, traf, "tfdt");
    if (tfdt) {
      baseMediaDecodeTime =
        bytes[tfdt.body] === 1 ? Number(dv.getBigUint64(tfdt.body + 4)) : dv.getUint32(tfdt.body + 4);
    }

    const samples = [];
    let decodeTime = baseMediaDecodeTime;
    let offset = base;
    for (const trun of children(bytes, traf, "trun")) {
      const version = bytes[trun.body];
      const flags = dv.getUint32(trun.body) & 0xffffff;
      const count = dv.getUint32(trun.body + 4);
      p = trun.body + 8;
      if (flags & 0x000001) offset = base + (field(true) | 0); // data_offset, signed
      const firstFlags = field(flags & 0x000004, null); // first_sample_flags
      const perSample = ((flags >> 8) & 1) + ((flags >> 9) & 1) + ((flags >> 10) & 1) + ((flags >> 11) & 1);
      if (p + count * perSample * 4 > trun.end) break; // a count the box cannot hold
      for (let i = 0; i < count; i++) {
        const duration = field(flags & 0x000100, defaultDuration);
        const size = field(flags & 0x000200, defaultSize);
        const own = field(flags & 0x000400, defaultFlags);
        // first_sample_flags overrides the first sample's own flags
        const sampleFlags = i === 0 && firstFlags !== null ? firstFlags : own;
        const cto = field(flags & 0x000800, 0);
        const compositionOffset = version === 0 ? cto : cto | 0; // version 1: signed
        samples.push({
          offset,
          size,
          duration,
          flags: sampleFlags,
          sync: (sampleFlags & SAMPLE_IS_NON_SYNC) === 0,
          decodeTime,
          compositionOffset,
        });
        offset += size;
        if (decodeTime !== null) decodeTime += duration;
      }
    }
    dataEnd = offset;
    trafs.push({
      trackId,
      baseMediaDecodeTime,
      sampleCount: samples.length,
      firstSampleSync: samples.length > 0 && samples[0].sync,
      samples,
    });
  }
  return { sequence, trafs };
}

/**
 * One binary message of a reply topic (docs/PROTOCOL.md, "Media on the reply topic"): {kind: "init"} for an
 * init segment, else {kind: "fragment", prft, moof, fragment} with the parsed prft (or null), the bytes from
 * the moof on (what MSE is given), and parseFragment of them (offsets into `moof`). Throws when the message
 * is neither.
 */
export function parseMessage(bytes, init) {
  const type = boxType(bytes);
  if (type === "ftyp") return { kind: "init" };
  let prft = null;
  let moof = bytes;
  if (type === "prft") {
    prft = parsePrft(bytes);
    if (!prft) throw new Error("malformed prft");
    moof = bytes.subarray(prft.size); // strip it: not every MSE accepts a top-level prft
  }
  if (boxType(moof) !== "moof") throw new Error(`unexpected box "${boxType(moof)}"`);
  const fragment = parseFragment(moof, init);
  return { kind: "fragment", prft, moof, fragment };
}

/**
 * What the rendition hand-over (switch.js) and the link meter (link-meter.js) need of one media message,
 * from its bytes and the parsed init segment of its rendition (null before one): {kind: "init", init} (init
 * parsed, or null) for an init segment, else {kind: "fragment", bytes, seq, video, keyframe, start, end,
 * wallMs}: its size, `mfhd` sequence number, whether it carries video and starts with a sync sample, the
 * media time it covers in seconds (the video track's; a fragment without video, its first track's) and its
 * `prft` wall clock in ms. Facts it cannot know (no init yet, a malformed message) are null; never throws.
 */
export function messageFacts(bytes, init) {
  const facts = { kind: "fragment", bytes: bytes.length, seq: null, video: false, keyframe: null, start: null, end: null, wallMs: null };
  try {
    if (boxType(bytes) === "ftyp") return { kind: "init", init: parseInit(bytes) };
    const msg = parseMessage(bytes, init);
    facts.seq = msg.fragment?.sequence ?? null;
    facts.wallMs = msg.prft?.wallMs ?? null;
    if (!init || !msg.fragment) return facts;
    const trafs = msg.fragment.trafs.filter((t) => t.sampleCount > 0 && t.baseMediaDecodeTime !== null);
    const video = trafs.find((t) => t.trackId === init.videoTrackId);
    const timed = video ?? trafs.find((t) => init.tracks.get(t.trackId)?.timescale);
    facts.video = !!video;
    facts.keyframe = !!video?.firstSampleSync;
    const timescale = timed && init.tracks.get(timed.trackId)?.timescale;
    if (timescale) {
      const duration = timed.samples.reduce((sum, s) => sum + s.duration, 0);
      facts.start = timed.baseMediaDecodeTime / timescale;
      facts.end = (timed.baseMediaDecodeTime + duration) / timescale;
    }
  } catch {
    // Passed on as it is: the renderer says what is wrong with it.
  }
  return facts;
}
