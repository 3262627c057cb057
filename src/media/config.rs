//! Settings of one media pipeline: source options, mode, encoders, fragmenting. Every default works as is.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Whether to re-encode or pass the source's compressed media through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Copy what browsers can play, transcode the rest. HEVC within the size limits is copied, with an H.264
    /// rendition at its size ([`CODEC_REPEAT`]) made while a browser without HEVC watches.
    #[default]
    Auto,
    /// Remux H.264 or HEVC (and AAC) without decoding; fails on other video.
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

/// Where the frames of an RTSP camera's H.264 or HEVC end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RtspFrameEnd {
    /// At the RTP marker of each frame's last packet, through a loopback relay (RTSP over TCP only).
    #[default]
    Marker,
    /// Where libavformat's parser sees the next frame start: one frame interval later.
    Parser,
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
    /// Where an RTSP camera's H.264 or HEVC frames end.
    pub rtsp_frame_end: RtspFrameEnd,
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
            rtsp_frame_end: RtspFrameEnd::Marker,
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
    /// Lower-bitrate copies of the video, each encoded only while someone watches it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub renditions: Vec<RenditionConfig>,
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
            renditions: Vec::new(),
        }
    }
}

/// Names a rendition may not have: the stream's own output, and the levels of its topics.
const RESERVED_RENDITION_NAMES: [&str; 6] = ["main", "init", "media", "state", "source", "to"];

/// Most renditions per stream: each watched one is a whole encoder.
pub const MAX_RENDITIONS: usize = 4;

/// The rendition `auto` adds to every stream: H.264 at `main`'s size, offered only when `main` is not H.264
/// (an HEVC camera copied) and encoded only while someone watches it. A configured rendition of this name
/// takes its place, with that entry's settings.
pub const CODEC_REPEAT: &str = "h264";

/// A `[[pipeline.renditions]]` entry: a named copy of the stream's video, encoded from the same decoded
/// frames with its own size, frame rate and bitrate. Unset keys are the `[pipeline.video]` ones; keyframes
/// are always the stream's own (so that a page can switch at any of them), hence no keyframe interval here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenditionConfig {
    /// Its name, in topics and play requests: lowercase letters, digits, `-` and `_`.
    pub name: String,
    /// x264 preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// x264 tune.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tune: Option<String>,
    /// H.264 profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// H.264 level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Constant rate factor, when no bitrate is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crf: Option<u8>,
    /// Target bitrate in kbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_kbps: Option<u32>,
    /// Cap on the bitrate in kbit/s (VBV).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bitrate_kbps: Option<u32>,
    /// Largest width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_width: Option<u32>,
    /// Largest height.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_height: Option<u32>,
    /// Highest frame rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fps: Option<u32>,
    /// Encoder threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// AAC bitrate in kbit/s of an audio track of its own; unset, it shares the stream's audio track.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_bitrate_kbps: Option<u32>,
    /// Added by `auto` ([`CODEC_REPEAT`]), not configured: offered only when `main` is not H.264.
    #[serde(skip)]
    pub implicit: bool,
}

impl RenditionConfig {
    /// A rendition of this name with every setting the stream's own.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            preset: None,
            tune: None,
            profile: None,
            level: None,
            crf: None,
            bitrate_kbps: None,
            max_bitrate_kbps: None,
            max_width: None,
            max_height: None,
            max_fps: None,
            threads: None,
            audio_bitrate_kbps: None,
            implicit: false,
        }
    }

    /// The encoder settings: this entry's keys over the stream's own `video`.
    pub fn video(&self, main: &VideoEncoderConfig) -> VideoEncoderConfig {
        let pick = |mine: &Option<String>, theirs: &String| mine.clone().unwrap_or_else(|| theirs.clone());
        VideoEncoderConfig {
            preset: pick(&self.preset, &main.preset),
            tune: pick(&self.tune, &main.tune),
            profile: pick(&self.profile, &main.profile),
            level: pick(&self.level, &main.level),
            crf: self.crf.unwrap_or(main.crf),
            // A rendition with a bitrate of its own is rate-controlled, whatever the stream's CRF.
            bitrate_kbps: self.bitrate_kbps.unwrap_or(main.bitrate_kbps),
            max_bitrate_kbps: self.max_bitrate_kbps.unwrap_or(main.max_bitrate_kbps),
            max_width: self.max_width.unwrap_or(main.max_width),
            max_height: self.max_height.unwrap_or(main.max_height),
            max_fps: self.max_fps.unwrap_or(main.max_fps),
            keyframe_interval_secs: main.keyframe_interval_secs,
            threads: self.threads.unwrap_or(main.threads),
        }
    }
}

