//! Brokers as users run them: one with a packet limit (mosquitto's `max_packet_size`, at AWS IoT Core's
//! 128 KB) and a 1080p stream whose keyframe fragments are several times that; none at all, the server's
//! embedded broker serving a first start; and the matrix: the same viewers through each implementation.

use crate::support;

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use support::broker::{free_port, Broker};
use support::page::{server_config, sources_list, Page, Server};
use support::rabbitmq::RabbitNode;

/// AWS IoT Core's packet limit.
const LIMIT: usize = 128 * 1024;

/// 8 s of 1080p30 noise, a keyframe a second: keyframe fragments of several hundred KB, as a busy 1080p
/// camera sends.
fn big_keyframes() -> PathBuf {
    support::fixture(
        "noise_1080p.mp4",
        &["color=c=gray:s=1920x1080:r=30:d=8,noise=alls=30:allf=t+u"],
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-keyint_min",
            "30",
            "-sc_threshold",
            "0",
            "-x264-params",
            "ipratio=3",
            "-b:v",
            "6M",
            "-maxrate",
            "12M",
            "-bufsize",
            "12M",
            "-pix_fmt",
            "yuv420p",
        ],
    )
}

fn config(broker: &Broker, max_packet_bytes: usize) -> String {
    let folder = format!("file://{}/", support::work_dir().display());
    server_config(broker.port, &[&folder], "[pipeline]\nmode = \"copy\"\n\n[pipeline.source]\nlooping = true\n")
        .replace(
            "reconnect_max_ms = 500\n",
            &format!("reconnect_max_ms = 500\nmax_packet_bytes = {max_packet_bytes}\n"),
        )
}

fn bench(port: u16, url: &str, protocol: &str, name: &str) -> Value {
    bench_with(port, url, protocol, name, 10)
}

/// `mqtt-video bench` with `viewers` viewers for 6 s.
fn bench_with(port: u16, url: &str, protocol: &str, name: &str, viewers: u32) -> Value {
    let path = support::work_dir().join(format!("{name}.json"));
    let out = Command::new(env!("CARGO_BIN_EXE_mqtt-video"))
        .args(["bench", "--broker", &format!("127.0.0.1:{port}"), "--url", url])
        .args(["--viewers", &viewers.to_string(), "--seconds", "6", "--protocol", protocol])
        .args(["--json", path.to_str().expect("utf-8")])
        .env("MQTT_VIDEO_LOG", "warn")
        .output()
        .expect("running mqtt-video bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "bench failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("the JSON report")).expect("valid JSON")
}

fn num(v: &Value, path: &str) -> f64 {
    path.split('.').fold(v, |cur, key| &cur[key]).as_f64().unwrap_or_else(|| panic!("{path} in {v:#}"))
}

/// The largest message of a fragment file: the clip's biggest keyframe, as the muxer writes it.
fn largest_keyframe(clip: &PathBuf) -> u64 {
    let out = support::run(
        Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v", "-show_entries", "packet=size,flags", "-of", "csv=p=0"])
            .arg(clip),
    );
    out.lines().filter(|l| l.contains('K')).filter_map(|l| l.split(',').next()?.parse().ok()).max().unwrap_or(0)
}

