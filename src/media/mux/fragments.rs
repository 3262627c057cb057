//! Writing on the stream's timeline and making [`Fragment`]s ([`TimedMuxer`]): from the muxer's `moof`+`mdat`
//! bytes, its keyframe flag and media time read back from the `moof`, its number written into `mfhd`, and a
//! `prft` box with the source wall clock of its first frame.

use super::{Muxer, Segments, TrackPlacer, VIDEO_TIME_BASE};
use crate::media::error::MediaError;
use crate::media::events::Fragment;
use crate::media::timing::{wallclock_us, ArrivalTracker};
use bytes::Bytes;
use ffmpeg_next::{Packet, Rational, Rescale};
use mqtt_video_wire::fmp4::{self, TrackInfo, TrackKind};
use std::ops::Range;

const MICROS: Rational = Rational(1, 1_000_000);

/// What a fragment is numbered and dated with.
struct Dating<'a> {
    /// Its `mfhd` sequence number.
    sequence: u64,
    /// Source arrivals by video media time (µs), pushed as frames were written.
    arrivals: &'a mut ArrivalTracker,
    /// Media time (µs) to give a fragment without video.
    end_us: i64,
    /// Whether to put a `prft` box before it.
    prft: bool,
}

/// The fragment for muxer output `bytes`, whose `moof` box is at `moof`, of a muxer with `tracks`.
fn fragment(bytes: Vec<u8>, moof: Range<usize>, tracks: &[TrackInfo], d: Dating<'_>) -> Result<Fragment, MediaError> {
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

/// A muxer fed on the stream's timeline: each packet placed first ([`TrackPlacer`]), the source arrival of each
/// video frame kept by media time, and its output made into [`Fragment`]s dated with them. The stream's own
/// output and each rendition write through one.
pub struct TimedMuxer {
    muxer: Muxer,
    placer: TrackPlacer,
    arrivals: ArrivalTracker,
}

impl TimedMuxer {
    /// Writes through `muxer`.
    pub fn new(muxer: Muxer) -> Self {
        Self { muxer, placer: TrackPlacer::default(), arrivals: ArrivalTracker::default() }
    }

    /// The muxer's tracks.
    pub fn tracks(&self) -> &[TrackInfo] {
        self.muxer.tracks()
    }

    /// Writes a packet to `track`, with its source `arrival` for video (whose frames date the fragments);
    /// nothing when its decode time does not increase.
    pub fn write(&mut self, mut packet: Packet, track: usize, arrival: Option<u64>) -> Result<Segments, MediaError> {
        if !self.placer.place(&mut packet, track) {
            return Ok(Vec::new());
        }
        if let Some(arrival) = arrival {
            let at = packet.dts().unwrap_or(0);
            self.arrivals.push(at.rescale(VIDEO_TIME_BASE, MICROS), arrival);
        }
        self.muxer.write(packet, track)
    }

    /// The fragment for output `bytes` (its `moof` at `moof`), numbered `sequence`; `end_us` dates one
    /// without video.
    pub fn fragment(
        &mut self,
        bytes: Vec<u8>,
        moof: Range<usize>,
        sequence: u64,
        end_us: i64,
        prft: bool,
    ) -> Result<Fragment, MediaError> {
        let dating = Dating { sequence, arrivals: &mut self.arrivals, end_us, prft };
        fragment(bytes, moof, self.muxer.tracks(), dating)
    }

    /// Ends the muxer: what it still holds.
    pub fn finish(&mut self) -> Result<Segments, MediaError> {
        self.muxer.finish()
    }
}
