//! Pipeline figures against the ffmpeg CLI measured in the same run: transcode frame rate at 360p and 720p
//! (alternating runs), copy speed, and time to first fragment plus arrival-to-fragment latency on a live
//! RTSP source. Prints figures; asserts nothing about speed. Run: `cargo bench --bench pipeline`.

#[path = "../tests/it/support/mod.rs"]
mod support;

use mqtt_video::bench::ffmpeg_ref::{AAC_ARGS, X264_ARGS};
use mqtt_video::media::config::Pacing;
use mqtt_video::media::{Mode, Pipeline, PipelineConfig, PipelineEvent};
use mqtt_video_wire::fmp4::{Segment, Splitter};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const ROUNDS: usize = 3;

/// Frames per second of a whole in-process run over a file, and its media seconds.
fn in_process(path: &Path, mode: Mode) -> (f64, f64) {
    let mut config = fast_config();
    config.mode = mode;
    config.video.preset = "veryfast".into();
    let started = Instant::now();
    let mut pipeline = Pipeline::start(path.to_str().unwrap(), config).expect("start");
    let (mut frames, mut media_us) = (0u64, 0i64);
    for event in pipeline.events().iter() {
        match event {
            PipelineEvent::Fragment(f) => {
                frames += u64::from(f.video_samples);
                media_us = media_us.max(f.media_time_us + f.duration_us);
            }
            PipelineEvent::End(r) => {
                r.expect("pipeline ran to the end");
                break;
            }
            _ => {}
        }
    }
    let secs = started.elapsed().as_secs_f64();
    pipeline.join();
    (frames as f64 / secs, media_us as f64 / 1e6 / secs)
}

/// The same work with the ffmpeg CLI writing fragmented MP4 to a pipe.
fn cli(path: &Path, mode: Mode, frames: f64) -> f64 {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-nostdin", "-i"]).arg(path);
    match mode {
        Mode::Copy => cmd.args(["-c", "copy"]),
        _ => cmd.args(X264_ARGS).args(AAC_ARGS),
    };
    cmd.args(["-f", "mp4", "-movflags", "frag_keyframe+empty_moov+default_base_moof", "-frag_duration", "1", "pipe:1"]);
    let started = Instant::now();
    let status = cmd.stdout(Stdio::null()).status().expect("running ffmpeg");
    assert!(status.success());
    frames / started.elapsed().as_secs_f64()
}

fn clip(name: &str, size: &str) -> std::path::PathBuf {
    fixture(
        name,
        &[&format!("testsrc2=size={size}:rate=30:duration=10"), "sine=frequency=440:sample_rate=48000:duration=10"],
        &["-c:v", "libx264", "-preset", "fast", "-g", "60", "-pix_fmt", "yuv420p", "-c:a", "aac"],
    )
}

fn transcode_vs_cli(label: &str, path: &Path) {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ours.push(in_process(path, Mode::Transcode).0);
        theirs.push(cli(path, Mode::Transcode, 300.0));
    }
    let (ours, theirs) = (median(ours), median(theirs));
    println!(
        "transcode {label:<5} in-process {ours:7.1} fps | ffmpeg CLI {theirs:7.1} fps | ratio {:.2}",
        ours / theirs
    );
}

fn copy_speed(path: &Path) {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ours.push(in_process(path, Mode::Copy).1);
        theirs.push(cli(path, Mode::Copy, 10.0));
    }
    println!(
        "copy 720p      in-process {:7.0} x real time | ffmpeg CLI {:7.0} x real time",
        median(ours),
        median(theirs)
    );
}

/// Time from start to the first fragment, and arrival-to-fragment latencies (ms) over `secs` of live media.
fn rtsp_in_process(url: &str, mode: Mode, secs: f64) -> (f64, Vec<f64>) {
    let mut config = PipelineConfig { mode, ..Default::default() };
    config.source.pacing = Pacing::Auto;
    let started = Instant::now();
    let mut pipeline = Pipeline::start(url, config).expect("start");
    let (mut first, mut lat) = (None, Vec::new());
    while let Ok(event) = pipeline.events().recv_timeout(Duration::from_secs(10)) {
        if let PipelineEvent::Fragment(f) = event {
            first.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1000.0);
            lat.push((f.produced_wallclock_us - f.source_wallclock_us) as f64 / 1000.0);
            if f.media_time_us as f64 / 1e6 >= secs {
                break;
            }
        }
    }
    pipeline.join();
    (first.expect("a fragment"), lat)
}

/// The original design: ffmpeg spawned per stream, fMP4 on a pipe; time until its first whole fragment.
fn rtsp_cli_first_fragment(url: &str) -> f64 {
    let started = Instant::now();
    let mut child = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-rtsp_transport", "tcp", "-i", url, "-c", "copy", "-f", "mp4"])
        .args(["-movflags", "frag_keyframe+empty_moov+default_base_moof", "-frag_duration", "200000", "pipe:1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("running ffmpeg");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut splitter = Splitter::new();
    let mut buf = [0u8; 65536];
    let mut first = f64::NAN;
    'read: while let Ok(n) = stdout.read(&mut buf) {
        if n == 0 {
            break;
        }
        for segment in splitter.push(&buf[..n]).expect("fMP4 from ffmpeg") {
            if let Segment::Fragment { .. } = segment {
                first = started.elapsed().as_secs_f64() * 1000.0;
                break 'read;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    first
}

fn main() {
    println!("mqtt-video pipeline benchmark ({ROUNDS} alternating rounds, medians)");
    transcode_vs_cli("360p", &clip("bench-360p.mp4", "640x360"));
    let hd = clip("bench-720p.mp4", "1280x720");
    transcode_vs_cli("720p", &hd);
    copy_speed(&hd);

    let server = RtspServer::start(&[]);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ours.push(rtsp_in_process(&server.url, Mode::Copy, 0.5).0);
        theirs.push(rtsp_cli_first_fragment(&server.url));
    }
    let (ours, theirs) = (median(ours), median(theirs));
    println!(
        "rtsp 640x360@30 first fragment: in-process {ours:.0} ms | ffmpeg CLI {theirs:.0} ms | ratio {:.2}",
        ours / theirs
    );
    for mode in [Mode::Copy, Mode::Transcode] {
        let (_, lat) = rtsp_in_process(&server.url, mode, 10.0);
        println!(
            "rtsp {mode:?} source clock to fragment out: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms over {} fragments",
            percentile(lat.clone(), 0.5),
            percentile(lat.clone(), 0.95),
            percentile(lat.clone(), 1.0),
            lat.len()
        );
    }
}
