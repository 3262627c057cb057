//! Renditions: copies of a stream's video at another size, frame rate or bitrate, encoded only while someone
//! watches them. They take the frames the pipeline decodes anyway (transcode) or decodes for them alone (copy,
//! and only while one is watched), so a source is decoded once whatever the number of renditions. Each is
//! muxed with the stream's own audio packets, on the stream's media timeline, with a keyframe wherever the
//! stream's output has one (transcode: main's keyframes; copy: the source's), so that a page can switch
//! between them at a keyframe with no gap and no overlap.

use super::audio::AudioTranscoder;
use super::video::{self, EncodedPacket, FrameEncoder};
use crate::media::config::{AudioEncoderConfig, RenditionConfig, VideoEncoderConfig};
use crate::media::error::{processing, received, MediaError};
use crate::media::events::{InitSegment, OutputInfo, RenditionEvent, RenditionInfo};
use crate::media::mux::fragments::TimedMuxer;
use crate::media::mux::{Muxer, TrackSpec, VIDEO_TIME_BASE};
use crate::media::plan::TrackMode;
use crate::media::timing::ArrivalTracker;
use bytes::Bytes;
use ffmpeg::codec::{self, threading};
use ffmpeg::{decoder, frame, Packet, Rational, Rescale};
use ffmpeg_next as ffmpeg;
use mqtt_video_wire::fmp4::Segment;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const MICROS: Rational = Rational(1, 1_000_000);

/// x264 never places a keyframe of its own in a rendition within this many frames: they come from the stream.
const NO_OWN_KEYFRAMES: u32 = 100_000;

/// What the server and the pipeline runs of one stream share about one rendition.
#[derive(Debug)]
pub struct RenditionControl {
    wanted: AtomicBool,
    next_sequence: AtomicU64,
    /// Time spent scaling and encoding its frames on the pipeline's thread, in µs (x264's slice threads
    /// work within it).
    encode_us: AtomicU64,
}

impl Default for RenditionControl {
    fn default() -> Self {
        Self { wanted: AtomicBool::new(false), next_sequence: AtomicU64::new(1), encode_us: AtomicU64::new(0) }
    }
}

impl RenditionControl {
    /// Someone watches it (encode it from the next keyframe on), or nobody does (stop encoding it).
    pub fn set_wanted(&self, wanted: bool) {
        self.wanted.store(wanted, Ordering::Relaxed);
    }

    /// Whether it is to be encoded.
    pub fn wanted(&self) -> bool {
        self.wanted.load(Ordering::Relaxed)
    }

    /// The number its next fragment gets: they run on across encoder and pipeline restarts.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence.load(Ordering::Relaxed)
    }

    /// Seconds spent encoding it so far, over every pipeline run.
    pub fn encode_seconds(&self) -> f64 {
        self.encode_us.load(Ordering::Relaxed) as f64 / 1e6
    }

    fn take_sequence(&self) -> u64 {
        self.next_sequence.fetch_add(1, Ordering::Relaxed)
    }
}

/// What the renditions take from the stream's own output.
pub struct StreamOutput<'a> {
    /// The stream's output is open (its audio track is known).
    pub open: bool,
    /// Its audio track, shared by the renditions.
    pub audio: Option<&'a TrackSpec>,
    /// How its audio is made.
    pub audio_mode: Option<TrackMode>,
    /// Least fragment duration (ms).
    pub fragment_ms: u32,
    /// Whether fragments carry `prft`.
    pub prft: bool,
}

/// Events for the pipeline to send: (rendition index, event).
pub type Events = Vec<(usize, RenditionEvent)>;