#[test]
fn under_a_128_kb_packet_limit_large_keyframes_go_in_pieces_with_no_disconnect_and_no_gap() {
    let clip = big_keyframes();
    let key = largest_keyframe(&clip);
    assert!(key > 3 * LIMIT as u64, "the clip's largest keyframe is {key} bytes, not several times the limit");
    let url = format!("file://{}", clip.display());
    let broker = Broker::start_with(&format!("max_packet_size {LIMIT}"));

    // Without the setting, over MQTT 3.1.1 (whose CONNACK cannot say the limit), the broker drops the server
    // at the first keyframe, and the log says why.
    let server = Server::start(
        &config(&broker, 0).replace("max_packet_bytes = 0\n", "max_packet_bytes = 0\nprotocol = \"3.1.1\"\n"),
    );
    let viewer = Page::connect(broker.port, "brokers-probe", None);
    viewer.play(&url, "brokers/probe");
    server.wait_for_log("broker connection lost", Duration::from_secs(20));
    server.wait_for_log("a broker whose packet limit is smaller drops the client", Duration::from_secs(5));
    server.wait_for_log("max_packet_size", Duration::from_secs(1));
    viewer.close();
    drop(server);

    // With it, both protocols get every fragment, the keyframes in pieces.
    let server = Server::start(&config(&broker, LIMIT));
    for protocol in ["1", "2"] {
        let r = bench_with(broker.port, &url, protocol, &format!("brokers-limit-v{protocol}"), 3);
        assert_eq!(r["errors"], Value::Array(vec![]), "{r:#}");
        assert_eq!(num(&r, "gaps"), 0.0, "protocol {protocol}");
        assert!(num(&r, "fragments") >= 3.0 * 4.0 * 30.0, "protocol {protocol}: {}", r["fragments"]);
        let p95 = num(&r, "latency.p95");
        println!("protocol {protocol}: source to receipt p50 {} ms, p95 {p95} ms", num(&r, "latency.p50"));
        assert!(p95 < 500.0, "protocol {protocol}: p95 {p95} ms");
    }
    assert!(!server.log_text().contains("broker connection lost"), "{}", server.log_text());
    drop(server);

    // The same stream through a broker without a limit, for the figures (printed, not asserted: a timing).
    let open = Broker::start();
    let _server = Server::start(&config(&open, 0));
    let r = bench_with(open.port, &url, "2", "brokers-open-v2", 3);
    assert_eq!(num(&r, "gaps"), 0.0);
    println!(
        "no limit, protocol 2: source to receipt p50 {} ms, p95 {} ms (largest keyframe {key} bytes)",
        num(&r, "latency.p50"),
        num(&r, "latency.p95")
    );
}

#[test]
fn with_no_broker_installed_the_embedded_one_serves_viewers_pages_and_other_clients() {
    let port = free_port();
    let embedded =
        format!("[broker]\nembedded = true\nembedded_listen = \"127.0.0.1:{port}\"\nclient_id = \"embedded-test\"\n");
    let config = format!("{embedded}\n[gateway]\nlisten = \"127.0.0.1:0\"\n\n[stats]\ninterval_secs = 1\n");
    let server = Server::start(&config);
    // Any MQTT client gets the retained list of sources, as from mosquitto.
    let sources = sources_list(port, Duration::from_secs(5)).expect("the retained sources list");
    assert!(sources.to_string().contains("builtin://testsrc"), "{sources}");
    // Viewers of both protocols, ten at a time, every fragment.
    for protocol in ["1", "2"] {
        let r = bench(port, "builtin://testsrc", protocol, &format!("embedded-v{protocol}"));
        assert_eq!(r["errors"], Value::Array(vec![]), "{r:#}");
        assert_eq!(num(&r, "gaps"), 0.0, "protocol {protocol}");
        println!(
            "embedded broker, protocol {protocol}: source to receipt p50 {} ms, p95 {} ms",
            num(&r, "latency.p50"),
            num(&r, "latency.p95")
        );
    }
    // A browser's MQTT over WebSocket, bridged by the gateway to the embedded broker.
    let ws = Page::connect_ws(&format!("ws://{}/mqtt", server.gateway_addr()), port, "embedded-ws");
    ws.subscribe("video/sources");
    assert!(ws.next_on("video/sources", Duration::from_secs(5)).is_some(), "the list through the gateway");
    ws.close();
    // A second server on the same port is a clear start-up error, not a retry loop.
    let out = Command::new(env!("CARGO_BIN_EXE_mqtt-video"))
        .args(["serve", "--config"])
        .arg({
            let path = support::work_dir().join("embedded-second.toml");
            std::fs::write(&path, &config).expect("config");
            path
        })
        .env("MQTT_VIDEO_LOG", "warn")
        .output()
        .expect("running a second server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("broker.embedded_listen 127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.contains("is another broker running there"), "{stderr}");
    drop(server);
}

/// aedes (Node.js, from tests/e2e's npm lock file) on a free port, stopped on drop.
struct Aedes {
    child: std::process::Child,
    port: u16,
}

