//! Ends each H.264 or HEVC access unit on its RTP marker for libavformat: a rewriter of the bytes an RTSP
//! camera sends over TCP (RTSP messages and `$`-interleaved RTP) that adds, after every H.264 or H.265 packet
//! carrying the marker bit, one packet holding an access unit delimiter of that codec (NAL type 9 or 35), and
//! renumbers the packets after it.
//!
//! libavformat's H.264 and HEVC parsers close a frame only when the next one starts, so every frame of an RTSP
//! camera waited one frame interval (33 ms at 30 fps) in the demuxer (docs/design.md, section 6). An access
//! unit delimiter starts the next access unit: the parser hands out the frame as soon as the delimiter
//! arrives, right behind the frame's last packet. The parser dates the next frame by the delimiter's packet,
//! so that packet carries the next frame's expected timestamp: this one's plus the median of the recent frame
//! intervals. A stream whose timestamps go back (B-frames, sent in decode order) has no such expectation and
//! is left to the parser. Pure: the sockets are in `rtsp_relay.rs`.

use thiserror::Error;

/// Longest RTSP message head taken before the stream counts as broken.
const MAX_HEAD: usize = 64 * 1024;
/// Largest RTSP message body (an SDP) taken.
const MAX_BODY: usize = 1024 * 1024;
/// The injected H.264 NAL unit: an access unit delimiter (type 9), any slice type (`primary_pic_type` 7).
const H264_AUD: [u8; 2] = [0x09, 0xf0];
/// The injected HEVC NAL unit: an access unit delimiter (type 35, layer 0, temporal id 0), any slice type
/// (`pic_type` 2) and the RBSP stop bit.
const HEVC_AUD: [u8; 3] = [35 << 1, 0x01, 0x50];
/// RTP fixed header length.
const RTP_HEADER: usize = 12;
/// Frame intervals the expected next timestamp is the median of.
const INTERVALS: usize = 9;

/// Why the camera's byte stream cannot be framed; the relay then passes the rest through unchanged.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpliceError {
    /// An RTSP message head longer than [`MAX_HEAD`] bytes without its blank line.
    #[error("an RTSP message head longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    /// A `Content-Length` that is not a number or is larger than [`MAX_BODY`].
    #[error("an RTSP message with a bad Content-Length: {0}")]
    BadLength(String),
}

/// What the splice has done, for stats and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpliceCounts {
    /// Access unit delimiters added after a marker.
    pub injected: u64,
    /// The camera's own single-NAL delimiters dropped because one was added in their place.
    pub dropped: u64,
    /// Whether a stream's timestamps went back, which stopped the adding on its channel.
    pub reordered: bool,
}

/// Per interleaved channel: how far its sequence numbers are shifted, whether a delimiter was just added, and
/// the timestamps that date the next one.
#[derive(Debug, Clone, Copy, Default)]
struct Channel {
    shift: u16,
    after_injection: bool,
    last_ts: Option<u32>,
    intervals: [u32; INTERVALS],
    known: usize,
    reordered: bool,
}

impl Channel {
    /// Takes a packet's timestamp into the recent frame intervals.
    fn timestamp(&mut self, ts: u32) {
        if let Some(last) = self.last_ts.filter(|&last| last != ts) {
            let step = ts.wrapping_sub(last);
            // More than half the 32-bit range ahead is behind.
            if step > u32::MAX / 2 {
                self.reordered = true;
            } else {
                self.intervals[self.known % INTERVALS] = step;
                self.known += 1;
            }
        }
        self.last_ts = Some(ts);
    }

    /// The next frame's expected timestamp after one at `ts`, if the stream has one.
    fn next_timestamp(&self, ts: u32) -> Option<u32> {
        if self.reordered || self.known == 0 {
            return None;
        }
        let mut recent: Vec<u32> = self.intervals[..self.known.min(INTERVALS)].to_vec();
        recent.sort_unstable();
        Some(ts.wrapping_add(recent[recent.len() / 2]))
    }
}