/// The renditions of one pipeline run.
pub struct Renditions {
    outs: Vec<Out>,
    /// In copy mode, the source's video, decoded for the renditions only while one is watched.
    copy: Option<CopyDecoder>,
    /// How long before its presentation the stream's keyframes decode (a copied source with B-frames), in
    /// ticks, the most seen in this run: the renditions' frames decode that much before theirs too, so that a
    /// keyframe has the same decode time (`tfdt`) and presentation time in every rendition. An open GOP's
    /// keyframes (x265's CRA) decode further ahead than the IDR the stream starts with; never shrinking, it
    /// changes once and the renditions' decode times stay in order ([`decode_time`]).
    decode_ahead: i64,
    /// The source's audio (parameters, time base), for renditions with an audio bitrate of their own.
    audio_source: Option<(codec::Parameters, Rational)>,
}

/// The source's audio, for renditions that encode their own: its parameters and time base, and the stream's
/// audio settings (the rendition's bitrate replaces theirs).
pub struct AudioSource {
    /// Codec parameters of the source's audio stream.
    pub parameters: codec::Parameters,
    /// Its time base.
    pub time_base: Rational,
    /// The stream's `[pipeline.audio]`.
    pub config: AudioEncoderConfig,
}

struct CopyDecoder {
    parameters: codec::Parameters,
    live: bool,
    decoder: Option<decoder::Video>,
    arrivals: ArrivalTracker,
}

struct Out {
    name: String,
    config: VideoEncoderConfig,
    fps: Rational,
    /// Ticks of [`VIDEO_TIME_BASE`] between its frames.
    frame_duration: i64,
    control: Arc<RenditionControl>,
    running: Option<Box<Running>>,
    /// An audio encoder of its own at this bitrate, instead of the stream's audio packets.
    audio: Option<AudioEncoderConfig>,
    /// The implicit H.264 repeat (`config::CODEC_REPEAT`), offered only when `main` is not H.264.
    implicit: bool,
    /// It failed in this pipeline run, or is not offered in it: left out until the next.
    left_out: bool,
}

/// A rendition being encoded.
struct Running {
    encoder: FrameEncoder,
    muxer: Option<TimedMuxer>,
    info: Option<OutputInfo>,
    last_pts: Option<i64>,
    last_dts: Option<i64>,
    end_us: i64,
    has_audio: bool,
    fps: f64,
    /// Its own audio encoder, if it has one.
    own_audio: Option<Box<AudioTranscoder>>,
}

