//! Home Assistant: with `[homeassistant] enabled`, each named source appears by MQTT discovery as a camera
//! whose config uses only the keys Home Assistant's MQTT camera documents; its retained topic holds a JPEG of
//! the source's size, refreshed; snapshots come on request over MQTT and from `GET /snapshot/<id>.jpg`; and
//! the availability topic turns `offline` when the server is killed with SIGKILL (its last will).

use crate::support;

use mqtt_video::media::encode::snapshot::jpeg_size;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};
use support::broker::Broker;
use support::page::{rand_suffix, Message, Page, Server};
use support::RtspServer;

/// The configuration variables of Home Assistant's MQTT camera (home-assistant.io, integrations/camera.mqtt),
/// plus `origin`, which MQTT discovery documents for every component, and `default_entity_id`, which replaced
/// `object_id` in Home Assistant 2025.10 (`object_id` stops working in 2026.4, so it must not be used).
const CAMERA_KEYS: [&str; 18] = [
    "availability",
    "availability_mode",
    "availability_template",
    "availability_topic",
    "device",
    "enabled_by_default",
    "encoding",
    "entity_category",
    "entity_picture",
    "icon",
    "image_encoding",
    "json_attributes_template",
    "json_attributes_topic",
    "name",
    "default_entity_id",
    "topic",
    "unique_id",
    "origin",
];
const AVAILABILITY_KEYS: [&str; 4] = ["payload_available", "payload_not_available", "topic", "value_template"];
const DEVICE_KEYS: [&str; 12] = [
    "configuration_url",
    "connections",
    "hw_version",
    "identifiers",
    "manufacturer",
    "model",
    "model_id",
    "name",
    "serial_number",
    "suggested_area",
    "sw_version",
    "via_device",
];
const ORIGIN_KEYS: [&str; 3] = ["name", "sw_version", "support_url"];

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

fn assert_documented(what: &str, v: &Value, allowed: &[&str]) {
    let unknown: Vec<String> = keys(v).into_iter().filter(|k| !allowed.contains(&k.as_str())).collect();
    assert!(unknown.is_empty(), "{what} has keys Home Assistant does not document: {unknown:?} in {v}");
}

/// Waits for a message on `topic` whose payload satisfies `ok`.
fn wait_for(page: &Page, topic: &str, timeout: Duration, ok: impl Fn(&Message) -> bool) -> Message {
    let deadline = Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if let Some(m) = page.next_on(topic, left) {
            if ok(&m) {
                return m;
            }
        }
    }
    panic!("nothing fitting arrived on {topic} within {timeout:?}");
}

