//! Pure ISO BMFF (fragmented MP4) parsing: splits the muxer's byte stream into an init segment and
//! fragments, and reads the few facts we need from `moov` and `moof`. No I/O, no FFmpeg.

use thiserror::Error;

/// A box larger than this is treated as corrupt rather than buffered: one 4K keyframe is a few MB.
pub const MAX_BOX_SIZE: u64 = 256 * 1024 * 1024;

/// Why a byte stream is not the fragmented MP4 we expect.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Fmp4Error {
    /// A box header claims an impossible size.
    #[error("box '{kind}' has an invalid size {size}")]
    BadSize {
        /// The box's four-character type, lossily decoded.
        kind: String,
        /// The size it claims.
        size: u64,
    },
    /// A box is larger than [`MAX_BOX_SIZE`].
    #[error("box '{kind}' of {size} bytes exceeds the {MAX_BOX_SIZE}-byte limit")]
    TooLarge {
        /// The box's four-character type, lossily decoded.
        kind: String,
        /// The size it claims.
        size: u64,
    },
    /// A box's payload ends before the fields it must hold.
    #[error("box '{0}' is truncated")]
    Truncated(String),
    /// Boxes came in an order a fragmented MP4 never has.
    #[error("unexpected box '{found}' {context}")]
    Unexpected {
        /// The box's four-character type.
        found: String,
        /// Where it appeared.
        context: &'static str,
    },
}

/// Header of one box: its type, header length and total length (header included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoxHeader {
    /// Four-character type.
    pub kind: [u8; 4],
    /// Bytes taken by the size/type (and 64-bit size) fields.
    pub header_len: usize,
    /// Whole box length in bytes.
    pub total_len: u64,
}

impl BoxHeader {
    /// The type as text, for messages.
    pub fn kind_str(&self) -> String {
        fourcc(&self.kind)
    }
}

fn fourcc(kind: &[u8]) -> String {
    kind.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '?' }).collect()
}

/// Reads a box header at the start of `buf`; `Ok(None)` when more bytes are needed to know.
pub fn parse_box_header(buf: &[u8]) -> Result<Option<BoxHeader>, Fmp4Error> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let size32 = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let kind = [buf[4], buf[5], buf[6], buf[7]];
    let (header_len, total_len) = match size32 {
        // Size 0 means "to the end of the file", which a stream has not got.
        0 => {
            return Err(Fmp4Error::BadSize { kind: fourcc(&kind), size: 0 });
        }
        1 => {
            if buf.len() < 16 {
                return Ok(None);
            }
            let mut large = [0u8; 8];
            large.copy_from_slice(&buf[8..16]);
            (16usize, u64::from_be_bytes(large))
        }
        n => (8usize, u64::from(n)),
    };
    if total_len < header_len as u64 {
        return Err(Fmp4Error::BadSize { kind: fourcc(&kind), size: total_len });
    }
    if total_len > MAX_BOX_SIZE {
        return Err(Fmp4Error::TooLarge { kind: fourcc(&kind), size: total_len });
    }
    Ok(Some(BoxHeader { kind, header_len, total_len }))
}

/// Iterates the complete child boxes of a payload: `(header, payload)`.
pub fn boxes(mut data: &[u8]) -> impl Iterator<Item = Result<(BoxHeader, &[u8]), Fmp4Error>> {
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        let header = match parse_box_header(data) {
            Ok(Some(h)) => h,
            Ok(None) => {
                data = &[];
                return Some(Err(Fmp4Error::Truncated("(header)".into())));
            }
            Err(e) => {
                data = &[];
                return Some(Err(e));
            }
        };
        // total_len <= MAX_BOX_SIZE, so it fits in usize on every target we build for.
        let total = header.total_len as usize;
        if total > data.len() {
            data = &[];
            return Some(Err(Fmp4Error::Truncated(header.kind_str())));
        }
        let payload = &data[header.header_len..total];
        data = &data[total..];
        Some(Ok((header, payload)))
    })
}

/// Finds the first child box of type `kind` in `data`.
pub fn find_box<'a>(data: &'a [u8], kind: &[u8; 4]) -> Result<Option<&'a [u8]>, Fmp4Error> {
    for item in boxes(data) {
        let (header, payload) = item?;
        if &header.kind == kind {
            return Ok(Some(payload));
        }
    }
    Ok(None)
}

