//! Copying: the source's own packets passed to the muxer without decoding, once they are known to be whole,
//! and placed on the output's timeline. Video (re)starts at a keyframe that decodes cleanly ([`keycheck`]),
//! with the decode times its demuxer left out filled in ([`dts`]); an AAC frame loses its ADTS header. Each
//! stage also describes its output track, with the codec config the muxer needs made from the stream itself
//! when the source sent it only in-band.

pub mod dts;
pub mod keycheck;

use crate::media::error::{processing, MediaError};
use crate::media::events::PipelineStats;
use crate::media::ffi;
use crate::media::mux::{TrackSpec, VIDEO_TIME_BASE};
use dts::DtsFiller;
use ffmpeg::format::stream::Stream;
use ffmpeg::{codec, Packet, Rational, Rescale};
use ffmpeg_next as ffmpeg;
use keycheck::KeyframeCheck;
use mqtt_video_wire::aac;
use mqtt_video_wire::{h264, hevc};
use std::sync::atomic::Ordering;

const MICROS: Rational = Rational(1, 1_000_000);

/// Copied video: the source's packets from a clean keyframe on, retimed onto the output's timeline.
pub struct CopyVideo {
    parameters: codec::Parameters,
    time_base: Rational,
    /// A frame's duration in [`VIDEO_TIME_BASE`], for packets that do not give theirs.
    frame_duration: i64,
    /// Nothing passes until a keyframe to (re)start on.
    waiting_keyframe: bool,
    /// Damage seen in the video, and what it costs.
    damaged: Damage,
    /// Decodes the keyframe a (re)start would begin with.
    check: Option<Box<KeyframeCheck>>,
    /// Fills in decode times the demuxer leaves out.
    dts: DtsFiller,
}

/// Damaged video in copy mode: which frames it costs.
#[derive(Debug, Default)]
struct Damage {
    /// The previous frame was flagged corrupt (so this one is damaged).
    just_flagged: bool,
    /// The wait for a keyframe is because of damage (its frames count as damaged drops).
    waiting: bool,
}

impl CopyVideo {
    /// A copy of the source's video `stream`, whose nominal frame rate is `fps`.
    pub fn new(stream: &Stream, fps: Rational) -> Self {
        Self {
            parameters: stream.parameters(),
            time_base: stream.time_base(),
            frame_duration: (90_000.0 / f64::from(fps)).round() as i64,
            waiting_keyframe: true,
            damaged: Damage::default(),
            check: KeyframeCheck::new(&stream.parameters()).map(Box::new),
            dts: DtsFiller::new(
                ffi::codec_facts(&stream.parameters()).video_delay,
                1i64.rescale(Rational(fps.denominator(), fps.numerator()), stream.time_base()),
            ),
        }
    }

    /// The source was rewound: start again at its next keyframe.
    pub fn restart(&mut self) {
        self.waiting_keyframe = true;
    }

    /// `packet` with its times on the output's timeline (in [`VIDEO_TIME_BASE`]), or None when it is kept back:
    /// damaged, before a keyframe to start on, or without a time. `rel` places a source time (µs) on the
    /// output's timeline, starting it if need be; frames kept back for damage are counted in `stats`.
    pub fn packet(
        &mut self,
        mut packet: Packet,
        stats: &PipelineStats,
        rel: impl FnOnce(i64) -> Option<i64>,
    ) -> Option<Packet> {
        // A damaged frame would break the browser's decoder, and every frame up to the next keyframe
        // refers to it: viewers get a short freeze instead. libavformat's H.264 parser hands out a
        // frame when the next one starts, with the flags of the packet that started it: the frame
        // flagged corrupt comes just before the damaged one, so the frame after it goes too, even
        // if it is a keyframe.
        let corrupt = packet.is_corrupt();
        if corrupt {
            tracing::debug!("damaged video: keeping it back up to the next keyframe");
        }
        let skip = std::mem::replace(&mut self.damaged.just_flagged, corrupt) || corrupt;
        if skip {
            self.waiting_keyframe = true;
            self.damaged.waiting = true;
        }
        // RTSP can start mid-GOP and deliver a first keyframe without pts: start at a clean keyframe.
        if self.waiting_keyframe {
            let unusable = skip || !packet.is_key() || packet.pts().is_none();
            if unusable || self.check.as_mut().is_some_and(|c| !c.is_clean(&packet)) {
                if !unusable {
                    tracing::debug!("a keyframe that does not decode cleanly: waiting for the next");
                    self.damaged.waiting = true;
                }
                if self.damaged.waiting {
                    stats.damaged.fetch_add(1, Ordering::Relaxed);
                }
                return None;
            }
            self.waiting_keyframe = false;
            self.damaged.waiting = false;
            self.dts.restart();
        }
        let dts = self.dts.fill(packet.dts(), packet.pts())?;
        let pts = packet.pts().unwrap_or(dts);
        let tb = self.time_base;
        let rel_dts = rel(dts.rescale(tb, MICROS))?;
        let rel_pts = (rel_dts + (pts - dts).rescale(tb, MICROS)).max(rel_dts);
        packet.set_dts(Some(rel_dts.rescale(MICROS, VIDEO_TIME_BASE)));
        packet.set_pts(Some(rel_pts.rescale(MICROS, VIDEO_TIME_BASE)));
        let duration = match packet.duration() {
            d if d > 0 => d.rescale(tb, VIDEO_TIME_BASE),
            _ => self.frame_duration,
        };
        packet.set_duration(duration);
        Some(packet)
    }

