//! `mqtt-video bench`: N MQTT viewers against a running server (or one the bench starts), measuring what
//! users feel: time to media, per-fragment latency from the source, bitrate, gaps, and the server's cost;
//! optionally the ffmpeg CLI design on the same source, for ratios.

pub mod ffmpeg_ref;
pub mod measure;
mod monitor;
pub mod plot;
pub mod report;
pub mod spawn;
pub mod viewer;

use crate::server::stats::CpuMeter;
use measure::Summary;
use monitor::Monitor;
use report::{FirstPlay, Report, ServerFigures, Warm, REPORT_VERSION};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use viewer::{Progress, ViewerPlan, ViewerResult};

/// Why a bench could not run at all (problems during the run are reported in [`Report::errors`]).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The broker could not be reached.
    #[error("cannot reach the broker at {broker}: {reason}")]
    Broker {
        /// `host:port`.
        broker: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// The broker is up but no server announces itself on it.
    #[error(
        "no mqtt-video server on the broker at {broker}: nothing retained on '{prefix}/sources' within {waited:?}. \
         Start `mqtt-video serve` against this broker (with topics.prefix = \"{prefix}\"), or use --spawn"
    )]
    NoServer {
        /// `host:port`.
        broker: String,
        /// The topic prefix looked at.
        prefix: String,
        /// How long the bench waited.
        waited: Duration,
    },
    /// `--spawn` could not start its broker or server.
    #[error("--spawn: {0}")]
    Spawn(String),
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The broker; with `spawn` and `None`, the bench starts a mosquitto.
    pub broker: Option<(String, u16)>,
    /// The source URL.
    pub url: String,
    /// Viewers to run.
    pub viewers: usize,
    /// Seconds each viewer receives media.
    pub seconds: f64,
    /// The server's topic prefix.
    pub prefix: String,
    /// Start a server (and a broker unless `broker` is set) for this run.
    pub spawn: bool,
    /// `pipeline.mode` of a spawned server.
    pub mode: String,
    /// Also measure the ffmpeg CLI on the same source.
    pub compare_ffmpeg: bool,
    /// `-frag_duration` of the ffmpeg reference, ms.
    pub ffmpeg_fragment_ms: u32,
    /// A local server's pid, for /proc figures (set automatically with `spawn`).
    pub server_pid: Option<u32>,
    /// How long to wait for a server, a describe reply or the first media.
    pub answer_timeout: Duration,
    /// Protocol the viewers speak: 2 (shared stream topics) or 1 (a copy per viewer).
    pub protocol: u8,
    /// The rendition the viewers play (protocol 2); `None`: the stream's own.
    pub rendition: Option<String>,
    /// Renditions of a spawned server: (name, max height, kbit/s).
    pub spawn_renditions: Vec<(String, u32, u32)>,
    /// Where a spawned server ends an RTSP camera's frames.
    pub rtsp_frame_end: crate::media::config::RtspFrameEnd,
}

/// A snapshot for a progress line.
#[derive(Debug, Clone)]
pub struct ProgressView {
    /// What the bench is doing.
    pub phase: &'static str,
    /// Seconds since the viewers started.
    pub elapsed: f64,
    /// Viewers receiving media.
    pub playing: usize,
    /// Viewers in the run.
    pub viewers: usize,
    /// Fragments received so far.
    pub fragments: u64,
    /// Latency of the newest live fragment (ms).
    pub last_latency_ms: Option<f64>,
}

/// Latency samples over time, for `--plot`: `(seconds since the start, ms)`.
#[derive(Debug, Default)]
pub struct Timelines {
    /// mqtt-video, all viewers.
    pub server: Vec<(f64, f64)>,
    /// The ffmpeg CLI reference.
    pub ffmpeg: Vec<(f64, f64)>,
}