impl Renditions {
    /// The renditions of `configs` over the stream's video settings `main`, at most at the source's `fps`;
    /// `controls` are the server's (one per config; missing ones are never wanted). `copy`: the source's
    /// video parameters when the stream copies it (and whether the source is live), to decode it here.
    pub fn new(
        configs: &[RenditionConfig],
        main: &VideoEncoderConfig,
        controls: &[Arc<RenditionControl>],
        fps: Rational,
        copy: Option<(codec::Parameters, bool)>,
        audio: Option<AudioSource>,
    ) -> Self {
        let outs = configs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let config = c.video(main);
                let fps = match config.max_fps {
                    max if max > 0 && f64::from(fps) > f64::from(max) => Rational(max as i32, 1),
                    _ => fps,
                };
                Out {
                    name: c.name.clone(),
                    frame_duration: (f64::from(VIDEO_TIME_BASE.denominator()) / f64::from(fps)).round() as i64,
                    config,
                    fps,
                    control: controls.get(i).cloned().unwrap_or_default(),
                    running: None,
                    implicit: c.implicit,
                    left_out: false,
                    audio: match (c.audio_bitrate_kbps, &audio) {
                        (Some(bitrate_kbps), Some(a)) => Some(AudioEncoderConfig { bitrate_kbps, ..a.config.clone() }),
                        _ => None,
                    },
                }
            })
            .collect::<Vec<_>>();
        let copy = copy.filter(|_| !outs.is_empty()).map(|(parameters, live)| CopyDecoder {
            parameters,
            live,
            decoder: None,
            arrivals: ArrivalTracker::default(),
        });
        let audio_source = audio.map(|a| (a.parameters, a.time_base));
        Self { outs, copy, decode_ahead: 0, audio_source }
    }

    /// Whether any rendition is configured.
    pub fn is_empty(&self) -> bool {
        self.outs.is_empty()
    }

    /// What each rendition will be, for a source of `width` x `height` whose output is `main` (its audio
    /// part is theirs too): an encoder is opened and closed for its exact codec string. The implicit H.264
    /// repeat is left out of a run whose `main` is H.264 already (`main_h264`).
    pub fn facts(&mut self, width: u32, height: u32, audio: Option<&TrackSpec>, main_h264: bool) -> Events {
        let mut out = Vec::new();
        for (i, o) in self.outs.iter_mut().enumerate() {
            if o.implicit && main_h264 {
                o.left_out = true;
                out.push((i, RenditionEvent::NotOffered));
                continue;
            }
            let (w, h) = video::output_size(width, height, o.config.max_width, o.config.max_height);
            let mime = video::open_x264(w, h, o.fps, &o.config, NO_OWN_KEYFRAMES).and_then(|enc| {
                let video = TrackSpec {
                    parameters: codec::Parameters::from(&enc),
                    time_base: VIDEO_TIME_BASE,
                    is_video: true,
                    copied: false,
                };
                let (muxer, _) = Muxer::new(std::iter::once(video).chain(audio.cloned()).collect(), 0)?;
                Ok(mqtt_video_wire::codec_string::mime_type(muxer.tracks())?)
            });
            match mime {
                Ok(mime_codec) => out.push((
                    i,
                    RenditionEvent::Facts(RenditionInfo {
                        name: o.name.clone(),
                        mime_codec,
                        width: w,
                        height: h,
                        fps: f64::from(o.fps),
                        bitrate_kbps: (o.config.bitrate_kbps > 0).then_some(o.config.bitrate_kbps),
                    }),
                )),
                Err(e) => o.fail(i, &e, &mut out),
            }
        }
        out
    }

    /// The source looped or restarted its decoding: copy-mode decoding starts again at the next keyframe.
    pub fn restart(&mut self) {
        if let Some(copy) = &mut self.copy {
            copy.decoder = None;
            copy.arrivals.clear();
        }
    }

    /// A frame the stream encodes (transcode mode), at output timestamp `pts` ([`VIDEO_TIME_BASE`]).
    pub fn frame(
        &mut self,
        decoded: &frame::Video,
        pts: i64,
        arrival: u64,
        keyframe: bool,
        stream: &StreamOutput<'_>,
        events: &mut Events,
    ) -> Result<(), MediaError> {
        let audio = self.audio_source.as_ref();
        encode_all(&mut self.outs, decoded, (pts, arrival, keyframe), (self.decode_ahead, audio), stream, events);
        Ok(())
    }

    /// A video packet the stream copies, with its output timestamps ([`VIDEO_TIME_BASE`]): decoded here
    /// while any rendition is watched, from a keyframe on.
    /// A decoder that fails fails the renditions that are watched, not the stream.
    pub fn copied_packet(&mut self, packet: &Packet, arrival: u64, stream: &StreamOutput<'_>, events: &mut Events) {
        if let Err(e) = self.decode_copied(packet, arrival, stream, events) {
            if let Some(copy) = self.copy.as_mut() {
                copy.decoder = None;
            }
            for (i, o) in self.outs.iter_mut().enumerate().filter(|(_, o)| o.control.wanted() && !o.left_out) {
                o.fail(i, &e, events);
            }
        }
    }

    fn decode_copied(
        &mut self,
        packet: &Packet,
        arrival: u64,
        stream: &StreamOutput<'_>,
        events: &mut Events,
    ) -> Result<(), MediaError> {
        let Some(copy) = self.copy.as_mut() else { return Ok(()) };
        if let (true, Some(pts), Some(dts)) = (packet.is_key(), packet.pts(), packet.dts()) {
            self.decode_ahead = self.decode_ahead.max(pts - dts);
        }
        if !self.outs.iter().any(|o| o.running.is_some() || (o.control.wanted() && !o.left_out)) {
            copy.decoder = None;
            return Ok(());
        }
        if copy.decoder.is_none() {
            if !packet.is_key() {
                return Ok(());
            }
            copy.decoder = Some(open_decoder(&copy.parameters, copy.live)?);
            copy.arrivals.clear();
        }
        let Some(decoder) = copy.decoder.as_mut() else { return Ok(()) };
        if let Some(pts) = packet.pts() {
            copy.arrivals.push(pts, arrival);
        }
        match decoder.send_packet(packet) {
            Ok(()) | Err(ffmpeg::Error::InvalidData) => {}
            Err(e) => return Err(processing("decoding video for the renditions")(e)),
        }
        let mut decoded = frame::Video::empty();
        loop {
            match received(decoder.receive_frame(&mut decoded)) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(ffmpeg::Error::InvalidData) => continue,
                Err(e) => return Err(processing("decoding video for the renditions")(e)),
            }
            let Some(pts) = decoded.timestamp() else { continue };
            let arrival = copy.arrivals.take(pts).unwrap_or_else(crate::media::timing::wallclock_us);
            let frame = (pts, arrival, decoded.is_key());
            let audio = self.audio_source.as_ref();
            encode_all(&mut self.outs, &decoded, frame, (self.decode_ahead, audio), stream, events);
        }
    }

    /// A source audio packet, for the renditions with an audio encoder of their own; `to_rel_us` maps its
    /// time (µs) to the stream's timeline.
    pub fn source_audio(
        &mut self,
        packet: &Packet,
        to_rel_us: &dyn Fn(i64) -> Option<i64>,
        stream: &StreamOutput<'_>,
        events: &mut Events,
    ) -> Result<(), MediaError> {
        for (i, o) in self.outs.iter_mut().enumerate() {
            let Some(r) = o.running.as_mut().filter(|r| r.muxer.is_some()) else { continue };
            let Some(t) = r.own_audio.as_mut() else { continue };
            let mut ready = Vec::new();
            let done = t.send(packet).and_then(|()| t.receive(to_rel_us, &mut ready)).and_then(|()| {
                ready.into_iter().try_for_each(|p| r.write(p, 1, None, (i, &o.control), stream, events))
            });
            if let Err(e) = done {
                o.fail(i, &e, events);
            }
        }
        Ok(())
    }

    /// Audio packets the stream wrote (on its timeline, in the audio track's time base): into every
    /// rendition that is muxing and shares the stream's audio.
    pub fn audio(
        &mut self,
        packets: &[Packet],
        stream: &StreamOutput<'_>,
        events: &mut Events,
    ) -> Result<(), MediaError> {
        for (i, o) in self.outs.iter_mut().enumerate() {
            let muxing = |r: &&mut Box<Running>| r.has_audio && r.muxer.is_some() && r.own_audio.is_none();
            let Some(r) = o.running.as_mut().filter(muxing) else { continue };
            let done = packets.iter().try_for_each(|p| r.write(p.clone(), 1, None, (i, &o.control), stream, events));
            if let Err(e) = done {
                o.fail(i, &e, events);
            }
        }
        Ok(())
    }
}

