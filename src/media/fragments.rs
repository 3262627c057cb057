//! From the muxer's `moof`+`mdat` bytes to a [`Fragment`]: its keyframe flag and media time read back from
//! the `moof`, its number written into `mfhd`, and a `prft` box with the source wall clock of its first frame.

use super::error::MediaError;
use super::events::Fragment;
use super::fmp4::{self, TrackInfo, TrackKind};
use super::timing::{wallclock_us, ArrivalTracker};
use bytes::Bytes;
use std::ops::Range;

/// What a fragment is numbered and dated with.
pub struct Dating<'a> {
    /// Its `mfhd` sequence number.
    pub sequence: u64,
    /// Source arrivals by video media time (µs), pushed as frames were written.
    pub arrivals: &'a mut ArrivalTracker,
    /// Media time (µs) to give a fragment without video.
    pub end_us: i64,
    /// Whether to put a `prft` box before it.
    pub prft: bool,
}

/// The fragment for muxer output `bytes`, whose `moof` box is at `moof`, of a muxer with `tracks`.
pub fn fragment(
    bytes: Vec<u8>,
    moof: Range<usize>,
    tracks: &[TrackInfo],
    d: Dating<'_>,
) -> Result<Fragment, MediaError> {
    let runs = fmp4::parse_moof(&bytes[moof], tracks)?;
    let video = tracks.iter().find(|t| t.kind == TrackKind::Video);
    let run = video.and_then(|v| runs.iter().find(|r| r.track_id == v.track_id && r.sample_count > 0));
    let scale = |ticks: u64| {
        let timescale = video.map_or(1, |v| v.timescale.max(1));
        (u128::from(ticks) * 1_000_000 / u128::from(timescale)) as i64
    };
    let (keyframe, media_time_us, duration_us, samples) = match run {
        Some(r) => (r.starts_with_sync, scale(r.base_decode_time), scale(r.duration), r.sample_count),
        None => (false, d.end_us, 0, 0),
    };
    let produced = wallclock_us();
    // Tolerate rounding between the µs timeline and the track timescale.
    let source_wallclock_us =
        if samples > 0 { d.arrivals.take(media_time_us + 500).unwrap_or(produced) } else { produced };
    let mut bytes = bytes;
    // Numbered on across restarts (the muxer counts from 1 in each run): a page sees a gap.
    fmp4::set_sequence_number(&mut bytes, d.sequence as u32);
    let bytes = match (d.prft, video, run) {
        (true, Some(v), Some(r)) => {
            let mut with_prft = fmp4::prft_box(v.track_id, source_wallclock_us, r.base_decode_time);
            with_prft.extend_from_slice(&bytes);
            with_prft
        }
        _ => bytes,
    };
    Ok(Fragment {
        bytes: Bytes::from(bytes),
        sequence: d.sequence,
        keyframe,
        media_time_us,
        duration_us,
        video_samples: samples,
        source_wallclock_us,
        produced_wallclock_us: produced,
    })
}
