//! One media pipeline on its own OS thread: source, copy or transcode, fMP4 muxing, events out.

use crate::media::channel::Events;
use crate::media::config::{Mode, Pacing, PipelineConfig};
use crate::media::copy::keycheck::KeyframeCheck;
use crate::media::emitter::Emitter;
use crate::media::encode::audio::AudioTranscoder;
use crate::media::encode::rendition::{self, AudioSource, RenditionControl, Renditions, StreamOutput};
use crate::media::encode::video::{EncodedPacket, VideoTranscoder};
use crate::media::error::MediaError;
use crate::media::events::{InitSegment, OutputInfo, PipelineEvent, PipelineStats, SourceInfo, StreamSummary};
use crate::media::ffi;
use crate::media::load::{LoadControl, Step};
use crate::media::mux::fragments::TimedMuxer;
use crate::media::mux::{Muxer, TrackSpec, VIDEO_TIME_BASE};
use crate::media::plan::{self, AudioPlan, TrackMode, VideoFacts};
use crate::media::source::{self, Source, SourceKind};
use crate::media::timing::{wallclock_us, LoopClock, Pacer};
use bytes::Bytes;
use ffmpeg::{codec, media, Packet, Rational, Rescale};
use ffmpeg_next as ffmpeg;
use mqtt_video_wire::aac;
use mqtt_video_wire::codec_string;
use mqtt_video_wire::fmp4::Segment;
use mqtt_video_wire::h264::in_band_parameter_sets;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MICROS: Rational = Rational(1, 1_000_000);

/// A read from a live source that blocked at least this long waited for the source: the pipeline was not
/// behind then.
const LIVE_WAIT: Duration = Duration::from_millis(5);

/// Asked once a pipeline knows what its source needs (the source's facts, and the pipeline's number, see
/// `load/threads.rs`), before any decoding: `Err` says why the server cannot take it on, and the pipeline ends
/// with [`MediaError::Overloaded`].
pub type Gate = Arc<dyn Fn(&SourceInfo, u64) -> Result<(), String> + Send + Sync>;

/// How a run of a stream's pipeline starts.
pub struct Start {
    /// Output media time of its first frame (µs): a restarted source continues its viewers' timeline.
    pub offset_us: i64,
    /// Number of its first fragment (`mfhd`).
    pub first_sequence: u64,
    /// Asked whether the work the source needs may start.
    pub gate: Option<Gate>,
    /// One per configured rendition: whether it is watched, and its numbering.
    pub renditions: Vec<Arc<RenditionControl>>,
}

impl Default for Start {
    fn default() -> Self {
        Self { offset_us: 0, first_sequence: 1, gate: None, renditions: Vec::new() }
    }
}

/// A running pipeline. Dropping it stops the worker and waits for it.
pub struct Pipeline {
    events: Events,
    stop: Arc<AtomicBool>,
    stats: Arc<PipelineStats>,
    thread: Option<JoinHandle<()>>,
}

impl Pipeline {
    /// Starts a worker thread for `url`. A URL with a forbidden protocol fails here, before any I/O.
    pub fn start(url: &str, config: PipelineConfig) -> Result<Self, MediaError> {
        Self::start_at(url, config, 0, 1)
    }

    /// Like [`Pipeline::start`], with output media time starting at `offset_us` instead of 0 and fragments
    /// numbered from `first_sequence` (in their `mfhd`): a restarted source continues the timeline and the
    /// numbering its viewers already play.
    pub fn start_at(
        url: &str,
        config: PipelineConfig,
        offset_us: i64,
        first_sequence: u64,
    ) -> Result<Self, MediaError> {
        Self::start_with(url, config, Start { offset_us, first_sequence, ..Start::default() })
    }

