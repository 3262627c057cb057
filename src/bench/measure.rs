//! Pure figures: percentiles, and what one viewer's media says about delivery (latency from the `prft`
//! stamps, bitrate, gaps and reordering from the `tfdt` timeline). No I/O: everything takes the receipt time.

use mqtt_video_wire::fmp4::{self, Fmp4Error, TrackInfo, TrackKind};
use serde::{Deserialize, Serialize};

/// Distribution of a set of samples (ms unless said otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Smallest sample.
    pub min: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Summary {
    /// The distribution of `samples`, or `None` when there are none (NaN samples are left out).
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Summary {
            count: v.len(),
            p50: percentile_sorted(&v, 50.0),
            p95: percentile_sorted(&v, 95.0),
            p99: percentile_sorted(&v, 99.0),
            max: v[v.len() - 1],
            min: v[0],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        })
    }
}

/// Nearest-rank percentile of sorted, non-empty samples.
fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Why a media message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MediaCheckError {
    /// The bytes are not the fMP4 the protocol promises.
    #[error("malformed media message: {0}")]
    Malformed(#[from] Fmp4Error),
    /// A fragment names a track the init segment does not have, or has no `moof`.
    #[error("fragment does not match the init segment: {0}")]
    Mismatch(String),
}

/// What one message on a reply topic was.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// An init segment (`ftyp` + `moov`).
    Init,
    /// A fragment that came before any init segment: undecodable, left out of every figure.
    BeforeInit,
    /// A fragment.
    Fragment {
        /// Receipt time minus the `prft` wall clock (ms), if the fragment carries one.
        latency_ms: Option<f64>,
        /// Whether its video starts with a keyframe.
        keyframe: bool,
    },
}

/// Follows one viewer's media: checks that each track's timeline continues where the previous fragment
/// ended, and measures latency from the fragments' `prft` stamps.
#[derive(Debug, Default)]
pub struct MediaCheck {
    tracks: Vec<TrackInfo>,
    /// Expected next `tfdt` per track id.
    next: Vec<(u32, u64)>,
    /// Fragments read after an init segment.
    pub fragments: u64,
    /// Bytes of those fragments.
    pub bytes: u64,
    /// Init segments read.
    pub inits: u64,
    /// Times a track's timeline jumped forward: media missing (dropped for a slow viewer, or lost).
    pub gaps: u64,
    /// Media missing in those gaps, in ms of the track that jumped most.
    pub missing_ms: f64,
    /// Times a track's timeline went backwards (a fragment out of order or repeated).
    pub out_of_order: u64,
    /// End of the video received so far on the stream's timeline, in seconds.
    pub video_end_secs: Option<f64>,
}

impl MediaCheck {
    /// Reads one message received at `received_unix_us` (wall clock, µs since the Unix epoch).
    pub fn push(&mut self, payload: &[u8], received_unix_us: u64) -> Result<Received, MediaCheckError> {
        let first = fmp4::parse_box_header(payload)?
            .ok_or_else(|| MediaCheckError::Mismatch("message shorter than a box header".into()))?;
        if &first.kind == b"ftyp" {
            self.tracks = fmp4::parse_init(payload)?;
            // A new init segment (a source restart) starts a new timeline only if the parameters changed;
            // the server continues tfdt either way, so the expectations are kept.
            self.inits += 1;
            return Ok(Received::Init);
        }
        if self.inits == 0 {
            return Ok(Received::BeforeInit);
        }
        let mut latency_ms = None;
        let mut moof = None;
        for item in fmp4::boxes(payload) {
            let (header, body) = item?;
            match &header.kind {
                b"prft" => {
                    let (_, clock_us, _) = fmp4::parse_prft(body)?;
                    latency_ms = Some((received_unix_us as f64 - clock_us as f64) / 1000.0);
                }
                b"moof" => moof = Some(body),
                _ => {}
            }
        }
        let moof = moof.ok_or_else(|| MediaCheckError::Mismatch("fragment without moof".into()))?;
        let runs = fmp4::parse_moof(moof, &self.tracks)?;
        let mut keyframe = false;
        let mut worst_gap_ms = 0.0f64;
        let mut gap = false;
        let mut reordered = false;
        for run in &runs {
            let track = self
                .tracks
                .iter()
                .find(|t| t.track_id == run.track_id)
                .ok_or_else(|| MediaCheckError::Mismatch(format!("unknown track {}", run.track_id)))?;
            let end = run.base_decode_time + run.duration;
            if track.kind == TrackKind::Video {
                keyframe = run.starts_with_sync;
                let secs = end as f64 / f64::from(track.timescale.max(1));
                self.video_end_secs = Some(self.video_end_secs.map_or(secs, |e| e.max(secs)));
            }
            match self.next.iter_mut().find(|(id, _)| *id == run.track_id) {
                Some((_, expected)) => {
                    if run.base_decode_time > *expected {
                        gap = true;
                        let ms = (run.base_decode_time - *expected) as f64 * 1000.0 / f64::from(track.timescale.max(1));
                        worst_gap_ms = worst_gap_ms.max(ms);
                    } else if run.base_decode_time < *expected {
                        reordered = true;
                    }
                    *expected = (*expected).max(end);
                }
                None => self.next.push((run.track_id, end)),
            }
        }
        self.fragments += 1;
        self.bytes += payload.len() as u64;
        if gap {
            self.gaps += 1;
            self.missing_ms += worst_gap_ms;
        }
        if reordered {
            self.out_of_order += 1;
        }
        Ok(Received::Fragment { latency_ms, keyframe })
    }
}

