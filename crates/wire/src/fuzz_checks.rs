//! What each fuzz target checks, on any bytes: never a panic, and the target's own invariant (asserted).
//!
//! The libFuzzer targets in `fuzz/` are one line each around these, and `tests/fuzz_seeds.rs` replays every
//! committed seed through them in the ordinary test run, so a seed that once crashed stays checked even where
//! the fuzzer does not run. The first byte of most inputs says where to cut the rest into pieces: a parser fed
//! in pieces must behave as one fed whole.

use crate::fmp4::{self, Segment, Splitter};
use crate::marker_splice::MarkerSplice;
use crate::mqtt_frames::{read_connect, Framer};
use crate::pieces::{segment_len, split, starts_segment, Piece, Reassembler};
use crate::policy::{AllowList, NamedSource, Policy};
use crate::protocol::{parse_request, reply_topic_hint, validate_reply_topic, RequestKind, RequestLimits};
use crate::rtmp::chunk::{ChunkReader, MAX_MESSAGE_LEN};
use crate::rtmp::{flv, PublishSession};
use crate::rtsp::message::{Incoming, Reader as RtspReader};
use crate::rtsp::{auth, sdp as rtsp_sdp, url as rtsp_url};
use crate::{aac, h264, hevc};

/// One target's checks: any bytes in; a failed check panics, as libFuzzer expects.
pub type Check = fn(&[u8]);

/// Every target by the name of its `fuzz/fuzz_targets/<name>.rs` and its seed folder.
pub const TARGETS: [(&str, Check); 14] = [
    ("fmp4", fmp4),
    ("hevc_parameter_sets", hevc_parameter_sets),
    ("marker_splice", marker_splice),
    ("media_headers", media_headers),
    ("mqtt_frames", mqtt_frames),
    ("pieces", pieces),
    ("policy", policy),
    ("request", request),
    ("rtmp_chunks", rtmp_chunks),
    ("rtmp_session", rtmp_session),
    ("rtmp_tags", rtmp_tags),
    ("rtsp_messages", rtsp_messages),
    ("sdp", sdp),
    ("talk_frames", talk_frames),
];

/// The input's first byte as a piece length (at least 1) and the rest.
fn cut(data: &[u8]) -> Option<(usize, &[u8])> {
    data.split_first().map(|(&cut, rest)| (usize::from(cut).max(1), rest))
}

/// The fMP4 box splitter and the init, moof and prft parsers, as the bench and the tests read server output.
pub fn fmp4(data: &[u8]) {
    let Some((step, bytes)) = cut(data) else { return };
    let mut splitter = Splitter::new();
    let mut tracks = Vec::new();
    for piece in bytes.chunks(step * 13) {
        let Ok(segments) = splitter.push(piece) else { return };
        for segment in segments {
            match segment {
                Segment::Init(init) => tracks = fmp4::parse_init(&init).unwrap_or_default(),
                Segment::Fragment { bytes, moof } => {
                    if let Some(moof) = bytes.get(moof) {
                        let _ = fmp4::parse_moof(moof, &tracks);
                    }
                    if let Ok(Some(prft)) = fmp4::find_box(&bytes, b"prft") {
                        let _ = fmp4::parse_prft(prft);
                    }
                }
            }
        }
    }
}

/// The RTSP marker splice: the output does not depend on where a camera's bytes were cut.
pub fn marker_splice(data: &[u8]) {
    let Some((step, bytes)) = cut(data) else { return };
    let mut whole = Vec::new();
    let whole_result = MarkerSplice::new().feed(bytes, &mut whole);
    let mut splice = MarkerSplice::new();
    let mut pieces = Vec::new();
    let mut first_error = None;
    for piece in bytes.chunks(step) {
        if let Err(e) = splice.feed(piece, &mut pieces) {
            first_error.get_or_insert(e);
        }
    }
    if whole_result.is_ok() && first_error.is_none() {
        assert_eq!(whole, pieces);
    }
}

/// What the pipeline reads itself from a source: an H.264 SPS, ADTS headers, an RTMP aggregate's FLV tags.
pub fn media_headers(data: &[u8]) {
    if let Ok(sps) = h264::parse_sps(data) {
        assert!(sps.width > 0 && sps.height > 0);
    }
    let _ = aac::adts_config(data);
    let _ = flv::tags(data);
}

