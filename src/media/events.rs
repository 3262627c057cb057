//! What a pipeline hands out: facts about the source, the init segment, fragments, the end.

use super::error::MediaError;
use super::plan::{AudioPlan, TrackMode};
use bytes::Bytes;
pub use mqtt_video_wire::output::{OutputInfo, RenditionInfo};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One elementary stream of the source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamSummary {
    /// Index in the source.
    pub index: usize,
    /// `video`, `audio`, `subtitle`, `data`, ...
    pub kind: String,
    /// Codec name (`h264`, `pcm_mulaw`, ...).
    pub codec: String,
    /// Width in pixels (video).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Height in pixels (video).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Frames per second (video).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fps: Option<f64>,
    /// Samples per second (audio).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
    /// Channel count (audio).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<u32>,
    /// Declared bitrate in bit/s, when the source states one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitrate: Option<u64>,
}

/// The source as probed, and what the pipeline will do with it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceInfo {
    /// Demuxer name(s), e.g. `rtsp` or `mov,mp4,m4a,3gp,3g2,mj2`.
    pub format: String,
    /// Length in seconds for files; none for live streams.
    pub duration_secs: Option<f64>,
    /// Whether the input is read at its native rate.
    pub paced: bool,
    /// Every stream in the source.
    pub streams: Vec<StreamSummary>,
    /// The stream index used for video.
    pub video_stream: usize,
    /// The stream index used for audio, if any.
    pub audio_stream: Option<usize>,
    /// Video: copied or transcoded.
    pub video: TrackMode,
    /// Audio: copied, transcoded or dropped (with why).
    pub audio: AudioPlan,
}

/// The `ftyp`+`moov` a player needs before any fragment.
#[derive(Debug, Clone)]
pub struct InitSegment {
    /// The bytes.
    pub bytes: Bytes,
    /// What it describes.
    pub info: OutputInfo,
}

/// One `moof`+`mdat` (with any boxes that belong to it).
#[derive(Debug, Clone)]
pub struct Fragment {
    /// The bytes.
    pub bytes: Bytes,
    /// Its number (also its `mfhd` sequence number): from 1, on across the stream's restarts.
    pub sequence: u64,
    /// Whether its video starts with a keyframe: a viewer can start here.
    pub keyframe: bool,
    /// Decode time of its first video sample, in µs from the stream start.
    pub media_time_us: i64,
    /// Video duration it holds, in µs.
    pub duration_us: i64,
    /// Video samples it holds.
    pub video_samples: u32,
    /// Wall clock (µs since the epoch) of its oldest video frame at the source: when the sender sent it, if
    /// the source says (RTSP sender reports) and its clock agrees with ours within 5 s; else when it arrived.
    pub source_wallclock_us: u64,
    /// Wall clock (µs since the epoch) at which it left the muxer.
    pub produced_wallclock_us: u64,
}

/// Everything a running pipeline reports, in order: `Source`, `Init`, fragments, `End`.
#[derive(Debug, Clone)]
pub enum PipelineEvent {
    /// The source was opened and probed.
    Source(SourceInfo),
    /// The init segment (again after a reconnect that changed the codec parameters).
    Init(InitSegment),
    /// A fragment.
    Fragment(Fragment),
    /// About one of the configured renditions (by its index in `PipelineConfig::renditions`).
    Rendition(usize, RenditionEvent),
    /// The pipeline stopped: `Ok` at the end of a file, else why.
    End(Result<(), MediaError>),
}

/// What a rendition reports: its facts once the stream's output is known, then, while it is watched, its
/// own init segment and fragments (numbered on their own, on the stream's media timeline).
#[derive(Debug, Clone)]
pub enum RenditionEvent {
    /// What it will be, known before it is ever encoded (for the describe reply).
    Facts(RenditionInfo),
    /// Its init segment, each time its encoder starts.
    Init(InitSegment),
    /// A fragment.
    Fragment(Fragment),
    /// It failed and is left out until the source's next run (the stream goes on); why, for its viewers.
    Failed(String),
    /// Not offered in this run of the source: the implicit H.264 repeat of a `main` that is H.264 already.
    NotOffered,
}

/// Counters a pipeline keeps while it runs, readable from any thread.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Source packets read.
    pub packets_in: AtomicU64,
    /// Fragments handed out.
    pub fragments_out: AtomicU64,
    /// Fragments dropped because the consumer was behind.
    pub fragments_dropped: AtomicU64,
    /// Fragment bytes handed out.
    pub bytes_out: AtomicU64,
    /// Video frames (samples) handed out.
    pub video_frames_out: AtomicU64,
    /// Damaged source packets: those the demuxer flags as corrupt (an MPEG-TS continuity error, say), which
    /// a transcode conceals and a copy keeps back, with (in copy mode) the video after one up to the next
    /// keyframe that decodes cleanly.
    pub damaged: AtomicU64,
    /// How far the pipeline is behind real time now, in µs (see `load/lag.rs`); 0 for an input that is not
    /// read in real time.
    pub lag_us: AtomicU64,
    /// Per million of the source's frames left out before the encoder now (a lower frame rate), 0 for all
    /// encoded.
    pub shed_ppm: AtomicU64,
    /// Video frames decoded but left out before the encoder so far.
    pub frames_shed: AtomicU64,
    /// Whether shedding frames was not enough lately: the pipeline skipped ahead.
    pub degraded: AtomicBool,
    /// Skips ahead that ended, and the media they left out (µs).
    pub skips: AtomicU64,
    /// See `skips`.
    pub skipped_us: AtomicU64,
    /// Source packets dropped unread while skipping ahead.
    pub packets_skipped: AtomicU64,
    /// Which pipeline this is: its number in the process, which also names its threads (see `load/threads.rs`).
    pub id: u64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Source packets read.
    pub packets_in: u64,
    /// Fragments handed out.
    pub fragments_out: u64,
    /// Fragments dropped because the consumer was behind.
    pub fragments_dropped: u64,
    /// Fragment bytes handed out.
    pub bytes_out: u64,
    /// Video frames handed out.
    pub video_frames_out: u64,
    /// Damaged source packets, concealed (transcode) or kept back (copy).
    pub damaged: u64,
}

impl PipelineStats {
    /// Reads all counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            packets_in: get(&self.packets_in),
            fragments_out: get(&self.fragments_out),
            fragments_dropped: get(&self.fragments_dropped),
            bytes_out: get(&self.bytes_out),
            video_frames_out: get(&self.video_frames_out),
            damaged: get(&self.damaged),
        }
    }
}
