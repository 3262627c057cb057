//! `mqtt-video bench` against the real stack: a spawned server with several viewers and the ffmpeg CLI
//! reference, a running server found through the broker (copy mode from a live RTSP source), and the two
//! ways it must fail fast: a broker with no server, and no broker at all.

use crate::support;

use serde_json::Value;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::broker::{free_port, Broker};
use support::page::{server_config, Server};
use support::RtspServer;

fn bench(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_mqtt-video"))
        .arg("bench")
        .args(args)
        .env("MQTT_VIDEO_LOG", "warn")
        .output()
        .expect("running mqtt-video bench");
    (out, started.elapsed())
}

fn json_report(name: &str, args: &[&str]) -> (Value, String) {
    let path = support::work_dir().join(format!("{name}.json"));
    let mut all = args.to_vec();
    let p = path.to_str().expect("utf-8 path");
    all.extend(["--json", p]);
    let (out, _) = bench(&all);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "bench failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the JSON report")).expect("valid JSON");
    (report, stdout)
}

fn num(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = &cur[key];
    }
    cur.as_f64().unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

#[test]
fn spawned_server_three_viewers_and_the_ffmpeg_reference() {
    let plot = support::work_dir().join("bench.svg");
    let (r, table) = json_report(
        "bench-spawn",
        &["--spawn", "--viewers", "3", "--seconds", "4", "--compare-ffmpeg", "--plot", plot.to_str().unwrap()],
    );
    println!("{table}");
    assert_eq!(r["version"], 1);
    assert_eq!(r["errors"], Value::Array(vec![]), "{r:#}");
    assert_eq!(r["first_play"]["cold"], true);
    let first = num(&r, "first_play.first_fragment_ms");
    assert!(first > 0.0 && first < 5000.0, "first fragment after {first} ms");
    assert!(num(&r, "first_play.init_ms") <= first);
    assert_eq!(r["stream"]["width"], 640);
    assert!(r["stream"]["mimeCodec"].as_str().unwrap().starts_with("video/mp4; codecs=\"avc1."));
    // Two describing viewers plus the bench's own describe.
    assert_eq!(num(&r, "warm.describe.count"), 3.0);
    assert!(num(&r, "warm.first_fragment.p50") > 0.0);
    // 4 s at 30 fps per viewer, the first 2 s after joining left out of latency.
    let p50 = num(&r, "latency.p50");
    assert!(p50 > 0.0 && p50 < 1000.0, "latency p50 {p50} ms");
    assert!(num(&r, "latency.count") > 3.0 * 45.0, "{:#}", r["latency"]);
    assert!(num(&r, "fragments") >= 3.0 * 100.0, "{}", r["fragments"]);
    assert_eq!(num(&r, "gaps"), 0.0);
    assert_eq!(num(&r, "out_of_order"), 0.0);
    // The built-in pattern keeps up with real time: the slowest viewer's media seconds per wall second.
    let realtime = num(&r, "realtime_ratio");
    assert!((0.9..1.2).contains(&realtime), "realtime {realtime}");
    assert!(table.contains("realtime, media s per wall s"), "{table}");
    let viewers = r["per_viewer"].as_array().unwrap();
    assert_eq!(viewers.len(), 3);
    for v in viewers {
        assert!(num(v, "realtime_ratio") >= realtime, "{v:#}");
        let kbps = num(v, "bitrate_kbps");
        assert!(kbps > 100.0 && kbps < 20_000.0, "{v:#}");
        assert_eq!(v["before_init"], 0);
    }
    assert_eq!(r["server"]["from"], "/proc");
    assert!(num(&r, "server.cpu_percent") > 0.0);
    assert!(num(&r, "server.rss_kib_max") > 10_000.0);
    assert!(num(&r, "server.threads_max") >= 2.0);
    // The reference: the same graph through the ffmpeg CLI, 200 ms fragments.
    let f = &r["ffmpeg"];
    assert_eq!(f["error"], Value::Null, "{f:#}");
    assert!(f["command"].as_str().unwrap().contains("-frag_duration 200000"));
    assert!(num(f, "first_fragment_ms") > num(f, "init_ms") * 0.5);
    assert!(num(f, "fragments") >= 15.0, "{f:#}");
    // Its oldest frame is at least one fragment (200 ms) minus a frame old when the fragment is written.
    let old = num(f, "latency.p50");
    assert!(old > 150.0 && old < 2000.0, "ffmpeg oldest-frame latency {old} ms");
    assert!(num(f, "cpu_percent") > 0.0);
    assert!(table.contains("compared with the ffmpeg CLI"), "{table}");
    let svg = std::fs::read_to_string(&plot).expect("the plot");
    assert!(svg.starts_with("<svg") && svg.contains("<circle") && svg.contains("ffmpeg CLI"));
}

#[test]
fn running_server_in_copy_mode_from_rtsp() {
    let rtsp = RtspServer::start(&[]);
    let broker = Broker::start();
    let prefix = format!("rtsp://127.0.0.1:{}/", rtsp.port());
    // With the frames ending at libavformat's parser, as the marker relay's would leave the sender's clock a
    // mere 2-4 ms before receipt, too close to the arrival dating this test tells it from.
    let server = Server::start(&server_config(
        broker.port,
        &[&prefix],
        "[pipeline]\nmode = \"copy\"\n\n[pipeline.source]\nrtsp_frame_end = \"parser\"\n",
    ));
    let url = format!("{prefix}live");
    let broker_arg = format!("127.0.0.1:{}", broker.port);
    let (r, table) =
        json_report("bench-rtsp", &["--broker", &broker_arg, "--url", &url, "--viewers", "2", "--seconds", "6"]);
    println!("{table}");
    assert_eq!(r["errors"], Value::Array(vec![]), "{r:#}");
    assert_eq!(r["first_play"]["cold"], true, "the server's stats said the stream was not running");
    assert_eq!(r["stream"]["video"], "copy");
    // A live source: once the first RTCP sender report is in (GStreamer sends it 1-4 s after the start; until
    // then fragments are dated on arrival, ~1 ms before receipt), the server stamps each fragment with the
    // sender's clock, a frame interval and more before receipt. The bench leaves out each viewer's first 2 s.
    let (p50, p95) = (num(&r, "latency.p50"), num(&r, "latency.p95"));
    assert!(p95 > 5.0 && p50 < 500.0, "latency p50 {p50} ms, p95 {p95} ms");
    assert_eq!(num(&r, "gaps"), 0.0);
    // No pid given: the figures come from the retained stats topic.
    assert_eq!(r["server"]["from"], "stats topic");
    assert!(num(&r, "server.rss_kib_max") > 10_000.0);
    drop(server);
}

#[test]
fn a_broker_without_a_server_is_a_clear_error_not_a_hang() {
    let broker = Broker::start();
    let arg = format!("127.0.0.1:{}", broker.port);
    let (out, took) = bench(&["--broker", &arg, "--seconds", "2", "--timeout", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no mqtt-video server on the broker"), "{stderr}");
    assert!(stderr.contains("video/sources"), "{stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn no_broker_at_all_is_a_clear_error() {
    let arg = format!("127.0.0.1:{}", free_port());
    let (out, took) = bench(&["--broker", &arg, "--timeout", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot reach the broker"), "{stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let (out, _) = bench(&["--viewers", "0", "--spawn"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--viewers must be at least 1"));
}