/// A big-endian cursor over a box payload that reports truncation as an error.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    kind: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8], kind: &'static str) -> Self {
        Self { data, pos: 0, kind }
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], Fmp4Error> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| Fmp4Error::Truncated(self.kind.to_string()))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, Fmp4Error> {
        Ok(self.bytes(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> Result<u32, Fmp4Error> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, Fmp4Error> {
        let hi = self.u32()?;
        let lo = self.u32()?;
        Ok((u64::from(hi) << 32) | u64::from(lo))
    }
    pub(crate) fn skip(&mut self, n: usize) -> Result<(), Fmp4Error> {
        self.bytes(n).map(|_| ())
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = &self.data[self.pos..];
        self.pos = self.data.len();
        out
    }
}

/// What kind of media a track holds, from its `hdlr` box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    /// `vide`
    Video,
    /// `soun`
    Audio,
    /// anything else
    Other,
}

/// One track of an init segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    /// `tkhd` track id, referenced by `tfhd` in fragments.
    pub track_id: u32,
    /// `mdhd` ticks per second.
    pub timescale: u32,
    /// Media kind.
    pub kind: TrackKind,
    /// The first sample entry box (`avc1`, `mp4a`, ...), header included, for codec strings.
    pub sample_entry: Vec<u8>,
    /// `trex` default sample duration.
    pub default_duration: u32,
    /// `trex` default sample flags.
    pub default_flags: u32,
}

/// The tracks an init segment (`ftyp`+`moov`) declares.
pub fn parse_init(init: &[u8]) -> Result<Vec<TrackInfo>, Fmp4Error> {
    let moov = find_box(init, b"moov")?.ok_or_else(|| Fmp4Error::Truncated("moov".into()))?;
    let mut tracks = Vec::new();
    for item in boxes(moov) {
        let (header, payload) = item?;
        if &header.kind == b"trak" {
            tracks.push(parse_trak(payload)?);
        }
    }
    if let Some(mvex) = find_box(moov, b"mvex")? {
        for item in boxes(mvex) {
            let (header, payload) = item?;
            if &header.kind != b"trex" {
                continue;
            }
            let mut r = Reader::new(payload, "trex");
            r.skip(4)?; // version + flags
            let track_id = r.u32()?;
            r.skip(4)?; // default_sample_description_index
            let duration = r.u32()?;
            r.skip(4)?; // default_sample_size
            let flags = r.u32()?;
            if let Some(t) = tracks.iter_mut().find(|t| t.track_id == track_id) {
                t.default_duration = duration;
                t.default_flags = flags;
            }
        }
    }
    Ok(tracks)
}

fn parse_trak(trak: &[u8]) -> Result<TrackInfo, Fmp4Error> {
    let tkhd = find_box(trak, b"tkhd")?.ok_or_else(|| Fmp4Error::Truncated("tkhd".into()))?;
    let mut r = Reader::new(tkhd, "tkhd");
    let version = r.u8()?;
    r.skip(3)?;
    r.skip(if version == 1 { 16 } else { 8 })?; // creation + modification times
    let track_id = r.u32()?;

    let mdia = find_box(trak, b"mdia")?.ok_or_else(|| Fmp4Error::Truncated("mdia".into()))?;
    let mdhd = find_box(mdia, b"mdhd")?.ok_or_else(|| Fmp4Error::Truncated("mdhd".into()))?;
    let mut r = Reader::new(mdhd, "mdhd");
    let version = r.u8()?;
    r.skip(3)?;
    r.skip(if version == 1 { 16 } else { 8 })?;
    let timescale = r.u32()?;

    let hdlr = find_box(mdia, b"hdlr")?.ok_or_else(|| Fmp4Error::Truncated("hdlr".into()))?;
    let mut r = Reader::new(hdlr, "hdlr");
    r.skip(8)?; // version/flags + pre_defined
    let kind = match r.bytes(4)? {
        b"vide" => TrackKind::Video,
        b"soun" => TrackKind::Audio,
        _ => TrackKind::Other,
    };

    let stsd = find_box(mdia, b"minf")?
        .map(|minf| find_box(minf, b"stbl"))
        .transpose()?
        .flatten()
        .map(|stbl| find_box(stbl, b"stsd"))
        .transpose()?
        .flatten()
        .ok_or_else(|| Fmp4Error::Truncated("stsd".into()))?;
    let mut r = Reader::new(stsd, "stsd");
    r.skip(8)?; // version/flags + entry_count
    let entries = r.rest();
    let header = parse_box_header(entries)?.ok_or_else(|| Fmp4Error::Truncated("stsd".into()))?;
    let len = usize::try_from(header.total_len).unwrap_or(usize::MAX);
    let sample_entry = entries.get(..len).ok_or_else(|| Fmp4Error::Truncated("stsd".into()))?;

    Ok(TrackInfo {
        track_id,
        timescale,
        kind,
        sample_entry: sample_entry.to_vec(),
        default_duration: 0,
        default_flags: 0,
    })
}