impl PipelineConfig {
    /// The renditions a stream runs with: the configured ones and, in `auto` mode, the [`CODEC_REPEAT`]
    /// unless one of that name is configured.
    pub fn with_codec_repeat(mut self) -> Self {
        if self.mode == Mode::Auto && !self.renditions.iter().any(|r| r.name == CODEC_REPEAT) {
            self.renditions.push(RenditionConfig { implicit: true, ..RenditionConfig::named(CODEC_REPEAT) });
        }
        self
    }

    /// Whether it has an H.264 rendition for browsers that do not decode `main`'s codec (`auto` copies HEVC
    /// only then).
    pub fn has_codec_repeat(&self) -> bool {
        self.renditions.iter().any(|r| r.name == CODEC_REPEAT)
    }

    /// Checks the renditions: valid, distinct names, at most [`MAX_RENDITIONS`]; the message says what is wrong.
    pub fn check_renditions(&self) -> Result<(), String> {
        if self.renditions.len() > MAX_RENDITIONS {
            return Err(format!("at most {MAX_RENDITIONS} renditions (each watched one is an encoder of its own)"));
        }
        for (i, r) in self.renditions.iter().enumerate() {
            let name = &r.name;
            let valid = !name.is_empty()
                && name.len() <= 32
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
            if !valid {
                return Err(format!(
                    "rendition name {name:?}: 1 to 32 lowercase letters, digits, '-' or '_' (it is a topic level)"
                ));
            }
            if RESERVED_RENDITION_NAMES.contains(&name.as_str()) {
                return Err(format!("rendition name {name:?} is reserved (main is the stream's own output)"));
            }
            if self.renditions[..i].iter().any(|o| o.name == *name) {
                return Err(format!("rendition name {name:?} is used twice"));
            }
            if r.audio_bitrate_kbps == Some(0) {
                return Err(format!(
                    "rendition {name:?}: audio_bitrate_kbps must be above 0 (leave it out to share the stream's audio)"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_adds_the_h264_repeat_unless_configured_and_the_other_modes_never_do() {
        let names = |c: &PipelineConfig| c.renditions.iter().map(|r| (r.name.clone(), r.implicit)).collect::<Vec<_>>();
        let auto = PipelineConfig::default().with_codec_repeat();
        assert_eq!(names(&auto), [(CODEC_REPEAT.to_string(), true)]);
        assert!(auto.has_codec_repeat());
        let low = RenditionConfig { max_height: Some(360), ..RenditionConfig::named("low") };
        let with_low =
            PipelineConfig { renditions: vec![low.clone()], ..PipelineConfig::default() }.with_codec_repeat();
        assert_eq!(names(&with_low), [("low".to_string(), false), (CODEC_REPEAT.to_string(), true)]);
        let own = RenditionConfig { bitrate_kbps: Some(4000), ..RenditionConfig::named(CODEC_REPEAT) };
        let configured =
            PipelineConfig { renditions: vec![own.clone()], ..PipelineConfig::default() }.with_codec_repeat();
        assert_eq!(configured.renditions, [own], "a configured h264 rendition takes its place, settings and all");
        for mode in [Mode::Copy, Mode::Transcode] {
            let c = PipelineConfig { mode, ..PipelineConfig::default() }.with_codec_repeat();
            assert!(c.renditions.is_empty() && !c.has_codec_repeat(), "{mode:?}");
        }
    }
}