fn run_tag() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("bench_{:x}_{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

/// Runs a whole bench; `on_progress` is called about every 250 ms.
pub fn run(options: &BenchOptions, on_progress: impl Fn(&ProgressView)) -> Result<(Report, Timelines), BenchError> {
    if options.viewers == 0 {
        return Err(BenchError::Options("--viewers must be at least 1".into()));
    }
    if !(options.seconds.is_finite() && options.seconds > 0.0) {
        return Err(BenchError::Options("--seconds must be a positive number".into()));
    }
    if !matches!(options.protocol, 1 | 2) {
        return Err(BenchError::Options("--protocol must be 1 or 2".into()));
    }
    if options.rendition.is_some() && options.protocol != 2 {
        return Err(BenchError::Options("--rendition needs --protocol 2".into()));
    }
    let spawned = if options.spawn {
        let settings = spawn::ServerSettings {
            mode: options.mode.clone(),
            prefix: options.prefix.clone(),
            viewers: options.viewers,
            url: options.url.clone(),
            renditions: options.spawn_renditions.clone(),
            rtsp_frame_end: options.rtsp_frame_end,
        };
        Some(spawn::Spawned::start(&settings, options.broker.clone())?)
    } else {
        None
    };
    let (host, port) = match (&spawned, &options.broker) {
        (Some(s), _) => (s.host.clone(), s.port),
        (None, Some(b)) => b.clone(),
        (None, None) => return Err(BenchError::Options("give --broker HOST:PORT, or --spawn".into())),
    };
    let server_pid = spawned.as_ref().map(|s| s.server_pid()).or(options.server_pid);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = runtime.block_on(run_async(options, host, port, server_pid, &on_progress));
    match (result, &spawned) {
        (Err(BenchError::NoServer { .. }), Some(s)) => {
            Err(BenchError::Spawn(format!("the spawned server did not come up; its log: {}", s.server_log().trim())))
        }
        (r, _) => r,
    }
}

async fn run_async(
    options: &BenchOptions,
    host: String,
    port: u16,
    server_pid: Option<u32>,
    on_progress: &impl Fn(&ProgressView),
) -> Result<(Report, Timelines), BenchError> {
    let broker = format!("{host}:{port}");
    let tag = run_tag();
    let wait_server =
        if options.spawn { Duration::from_secs(20) } else { options.answer_timeout.min(Duration::from_secs(5)) };
    let monitor = Monitor::connect(&host, port, &options.prefix, &tag, wait_server).await?;
    let running_before = monitor.stream_running(&options.url);
    let cold = if options.spawn { Some(true) } else { running_before.map(|r| !r) };

    let progress = Arc::new(Progress::default());
    let epoch = Instant::now();
    // The server's bytes over the whole run, join bursts included (the sampler's window starts once all joined).
    let written_at_start = server_pid.and_then(|pid| crate::server::stats::bytes_written(Some(pid)));
    let receive_for = Duration::from_secs_f64(options.seconds);
    let plan = |index: usize| ViewerPlan {
        index,
        host: host.clone(),
        port,
        prefix: options.prefix.clone(),
        url: options.url.clone(),
        base: tag.clone(),
        describe: index > 0,
        receive_for,
        answer_timeout: options.answer_timeout,
        epoch,
        protocol: options.protocol,
        rendition: options.rendition.clone(),
    };
    let view = |phase: &'static str| ProgressView {
        phase,
        elapsed: epoch.elapsed().as_secs_f64(),
        playing: progress.playing.load(Ordering::Relaxed),
        viewers: options.viewers,
        fragments: progress.fragments.load(Ordering::Relaxed),
        last_latency_ms: match progress.last_latency_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(us as f64 / 1000.0),
        },
    };

    // The first viewer plays before anything else asks for the URL: a cold start if the stream was not running.
    let mut handles = vec![tokio::spawn(viewer::run(plan(0), Arc::clone(&progress)))];
    while progress.playing.load(Ordering::Relaxed) == 0 && progress.finished.load(Ordering::Relaxed) == 0 {
        on_progress(&view("first play"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let described = monitor.describe(&options.url, options.answer_timeout).await;
    let monitor_describe_ms = described.as_ref().ok().map(|(_, ms)| *ms);
    let stream = described.map(|(facts, _)| facts);
    for i in 1..options.viewers {
        handles.push(tokio::spawn(viewer::run(plan(i), Arc::clone(&progress))));
        // Pages arrive a little apart, not in one burst of CONNECTs.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Server figures while every viewer is receiving: from /proc when local, else from the stats topic.
    let mut sampler = ServerSampler::new(server_pid);
    let mut last_sample = Instant::now();
    let mut all_joined_at: Option<Instant> = None;
    let mut first_finish_at: Option<Instant> = None;
    loop {
        let finished = progress.finished.load(Ordering::Relaxed);
        let playing = progress.playing.load(Ordering::Relaxed);
        if finished >= options.viewers {
            break;
        }
        if all_joined_at.is_none() && playing + finished >= options.viewers {
            all_joined_at = Some(Instant::now());
            sampler.start();
        }
        if finished > 0 && first_finish_at.is_none() && all_joined_at.is_some() {
            first_finish_at = Some(Instant::now());
            sampler.stop();
        }
        if last_sample.elapsed() >= Duration::from_secs(1) {
            sampler.sample();
            last_sample = Instant::now();
        }
        on_progress(&view("receiving"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    sampler.stop();
    let mut results: Vec<ViewerResult> = Vec::new();
    let mut errors = Vec::new();
    for h in handles {
        match h.await {
            Ok(r) => results.push(r),
            Err(e) => errors.push(format!("a viewer task failed: {e}")),
        }
    }
    let window = all_joined_at.zip(first_finish_at);
    let mut server = sampler.figures(&monitor.stats_between(window));
    let written_at_end = server_pid.and_then(|pid| crate::server::stats::bytes_written(Some(pid)));
    server.written_run_kbps = written_at_start
        .zip(written_at_end)
        .and_then(|(a, b)| kbps(b.saturating_sub(a), epoch.elapsed().as_secs_f64()));

    let mut ffmpeg = None;
    let mut ffmpeg_timeline = Vec::new();
    if options.compare_ffmpeg {
        on_progress(&view("ffmpeg CLI"));
        let facts = stream.as_ref().ok();
        let plan = ffmpeg_ref::FfmpegPlan {
            url: options.url.clone(),
            transcode_video: facts.is_none_or(|f| f["video"] != "copy"),
            transcode_audio: match facts.map(|f| f["audio"].as_str()) {
                Some(Some("copy")) => Some(false),
                Some(None) => None,
                _ => Some(true),
            },
            fragment_ms: options.ffmpeg_fragment_ms,
            receive_for,
            start_timeout: options.answer_timeout,
        };
        let (figures, timeline) =
            tokio::task::spawn_blocking(move || ffmpeg_ref::run(&plan, epoch)).await.unwrap_or_else(|e| {
                (
                    report::FfmpegFigures { error: Some(format!("the ffmpeg task failed: {e}")), ..Default::default() },
                    vec![],
                )
            });
        if let Some(e) = &figures.error {
            errors.push(format!("ffmpeg CLI: {e}"));
        }
        ffmpeg = Some(figures);
        ffmpeg_timeline = timeline;
    }
    monitor.close().await;

    if let Err(e) = &stream {
        errors.push(format!("describe: {e}"));
    }
    let report = aggregate(options, broker, cold, stream.ok(), monitor_describe_ms, server, ffmpeg, &results, errors);
    let timelines =
        Timelines { server: results.into_iter().flat_map(|r| r.timeline).collect(), ffmpeg: ffmpeg_timeline };
    Ok((report, timelines))
}

#[allow(clippy::too_many_arguments)]
fn aggregate(
    options: &BenchOptions,
    broker: String,
    cold: Option<bool>,
    stream: Option<serde_json::Value>,
    monitor_describe_ms: Option<f64>,
    server: ServerFigures,
    ffmpeg: Option<report::FfmpegFigures>,
    results: &[ViewerResult],
    mut errors: Vec<String>,
) -> Report {
    let per_viewer: Vec<_> = results.iter().map(|r| r.report.clone()).collect();
    for v in &per_viewer {
        if let Some(e) = &v.error {
            errors.push(format!("viewer {}: {e}", v.index));
        }
    }
    let first = per_viewer.iter().find(|v| v.index == 0);
    let others: Vec<_> = per_viewer.iter().filter(|v| v.index > 0).collect();
    let collect =
        |f: &dyn Fn(&report::ViewerReport) -> Option<f64>| -> Vec<f64> { others.iter().filter_map(|v| f(v)).collect() };
    // The monitor's describe comes right after the first play: the stream runs by then, so it is warm too.
    let mut describe = collect(&|v| v.describe_ms);
    describe.extend(monitor_describe_ms);
    let latencies: Vec<f64> = results.iter().flat_map(|r| r.timeline.iter().map(|p| p.1)).collect();
    let bitrates: Vec<f64> = per_viewer.iter().filter_map(|v| v.bitrate_kbps).collect();
    let renditions = stream.as_ref().and_then(report::renditions_of);
    let played = match (options.protocol, &options.rendition) {
        (2, Some(name)) => name.clone(),
        (2, None) => "main".into(),
        // Version 1: `main`, or its H.264 repeat when main is in a codec not every browser decodes.
        _ => renditions
            .as_deref()
            .and_then(mqtt_video_wire::output::h264_repeat)
            .map_or_else(|| "main".into(), |r| format!("{} (version 1)", r.name)),
    };
    Report {
        version: REPORT_VERSION,
        broker,
        url: options.url.clone(),
        viewers: options.viewers,
        seconds: options.seconds,
        stream,
        played: Some(played),
        first_play: FirstPlay {
            cold,
            init_ms: first.and_then(|v| v.init_ms),
            first_fragment_ms: first.and_then(|v| v.first_fragment_ms),
        },
        warm: Warm {
            describe: Summary::of(&describe),
            init: Summary::of(&collect(&|v| v.init_ms)),
            first_fragment: Summary::of(&collect(&|v| v.first_fragment_ms)),
        },
        latency: Summary::of(&latencies),
        bitrate_kbps: Summary::of(&bitrates),
        fragments: per_viewer.iter().map(|v| v.fragments).sum(),
        gaps: per_viewer.iter().map(|v| v.gaps).sum(),
        missing_ms: per_viewer.iter().map(|v| v.missing_ms).sum(),
        out_of_order: per_viewer.iter().map(|v| v.out_of_order).sum(),
        realtime_ratio: per_viewer.iter().filter_map(|v| v.realtime_ratio).reduce(f64::min),
        server,
        ffmpeg,
        per_viewer,
        errors,
    }
}

/// CPU and memory of a local server from /proc, sampled over the window in which all viewers receive.
struct ServerSampler {
    pid: Option<u32>,
    cpu: Option<CpuMeter>,
    cpu_percent: Option<f64>,
    rss: Vec<u64>,
    threads_max: Option<u64>,
    written: Vec<(Instant, u64)>,
    active: bool,
}

impl ServerSampler {
    fn new(pid: Option<u32>) -> Self {
        Self {
            pid,
            cpu: None,
            cpu_percent: None,
            rss: Vec::new(),
            threads_max: None,
            written: Vec::new(),
            active: false,
        }
    }

    fn start(&mut self) {
        if let Some(pid) = self.pid {
            self.cpu = Some(CpuMeter::of(pid));
            self.active = true;
            self.sample();
        }
    }

    fn sample(&mut self) {
        let Some(pid) = self.pid.filter(|_| self.active) else { return };
        let (rss, threads) = crate::server::stats::memory_and_threads_of(pid);
        self.rss.extend(rss);
        self.threads_max = self.threads_max.max(threads);
        if let Some(bytes) = crate::server::stats::bytes_written(Some(pid)) {
            self.written.push((Instant::now(), bytes));
        }
    }

    fn stop(&mut self) {
        if !self.active {
            return;
        }
        self.sample();
        self.cpu_percent = self.cpu.take().and_then(|mut meter| meter.sample());
        self.active = false;
    }

    /// From /proc when there was a pid, else from the stats messages received in the window.
    fn figures(&self, stats: &[serde_json::Value]) -> ServerFigures {
        if self.pid.is_some() && !self.rss.is_empty() {
            return ServerFigures {
                from: Some("/proc".into()),
                cpu_percent: self.cpu_percent,
                rss_kib_start: self.rss.first().copied(),
                rss_kib_end: self.rss.last().copied(),
                rss_kib_max: self.rss.iter().max().copied(),
                threads_max: self.threads_max,
                written_kbps: self.written.first().zip(self.written.last()).and_then(|((t0, b0), (t1, b1))| {
                    kbps(b1.saturating_sub(*b0), t1.duration_since(*t0).as_secs_f64())
                }),
                written_run_kbps: None,
            };
        }
        let process = |k: &'static str| stats.iter().filter_map(move |s| s["process"][k].as_f64());
        let cpu: Vec<f64> = process("cpu_percent").collect();
        let rss: Vec<u64> = process("rss_kib").map(|v| v as u64).collect();
        ServerFigures {
            from: (!stats.is_empty()).then(|| "stats topic".into()),
            cpu_percent: (!cpu.is_empty()).then(|| cpu.iter().sum::<f64>() / cpu.len() as f64),
            rss_kib_start: rss.first().copied(),
            rss_kib_end: rss.last().copied(),
            rss_kib_max: rss.iter().max().copied(),
            threads_max: process("threads").map(|v| v as u64).max(),
            written_kbps: written_from_stats(stats),
            written_run_kbps: None,
        }
    }
}

fn kbps(bytes: u64, seconds: f64) -> Option<f64> {
    (seconds > 0.5).then(|| bytes as f64 * 8.0 / 1000.0 / seconds)
}

/// The upload rate between the first and the last stats message of the window (`uptime_secs` is whole seconds).
fn written_from_stats(stats: &[serde_json::Value]) -> Option<f64> {
    let point = |s: &serde_json::Value| Some((s["uptime_secs"].as_f64()?, s["process"]["bytes_written"].as_u64()?));
    let points: Vec<(f64, u64)> = stats.iter().filter_map(point).collect();
    let ((t0, b0), (t1, b1)) = points.first().zip(points.last())?;
    kbps(b1.saturating_sub(*b0), t1 - t0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn upload_rate_from_the_stats_topic() {
        let at = |secs: u64, bytes: u64| json!({"uptime_secs": secs, "process": {"bytes_written": bytes}});
        // 1 MB over 4 s is 2000 kbit/s; a message without the counter is skipped.
        let stats = [at(10, 1_000_000), json!({"uptime_secs": 12}), at(14, 2_000_000)];
        assert_eq!(written_from_stats(&stats), Some(2000.0));
        assert_eq!(written_from_stats(&stats[..1]), None, "one message is no rate");
        assert_eq!(written_from_stats(&[]), None);
    }
}
