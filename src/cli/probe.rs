//! `mqtt-video probe`: run the pipeline on one source and report streams, mode, codec string and timings.

use anyhow::{bail, Context, Result};
use clap::Args;
use mqtt_video::media::config::{Backpressure, Pacing, RtspFrameEnd, RtspTransport};
use mqtt_video::media::events::{RenditionEvent, RenditionInfo};
use mqtt_video::media::plan::TrackMode;
use mqtt_video::media::{Mode, OutputInfo, Pipeline, PipelineConfig, PipelineEvent, SourceInfo};
use mqtt_video::talk::backchannel::describe;
use mqtt_video_wire::policy::redact;
use mqtt_video_wire::rtsp::sdp::TalkCodec;
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Arguments of `probe`.
#[derive(Args)]
pub struct ProbeArgs {
    /// Source URL: rtsp://, http(s)://, a file path, or builtin://testsrc; with --config, also the name of one
    /// of its [[sources]].
    url: String,
    /// A server config file: probe with its pipeline settings for this source (the source's own, else the
    /// global [pipeline]); the options below override them.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Copy, transcode, or decide per track [default: auto, or the config's].
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// RTSP transport: tcp, udp, or auto (TCP, then UDP when the camera refuses TCP) [default: auto, or the
    /// config's].
    #[arg(long, value_enum)]
    rtsp_transport: Option<RtspTransport>,
    /// Where an RTSP camera's H.264 or HEVC frames end: marker (at each frame's last RTP packet, over TCP) or parser
    /// (when the next frame starts) [default: marker, or the config's].
    #[arg(long, value_enum)]
    rtsp_frame_end: Option<RtspFrameEnd>,
    /// Seconds of media to process (the whole file when it is shorter).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Write init.mp4 and numbered .m4s fragments here (their concatenation plays anywhere).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Read files at their native rate, as a live viewer would get them.
    #[arg(long)]
    realtime: bool,
    /// Least fragment duration in milliseconds (0: one fragment per video frame) [default: 0, or the config's].
    #[arg(long)]
    fragment_ms: Option<u32>,
    /// Media time libavformat may analyse to identify the streams, in milliseconds.
    #[arg(long)]
    analyze_ms: Option<u32>,
}

#[derive(Serialize)]
struct Report {
    url: String,
    source: SourceInfo,
    output: OutputInfo,
    /// The stream's renditions as a server would offer them (each converted, and only while watched).
    renditions: Vec<RenditionInfo>,
    init_segment_bytes: usize,
    fragments: usize,
    keyframe_fragments: usize,
    fragment_bytes: Sizes,
    fragment_duration_ms: Sizes,
    media_seconds: f64,
    time_to_source_ms: f64,
    time_to_init_ms: f64,
    time_to_first_fragment_ms: f64,
    elapsed_ms: f64,
    ended: String,
    /// An RTSP camera's ONVIF backchannel (None: not an RTSP source).
    talk: Option<TalkReport>,
}

/// What a DESCRIBE requiring the backchannel found.
#[derive(Serialize)]
struct TalkReport {
    /// Whether the camera offers one.
    backchannel: bool,
    /// Its codec (PCMU, PCMA, AAC).
    codec: Option<&'static str>,
    /// Its clock rate, Hz.
    clock_rate: Option<u32>,
    /// Whether this server can send to it (G.711 today).
    sendable: bool,
    /// Why it could not be asked.
    error: Option<String>,
}

/// Asks an RTSP camera for its backchannel, on a connection of its own.
fn talk_report(url: &str) -> Option<TalkReport> {
    if !url.to_ascii_lowercase().starts_with("rtsp://") {
        return None;
    }
    let none = TalkReport { backchannel: false, codec: None, clock_rate: None, sendable: false, error: None };
    let asked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(describe(url)).map_err(|e| e.to_string()));
    Some(match asked {
        Ok(None) => none,
        Ok(Some(b)) => TalkReport {
            backchannel: true,
            codec: Some(b.codec.name()),
            clock_rate: Some(b.clock_rate),
            sendable: !matches!(b.codec, TalkCodec::Aac { .. }),
            error: None,
        },
        Err(e) => TalkReport { error: Some(e), ..none },
    })
}

