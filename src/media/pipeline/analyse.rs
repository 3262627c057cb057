//! What the source is and what to do with it: its streams summarised, and the plan (copy or transcode, per
//! track) decided from their facts and the settings, before any decoding.

use crate::media::config::{Mode, PipelineConfig};
use crate::media::error::MediaError;
use crate::media::events::{SourceInfo, StreamSummary};
use crate::media::ffi;
use crate::media::plan::{self, AudioPlan, VideoFacts};
use crate::media::source::{Source, SourceKind};
use ffmpeg::format::stream::Stream;
use ffmpeg::{codec, media, Rational};
use ffmpeg_next as ffmpeg;

/// Nominal frame rate of a stream, with a sane fallback for sources that do not say.
pub(super) fn frame_rate(stream: &Stream) -> Rational {
    for r in [stream.avg_frame_rate(), stream.rate()] {
        let fps = f64::from(r);
        if r.denominator() > 0 && (1.0..=240.0).contains(&fps) {
            return r;
        }
    }
    Rational(30, 1)
}

/// The source's facts and the plan for its tracks; `paced` says whether it is read at its own rate.
pub(super) fn analyse(source: &Source, config: &PipelineConfig, paced: bool) -> Result<SourceInfo, MediaError> {
    let input = &source.input;
    let streams: Vec<StreamSummary> = input.streams().map(|s| summarize(&s)).collect();
    let video_stream = input
        .streams()
        .best(media::Type::Video)
        .map(|s| s.index())
        .ok_or_else(|| MediaError::Unsupported("the source has no video stream".into()))?;
    let audio_stream = input.streams().best(media::Type::Audio).map(|s| s.index());

    let video_params = input.stream(video_stream).map(|s| s.parameters());
    let video_params = video_params.ok_or_else(|| MediaError::Processing("video stream vanished".into()))?;
    let (profile, pix_fmt) = ffi::profile_and_format(&video_params);
    let h264 = video_params.id() == codec::Id::H264;
    let chroma_ok = pix_fmt < 0
        || pix_fmt == ffmpeg::ffi::AVPixelFormat::AV_PIX_FMT_YUV420P as i32
        || pix_fmt == ffmpeg::ffi::AVPixelFormat::AV_PIX_FMT_YUVJ420P as i32;
    let size = ffi::codec_facts(&video_params);
    let fps = streams[video_stream].fps.unwrap_or(0.0);
    let limit = |max: u32, value: f64| max == 0 || value <= f64::from(max) + 0.5;
    let facts = VideoFacts {
        codec: streams[video_stream].codec.clone(),
        h264,
        hevc: video_params.id() == codec::Id::HEVC,
        browser_h264: h264 && chroma_ok && plan::browser_h264_profile(profile),
        within_limits: limit(config.video.max_width, f64::from(size.width))
            && limit(config.video.max_height, f64::from(size.height))
            && limit(config.video.max_fps, fps),
        codec_repeat: config.has_codec_repeat(),
    };
    // The built-in patterns are raw video and PCM: encoded whatever the mode, as nothing can be copied.
    let mode = match (config.mode, source.kind) {
        (Mode::Copy, SourceKind::Builtin(_)) => Mode::Auto,
        (mode, _) => mode,
    };
    let video = plan::video(mode, &facts)?;
    let audio = match audio_stream {
        Some(i) => {
            let params = input.stream(i).map(|s| s.parameters());
            let is_aac = params.as_ref().is_some_and(|p| p.id() == codec::Id::AAC);
            let unknown = params.as_ref().map(ffi::codec_facts).is_none_or(|f| f.sample_rate == 0 || f.channels == 0);
            if is_aac && unknown {
                AudioPlan::Drop("the source's AAC format never came (no ADTS header with its first keyframe)".into())
            } else {
                plan::audio(mode, &streams[i].codec, is_aac, config.audio.disabled)
            }
        }
        None => AudioPlan::Drop("the source has no audio".into()),
    };
    let duration = input.duration();
    Ok(SourceInfo {
        format: input.format().name().to_string(),
        duration_secs: (duration > 0).then(|| duration as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE)),
        paced,
        streams,
        video_stream,
        audio_stream: audio_stream.filter(|_| !matches!(audio, AudioPlan::Drop(_))),
        video,
        audio,
    })
}

/// What one stream of the source is.
fn summarize(stream: &Stream) -> StreamSummary {
    let params = stream.parameters();
    let facts = ffi::codec_facts(&params);
    let kind = params.medium();
    let is_video = kind == media::Type::Video;
    let is_audio = kind == media::Type::Audio;
    StreamSummary {
        index: stream.index(),
        kind: format!("{kind:?}").to_lowercase(),
        codec: params.id().name().to_string(),
        width: is_video.then_some(facts.width),
        height: is_video.then_some(facts.height),
        fps: is_video.then(|| f64::from(frame_rate(stream))),
        sample_rate: is_audio.then_some(facts.sample_rate),
        channels: is_audio.then_some(facts.channels),
        bitrate: (facts.bit_rate > 0).then_some(facts.bit_rate),
    }
}
