//! Choosing copy or transcode per track. Pure: decides from codec facts, touches no FFmpeg state.

use super::config::Mode;
use super::error::MediaError;
pub use mqtt_video_wire::output::TrackMode;
use serde::Serialize;

/// What the source's video is, as far as the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoFacts {
    /// Codec name, for messages.
    pub codec: String,
    /// H.264 whose profile and chroma format browsers decode (baseline, main, high; 8-bit 4:2:0).
    pub browser_h264: bool,
    /// H.264 at all (any profile).
    pub h264: bool,
    /// HEVC at all (any profile): copied in copy mode, for the browsers that decode it.
    pub hevc: bool,
    /// Within the configured maximum size and frame rate (else copying would ignore them).
    pub within_limits: bool,
    /// The stream has an H.264 rendition (`config::CODEC_REPEAT`) for the browsers that do not decode HEVC.
    pub codec_repeat: bool,
}

/// Copy or transcode the video, or refuse (copy mode with video that is neither H.264 nor HEVC). `auto` copies
/// what every browser decodes (H.264), and HEVC when the stream has an H.264 rendition for the browsers that do
/// not decode it; it converts the rest.
pub fn video(mode: Mode, facts: &VideoFacts) -> Result<TrackMode, MediaError> {
    match mode {
        Mode::Transcode => Ok(TrackMode::Transcode),
        Mode::Auto if facts.browser_h264 && facts.within_limits => Ok(TrackMode::Copy),
        Mode::Auto if facts.hevc && facts.codec_repeat && facts.within_limits => Ok(TrackMode::Copy),
        Mode::Auto => Ok(TrackMode::Transcode),
        Mode::Copy if facts.h264 || facts.hevc => Ok(TrackMode::Copy),
        Mode::Copy => Err(MediaError::Unsupported(format!(
            "copy mode needs H.264 or HEVC video, the source has {}; use mode auto or transcode",
            facts.codec
        ))),
    }
}

/// What happens to the audio track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "action", content = "reason")]
pub enum AudioPlan {
    /// Remux the AAC as it is.
    Copy,
    /// Decode and encode to AAC.
    Transcode,
    /// Leave the audio out, with the reason.
    Drop(String),
}

/// Copy AAC, transcode other audio (G.711, MP2, ...), except in copy mode where nothing is decoded.
pub fn audio(mode: Mode, codec: &str, is_aac: bool, disabled: bool) -> AudioPlan {
    if disabled {
        return AudioPlan::Drop("audio disabled in the configuration".into());
    }
    match mode {
        Mode::Transcode => AudioPlan::Transcode,
        _ if is_aac => AudioPlan::Copy,
        Mode::Auto => AudioPlan::Transcode,
        Mode::Copy => AudioPlan::Drop(format!(
            "{codec} audio cannot be copied into MP4 for browsers; use mode auto to transcode it to AAC"
        )),
    }
}

/// H.264 profile numbers from libavcodec (`FF_PROFILE_H264_*`).
const H264_CONSTRAINED: i32 = 1 << 9;
const H264_BASELINE: i32 = 66;
const H264_MAIN: i32 = 77;
const H264_HIGH: i32 = 100;

/// Whether browsers decode this H.264 profile. Unknown (-99) is trusted: the decoder would only know more.
pub fn browser_h264_profile(profile: i32) -> bool {
    matches!(profile & !H264_CONSTRAINED, H264_BASELINE | H264_MAIN | H264_HIGH) || profile == -99
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(h264: bool, browser: bool) -> VideoFacts {
        VideoFacts {
            codec: if h264 { "h264" } else { "mpeg2video" }.into(),
            h264,
            hevc: false,
            browser_h264: browser,
            within_limits: true,
            codec_repeat: false,
        }
    }

    #[test]
    fn video_choices() {
        assert_eq!(video(Mode::Auto, &facts(true, true)).unwrap(), TrackMode::Copy);
        assert_eq!(video(Mode::Auto, &facts(true, false)).unwrap(), TrackMode::Transcode, "High 10");
        let too_big = VideoFacts { within_limits: false, ..facts(true, true) };
        assert_eq!(video(Mode::Auto, &too_big).unwrap(), TrackMode::Transcode, "larger than max_width");
        assert_eq!(video(Mode::Copy, &too_big).unwrap(), TrackMode::Copy, "copy means copy");
        assert_eq!(video(Mode::Auto, &facts(false, false)).unwrap(), TrackMode::Transcode);
        assert_eq!(video(Mode::Transcode, &facts(true, true)).unwrap(), TrackMode::Transcode);
        assert_eq!(video(Mode::Copy, &facts(true, false)).unwrap(), TrackMode::Copy);
        let err = video(Mode::Copy, &facts(false, false)).unwrap_err();
        assert!(err.to_string().contains("mpeg2video"), "{err}");
        let hevc = VideoFacts { codec: "hevc".into(), hevc: true, ..facts(false, false) };
        assert_eq!(video(Mode::Copy, &hevc).unwrap(), TrackMode::Copy, "HEVC copied when asked");
        assert_eq!(video(Mode::Auto, &hevc).unwrap(), TrackMode::Transcode, "not every browser decodes it");
        let with_repeat = VideoFacts { codec_repeat: true, ..hevc.clone() };
        assert_eq!(video(Mode::Auto, &with_repeat).unwrap(), TrackMode::Copy, "copied, H.264 for the others");
        let too_big = VideoFacts { within_limits: false, ..with_repeat.clone() };
        assert_eq!(video(Mode::Auto, &too_big).unwrap(), TrackMode::Transcode, "beyond the limits: converted");
        let mpeg2 = VideoFacts { codec_repeat: true, ..facts(false, false) };
        assert_eq!(video(Mode::Auto, &mpeg2).unwrap(), TrackMode::Transcode, "no browser decodes it");
        assert_eq!(video(Mode::Transcode, &with_repeat).unwrap(), TrackMode::Transcode);
    }

    #[test]
    fn audio_choices() {
        assert_eq!(audio(Mode::Auto, "aac", true, false), AudioPlan::Copy);
        assert_eq!(audio(Mode::Auto, "pcm_mulaw", false, false), AudioPlan::Transcode);
        assert_eq!(audio(Mode::Transcode, "aac", true, false), AudioPlan::Transcode);
        assert_eq!(audio(Mode::Copy, "aac", true, false), AudioPlan::Copy);
        assert!(matches!(audio(Mode::Copy, "pcm_alaw", false, false), AudioPlan::Drop(r) if r.contains("pcm_alaw")));
        assert!(matches!(audio(Mode::Auto, "aac", true, true), AudioPlan::Drop(_)));
    }

    #[test]
    fn h264_profiles() {
        assert!(browser_h264_profile(66));
        assert!(browser_h264_profile(66 | H264_CONSTRAINED));
        assert!(browser_h264_profile(77));
        assert!(browser_h264_profile(100));
        assert!(!browser_h264_profile(110), "High 10");
        assert!(!browser_h264_profile(122), "High 4:2:2");
        assert!(!browser_h264_profile(244), "High 4:4:4");
    }
}