#[derive(Serialize, Default)]
struct Sizes {
    min: f64,
    avg: f64,
    max: f64,
}

impl Sizes {
    fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Self { min, avg: values.iter().sum::<f64>() / values.len() as f64, max }
    }
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// The URL to open and the pipeline settings: a config's for that source (a name of its `[[sources]]` stands
/// for its URL), else the defaults; then the command line's options over them.
fn settings(args: &ProbeArgs) -> Result<(String, PipelineConfig)> {
    let (url, mut config) = match &args.config {
        None => (args.url.clone(), PipelineConfig::default()),
        Some(path) => {
            let server = super::load_config(Some(path))?;
            let named = server.sources.iter().find(|e| e.source.name.eq_ignore_ascii_case(args.url.trim()));
            let url = named.map_or_else(|| args.url.clone(), |e| e.source.url.clone());
            let pipeline = server.pipeline_for(&url);
            (url, pipeline)
        }
    };
    config.backpressure = Backpressure::Block;
    config.source.pacing = if args.realtime { Pacing::Realtime } else { Pacing::Unpaced };
    if let Some(mode) = args.mode {
        config.mode = mode;
    }
    if let Some(transport) = args.rtsp_transport {
        config.source.rtsp_transport = transport;
    }
    if let Some(frame_end) = args.rtsp_frame_end {
        config.source.rtsp_frame_end = frame_end;
    }
    if let Some(ms) = args.fragment_ms {
        config.fragment.duration_ms = ms;
    }
    if let Some(ms) = args.analyze_ms {
        config.source.analyze_duration_ms = ms;
    }
    // As `serve` runs it: in `auto`, an HEVC camera is copied with an H.264 rendition for the other browsers.
    Ok((url, config.with_codec_repeat()))
}