/// What one track contributes to a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackRun {
    /// `tfhd` track id.
    pub track_id: u32,
    /// `tfdt` decode time of the first sample, in the track's timescale.
    pub base_decode_time: u64,
    /// Samples in this fragment.
    pub sample_count: u32,
    /// Sum of the sample durations, in the track's timescale.
    pub duration: u64,
    /// Whether the first sample is a sync sample (keyframe).
    pub starts_with_sync: bool,
    /// Where the first sample's data starts, from the first `trun`'s `data_offset`: bytes from the start of
    /// the `moof` when `base_is_moof` (FFmpeg's `default_base_moof`).
    pub data_offset: Option<i32>,
    /// `tfhd` has `default-base-is-moof` and no explicit base offset.
    pub base_is_moof: bool,
    /// Size of the first sample in bytes, if the `trun` or `tfhd` gives it.
    pub first_sample_size: Option<u32>,
}

const SAMPLE_IS_NON_SYNC: u32 = 0x0001_0000;

fn is_sync(flags: u32) -> bool {
    flags & SAMPLE_IS_NON_SYNC == 0
}

/// Reads the per-track runs of a `moof` payload; `tracks` supplies the `trex` defaults.
pub fn parse_moof(moof: &[u8], tracks: &[TrackInfo]) -> Result<Vec<TrackRun>, Fmp4Error> {
    let mut runs = Vec::new();
    for item in boxes(moof) {
        let (header, traf) = item?;
        if &header.kind == b"traf" {
            runs.push(parse_traf(traf, tracks)?);
        }
    }
    Ok(runs)
}

fn parse_traf(traf: &[u8], tracks: &[TrackInfo]) -> Result<TrackRun, Fmp4Error> {
    let tfhd = find_box(traf, b"tfhd")?.ok_or_else(|| Fmp4Error::Truncated("tfhd".into()))?;
    let mut r = Reader::new(tfhd, "tfhd");
    let flags = r.u32()? & 0x00ff_ffff;
    let track_id = r.u32()?;
    let trex = tracks.iter().find(|t| t.track_id == track_id);
    let mut default_duration = trex.map_or(0, |t| t.default_duration);
    let mut default_flags = trex.map_or(0, |t| t.default_flags);
    let explicit_base = flags & 0x01 != 0;
    let base_is_moof = flags & 0x02_0000 != 0 && !explicit_base;
    let mut default_size = None;
    if explicit_base {
        r.skip(8)?; // base_data_offset
    }
    if flags & 0x02 != 0 {
        r.skip(4)?; // sample_description_index
    }
    if flags & 0x08 != 0 {
        default_duration = r.u32()?;
    }
    if flags & 0x10 != 0 {
        default_size = Some(r.u32()?);
    }
    if flags & 0x20 != 0 {
        default_flags = r.u32()?;
    }

    let base_decode_time = match find_box(traf, b"tfdt")? {
        Some(tfdt) => {
            let mut r = Reader::new(tfdt, "tfdt");
            let version = r.u8()?;
            r.skip(3)?;
            if version == 1 {
                r.u64()?
            } else {
                u64::from(r.u32()?)
            }
        }
        None => 0,
    };

    let mut run = TrackRun {
        track_id,
        base_decode_time,
        sample_count: 0,
        duration: 0,
        starts_with_sync: false,
        data_offset: None,
        base_is_moof,
        first_sample_size: None,
    };
    let mut first = true;
    for item in boxes(traf) {
        let (header, trun) = item?;
        if &header.kind != b"trun" {
            continue;
        }
        let mut r = Reader::new(trun, "trun");
        let flags = r.u32()? & 0x00ff_ffff;
        let count = r.u32()?;
        let data_offset = if flags & 0x001 != 0 { Some(r.u32()? as i32) } else { None };
        let first_sample_flags = if flags & 0x004 != 0 { Some(r.u32()?) } else { None };
        // With no per-sample fields a run of 2^32 samples takes no bytes: its sums are closed-form, never a
        // loop (a fuzzed 13 KB fragment once took 110 s here).
        let per_sample_fields = flags & 0xf00 != 0;
        if !per_sample_fields {
            if first && count > 0 {
                run.starts_with_sync = is_sync(first_sample_flags.unwrap_or(default_flags));
                run.data_offset = data_offset;
                run.first_sample_size = default_size;
            }
            run.duration = run.duration.saturating_add(u64::from(count) * u64::from(default_duration));
        }
        for i in 0..if per_sample_fields { count } else { 0 } {
            let duration = if flags & 0x100 != 0 { r.u32()? } else { default_duration };
            let size = if flags & 0x200 != 0 { Some(r.u32()?) } else { default_size };
            let sample_flags = if flags & 0x400 != 0 { r.u32()? } else { default_flags };
            if flags & 0x800 != 0 {
                r.skip(4)?; // composition time offset
            }
            if first && i == 0 {
                run.starts_with_sync = is_sync(first_sample_flags.unwrap_or(sample_flags));
                run.data_offset = data_offset;
                run.first_sample_size = size;
            }
            run.duration = run.duration.saturating_add(u64::from(duration));
        }
        if count > 0 {
            first = false;
        }
        run.sample_count = run.sample_count.saturating_add(count);
    }
    Ok(run)
}