    /// The output's video track, with the picture's width and height; `first` is the first keyframe passed on.
    pub fn track(&mut self, first: &Packet) -> Result<(TrackSpec, u32, u32), MediaError> {
        // Some cameras send their parameter sets only in-band: lift them from the first keyframe.
        if ffi::extradata(&self.parameters).is_empty() {
            let keyframe = first.data().unwrap_or_default();
            let (extradata, name) = if self.parameters.id() == codec::Id::HEVC {
                (hevc::in_band_parameter_sets(keyframe), "HEVC stream without VPS/SPS/PPS")
            } else {
                (h264::in_band_parameter_sets(keyframe), "H.264 stream without SPS/PPS")
            };
            if extradata.is_empty() {
                return Err(MediaError::Unsupported(name.into()));
            }
            ffi::set_extradata(&mut self.parameters, &extradata).map_err(processing("setting parameter sets"))?;
        }
        let facts = ffi::codec_facts(&self.parameters);
        let spec =
            TrackSpec { parameters: self.parameters.clone(), time_base: VIDEO_TIME_BASE, is_video: true, copied: true };
        Ok((spec, facts.width, facts.height))
    }
}

/// Copied AAC audio: the source's frames without their ADTS headers, on the output's timeline.
pub struct CopyAudio {
    parameters: codec::Parameters,
    time_base: Rational,
    /// Decodes each frame, to leave out the damaged ones the demuxer did not flag.
    check: Option<keycheck::AudioCheck>,
}

impl CopyAudio {
    /// A copy of the source's audio `stream`.
    pub fn new(stream: &Stream) -> Self {
        Self {
            parameters: stream.parameters(),
            time_base: stream.time_base(),
            check: keycheck::AudioCheck::new(&stream.parameters()),
        }
    }

    /// `packet` with its times on the output's timeline (in the stream's time base), or None when it is left
    /// out: damaged (counted in `stats`), without a time, or before the timeline starts. `rel` places a source
    /// time (µs) on the output's timeline.
    pub fn packet(
        &mut self,
        mut packet: Packet,
        stats: &PipelineStats,
        rel: impl FnOnce(i64) -> Option<i64>,
    ) -> Option<Packet> {
        // An AAC frame stands alone: a damaged one is left out (a 21 ms gap), not handed to browsers.
        if packet.is_corrupt() || self.check.as_mut().is_some_and(|c| !c.is_clean(&packet)) {
            stats.damaged.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let tb = self.time_base;
        let dts = packet.dts().or(packet.pts())?;
        let rel_tb = rel(dts.rescale(tb, MICROS))?.rescale(MICROS, tb);
        // MP4 carries bare AAC frames; the config lives in the init segment.
        if let Some(len) = packet.data().and_then(aac::adts_header_len) {
            let mut bare = Packet::copy(&packet.data().unwrap_or_default()[len..]);
            bare.set_duration(packet.duration());
            bare.set_flags(packet.flags());
            packet = bare;
        }
        packet.set_dts(Some(rel_tb));
        packet.set_pts(Some(rel_tb));
        Some(packet)
    }

    /// The output's audio track.
    pub fn track(&mut self) -> Result<TrackSpec, MediaError> {
        // ADTS sources (MPEG-TS) have no AudioSpecificConfig; the moov is written before any packet.
        if ffi::extradata(&self.parameters).is_empty() {
            let facts = ffi::codec_facts(&self.parameters);
            let (profile, _) = ffi::profile_and_format(&self.parameters);
            let asc = aac::audio_specific_config(profile, facts.sample_rate, facts.channels).ok_or_else(|| {
                MediaError::Unsupported(format!(
                    "AAC profile {profile} at {} Hz with {} channels cannot be copied into MP4",
                    facts.sample_rate, facts.channels
                ))
            })?;
            ffi::set_extradata(&mut self.parameters, &asc).map_err(processing("setting the AAC config"))?;
        }
        Ok(TrackSpec { parameters: self.parameters.clone(), time_base: self.time_base, is_video: false, copied: true })
    }
}