fn open_decoder(parameters: &codec::Parameters, live: bool) -> Result<decoder::Video, MediaError> {
    let mut context = codec::context::Context::from_parameters(parameters.clone())
        .map_err(processing("reading video parameters for the renditions"))?;
    // As the stream's own decoder would: slice threads add no delay, frame threads a frame each.
    let kind = if live { threading::Type::Slice } else { threading::Type::Frame };
    context.set_threading(threading::Config { kind, count: 0, ..Default::default() });
    if live {
        context.set_flags(codec::Flags::LOW_DELAY);
    }
    context
        .decoder()
        .video()
        .map_err(|e| MediaError::Unsupported(format!("cannot decode the video for the renditions: {e}")))
}

/// One frame into every rendition: started at a keyframe if it is wanted, stopped if it is not any more.
fn encode_all(
    outs: &mut [Out],
    decoded: &frame::Video,
    (pts, arrival, keyframe): (i64, u64, bool),
    (decode_ahead, audio): (i64, Option<&(codec::Parameters, Rational)>),
    stream: &StreamOutput<'_>,
    events: &mut Events,
) {
    for (i, o) in outs.iter_mut().enumerate() {
        if let Err(e) = encode_one(i, o, decoded, (pts, arrival, keyframe), (decode_ahead, audio), stream, events) {
            o.fail(i, &e, events);
        }
    }
}