/// An HEVC `hvcC` and the SPS in it or in any bytes (a camera's in-band parameter sets): what parses has a
/// size, its codec string names its sample entry, and the `hvcC` header and its SPS agree.
pub fn hevc_parameter_sets(data: &[u8]) {
    if let Ok(sps) = hevc::parse_sps(data) {
        assert!(sps.width > 0 && sps.height > 0);
        assert!(sps.ptl.codec_string("hvc1").starts_with("hvc1."));
    }
    let Ok(hvcc) = hevc::parse_hvcc(data) else { return };
    for nal in &hvcc.nals {
        if let Ok(sps) = hevc::parse_sps(nal) {
            let _ = sps.browser_decodable();
        }
    }
    let _ = hevc::in_band_parameter_sets(data);
}

/// MQTT packets from a browser cut into WebSocket messages anywhere, and the CONNECT read for its keep-alive.
pub fn mqtt_frames(data: &[u8]) {
    let Some((step, bytes)) = cut(data) else { return };
    let mut framer = Framer::new(64 * 1024);
    let mut packets = Vec::new();
    for piece in bytes.chunks(step) {
        if framer.push(piece, &mut packets).is_err() {
            return;
        }
    }
    for p in &packets {
        let _ = read_connect(p);
    }
}

/// Segments in pieces: any messages into a reassembler (never a panic; what comes out is one whole segment),
/// and a segment made of the input, cut at the first byte's limit, back byte for byte.
pub fn pieces(data: &[u8]) {
    let Some((step, bytes)) = cut(data) else { return };
    let mut r = Reassembler::default();
    for message in bytes.chunks(step) {
        let message = bytes::Bytes::copy_from_slice(message);
        if let Ok(Piece::Segment(s)) = r.push(&message) {
            assert!(starts_segment(&s), "a segment out starts like one");
            assert!(segment_len(&s).is_some_and(|n| n <= s.len()), "and is whole");
        }
    }
    let moof_len = bytes.len().min(step);
    let mut segment = Vec::with_capacity(bytes.len() + 16);
    segment.extend_from_slice(&(moof_len as u32 + 8).to_be_bytes());
    segment.extend_from_slice(b"moof");
    segment.extend_from_slice(&bytes[..moof_len]);
    segment.extend_from_slice(&((bytes.len() - moof_len) as u32 + 8).to_be_bytes());
    segment.extend_from_slice(b"mdat");
    segment.extend_from_slice(&bytes[moof_len..]);
    let segment = bytes::Bytes::from(segment);
    let cut_at = 16 + step;
    let parts = split(&segment, cut_at);
    assert_eq!(parts.concat(), segment.to_vec(), "the pieces are the segment's bytes in order");
    assert!(parts.iter().skip(1).all(|p| !starts_segment(p)), "no later piece starts like a segment");
    let mut r = Reassembler::default();
    let out: Vec<_> = parts.iter().filter_map(|p| r.push(p).ok()).collect();
    assert_eq!(out.last(), Some(&Piece::Segment(segment)), "and come back whole");
}

/// The URL allow-list: what it allows is under an allowed prefix or a named source.
pub fn policy(data: &[u8]) {
    let Ok(url) = std::str::from_utf8(data) else { return };
    let sources = [NamedSource::new("Door", "rtsp://viewer:secret@192.168.1.20:554/stream1", "")];
    let allow = AllowList {
        urls: vec!["https://example.com/live.m3u8".into()],
        prefixes: vec!["rtsp://cameras.example.net/".into(), "http://[::1]:8000/hls/".into()],
    };
    let Ok(policy) = Policy::new(&sources, &allow) else { return };
    if let Ok(allowed) = policy.check(url) {
        let u = allowed.url.to_ascii_lowercase();
        assert!(
            u.starts_with("rtsp://cameras.example.net/")
                || u.starts_with("http://[::1]:8000/hls/")
                || u == "https://example.com/live.m3u8"
                || u.starts_with("rtsp://viewer:secret@192.168.1.20:554/stream1"),
            "allowed outside the list: {}",
            allowed.url
        );
    }
}

/// Control requests as pages publish them: what parses obeys the topic rules.
pub fn request(data: &[u8]) {
    let limits = RequestLimits { max_request_bytes: 4096, prefix: "video".into(), reply_prefix: "pages/".into() };
    for kind in RequestKind::ALL {
        if let Ok(request) = parse_request(kind, data, &limits) {
            assert!(validate_reply_topic(request.reply_topic(), "video").is_ok());
        }
    }
    if let Some(topic) = reply_topic_hint(data, &limits) {
        assert!(validate_reply_topic(&topic, "video").is_ok());
    }
}

/// The RTMP chunk stream reader alone, with a verified publisher's limits.
pub fn rtmp_chunks(data: &[u8]) {
    let Some((step, bytes)) = cut(data) else { return };
    let mut reader = ChunkReader::new(MAX_MESSAGE_LEN, 1 << 20);
    let mut out = Vec::new();
    for piece in bytes.chunks(step) {
        if reader.push(piece, &mut out).is_err() {
            return;
        }
        out.clear();
    }
}

