// Just enough ISO BMFF (fragmented MP4) parsing for a live MSE player. Pure functions over Uint8Array,
// no DOM, so they also run under node (tests/e2e/mp4.test.js).
//
// What the player needs from the bytes:
//   init segment (ftyp + moov): per track its ID, handler (vide/soun), timescale (mdhd) and trex defaults;
//   fragment ([prft] + moof + mdat): the prft wall clock and media time, and whether the video of the
//   fragment starts with a sync sample (trun first_sample_flags / sample flags / tfhd / trex defaults).

/** Seconds between the NTP epoch (1900-01-01) and the Unix epoch (1970-01-01). */
export const NTP_UNIX_OFFSET_SECS = 2208988800;

/** ISO/IEC 14496-12 sample flags: sample_is_non_sync_sample. */
const SAMPLE_IS_NON_SYNC = 0x00010000;

/** The four-character type of the box at `offset`, or "" if there are not 8 bytes. */
export function boxType(bytes, offset = 0) {
  if (bytes.length < offset + 8) return "";
  return String.fromCharCode(bytes[offset + 4], bytes[offset + 5], bytes[offset + 6], bytes[offset + 7]);
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
 * Parses an init segment. Returns {tracks: Map<trackId, {id, handler, timescale, trex}>, videoTrackId,
 * audioTrackId} or null when there is no moov.
 * trex = {defaultSampleDuration, defaultSampleSize, defaultSampleFlags} (or null without mvex/trex).
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
    tracks.set(id, { id, handler, timescale, trex: null });
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
 * Facts about one fragment (the moof of `bytes`, after any prft): for each track fragment its track ID,
 * base media decode time (tfdt), sample count and whether its first sample is a sync sample.
 * `init` is the result of parseInit (for trex defaults); it may be null.
 * Returns {trafs: [{trackId, baseMediaDecodeTime, sampleCount, firstSampleSync}]} or null without moof.
 */
export function parseFragment(bytes, init) {
  const moof = boxes(bytes).find((b) => b.type === "moof");
  if (!moof) return null;
  const dv = view(bytes);
  const trafs = [];
  for (const traf of children(bytes, moof, "traf")) {
    const tfhd = child(bytes, traf, "tfhd");
    if (!tfhd) continue;
    const tfhdFlags = dv.getUint32(tfhd.body) & 0xffffff;
    const trackId = dv.getUint32(tfhd.body + 4);
    let p = tfhd.body + 8;
    if (tfhdFlags & 0x000001) p += 8; // base_data_offset
    if (tfhdFlags & 0x000002) p += 4; // sample_description_index
    if (tfhdFlags & 0x000008) p += 4; // default_sample_duration
    if (tfhdFlags & 0x000010) p += 4; // default_sample_size
    let defaultFlags = init?.tracks.get(trackId)?.trex?.defaultSampleFlags ?? 0;
    if (tfhdFlags & 0x000020) defaultFlags = dv.getUint32(p);

    let baseMediaDecodeTime = null;
    const tfdt = child(bytes, traf, "tfdt");
    if (tfdt) {
      baseMediaDecodeTime =
        bytes[tfdt.body] === 1 ? Number(dv.getBigUint64(tfdt.body + 4)) : dv.getUint32(tfdt.body + 4);
    }

    let sampleCount = 0;
    let firstFlags = null;
    for (const trun of children(bytes, traf, "trun")) {
      const flags = dv.getUint32(trun.body) & 0xffffff;
      const count = dv.getUint32(trun.body + 4);
      if (firstFlags === null && count > 0) {
        let q = trun.body + 8;
        if (flags & 0x000001) q += 4; // data_offset
        if (flags & 0x000004) {
          firstFlags = dv.getUint32(q); // first_sample_flags
        } else if (flags & 0x000400) {
          // the first sample's own flags, after its duration and size when present
          if (flags & 0x000100) q += 4;
          if (flags & 0x000200) q += 4;
          firstFlags = dv.getUint32(q);
        } else {
          firstFlags = defaultFlags;
        }
      }
      sampleCount += count;
    }
    trafs.push({
      trackId,
      baseMediaDecodeTime,
      sampleCount,
      firstSampleSync: firstFlags !== null && (firstFlags & SAMPLE_IS_NON_SYNC) === 0,
    });
  }
  return { trafs };
}
