//! `GET /metrics`: a scrape of a server with real streams (two RTSP URLs with passwords, the built-in pattern)
//! and a pushed source passes `promtool check metrics` (Debian's prometheus package), carries the figures the
//! streams really have, labels sources by name, and never shows a password.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::broker::{free_port, Broker};
use support::page::{rand_suffix, Page, Server};
use support::RtspServer;

fn scrape(addr: &str) -> String {
    let mut socket = TcpStream::connect(addr).expect("connect to the gateway");
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(socket, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).expect("read /metrics");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// promtool's verdict on an exposition: (exit code, what it printed).
fn promtool(text: &str) -> (Option<i32>, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The value of the sample `series` (name with its labels, as written), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_scrape_passes_promtool_and_carries_the_real_figures() {
    let broker = Broker::start();
    let rtsp = RtspServer::start(&[]);
    let named = rtsp.url.replace("rtsp://", "rtsp://viewer:s3cret-one@");
    let exact = rtsp.url.replace("rtsp://", "rtsp://other:s3cret-two@");
    let ingest_port = free_port();
    let config = format!(
        "[broker]\nport = {}\nclient_id = \"metrics-{}\"\n\n[gateway]\nlisten = \"127.0.0.1:0\"\n\n\
         [allow]\nurls = [{exact:?}]\n\n[[sources]]\nname = \"Front door\"\nurl = {named:?}\n\n\
         [[sources]]\nname = \"Test pattern\"\nurl = \"builtin://testsrc\"\n\
         pipeline = {{ renditions = [{{ name = \"low\", max_height = 120, bitrate_kbps = 150 }}] }}\n\n\
         [[ingest]]\nname = \"desk\"\nlisten = \"tcp://127.0.0.1:{ingest_port}\"\n",
        broker.port,
        rand_suffix()
    );
    let server = Server::start(&config);
    let addr = server.gateway_addr();

    // The promtool check itself can fail: a counter without `_total` is refused.
    let (code, said) = promtool("# HELP bad_seconds x\n# TYPE bad_seconds counter\nbad_seconds 1\n");
    assert_ne!(code, Some(0), "promtool accepts a malformed exposition: {said}");

    let page = Page::connect(broker.port, &format!("metrics-page-{}", rand_suffix()), None);
    let topics: Vec<String> = (0..3).map(|i| format!("pages/m{i}-{}", rand_suffix())).collect();
    for (url, topic) in [named.as_str(), exact.as_str(), "builtin://testsrc"].iter().zip(&topics) {
        page.play(url, topic);
    }
    let publisher = Command::new("ffmpeg")
        .args(["-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-t", "20"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "25", "-pix_fmt", "yuv420p"])
        .args(["-f", "mpegts", &format!("tcp://127.0.0.1:{ingest_port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut publisher = publisher.expect("ffmpeg");
    // Scraped until every source has a second of frames and 10 kB, the two watched ones have published 10 kB,
    // and the ingest and the pattern's bitrate are past what is checked (within 20 s), as Prometheus would find them.
    let sources = ["Front door", "Test pattern", "desk"];
    let at_least = |text: &str, series: &str, source: &str, least: f64| {
        value(text, &format!("mqtt_video_stream_{series}{{source=\"{source}\"}}")).is_some_and(|v| v >= least)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = scrape(&addr);
        let ready = sources.iter().all(|s| {
            at_least(&text, "frames_total", s, 30.0)
                && at_least(&text, "bytes_total", s, 10_001.0)
                && (*s == "desk" || at_least(&text, "published_bytes_total", s, 10_001.0))
        }) && [
            ("mqtt_video_ingest_received_bytes_total{endpoint=\"desk\"}", 10_000.0),
            ("mqtt_video_rendition_bitrate_bytes_per_second{source=\"Test pattern\",rendition=\"main\"}", 6_000.0),
        ]
        .iter()
        .all(|(series, least)| value(&text, series).is_some_and(|v| v > *least));
        if ready || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = publisher.kill();
    let _ = publisher.wait();
    let (code, said) = promtool(&text);
    assert_eq!(code, Some(0), "promtool check metrics: {said}\n{text}");
    assert!(!text.contains("s3cret"), "a password in the metrics:\n{text}");

    let get = |series: &str| value(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
    assert_eq!(get("mqtt_video_broker_connected"), 1.0);
    assert!(get("mqtt_video_streams") >= 3.0, "{text}");
    assert_eq!(get("mqtt_video_viewers"), 3.0);
    assert_eq!(get("mqtt_video_stream_viewers{source=\"Front door\"}"), 1.0, "a named source goes by its name");
    let unnamed = format!("{{source=\"{}\"}}", exact.replace("s3cret-two", "***"));
    assert_eq!(get(&format!("mqtt_video_stream_viewers{unnamed}")), 1.0, "another URL without its password");
    assert_eq!(get("mqtt_video_stream_state{source=\"Test pattern\",state=\"playing\"}"), 1.0);
    assert_eq!(get("mqtt_video_stream_state{source=\"Test pattern\",state=\"failed\"}"), 0.0);
    for source in sources {
        let frames = get(&format!("mqtt_video_stream_frames_total{{source=\"{source}\"}}"));
        assert!(frames >= 30.0, "{source}: {frames} frames within 20 s");
        assert!(get(&format!("mqtt_video_stream_bytes_total{{source=\"{source}\"}}")) > 10_000.0, "{source}");
        assert!(get(&format!("mqtt_video_stream_fragments_total{{source=\"{source}\"}}")) >= frames, "{source}");
        assert_eq!(get(&format!("mqtt_video_stream_shared_viewers{{source=\"{source}\"}}")), 0.0, "{source}");
    }
    // v1 viewers get a copy each; nobody watches desk.
    let published = |source: &str| get(&format!("mqtt_video_stream_published_bytes_total{{source=\"{source}\"}}"));
    assert!(published("Front door") > 10_000.0 && published("Test pattern") > 10_000.0);
    assert_eq!(published("desk"), 0.0);
    assert_eq!(get("mqtt_video_gateway_shed_fragments_total"), 0.0);
    let p50 = get("mqtt_video_stream_latency_p50_seconds{source=\"Front door\"}");
    let p95 = get("mqtt_video_stream_latency_p95_seconds{source=\"Front door\"}");
    assert!(p50 > 0.0 && p50 <= p95 && p95 < 1.0, "latency p50 {p50} s, p95 {p95} s");
    assert_eq!(get("mqtt_video_requests_total{kind=\"play\"}"), 3.0);
    // Per rendition: the stream's own (`main`) has the viewer, `low` nobody, so it is not encoded.
    let rendition = |name: &str, r: &str| get(&format!("{name}{{source=\"Test pattern\",rendition=\"{r}\"}}"));
    assert_eq!(rendition("mqtt_video_rendition_viewers", "main"), 1.0);
    assert_eq!(rendition("mqtt_video_rendition_viewers", "low"), 0.0);
    assert_eq!(rendition("mqtt_video_rendition_encoding", "main"), 1.0);
    assert_eq!(rendition("mqtt_video_rendition_encoding", "low"), 0.0);
    assert_eq!(rendition("mqtt_video_rendition_encode_seconds_total", "low"), 0.0);
    assert!(rendition("mqtt_video_rendition_bitrate_bytes_per_second", "main") > 6_000.0);
    assert_eq!(get("mqtt_video_ingest_publishing{endpoint=\"desk\",protocol=\"tcp\"}"), 1.0);
    assert!(get("mqtt_video_ingest_received_bytes_total{endpoint=\"desk\"}") > 10_000.0);
    assert!(get("process_resident_memory_bytes") > 10e6);
    assert!(get("process_cpu_seconds_total") > 0.0);
    assert!(get("process_threads") >= 4.0);
    let started = get("process_start_time_seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(started < now && started > now - 120.0, "start time {started}, now {now}");
    println!(
        "metrics: {} lines, {} series; latency p50 {:.1} ms",
        text.lines().count(),
        text.lines().filter(|l| !l.starts_with('#')).count(),
        p50 * 1000.0
    );
}