/// The RTMP endpoint's server side: media only after a publish with the right key.
pub fn rtmp_session(data: &[u8]) {
    let Some((step, bytes)) = cut(data) else { return };
    let mut session = PublishSession::new(Some("the-right-key-42"));
    let mut published = false;
    for piece in bytes.chunks(step * 7) {
        let Ok(out) = session.push(piece) else { return };
        assert!(published || out.media.is_empty(), "media before a verified publish");
        if out.publish {
            published = true;
            if session.accept().is_err() {
                return;
            }
        }
    }
}

/// The relay's remux of a verified publisher's tags (each: a kind, a timestamp step, a length, the data; a
/// first byte may give the metadata's tracks): FLV or Matroska, refused or written, never a panic.
pub fn rtmp_tags(data: &[u8]) {
    use crate::rtmp::remux::Remux;
    let mut remux = Remux::default();
    let (mut held, mut out) = (Vec::new(), Vec::new());
    let Some((&first, mut rest)) = data.split_first() else { return };
    if first & 1 == 1 {
        remux.metadata((first & 2 != 0, first & 4 != 0));
    }
    let mut timestamp = 0u32;
    while let [kind, step, len, body @ ..] = rest {
        let n = usize::from(*len).min(body.len());
        let tag_type = [flv::AUDIO, flv::VIDEO, flv::SCRIPT][usize::from(*kind % 3)];
        timestamp = timestamp.wrapping_add(u32::from(*step));
        if remux.tag(&mut held, tag_type, timestamp, &body[..n], &mut out).is_err() {
            return;
        }
        rest = &body[n..];
    }
    if !out.is_empty() {
        let magic: &[u8] = if remux.is_matroska() { &[0x1A, 0x45, 0xDF, 0xA3] } else { b"FLV" };
        assert!(out.starts_with(magic), "a stream that starts with its header");
    }
}

/// What a camera sends on the backchannel's RTSP/TCP connection: read in pieces as read whole (the same
/// messages, or the same error), and every response's SDP, login challenges and session read as the session
/// reads them.
pub fn rtsp_messages(data: &[u8]) {
    let Some((step, bytes)) = cut(data) else { return };
    let whole = RtspReader::new().push(bytes);
    let mut reader = RtspReader::new();
    let mut messages = Vec::new();
    let mut error = None;
    for piece in bytes.chunks(step) {
        match reader.push(piece) {
            Ok(more) => messages.extend(more),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    assert_eq!(whole, error.map_or(Ok(messages), Err));
    for incoming in whole.unwrap_or_default() {
        if let Incoming::Response(r) = incoming {
            let _ = (r.cseq(), r.session());
            let parsed = rtsp_sdp::parse(&r.body);
            let _ = rtsp_sdp::backchannel(&parsed, r.header("Content-Base").unwrap_or("rtsp://camera/live"));
            if let Ok(challenges) = auth::challenges(r.headers_named("WWW-Authenticate")) {
                assert!(!challenges.is_empty());
                for c in &challenges {
                    let answer = auth::authorization(c, "user", "pw", "DESCRIBE", "rtsp://camera/live", "0a4f113b", 1);
                    assert!(answer.starts_with("Basic ") || answer.starts_with("Digest "));
                }
            }
        }
    }
}

/// An SDP, its backchannel and control URLs, and the text as a camera URL: what parses is usable.
pub fn sdp(data: &[u8]) {
    let parsed = rtsp_sdp::parse(data);
    if let Some(b) = rtsp_sdp::backchannel(&parsed, "rtsp://camera/live") {
        assert!(b.control.contains("://"), "{}", b.control);
        assert!(!matches!(b.codec, rtsp_sdp::TalkCodec::Aac { ref config } if config.is_empty()));
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(u) = rtsp_url::parse(&text) {
        assert!(u.request.starts_with("rtsp://") && !u.host.is_empty());
    }
}

/// A page's talk frame: what parses writes back as itself.
pub fn talk_frames(data: &[u8]) {
    if let Ok(frame) = crate::talk::parse_frame(data) {
        assert!(frame.pcm.len() * 2 <= crate::talk::MAX_PCM_BYTES && !frame.talker.is_empty());
        let bytes = crate::talk::frame_bytes(&frame.talker, frame.end, frame.rate, frame.sequence, &frame.pcm);
        assert_eq!(bytes.as_deref().map(crate::talk::parse_frame), Some(Ok(frame)));
    }
}
