//! Hundreds of pipeline start/stop cycles leave no threads and no memory behind. Its own test binary, so
//! that no other test shares the process whose memory it reads.

use crate::support;

use mqtt_video::media::{Mode, Pipeline, PipelineEvent};
use std::time::Duration;
use support::*;

/// Starts a pipeline, waits for its first fragment (or its end), and stops it.
fn cycle(url: &str, mode: Mode) {
    let mut config = fast_config();
    config.mode = mode;
    let mut pipeline = Pipeline::start(url, config).expect("start");
    loop {
        match pipeline.events().recv_timeout(Duration::from_secs(30)) {
            Ok(PipelineEvent::Fragment(_)) | Ok(PipelineEvent::End(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    pipeline.join();
}

#[test]
fn start_stop_cycles_free_everything() {
    let copy = h264_aac_mp4();
    let transcode = mpeg2_mp2_ts();
    let sources = [(copy.to_str().unwrap(), Mode::Copy), (transcode.to_str().unwrap(), Mode::Transcode)];
    // Warm-up: allocator arenas, codec tables and x264's lookup tables are allocated once per process.
    for _ in 0..20 {
        for (url, mode) in sources {
            cycle(url, mode);
        }
    }
    let (rss_before, threads_before) = (rss_kib(), thread_count());
    let cycles = 150;
    for _ in 0..cycles {
        for (url, mode) in sources {
            cycle(url, mode);
        }
    }
    // A thread that has been joined can still be listed in /proc for a moment on a busy machine (once: 2 -> 3
    // right after the cycles, 2 again on the next run): give the count a second to settle, the RSS none.
    let rss_after = rss_kib();
    let settle = std::time::Instant::now();
    let mut threads_after = thread_count();
    while threads_after != threads_before && settle.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(20));
        threads_after = thread_count();
    }
    let growth = rss_after as i64 - rss_before as i64;
    eprintln!(
        "{} start/stop cycles: RSS {rss_before} -> {rss_after} KiB ({growth:+} KiB), threads {threads_before} -> {threads_after}",
        cycles * sources.len()
    );
    assert_eq!(threads_after, threads_before, "every worker thread exited");
    // One leaked codec context or frame pool per cycle would be tens of MiB over 300 cycles.
    assert!(growth < 16 * 1024, "RSS grew by {growth} KiB over {} cycles", cycles * sources.len());

    // A leak per packet (as with a reused ffmpeg Packet) shows within one long run instead.
    let mut pipeline = Pipeline::start("builtin://testsrc", fast_config()).expect("start");
    let mut marks = Vec::new();
    for event in pipeline.events().iter() {
        if let PipelineEvent::Fragment(f) = event {
            let secs = f.media_time_us / 1_000_000;
            if (secs == 10 && marks.is_empty()) || (secs == 70 && marks.len() == 1) {
                marks.push(rss_kib());
            }
            if marks.len() == 2 {
                break;
            }
        }
    }
    pipeline.join();
    let steady = marks[1] as i64 - marks[0] as i64;
    eprintln!("transcoding 60 s of 640x360 video + audio: RSS {} -> {} KiB ({steady:+} KiB)", marks[0], marks[1]);
    // 60 s is 1800 video and 2800 audio packets: a few KiB leaked per packet would exceed this.
    assert!(steady < 8 * 1024, "RSS grew by {steady} KiB over 60 s of media");
}