/// Track id of the video in this server's fragments (the muxer writes video first).
pub const VIDEO_TRACK_ID: u32 = 1;

/// Whether a fragment of this server's (`prft` optional, then `moof`+`mdat`) starts with a video keyframe:
/// its video run's first sample is a sync sample. Reads only the `moof`; false for anything else.
pub fn starts_with_keyframe(fragment: &[u8]) -> bool {
    let Ok(Some(moof)) = find_box(fragment, b"moof") else { return false };
    // The muxer writes every sample's flags (tfhd defaults, trun first-sample flags): no trex needed.
    parse_moof(moof, &[])
        .is_ok_and(|runs| runs.iter().any(|r| r.track_id == VIDEO_TRACK_ID && r.sample_count > 0 && r.starts_with_sync))
}

/// Sets the `mfhd` sequence number of a fragment's `moof` (the muxer counts from 1 in each run; the stream
/// counts on across restarts, so that a page can see a gap). False when there is no `mfhd` to set.
pub fn set_sequence_number(fragment: &mut [u8], sequence: u32) -> bool {
    let mut at = 0usize;
    while let Ok(Some(header)) = parse_box_header(&fragment[at..]) {
        if &header.kind == b"moof" {
            let body = at + header.header_len;
            // mfhd, the moof's first child: header, version and flags, then the 32-bit sequence number.
            let Ok(Some(mfhd)) = parse_box_header(&fragment[body..]) else { return false };
            let field = body + mfhd.header_len + 4;
            return match fragment.get_mut(field..field + 4) {
                Some(bytes) if &mfhd.kind == b"mfhd" && mfhd.total_len >= 16 => {
                    bytes.copy_from_slice(&sequence.to_be_bytes());
                    true
                }
                _ => false,
            };
        }
        at = match usize::try_from(header.total_len).ok().and_then(|n| at.checked_add(n)) {
            Some(next) if next < fragment.len() => next,
            _ => return false,
        };
    }
    false
}

