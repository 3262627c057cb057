//! Segments larger than a broker's packet limit, sent as several MQTT messages and put back together.
//!
//! A segment (an init segment, or a fragment: `[prft] moof mdat`) goes as consecutive messages on one topic:
//! its bytes in order, cut anywhere. A MediaSource page that appends each message's bytes in order plays them
//! unchanged. A client that wants whole segments tells a segment's first piece by its start, a known
//! top-level box (see [`starts_segment`]), and its length by the box sizes in that piece: the first piece
//! always holds every box header up to the `mdat` or `moov` header. The splitter never lets a later piece
//! start like a segment (it moves the cut a byte), so a lost piece costs that one segment: the next segment's
//! first piece is known as such and ends the broken one.

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::fmp4::{parse_box_header, BoxHeader, MAX_BOX_SIZE};

/// Top-level boxes a segment may start with.
const STARTS: [&[u8; 4]; 6] = [b"ftyp", b"styp", b"prft", b"moof", b"sidx", b"emsg"];
/// Boxes that may come before the box that ends a segment's headers.
const LEADING: [&[u8; 4]; 8] = [b"ftyp", b"styp", b"prft", b"moof", b"sidx", b"emsg", b"free", b"skip"];

/// Why a message cannot be taken as (the start of) a segment.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PieceError {
    /// The message starts no segment and no segment was being put together (its first piece was lost).
    #[error("a piece of a segment whose first piece never came ({len} bytes)")]
    Orphan {
        /// The message's length.
        len: usize,
    },
    /// A segment's pieces carried more bytes than its boxes say.
    #[error("a segment's pieces overran its {expected} bytes ({got} came)")]
    Overrun {
        /// What the boxes said.
        expected: usize,
        /// What the pieces added up to.
        got: usize,
    },
    /// A segment's first piece does not hold its box headers up to `mdat` or `moov`.
    #[error("a segment's first piece ({len} bytes) does not say how long the segment is")]
    NoLength {
        /// The message's length.
        len: usize,
    },
}

/// True when `message` starts like a segment: a known top-level box with a size that could be real.
pub fn starts_segment(message: &[u8]) -> bool {
    match parse_box_header(message) {
        Ok(Some(h)) => STARTS.contains(&&h.kind) && h.total_len <= MAX_BOX_SIZE,
        _ => false,
    }
}

/// The length of the segment that starts `message`, from its box headers up to the `mdat` (a fragment) or
/// the `moov` (an init segment); `None` when those headers are not all in `message`.
pub fn segment_len(message: &[u8]) -> Option<usize> {
    let mut at = 0usize;
    loop {
        let header: BoxHeader = parse_box_header(message.get(at..)?).ok()??;
        let end = at.checked_add(usize::try_from(header.total_len).ok()?)?;
        if &header.kind == b"mdat" || &header.kind == b"moov" {
            return Some(end);
        }
        if !LEADING.contains(&&header.kind) {
            return None;
        }
        at = end;
    }
}

/// Cuts `segment` into messages of at most `max_payload` bytes (the first one longer if its box headers need
/// it), no later one starting like a segment. A segment that fits is one message, itself.
pub fn split(segment: &Bytes, max_payload: usize) -> Vec<Bytes> {
    // A piece must be able to move its cut a byte and still carry something.
    let max_payload = max_payload.max(16);
    if segment.len() <= max_payload {
        return vec![segment.clone()];
    }
    let mut pieces = Vec::with_capacity(segment.len() / max_payload + 2);
    let mut start = 0usize;
    // The first piece holds the headers that give the length: a fragment's moof is a few hundred bytes.
    let mut end = max_payload.max(headers_len(segment)).min(segment.len());
    loop {
        // A later piece that looked like a segment's start would end this one at the client: cut later.
        while end < segment.len() && starts_segment(&segment[end..]) {
            end += 1;
        }
        pieces.push(segment.slice(start..end));
        if end == segment.len() {
            return pieces;
        }
        start = end;
        end = start.saturating_add(max_payload).min(segment.len());
    }
}

/// Bytes up to and including the header of the box that ends a segment's headers (`mdat` or `moov`); the
/// whole segment when it is not one we know.
fn headers_len(segment: &[u8]) -> usize {
    let mut at = 0usize;
    while let Ok(Some(h)) = parse_box_header(segment.get(at..).unwrap_or_default()) {
        if &h.kind == b"mdat" || &h.kind == b"moov" {
            return at + h.header_len;
        }
        match usize::try_from(h.total_len).ok().and_then(|n| at.checked_add(n)) {
            Some(next) if LEADING.contains(&&h.kind) => at = next,
            _ => break,
        }
    }
    segment.len()
}

