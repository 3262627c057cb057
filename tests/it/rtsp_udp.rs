//! A camera that serves RTP over UDP only (Debian's rtsp-server-perl): `probe` reads it with the default
//! `--rtsp-transport auto` (TCP is refused, UDP works) and with `udp`, fails with `tcp` saying which transport
//! it tried and what to change, and `serve` plays it with its default settings.

use crate::support;

use serde_json::Value;
use std::process::{Command, Output};
use std::time::Duration;
use support::broker::Broker;
use support::page::{rand_suffix, server_config, Page, Server};
use support::udp_camera::UdpOnlyCamera;

fn probe(url: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mqtt-video"))
        .args(["probe", url, "--seconds", "1", "--json"])
        .args(extra)
        .output()
        .expect("running probe")
}

fn report(out: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "probe failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("probe --json: {e}: {stderr}"))
}

#[test]
fn probe_and_serve_read_a_camera_that_serves_udp_only() {
    let camera = UdpOnlyCamera::start();

    let auto = probe(&camera.url, &[]);
    let json = report(&auto);
    assert_eq!(json["output"]["width"], 320, "{json}");
    assert!(json["fragments"].as_u64().unwrap() >= 20, "{json}");
    let stderr = String::from_utf8_lossy(&auto.stderr);
    assert!(
        stderr.contains("the camera refused the RTSP transport") && stderr.contains("transport=\"tcp\""),
        "{stderr}"
    );

    let udp = probe(&camera.url, &["--rtsp-transport", "udp"]);
    assert_eq!(report(&udp)["output"]["height"], 240);

    let tcp = probe(&camera.url, &["--rtsp-transport", "tcp"]);
    let stderr = String::from_utf8_lossy(&tcp.stderr);
    assert_eq!(tcp.status.code(), Some(1), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("error: source unreachable: over RTSP/TCP: Server returned 400 Bad Request"), "{last}");
    assert!(last.contains("set rtsp_transport = \"udp\" or \"auto\" (probe: --rtsp-transport udp)"), "{last}");

    // serve with its defaults (rtsp_transport = "auto") plays it to a page.
    let broker = Broker::start();
    let prefix = camera.url.trim_end_matches("cam");
    let _server = Server::start(&server_config(broker.port, &[prefix], ""));
    let page = Page::connect(broker.port, &format!("udp-page-{}", rand_suffix()), None);
    let described = page.describe(&camera.url, &format!("udp/{}", rand_suffix()));
    assert_eq!(described["width"], 320, "{described}");
    let topic = format!("udp/{}", rand_suffix());
    page.play(&camera.url, &topic);
    let got = page.collect(&topic, Duration::from_secs(2));
    assert!(got.media.len() > 30, "media over UDP: {} messages", got.media.len());
}