/// Media time received per wall second: the slope of the media received against the wall clock (a least
/// squares fit over every sample, so that where a bounded lag happens to be at the first and the last one
/// does not decide it). 1.0 keeps up with real time, 0.66 is slow motion at two thirds of it. Media skipped
/// to stay live counts as received: the stream's timeline kept up with the wall clock.
#[derive(Debug, Default, Clone)]
pub struct Realtime {
    /// The first wall time, which the others are taken from (for precision).
    origin: Option<f64>,
    n: f64,
    sum_w: f64,
    sum_m: f64,
    sum_ww: f64,
    sum_wm: f64,
    span: f64,
}

/// Wall time a ratio is measured over at least, in seconds.
const MIN_REALTIME_SECS: f64 = 1.0;

impl Realtime {
    /// The video received ends at `media_secs` at wall time `wall_secs` (any origin).
    pub fn push(&mut self, wall_secs: f64, media_secs: f64) {
        let w = wall_secs - *self.origin.get_or_insert(wall_secs);
        self.n += 1.0;
        self.sum_w += w;
        self.sum_m += media_secs;
        self.sum_ww += w * w;
        self.sum_wm += w * media_secs;
        self.span = self.span.max(w);
    }

    /// Media seconds per wall second, once at least a second of wall time is covered.
    pub fn ratio(&self) -> Option<f64> {
        let denominator = self.n * self.sum_ww - self.sum_w * self.sum_w;
        (self.span >= MIN_REALTIME_SECS && denominator > 0.0)
            .then(|| (self.n * self.sum_wm - self.sum_w * self.sum_m) / denominator)
    }
}

/// Fragments held back waiting for a missing one before it is given up.
const MAX_OUT_OF_ORDER: usize = 30;

/// A v2 viewer's media in sequence order, from its join burst (reply topic) and the stream topic, which
/// overlap and may interleave: it starts at the first keyframe (the burst's; stream-topic fragments that
/// overtake it wait), drops duplicates, and holds early fragments for the ones before them, except that it
/// goes on at once from a keyframe (the gateway sheds up to one) and gives up on a missing fragment after
/// `MAX_OUT_OF_ORDER` later ones. Pure.
#[derive(Debug, Default)]
pub struct SequenceMerge {
    next: Option<u32>,
    waiting: std::collections::BTreeMap<u32, (bytes::Bytes, bool)>,
    /// Fragments that came twice (on both topics across the hand-over).
    pub duplicates: u64,
}

impl SequenceMerge {
    /// Takes one message (`keyframe`: it starts with one); returns the messages that are now next, in order.
    /// Init segments pass at once.
    pub fn push(&mut self, payload: bytes::Bytes, keyframe: bool) -> Vec<bytes::Bytes> {
        let Some(seq) = fmp4::sequence_number(&payload) else { return vec![payload] };
        if self.next.is_some_and(|next| seq < next) || self.waiting.contains_key(&seq) {
            self.duplicates += 1;
            return Vec::new();
        }
        self.waiting.insert(seq, (payload, keyframe));
        let mut next = match self.next {
            Some(next) => next,
            None => {
                // Not started: the lowest keyframe here starts it, or the lowest of all after a long wait.
                let first_key = self.waiting.iter().find(|(_, (_, key))| *key).map(|(s, _)| *s);
                let start = match first_key {
                    Some(key) => key,
                    None if self.waiting.len() > MAX_OUT_OF_ORDER => *self.waiting.keys().next().unwrap_or(&seq),
                    None => return Vec::new(),
                };
                self.waiting.retain(|s, _| *s >= start);
                start
            }
        };
        let mut out = Vec::new();
        loop {
            if let Some((p, _)) = self.waiting.remove(&next) {
                out.push(p);
                next += 1;
            } else if let Some((&key, _)) = self.waiting.iter().next().filter(|(_, (_, key))| *key) {
                // A keyframe is waiting: what is missing before it was shed (or is the old GOP's tail).
                next = key;
            } else if self.waiting.len() > MAX_OUT_OF_ORDER {
                // The missing fragment is not coming: go on from the first that is here.
                next = *self.waiting.keys().next().unwrap_or(&next);
            } else {
                break;
            }
        }
        self.next = Some(next);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_uses_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!((s.count, s.p50, s.p95, s.p99, s.max, s.min), (100, 50.0, 95.0, 99.0, 100.0, 1.0));
        assert!((s.mean - 50.5).abs() < 1e-9);
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
        let one = Summary::of(&[7.0]).unwrap();
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
    }

