//! The gateway of `mqtt-video serve`: the page over HTTP, and MQTT over WebSocket bridged byte for byte to a
//! real mosquitto, used the way a browser uses it.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::broker::{free_port, Broker};
use support::page::{rand_suffix, server_config, Page, Server};
use support::RtspServer;

/// Sends a raw HTTP/1.1 request and returns the whole response as text.
fn http(addr: &str, request: &str) -> String {
    let mut socket = TcpStream::connect(addr).expect("connect to the gateway");
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    socket.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.read(&mut buf) {
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
        // An upgrade response has no body and the connection stays open.
        if response.windows(4).any(|w| w == b"\r\n\r\n") && !response.starts_with(b"HTTP/1.1 200") {
            break;
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

fn websocket_upgrade(addr: &str, path: &str) -> String {
    http(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        ),
    )
}

#[test]
fn serves_the_page_and_bridges_mqtt_over_websocket() {
    let broker = Broker::start();
    let rtsp = RtspServer::start(&[]);
    let prefix = format!("rtsp://127.0.0.1:{}/", rtsp.port());
    let site = support::work_dir().join(format!("site-{}", rand_suffix()));
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "<!doctype html><title>marker-page</title>").unwrap();
    let config = server_config(broker.port, &[&prefix], "")
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:0\"\nclient_dir = {site:?}"));
    let server = Server::start(&config);
    let addr = server.gateway_addr();

    let page = http(&addr, &format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"));
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("marker-page"), "index.html at /: {page}");
    let missing = http(&addr, &format!("GET /nope.js HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"));
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

    // A browser's MQTT session through the bridge: describe, play, media that decodes.
    let browser =
        Page::connect_ws(&format!("ws://{addr}/mqtt"), addr.rsplit(':').next().unwrap().parse().unwrap(), "ws-page");
    let described = browser.describe(&rtsp.url, &format!("ws/{}", rand_suffix()));
    assert!(described["mimeCodec"].is_string(), "{described}");
    let topic = format!("ws/{}", rand_suffix());
    browser.play(&rtsp.url, &topic);
    let got = browser.collect(&topic, Duration::from_secs(3));
    assert!(got.media.len() > 45, "media through the gateway: {}", got.media.len());
    let bytes: Vec<u8> = got.media.iter().flat_map(|m| m.payload.to_vec()).collect();
    support::assert_bytes_decode(&bytes, "gateway.mp4");
}

#[test]
fn bounds_connections_and_fails_start_on_a_taken_port() {
    let broker = Broker::start();
    let port = free_port();
    let config = format!(
        "[broker]\nport = {}\nclient_id = \"gw-{}\"\n\n[gateway]\nlisten = \"127.0.0.1:{port}\"\nmax_connections = 1\nclient_dir = {:?}\n",
        broker.port,
        rand_suffix(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/client")
    );
    let server = Server::start(&config);
    let addr = format!("127.0.0.1:{port}");
    let first = Page::connect_ws(&format!("ws://{addr}/mqtt"), port, "first");
    let refused = websocket_upgrade(&addr, "/mqtt");
    assert!(refused.starts_with("HTTP/1.1 503"), "the second connection is refused: {refused}");
    // DISCONNECT: the broker closes its side, and the bridge closes the browser's and frees the slot.
    first.close();
    std::thread::sleep(Duration::from_millis(500));
    let accepted = websocket_upgrade(&addr, "/mqtt");
    assert!(accepted.starts_with("HTTP/1.1 101"), "a freed slot is reused: {accepted}");
    assert!(accepted.to_ascii_lowercase().contains("sec-websocket-protocol: mqtt"), "{accepted}");

    // A second server on the same gateway port must fail at once, saying why.
    let conf = support::work_dir().join(format!("taken-{}.toml", rand_suffix()));
    std::fs::write(&conf, config.replace("client_id = \"gw-", "client_id = \"gw2-")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-video"))
        .args(["serve", "--config"])
        .arg(&conf)
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    drop(server);
}
