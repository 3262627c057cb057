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

/// A gateway with short deadlines and `extra` lines in its `[gateway]` table.
fn hardened(broker: &Broker, extra: &str) -> (Server, String) {
    let config = server_config(broker.port, &[], "")
        .replace("[gateway]\n", &format!("[gateway]\nrequest_timeout_secs = 2\nconnect_timeout_secs = 2\n{extra}\n"));
    let server = Server::start(&config);
    let addr = server.gateway_addr();
    (server, addr)
}

/// A WebSocket upgrade on an open socket; true when it was switched.
fn upgrade_on(socket: &mut TcpStream, addr: &str) -> bool {
    let request = format!(
        "GET /mqtt HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    if socket.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let _ = socket.set_read_timeout(Some(Duration::from_secs(5)));
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") {
        match socket.read(&mut byte) {
            Ok(1) => response.push(byte[0]),
            _ => return false,
        }
    }
    response.starts_with(b"HTTP/1.1 101")
}

/// A masked binary WebSocket frame, as a browser sends it.
fn ws_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x82, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Whether the server closes `socket` within `limit`.
fn closed_by_server(socket: &mut TcpStream, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn idle_sockets_and_upgrades_that_never_connect_lock_nobody_out() {
    let broker = Broker::start();
    let (server, addr) = hardened(&broker, "");
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    // 300 sockets that never send a request, and 256 upgrades (the whole connection limit) that never send
    // an MQTT CONNECT.
    let started = std::time::Instant::now();
    let mut idle: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(&addr).expect("connect")).collect();
    let mut upgraded = Vec::new();
    for _ in 0..256 {
        let mut socket = TcpStream::connect(&addr).expect("connect");
        assert!(upgrade_on(&mut socket, &addr), "upgrade {}", upgraded.len());
        upgraded.push(socket);
    }
    let locked = websocket_upgrade(&addr, "/mqtt");
    assert!(locked.starts_with("HTTP/1.1 503"), "the limit is full: {locked}");
    // Within the deadlines every one of them is closed, and a page gets in.
    let all_closed = |sockets: &mut Vec<TcpStream>, limit| sockets.iter_mut().all(|s| closed_by_server(s, limit));
    assert!(all_closed(&mut upgraded, Duration::from_secs(4)), "an upgrade without CONNECT was kept");
    let upgrades_closed = started.elapsed();
    assert!(all_closed(&mut idle, Duration::from_secs(3)), "an idle socket was kept");
    eprintln!("256 silent upgrades closed after {upgrades_closed:?}, 300 idle sockets by {:?}", started.elapsed());
    let page = Page::connect_ws(&format!("ws://{addr}/mqtt"), port, &format!("after-{}", rand_suffix()));
    page.subscribe("video/sources");
    assert!(page.next_on("video/sources", Duration::from_secs(5)).is_some(), "a page after the flood hears nothing");
    drop(server);
}

#[test]
fn one_address_cannot_take_the_connection_limit() {
    let broker = Broker::start();
    let (server, addr) =
        hardened(&broker, "max_connections = 8\nmax_connections_per_address = 3\ntrusted_proxies = []");
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    // Another host opens ten: three are upgraded, the rest closed at once without an answer.
    let mut theirs = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        let mut socket = support::connect_from("127.0.0.2", port);
        if upgrade_on(&mut socket, &addr) {
            theirs.push(socket);
        } else {
            refused += 1;
        }
    }
    assert_eq!((theirs.len(), refused), (3, 7));
    // A browser from this host plays on as if nothing happened.
    let page = Page::connect_ws(&format!("ws://{addr}/mqtt"), port, &format!("mine-{}", rand_suffix()));
    let reply = page.describe("builtin://testsrc", &format!("pages/{}/d", rand_suffix()));
    assert!(reply["mimeCodec"].is_string(), "{reply}");
    drop(server);
}

#[test]
fn a_connected_browser_that_goes_silent_is_closed_after_its_keep_alive() {
    let broker = Broker::start();
    let (server, addr) = hardened(&broker, "");
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    // CONNECT with a keep-alive of 2 s, then nothing: closed after 1.5 x 2 s.
    let mut socket = TcpStream::connect(&addr).expect("connect");
    assert!(upgrade_on(&mut socket, &addr));
    socket.write_all(&ws_frame(b"\x10\x10\x00\x04MQTT\x04\x02\x00\x02\x00\x04mute")).unwrap();
    let started = std::time::Instant::now();
    assert!(closed_by_server(&mut socket, Duration::from_secs(6)), "a silent client was kept");
    let took = started.elapsed();
    eprintln!("a silent client with keep-alive 2 s was closed after {took:?}");
    assert!(took >= Duration::from_millis(2500), "closed too early: {took:?}");
    // Anything but MQTT after the upgrade is closed at once.
    let mut socket = TcpStream::connect(&addr).expect("connect");
    assert!(upgrade_on(&mut socket, &addr));
    socket.write_all(&ws_frame(b"\x82\x05\x00\x01\x00\x00\x01")).unwrap();
    assert!(closed_by_server(&mut socket, Duration::from_secs(1)), "a SUBSCRIBE before CONNECT was kept");
    // A client that pings (keep-alive 5 s) stays as long as it likes.
    let page = Page::connect_ws(&format!("ws://{addr}/mqtt"), port, &format!("alive-{}", rand_suffix()));
    std::thread::sleep(Duration::from_secs(9));
    let reply = page.describe("builtin://testsrc", &format!("pages/{}/d", rand_suffix()));
    assert!(reply["mimeCodec"].is_string(), "{reply}");
    drop(server);
}
