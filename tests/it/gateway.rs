//! The gateway of `mqtt-video serve`: the page over HTTP, and MQTT over WebSocket bridged byte for byte to a
//! real mosquitto, used the way a browser uses it.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::broker::{free_port, Broker};
use support::closed_by_server;
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

/// A browser's view of the gateway's HTTPS: any certificate is accepted (as a person accepting a self-signed
/// one does), and the chain it was shown is kept.
mod https {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[derive(Debug, Default)]
    struct Accepting(Mutex<Vec<Vec<u8>>>);

    impl ServerCertVerifier for Accepting {
        fn verify_server_cert(
            &self,
            leaf: &CertificateDer<'_>,
            rest: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            *self.0.lock().unwrap() = std::iter::once(leaf).chain(rest).map(|c| c.to_vec()).collect();
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
        }
    }

    /// An open HTTPS connection and the chain the gateway showed.
    pub struct Conn {
        pub stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
        pub chain: Vec<Vec<u8>>,
    }

    impl Conn {
        /// Connects to `addr`, giving `name` as SNI.
        pub fn open(addr: &str, name: &str) -> Conn {
            let verifier = Arc::new(Accepting::default());
            let config =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .dangerous()
                    .with_custom_certificate_verifier(verifier.clone())
                    .with_no_client_auth();
            let server_name = ServerName::try_from(name.to_string()).unwrap();
            let client = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
            let tcp = TcpStream::connect(addr).expect("connect to the gateway");
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut stream = rustls::StreamOwned::new(client, tcp);
            while stream.conn.is_handshaking() {
                stream.conn.complete_io(&mut stream.sock).expect("TLS handshake");
            }
            let chain = verifier.0.lock().unwrap().clone();
            Conn { stream, chain }
        }

        /// The SHA-256 of the leaf, as the server logs it.
        pub fn fingerprint(&self) -> String {
            mqtt_video::server::gateway::tls::fingerprint(&self.chain[0])
        }