impl Aedes {
    fn start() -> Self {
        let e2e = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
        assert!(e2e.join("node_modules/aedes").exists(), "aedes is not installed: run `npm ci` in tests/e2e");
        let port = free_port();
        let mut child = Command::new("node")
            .arg(e2e.join("aedes-broker.js"))
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting node (is Node.js installed?)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(child.try_wait().expect("aedes").is_none(), "aedes exited");
            assert!(std::time::Instant::now() < deadline, "aedes did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }
}

impl Drop for Aedes {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_broker_matrix_carries_describe_both_protocols_and_late_joiners_to_ten_viewers() {
    let url = "builtin://testsrc";
    let mut rows = Vec::new();
    let mut run = |name: &str, port: u16| {
        for protocol in ["1", "2"] {
            // The bench describes, plays one viewer cold and nine more once the stream runs (late joiners).
            let r = bench(port, url, protocol, &format!("matrix-{}-v{protocol}", name.replace(' ', "-")));
            assert_eq!(r["errors"], Value::Array(vec![]), "{name}, protocol {protocol}: {r:#}");
            assert_eq!(num(&r, "gaps"), 0.0, "{name}, protocol {protocol}");
            assert_eq!(num(&r, "warm.describe.count"), 10.0, "{name}, protocol {protocol}: {:#}", r["warm"]);
            assert!(num(&r, "warm.first_fragment.p95") < 2000.0, "{name}, protocol {protocol}: {:#}", r["warm"]);
            rows.push(format!(
                "| {name} | {protocol} | pass | {:.1} / {:.1} ms | {:.1} ms |",
                num(&r, "latency.p50"),
                num(&r, "latency.p95"),
                num(&r, "warm.first_fragment.p50")
            ));
        }
    };
    {
        let broker = Broker::start();
        let _server = Server::start(&server_config(broker.port, &["builtin://"], ""));
        run("mosquitto", broker.port);
    }
    {
        let broker = Broker::start_with(&format!("max_packet_size {LIMIT}"));
        let config = server_config(broker.port, &["builtin://"], "")
            .replace("reconnect_max_ms = 500\n", &format!("reconnect_max_ms = 500\nmax_packet_bytes = {LIMIT}\n"));
        let _server = Server::start(&config);
        run("mosquitto, 128 KB packets", broker.port);
    }
    {
        let broker = Aedes::start();
        let _server = Server::start(&server_config(broker.port, &["builtin://"], ""));
        run("aedes", broker.port);
    }
    {
        let port = free_port();
        let _server = Server::start(&format!(
            "[broker]\nembedded = true\nembedded_listen = \"127.0.0.1:{port}\"\nclient_id = \"matrix\"\n\n[gateway]\nlisten = \"127.0.0.1:0\"\n\n[stats]\ninterval_secs = 1\n"
        ));
        run("embedded (rumqttd)", port);
    }
    println!("| broker | protocol | describe, play, late join | source to receipt p50 / p95 | late joiner's first fragment p50 |");
    println!("|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}

#[test]
fn rabbitmq_one_node_carries_everything_and_a_cluster_carries_live_media_but_not_retained_messages() {
    let url = "builtin://testsrc";
    let one = RabbitNode::start("mvone");
    let server = Server::start(&server_config(one.mqtt_port, &["builtin://"], ""));
    // RabbitMQ 3.10 speaks MQTT 3.1.1 only: the server finds that out at its first connection.
    server.wait_for_log("MQTT 3.1.1 from now on", Duration::from_secs(1));
    for protocol in ["1", "2"] {
        let r = bench(one.mqtt_port, url, protocol, &format!("rabbitmq-v{protocol}"));
        assert_eq!(r["errors"], Value::Array(vec![]), "protocol {protocol}: {r:#}");
        assert_eq!(num(&r, "gaps"), 0.0, "protocol {protocol}");
        println!(
            "| RabbitMQ 3.10, one node | {protocol} | pass | {:.1} / {:.1} ms | {:.1} ms |",
            num(&r, "latency.p50"),
            num(&r, "latency.p95"),
            num(&r, "warm.first_fragment.p50")
        );
    }

    // A second node joins; a page on it, the server on the first.
    let mut two = RabbitNode::start("mvtwo");
    two.join(&one);
    let page = Page::connect(two.mqtt_port, "page-on-node-two", None);
    let reply = page.describe(url, "pages/two/info");
    assert_eq!(reply["url"], url, "a describe across nodes: {reply}");
    page.play(url, "pages/two/v1");
    let v1 = page.collect("pages/two/v1", Duration::from_secs(3));
    assert!(v1.media.len() > 30, "version 1 media across nodes: {} messages", v1.media.len());
    let media = reply["stream"]["media"].as_str().expect("the stream topic").to_string();
    page.subscribe(&media);
    page.publish("video/play", &serde_json::json!({"url": url, "reply_topic": "pages/two/v2", "version": 2}));
    let live = page.collect(&media, Duration::from_secs(3));
    assert!(live.media.len() > 30, "the stream topic across nodes: {} messages", live.media.len());
    // RabbitMQ 3.x keeps retained messages on the node they were published to: a client of the other node
    // gets none (the sources list, the retained init and state, guarded entries). Pages that come through
    // the server's gateway connect to the server's node; docs/CONFIG.md says so.
    assert!(sources_list(one.mqtt_port, Duration::from_secs(3)).is_some(), "the list on the server's node");
    assert_eq!(sources_list(two.mqtt_port, Duration::from_secs(3)), None, "RabbitMQ now shares retained messages");
    page.close();
    drop(server);
    drop(two);
}

#[test]
fn with_mqtt_5_the_server_learns_the_packet_limit_from_the_connack_and_live_media_expires() {
    let clip = big_keyframes();
    let url = format!("file://{}", clip.display());
    let broker = Broker::start_with(&format!("max_packet_size {LIMIT}"));
    // No broker.max_packet_bytes: the broker's CONNACK says it.
    let server = Server::start(&config(&broker, 0));
    server.wait_for_log("mqtt=\"5\"", Duration::from_secs(5));
    server.wait_for_log(&format!("max_packet_bytes={LIMIT}"), Duration::from_secs(1));
    let r = bench_with(broker.port, &url, "2", "mqtt5-limit", 3);
    assert_eq!(r["errors"], Value::Array(vec![]), "{r:#}");
    assert_eq!(num(&r, "gaps"), 0.0);
    assert!(!server.log_text().contains("broker connection lost"), "{}", server.log_text());

    // An MQTT 5 subscriber sees the expiry on live media, and none on the retained list.
    let mut options = rumqttc::v5::MqttOptions::new("mqtt5-watcher", "127.0.0.1", broker.port);
    options.set_max_packet_size(Some(64 * 1024 * 1024));
    let (client, mut eventloop) = rumqttc::v5::Client::new(options, 64);
    let reply = serde_json::json!({"url": url, "reply_topic": "pages/mqtt5/m"}).to_string();
    client.subscribe("pages/mqtt5/m", rumqttc::v5::mqttbytes::QoS::AtMostOnce).expect("subscribe");
    client.subscribe("video/sources", rumqttc::v5::mqttbytes::QoS::AtMostOnce).expect("subscribe");
    client.publish("video/play", rumqttc::v5::mqttbytes::QoS::AtMostOnce, false, reply).expect("play");
    let (mut media_expiry, mut sources_expiry) = (None, None);
    for event in eventloop.iter().take(2000) {
        if let Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::Publish(p))) = event {
            let expiry = p.properties.as_ref().and_then(|p| p.message_expiry_interval);
            match &p.topic[..] {
                b"video/sources" => sources_expiry = Some(expiry),
                _ => media_expiry = Some(expiry),
            }
            if media_expiry.is_some() && sources_expiry.is_some() {
                break;
            }
        }
    }
    let media = media_expiry.expect("media to an MQTT 5 subscriber");
    assert!(media.is_some_and(|s| (1..=5).contains(&s)), "live media expires within 5 s: {media:?}");
    assert_eq!(sources_expiry, Some(None), "the retained list never expires");
}
