//! Who may watch which camera, decided by the broker: mosquitto runs docker/rights/mosquitto.conf and
//! docker/rights/mosquitto.acl as they are (paths and port moved) with a real password file, the server runs
//! docker/mqtt-video.toml with MQTT_VIDEO_GUARDED=true as compose.rights.yaml sets it. alice may watch "Test
//! pattern", bob "Test pattern 720p". Each plays their own camera and gets nothing of the other's on any
//! topic their login can read: a second connection of theirs subscribed to `#` is the witness.
//!
//! The same rights on RabbitMQ (docker/rights/rabbitmq.json, its topic permissions) are checked as a client of
//! the broker would try them: RabbitMQ authorises a subscription by its filter and closes the connection of one
//! it refuses, so there is no `#` witness there; each refused filter and publish is tried on a connection of
//! its own instead.

use crate::support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::broker::Broker;
use support::page::{rand_suffix, Message, Page, Server};
use support::rabbitmq::RabbitNode;

const SERVER_PASSWORD: &str = "test-secret";
const ALICE: (&str, &str) = ("alice", "alice-pw");
const BOB: (&str, &str) = ("bob", "bob-pw");

fn docker_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker").join(name)
}

/// mosquitto with docker/rights/: the server's user and the two viewers in a real password file.
fn rights_broker() -> Broker {
    let dir = support::work_dir().join(format!("rights-broker-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let passwd = dir.join("passwd");
    for (i, (user, password)) in [("mqtt-video", SERVER_PASSWORD), ALICE, BOB].into_iter().enumerate() {
        let mut cmd = Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let status = cmd.arg("-b").arg(&passwd).args([user, password]).status().expect("mosquitto_passwd");
        assert!(status.success());
    }
    // mosquitto started as root reads its files as the mosquitto user: give it copies it can read.
    let _ = Command::new("chmod").arg("644").arg(&passwd).status();
    let acl = dir.join("mosquitto.acl");
    std::fs::copy(docker_file("rights/mosquitto.acl"), &acl).unwrap();
    let _ = Command::new("chmod").arg("755").arg(&dir).status();
    let conf = std::fs::read_to_string(docker_file("rights/mosquitto.conf")).unwrap();
    assert!(conf.contains("allow_anonymous false\n") && conf.contains("password_file /mosquitto/data/passwd\n"));
    Broker::start_with_config(|port| {
        conf.replace("listener 1883\n", &format!("listener {port} 127.0.0.1\n"))
            .replace("/mosquitto/data/passwd", passwd.to_str().unwrap())
            .replace("/mosquitto/config/mosquitto.acl", acl.to_str().unwrap())
    })
}

/// The server as compose.rights.yaml runs it: docker/mqtt-video.toml, guarded by the environment.
fn rights_server(port: u16) -> Server {
    let text = std::fs::read_to_string(docker_file("mqtt-video.toml")).unwrap();
    let text = text
        .replace("host = \"mosquitto\"", "host = \"127.0.0.1\"")
        .replace("port = 1883", &format!("port = {port}"))
        .replace("listen = \"0.0.0.0:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("# password: MQTT_VIDEO_BROKER_PASSWORD", &format!("password = \"{SERVER_PASSWORD}\""));
    let compose = std::fs::read_to_string(docker_file("compose.rights.yaml")).unwrap();
    assert!(compose.contains("MQTT_VIDEO_GUARDED: \"true\""), "compose.rights.yaml guards the server");
    Server::start_with_env(&text, "error", "info", &[("MQTT_VIDEO_GUARDED", "true")])
}

fn json_of(m: &Message) -> Value {
    serde_json::from_slice(&m.payload).unwrap_or(Value::Null)
}

fn is_media(payload: &[u8]) -> bool {
    matches!(payload.get(4..8), Some(b"ftyp" | b"moof" | b"prft"))
}

/// The next message on `topic`, keeping every message that came meanwhile in `log`.
fn next_logged(page: &Page, topic: &str, wait: Duration, log: &mut Vec<Message>) -> Option<Message> {
    let until = Instant::now() + wait;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let m = page.inbox.recv_timeout(left).ok()?;
        log.push(m.clone());
        if m.topic == topic {
            return Some(m);
        }
    }
    None
}

/// A page of `user` plays `url` as the page in client/ does when guarded: describe (a pointer on its reply
/// topic), subscribe to its place under the stream's topics, describe again (the facts come there), play
/// with version 2. Returns the page, the stream's topics and the describe reply (`None` when nothing came);
/// every message the page received on the way is kept in `log`.
fn guarded_play(
    port: u16,
    user: (&str, &str),
    url: &str,
    wait: Duration,
    log: &mut Vec<Message>,
) -> (Page, Value, Option<Value>) {
    let id = format!("page_{}_{}", user.0, rand_suffix());
    let page = Page::connect_as(port, &id, user.0, user.1);
    let base = format!("pages/{id}");
    page.subscribe(&format!("{base}/#"));
    page.publish("video/describe", &json!({"url": url, "reply_topic": format!("{base}/info")}));
    let info = format!("{base}/info");
    let pointer = json_of(&next_logged(&page, &info, Duration::from_secs(10), log).expect("a pointer"));
    assert_eq!(pointer["guarded"], json!(true), "{pointer}");
    for fact in ["mimeCodec", "width", "height", "fps", "has_audio", "video", "error"] {
        assert!(pointer.get(fact).is_none(), "the pointer on the reply topic tells {fact}: {pointer}");
    }
    let stream = pointer["stream"].clone();
    let replies = stream["replies"].as_str().expect("stream.replies").to_string();
    assert!(replies.starts_with(&format!("video/live/{}/to/", stream["id"].as_str().unwrap())), "{replies}");
    assert!(!replies.contains(&id), "the guarded place shows the page's client id: {replies}");
    page.subscribe(&format!("{replies}/#"));
    page.subscribe(stream["media"].as_str().unwrap());
    page.publish("video/describe", &json!({"url": url, "reply_topic": format!("{base}/info")}));
    let reply = next_logged(&page, &format!("{replies}/info"), wait, log).map(|m| json_of(&m));
    page.publish("video/play", &json!({"url": url, "reply_topic": format!("{base}/media"), "version": 2}));
    (page, stream, reply)
}

/// Everything `page` received over `wait`.
fn drain(page: &Page, wait: Duration) -> Vec<Message> {
    let until = Instant::now() + wait;
    let mut got = Vec::new();
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match page.inbox.recv_timeout(left) {
            Ok(m) => got.push(m),
            Err(_) => break,
        }
    }
    got
}

/// `viewer` plays `own` and gets it; plays `other` (which `other_user` watches meanwhile, so its topics
/// carry media) and gets nothing of it, on any topic its login can read.
fn watches_own_camera_only(viewer: (&str, &str), own: (&str, &str), other_user: (&str, &str), other: (&str, &str)) {
    let broker = rights_broker();
    let _server = rights_server(broker.port);
    let (own_url, own_id) = own;
    let (other_url, other_id) = other;
    // The witness: the viewer's login, subscribed to everything.
    let witness = Page::connect_as(broker.port, &format!("page_witness_{}", rand_suffix()), viewer.0, viewer.1);
    witness.subscribe("#");
    // The other camera plays for its own viewer, who gets it (so there are bytes to leak).
    let (other_page, other_stream, other_reply) =
        guarded_play(broker.port, other_user, other_url, Duration::from_secs(20), &mut Vec::new());
    assert!(other_reply.is_some_and(|r| r["mimeCodec"].is_string()), "{other_user:?} is described {other_url}");

    let (page, stream, reply) = guarded_play(broker.port, viewer, own_url, Duration::from_secs(20), &mut Vec::new());
    let reply = reply.expect("the describe facts in the viewer's guarded place");
    assert!(reply["mimeCodec"].as_str().unwrap_or("").starts_with("video/mp4"), "{reply}");
    assert_eq!(stream["id"], json!(own_id));
    let replies = stream["replies"].as_str().unwrap();
    let burst = page.next_on(&format!("{replies}/media"), Duration::from_secs(10)).expect("the join burst");
    assert_eq!(burst.payload.get(4..8), Some(&b"ftyp"[..]), "the burst starts with the init segment");
    let live = page.collect(stream["media"].as_str().unwrap(), Duration::from_secs(2));
    assert!(live.media.len() >= 5, "the viewer plays its camera ({} fragments)", live.media.len());

    // The same page asks for the other camera: it learns where the answers would go, nothing more.
    // Everything this page receives is kept: its own reply topics are where a server around the ACL would
    // leak, and only this connection can read them (pages/<client id>/).
    let mut seen = Vec::new();
    let (refused, refused_stream, refused_reply) =
        guarded_play(broker.port, viewer, other_url, Duration::from_secs(4), &mut seen);
    assert_eq!(refused_stream["id"], json!(other_id));
    assert!(refused_reply.is_none(), "the other camera's facts reached the viewer: {refused_reply:?}");
    // A version 1 play, which would send everything to the reply topic, is refused outright.
    let v1 = format!("pages/{}/v1", refused.id);
    refused.publish("video/play", &json!({"url": other_url, "reply_topic": v1}));
    let status =
        next_logged(&refused, &format!("{v1}/status"), Duration::from_secs(5), &mut seen).expect("an error status");
    assert_eq!(json_of(&status)["code"], json!("bad_request"), "{}", json_of(&status));
    let other_live = other_page.collect(other_stream["media"].as_str().unwrap(), Duration::from_secs(3));
    assert!(other_live.media.len() >= 5, "the other camera played all along ({})", other_live.media.len());

    let forbidden = format!("video/live/{other_id}/");
    seen.extend(drain(&refused, Duration::from_millis(500)));
    let heard = drain(&witness, Duration::from_millis(100));
    // The sources list names no camera; each login gets the entries of the cameras it may watch.
    let list = heard.iter().find(|m| m.topic == "video/sources").map(json_of).expect("the sources list");
    assert_eq!((&list["guarded"], &list["sources"]), (&json!(true), &json!([])), "{list}");
    let entries: Vec<Value> = heard.iter().filter(|m| m.topic.ends_with("/source")).map(json_of).collect();
    assert_eq!(entries.len(), 1, "one entry, its own camera's: {entries:?}");
    assert_eq!(entries[0]["url"], json!(own_url), "{entries:?}");
    let own_topics = format!("video/live/{own_id}/");
    assert!(heard.iter().any(|m| m.topic.starts_with(&own_topics)), "the witness hears the own camera");
    seen.extend(heard);
    for m in &seen {
        assert!(!m.topic.starts_with(&forbidden), "{} reached {:?}", m.topic, viewer.0);
        if m.topic.starts_with("pages/") {
            // Its own reply topics: pointers and errors, never media, never the other camera's facts.
            assert!(!is_media(&m.payload), "media on {}", m.topic);
            let v = json_of(m);
            assert!(v.get("mimeCodec").is_none() && v.get("width").is_none(), "facts on {}: {v}", m.topic);
            let v1_refusal = m.topic.ends_with("/v1/status");
            assert!(v.get("error").is_none() || v1_refusal, "an error about the camera on {}: {v}", m.topic);
        }
    }
    // Nor did any message of the other camera reach the viewer under another name.
    let others: Vec<&[u8]> = other_live.media.iter().map(|m| &m.payload[..]).collect();
    assert!(seen.iter().all(|m| !others.contains(&&m.payload[..])), "a fragment of {other_id} reached {:?}", viewer.0);
}

#[test]
fn alice_watches_the_test_pattern_and_gets_nothing_of_bobs_camera() {
    watches_own_camera_only(
        ALICE,
        ("builtin://testsrc", "test-pattern"),
        BOB,
        ("builtin://testsrc-720p", "test-pattern-720p"),
    );
}

#[test]
fn bob_watches_the_720p_pattern_and_gets_nothing_of_alices_camera() {
    watches_own_camera_only(
        BOB,
        ("builtin://testsrc-720p", "test-pattern-720p"),
        ALICE,
        ("builtin://testsrc", "test-pattern"),
    );
}

/// What the broker answers a CONNECT with these credentials (`None`: no answer in time).
fn connack(port: u16, credentials: Option<(&str, &str)>) -> Option<rumqttc::ConnectReturnCode> {
    let mut options = rumqttc::MqttOptions::new(format!("page_login_{}", rand_suffix()), "127.0.0.1", port);
    if let Some((user, password)) = credentials {
        options.set_credentials(user, password);
    }
    let (_client, mut connection) = rumqttc::Client::new(options, 10);
    let until = Instant::now() + Duration::from_secs(5);
    for event in connection.iter() {
        match event {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => return Some(ack.code),
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Some(code),
            _ if Instant::now() > until => return None,
            _ => {}
        }
    }
    None
}

#[test]
fn a_wrong_password_and_anonymous_clients_are_refused() {
    let broker = rights_broker();
    use rumqttc::ConnectReturnCode::{BadUserNamePassword, NotAuthorized, Success};
    assert_eq!(connack(broker.port, Some(ALICE)), Some(Success));
    let wrong = connack(broker.port, Some(("alice", "bob-pw")));
    assert!(matches!(wrong, Some(BadUserNamePassword | NotAuthorized)), "a wrong password: {wrong:?}");
    let nobody = connack(broker.port, Some(("mallory", "x")));
    assert!(matches!(nobody, Some(BadUserNamePassword | NotAuthorized)), "an unknown user: {nobody:?}");
    let anonymous = connack(broker.port, None);
    assert!(matches!(anonymous, Some(BadUserNamePassword | NotAuthorized)), "anonymous: {anonymous:?}");
}

#[test]
fn guarded_the_gateway_serves_no_snapshot() {
    let broker = rights_broker();
    let server = rights_server(broker.port);
    server.wait_for_log("snapshots.http is off because topics.guarded is on", Duration::from_secs(5));
    let addr = server.gateway_addr();
    use std::io::{Read, Write};
    for id in ["test-pattern", "test_pattern"] {
        let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
        write!(tcp, "GET /snapshot/{id}.jpg HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(!text.starts_with("HTTP/1.1 200"), "an HTTP snapshot knows no broker user: {:.200}", text);
        assert!(!answer.windows(2).any(|w| w == [0xFF, 0xD8]), "a JPEG came over HTTP");
    }
}

#[test]
fn guarded_a_snapshot_over_mqtt_goes_under_the_cameras_topics() {
    // An open broker: this checks where the server publishes, the ACL tests above what the broker lets by.
    let broker = Broker::start();
    let extra = "[topics]\nreply_prefix = \"pages/\"\nguarded = true\n\n[homeassistant]\nenabled = true\n";
    let _server = Server::start(&support::page::server_config(broker.port, &[], extra));
    let page = Page::connect(broker.port, "page_snap", None);
    page.subscribe("#");
    page.publish("video/describe", &json!({"url": "builtin://testsrc", "reply_topic": "pages/page_snap/info"}));
    let pointer = json_of(&page.next_on("pages/page_snap/info", Duration::from_secs(10)).expect("a pointer"));
    let replies = pointer["stream"]["replies"].as_str().expect("stream.replies").to_string();
    page.publish("video/snapshot", &json!({"source": "Test pattern", "reply_topic": "pages/page_snap/snap"}));
    let mut log = Vec::new();
    let jpeg = next_logged(&page, &format!("{replies}/snap"), Duration::from_secs(20), &mut log).expect("the JPEG");
    assert_eq!(jpeg.payload.get(..2), Some(&[0xFF, 0xD8][..]), "a JPEG under the camera's topics");
    log.extend(drain(&page, Duration::from_millis(300)));
    assert!(log.iter().all(|m| m.topic != "pages/page_snap/snap"), "the snapshot also went to the reply topic");
    // A source no one has is no camera's: that error is answered on the reply topic itself.
    page.publish("video/snapshot", &json!({"source": "Nobody", "reply_topic": "pages/page_snap/snap"}));
    let error = json_of(&page.next_on("pages/page_snap/snap", Duration::from_secs(5)).expect("an error reply"));
    assert_eq!(error["error"]["code"], json!("forbidden_url"), "{error}");
}

/// The guarded place of `reply_topic`'s requester for `url`, from a describe pointer.
fn replies_of(page: &Page, url: &str, info: &str) -> String {
    page.publish("video/describe", &json!({"url": url, "reply_topic": info}));
    let pointer = json_of(&page.next_on(info, Duration::from_secs(10)).expect("a pointer"));
    pointer["stream"]["replies"].as_str().expect("stream.replies").to_string()
}

/// Statuses on `topic` within `wait`, as their `state` (and `reason`).
fn states_on(page: &Page, topic: &str, wait: Duration) -> Vec<String> {
    let mut log = Vec::new();
    let until = Instant::now() + wait;
    let mut states = Vec::new();
    while let Some(m) = next_logged(page, topic, until.saturating_duration_since(Instant::now()), &mut log) {
        let v = json_of(&m);
        if v["state"] == "buffering" {
            continue; // a stream still opening its source
        }
        states.push(format!(
            "{}{}",
            v["state"].as_str().unwrap_or("?"),
            v["reason"].as_str().map(|r| format!(":{r}")).unwrap_or_default()
        ));
    }
    states
}

#[test]
fn guarded_viewers_move_stop_and_time_out_where_they_are_delivered() {
    let broker = Broker::start();
    let extra = "[topics]\nreply_prefix = \"pages/\"\nguarded = true\n\n[limits]\nviewer_timeout_secs = 3\nmax_viewers_per_requester = 1\n";
    let _server = Server::start(&support::page::server_config(broker.port, &[], extra));
    let page = Page::connect(broker.port, "page_life", None);
    page.subscribe("#");
    let (one, two) = ("builtin://testsrc", "builtin://testsrc-silent");
    let (info, media) = ("pages/page_life/info", "pages/page_life/media");
    let (first, second) = (replies_of(&page, one, info), replies_of(&page, two, info));
    assert_ne!(first, second, "each camera has its own place");
    let play = |url: &str| page.publish("video/play", &json!({"url": url, "reply_topic": media, "version": 2}));
    play(one);
    assert_eq!(
        states_on(&page, &format!("{first}/media/status"), Duration::from_secs(5)).first().map(String::as_str),
        Some("playing")
    );
    // Moving: the first camera's delivery ends silently, the second's starts in its own place.
    play(two);
    assert!(page.next_on(&format!("{second}/media/status"), Duration::from_secs(10)).is_some(), "playing the second");
    let after_move = page.collect(&format!("{first}/media"), Duration::from_millis(800));
    assert!(after_move.media.is_empty(), "{} fragments of the first camera after the move", after_move.media.len());
    // A stop names the reply topic; the `ended` comes where the viewer is delivered.
    page.publish("video/stop", &json!({"reply_topic": media}));
    assert_eq!(states_on(&page, &format!("{second}/media/status"), Duration::from_secs(2)), ["ended:stopped"]);
    // A viewer that does not renew is timed out there too, and the hub forgets it: with one viewer allowed
    // per requester, another reply topic of the same page may play at once.
    play(one);
    let states = states_on(&page, &format!("{first}/media/status"), Duration::from_secs(8));
    assert_eq!(states, ["playing", "ended:viewer_timeout"], "{states:?}");
    let other = "pages/page_life/other";
    page.publish("video/play", &json!({"url": one, "reply_topic": other, "version": 2}));
    assert_eq!(states_on(&page, &format!("{first}/other/status"), Duration::from_secs(2)), ["playing"]);
    // ... and the limit holds: a second one of the same page is refused, on its own reply topic.
    page.publish("video/play", &json!({"url": one, "reply_topic": media, "version": 2}));
    let refused = page.next_on(&format!("{media}/status"), Duration::from_secs(3)).expect("overloaded");
    assert_eq!(json_of(&refused)["code"], json!("overloaded"), "{}", json_of(&refused));
}

/// RabbitMQ with docker/rights/rabbitmq.json, the users created first, as an administrator would before
/// importing the file (`rabbitmqctl add_user`, then `import_definitions`).
fn rights_rabbit() -> RabbitNode {
    let text = std::fs::read_to_string(docker_file("rights/rabbitmq.json")).unwrap();
    let mut definitions: Value = serde_json::from_str(&text).expect("docker/rights/rabbitmq.json is JSON");
    let users: Vec<Value> = [("mqtt-video", SERVER_PASSWORD), ALICE, BOB]
        .into_iter()
        .map(|(name, password)| json!({"name": name, "password": password, "tags": []}))
        .collect();
    definitions["users"] = json!(users);
    RabbitNode::start_with("mvrights", Some(&definitions))
}

/// What a fresh connection of `user` gets over `wait` after `act` on it.
fn on_a_connection_of(port: u16, user: (&str, &str), wait: Duration, act: impl FnOnce(&Page)) -> Vec<Message> {
    let page = Page::connect_as(port, &format!("page_{}_{}", user.0, rand_suffix()), user.0, user.1);
    act(&page);
    let got = drain(&page, wait);
    page.close();
    got
}

#[test]
fn rabbitmq_rights_give_alice_her_camera_and_close_her_connection_for_anything_else() {
    let rabbit = rights_rabbit();
    let port = rabbit.mqtt_port;
    let _server = rights_server(port);
    use rumqttc::ConnectReturnCode::{BadUserNamePassword, NotAuthorized, Success};
    assert_eq!(connack(port, Some(ALICE)), Some(Success));
    for credentials in [Some(("alice", "bob-pw")), Some(("mallory", "x")), None] {
        let answer = connack(port, credentials);
        assert!(matches!(answer, Some(BadUserNamePassword | NotAuthorized)), "{credentials:?}: {answer:?}");
    }
    // Bob's camera plays for bob, so that its topics carry media.
    let (_bob, _, bob_reply) =
        guarded_play(port, BOB, "builtin://testsrc-720p", Duration::from_secs(20), &mut Vec::new());
    assert!(bob_reply.is_some_and(|r| r["mimeCodec"].is_string()), "bob is described his camera");
    // Alice plays hers, as the page does.
    let (page, stream, reply) =
        guarded_play(port, ALICE, "builtin://testsrc", Duration::from_secs(20), &mut Vec::new());
    assert!(reply.expect("her camera's facts")["mimeCodec"].is_string());
    let media = stream["media"].as_str().unwrap().to_string();
    assert!(page.collect(&media, Duration::from_secs(2)).media.len() >= 5, "alice plays her camera");

    // Each of these is refused: the broker closes the connection, and nothing of bob's camera comes first.
    let forbidden = "video/live/test-pattern-720p/";
    for filter in ["video/live/test-pattern-720p/#", "#", "video/live/+/source", "video/live/+/media", "pages/#"] {
        let got = on_a_connection_of(port, ALICE, Duration::from_secs(2), |p| p.subscribe(filter));
        assert_eq!(got.first().map(|m| m.topic.as_str()), Some("$disconnected"), "alice subscribed to {filter}");
        assert!(got.iter().all(|m| !m.topic.starts_with(forbidden)), "{filter} let bob's camera through");
    }
    // A forged fragment on her own camera's topic, and a forged describe reply on another page's.
    let forged = b"\0\0\0\x10moofFORGED!!".to_vec();
    for topic in [media.as_str(), "pages/page_bob_1/info"] {
        let got = on_a_connection_of(port, ALICE, Duration::from_secs(2), |p| p.publish_raw(topic, forged.clone()));
        assert_eq!(got.first().map(|m| m.topic.as_str()), Some("$disconnected"), "alice published on {topic}");
    }
    let later = drain(&page, Duration::from_millis(500));
    assert!(later.iter().all(|m| m.payload[..] != forged[..]), "a forged fragment reached a viewer");

    // Bob's camera asked for by alice's page: a pointer on her reply topic, then her subscription to its place
    // closes the connection, and nothing of it comes.
    let mut seen = Vec::new();
    let (_refused, refused_stream, refused_reply) =
        guarded_play(port, ALICE, "builtin://testsrc-720p", Duration::from_secs(4), &mut seen);
    assert_eq!(refused_stream["id"], json!("test-pattern-720p"));
    assert!(refused_reply.is_none(), "bob's camera's facts reached alice: {refused_reply:?}");
    assert!(seen.iter().any(|m| m.topic == "$disconnected"), "the broker let alice subscribe to bob's camera");
    assert!(seen.iter().all(|m| !m.topic.starts_with(forbidden)), "a message of bob's camera reached alice");
}
