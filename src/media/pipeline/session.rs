//! One run over an opened source: the video and audio stages (copy or transcode), the renditions fed from
//! them, and the output: the muxer opened on the first video, packets written on the output's timeline,
//! segments handed to the emitter as events.

use super::analyse::frame_rate;
use super::timeline::Timeline;
use crate::media::config::PipelineConfig;
use crate::media::copy::{CopyAudio, CopyVideo};
use crate::media::emitter::Emitter;
use crate::media::encode::audio::AudioTranscoder;
use crate::media::encode::rendition::{self, AudioSource, RenditionControl, Renditions, StreamOutput};
use crate::media::encode::video::{EncodedPacket, VideoTranscoder};
use crate::media::error::MediaError;
use crate::media::events::{InitSegment, OutputInfo, PipelineEvent, SourceInfo};
use crate::media::mux::fragments::TimedMuxer;
use crate::media::mux::{Muxer, TrackSpec, VIDEO_TIME_BASE};
use crate::media::plan::{AudioPlan, TrackMode};
use crate::media::source::Source;
use bytes::Bytes;
use ffmpeg::{codec, Packet, Rational, Rescale};
use ffmpeg_next as ffmpeg;
use mqtt_video_wire::codec_string;
use mqtt_video_wire::fmp4::Segment;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const MICROS: Rational = Rational(1, 1_000_000);

/// How the video is made: the source's own, or decoded and encoded again.
enum VideoStage {
    Copy(CopyVideo),
    Transcode(Box<VideoTranscoder>),
}

/// How the audio is made, if there is any.
enum AudioStage {
    None,
    Copy(CopyAudio),
    Transcode(Box<AudioTranscoder>),
}

const VIDEO_TRACK: usize = 0;
const AUDIO_TRACK: usize = 1;

/// The state of one run over an opened source.
pub(super) struct Session<'a> {
    config: &'a PipelineConfig,
    video_index: usize,
    audio_index: Option<usize>,
    video: VideoStage,
    audio: AudioStage,
    timeline: Timeline,
    muxer: Option<TimedMuxer>,
    output: Option<OutputInfo>,
    fps: Rational,
    sequence: u64,
    renditions: Renditions,
    /// The output's audio track, which the renditions share.
    audio_spec: Option<TrackSpec>,
    /// Rendition events to send.
    side: rendition::Events,
}

impl<'a> Session<'a> {
    /// A run over `source` as `info` plans it, whose output starts at `start`: the output time (µs) of its
    /// first frame and the number of its first fragment.
    pub(super) fn new(
        source: &Source,
        info: &SourceInfo,
        config: &'a PipelineConfig,
        controls: &[Arc<RenditionControl>],
        start: (i64, u64),
    ) -> Result<Self, MediaError> {
        let (offset_us, first_sequence) = start;
        let stream = source
            .input
            .stream(info.video_stream)
            .ok_or_else(|| MediaError::Processing("video stream vanished".into()))?;
        let fps = frame_rate(&stream);
        let video = match info.video {
            TrackMode::Copy => VideoStage::Copy(CopyVideo::new(&stream, fps)),
            TrackMode::Transcode => VideoStage::Transcode(Box::new(VideoTranscoder::new(
                stream.parameters(),
                stream.time_base(),
                fps,
                &config.video,
                source.kind.is_live_protocol(),
            )?)),
        };
        let audio = match (info.audio_stream.and_then(|i| source.input.stream(i)), &info.audio) {
            (Some(s), AudioPlan::Copy) => AudioStage::Copy(CopyAudio::new(&s)),
            (Some(s), AudioPlan::Transcode) => {
                match AudioTranscoder::new(s.parameters(), s.time_base(), &config.audio) {
                    Ok(t) => AudioStage::Transcode(Box::new(t)),
                    // Video without sound beats no video at all.
                    Err(e) => {
                        tracing::warn!(error = %e, "audio dropped");
                        AudioStage::None
                    }
                }
            }
            _ => AudioStage::None,
        };
        let copied = (info.video == TrackMode::Copy).then(|| (stream.parameters(), source.kind.is_live_protocol()));
        let audio_source = match (&audio, info.audio_stream.and_then(|i| source.input.stream(i))) {
            (AudioStage::None, _) | (_, None) => None,
            (_, Some(s)) => {
                Some(AudioSource { parameters: s.parameters(), time_base: s.time_base(), config: config.audio.clone() })
            }
        };
        let renditions = Renditions::new(&config.renditions, &config.video, controls, fps, copied, audio_source);
        Ok(Self {
            config,
            video_index: info.video_stream,
            audio_index: info.audio_stream,
            video,
            audio,
            timeline: Timeline::new(offset_us),
            muxer: None,
            output: None,
            fps,
            sequence: first_sequence,
            renditions,
            audio_spec: None,
            side: Vec::new(),
        })
    }

