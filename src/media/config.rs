//! Settings of one media pipeline: source options, mode, encoders, fragmenting. Every default works as is.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Whether to re-encode or pass the source's compressed media through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Copy what browsers can play, transcode the rest.
    #[default]
    Auto,
    /// Remux H.264 (and AAC) without decoding; fails on other video.
    Copy,
    /// Always decode and re-encode to H.264 + AAC.
    Transcode,
}

/// Whether non-live inputs are read at their native rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pacing {
    /// Pace files and the built-in source, never network streams that are live already.
    #[default]
    Auto,
    /// Always read at the media's own rate (like ffmpeg's `-re`).
    Realtime,
    /// Read as fast as the pipeline can process (probing, benchmarks).
    Unpaced,
}

/// RTSP lower transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RtspTransport {
    /// TCP, and UDP when the camera refuses TCP (some serve RTP over UDP only).
    #[default]
    Auto,
    /// Interleaved in the RTSP TCP connection: works through NAT and firewalls, no packet loss.
    Tcp,
    /// RTP over UDP.
    Udp,
}

/// How to open and watch the source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// Limit for connecting and probing, in milliseconds.
    pub connect_timeout_ms: u64,
    /// A source that sends nothing for this long mid-stream is aborted, in milliseconds.
    pub stall_timeout_ms: u64,
    /// RTSP transport.
    pub rtsp_transport: RtspTransport,
    /// Bytes libavformat may read to identify the streams of a live source (RTSP, RTMP, SRT, UDP).
    pub probe_size: u32,
    /// Media time libavformat may analyse to identify the streams of a live source, in milliseconds.
    /// Every millisecond here is a millisecond before the first picture; files keep FFmpeg's defaults.
    pub analyze_duration_ms: u32,
    /// Reading pace for non-live inputs.
    pub pacing: Pacing,
    /// Restart files from the beginning when they end (makes a file look like a live stream).
    pub looping: bool,
    /// Listen for the source to connect instead of connecting to it (push ingest; set by the server only).
    #[serde(skip)]
    pub listen: bool,
    /// SRT passphrase a listening source requires (push ingest; set by the server only, never logged).
    #[serde(skip)]
    pub passphrase: Option<Secret>,
}

/// A secret that prints as `***` (configs end up in logs).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 5000,
            stall_timeout_ms: 5000,
            rtsp_transport: RtspTransport::Auto,
            probe_size: 500_000,
            analyze_duration_ms: 100,
            pacing: Pacing::Auto,
            looping: false,
            listen: false,
            passphrase: None,
        }
    }
}

impl SourceConfig {
    /// The connect timeout as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    /// The stall timeout as a duration.
    pub fn stall_timeout(&self) -> Duration {
        Duration::from_millis(self.stall_timeout_ms)
    }
}

/// libx264 settings. Defaults aim at live latency: no B-frames, slice threads, fixed GOP, no scene cuts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VideoEncoderConfig {
    /// x264 preset (`ultrafast` ... `veryslow`).
    pub preset: String,
    /// x264 tune (`zerolatency`, `film`, ...); empty for none.
    pub tune: String,
    /// H.264 profile: `baseline`, `main` or `high`.
    pub profile: String,
    /// H.264 level such as `3.1`; empty lets x264 choose.
    pub level: String,
    /// Constant rate factor (quality); used when `bitrate_kbps` is 0.
    pub crf: u8,
    /// Target bitrate in kbit/s; 0 means quality-based (CRF).
    pub bitrate_kbps: u32,
    /// Cap on the bitrate in kbit/s (VBV), 0 for none.
    pub max_bitrate_kbps: u32,
    /// Largest output width; larger sources are scaled down keeping their aspect ratio. 0: source width.
    pub max_width: u32,
    /// Largest output height. 0: source height.
    pub max_height: u32,
    /// Highest output frame rate; faster sources drop frames. 0: the source's rate.
    pub max_fps: u32,
    /// Seconds between keyframes (a viewer can join only at one).
    pub keyframe_interval_secs: f64,
    /// Encoder threads, 0 for automatic.
    pub threads: u32,
}

impl Default for VideoEncoderConfig {
    fn default() -> Self {
        Self {
            preset: "veryfast".into(),
            tune: "zerolatency".into(),
            profile: "high".into(),
            level: String::new(),
            crf: 23,
            bitrate_kbps: 0,
            max_bitrate_kbps: 0,
            max_width: 0,
            max_height: 0,
            max_fps: 0,
            keyframe_interval_secs: 1.0,
            threads: 0,
        }
    }
}

/// AAC encoder settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AudioEncoderConfig {
    /// Bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// Output sample rate in Hz.
    pub sample_rate: u32,
    /// Most output channels (1 or 2); more are downmixed.
    pub max_channels: u32,
    /// Drop the audio entirely.
    pub disabled: bool,
}

impl Default for AudioEncoderConfig {
    fn default() -> Self {
        Self { bitrate_kbps: 96, sample_rate: 48_000, max_channels: 2, disabled: false }
    }
}

/// How the fragmented MP4 is cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FragmentConfig {
    /// Least video duration of a fragment in milliseconds; 0 sends every video frame as its own fragment
    /// (lowest latency). A keyframe always starts a new fragment.
    pub duration_ms: u32,
    /// Put a `prft` box before each fragment with the source wall clock of its first video frame (see
    /// `Fragment::source_wallclock_us`), so that players can show their real latency.
    pub producer_reference_time: bool,
}

impl Default for FragmentConfig {
    fn default() -> Self {
        Self { duration_ms: 0, producer_reference_time: true }
    }
}

/// What the worker does when its consumer is slower than the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backpressure {
    /// Drop whole fragments up to the next keyframe and count them (live viewers).
    #[default]
    Drop,
    /// Wait for the consumer (probing, benchmarks, recording).
    Block,
}

/// Everything one pipeline needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Copy, transcode or decide per track.
    pub mode: Mode,
    /// Source options.
    pub source: SourceConfig,
    /// Video encoder options (transcode only).
    pub video: VideoEncoderConfig,
    /// Audio encoder options (transcode only).
    pub audio: AudioEncoderConfig,
    /// Fragmenting options.
    pub fragment: FragmentConfig,
    /// Capacity of the worker's output channel, in events.
    pub channel_capacity: usize,
    /// Full-channel behaviour.
    pub backpressure: Backpressure,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Auto,
            source: SourceConfig::default(),
            video: VideoEncoderConfig::default(),
            audio: AudioEncoderConfig::default(),
            fragment: FragmentConfig::default(),
            channel_capacity: 256,
            backpressure: Backpressure::Drop,
        }
    }
}
