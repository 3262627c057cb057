//! The broker over TLS: mosquitto with certificates made at test time (openssl), and `serve` connecting with
//! `broker.tls` and `broker.ca_file`. The build compiles one crypto provider (rustls with ring); this proves it
//! is installed and verifies a real chain, and that a broker signed by another CA is refused.

use crate::support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::broker::{free_port, Broker};
use support::page::{rand_suffix, Page, Server};

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`: (ca.pem, server.pem, server.key).
fn certificates(dir: &Path, name: &str) -> (String, String, String) {
    let path = |file: &str| dir.join(format!("{name}-{file}")).display().to_string();
    let (ca_key, ca, key, csr, cert, ext) =
        (path("ca.key"), path("ca.pem"), path("server.key"), path("server.csr"), path("server.pem"), path("san.ext"));
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\n").expect("writing the SAN extension");
    let openssl = |args: &str| support::run(Command::new("openssl").args(args.split_whitespace()));
    openssl(&format!("req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout {ca_key} -out {ca}"));
    openssl(&format!("req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout {key} -out {csr}"));
    openssl(&format!(
        "x509 -req -in {csr} -CA {ca} -CAkey {ca_key} -CAcreateserial -days 2 -extfile {ext} -out {cert}"
    ));
    // mosquitto started as root reads its files as the mosquitto user.
    for file in [&ca, &cert, &key] {
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    }
    (ca, cert, key)
}

/// mosquitto with a plain listener (for the test's page) and a TLS one; returns it and the TLS port.
fn tls_broker(cert: &str, key: &str) -> (Broker, u16) {
    let tls_port = free_port();
    let broker = Broker::start_with(&format!("listener {tls_port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n"));
    (broker, tls_port)
}

fn tls_config(tls_port: u16, ca: &str) -> String {
    format!(
        "[broker]\nport = {tls_port}\ntls = true\nca_file = {ca:?}\nclient_id = \"mqtt-video-tls-{}\"\n\
         reconnect_min_ms = 100\nreconnect_max_ms = 500\n\n[gateway]\nenabled = false\n",
        rand_suffix()
    )
}

#[test]
fn serve_connects_over_tls_and_answers_through_it() {
    let dir = support::work_dir();
    let (ca, cert, key) = certificates(dir, "good");
    let (broker, tls_port) = tls_broker(&cert, &key);
    let server = Server::start(&tls_config(tls_port, &ca));
    let page = Page::connect(broker.port, &format!("page-{}", rand_suffix()), None);
    let reply = page.describe("builtin://testsrc", &format!("pages/{}/describe", page.id));
    assert!(reply["mimeCodec"].as_str().is_some_and(|m| m.starts_with("video/mp4")), "{reply}");
    drop(server);
}

#[test]
fn a_broker_signed_by_another_ca_is_refused() {
    let dir = support::work_dir();
    let (_, cert, key) = certificates(dir, "rogue");
    let (trusted_ca, _, _) = certificates(dir, "trusted");
    let (broker, tls_port) = tls_broker(&cert, &key);
    let conf = dir.join(format!("tls-{}.toml", rand_suffix()));
    std::fs::write(&conf, tls_config(tls_port, &trusted_ca)).expect("config");
    let log = dir.join(format!("tls-{}.log", rand_suffix()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqtt-video"))
        .args(["serve", "--config"])
        .arg(&conf)
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("serve");
    std::thread::sleep(Duration::from_secs(2));
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("connected to the broker"), "{text}");
    assert!(text.contains("broker connection lost") && text.contains("certificate"), "{text}");
    drop(broker);
}