/// One frame into rendition `i`; an error is the rendition's alone (see [`Out::fail`]).
fn encode_one(
    i: usize,
    o: &mut Out,
    decoded: &frame::Video,
    (pts, arrival, keyframe): (i64, u64, bool),
    (decode_ahead, audio): (i64, Option<&(codec::Parameters, Rational)>),
    stream: &StreamOutput<'_>,
    events: &mut Events,
) -> Result<(), MediaError> {
    {
        if o.left_out {
            return Ok(());
        }
        let wanted = o.control.wanted();
        if o.running.is_some() && !wanted {
            tracing::debug!(rendition = %o.name, "nobody watches the rendition: its encoder stops");
            o.running = None;
        }
        if o.running.is_none() && wanted && keyframe && stream.open {
            tracing::debug!(rendition = %o.name, "the rendition is watched: its encoder starts");
            let own_audio = match (&o.audio, audio, stream.audio) {
                (Some(config), Some((parameters, time_base)), Some(_)) => {
                    Some(Box::new(AudioTranscoder::new(parameters.clone(), *time_base, config)?))
                }
                _ => None,
            };
            o.running = Some(Box::new(Running {
                own_audio,
                encoder: FrameEncoder::new(&o.config, o.fps, NO_OWN_KEYFRAMES),
                muxer: None,
                info: None,
                last_pts: None,
                last_dts: None,
                end_us: 0,
                has_audio: stream.audio.is_some(),
                fps: f64::from(o.fps),
            }));
        }
        let Some(r) = o.running.as_mut() else { return Ok(()) };
        // A lower frame rate leaves frames out, never a keyframe (a page switches there).
        if !keyframe && r.last_pts.is_some_and(|last| pts < last + o.frame_duration * 9 / 10) {
            return Ok(());
        }
        r.last_pts = Some(pts);
        let began = std::time::Instant::now();
        r.encoder.encode(decoded, pts, arrival, keyframe)?;
        let mut packets = Vec::new();
        r.encoder.receive(o.frame_duration, &mut packets)?;
        o.control.encode_us.fetch_add(began.elapsed().as_micros() as u64, Ordering::Relaxed);
        for mut p in packets {
            let pts = p.packet.pts();
            let dts = pts.map(|t| decode_time(t, decode_ahead, r.last_dts));
            r.last_dts = dts.or(r.last_dts);
            p.packet.set_dts(dts);
            r.write_video(p, (i, &o.control), stream, events)?;
        }
    }
    Ok(())
}

/// A rendition frame's decode time: `decode_ahead` before its presentation `pts`, after the one before it
/// (`last`) even when the stream's keyframes came to decode further ahead.
fn decode_time(pts: i64, decode_ahead: i64, last: Option<i64>) -> i64 {
    let dts = pts - decode_ahead;
    last.map_or(dts, |last| dts.max(last + 1))
}

impl Out {
    /// The rendition failed (its encoder does not open, say): it is left out for the rest of this pipeline
    /// run, its viewers are told why, and the stream goes on.
    fn fail(&mut self, index: usize, error: &MediaError, events: &mut Events) {
        tracing::warn!(rendition = %self.name, %error, "the rendition stops for this run of the source");
        self.running = None;
        self.left_out = true;
        events.push((index, RenditionEvent::Failed(format!("rendition {:?}: {error}", self.name))));
    }
}

impl Running {
    fn write_video(
        &mut self,
        p: EncodedPacket,
        (index, control): (usize, &RenditionControl),
        stream: &StreamOutput<'_>,
        events: &mut Events,
    ) -> Result<(), MediaError> {
        if self.muxer.is_none() {
            self.open_muxer(index, stream, events)?;
        }
        self.write(p.packet, 0, Some(p.arrival_us), (index, control), stream, events)
    }