    /// `(wall s, media s)` samples.
    type Samples = &'static [(f64, f64)];

    #[test]
    fn realtime_is_media_per_wall_time() {
        let ratio = |samples: &[(f64, f64)]| {
            let mut r = Realtime::default();
            for &(w, m) in samples {
                r.push(w, m);
            }
            r.ratio().map(|x| (x * 100.0).round() / 100.0)
        };
        let table: [(&str, Samples, Option<f64>); 4] = [
            ("keeping up", &[(10.0, 3.0), (11.0, 4.0), (30.0, 23.0)], Some(1.0)),
            ("slow motion at two thirds", &[(0.0, 0.0), (15.0, 10.0)], Some(0.67)),
            ("less than a second: no figure", &[(0.0, 0.0), (0.5, 0.5)], None),
            ("nothing", &[], None),
        ];
        for (what, samples, want) in table {
            assert_eq!(ratio(samples), want, "{what}");
        }
        // A lag that grows to 1.5 s and is skipped back to 0 every 3 s, sampled 10 times a second for 20 s:
        // keeping up, wherever the lag is at the ends; slow motion at 0.66 is not.
        let sawtooth: Vec<(f64, f64)> =
            (0..200).map(|i| f64::from(i) / 10.0).map(|w| (w, w - (w % 3.0) / 2.0)).collect();
        assert!(ratio(&sawtooth).is_some_and(|r| (0.98..=1.02).contains(&r)), "{:?}", ratio(&sawtooth));
        let slow: Vec<(f64, f64)> = (0..200).map(|i| f64::from(i) / 10.0).map(|w| (w, w * 0.66)).collect();
        assert_eq!(ratio(&slow), Some(0.66));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut check = MediaCheck::default();
        assert!(check.push(b"", 0).is_err());
        assert!(check.push(&[0, 0, 0, 9, b'm', b'o', b'o', b'f', 1], 0).is_ok()); // before init: ignored
        assert!(check.push(&[0, 0, 0, 200, b'f', b't', b'y', b'p'], 0).is_err());
    }

    fn fragment(seq: u32) -> bytes::Bytes {
        // A moof with an mfhd, enough for the sequence number.
        let mut b = vec![0, 0, 0, 24, b'm', b'o', b'o', b'f', 0, 0, 0, 16, b'm', b'f', b'h', b'd', 0, 0, 0, 0];
        b.extend_from_slice(&seq.to_be_bytes());
        bytes::Bytes::from(b)
    }

    #[test]
    fn the_burst_and_the_stream_topic_merge_in_order_without_duplicates() {
        let mut m = SequenceMerge::default();
        let seqs = |v: Vec<bytes::Bytes>| v.iter().filter_map(|p| fmp4::sequence_number(p)).collect::<Vec<_>>();
        let none = Vec::<u32>::new();
        assert_eq!(m.push(bytes::Bytes::from_static(b"\0\0\0\x08ftyp"), false).len(), 1, "init passes");
        // The stream topic's live fragments overtake the burst's keyframe: they wait for it.
        assert_eq!(seqs(m.push(fragment(12), false)), none);
        assert_eq!(seqs(m.push(fragment(10), true)), [10]);
        // And its end.
        assert_eq!(seqs(m.push(fragment(13), false)), none);
        assert_eq!(seqs(m.push(fragment(11), false)), [11, 12, 13]);
        assert_eq!(seqs(m.push(fragment(12), false)), none, "a duplicate");
        assert_eq!(seqs(m.push(fragment(9), false)), none, "from before the start");
        assert_eq!(m.duplicates, 2);
        // 14 and 15 were shed up to the keyframe 16: on from it at once.
        assert_eq!(seqs(m.push(fragment(16), true)), [16]);
        assert_eq!(seqs(m.push(fragment(17), false)), [17]);
        // 18 is lost: after enough waiting, on from 19.
        let mut got = Vec::new();
        for s in 19..(19 + MAX_OUT_OF_ORDER as u32 + 1) {
            got.extend(seqs(m.push(fragment(s), false)));
        }
        assert_eq!(got.first(), Some(&19));
        assert_eq!(got.len(), MAX_OUT_OF_ORDER + 1);
    }
}