/// What one message did to a topic's [`Reassembler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// A whole segment is in.
    Segment(Bytes),
    /// More pieces are needed.
    Pending,
}

/// Puts one topic's pieces back together (one per topic: the pieces of a segment are consecutive on its
/// topic, and topics are not ordered among themselves).
#[derive(Debug, Default)]
pub struct Reassembler {
    pending: Option<(BytesMut, usize)>,
    /// Segments given up because a piece was lost (a new first piece came before they were whole).
    pub broken: u64,
}

impl Reassembler {
    /// Takes the next message of the topic. A segment's first piece ends any unfinished one (counted in
    /// `broken`); an error leaves nothing pending, and the next first piece starts afresh.
    pub fn push(&mut self, message: &Bytes) -> Result<Piece, PieceError> {
        if starts_segment(message) {
            if self.pending.take().is_some() {
                self.broken += 1;
            }
            let Some(len) = segment_len(message) else {
                return Err(PieceError::NoLength { len: message.len() });
            };
            // A message longer than its boxes say is left as it is: a sender that does not split.
            if message.len() >= len {
                return Ok(Piece::Segment(message.clone()));
            }
            let mut buf = BytesMut::with_capacity(len);
            buf.extend_from_slice(message);
            self.pending = Some((buf, len));
            return Ok(Piece::Pending);
        }
        let Some((mut buf, len)) = self.pending.take() else {
            return Err(PieceError::Orphan { len: message.len() });
        };
        buf.extend_from_slice(message);
        match buf.len() {
            n if n == len => Ok(Piece::Segment(buf.freeze())),
            n if n < len => {
                self.pending = Some((buf, len));
                Ok(Piece::Pending)
            }
            n => {
                self.broken += 1;
                Err(PieceError::Overrun { expected: len, got: n })
            }
        }
    }
}

/// How a PUBLISH is framed, beyond its topic and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// QoS 1 or 2: a packet id.
    pub qos_above_0: bool,
    /// MQTT 5 properties, in bytes with their length field (0 with MQTT 3.1.1).
    pub properties: usize,
}

