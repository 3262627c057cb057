//! `mqtt-video bench`: options, a progress line on stderr, the table on stdout, `--json` and `--plot` files.

use anyhow::{bail, Context, Result};
use clap::Args;
use mqtt_video::bench::plot::{latency_svg, Series};
use mqtt_video::bench::{self, BenchOptions, ProgressView};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Arguments of `bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Broker of a running server: HOST:PORT. With --spawn and no --broker, the bench starts a mosquitto.
    #[arg(long)]
    broker: Option<String>,
    /// Source URL to watch (must be offered or allowed by the server).
    #[arg(long, default_value = "builtin://testsrc")]
    url: String,
    /// Number of viewers, each with its own MQTT connection.
    #[arg(long, default_value_t = 1)]
    viewers: usize,
    /// Seconds each viewer receives media.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// The server's topic prefix (topics.prefix).
    #[arg(long, default_value = "video")]
    prefix: String,
    /// Start a server of this executable for the run (and a mosquitto unless --broker is given).
    #[arg(long)]
    spawn: bool,
    /// pipeline.mode of the spawned server: auto, copy or transcode.
    #[arg(long, default_value = "auto")]
    mode: String,
    /// Also run the ffmpeg CLI (fMP4 on a pipe) on the same source and print the ratios.
    #[arg(long)]
    compare_ffmpeg: bool,
    /// -frag_duration of the ffmpeg CLI reference, in ms (the original demo's 200 ms).
    #[arg(long, default_value_t = 200)]
    ffmpeg_fragment_ms: u32,
    /// Pid of a server on this machine, for CPU and memory from /proc (else they come from the stats topic).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds to wait for a server, a describe reply or the first media.
    #[arg(long, default_value_t = 15.0)]
    timeout: f64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG of latency over time and its distribution here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Protocol of the viewers: 2 reads the shared stream topics (broker fan-out), 1 a copy per viewer.
    #[arg(long, default_value_t = 2)]
    protocol: u8,
    /// The rendition the viewers play (protocol 2), from the describe reply's `renditions`; default `main`.
    #[arg(long)]
    rendition: Option<String>,
    /// With --spawn: give the server a rendition NAME:MAX_HEIGHT:BITRATE_KBPS (`low:360:600`); repeatable.
    #[arg(long, value_name = "NAME:MAX_HEIGHT:KBPS")]
    spawn_rendition: Vec<String>,
    /// With --spawn: where the server ends an RTSP camera's H.264 or HEVC frames (`pipeline.source.rtsp_frame_end`).
    #[arg(long, value_enum, default_value = "marker")]
    rtsp_frame_end: mqtt_video::media::config::RtspFrameEnd,
}

/// Runs the bench; fails (exit status 1) when the run could not start or any viewer had an error.
pub fn run(args: BenchArgs) -> Result<()> {
    if !["auto", "copy", "transcode"].contains(&args.mode.as_str()) {
        bail!("--mode must be auto, copy or transcode");
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    let options = BenchOptions {
        broker: args.broker.as_deref().map(super::parse_broker).transpose()?,
        url: args.url.clone(),
        viewers: args.viewers,
        seconds: args.seconds,
        prefix: args.prefix.clone(),
        spawn: args.spawn,
        mode: args.mode.clone(),
        compare_ffmpeg: args.compare_ffmpeg,
        ffmpeg_fragment_ms: args.ffmpeg_fragment_ms,
        server_pid: args.server_pid,
        answer_timeout: Duration::from_secs_f64(args.timeout),
        protocol: args.protocol,
        rendition: args.rendition.clone(),
        spawn_renditions: args
            .spawn_rendition
            .iter()
            .map(|r| bench::spawn::parse_rendition(r).map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?,
        rtsp_frame_end: args.rtsp_frame_end,
    };
    let tty = std::io::stderr().is_terminal();
    let last_line = Mutex::new(Instant::now() - Duration::from_secs(60));
    let progress = |p: &ProgressView| {
        // On a terminal one line redrawn 4 times a second; in a log one line every 5 s.
        let every = if tty { Duration::from_millis(250) } else { Duration::from_secs(5) };
        let Ok(mut last) = last_line.lock() else { return };
        if last.elapsed() < every {
            return;
        }
        *last = Instant::now();
        let latency = p.last_latency_ms.map_or_else(|| "-".into(), |l| format!("{l:.0} ms"));
        let line = format!(
            "[{:5.1} s] {}: {}/{} viewers playing, {} fragments, latency {latency}",
            p.elapsed, p.phase, p.playing, p.viewers, p.fragments
        );
        let mut err = std::io::stderr();
        if tty {
            let _ = write!(err, "\r{line:<90}");
        } else {
            let _ = writeln!(err, "{line}");
        }
    };
    let outcome = bench::run(&options, progress);
    if tty {
        eprintln!();
    }
    let (report, timelines) = outcome?;
    print!("{}", report.to_table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let mut series = vec![Series { label: "mqtt-video", color: "#1f77b4", points: &timelines.server }];
        if report.ffmpeg.is_some() {
            series.push(Series { label: "ffmpeg CLI, oldest frame", color: "#d62728", points: &timelines.ffmpeg });
        }
        let title = format!("{}: source to receipt latency, {} viewer(s)", report.url, report.viewers);
        std::fs::write(path, latency_svg(&title, &series)).with_context(|| format!("writing {}", path.display()))?;
    }
    if !report.errors.is_empty() {
        bail!("{} error(s) during the run (listed above)", report.errors.len());
    }
    Ok(())
}