    fn open_muxer(&mut self, index: usize, stream: &StreamOutput<'_>, events: &mut Events) -> Result<(), MediaError> {
        let encoder =
            self.encoder.encoder().ok_or_else(|| MediaError::Processing("rendition encoder not open".into()))?;
        let video = TrackSpec {
            parameters: codec::Parameters::from(encoder),
            time_base: VIDEO_TIME_BASE,
            is_video: true,
            copied: false,
        };
        let (width, height) = (encoder.width(), encoder.height());
        let fps = self.fps;
        let audio = match &self.own_audio {
            Some(t) => Some(TrackSpec {
                parameters: codec::Parameters::from(t.encoder()),
                time_base: t.time_base(),
                is_video: false,
                copied: false,
            }),
            None => stream.audio.cloned(),
        };
        let specs = std::iter::once(video).chain(audio.filter(|_| self.has_audio)).collect();
        let (muxer, segments) = Muxer::new(specs, stream.fragment_ms)?;
        self.info = Some(OutputInfo {
            mime_codec: mqtt_video_wire::codec_string::mime_type(muxer.tracks())?,
            width,
            height,
            fps,
            has_audio: self.has_audio,
            video: TrackMode::Transcode,
            audio: match self.own_audio {
                Some(_) => Some(TrackMode::Transcode),
                None => stream.audio_mode,
            }
            .filter(|_| self.has_audio),
        });
        self.muxer = Some(TimedMuxer::new(muxer));
        self.emit(segments, index, None, stream, events)
    }

    fn write(
        &mut self,
        packet: Packet,
        track: usize,
        arrival: Option<u64>,
        (index, control): (usize, &RenditionControl),
        stream: &StreamOutput<'_>,
        events: &mut Events,
    ) -> Result<(), MediaError> {
        let Some(muxer) = self.muxer.as_mut() else { return Ok(()) };
        if arrival.is_some() {
            let end = packet.dts().unwrap_or(0) + packet.duration();
            self.end_us = self.end_us.max(end.rescale(VIDEO_TIME_BASE, MICROS));
        }
        let segments = muxer.write(packet, track, arrival)?;
        self.emit(segments, index, Some(control), stream, events)
    }

    fn emit(
        &mut self,
        segments: Vec<Segment>,
        index: usize,
        control: Option<&RenditionControl>,
        stream: &StreamOutput<'_>,
        events: &mut Events,
    ) -> Result<(), MediaError> {
        for segment in segments {
            match segment {
                Segment::Init(bytes) => {
                    let info = self
                        .info
                        .clone()
                        .ok_or_else(|| MediaError::Processing("rendition init before output".into()))?;
                    events.push((index, RenditionEvent::Init(InitSegment { bytes: Bytes::from(bytes), info })));
                }
                Segment::Fragment { bytes, moof } => {
                    let (Some(control), Some(muxer)) = (control, self.muxer.as_mut()) else { continue };
                    let fragment = muxer.fragment(bytes, moof, control.take_sequence(), self.end_us, stream.prft)?;
                    events.push((index, RenditionEvent::Fragment(fragment)));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::decode_time;

    #[test]
    fn decode_times_keep_their_order_when_keyframes_come_to_decode_further_ahead() {
        // 40 ms frames at 90 kHz; an IDR 2 frames ahead, then a CRA 5 frames ahead (x265's open GOP).
        let mut last = None;
        let mut out = Vec::new();
        for (pts, ahead) in
            [(7200, 7200), (10_800, 7200), (14_400, 18_000), (18_000, 18_000), (21_600, 18_000), (25_200, 18_000)]
        {
            let dts = decode_time(pts, ahead, last);
            out.push(dts);
            last = Some(dts);
        }
        assert_eq!(out, [0, 3600, 3601, 3602, 3603, 7200], "in order, then back to 5 frames ahead");
        assert_eq!(decode_time(7200, 0, None), 7200, "no B-frames: as presented");
    }
}
