//! Live MPEG-TS over UDP, joined mid-stream as a viewer joins an IPTV channel: the pipeline starts at the
//! source's next keyframe with the parameters the stream itself carries, and damaged input (datagrams lost
//! on the way) never reaches the output: what comes out decodes without a single error.

use crate::support;

use mqtt_video::media::config::Mode;
use mqtt_video::media::{MediaError, PipelineConfig};
use std::time::Duration;
use support::udp::UdpSource;
use support::*;

/// Everything a live pipeline gave within `limit` (or `media_secs` of media), with its damaged-drop count.
fn run_live(url: &str, config: PipelineConfig, media_secs: f64, limit: Duration) -> (Run, u64) {
    let (run, stats) = support::collect_with_stats(url, config, media_secs, limit);
    (run, stats.damaged)
}

#[test]
fn udp_ts_joined_mid_stream_starts_at_its_next_keyframe_with_the_defaults() {
    let source = UdpSource::start(30, 0.0);
    std::thread::sleep(Duration::from_millis(700));
    let mut firsts = Vec::new();
    for join in 0..5 {
        // Joins at different points of the 1 s GOP.
        std::thread::sleep(Duration::from_millis(230));
        let (run, _) = run_live(&source.url, PipelineConfig::default(), 2.0, Duration::from_secs(6));
        assert!(run.end.is_none(), "join {join}: {:?}", run.end);
        let first = run.time_to_first_fragment.unwrap_or_else(|| panic!("join {join}: no fragment"));
        assert!(run.fragments[0].keyframe, "join {join}: starts at a keyframe");
        let output = run.init.as_ref().expect("an init segment").info.clone();
        assert_eq!((output.width, output.height, output.has_audio), (640, 360, true), "join {join}");
        assert_decodes(&run, &format!("udp-join-{join}.mp4"));
        firsts.push(first.as_secs_f64() * 1000.0);
    }
    eprintln!("udp:// TS, 1 s GOP, first fragment after joining (ms): {firsts:.0?}");
    assert!(firsts.iter().all(|&ms| ms < 1200.0), "one GOP plus a little: {firsts:?}");
}

#[test]
fn damaged_udp_ts_never_reaches_the_output() {
    for loss in [0.01, 0.03] {
        let source = UdpSource::start(30, loss);
        std::thread::sleep(Duration::from_millis(500));
        let config = PipelineConfig { mode: Mode::Copy, ..Default::default() };
        let (run, damaged) = run_live(&source.url, config, 10.0, Duration::from_secs(20));
        assert!(run.end.is_none(), "{loss}: {:?}", run.end);
        let lost = source.dropped.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "{:.0} % of datagrams lost ({lost}): {} fragments in {:.1} s of media, {damaged} damaged packets kept back",
            loss * 100.0,
            run.fragments.len(),
            run.media_secs()
        );
        assert!(lost > 0 && damaged > 0, "the forwarder dropped {lost}, the pipeline kept back {damaged}");
        // What went out decodes without one error: no damaged frame, nothing that refers to one.
        assert_decodes(&run, &format!("udp-loss-{loss}.mp4"));
    }
}

#[test]
fn a_ts_source_whose_keyframe_does_not_come_in_time_says_so() {
    let source = UdpSource::start(600, 0.0);
    std::thread::sleep(Duration::from_millis(1500));
    let mut config = PipelineConfig::default();
    config.source.connect_timeout_ms = 2000;
    let (run, _) = run_live(&source.url, config, 1.0, Duration::from_secs(10));
    let error = run.error();
    assert!(matches!(&error, MediaError::Timeout(m) if m.contains("no keyframe within 2.0 s")), "{error:?}");
    assert_eq!(error.code(), "source_timeout");
}

#[test]
fn copy_mode_still_encodes_the_built_in_patterns() {
    let mut config = fast_config();
    config.mode = Mode::Copy;
    let run = collect("builtin://testsrc", config, 1.0, Duration::from_secs(10));
    assert!(run.end.is_none() || matches!(run.end, Some(Ok(()))), "{:?}", run.end);
    assert!(run.fragments.len() > 20);
    assert_decodes(&run, "builtin-copy-mode.mp4");
}