/// The `mfhd` sequence number of a fragment, if it has one.
pub fn sequence_number(fragment: &[u8]) -> Option<u32> {
    let moof = find_box(fragment, b"moof").ok()??;
    let mfhd = find_box(moof, b"mfhd").ok()??;
    let bytes = mfhd.get(4..8)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// A wall clock in µs since the Unix epoch as a 64-bit NTP timestamp (32.32 fixed point since 1900).
pub fn ntp_from_unix_us(unix_us: u64) -> u64 {
    let secs = unix_us / 1_000_000 + NTP_UNIX_OFFSET_SECS;
    let frac = ((unix_us % 1_000_000) << 32) / 1_000_000;
    (secs << 32) | frac
}

/// A 64-bit NTP timestamp back to µs since the Unix epoch.
pub fn unix_us_from_ntp(ntp: u64) -> u64 {
    let secs = (ntp >> 32).saturating_sub(NTP_UNIX_OFFSET_SECS);
    secs * 1_000_000 + (((ntp & 0xffff_ffff) * 1_000_000) >> 32)
}

/// A `prft` (ProducerReferenceTimeBox, ISO/IEC 14496-12 8.16.5, version 1): the wall clock at which the
/// sample at `media_time` (in the track's timescale) of `track_id` was produced.
pub fn prft_box(track_id: u32, wallclock_unix_us: u64, media_time: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(&32u32.to_be_bytes());
    out.extend_from_slice(b"prft");
    out.extend_from_slice(&0x0100_0000u32.to_be_bytes()); // version 1, flags 0
    out.extend_from_slice(&track_id.to_be_bytes());
    out.extend_from_slice(&ntp_from_unix_us(wallclock_unix_us).to_be_bytes());
    out.extend_from_slice(&media_time.to_be_bytes());
    out
}

/// Reads a `prft` payload: `(track_id, wall clock in µs since the Unix epoch, media time)`.
pub fn parse_prft(payload: &[u8]) -> Result<(u32, u64, u64), Fmp4Error> {
    let mut r = Reader::new(payload, "prft");
    let version = r.u8()?;
    r.skip(3)?;
    let track_id = r.u32()?;
    let ntp = r.u64()?;
    let media_time = if version == 1 { r.u64()? } else { u64::from(r.u32()?) };
    Ok((track_id, unix_us_from_ntp(ntp), media_time))
}

/// One piece of the muxer's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// `ftyp` + `moov` (and anything before the `moov`).
    Init(Vec<u8>),
    /// Any `styp`/`prft`/`sidx`/`emsg` boxes, then one `moof` and its `mdat`.
    Fragment {
        /// The fragment's bytes.
        bytes: Vec<u8>,
        /// Byte range of the `moof` payload within `bytes`.
        moof: std::ops::Range<usize>,
    },
}

/// Incremental splitter: push bytes as the muxer writes them, get whole segments out.
#[derive(Debug, Default)]
pub struct Splitter {
    buf: Vec<u8>,
    /// Start of the first byte not yet assigned to a segment.
    start: usize,
    /// Where parsing resumes (a box boundary at or after `start`).
    cursor: usize,
    seen_init: bool,
    /// Start offset (relative to `start`) of the pending `moof` payload, once seen.
    moof: Option<std::ops::Range<usize>>,
    failed: Option<Fmp4Error>,
}

impl Splitter {
    /// A splitter expecting an init segment first.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes and returns every segment they complete. After an error the splitter stays failed.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Segment>, Fmp4Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.buf.extend_from_slice(data);
        let result = self.drain();
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    /// Bytes received that do not yet form a whole segment.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    fn drain(&mut self) -> Result<Vec<Segment>, Fmp4Error> {
        let mut out = Vec::new();
        while let Some(header) = parse_box_header(&self.buf[self.cursor..])? {
            let total = header.total_len as usize;
            if self.buf.len() - self.cursor < total {
                break;
            }
            let box_start = self.cursor;
            self.cursor += total;
            match &header.kind {
                b"moov" => {
                    if self.seen_init {
                        return Err(unexpected(&header, "after the init segment"));
                    }
                    out.push(Segment::Init(self.take()));
                    self.seen_init = true;
                }
                b"moof" => {
                    if !self.seen_init {
                        return Err(unexpected(&header, "before the init segment"));
                    }
                    if self.moof.is_some() {
                        return Err(unexpected(&header, "before the previous fragment's mdat"));
                    }
                    let rel = box_start - self.start;
                    self.moof = Some(rel + header.header_len..rel + total);
                }
                b"mdat" => {
                    if !self.seen_init {
                        return Err(unexpected(&header, "before the init segment"));
                    }
                    let moof = self.moof.take().ok_or_else(|| unexpected(&header, "without a moof"))?;
                    out.push(Segment::Fragment { bytes: self.take(), moof });
                }
                b"mfra" => {
                    // The random-access index written at the trailer is useless to a live viewer.
                    self.start = self.cursor;
                }
                _ => {}
            }
        }
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.cursor = 0;
        }
        Ok(out)
    }

    fn take(&mut self) -> Vec<u8> {
        let bytes = self.buf[self.start..self.cursor].to_vec();
        self.start = self.cursor;
        bytes
    }
}

