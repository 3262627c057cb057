//! `--compare-ffmpeg`: the design this server replaces, measured on the same source in the same run: the
//! ffmpeg CLI spawned per stream, fragmented MP4 on a pipe (200 ms fragments, as the original demo).
//!
//! To date the frames without changing what ffmpeg does, its input is stamped with the wall clock at which
//! each packet is read (`-use_wallclock_as_timestamps 1 -copyts`); the mp4 muxer rebases its timeline to 0,
//! so the first video packet it is handed (`-debug_ts`: `muxer <- type:video pkt_pts:N`, in the track's
//! timescale) anchors the rest. A fragment's oldest frame was then read at `N + tfdt - first tfdt`.

use super::measure::Summary;
use super::report::FfmpegFigures;
use super::viewer::JOIN_BURST;
use crate::media::source::TestPattern;
use crate::media::timing::wallclock_us;
use crate::server::stats::{memory_and_threads_of, CpuMeter};
use mqtt_video_wire::fmp4::{self, Segment, Splitter, TrackKind};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The ffmpeg CLI's video encoder settings equal to the server's defaults (libx264 veryfast, zerolatency,
/// high profile, CRF 23, a keyframe every 30 frames, no scene-cut keyframes, no B-frames).
pub const X264_ARGS: [&str; 18] = [
    "-c:v",
    "libx264",
    "-preset",
    "veryfast",
    "-tune",
    "zerolatency",
    "-profile:v",
    "high",
    "-crf",
    "23",
    "-g",
    "30",
    "-sc_threshold",
    "0",
    "-bf",
    "0",
    "-pix_fmt",
    "yuv420p",
];

/// The ffmpeg CLI's audio encoder settings equal to the server's defaults (AAC-LC, 96 kbit/s, 48 kHz).
pub const AAC_ARGS: [&str; 6] = ["-c:a", "aac", "-b:a", "96k", "-ar", "48000"];

/// What to run the CLI on, and how.
#[derive(Debug, Clone)]
pub struct FfmpegPlan {
    /// The source URL (a `builtin://` URL becomes the same lavfi graph, paced in real time).
    pub url: String,
    /// Re-encode video with libx264 (else copy), as the server does for this source.
    pub transcode_video: bool,
    /// `None`: no audio; `Some(true)`: AAC encode; `Some(false)`: copy.
    pub transcode_audio: Option<bool>,
    /// `-frag_duration`, ms.
    pub fragment_ms: u32,
    /// How long to receive after the first fragment.
    pub receive_for: Duration,
    /// Give up when no init segment came within this long.
    pub start_timeout: Duration,
}

/// The arguments after `ffmpeg`; `clock` draws the wall clock on a built-in pattern, as the server does.
pub fn command_args(plan: &FfmpegPlan, clock: bool) -> Vec<String> {
    let mut a: Vec<String> = ["-hide_banner", "-nostdin", "-debug_ts", "-use_wallclock_as_timestamps", "1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    match TestPattern::from_url(&plan.url) {
        Some(pattern) => {
            // lavfi makes frames as fast as it can: `realtime` paces them like a camera.
            let graph = pattern.graph(clock).replace("[out0]", ",realtime[out0]").replace("[out1]", ",arealtime[out1]");
            a.extend(["-f".into(), "lavfi".into(), "-i".into(), graph]);
        }
        None => {
            if plan.url.to_ascii_lowercase().starts_with("rtsp") {
                a.extend(["-rtsp_transport".into(), "tcp".into()]);
            }
            a.extend(["-i".into(), plan.url.clone()]);
        }
    }
    a.extend(["-copyts".into(), "-map".into(), "0:v:0".into()]);
    if plan.transcode_video {
        a.extend(X264_ARGS.iter().map(|s| s.to_string()));
    } else {
        a.extend(["-c:v".into(), "copy".into()]);
    }
    match plan.transcode_audio {
        None => a.push("-an".into()),
        Some(transcode) => {
            a.extend(["-map".into(), "0:a:0?".into()]);
            if transcode {
                a.extend(AAC_ARGS.iter().map(|s| s.to_string()));
            } else {
                a.extend(["-c:a".into(), "copy".into()]);
            }
        }
    }
    a.extend(["-f", "mp4", "-movflags", "frag_keyframe+empty_moov+default_base_moof"].iter().map(|s| s.to_string()));
    a.extend(["-frag_duration".into(), (u64::from(plan.fragment_ms) * 1000).to_string(), "pipe:1".into()]);
    a
}

/// `N` from ffmpeg's `-debug_ts` line `muxer <- type:video pkt_pts:N ...`.
pub fn first_video_mux_pts(line: &str) -> Option<i64> {
    let rest = line.strip_prefix("muxer <- type:video pkt_pts:")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The child, shared with the watchdog; killed and reaped when dropped.
struct Killed(Arc<Mutex<Child>>);

impl Killed {
    fn kill(&self) {
        if let Ok(mut c) = self.0.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the CLI once and measures it; `(figures, (seconds since epoch, latency ms) per fragment)`.
pub fn run(plan: &FfmpegPlan, epoch: Instant) -> (FfmpegFigures, Vec<(f64, f64)>) {
    let first = run_once(plan, epoch, true);
    // Without a usable font drawtext fails at once: the pattern without the clock is the same work minus it.
    if first.0.init_ms.is_none() && TestPattern::from_url(&plan.url).is_some() {
        return run_once(plan, epoch, false);
    }
    first
}

fn run_once(plan: &FfmpegPlan, epoch: Instant, clock: bool) -> (FfmpegFigures, Vec<(f64, f64)>) {
    let args = command_args(plan, clock);
    let mut figures = FfmpegFigures { command: format!("ffmpeg {}", shell_words(&args)), ..Default::default() };
    let mut timeline = Vec::new();
    let started = Instant::now();
    let child =
        Command::new("ffmpeg").args(&args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            figures.error = Some(format!("cannot run ffmpeg: {e}"));
            return (figures, timeline);
        }
    };
    let pid = child.id();
    let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        figures.error = Some("ffmpeg's pipes were not set up".into());
        return (figures, timeline);
    };
    let child = Killed(Arc::new(Mutex::new(child)));
    let (pts_tx, pts_rx) = mpsc::channel::<i64>();
    let (log_tx, log_rx) = mpsc::channel::<Vec<String>>();
    std::thread::spawn(move || {
        let mut sent = false;
        let mut tail: Vec<String> = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Some(n) = first_video_mux_pts(&line) {
                    let _ = pts_tx.send(n);
                    sent = true;
                }
            }
            if !line.contains("pkt_pts") && !line.contains("pkt_dts") && !line.trim().is_empty() {
                tail.push(line);
                if tail.len() > 8 {
                    tail.remove(0);
                }
            }
        }
        let _ = log_tx.send(tail);
    });
    // Reading the pipe blocks; a watchdog kills ffmpeg when it produces nothing in time.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let timeout = plan.start_timeout + plan.receive_for + Duration::from_secs(5);
    let watched = Arc::clone(&child.0);
    std::thread::spawn(move || {
        if done_rx.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout) {
            if let Ok(mut c) = watched.lock() {
                let _ = c.kill();
            }
        }
    });

    let mut splitter = Splitter::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut video: Option<(u32, u32)> = None; // (track id, timescale)
    let mut tracks = Vec::new();
    let mut anchor: Option<i64> = None; // first muxed video pts, in the video timescale
    let mut first_tfdt: Option<u64> = None;
    let mut init_at: Option<Instant> = None;
    let mut first_at: Option<Instant> = None;
    let mut cpu: Option<CpuMeter> = None; // from the first fragment on
    'read: loop {
        if init_at.is_none() && started.elapsed() > plan.start_timeout {
            figures.error = Some(format!("no init segment within {:?}", plan.start_timeout));
            break;
        }
        let n = match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                figures.error = Some(format!("reading ffmpeg's output: {e}"));
                break;
            }
        };
        let segments = match splitter.push(&buf[..n]) {
            Ok(s) => s,
            Err(e) => {
                figures.error = Some(format!("ffmpeg's output is not fragmented MP4: {e}"));
                break;
            }
        };
        for segment in segments {
            let now = Instant::now();
            let received_us = wallclock_us() as i64;
            match segment {
                Segment::Init(bytes) => {
                    init_at = Some(now);
                    figures.init_ms = Some(ms(now - started));
                    tracks = fmp4::parse_init(&bytes).unwrap_or_default();
                    video = tracks.iter().find(|t| t.kind == TrackKind::Video).map(|t| (t.track_id, t.timescale));
                }
                Segment::Fragment { bytes, moof } => {
                    if first_at.is_none() {
                        first_at = Some(now);
                        figures.first_fragment_ms = Some(ms(now - started));
                        cpu = Some(CpuMeter::of(pid));
                    }
                    figures.fragments += 1;
                    if let (Some((id, timescale)), Ok(runs)) = (video, fmp4::parse_moof(&bytes[moof], &tracks)) {
                        if let Some(run) = runs.iter().find(|r| r.track_id == id) {
                            let tfdt = *first_tfdt.get_or_insert(run.base_decode_time);
                            if anchor.is_none() {
                                anchor = pts_rx.recv_timeout(Duration::from_secs(1)).ok();
                            }
                            let live = init_at.is_some_and(|t| now - t >= JOIN_BURST);
                            if let (true, Some(n)) = (live, anchor) {
                                let media = run.base_decode_time as i64 - tfdt as i64 + n;
                                let read_us = (media as f64 / f64::from(timescale.max(1)) * 1e6) as i64;
                                let latency = (received_us - read_us) as f64 / 1000.0;
                                timeline.push(((now - epoch).as_secs_f64(), latency));
                            }
                        }
                    }
                    let rss = memory_and_threads_of(pid).0;
                    figures.rss_kib_max = figures.rss_kib_max.max(rss);
                    if first_at.is_some_and(|t| now - t >= plan.receive_for) {
                        figures.cpu_percent = cpu.as_mut().and_then(CpuMeter::sample);
                        break 'read;
                    }
                }
            }
        }
    }
    let _ = done_tx.send(());
    drop(stdout);
    child.kill();
    if figures.first_fragment_ms.is_none() && figures.error.is_none() {
        figures.error = Some("ffmpeg ended before its first fragment".into());
    }
    if figures.error.is_some() {
        if let Ok(tail) = log_rx.recv_timeout(Duration::from_secs(2)) {
            if !tail.is_empty() {
                figures.error = figures.error.map(|e| format!("{e}; ffmpeg said: {}", tail.join(" | ")));
            }
        }
    }
    figures.latency = Summary::of(&timeline.iter().map(|p| p.1).collect::<Vec<_>>());
    (figures, timeline)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The arguments as one line a person can paste into a shell.
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:/+=,?".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(url: &str, transcode_video: bool, transcode_audio: Option<bool>) -> FfmpegPlan {
        FfmpegPlan {
            url: url.into(),
            transcode_video,
            transcode_audio,
            fragment_ms: 200,
            receive_for: Duration::from_secs(1),
            start_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn builtin_sources_become_the_same_graph_paced_in_real_time() {
        let a = command_args(&plan("builtin://testsrc", true, Some(true)), false);
        let graph = &a[a.iter().position(|x| x == "-i").unwrap() + 1];
        assert!(graph.starts_with("testsrc2=size=640x360:rate=30,realtime[out0];sine="), "{graph}");
        assert!(graph.ends_with(",arealtime[out1]"), "{graph}");
        assert!(a.windows(2).any(|w| w == ["-c:v", "libx264"]));
        assert!(a.windows(2).any(|w| w == ["-c:a", "aac"]));
        assert!(a.windows(2).any(|w| w == ["-frag_duration", "200000"]));
        assert_eq!(a.last().map(String::as_str), Some("pipe:1"));
    }

    #[test]
    fn rtsp_copy_without_audio() {
        let a = command_args(&plan("rtsp://cam/x", false, None), true);
        assert!(a.windows(2).any(|w| w == ["-rtsp_transport", "tcp"]));
        assert!(a.windows(2).any(|w| w == ["-c:v", "copy"]));
        assert!(a.contains(&"-an".to_string()) && !a.contains(&"aac".to_string()));
        assert!(shell_words(&a).contains("-i rtsp://cam/x"));
        assert_eq!(shell_words(&["a b".into(), "it's".into()]), r"'a b' 'it'\''s'");
    }

    #[test]
    fn reads_the_first_muxed_video_pts() {
        let line = "muxer <- type:video pkt_pts:27588590220288 pkt_pts_time:1.79613e+09 pkt_dts:27588590220288";
        assert_eq!(first_video_mux_pts(line), Some(27_588_590_220_288));
        assert_eq!(first_video_mux_pts("muxer <- type:audio pkt_pts:1"), None);
        assert_eq!(first_video_mux_pts("muxer <- type:video pkt_pts:NOPTS"), None);
    }
}