        /// Sends `request` and reads until the head (and a `Content-Length` body) is in.
        pub fn exchange(&mut self, request: &str) -> String {
            self.stream.write_all(request.as_bytes()).unwrap();
            let mut response = Vec::new();
            let mut byte = [0u8; 1];
            while !response.ends_with(b"\r\n\r\n") {
                match self.stream.read(&mut byte) {
                    Ok(1) => response.push(byte[0]),
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&response).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                .unwrap_or(0);
            let mut body = vec![0u8; length];
            self.stream.read_exact(&mut body).unwrap();
            response.extend_from_slice(&body);
            String::from_utf8_lossy(&response).into_owned()
        }

        /// GET `path` with `Host: host` on this connection (kept alive).
        pub fn get(&mut self, host: &str, path: &str) -> String {
            self.exchange(&format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"))
        }
    }
}

/// The gateway with `[gateway.tls]` lines, its made certificate kept in `state`.
fn with_tls(broker: &Broker, gateway: &str, tls: &str) -> (Server, String) {
    let config = server_config(broker.port, &[], &format!("[gateway.tls]\n{tls}\n"))
        .replace("[gateway]\n", &format!("[gateway]\n{gateway}\n"));
    let server = Server::start(&config);
    let addr = server.gateway_addr();
    (server, addr)
}

/// A CONNECT then a PINGREQ over an upgraded WebSocket, as a page's MQTT.js sends them; true when the broker
/// answers both through the gateway.
fn mqtt_answers<S: Read + Write>(socket: &mut S, id: &str) -> bool {
    let mut connect = vec![0x10, (12 + id.len()) as u8, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, id.len() as u8];
    connect.extend_from_slice(id.as_bytes());
    let answers = |socket: &mut S, frame: &[u8], expected: u8| {
        socket.write_all(&ws_frame(frame)).is_ok() && {
            // An unmasked binary frame from the server: 0x82, a length, then the MQTT packet. The gateway's
            // pings (0x89, 8 bytes) may come first; a client of a WebSocket reads past them.
            let mut head = [0u8; 2];
            while socket.read_exact(&mut head).is_ok() && head[0] == 0x89 {
                let mut ping = vec![0u8; usize::from(head[1])];
                if socket.read_exact(&mut ping).is_err() {
                    return false;
                }
            }
            let mut first = [0u8; 1];
            head[0] == 0x82 && socket.read_exact(&mut first).is_ok() && first[0] == expected
        }
    };
    answers(socket, &connect, 0x20) && {
        let mut rest = [0u8; 3];
        socket.read_exact(&mut rest).is_ok() && answers(socket, &[0xc0, 0], 0xd0)
    }
}

#[test]
fn https_and_http_share_one_port_and_the_made_certificate_outlives_a_restart() {
    let broker = Broker::start();
    let state = support::work_dir().join(format!("tls-state-{}", rand_suffix()));
    let tls = format!("state_dir = {:?}\nnames = [\"nas.test\"]", state.display().to_string());
    let (server, addr) = with_tls(&broker, "", &tls);
    let log = std::fs::read_to_string(&server.log).unwrap();
    let mut conn = https::Conn::open(&addr, "nas.test");
    let fingerprint = conn.fingerprint();
    assert!(log.contains(&format!("fingerprint={fingerprint}")), "the log names the served certificate:\n{log}");
    // The page and what it asks about HTTPS, over TLS; the port is the one the browser used.
    let page = conn.get("nas.test:8443", "/");
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("<html"), "{page}");
    let info = conn.get("nas.test:8443", "/tls.json");
    let body: serde_json::Value = serde_json::from_str(info.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body, serde_json::json!({"https": true, "port": 8443, "fingerprint": fingerprint}));
    // WSS on the same origin carries MQTT to the broker.
    let mut wss = https::Conn::open(&addr, "nas.test");
    let upgrade = "GET /mqtt HTTP/1.1\r\nHost: nas.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";
    assert!(wss.exchange(upgrade).starts_with("HTTP/1.1 101"));
    assert!(mqtt_answers(&mut wss.stream, "wss-page"), "MQTT over WSS");
    // Plain HTTP on the same port still serves loopback; through a trusted proxy (loopback here) the proxy's
    // HTTPS is not the gateway's to tell.
    assert!(http(&addr, &format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n")).starts_with("HTTP/1.1 200"));
    // The page's link probe: the bytes asked for, never cached, and a clear refusal past its limit.
    let probe = https::Conn::open(&addr, "nas.test").get("nas.test:8443", "/probe?bytes=65536&t=1");
    let head = probe.split_once("\r\n\r\n").map_or("", |(head, _)| head);
    assert!(
        head.starts_with("HTTP/1.1 200") && head.to_ascii_lowercase().contains("cache-control: no-store"),
        "{head}"
    );
    assert_eq!(probe.split_once("\r\n\r\n").map(|(_, body)| body.len()), Some(65536));
    let too_big =
        http(&addr, &format!("GET /probe?bytes=600000 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"));
    assert!(
        too_big.starts_with("HTTP/1.1 400") && too_big.ends_with("bytes must be a number from 1 to 524288"),
        "{too_big}"
    );
    let proxied = http(&addr, "GET /tls.json HTTP/1.1\r\nHost: home.example\r\nConnection: close\r\n\r\n");
    assert!(proxied.ends_with("{\"https\":false}"), "{proxied}");
    // Restarted, it serves the same certificate: a browser's exception still holds.
    drop(server);
    let (server, addr) = with_tls(&broker, "", &tls);
    assert_eq!(https::Conn::open(&addr, "nas.test").fingerprint(), fingerprint, "a new certificate after a restart");
    drop(server);
}

#[test]
fn plain_page_requests_from_other_machines_go_to_https_and_the_rest_is_served() {
    let broker = Broker::start();
    // No trusted proxies: this test's own loopback connections count as another machine's.
    let state = support::work_dir().join(format!("tls-state-{}", rand_suffix()));
    let tls = format!("state_dir = {:?}", state.display().to_string());
    let (server, addr) = with_tls(&broker, "trusted_proxies = []", &tls);
    let get = |host: &str, path: &str| {
        http(&addr, &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"))
    };
    let moved = get("nas.test:8080", "/?url=builtin://testsrc&autoplay=1");
    assert!(moved.starts_with("HTTP/1.1 307"), "{moved}");
    assert!(
        moved.to_ascii_lowercase().contains("location: https://nas.test:8080/?url=builtin://testsrc&autoplay=1\r\n"),
        "{moved}"
    );
    // The browser on the machine itself is in a secure context already.
    assert!(get(&addr, "/").starts_with("HTTP/1.1 200"), "loopback is served");
    // What is not the page is never redirected: health checks, scrapers, a plain ws:// page, tls.json.
    assert!(get("nas.test:8080", "/healthz").starts_with("HTTP/1.1 200"));
    assert!(get("nas.test:8080", "/metrics").starts_with("HTTP/1.1 200"));
    let info = get("nas.test:8080", "/tls.json");
    assert!(info.starts_with("HTTP/1.1 200") && info.contains("\"port\":8080"), "{info}");
    drop(server);
    // http = "serve": the page is served over plain HTTP too.
    let (server, addr) = with_tls(&broker, "trusted_proxies = []", &format!("{tls}\nhttp = \"serve\""));
    let page = http(&addr, "GET / HTTP/1.1\r\nHost: nas.test:8080\r\nConnection: close\r\n\r\n");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    drop(server);
    // Without TLS nothing is redirected and tls.json says so.
    let (server, addr) = with_tls(&broker, "trusted_proxies = []", "enabled = false");
    let page = http(&addr, "GET / HTTP/1.1\r\nHost: nas.test:8080\r\nConnection: close\r\n\r\n");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let info = http(&addr, "GET /tls.json HTTP/1.1\r\nHost: nas.test:8080\r\nConnection: close\r\n\r\n");
    assert!(info.contains("{\"https\":false}"), "{info}");
    drop(server);
}

/// `openssl` makes a CA and a leaf it signs (`rsa` or `ec`), writes the leaf's chain and key over
/// `cert`/`key` (whole files, as certbot does), and returns the leaf's DER.
fn issue_with_openssl(dir: &std::path::Path, kind: &str, cert: &std::path::Path, key: &std::path::Path) -> Vec<u8> {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let algorithm: &[&str] = if kind == "rsa" {
        &["-newkey", "rsa:2048"]
    } else {
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    };
    run(&[
        &["req", "-x509", "-nodes", "-days", "30", "-subj", "/CN=Test CA", "-keyout", "ca.key", "-out", "ca.pem"],
        algorithm,
    ]
    .concat());
    run(&[&["req", "-nodes", "-subj", "/CN=nas.test", "-keyout", "leaf.key", "-out", "leaf.csr"], algorithm].concat());
    std::fs::write(dir.join("ext"), "subjectAltName=DNS:nas.test\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        "ext",
        "-out",
        "leaf.pem",
    ]);
    run(&["x509", "-in", "leaf.pem", "-outform", "DER", "-out", "leaf.der"]);
    let chain = [std::fs::read(dir.join("leaf.pem")).unwrap(), std::fs::read(dir.join("ca.pem")).unwrap()].concat();
    let tmp_cert = dir.join("cert.new");
    let tmp_key = dir.join("key.new");
    std::fs::write(&tmp_cert, chain).unwrap();
    std::fs::copy(dir.join("leaf.key"), &tmp_key).unwrap();
    std::fs::rename(tmp_key, key).unwrap();
    std::fs::rename(tmp_cert, cert).unwrap();
    std::fs::read(dir.join("leaf.der")).unwrap()
}

#[test]
fn a_configured_chain_is_served_and_a_renewal_drops_nobody() {
    let broker = Broker::start();
    let dir = support::work_dir().join(format!("tls-files-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("fullchain.pem"), dir.join("privkey.pem"));
    let rsa_leaf = issue_with_openssl(&dir, "rsa", &cert, &key);
    let tls = format!("cert_file = {:?}\nkey_file = {:?}", cert.display().to_string(), key.display().to_string());
    let (server, addr) = with_tls(&broker, "", &tls);
    let mut open = https::Conn::open(&addr, "nas.test");
    assert_eq!(open.chain.len(), 2, "the whole chain is sent");
    assert_eq!(open.chain[0], rsa_leaf, "the RSA leaf is served");
    assert!(open.get("nas.test", "/healthz").starts_with("HTTP/1.1 200"));
    // A renewal to an EC key: new connections get it within the 2 s look, the open one goes on.
    let ec_leaf = issue_with_openssl(&dir, "ec", &cert, &key);
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    while https::Conn::open(&addr, "nas.test").chain[0] != ec_leaf {
        assert!(std::time::Instant::now() < deadline, "the renewed certificate was never served");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(open.get("nas.test", "/healthz").starts_with("HTTP/1.1 200"), "the open connection was dropped");
    // A half-written renewal (a key that is not the certificate's) is refused and the served one kept.
    std::fs::copy(dir.join("ca.key"), &key).unwrap();
    server.wait_for_log("do not load", Duration::from_secs(6));
    assert_eq!(https::Conn::open(&addr, "nas.test").chain[0], ec_leaf);
    drop(server);
    // A pair that does not belong together stops the start with a message naming the file.
    let config = server_config(broker.port, &[], &format!("[gateway.tls]\n{tls}\n"));
    let conf = dir.join("bad.toml");
    std::fs::write(&conf, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-video"))
        .args(["serve", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("privkey.pem") && stderr.contains("does not serve"), "{stderr}");
}

#[test]
fn behind_a_trusted_proxy_each_forwarded_client_gets_its_share() {
    let broker = Broker::start();
    let (server, addr) = hardened(&broker, "max_connections_per_address = 2\ntrusted_proxies = [\"127.0.0.1\"]");
    let upgrade_for = |client: &str| {
        let mut socket = TcpStream::connect(&addr).expect("connect");
        let request = format!(
            "GET /mqtt HTTP/1.1\r\nHost: {addr}\r\nX-Forwarded-For: {client}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        socket.write_all(request.as_bytes()).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut head = [0u8; 12];
        socket.read_exact(&mut head).unwrap();
        (String::from_utf8_lossy(&head).into_owned(), socket)
    };
    let (first, _a) = upgrade_for("198.51.100.7");
    let (second, _b) = upgrade_for("6.6.6.6, 198.51.100.7");
    let (third, _c) = upgrade_for("198.51.100.7");
    assert_eq!([first.as_str(), second.as_str()], ["HTTP/1.1 101", "HTTP/1.1 101"]);
    assert_eq!(third, "HTTP/1.1 429", "a third WebSocket of one forwarded client");
    let (other, mut socket) = upgrade_for("198.51.100.8");
    assert_eq!(other, "HTTP/1.1 101", "another client behind the same proxy is not affected");
    let mut rest = Vec::new();
    let mut byte = [0u8; 1];
    while !rest.ends_with(b"\r\n\r\n") && socket.read(&mut byte).unwrap_or(0) == 1 {
        rest.push(byte[0]);
    }
    assert!(mqtt_answers(&mut socket, "behind-proxy"), "the admitted one carries MQTT");
    drop(server);
}

#[test]
fn a_stalled_or_garbled_tls_handshake_is_closed_and_nobody_else_notices() {
    let broker = Broker::start();
    let state = support::work_dir().join(format!("tls-state-{}", rand_suffix()));
    let (server, addr) =
        with_tls(&broker, "request_timeout_secs = 2", &format!("state_dir = {:?}", state.display().to_string()));
    // A record header that promises a ClientHello, then nothing; and one followed by garbage.
    let mut stalled = TcpStream::connect(&addr).unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap();
    let mut garbled = TcpStream::connect(&addr).unwrap();
    garbled.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]).unwrap();
    assert!(closed_by_server(&mut garbled, Duration::from_secs(1)), "a garbled handshake was kept");
    let started = std::time::Instant::now();
    let mut page = https::Conn::open(&addr, "localhost");
    assert!(page.get("localhost", "/healthz").starts_with("HTTP/1.1 200"), "a browser meanwhile is served");
    assert!(closed_by_server(&mut stalled, Duration::from_secs(3)), "a stalled handshake was kept");
    eprintln!("a stalled TLS handshake was closed after {:?}", started.elapsed());
    drop(server);
}