/// The video codec of an RTP payload type, as the SDP maps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    H264,
    Hevc,
}

/// The rewriter of one RTSP connection's camera-to-client bytes.
#[derive(Debug)]
pub struct MarkerSplice {
    pending: Vec<u8>,
    /// RTP payload types the SDP maps to H.264 (and to nothing else), as a bit set.
    h264_types: u128,
    hevc_types: u128,
    channels: [Channel; 256],
    counts: SpliceCounts,
    broken: bool,
}

impl Default for MarkerSplice {
    fn default() -> Self {
        Self {
            pending: Vec::new(),
            h264_types: 0,
            hevc_types: 0,
            channels: [Channel::default(); 256],
            counts: SpliceCounts::default(),
            broken: false,
        }
    }
}

impl MarkerSplice {
    /// A splice that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// What it has done so far.
    pub fn counts(&self) -> SpliceCounts {
        self.counts
    }

    /// Takes the next bytes from the camera, in any pieces, and appends what to send on to `out`. After an
    /// error, this and every later call pass the bytes through unchanged.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), SpliceError> {
        if self.broken {
            out.extend_from_slice(input);
            return Ok(());
        }
        self.pending.extend_from_slice(input);
        let mut start = 0;
        let result = loop {
            match self.item(start, out) {
                Ok(Some(used)) => start += used,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if result.is_err() {
            self.broken = true;
            out.extend_from_slice(&self.pending[start..]);
            self.pending.clear();
        } else {
            self.pending.drain(..start);
        }
        result
    }

    /// Handles the item that starts at `start` if it is complete: its length, or `None` to wait for more.
    fn item(&mut self, start: usize, out: &mut Vec<u8>) -> Result<Option<usize>, SpliceError> {
        let buf = &self.pending[start..];
        let Some(&first) = buf.first() else { return Ok(None) };
        if first == b'$' {
            let Some(head) = buf.get(..4) else { return Ok(None) };
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let Some(packet) = buf.get(4..4 + len) else { return Ok(None) };
            let packet = packet.to_vec();
            self.interleaved(head[1], &packet, out);
            return Ok(Some(4 + len));
        }
        let Some(head_end) = find(buf, b"\r\n\r\n") else {
            return if buf.len() > MAX_HEAD { Err(SpliceError::HeadTooLong) } else { Ok(None) };
        };
        if head_end > MAX_HEAD {
            return Err(SpliceError::HeadTooLong);
        }
        let head = &buf[..head_end];
        let body_len = content_length(head)?;
        let total = head_end + 4 + body_len;
        let Some(message) = buf.get(..total) else { return Ok(None) };
        if is_sdp(head) {
            let sdp = &message[head_end + 4..];
            self.h264_types = payload_types(sdp, "H264");
            self.hevc_types = payload_types(sdp, "H265");
        }
        out.extend_from_slice(message);
        Ok(Some(total))
    }

    fn interleaved(&mut self, channel: u8, packet: &[u8], out: &mut Vec<u8>) {
        let ch = &mut self.channels[usize::from(channel)];
        let rtp = packet.len() >= RTP_HEADER && packet[0] >> 6 == 2;
        let payload_type = 1u128 << (packet.get(1).map_or(0, |b| b & 0x7f));
        let codec = match (rtp, self.h264_types & payload_type != 0, self.hevc_types & payload_type != 0) {
            (true, true, _) => Codec::H264,
            (true, _, true) => Codec::Hevc,
            _ => {
                push_frame(out, channel, packet);
                return;
            }
        };
        if ch.after_injection && is_single_aud(packet, codec) {
            // The camera's own delimiter would be a second one in the access unit the added one opened.
            ch.after_injection = false;
            ch.shift = ch.shift.wrapping_sub(1);
            self.counts.dropped += 1;
            return;
        }
        ch.after_injection = false;
        let ts = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        ch.timestamp(ts);
        self.counts.reordered |= ch.reordered;
        let seq = u16::from_be_bytes([packet[2], packet[3]]).wrapping_add(ch.shift);
        let mut shifted = packet.to_vec();
        shifted[2..4].copy_from_slice(&seq.to_be_bytes());
        push_frame(out, channel, &shifted);
        // Only a frame's last packet is followed by a delimiter, so only it needs the expected timestamp.
        let marker = packet[1] & 0x80 != 0;
        if let Some(next) = marker.then(|| ch.next_timestamp(ts)).flatten() {
            let delimiter: &[u8] = match codec {
                Codec::H264 => &H264_AUD,
                Codec::Hevc => &HEVC_AUD,
            };
            let mut aud = Vec::with_capacity(RTP_HEADER + delimiter.len());
            aud.push(0x80);
            aud.push(packet[1] & 0x7f);
            aud.extend_from_slice(&seq.wrapping_add(1).to_be_bytes());
            aud.extend_from_slice(&next.to_be_bytes());
            aud.extend_from_slice(&packet[8..12]);
            aud.extend_from_slice(delimiter);
            push_frame(out, channel, &aud);
            ch.shift = ch.shift.wrapping_add(1);
            ch.after_injection = true;
            self.counts.injected += 1;
        }
    }
}

fn push_frame(out: &mut Vec<u8>, channel: u8, packet: &[u8]) {
    out.extend_from_slice(&[b'$', channel]);
    // A packet read from a `$` frame is at most u16::MAX long, and the added one is 14 or 15 bytes.
    out.extend_from_slice(&u16::try_from(packet.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(packet);
}

/// Whether an RTP packet carries exactly one NAL unit and it is an access unit delimiter.
fn is_single_aud(packet: &[u8], codec: Codec) -> bool {
    let csrcs = usize::from(packet[0] & 0x0f) * 4;
    let mut at = RTP_HEADER + csrcs;
    if packet[0] & 0x10 != 0 {
        let Some(ext) = packet.get(at + 2..at + 4) else { return false };
        at += 4 + usize::from(u16::from_be_bytes([ext[0], ext[1]])) * 4;
    }
    packet.get(at).is_some_and(|&nal| match codec {
        Codec::H264 => nal & 0x1f == 9,
        Codec::Hevc => (nal >> 1) & 0x3f == crate::hevc::AUD,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The lines of a message head after its start line, as (lower-case name, trimmed value).
fn headers(head: &[u8]) -> impl Iterator<Item = (String, &str)> {
    head.split(|&b| b == b'\n').skip(1).filter_map(|line| {
        let line = std::str::from_utf8(line).ok()?;
        let (name, value) = line.split_once(':')?;
        Some((name.trim().to_ascii_lowercase(), value.trim()))
    })
}

fn content_length(head: &[u8]) -> Result<usize, SpliceError> {
    match headers(head).find(|(name, _)| name == "content-length") {
        None => Ok(0),
        Some((_, value)) => match value.parse::<usize>() {
            Ok(n) if n <= MAX_BODY => Ok(n),
            _ => Err(SpliceError::BadLength(value.chars().take(20).collect())),
        },
    }
}

fn is_sdp(head: &[u8]) -> bool {
    headers(head)
        .any(|(name, value)| name == "content-type" && value.to_ascii_lowercase().starts_with("application/sdp"))
}

/// The dynamic payload types an SDP maps to `encoding` (H264, H265), leaving out any that another media
/// section maps to something else (packets of that type could then be either).
fn payload_types(sdp: &[u8], encoding_name: &str) -> u128 {
    let (mut wanted, mut other) = (0u128, 0u128);
    for line in String::from_utf8_lossy(sdp).lines() {
        let Some(map) = line.trim().strip_prefix("a=rtpmap:") else { continue };
        let Some((pt, encoding)) = map.split_once(' ') else { continue };
        let Ok(pt) = pt.trim().parse::<u8>() else { continue };
        if pt > 127 {
            continue;
        }
        let name = encoding.trim().split('/').next().unwrap_or("");
        if name.eq_ignore_ascii_case(encoding_name) {
            wanted |= 1 << pt;
        } else {
            other |= 1 << pt;
        }
    }
    wanted & !other
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=x\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
                       a=control:stream=0\r\nm=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/2\r\n";

    fn describe_reply(sdp: &str) -> Vec<u8> {
        format!(
            "RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
        .into_bytes()
    }

    fn rtp(pt: u8, marker: bool, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn framed(channel: u8, packet: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_frame(&mut out, channel, packet);
        out
    }

    /// (channel, payload type, marker, sequence number, first payload byte) of every `$` frame in `bytes`.
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, bool, u16, u8)> {
        let mut at = bytes.iter().position(|&b| b == b'$').unwrap_or(bytes.len());
        let mut v = Vec::new();
        while at + 4 <= bytes.len() {
            let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
            let p = &bytes[at + 4..at + 4 + len];
            v.push((bytes[at + 1], p[1] & 0x7f, p[1] & 0x80 != 0, u16::from_be_bytes([p[2], p[3]]), p[12]));
            at += 4 + len;
        }
        v
    }

    fn session() -> Vec<u8> {
        let mut input = describe_reply(SDP);
        input.extend(b"RTSP/1.0 200 OK\r\nCSeq: 3\r\nTransport: RTP/AVP/TCP;interleaved=0-1\r\n\r\n");
        input.extend(framed(0, &rtp(96, false, 65534, 0, &[0x7c, 0x85, 1, 2])));
        input.extend(framed(0, &rtp(96, true, 65535, 0, &[0x7c, 0x45, 3])));
        input.extend(framed(2, &rtp(97, true, 9, 0, &[0x00, 0x10])));
        input.extend(framed(1, &[0x80, 200, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        input.extend(framed(0, &rtp(96, false, 0, 3000, &[0x09, 0xf0])));
        input.extend(framed(0, &rtp(96, true, 1, 3000, &[0x41, 7])));
        input.extend(framed(0, &rtp(96, false, 2, 6000, &[0x09, 0xf0])));
        input.extend(framed(0, &rtp(96, true, 3, 6000, &[0x41, 8])));
        input
    }

    #[test]
    fn a_delimiter_follows_every_marker_and_the_rest_is_renumbered() {
        let mut splice = MarkerSplice::new();
        let mut out = Vec::new();
        splice.feed(&session(), &mut out).unwrap();
        assert!(out.starts_with(&describe_reply(SDP)), "the RTSP replies pass unchanged");
        assert_eq!(
            frames(&out),
            vec![
                (0, 96, false, 65534, 0x7c),
                // no frame interval known yet: nothing to date a delimiter with
                (0, 96, true, 65535, 0x7c),
                (2, 97, true, 9, 0x00), // audio: not H.264, untouched
                (1, 72, true, 3, 0),    // RTCP (200 = marker bit + 72)
                (0, 96, false, 0, 0x09),
                (0, 96, true, 1, 0x41),
                (0, 96, false, 2, 0x09), // added
                // the camera's own delimiter, right after the added one, is dropped
                (0, 96, true, 3, 0x41),
                (0, 96, false, 4, 0x09), // added
            ]
        );
        assert_eq!(splice.counts(), SpliceCounts { injected: 2, dropped: 1, reordered: false });
        let added = &out[out.len() - 14..];
        assert_eq!(&added[4..8], &9000u32.to_be_bytes(), "the next frame's expected timestamp");
        assert_eq!(&added[8..12], &0x1234_5678u32.to_be_bytes(), "the stream's SSRC");
        assert_eq!(&added[12..], &H264_AUD);
    }

    #[test]
    fn hevc_gets_hevc_delimiters_and_h264_beside_it_its_own() {
        // A camera with an H.265 main stream (RFC 7798 payload headers: 2 bytes, type in bits 1-6) and an
        // H.264 one on the same connection.
        let sdp = "v=0\r\ns=x\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H265/90000\r\n\
                   m=video 0 RTP/AVP 98\r\na=rtpmap:98 H264/90000\r\n";
        let mut input = describe_reply(sdp);
        let idr = [19 << 1, 1, 0xaf];
        let trail = [1 << 1, 1, 0xd0];
        let camera_aud = [35 << 1, 1, 0x50];
        for (seq, ts) in [(0u16, 0u32), (1, 3000)] {
            input.extend(framed(0, &rtp(96, true, seq, ts, if seq == 0 { &idr } else { &trail })));
            input.extend(framed(2, &rtp(98, true, seq, ts, &[0x41])));
        }
        input.extend(framed(0, &rtp(96, false, 2, 6000, &camera_aud)));
        input.extend(framed(0, &rtp(96, true, 3, 6000, &trail)));
        let mut splice = MarkerSplice::new();
        let mut out = Vec::new();
        splice.feed(&input, &mut out).unwrap();
        let hevc: Vec<_> = frames(&out).into_iter().filter(|f| f.0 == 0).map(|f| (f.3, f.4 >> 1 & 0x3f)).collect();
        assert_eq!(hevc, vec![(0, 19), (1, 1), (2, 35), (3, 1), (4, 35)], "(seq, NAL type); the camera's AUD dropped");
        let h264: Vec<_> = frames(&out).into_iter().filter(|f| f.0 == 2).map(|f| f.4).collect();
        assert_eq!(h264, vec![0x41, 0x41, 0x09], "H.264's own delimiter on its channel");
        assert_eq!(splice.counts(), SpliceCounts { injected: 3, dropped: 1, reordered: false });
        assert_eq!(&out[out.len() - 3..], &HEVC_AUD);
    }

    /// The timestamps of the delimiters added after frames at `stamps`, one packet each.
    fn added_after(stamps: &[u32]) -> (Vec<u32>, SpliceCounts) {
        let mut input = describe_reply(SDP);
        for (seq, &ts) in stamps.iter().enumerate() {
            input.extend(framed(0, &rtp(96, true, seq as u16, ts, &[0x41])));
        }
        let mut splice = MarkerSplice::new();
        let mut out = Vec::new();
        splice.feed(&input, &mut out).unwrap();
        let start = describe_reply(SDP).len();
        let mut at = start;
        let mut added = Vec::new();
        while at < out.len() {
            let len = usize::from(u16::from_be_bytes([out[at + 2], out[at + 3]]));
            let p = &out[at + 4..at + 4 + len];
            if p[12] == 0x09 {
                added.push(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
            }
            at += 4 + len;
        }
        (added, splice.counts())
    }

    #[test]
    fn the_next_timestamp_is_the_median_interval_ahead() {
        // A steady camera, one that skips a frame, one whose timestamps wrap, one with jitter.
        assert_eq!(added_after(&[0, 3000, 6000, 9000]).0, vec![6000, 9000, 12000]);
        assert_eq!(added_after(&[0, 3000, 6000, 12000, 15000]).0, vec![6000, 9000, 15000, 18000]);
        let wrap = u32::MAX - 999;
        assert_eq!(added_after(&[wrap, 2000, 5000]).0, vec![5000, 8000]);
        assert_eq!(added_after(&[0, 2990, 6010, 9000]).0, vec![5980, 9030, 11990]);
    }

    #[test]
    fn timestamps_that_go_back_stop_the_adding() {
        // B-frames are sent in decode order: I0 P3 B1 B2 P6 (in frame intervals of 3000).
        let (added, counts) = added_after(&[0, 9000, 3000, 6000, 18000]);
        assert_eq!(added, vec![18000], "only after the first frame interval, before the reordering shows");
        assert!(counts.reordered);
    }

    #[test]
    fn any_split_of_the_input_gives_the_same_output() {
        let input = session();
        let mut whole = Vec::new();
        MarkerSplice::new().feed(&input, &mut whole).unwrap();
        for size in [1, 2, 3, 5, 7, 13, 64] {
            let mut splice = MarkerSplice::new();
            let mut out = Vec::new();
            for piece in input.chunks(size) {
                splice.feed(piece, &mut out).unwrap();
            }
            assert_eq!(out, whole, "pieces of {size}");
        }
    }

    #[test]
    fn without_an_sdp_naming_h264_or_h265_nothing_changes() {
        let cases = [
            "",
            "m=video 0 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n",
            // one payload type for two codecs: a packet of it could be either
            "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\nm=audio 0 RTP/AVP 96\r\na=rtpmap:96 PCMA/8000\r\n",
        ];
        for sdp in cases {
            let mut input = if sdp.is_empty() { Vec::new() } else { describe_reply(sdp) };
            input.extend(framed(0, &rtp(96, true, 7, 0, &[0x65, 1])));
            let mut out = Vec::new();
            MarkerSplice::new().feed(&input, &mut out).unwrap();
            assert_eq!(out, input, "{sdp:?}");
        }
        let sdp = b"a=rtpmap:98 h264/90000\na=rtpmap:300 H264/90000\na=rtpmap:x H264\na=rtpmap:99 H265/90000";
        assert_eq!(payload_types(sdp, "H264"), 1 << 98);
        assert_eq!(payload_types(sdp, "H265"), 1 << 99);
    }

    #[test]
    fn a_stream_that_cannot_be_framed_passes_through() {
        let long = vec![b'R'; MAX_HEAD + 1];
        let bad_length = b"RTSP/1.0 200 OK\r\nContent-Length: lots\r\n\r\n$\x00\x00\x0c".to_vec();
        let huge = format!("RTSP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1).into_bytes();
        for (input, error) in [
            (long, SpliceError::HeadTooLong),
            (bad_length, SpliceError::BadLength("lots".into())),
            (huge, SpliceError::BadLength((MAX_BODY + 1).to_string())),
        ] {
            let mut splice = MarkerSplice::new();
            let mut out = describe_reply(SDP);
            let before = out.len();
            assert_eq!(splice.feed(&input, &mut out), Err(error));
            assert_eq!(&out[before..], &input[..]);
            let marker = framed(0, &rtp(96, true, 1, 0, &[0x65]));
            splice.feed(&marker, &mut out).unwrap();
            assert!(out.ends_with(&marker), "nothing is added once broken");
        }
    }

    #[test]
    fn a_delimiter_behind_csrcs_and_an_extension_is_found() {
        let mut p = rtp(96, false, 1, 0, &[]);
        p[0] = 0x80 | 0x10 | 1;
        p.extend_from_slice(&[0, 0, 0, 1]); // one CSRC
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0, 0, 0, 0]); // a one-word extension
        p.push(0x09);
        assert!(is_single_aud(&p, Codec::H264));
        assert!(!is_single_aud(&p, Codec::Hevc), "type 4 in HEVC's header bits");
        p.truncate(p.len() - 1);
        assert!(!is_single_aud(&p, Codec::H264));
        p.extend_from_slice(&[35 << 1, 1, 0x50]);
        assert!(is_single_aud(&p, Codec::Hevc));
        let stap = rtp(96, false, 1, 0, &[0x18, 0, 2, 0x09, 0xf0]);
        assert!(!is_single_aud(&stap, Codec::H264), "a STAP-A is left alone");
        let aggregation = rtp(96, false, 1, 0, &[48 << 1, 1, 0, 3, 35 << 1, 1, 0x50]);
        assert!(!is_single_aud(&aggregation, Codec::Hevc), "an HEVC aggregation packet too");
    }
}