    /// The index of the source's video stream, the one the session takes video from.
    pub(super) fn video_index(&self) -> usize {
        self.video_index
    }

    /// Whether the video transcodes (and so has frames to give up under load).
    pub(super) fn transcodes_video(&self) -> bool {
        matches!(self.video, VideoStage::Transcode(_))
    }

    /// Whether the output's timeline has started (a first video frame was placed on it).
    pub(super) fn started(&self) -> bool {
        self.timeline.started()
    }

    /// The source was rewound for its next loop: the output's time goes on from where the loop ended.
    pub(super) fn start_loop(&mut self) {
        self.timeline.looped();
        self.renditions.restart();
        match &mut self.video {
            VideoStage::Copy(c) => c.restart(),
            VideoStage::Transcode(t) => t.reset_decoder(),
        }
        if let AudioStage::Transcode(t) = &mut self.audio {
            t.reset_decoder();
        }
    }

    /// The pipeline skipped ahead and goes on from this keyframe.
    pub(super) fn resume(&mut self) {
        self.renditions.restart();
        if let VideoStage::Transcode(t) = &mut self.video {
            t.resume();
        }
    }

    /// The share of the source's frames to encode (a copy passes all it gets).
    pub(super) fn set_share(&mut self, share: f64) {
        if let VideoStage::Transcode(t) = &mut self.video {
            t.set_share(share);
        }
    }

    /// Takes a packet of the source, which arrived (or was sent) at `arrival` (µs since the epoch).
    pub(super) fn handle(&mut self, packet: Packet, arrival: u64, em: &mut Emitter) -> Result<(), MediaError> {
        let index = packet.stream();
        if index == self.video_index {
            self.handle_video(packet, arrival, em)
        } else if Some(index) == self.audio_index {
            self.handle_audio(packet, em)
        } else {
            Ok(())
        }
    }

    fn handle_video(&mut self, packet: Packet, arrival: u64, em: &mut Emitter) -> Result<(), MediaError> {
        let mut ready = Vec::new();
        match &mut self.video {
            VideoStage::Copy(c) => {
                let timeline = &mut self.timeline;
                let Some(packet) = c.packet(packet, &em.stats, |ts_us| timeline.rel_or_start(ts_us)) else {
                    return Ok(());
                };
                let stream = stream_output(self.muxer.is_some(), &self.audio_spec, &self.output, self.config);
                self.renditions.copied_packet(&packet, arrival, &stream, &mut self.side);
                ready.push(EncodedPacket { packet, arrival_us: arrival });
            }
            VideoStage::Transcode(t) => {
                // The decoder conceals what is missing; the encoder's output is whole again.
                if packet.is_corrupt() {
                    em.stats.damaged.fetch_add(1, Ordering::Relaxed);
                }
                t.send(&packet, arrival)?;
                let timeline = &mut self.timeline;
                let stream = stream_output(self.muxer.is_some(), &self.audio_spec, &self.output, self.config);
                let (renditions, side) = (&mut self.renditions, &mut self.side);
                let mut tap = |frame: &ffmpeg::frame::Video, pts, arrival, key| {
                    renditions.frame(frame, pts, arrival, key, &stream, side)
                };
                t.receive(|ts_us| timeline.rel_or_start(ts_us), &mut ready, &mut tap)?;
                em.stats.frames_shed.store(t.frames_shed(), Ordering::Relaxed);
            }
        }
        em.send_renditions(&mut self.side)?;
        if self.muxer.is_none() && !ready.is_empty() {
            self.open_muxer(&ready[0].packet, em)?;
        }
        for p in ready {
            self.write_video(p, em)?;
        }
        Ok(())
    }