    /// Like [`Pipeline::start_at`], with everything a server's stream gives each run of its source.
    pub fn start_with(url: &str, config: PipelineConfig, start: Start) -> Result<Self, MediaError> {
        let Start { offset_us, first_sequence, gate, renditions } = start;
        source::classify_for(url, &config.source)?;
        ffmpeg::init().map_err(|e| MediaError::Processing(format!("initialising FFmpeg: {e}")))?;
        let (tx, events) = Events::channel(config.channel_capacity.max(4));
        let stop = Arc::new(AtomicBool::new(false));
        let id = crate::media::load::threads::next_id();
        let stats = Arc::new(PipelineStats { id, ..PipelineStats::default() });
        let mut emitter =
            Emitter::new(tx, config.backpressure, config.renditions.len(), Arc::clone(&stop), Arc::clone(&stats));
        let url = url.to_string();
        // Thread names and log fields are visible to anyone reading logs or `ps`: never the password.
        let shown = if config.source.listen {
            // A listening URL carries the stream key in its path: show only where it listens.
            url.split('/').take(3).collect::<Vec<_>>().join("/")
        } else {
            mqtt_video_wire::policy::redact(&url)
        };
        // Tagged, so that the threads FFmpeg starts from it count as this pipeline's CPU.
        let name = crate::media::load::threads::thread_name(id, &shown);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let span = tracing::info_span!("pipeline", url = %shown);
                let _enter = span.enter();
                let result = run(&url, &config, (offset_us, first_sequence), gate, &renditions, &mut emitter);
                match &result {
                    Ok(()) => tracing::info!("source finished"),
                    Err(MediaError::Stopped) => tracing::debug!("pipeline stopped"),
                    Err(e) => tracing::warn!(error = %e, code = e.code(), "pipeline ended"),
                }
                // Everything the run held is freed by now; the end closes the channel, the last thing the
                // thread does that its consumer can see (`Pipeline::finish` waits for it).
                emitter.end(result);
            })
            .map_err(|e| MediaError::Processing(format!("spawning the media thread: {e}")))?;
        Ok(Self { events, stop, stats, thread: Some(thread) })
    }

    /// The events, in order; they end after `End`, once the worker has freed everything.
    pub fn events(&mut self) -> &mut Events {
        &mut self.events
    }

    /// The live counters.
    pub fn stats(&self) -> &Arc<PipelineStats> {
        &self.stats
    }

    /// Asks the worker to stop; blocking FFmpeg I/O is interrupted at once.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// A handle that stops this pipeline from another thread or task.
    pub fn stopper(&self) -> Stopper {
        Stopper(Arc::clone(&self.stop))
    }

    /// Stops the worker and waits until it has freed everything, from a thread.
    pub fn join(mut self) {
        self.close_and_join();
    }

    /// Stops the worker and waits until it has freed everything, from a task: the events that still come are
    /// read and dropped until they end, which is when the worker has freed everything and has only its own
    /// exit left; the join that follows waits for that alone, never for FFmpeg.
    pub async fn finish(mut self) {
        self.stop();
        while self.events.recv().await.is_some() {}
        self.close_and_join();
    }

    fn close_and_join(&mut self) {
        self.stop();
        // A worker waiting for room in the channel gives up at once rather than at its next stop check.
        self.events.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.close_and_join();
    }
}

/// Stops a pipeline from anywhere; cheap to clone.
#[derive(Debug, Clone)]
pub struct Stopper(Arc<AtomicBool>);

impl Stopper {
    /// Asks the pipeline to stop.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Origin and offset of the output timeline, shared by the tracks.
#[derive(Debug, Default)]
struct Timeline {
    /// Source time (µs) that becomes output time 0: the first video frame written.
    origin_us: Option<i64>,
    /// Added after each loop of a file so that time keeps growing.
    offset_us: i64,
    /// End of the latest video written, on the output timeline.
    end_us: i64,
}

impl Timeline {
    fn rel(&self, ts_us: i64) -> Option<i64> {
        let rel = ts_us - self.origin_us? + self.offset_us;
        (rel >= 0).then_some(rel)
    }

