//! The page built into the binary: a copy of the binary run from an empty folder serves the checkout's page
//! files byte for byte, with the locked MQTT.js bundle, revalidation by ETag, and 404 for anything else; a
//! `gateway.client_dir` that does not exist stops the server at start, saying so.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::broker::{free_port, Broker};
use support::page::rand_suffix;

fn get(addr: &str, path: &str, extra_headers: &str) -> (String, Vec<u8>) {
    let mut socket = TcpStream::connect(addr).expect("connect to the gateway");
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(socket, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra_headers}\r\n").unwrap();
    let mut response = Vec::new();
    socket.read_to_end(&mut response).expect("read the response");
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("headers end") + 4;
    let body = response.split_off(split);
    (String::from_utf8_lossy(&response).to_ascii_lowercase(), body)
}

fn wait_port(addr: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_copy_of_the_binary_in_an_empty_folder_serves_the_page() {
    let broker = Broker::start();
    let dir = support::work_dir().join(format!("alone-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("mqtt-video");
    std::fs::copy(env!("CARGO_BIN_EXE_mqtt-video"), &bin).expect("copy the binary");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let config = format!("[broker]\nport = {}\n\n[gateway]\nlisten = \"{addr}\"\n", broker.port);
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let mut child = Command::new(&bin)
        .args(["serve", "--config", "config.toml"])
        .current_dir(&dir)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the copy");
    wait_port(&addr);

    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("client");
    for (path, file) in
        [("/", "index.html"), ("/app.js", "app.js"), ("/player.js", "player.js"), ("/style.css", "style.css")]
    {
        let (head, body) = get(&addr, path, "");
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert_eq!(body, std::fs::read(client.join(file)).unwrap(), "{path} is client/{file} as built");
    }
    let (head, body) = get(&addr, "/node_modules/mqtt/dist/mqtt.esm.js", "");
    assert!(head.starts_with("http/1.1 200") && head.contains("content-type: text/javascript"), "{head}");
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(client.join("package-lock.json")).unwrap()).unwrap();
    let version = lock["packages"]["node_modules/mqtt"]["version"].as_str().unwrap();
    assert!(body.len() > 100_000 && String::from_utf8_lossy(&body).contains(version), "MQTT.js {version} is built in");

    let (head, _) = get(&addr, "/", "");
    let etag = head.lines().find_map(|l| l.strip_prefix("etag: ")).expect("an etag").to_string();
    let (again, body) = get(&addr, "/", &format!("If-None-Match: {etag}\r\n"));
    assert!(again.starts_with("http/1.1 304") && body.is_empty(), "{again}");
    let (missing, _) = get(&addr, "/nope.js", "");
    assert!(missing.starts_with("http/1.1 404"), "{missing}");
    let (outside, _) = get(&addr, "/../Cargo.toml", "");
    assert!(outside.starts_with("http/1.1 404"), "{outside}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_missing_client_dir_stops_the_server_at_start() {
    let conf = support::work_dir().join(format!("nodir-{}.toml", rand_suffix()));
    let config = "[broker]\nport = 1\n\n[gateway]\nlisten = \"127.0.0.1:0\"\nclient_dir = \"/nonexistent/page\"\n";
    std::fs::write(&conf, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mqtt-video")).args(["serve", "--config"]).arg(&conf).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: gateway.client_dir /nonexistent/page: No such file or directory"), "{stderr}");
    assert!(stderr.contains("leave gateway.client_dir unset"), "{stderr}");
}