/// Runs the probe and prints its report.
pub fn run(args: ProbeArgs) -> Result<()> {
    let (url, config) = settings(&args)?;
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    let started = Instant::now();
    let mut pipeline = Pipeline::start(&url, config)?;
    let (mut source, mut output, mut init_len) = (None, None, 0);
    let (mut t_source, mut t_init, mut t_first) = (None, None, None);
    let (mut sizes, mut durations, mut keyframes) = (Vec::new(), Vec::new(), 0);
    let mut media_end_us = 0i64;
    let limit_us = (args.seconds * 1e6) as i64;
    let mut ended = String::from("stopped after --seconds");
    let mut renditions = Vec::new();
    for event in pipeline.events().iter() {
        match event {
            PipelineEvent::Source(info) => {
                t_source = Some(started.elapsed());
                source = Some(info);
            }
            PipelineEvent::Init(init) => {
                t_init = Some(started.elapsed());
                init_len = init.bytes.len();
                if let Some(dir) = &args.out {
                    std::fs::write(dir.join("init.mp4"), &init.bytes)?;
                }
                output = Some(init.info);
            }
            PipelineEvent::Fragment(f) => {
                t_first.get_or_insert_with(|| started.elapsed());
                if let Some(dir) = &args.out {
                    std::fs::write(dir.join(format!("{:06}.m4s", f.sequence)), &f.bytes)?;
                }
                sizes.push(f.bytes.len() as f64);
                if f.video_samples > 0 {
                    durations.push(f.duration_us as f64 / 1000.0);
                }
                keyframes += usize::from(f.keyframe);
                media_end_us = media_end_us.max(f.media_time_us + f.duration_us);
                if media_end_us >= limit_us {
                    break;
                }
            }
            // Renditions are encoded only for a server's viewers: a probe never asks for one, but says what
            // each would be.
            PipelineEvent::Rendition(_, RenditionEvent::Facts(info)) => renditions.push(info),
            PipelineEvent::Rendition(..) => {}
            PipelineEvent::End(result) => {
                ended = match result {
                    Ok(()) => "end of input".into(),
                    Err(e) => {
                        if output.is_none() {
                            bail!("{e} [{}]", e.code());
                        }
                        format!("{e}")
                    }
                };
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    pipeline.join();
    let (Some(source), Some(output)) = (source, output) else { bail!("the pipeline produced no init segment") };
    // Once the camera answered the pipeline: an unreachable one costs no second wait.
    let talk = talk_report(&url);
    let report = Report {
        // Reports end up in tickets and chats: never with the camera's password.
        url: redact(&url),
        source,
        output,
        renditions,
        init_segment_bytes: init_len,
        fragments: sizes.len(),
        keyframe_fragments: keyframes,
        fragment_bytes: Sizes::of(&sizes),
        fragment_duration_ms: Sizes::of(&durations),
        media_seconds: media_end_us as f64 / 1e6,
        time_to_source_ms: ms(t_source),
        time_to_init_ms: ms(t_init),
        time_to_first_fragment_ms: ms(t_first),
        elapsed_ms: ms(Some(elapsed)),
        ended,
        talk,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

fn print_text(r: &Report) {
    println!("source       {} ({})", r.url, r.source.format);
    for s in &r.source.streams {
        let detail = match (s.width, s.height, s.sample_rate, s.channels) {
            (Some(w), Some(h), _, _) => format!("{w}x{h} @ {:.2} fps", s.fps.unwrap_or(0.0)),
            (_, _, Some(rate), Some(ch)) => format!("{rate} Hz, {ch} ch"),
            _ => String::new(),
        };
        println!("  stream {}   {} {} {}", s.index, s.kind, s.codec, detail);
    }
    println!("mode         video {:?}, audio {:?}", r.source.video, r.source.audio);
    println!("mime         {}", r.output.mime_codec);
    println!("output       {}x{} @ {:.2} fps", r.output.width, r.output.height, r.output.fps);
    let main = RenditionInfo {
        name: "main".into(),
        mime_codec: r.output.mime_codec.clone(),
        width: r.output.width,
        height: r.output.height,
        fps: r.output.fps,
        bitrate_kbps: None,
    };
    let copied = Some(r.output.video == TrackMode::Copy);
    for (i, line) in mqtt_video_wire::output::who_gets_what(&main, copied, &r.renditions).iter().enumerate() {
        println!("{}{line}", if i == 0 { "viewers      " } else { "             " });
    }
    println!("init         {} bytes", r.init_segment_bytes);
    println!(
        "fragments    {} ({} start with a keyframe), {:.0}/{:.0}/{:.0} bytes min/avg/max, {:.1}/{:.1}/{:.1} ms",
        r.fragments,
        r.keyframe_fragments,
        r.fragment_bytes.min,
        r.fragment_bytes.avg,
        r.fragment_bytes.max,
        r.fragment_duration_ms.min,
        r.fragment_duration_ms.avg,
        r.fragment_duration_ms.max
    );
    println!("media        {:.2} s in {:.0} ms ({})", r.media_seconds, r.elapsed_ms, r.ended);
    println!(
        "timing       source {:.0} ms, init {:.0} ms, first fragment {:.0} ms",
        r.time_to_source_ms, r.time_to_init_ms, r.time_to_first_fragment_ms
    );
    if let Some(t) = &r.talk {
        let line = match (t.backchannel, t.codec, t.clock_rate, &t.error) {
            (_, _, _, Some(e)) => format!("unknown: {e}"),
            (true, Some(codec), Some(rate), _) if t.sendable => format!("{codec} {rate} Hz (ONVIF backchannel)"),
            (true, Some(codec), Some(rate), _) => format!("{codec} {rate} Hz (ONVIF backchannel; not sent yet)"),
            _ => "none (no ONVIF backchannel in the camera's SDP)".to_string(),
        };
        println!("talk back    {line}");
    }
}
