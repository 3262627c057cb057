//! A live source is ready when its parameters are known, not after a fixed time. Joined mid-stream, an MPEG-TS
//! source (UDP, SRT, HTTP, a pushed one) gives its H.264 SPS and PPS only with its next keyframe, and the
//! short probe that suits RTSP (whose SDP carries them) ends before that; FFmpeg then leaves the picture size
//! unknown and the MP4 muxer refuses it. So when the probe left the size of H.264 video (or the format of AAC
//! audio) unknown, the pipeline reads on, up to the connect timeout, until the stream's own keyframe (and
//! ADTS header) tell, and keeps what it read from that keyframe on.

use super::Source;
use crate::media::error::MediaError;
use crate::media::ffi;
use ffmpeg::{codec, media, Packet};
use ffmpeg_next as ffmpeg;
use mqtt_video_wire::aac;
use mqtt_video_wire::codec_string::annex_b_nals;
use mqtt_video_wire::{h264, hevc};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long audio may still take once the video is ready; without its format by then the stream goes on
/// without audio (a picture beats none).
const AUDIO_GRACE: Duration = Duration::from_millis(1500);
/// Packets held while waiting at most (about 30 s of a 30 fps stream with audio).
const MAX_HELD: usize = 2000;

/// What is still unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Missing {
    video: bool,
    audio: bool,
}

/// Reads on until the parameters the probe left unknown are known; returns the packets read from the video's
/// first keyframe on, for the pipeline to use before it reads more. Nothing is read when nothing is missing.
pub fn wait_for_parameters(source: &mut Source, connect_timeout: Duration) -> Result<VecDeque<Packet>, MediaError> {
    let input = &source.input;
    let Some(video) = input.streams().best(media::Type::Video).map(|s| s.index()) else { return Ok(VecDeque::new()) };
    let audio = input.streams().best(media::Type::Audio).map(|s| s.index());
    let mut missing = Missing {
        video: input.stream(video).is_some_and(|s| {
            let p = s.parameters();
            let facts = ffi::codec_facts(&p);
            matches!(p.id(), codec::Id::H264 | codec::Id::HEVC) && (facts.width == 0 || facts.height == 0)
        }),
        audio: audio.and_then(|i| input.stream(i)).is_some_and(|s| {
            let p = s.parameters();
            let facts = ffi::codec_facts(&p);
            p.id() == codec::Id::AAC && (facts.sample_rate == 0 || facts.channels == 0)
        }),
    };
    if !missing.video && !missing.audio {
        return Ok(VecDeque::new());
    }
    tracing::debug!(?missing, "waiting for the source's own parameters");
    let started = Instant::now();
    let mut video_ready_at = (!missing.video).then_some(started);
    let mut held = VecDeque::new();
    // libavformat's parser flags the frame before a damaged one (see `Damage` in `copy/mod.rs`).
    let mut after_damage = false;
    while missing.video || missing.audio {
        if started.elapsed() > connect_timeout {
            if missing.video {
                return Err(MediaError::Timeout(format!(
                    "no keyframe within {:.1} s: the source's keyframe interval may be longer than \
                     source.connect_timeout_ms ({} ms); shorten the encoder's GOP or raise the timeout",
                    connect_timeout.as_secs_f64(),
                    connect_timeout.as_millis()
                )));
            }
            break;
        }
        if video_ready_at.is_some_and(|t| t.elapsed() > AUDIO_GRACE) {
            tracing::warn!("the source's audio format did not come with its first keyframe; going on without audio");
            break;
        }
        let mut packet = Packet::empty();
        match packet.read(&mut source.input) {
            Ok(()) => {}
            Err(ffmpeg::Error::Other { errno: ffmpeg::error::EAGAIN }) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => return Err(source.watchdog.classify_error(e, "waiting for the source's first keyframe")),
        }
        source.watchdog.touch();
        let index = packet.stream();
        if index == video {
            if missing.video {
                let damaged = std::mem::replace(&mut after_damage, packet.is_corrupt()) || packet.is_corrupt();
                if damaged || !packet.is_key() || !fill_video(source, video, &packet) {
                    continue;
                }
                missing.video = false;
                video_ready_at = Some(Instant::now());
                // Nothing before this keyframe is of use.
                held.clear();
            }
        } else if Some(index) == audio && missing.audio {
            // The stream's parameters wrap its own codecpar: setting them here is what the pipeline reads.
            if let (Some(stream), Some((profile, rate, channels))) =
                (audio.and_then(|i| source.input.stream(i)), packet.data().and_then(aac::adts_config))
            {
                ffi::set_audio_facts(&mut stream.parameters(), rate, channels, profile);
                missing.audio = false;
            }
        }
        if video_ready_at.is_some() && held.len() < MAX_HELD {
            held.push_back(packet);
        }
    }
    tracing::info!(waited_ms = started.elapsed().as_millis() as u64, "source parameters known");
    Ok(held)
}

/// Sets the video's size, profile, level and (if it had none) parameter sets from a keyframe that carries
/// them: an H.264 SPS and PPS, or an HEVC VPS, SPS and PPS.
fn fill_video(source: &mut Source, index: usize, keyframe: &Packet) -> bool {
    let data = keyframe.data().unwrap_or_default();
    let Some(stream) = source.input.stream(index) else { return false };
    let mut parameters = stream.parameters();
    let (width, height, profile, level, sets) = if parameters.id() == codec::Id::HEVC {
        let Some(sps) = annex_b_nals(data).find_map(|nal| hevc::parse_sps(nal).ok()) else { return false };
        let profile = i32::from(sps.ptl.profile_idc);
        (sps.width, sps.height, profile, i32::from(sps.ptl.level_idc), hevc::in_band_parameter_sets(data))
    } else {
        let Some(sps) = annex_b_nals(data).find_map(|nal| h264::parse_sps(nal).ok()) else { return false };
        let profile = h264_profile(sps.profile_idc, sps.constraints);
        (sps.width, sps.height, profile, i32::from(sps.level_idc), h264::in_band_parameter_sets(data))
    };
    ffi::set_video_facts(&mut parameters, width, height, profile, level);
    if ffi::extradata(&parameters).is_empty() && ffi::set_extradata(&mut parameters, &sets).is_err() {
        return false;
    }
    tracing::debug!(width, height, profile, "read the source's SPS");
    true
}

/// libavcodec's profile number for an SPS's profile_idc and constraint flags (`FF_PROFILE_H264_*`: the
/// profile_idc, with bit 9 for constrained baseline and bit 11 for intra profiles).
fn h264_profile(profile_idc: u8, constraints: u8) -> i32 {
    let mut profile = i32::from(profile_idc);
    if profile_idc == 66 && constraints & 0x40 != 0 {
        profile |= 1 << 9;
    }
    if matches!(profile_idc, 110 | 122 | 244) && constraints & 0x10 != 0 {
        profile |= 1 << 11;
    }
    profile
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_as_libavcodec_numbers_them() {
        assert_eq!(h264_profile(66, 0xc0), 66 | 512, "constrained baseline");
        assert_eq!(h264_profile(66, 0x00), 66);
        assert_eq!(h264_profile(100, 0x00), 100);
        assert_eq!(h264_profile(122, 0x10), 122 | 2048, "High 4:2:2 intra");
    }
}