    fn rel_or_start(&mut self, ts_us: i64) -> Option<i64> {
        self.origin_us.get_or_insert(ts_us);
        self.rel(ts_us)
    }
}

enum VideoStage {
    Copy {
        parameters: codec::Parameters,
        time_base: Rational,
        frame_duration: i64,
        waiting_keyframe: bool,
        /// Damage seen in the video, and what it costs.
        damaged: Damage,
        /// Decodes the keyframe a (re)start would begin with.
        check: Option<Box<KeyframeCheck>>,
        /// Fills in decode times the demuxer leaves out.
        dts: DtsFiller,
    },
    Transcode(Box<VideoTranscoder>),
}

/// Damaged video in copy mode: which frames it costs.
#[derive(Debug, Default)]
struct Damage {
    /// The previous frame was flagged corrupt (so this one is damaged).
    just_flagged: bool,
    /// The wait for a keyframe is because of damage (its frames count as damaged drops).
    waiting: bool,
}

enum AudioStage {
    None,
    Copy { parameters: codec::Parameters, time_base: Rational },
    Transcode(Box<AudioTranscoder>),
}

const VIDEO_TRACK: usize = 0;
const AUDIO_TRACK: usize = 1;

/// The state of one run over an opened source.
struct Session<'a> {
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

/// Runs the pipeline; `start` is where the output timeline (µs) and the fragment numbering begin.
fn run(
    url: &str,
    config: &PipelineConfig,
    start: (i64, u64),
    gate: Option<Gate>,
    renditions: &[Arc<RenditionControl>],
    em: &mut Emitter,
) -> Result<(), MediaError> {
    let (offset_us, first_sequence) = start;
    let mut source = source::open(url, &config.source, Arc::clone(&em.stop))?;
    let paced = match config.source.pacing {
        Pacing::Realtime => true,
        Pacing::Unpaced => false,
        Pacing::Auto => match source.kind {
            SourceKind::File | SourceKind::Builtin(_) => true,
            SourceKind::Http => source.has_duration,
            _ => false,
        },
    };
    // Packets read while the source's own parameters were awaited go first.
    let mut held = crate::media::source::ready::wait_for_parameters(&mut source, config.source.connect_timeout())?;
    let info = analyse(&source, config, paced)?;
    if let Some(gate) = gate {
        gate(&info, em.stats.id).map_err(MediaError::Overloaded)?;
    }
    tracing::info!(
        format = %info.format,
        video = ?info.video,
        audio = ?info.audio,
        "source opened"
    );
    let mut session = Session::new(&source, &info, config, renditions)?;
    session.sequence = first_sequence;
    session.timeline.offset_us = offset_us.max(0);
    session.timeline.end_us = offset_us.max(0);
    em.control(PipelineEvent::Source(info))?;

    let live = source.kind.is_live_protocol();
    // Only an input that runs in real time can fall behind it; an unpaced file is read as fast as it goes.
    let mut load = LoadControl::new(matches!(session.video, VideoStage::Transcode(_)), paced || live);
    let mut pacer = Pacer::default();
    // One input timeline across the loops of a file: pacing and the lag carry on where the last loop ended,
    // so that a pipeline behind at the end of a loop is still behind, not forgiven.
    let mut clock = LoopClock::default();
    let mut loops = 0u64;
    loop {
        if em.stopped() {
            return Err(MediaError::Stopped);
        }
        let mut packet = Packet::empty();
        let read = match held.pop_front() {
            Some(waited) => {
                packet = waited;
                Ok(())
            }
            None => {
                let asked = Instant::now();
                let read = packet.read(&mut source.input);
                if live && asked.elapsed() >= LIVE_WAIT {
                    load.waited();
                }
                read
            }
        };
        match read {
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => {
                let can_loop = config.source.looping && !live && source.has_duration;
                if can_loop && session.timeline.origin_us.is_some() {
                    source
                        .input
                        .seek(0, ..)
                        .map_err(|e| MediaError::Processing(format!("rewinding for the next loop: {e}")))?;
                    session.start_loop();
                    clock.looped();
                    loops += 1;
                    tracing::debug!(loops, "looping the source");
                    continue;
                }
                break;
            }
            Err(ffmpeg::Error::Other { errno: ffmpeg::error::EAGAIN }) => {
                load.waited();
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            // FFmpeg's HTTP reader reports a server that closes an unsized response as EIO, not EOF.
            Err(ffmpeg::Error::Other { errno: ffmpeg::error::EIO })
                if em.stats.packets_in.load(Ordering::Relaxed) > 0 && !source.watchdog.stopping() =>
            {
                tracing::info!("the source closed the connection");
                break;
            }
            Err(e) => return Err(source.watchdog.classify_error(e, "reading the source")),
        }
        source.watchdog.touch();
        em.stats.packets_in.fetch_add(1, Ordering::Relaxed);
        let mut arrival = wallclock_us();
        if packet.stream() == session.video_index {
            if let Some(sent) = sender_clock(&source, &packet, arrival) {
                arrival = sent;
            }
        }
        let Some(stream_tb) = source.input.stream(packet.stream()).map(|s| s.time_base()) else { continue };
        let ts_us = packet.dts().or(packet.pts()).map(|ts| {
            let duration_us = packet.duration().max(0).rescale(stream_tb, MICROS);
            clock.continued(ts.rescale(stream_tb, MICROS), duration_us)
        });
        if let (true, Some(ts)) = (paced, ts_us) {
            let wait = pacer.delay(ts, Instant::now());
            if !wait.is_zero() {
                load.waited();
            }
            sleep_unless_stopped(wait, em)?;
        }
        let video = ts_us.filter(|_| packet.stream() == session.video_index).map(|ts| (ts, packet.is_key()));
        match load.packet(video, Instant::now(), &em.stats) {
            Step::Drop => continue,
            Step::Resume => session.resume(),
            Step::Process => {}
        }
        session.set_share(load.share());
        session.handle(packet, arrival, em)?;
    }
    session.finish(em)?;
    if live {
        // A live stream has no end: the server closed it.
        return Err(MediaError::Ended);
    }
    Ok(())
}

/// When the sender says it sent this packet: RTCP sender reports map media time to its wall clock.
fn sender_clock(source: &Source, packet: &Packet, arrival_us: u64) -> Option<u64> {
    let origin = ffi::start_time_realtime(&source.input)?;
    let tb = source.input.stream(packet.stream())?.time_base();
    let sent = plausible_send_time(origin + packet.pts()?.rescale(tb, MICROS), arrival_us);
    tracing::trace!(lag_us = sent.map(|s| arrival_us - s), "sender clock");
    sent
}

/// A sender's send time, if plausible: not after its arrival here and less than 5 s before it. A sender whose
/// clock is not synchronised with ours would otherwise show viewers a nonsense latency.
pub fn plausible_send_time(sent_us: i64, arrival_us: u64) -> Option<u64> {
    let sent = u64::try_from(sent_us).ok()?;
    (sent <= arrival_us && arrival_us - sent < 5_000_000).then_some(sent)
}

fn sleep_unless_stopped(wait: Duration, em: &Emitter) -> Result<(), MediaError> {
    let deadline = Instant::now() + wait;
    loop {
        if em.stopped() {
            return Err(MediaError::Stopped);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Nominal frame rate of a stream, with a sane fallback for sources that do not say.
fn frame_rate(stream: &ffmpeg::format::stream::Stream) -> Rational {
    for r in [stream.avg_frame_rate(), stream.rate()] {
        let fps = f64::from(r);
        if r.denominator() > 0 && (1.0..=240.0).contains(&fps) {
            return r;
        }
    }
    Rational(30, 1)
}

fn analyse(source: &Source, config: &PipelineConfig, paced: bool) -> Result<SourceInfo, MediaError> {
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
        browser_h264: h264 && chroma_ok && plan::browser_h264_profile(profile),
        within_limits: limit(config.video.max_width, f64::from(size.width))
            && limit(config.video.max_height, f64::from(size.height))
            && limit(config.video.max_fps, fps),
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

fn summarize(stream: &ffmpeg::format::stream::Stream) -> StreamSummary {
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

impl<'a> Session<'a> {
    fn new(
        source: &Source,
        info: &SourceInfo,
        config: &'a PipelineConfig,
        controls: &[Arc<RenditionControl>],
    ) -> Result<Self, MediaError> {
        let stream = source
            .input
            .stream(info.video_stream)
            .ok_or_else(|| MediaError::Processing("video stream vanished".into()))?;
        let fps = frame_rate(&stream);
        let frame_duration = (90_000.0 / f64::from(fps)).round() as i64;
        let video = match info.video {
            TrackMode::Copy => VideoStage::Copy {
                parameters: stream.parameters(),
                time_base: stream.time_base(),
                frame_duration,
                waiting_keyframe: true,
                damaged: Damage::default(),
                check: KeyframeCheck::new(&stream.parameters()).map(Box::new),
                dts: DtsFiller::new(
                    ffi::codec_facts(&stream.parameters()).video_delay,
                    1i64.rescale(Rational(fps.denominator(), fps.numerator()), stream.time_base()),
                ),
            },
            TrackMode::Transcode => VideoStage::Transcode(Box::new(VideoTranscoder::new(
                stream.parameters(),
                stream.time_base(),
                fps,
                &config.video,
                source.kind.is_live_protocol(),
            )?)),
        };
        let audio = match (info.audio_stream.and_then(|i| source.input.stream(i)), &info.audio) {
            (Some(s), AudioPlan::Copy) => AudioStage::Copy { parameters: s.parameters(), time_base: s.time_base() },
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
            timeline: Timeline::default(),
            muxer: None,
            output: None,
            fps,
            sequence: 0,
            renditions,
            audio_spec: None,
            side: Vec::new(),
        })
    }

    fn start_loop(&mut self) {
        self.timeline.offset_us = self.timeline.end_us;
        self.renditions.restart();
        match &mut self.video {
            VideoStage::Copy { waiting_keyframe, .. } => *waiting_keyframe = true,
            VideoStage::Transcode(t) => t.reset_decoder(),
        }
        if let AudioStage::Transcode(t) = &mut self.audio {
            t.reset_decoder();
        }
    }

    /// The pipeline skipped ahead and goes on from this keyframe.
    fn resume(&mut self) {
        self.renditions.restart();
        if let VideoStage::Transcode(t) = &mut self.video {
            t.resume();
        }
    }

    /// The share of the source's frames to encode (a copy passes all it gets).
    fn set_share(&mut self, share: f64) {
        if let VideoStage::Transcode(t) = &mut self.video {
            t.set_share(share);
        }
    }

    fn handle(&mut self, packet: Packet, arrival: u64, em: &mut Emitter) -> Result<(), MediaError> {
        let index = packet.stream();
        if index == self.video_index {
            self.handle_video(packet, arrival, em)
        } else if Some(index) == self.audio_index {
            self.handle_audio(packet, em)
        } else {
            Ok(())
        }
    }

    fn handle_video(&mut self, mut packet: Packet, arrival: u64, em: &mut Emitter) -> Result<(), MediaError> {
        let mut ready = Vec::new();
        match &mut self.video {
            VideoStage::Copy { time_base, frame_duration, waiting_keyframe, damaged, check, dts: filler, .. } => {
                // A damaged frame would break the browser's decoder, and every frame up to the next keyframe
                // refers to it: viewers get a short freeze instead. libavformat's H.264 parser hands out a
                // frame when the next one starts, with the flags of the packet that started it: the frame
                // flagged corrupt comes just before the damaged one, so the frame after it goes too, even
                // if it is a keyframe.
                let corrupt = packet.is_corrupt();
                if corrupt {
                    tracing::debug!("damaged video: keeping it back up to the next keyframe");
                }
                let skip = std::mem::replace(&mut damaged.just_flagged, corrupt) || corrupt;
                if skip {
                    *waiting_keyframe = true;
                    damaged.waiting = true;
                }
                // RTSP can start mid-GOP and deliver a first keyframe without pts: start at a clean keyframe.
                if *waiting_keyframe {
                    let unusable = skip || !packet.is_key() || packet.pts().is_none();
                    if unusable || check.as_mut().is_some_and(|c| !c.is_clean(&packet)) {
                        if !unusable {
                            tracing::debug!("a keyframe that does not decode cleanly: waiting for the next");
                            damaged.waiting = true;
                        }
                        if damaged.waiting {
                            em.stats.damaged.fetch_add(1, Ordering::Relaxed);
                        }
                        return Ok(());
                    }
                    *waiting_keyframe = false;
                    damaged.waiting = false;
                    filler.restart();
                }
                let Some(dts) = filler.fill(packet.dts(), packet.pts()) else { return Ok(()) };
                let pts = packet.pts().unwrap_or(dts);
                let tb = *time_base;
                let Some(rel_dts) = self.timeline.rel_or_start(dts.rescale(tb, MICROS)) else { return Ok(()) };
                let rel_pts = (rel_dts + (pts - dts).rescale(tb, MICROS)).max(rel_dts);
                packet.set_dts(Some(rel_dts.rescale(MICROS, VIDEO_TIME_BASE)));
                packet.set_pts(Some(rel_pts.rescale(MICROS, VIDEO_TIME_BASE)));
                let duration = match packet.duration() {
                    d if d > 0 => d.rescale(tb, VIDEO_TIME_BASE),
                    _ => *frame_duration,
                };
                packet.set_duration(duration);
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

    fn handle_audio(&mut self, mut packet: Packet, em: &mut Emitter) -> Result<(), MediaError> {
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
            AudioStage::Copy { time_base, .. } => {
                // An AAC frame stands alone: a damaged one is left out (a 21 ms gap), not handed to browsers.
                if packet.is_corrupt() {
                    em.stats.damaged.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                let tb = *time_base;
                let Some(dts) = packet.dts().or(packet.pts()) else { return Ok(()) };
                let Some(rel) = self.timeline.rel(dts.rescale(tb, MICROS)) else { return Ok(()) };
                let rel_tb = rel.rescale(MICROS, tb);
                // MP4 carries bare AAC frames; the config lives in the init segment.
                if let Some(len) = packet.data().and_then(aac::adts_header_len) {
                    let mut bare = Packet::copy(&packet.data().unwrap_or_default()[len..]);
                    bare.set_duration(packet.duration());
                    bare.set_flags(packet.flags());
                    packet = bare;
                }
                packet.set_dts(Some(rel_tb));
                packet.set_pts(Some(rel_tb));
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
            VideoStage::Copy { parameters, .. } => {
                // Some cameras send SPS/PPS only in-band: lift them from the first keyframe.
                if ffi::extradata(parameters).is_empty() {
                    let extradata = in_band_parameter_sets(first.data().unwrap_or_default());
                    if extradata.is_empty() {
                        return Err(MediaError::Unsupported("H.264 stream without SPS/PPS".into()));
                    }
                    ffi::set_extradata(parameters, &extradata)
                        .map_err(crate::media::error::processing("setting SPS/PPS"))?;
                }
                let facts = ffi::codec_facts(parameters);
                let spec = TrackSpec {
                    parameters: parameters.clone(),
                    time_base: VIDEO_TIME_BASE,
                    is_video: true,
                    copied: true,
                };
                (spec, facts.width, facts.height, TrackMode::Copy)
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
            AudioStage::Copy { parameters, time_base } => {
                // ADTS sources (MPEG-TS) have no AudioSpecificConfig; the moov is written before any packet.
                if ffi::extradata(parameters).is_empty() {
                    let facts = ffi::codec_facts(parameters);
                    let (profile, _) = ffi::profile_and_format(parameters);
                    let asc =
                        aac::audio_specific_config(profile, facts.sample_rate, facts.channels).ok_or_else(|| {
                            MediaError::Unsupported(format!(
                                "AAC profile {profile} at {} Hz with {} channels cannot be copied into MP4",
                                facts.sample_rate, facts.channels
                            ))
                        })?;
                    ffi::set_extradata(parameters, &asc)
                        .map_err(crate::media::error::processing("setting the AAC config"))?;
                }
                specs.push(TrackSpec {
                    parameters: parameters.clone(),
                    time_base: *time_base,
                    is_video: false,
                    copied: true,
                });
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
        let mut facts = self.renditions.facts(width, height, self.audio_spec.as_ref());
        em.send_renditions(&mut facts)?;
        self.emit(segments, em)
    }

    fn write_video(&mut self, p: EncodedPacket, em: &mut Emitter) -> Result<(), MediaError> {
        let dts = p.packet.dts().unwrap_or(0);
        let end = (dts + p.packet.duration()).rescale(VIDEO_TIME_BASE, MICROS);
        self.timeline.end_us = self.timeline.end_us.max(end);
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
                    let fragment = muxer.fragment(bytes, moof, self.sequence, self.timeline.end_us, prft)?;
                    self.sequence += 1;
                    em.fragment(fragment)?;
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, em: &mut Emitter) -> Result<(), MediaError> {
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

/// Decode timestamps for demuxers (Matroska, RTSP) that leave some out: the first packet of a stream with
/// B-frames decodes `delay` frames before it is shown; later ones follow the previous decode time.
#[derive(Debug, Clone)]
pub struct DtsFiller {
    delay: i64,
    frame_duration: i64,
    last: Option<i64>,
}

impl DtsFiller {
    /// A filler for a stream with `delay` reordered frames of `frame_duration` (in the stream's time base).
    pub fn new(delay: u32, frame_duration: i64) -> Self {
        Self { delay: i64::from(delay), frame_duration: frame_duration.max(1), last: None }
    }

    /// Forgets the previous packet (a new start at a keyframe).
    pub fn restart(&mut self) {
        self.last = None;
    }

    /// The packet's decode time: its own, or one made up that stays at or below its pts.
    pub fn fill(&mut self, dts: Option<i64>, pts: Option<i64>) -> Option<i64> {
        let dts = match (dts, self.last) {
            (Some(dts), _) => dts,
            (None, Some(last)) => {
                let next = last + self.frame_duration;
                pts.map_or(next, |pts| next.min(pts))
            }
            (None, None) => pts? - self.delay * self.frame_duration,
        };
        self.last = Some(dts);
        Some(dts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_missing_dts_like_the_decoder_would() {
        // Matroska with two B-frames: pts 0 160 80 40 120, dts missing on the first two packets.
        let mut f = DtsFiller::new(2, 40);
        let got: Vec<_> = [(None, Some(0)), (None, Some(160)), (Some(0), Some(80)), (Some(40), Some(40))]
            .into_iter()
            .map(|(d, p)| f.fill(d, p).unwrap())
            .collect();
        assert_eq!(got, vec![-80, -40, 0, 40]);
        let mut no_b = DtsFiller::new(0, 3000);
        assert_eq!(no_b.fill(None, Some(9000)), Some(9000));
        assert_eq!(no_b.fill(None, Some(10_000)), Some(10_000), "never after pts");
        assert_eq!(no_b.fill(None, None), Some(13_000));
        assert_eq!(DtsFiller::new(0, 1).fill(None, None), None, "nothing to go on");
    }

    #[test]
    fn sender_clocks_are_used_only_when_plausible() {
        assert_eq!(plausible_send_time(1_000_000, 1_034_000), Some(1_000_000));
        assert_eq!(plausible_send_time(1_040_000, 1_034_000), None, "sender clock ahead of ours");
        assert_eq!(plausible_send_time(1_000_000, 7_000_000), None, "6 s behind: clocks disagree");
        assert_eq!(plausible_send_time(-5, 7), None);
    }

    #[test]
    fn timeline_offsets_loops() {
        let mut t = Timeline::default();
        assert_eq!(t.rel(5), None, "no origin yet");
        assert_eq!(t.rel_or_start(1_000), Some(0));
        assert_eq!(t.rel(900), None, "before the origin");
        assert_eq!(t.rel(2_000), Some(1_000));
        t.end_us = 10_000;
        t.offset_us = t.end_us;
        assert_eq!(t.rel(1_000), Some(10_000));
    }
}