/// The most payload a PUBLISH of `topic` may carry under a broker's `max_packet` bytes: a fixed header of at
/// most 5 bytes, the topic with its length, a packet id at QoS 1 or 2, and MQTT 5's properties.
pub fn max_payload(max_packet: usize, topic: &str, framing: Framing) -> usize {
    max_packet.saturating_sub(5 + 2 + topic.len() + if framing.qos_above_0 { 2 } else { 0 } + framing.properties)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut b = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(payload);
        b
    }

    /// `prft`, a `moof` of 300 bytes and an `mdat` of `media`.
    fn fragment(media: &[u8]) -> Bytes {
        let mut f = boxed(b"prft", &[0; 24]);
        f.extend(boxed(b"moof", &[7; 292]));
        f.extend(boxed(b"mdat", media));
        Bytes::from(f)
    }

    /// Bytes that look like no box, as coded video does almost everywhere.
    fn noise(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    fn reassemble(pieces: &[Bytes]) -> (Vec<Bytes>, Vec<PieceError>, u64) {
        let mut r = Reassembler::default();
        let (mut whole, mut errors) = (Vec::new(), Vec::new());
        for p in pieces {
            match r.push(p) {
                Ok(Piece::Segment(s)) => whole.push(s),
                Ok(Piece::Pending) => {}
                Err(e) => errors.push(e),
            }
        }
        (whole, errors, r.broken)
    }

    #[test]
    fn a_segment_that_fits_is_one_message_itself() {
        let f = fragment(&noise(1000, 1));
        assert_eq!(split(&f, 4096), vec![f.clone()]);
        assert_eq!(reassemble(std::slice::from_ref(&f)).0, vec![f]);
    }

    #[test]
    fn a_579_kb_keyframe_under_a_128_kb_limit_goes_in_five_pieces_and_comes_back_whole() {
        let f = fragment(&noise(579 * 1024, 2));
        let max = max_payload(131_072, "video/live/front-door/media", Framing { qos_above_0: false, properties: 0 });
        let pieces = split(&f, max);
        assert_eq!(pieces.len(), 5);
        assert!(pieces.iter().all(|p| p.len() <= max), "{:?}", pieces.iter().map(Bytes::len).collect::<Vec<_>>());
        assert!(starts_segment(&pieces[0]));
        assert!(pieces[1..].iter().all(|p| !starts_segment(p)));
        assert_eq!(segment_len(&pieces[0]), Some(f.len()));
        assert_eq!(pieces.concat(), f.to_vec(), "the bytes in order, as a MediaSource page appends them");
        assert_eq!(reassemble(&pieces), (vec![f], vec![], 0));
    }

    #[test]
    fn no_later_piece_starts_like_a_segment_even_where_the_media_looks_like_one() {
        // The media has a moof header at every place a cut of 1000 bytes would fall.
        let mut media = noise(10_000, 3);
        let fake = boxed(b"moof", &[]);
        for at in (0..9000).step_by(100) {
            media[at..at + 8].copy_from_slice(&fake);
        }
        let f = fragment(&media);
        let pieces = split(&f, 1000);
        assert!(pieces[1..].iter().all(|p| !starts_segment(p)));
        assert_eq!(pieces.concat(), f.to_vec());
        assert_eq!(reassemble(&pieces).0, vec![f]);
    }

    #[test]
    fn the_first_piece_holds_the_headers_even_when_they_pass_the_limit() {
        let mut big = boxed(b"moof", &[1; 3000]);
        big.extend(boxed(b"mdat", &noise(5000, 4)));
        let f = Bytes::from(big);
        let pieces = split(&f, 1000);
        assert_eq!(pieces[0].len(), 3008 + 8);
        assert_eq!(reassemble(&pieces).0, vec![f]);
    }

    #[test]
    fn an_init_segment_is_told_by_its_moov() {
        let mut init = boxed(b"ftyp", b"iso5\0\0\0\x01");
        init.extend(boxed(b"moov", &noise(3000, 5)));
        let init = Bytes::from(init);
        let pieces = split(&init, 1000);
        assert!(pieces.len() > 1);
        assert_eq!(reassemble(&pieces).0, vec![init]);
    }

    #[test]
    fn a_lost_piece_costs_its_segment_only() {
        let (a, b) = (fragment(&noise(5000, 6)), fragment(&noise(3000, 7)));
        let (pa, pb) = (split(&a, 1000), split(&b, 1000));
        // A middle piece lost: the next first piece ends the broken segment, and b is whole.
        let mut msgs: Vec<Bytes> = pa.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, p)| p.clone()).collect();
        msgs.extend(pb.iter().cloned());
        assert_eq!(reassemble(&msgs), (vec![b.clone()], vec![], 1));
        // The first piece lost: the rest are orphans, and b is whole.
        let mut msgs: Vec<Bytes> = pa[1..].to_vec();
        msgs.extend(pb.iter().cloned());
        let (whole, errors, _) = reassemble(&msgs);
        assert_eq!(whole, vec![b]);
        assert_eq!(errors.len(), pa.len() - 1);
        assert!(errors.iter().all(|e| matches!(e, PieceError::Orphan { .. })));
    }

    #[test]
    fn pieces_that_overrun_their_segment_are_an_error_not_a_segment() {
        let f = fragment(&noise(2000, 8));
        let mut r = Reassembler::default();
        assert_eq!(r.push(&f.slice(..1000)), Ok(Piece::Pending));
        let too_much = Bytes::from(noise(1500, 9));
        assert!(!starts_segment(&too_much));
        assert_eq!(r.push(&too_much), Err(PieceError::Overrun { expected: f.len(), got: 2500 }));
        assert!(matches!(r.push(&f.slice(1000..)), Err(PieceError::Orphan { .. })));
        assert_eq!(r.push(&f), Ok(Piece::Segment(f.clone())));
    }

    #[test]
    fn a_first_piece_without_its_length_is_an_error() {
        let moof_only = Bytes::from(boxed(b"moof", &[0; 100])[..50].to_vec());
        assert_eq!(Reassembler::default().push(&moof_only), Err(PieceError::NoLength { len: 50 }));
    }

    #[test]
    fn every_limit_and_every_cut_give_the_bytes_back() {
        for seed in 0..40u32 {
            let f = fragment(&noise(500 + seed as usize * 977, seed));
            for max in [16, 17, 100, 333, 1000, 4096, 65_536] {
                let pieces = split(&f, max);
                assert_eq!(pieces.concat(), f.to_vec(), "seed {seed} max {max}");
                assert_eq!(reassemble(&pieces), (vec![f.clone()], vec![], 0), "seed {seed} max {max}");
            }
        }
    }

    #[test]
    fn the_payload_left_under_a_packet_limit() {
        let plain = Framing { qos_above_0: false, properties: 0 };
        assert_eq!(max_payload(131_072, "video/live/x/media", plain), 131_072 - 7 - 18);
        assert_eq!(
            max_payload(131_072, "video/live/x/media", Framing { qos_above_0: true, ..plain }),
            131_072 - 9 - 18
        );
        assert_eq!(max_payload(131_072, "video/live/x/media", Framing { properties: 6, ..plain }), 131_072 - 13 - 18);
        assert_eq!(max_payload(10, "a-long-topic-name", plain), 0);
    }
}