    fn handle_audio(&mut self, packet: Packet, em: &mut Emitter) -> Result<(), MediaError> {
        if self.muxer.is_none() {
            return Ok(());
        }
        if !self.renditions.is_empty() {
            let stream = stream_output(true, &self.audio_spec, &self.output, self.config);
            let timeline = &self.timeline;
            self.renditions.source_audio(&packet, &|ts_us| timeline.rel(ts_us), &stream, &mut self.side)?;
        }
        let mut ready = Vec::new();
        match &mut self.audio {
            AudioStage::None => return Ok(()),
            AudioStage::Copy(c) => {
                let timeline = &self.timeline;
                let Some(packet) = c.packet(packet, &em.stats, |ts_us| timeline.rel(ts_us)) else { return Ok(()) };
                ready.push(packet);
            }
            AudioStage::Transcode(t) => {
                if packet.is_corrupt() {
                    em.stats.damaged.fetch_add(1, Ordering::Relaxed);
                }
                t.send(&packet)?;
                let timeline = &self.timeline;
                t.receive(|ts_us| timeline.rel(ts_us), &mut ready)?;
            }
        }
        if !self.renditions.is_empty() {
            let stream = stream_output(true, &self.audio_spec, &self.output, self.config);
            self.renditions.audio(&ready, &stream, &mut self.side)?;
            em.send_renditions(&mut self.side)?;
        }
        for p in ready {
            self.write(p, AUDIO_TRACK, None, em)?;
        }
        Ok(())
    }

    fn open_muxer(&mut self, first: &Packet, em: &mut Emitter) -> Result<(), MediaError> {
        let (video_spec, width, height, mode) = match &mut self.video {
            VideoStage::Copy(c) => {
                let (spec, width, height) = c.track(first)?;
                (spec, width, height, TrackMode::Copy)
            }
            VideoStage::Transcode(t) => {
                let enc = t.encoder().ok_or_else(|| MediaError::Processing("video encoder not open".into()))?;
                let spec = TrackSpec {
                    parameters: codec::Parameters::from(enc),
                    time_base: VIDEO_TIME_BASE,
                    is_video: true,
                    copied: false,
                };
                (spec, enc.width(), enc.height(), TrackMode::Transcode)
            }
        };
        let mut specs = vec![video_spec];
        let audio_mode = match &mut self.audio {
            AudioStage::None => None,
            AudioStage::Copy(c) => {
                specs.push(c.track()?);
                Some(TrackMode::Copy)
            }
            AudioStage::Transcode(t) => {
                specs.push(TrackSpec {
                    parameters: codec::Parameters::from(t.encoder()),
                    time_base: t.time_base(),
                    is_video: false,
                    copied: false,
                });
                Some(TrackMode::Transcode)
            }
        };
        self.audio_spec = specs.get(1).cloned();
        let (muxer, segments) = Muxer::new(specs, self.config.fragment.duration_ms)?;
        let fps = match (&self.video, self.config.video.max_fps) {
            (VideoStage::Transcode(_), max) if max > 0 => f64::from(self.fps).min(f64::from(max)),
            _ => f64::from(self.fps),
        };
        let mime_codec = codec_string::mime_type(muxer.tracks())?;
        self.output = Some(OutputInfo {
            mime_codec,
            width,
            height,
            fps,
            has_audio: audio_mode.is_some(),
            video: mode,
            audio: audio_mode,
        });
        self.muxer = Some(TimedMuxer::new(muxer));
        // Before the init segment: a describe answered once it is in lists the renditions too.
        let main_h264 = self.output.as_ref().is_some_and(|o| mqtt_video_wire::output::is_h264(&o.mime_codec));
        let mut facts = self.renditions.facts(width, height, self.audio_spec.as_ref(), main_h264);
        em.send_renditions(&mut facts)?;
        self.emit(segments, em)
    }