fn http_get(addr: &str, path: &str) -> (String, Vec<u8>) {
    let mut socket = TcpStream::connect(addr).expect("connect to the gateway");
    socket.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(socket, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    socket.read_to_end(&mut response).expect("read");
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("headers") + 4;
    let body = response.split_off(split);
    (String::from_utf8_lossy(&response).to_ascii_lowercase(), body)
}

#[test]
fn named_sources_become_cameras_with_live_snapshots_and_go_offline_with_the_server() {
    let broker = Broker::start();
    let rtsp = RtspServer::start(&[]);
    let camera_url = rtsp.url.replace("rtsp://", "rtsp://viewer:s3cret@");
    let node = format!("test-{}", rand_suffix());
    let config = format!(
        "[broker]\nport = {}\nclient_id = \"ha-{}\"\nreconnect_min_ms = 100\n\n[gateway]\nlisten = \"127.0.0.1:0\"\n\n\
         [homeassistant]\nenabled = true\nnode_id = \"{node}\"\nsnapshot_secs = 1\n\n\
         [[sources]]\nname = \"Test pattern\"\nurl = \"builtin://testsrc\"\n\n\
         [[sources]]\nname = \"Front door\"\nurl = {camera_url:?}\n\n\
         [[sources]]\nname = \"Broken camera\"\nurl = \"rtsp://127.0.0.1:1/none\"\n",
        broker.port,
        rand_suffix()
    );
    let server = Server::start(&config);
    let page = Page::connect(broker.port, &format!("ha-{}", rand_suffix()), None);
    page.subscribe("homeassistant/#");
    page.subscribe("video/homeassistant/#");

    // Discovery: one retained config per named source, with documented keys only.
    let base = format!("video/homeassistant/{node}");
    let mut configs = Vec::new();
    for id in ["test_pattern", "front_door", "broken_camera"] {
        let topic = format!("homeassistant/camera/{node}/{id}/config");
        let m = wait_for(&page, &topic, Duration::from_secs(10), |_| true);
        let v: Value = serde_json::from_slice(&m.payload).expect("discovery JSON");
        assert_documented("the camera config", &v, &CAMERA_KEYS);
        assert_documented("device", &v["device"], &DEVICE_KEYS);
        assert_documented("origin", &v["origin"], &ORIGIN_KEYS);
        for a in v["availability"].as_array().expect("an availability list") {
            assert_documented("availability", a, &AVAILABILITY_KEYS);
        }
        assert!(v["availability_topic"].is_null(), "availability and availability_topic must not both be set");
        assert_eq!(v["topic"], format!("{base}/{id}/snapshot"), "{v}");
        assert_eq!(v["unique_id"], format!("{node}_{id}"));
        assert_eq!(v["default_entity_id"], format!("camera.{}_{id}", node.replace('-', "_")));
        assert_eq!(v["availability"][0]["topic"], format!("{base}/availability"));
        assert_eq!(v["availability"][0]["payload_not_available"], "offline");
        assert!(v["device"]["identifiers"].as_array().is_some_and(|i| !i.is_empty()), "a device needs identifiers");
        assert!(v["origin"]["name"].is_string(), "origin needs a name");
        assert!(!m.payload.windows(7).any(|w| w == b"s3cret"), "a password in discovery");
        configs.push(v);
    }
    assert_eq!(configs[1]["name"], "Front door");
    let unique: BTreeSet<&str> = configs.iter().map(|c| c["unique_id"].as_str().unwrap()).collect();
    assert_eq!(unique.len(), 3, "unique ids are unique");
    wait_for(&page, &format!("{base}/availability"), Duration::from_secs(10), |m| &m.payload[..] == b"online");

    // Snapshots: JPEGs of each working source's own size, refreshed with new pictures.
    for (id, size) in [("test_pattern", (640, 360)), ("front_door", (640, 360))] {
        let topic = format!("{base}/{id}/snapshot");
        let first = wait_for(&page, &topic, Duration::from_secs(20), |_| true);
        assert_eq!(jpeg_size(&first.payload), Some(size), "{id}: a JPEG of {size:?}");
        let next = wait_for(&page, &topic, Duration::from_secs(10), |m| m.payload != first.payload);
        assert_eq!(jpeg_size(&next.payload), Some(size), "{id}: refreshed");
        assert!(next.at > first.at);
    }
    server.wait_for_log("homeassistant: no snapshot", Duration::from_secs(10));

    // On request over MQTT (by name or id), with errors as JSON on the reply topic.
    let reply = format!("pages/{}/snap", page.id);
    page.subscribe(&reply);
    page.publish("video/snapshot", &json!({"source": "Test pattern", "reply_topic": reply}));
    let got = page.next_on(&reply, Duration::from_secs(10)).expect("a snapshot reply");
    assert_eq!(jpeg_size(&got.payload), Some((640, 360)));
    page.publish("video/snapshot", &json!({"source": "front_door", "reply_topic": reply}));
    assert_eq!(jpeg_size(&page.next_on(&reply, Duration::from_secs(10)).expect("by id").payload), Some((640, 360)));
    page.publish("video/snapshot", &json!({"source": "Nope", "reply_topic": reply}));
    let error: Value =
        serde_json::from_slice(&page.next_on(&reply, Duration::from_secs(10)).expect("an error").payload).unwrap();
    assert_eq!(error["error"]["code"], "forbidden_url", "{error}");

    // Over HTTP.
    let addr = server.gateway_addr();
    let (head, body) = http_get(&addr, "/snapshot/front_door.jpg");
    assert!(head.starts_with("http/1.1 200") && head.contains("content-type: image/jpeg"), "{head}");
    assert_eq!(jpeg_size(&body), Some((640, 360)));
    let (head, body) = http_get(&addr, "/snapshot/nope.jpg");
    assert!(head.starts_with("http/1.1 404"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("no source is named"));
    let (head, _) = http_get(&addr, "/snapshot/broken_camera.jpg");
    assert!(head.starts_with("http/1.1 502"), "a source that cannot be reached: {head}");

    // SIGKILL: no goodbye, the broker publishes the last will.
    let status = Command::new("kill").args(["-KILL", &server.pid().to_string()]).status().expect("kill");
    assert!(status.success());
    let killed = Instant::now();
    wait_for(&page, &format!("{base}/availability"), Duration::from_secs(10), |m| &m.payload[..] == b"offline");
    println!("availability offline {} ms after SIGKILL", killed.elapsed().as_millis());
    // Retained: Home Assistant starting later sees it too.
    let late = Page::connect(broker.port, &format!("ha-late-{}", rand_suffix()), None);
    late.subscribe(&format!("{base}/availability"));
    let retained = late.next_on(&format!("{base}/availability"), Duration::from_secs(5)).expect("retained");
    assert_eq!(&retained.payload[..], b"offline");
}
