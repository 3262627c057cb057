//! The deployment files in docker/, checked with the real components they configure (no Docker engine
//! here): mosquitto runs docker/mosquitto.conf and docker/mosquitto.acl as they are (paths and port moved),
//! the server runs docker/mqtt-video.toml (broker address moved), and pages prove what the ACL allows and
//! refuses; the server's own reply-prefix check and rate limit answer as documented.

use crate::support;

use mqtt_video::config::Config;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::broker::Broker;
use support::page::{rand_suffix, sources_list, Page, Server};

const PASSWORD: &str = "test-secret";

fn docker_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker").join(name)
}

/// mosquitto with docker/mosquitto.conf; only the listener and the file paths differ.
fn docker_broker() -> Broker {
    let dir = support::work_dir().join(format!("docker-broker-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let passwd = dir.join("passwd");
    let status = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwd)
        .args(["mqtt-video", PASSWORD])
        .status()
        .expect("mosquitto_passwd (package mosquitto)");
    assert!(status.success());
    // mosquitto started as root reads its files as the mosquitto user, who may not be able to enter the
    // checkout's folder: give it copies it can read.
    let _ = Command::new("chmod").arg("644").arg(&passwd).status();
    let acl = dir.join("mosquitto.acl");
    std::fs::copy(docker_file("mosquitto.acl"), &acl).unwrap();
    let _ = Command::new("chmod").arg("755").arg(&dir).status();
    let conf = std::fs::read_to_string(docker_file("mosquitto.conf")).unwrap();
    assert!(conf.contains("listener 1883\n") && conf.contains("password_file /mosquitto/data/passwd\n"));
    Broker::start_with_config(|port| {
        conf.replace("listener 1883\n", &format!("listener {port} 127.0.0.1\n"))
            .replace("/mosquitto/data/passwd", passwd.to_str().unwrap())
            .replace("/mosquitto/config/mosquitto.acl", acl.to_str().unwrap())
    })
}

/// docker/mqtt-video.toml with the broker on this machine and the gateway on a free port.
fn server_config(port: u16, password: &str) -> String {
    let text = std::fs::read_to_string(docker_file("mqtt-video.toml")).unwrap();
    let text = text
        .replace("host = \"mosquitto\"", "host = \"127.0.0.1\"")
        .replace("port = 1883", &format!("port = {port}"))
        .replace("listen = \"0.0.0.0:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("/usr/share/mqtt-video/client", concat!(env!("CARGO_MANIFEST_DIR"), "/client"))
        .replace("# password: MQTT_VIDEO_BROKER_PASSWORD", &format!("password = \"{password}\""));
    assert!(text.contains(&format!("port = {port}")) && text.contains("password = "));
    text
}

#[test]
fn the_docker_config_loads_with_its_environment_overrides() {
    let text = std::fs::read_to_string(docker_file("mqtt-video.toml")).unwrap();
    let env = |k: &str| match k {
        "MQTT_VIDEO_BROKER_PASSWORD" => Some("pw".to_string()),
        "MQTT_VIDEO_MODE" => Some("copy".to_string()),
        "MQTT_VIDEO_MAX_STREAMS" => Some("4".to_string()),
        _ => None,
    };
    let c = Config::from_toml_str_with_env(&text, env).expect("docker/mqtt-video.toml loads");
    assert_eq!((c.broker.host.as_str(), c.broker.username.as_deref()), ("mosquitto", Some("mqtt-video")));
    assert_eq!(c.broker.password.as_deref(), Some("pw"));
    assert!(c.broker.effective_client_id().starts_with("mqtt-video-") && !c.broker.effective_client_id().contains('{'));
    assert_eq!(c.topics.reply_prefix, "pages/");
    assert_eq!(c.limits.max_streams, 4);
    assert_eq!(c.gateway.listen, "0.0.0.0:8080");
    // Every environment variable compose.yaml sets is one the server reads.
    let compose = std::fs::read_to_string(docker_file("compose.yaml")).unwrap();
    let known: Vec<&str> = mqtt_video::config::ENV_OVERRIDES.iter().map(|(v, _, _)| *v).collect();
    for line in compose.lines().map(str::trim).filter(|l| l.starts_with("MQTT_VIDEO_")) {
        let var = line.split(':').next().unwrap();
        assert!(known.contains(&var) || var == "MQTT_VIDEO_LOG" || var == "MQTT_VIDEO_PASSWORD", "{var} is not read");
    }
}

#[test]
fn the_acl_confines_pages_and_the_server_checks_reply_topics() {
    let broker = docker_broker();
    let _server = Server::start(&server_config(broker.port, PASSWORD));

    // A page: its own topics under pages/<client id>/, anonymous as through the gateway.
    let page = Page::connect(broker.port, "page_alice", None);
    let reply = page.describe("builtin://testsrc", "pages/page_alice/info");
    assert!(reply["mimeCodec"].as_str().unwrap_or("").starts_with("video/mp4"), "{reply}");
    page.play("builtin://testsrc", "pages/page_alice/media");

    // Another anonymous client can neither read alice's media nor write into it, nor replace the sources.
    let evil = Page::connect(broker.port, "page_mallory", None);
    evil.subscribe("pages/page_alice/#");
    evil.subscribe("pages/#");
    evil.publish_raw("pages/page_alice/media", b"EVIL".to_vec());
    evil.client.publish("video/sources", rumqttc::QoS::AtLeastOnce, true, b"{\"forged\":true}".to_vec()).unwrap();
    evil.client.publish("video/stats", rumqttc::QoS::AtMostOnce, false, b"{}".to_vec()).unwrap();

    let got = page.collect("pages/page_alice/media", Duration::from_secs(2));
    assert!(got.media.len() > 20, "alice plays ({} messages)", got.media.len());
    assert!(got.media.iter().all(|m| &m.payload[..] != b"EVIL"), "a forged message reached alice");
    let leaked: Vec<String> = evil.inbox.try_iter().map(|m| m.topic).filter(|t| t.starts_with("pages/")).collect();
    assert!(leaked.is_empty(), "mallory received {} of alice's messages", leaked.len());
    let sources = sources_list(broker.port, Duration::from_secs(5)).expect("the retained sources list");
    assert!(sources["sources"].is_array(), "the sources list was replaced");

    // Reply topics outside pages/ are refused by the server itself (ACL or not): no answer at all.
    let outsider = Page::connect(broker.port, "page_out", None);
    outsider.subscribe("page_out/#");
    outsider.publish("video/describe", &json!({"url": "builtin://testsrc", "reply_topic": "page_out/info"}));
    assert!(outsider.next_on("page_out/info", Duration::from_secs(2)).is_none());

    // Rate limit (requests_per_minute = 60: a burst of 15): 15 answers, one rate_limited, then silence.
    let busy = Page::connect(broker.port, "page_busy", None);
    busy.subscribe("pages/page_busy/#");
    for _ in 0..25 {
        busy.publish("video/describe", &json!({"url": "builtin://testsrc", "reply_topic": "pages/page_busy/info"}));
    }
    let mut codes = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while let Some(m) = busy.next_on("pages/page_busy/info", until.saturating_duration_since(Instant::now())) {
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        codes.push(v["error"]["code"].as_str().unwrap_or("ok").to_string());
    }
    let limited = codes.iter().filter(|c| *c == "rate_limited").count();
    let ok = codes.iter().filter(|c| *c == "ok").count();
    // A slow machine may refill a token (one a second) while the 25 are handled: allow for one or two.
    assert!((15..=17).contains(&ok) && (1..=2).contains(&limited) && ok + limited < 25, "{codes:?}");
    // Alice, another requester, is not affected.
    let again = page.describe("builtin://testsrc", "pages/page_alice/info2");
    assert!(again["mimeCodec"].is_string(), "{again}");
}

#[test]
fn pages_read_the_stream_topics_and_only_the_server_writes_them() {
    let broker = docker_broker();
    let _server = Server::start(&server_config(broker.port, PASSWORD));
    let page = Page::connect(broker.port, "page_bob", None);
    let described = page.describe("builtin://testsrc", "pages/page_bob/info");
    let media = described["stream"]["media"].as_str().expect("stream topics").to_string();
    page.subscribe(&media);
    page.subscribe("pages/page_bob/#");
    page.publish("video/play", &json!({"url": "builtin://testsrc", "reply_topic": "pages/page_bob/m", "version": 2}));
    // Another page forges a fragment on the stream topic and a retained init: the broker drops both.
    let evil = Page::connect(broker.port, "page_eve", None);
    evil.publish_raw(&media, b"EVIL".to_vec());
    let init = described["stream"]["init"].as_str().unwrap();
    evil.client.publish(init, rumqttc::QoS::AtLeastOnce, true, b"EVIL".to_vec()).unwrap();
    let got = page.collect(&media, Duration::from_secs(2));
    assert!(got.media.len() > 20, "bob plays from the stream topic ({} messages)", got.media.len());
    assert!(got.media.iter().all(|m| &m.payload[..] != b"EVIL"), "a forged fragment reached bob");
    let retained = Page::connect(broker.port, "page_late", None);
    retained.subscribe(init);
    let current = retained.next_on(init, Duration::from_secs(3)).expect("the retained init segment");
    assert_eq!(current.payload.get(4..8), Some(&b"ftyp"[..]), "the retained init is the server's");
}

#[test]
fn a_wrong_server_password_is_refused_by_the_broker() {
    let broker = docker_broker();
    let dir = support::work_dir();
    let conf = dir.join(format!("wrong-pw-{}.toml", rand_suffix()));
    std::fs::write(&conf, server_config(broker.port, "not-the-password")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mqtt-video"))
        .args(["serve", "--config"])
        .arg(&conf)
        .env("MQTT_VIDEO_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // Nobody connected with the server's rights: no sources list appears.
    let p = Page::connect(broker.port, "page_pw", None);
    p.subscribe("video/sources");
    assert!(p.next_on("video/sources", Duration::from_secs(1)).is_none());
    let mut out = out;
    let _ = out.kill();
    let output = out.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("broker connection lost") || log.contains("NotAuthorized") || log.contains("refused"),
        "{log}"
    );
}

fn healthcheck(addr: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mqtt-video"))
        .args(["healthcheck", "--addr", addr, "--timeout", "2"])
        .output()
        .unwrap()
}

#[test]
fn the_health_check_follows_the_broker_connection() {
    let mut broker = Broker::start();
    let server = Server::start(&support::page::server_config(broker.port, &[], ""));
    let addr = server.gateway_addr();
    let out = healthcheck(&addr);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#""broker":"connected""#));
    broker.kill();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let out = healthcheck(&addr);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("unhealthy (HTTP 503)") && err.contains("disconnected"), "{err}");
            break;
        }
        assert!(Instant::now() < until, "still healthy without a broker");
        std::thread::sleep(Duration::from_millis(200));
    }
    broker.restart();
    let until = Instant::now() + Duration::from_secs(15);
    while !healthcheck(&addr).status.success() {
        assert!(Instant::now() < until, "not healthy again after the broker came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(server);
    let out = healthcheck(&addr);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting to"));
}