fn unexpected(header: &BoxHeader, context: &'static str) -> Fmp4Error {
    Fmp4Error::Unexpected { found: header.kind_str(), context }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn make_box(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut out = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(payload);
        out
    }

    fn full(version: u8, flags: u32, rest: &[u8]) -> Vec<u8> {
        let mut out = ((u32::from(version) << 24) | flags).to_be_bytes().to_vec();
        out.extend_from_slice(rest);
        out
    }

    fn init_segment() -> Vec<u8> {
        let tkhd = make_box(b"tkhd", &full(0, 3, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
        let mdhd = make_box(b"mdhd", &full(0, 0, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x3a, 0x98]));
        let hdlr = make_box(b"hdlr", &full(0, 0, b"\0\0\0\0vide"));
        let avc1 = make_box(b"avc1", &[0; 4]);
        let stsd = make_box(b"stsd", &[full(0, 0, &1u32.to_be_bytes()), avc1].concat());
        let stbl = make_box(b"stbl", &stsd);
        let minf = make_box(b"minf", &stbl);
        let mdia = make_box(b"mdia", &[mdhd, hdlr, minf].concat());
        let trak = make_box(b"trak", &[tkhd, mdia].concat());
        let trex = make_box(b"trex", &full(0, 0, &[1u32, 1, 500, 0, 0x0101_0000].map(u32::to_be_bytes).concat()));
        let mvex = make_box(b"mvex", &trex);
        let moov = make_box(b"moov", &[trak, mvex].concat());
        [make_box(b"ftyp", b"isom\0\0\x02\0"), moov].concat()
    }

    fn fragment(first_flags: Option<u32>, decode_time: u64) -> Vec<u8> {
        let tfhd = make_box(b"tfhd", &full(0, 0x02_0000, &1u32.to_be_bytes()));
        let tfdt = make_box(b"tfdt", &full(1, 0, &decode_time.to_be_bytes()));
        let trun = match first_flags {
            Some(f) => make_box(b"trun", &full(0, 0x004, &[2u32, f].map(u32::to_be_bytes).concat())),
            None => make_box(b"trun", &full(0, 0, &3u32.to_be_bytes())),
        };
        let traf = make_box(b"traf", &[tfhd, tfdt, trun].concat());
        let mfhd = make_box(b"mfhd", &full(0, 0, &7u32.to_be_bytes()));
        let moof = make_box(b"moof", &[mfhd, traf].concat());
        [moof, make_box(b"mdat", b"frame-data")].concat()
    }

    #[test]
    fn splits_init_and_fragments_across_arbitrary_writes() {
        let init = init_segment();
        let f1 = fragment(Some(0x0200_0000), 0);
        let f2 = fragment(None, 1000);
        let prft = make_box(b"prft", &[0; 16]);
        let f2_with_prft = [prft, f2.clone()].concat();
        let stream = [init.clone(), f1.clone(), f2_with_prft.clone()].concat();

        for chunk in [1usize, 3, 7, 64, stream.len()] {
            let mut splitter = Splitter::new();
            let mut segments = Vec::new();
            for piece in stream.chunks(chunk) {
                segments.extend(splitter.push(piece).unwrap());
            }
            assert_eq!(splitter.pending(), 0, "chunk {chunk}");
            assert_eq!(segments.len(), 3, "chunk {chunk}");
            assert_eq!(segments[0], Segment::Init(init.clone()));
            let Segment::Fragment { bytes, moof } = &segments[2] else { panic!("not a fragment") };
            assert_eq!(bytes, &f2_with_prft, "prft stays with its fragment");
            assert_eq!(&bytes[moof.start - 4..moof.start], b"moof");
        }
    }

    #[test]
    fn a_run_of_four_billion_samples_without_fields_is_summed_not_walked() {
        let tracks = parse_init(&init_segment()).unwrap();
        let tfhd = make_box(b"tfhd", &full(0, 0x02_0000, &1u32.to_be_bytes()));
        let trun = make_box(b"trun", &full(0, 0, &u32::MAX.to_be_bytes()));
        let traf = make_box(b"traf", &[tfhd, trun.clone(), trun].concat());
        let moof = make_box(b"moof", &traf);
        let runs = parse_moof(&moof[8..], &tracks).unwrap();
        assert_eq!(runs[0].sample_count, u32::MAX, "saturates");
        assert_eq!(runs[0].duration, 2 * u64::from(u32::MAX) * 500, "durations from trex");
        assert!(!runs[0].starts_with_sync, "trex's default flags say not sync");
    }

    #[test]
    fn reads_tracks_and_runs() {
        let tracks = parse_init(&init_segment()).unwrap();
        assert_eq!(tracks.len(), 1);
        assert_eq!(tracks[0].track_id, 1);
        assert_eq!(tracks[0].timescale, 15000);
        assert_eq!(tracks[0].kind, TrackKind::Video);
        assert_eq!(&tracks[0].sample_entry[4..8], b"avc1");
        assert_eq!(tracks[0].default_duration, 500);

        let key = fragment(Some(0x0200_0000), 0);
        let runs = parse_moof(&key[8..key.len() - 18], &tracks).unwrap();
        assert_eq!(runs.len(), 1);
        assert!(runs[0].starts_with_sync, "first_sample_flags says sync");
        assert_eq!(runs[0].sample_count, 2);
        assert_eq!(runs[0].duration, 1000, "durations come from trex");

        let delta = fragment(None, 1000);
        let runs = parse_moof(&delta[8..delta.len() - 18], &tracks).unwrap();
        assert!(!runs[0].starts_with_sync, "trex default flags say non-sync");
        assert_eq!(runs[0].base_decode_time, 1000);
        assert_eq!(runs[0].duration, 1500);
    }

    #[test]
    fn prft_round_trips() {
        let wallclock = 1_795_000_000_123_456u64;
        let b = prft_box(1, wallclock, 90_000);
        let header = parse_box_header(&b).unwrap().unwrap();
        assert_eq!((&header.kind, header.total_len), (b"prft", 32));
        let (track, clock, media) = parse_prft(&b[8..]).unwrap();
        assert_eq!((track, media), (1, 90_000));
        assert!(clock.abs_diff(wallclock) <= 1, "{clock} vs {wallclock}");
        assert_eq!(ntp_from_unix_us(0) >> 32, NTP_UNIX_OFFSET_SECS);
        assert!(parse_prft(&b[8..20]).is_err());
    }

    #[test]
    fn accepts_64_bit_sizes() {
        let payload = b"abc";
        let mut large = 1u32.to_be_bytes().to_vec();
        large.extend_from_slice(b"free");
        large.extend_from_slice(&(16 + payload.len() as u64).to_be_bytes());
        large.extend_from_slice(payload);
        let header = parse_box_header(&large).unwrap().unwrap();
        assert_eq!(header.header_len, 16);
        assert_eq!(header.total_len, 19);
        assert_eq!(parse_box_header(&large[..12]).unwrap(), None, "needs the 64-bit size");

        let stream = [init_segment(), large, fragment(None, 0)].concat();
        let segments = Splitter::new().push(&stream).unwrap();
        assert_eq!(segments.len(), 2);
    }

    #[test]
    fn rejects_garbage() {
        let mut s = Splitter::new();
        assert!(matches!(s.push(&[0, 0, 0, 3, b'a', b'b', b'c', b'd']), Err(Fmp4Error::BadSize { .. })));
        assert!(s.push(&init_segment()).is_err(), "stays failed");

        let mut s = Splitter::new();
        assert!(matches!(s.push(&[0, 0, 0, 0, b'm', b'o', b'o', b'f']), Err(Fmp4Error::BadSize { .. })));

        let mut s = Splitter::new();
        let huge = [0xff, 0xff, 0xff, 0xff, b'm', b'd', b'a', b't'];
        assert!(matches!(s.push(&huge), Err(Fmp4Error::TooLarge { .. })));

        let mut s = Splitter::new();
        assert!(matches!(s.push(&fragment(None, 0)), Err(Fmp4Error::Unexpected { .. })));

        let mut s = Splitter::new();
        let orphan = [init_segment(), make_box(b"mdat", b"x")].concat();
        assert!(matches!(s.push(&orphan), Err(Fmp4Error::Unexpected { .. })));

        // Random bytes never panic.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut s = Splitter::new();
            let len = (seed % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = s.push(&bytes);
            let _ = parse_init(&bytes);
            let _ = parse_moof(&bytes, &[]);
        }
    }

    #[test]
    fn truncated_children_are_errors() {
        let mut moof = fragment(None, 0);
        moof.truncate(30);
        assert!(parse_moof(&moof[8..], &[]).is_err());
        assert!(parse_init(&init_segment()[..40]).is_err());
    }
}