    fn write_video(&mut self, p: EncodedPacket, em: &mut Emitter) -> Result<(), MediaError> {
        let dts = p.packet.dts().unwrap_or(0);
        let end = (dts + p.packet.duration()).rescale(VIDEO_TIME_BASE, MICROS);
        self.timeline.extend_to(end);
        self.write(p.packet, VIDEO_TRACK, Some(p.arrival_us), em)
    }

    /// Writes a packet to a track; `arrival` is given for video, whose frames date the fragments.
    fn write(
        &mut self,
        packet: Packet,
        track: usize,
        arrival: Option<u64>,
        em: &mut Emitter,
    ) -> Result<(), MediaError> {
        let Some(muxer) = self.muxer.as_mut() else { return Ok(()) };
        let segments = muxer.write(packet, track, arrival)?;
        self.emit(segments, em)
    }

    fn emit(&mut self, segments: Vec<Segment>, em: &mut Emitter) -> Result<(), MediaError> {
        for segment in segments {
            match segment {
                Segment::Init(bytes) => {
                    let info =
                        self.output.clone().ok_or_else(|| MediaError::Processing("init before output".into()))?;
                    em.control(PipelineEvent::Init(InitSegment { bytes: Bytes::from(bytes), info }))?;
                }
                Segment::Fragment { bytes, moof } => {
                    // Segments come from the muxer: it is there.
                    let Some(muxer) = self.muxer.as_mut() else { continue };
                    let prft = self.config.fragment.producer_reference_time;
                    let fragment = muxer.fragment(bytes, moof, self.sequence, self.timeline.end_us(), prft)?;
                    self.sequence += 1;
                    em.fragment(fragment)?;
                }
            }
        }
        Ok(())
    }

    /// The source ended: what the encoders and the muxer still hold goes out.
    pub(super) fn finish(&mut self, em: &mut Emitter) -> Result<(), MediaError> {
        let mut video = Vec::new();
        if let VideoStage::Transcode(t) = &mut self.video {
            t.send_eof()?;
            let timeline = &mut self.timeline;
            t.receive(|ts_us| timeline.rel_or_start(ts_us), &mut video, &mut |_, _, _, _| Ok(()))?;
            t.finish(&mut video)?;
        }
        for p in video {
            self.write_video(p, em)?;
        }
        let mut audio = Vec::new();
        if let AudioStage::Transcode(t) = &mut self.audio {
            if self.muxer.is_some() {
                t.finish(&mut audio)?;
            }
        }
        for p in audio {
            self.write(p, AUDIO_TRACK, None, em)?;
        }
        if let Some(muxer) = self.muxer.as_mut() {
            let segments = muxer.finish()?;
            self.emit(segments, em)?;
        }
        self.muxer = None;
        Ok(())
    }
}

/// What the renditions take from the stream's output, from the session's fields.
fn stream_output<'b>(
    open: bool,
    audio: &'b Option<TrackSpec>,
    output: &Option<OutputInfo>,
    config: &PipelineConfig,
) -> StreamOutput<'b> {
    StreamOutput {
        open,
        audio: audio.as_ref(),
        audio_mode: output.as_ref().and_then(|o| o.audio),
        fragment_ms: config.fragment.duration_ms,
        prft: config.fragment.producer_reference_time,
    }
}
