//! `mqtt-video serve` end to end: a real mosquitto started by the test, the GStreamer RTSP source, the
//! server's real binary, and MQTT clients acting as pages.

use crate::support;

use mqtt_video_wire::codec_string::mime_type;
use mqtt_video_wire::fmp4::{self, Segment, Splitter};
use serde_json::{json, Value};
use std::time::Duration;
use support::broker::Broker;
use support::page::{rand_suffix, raw_client_with_will, server_config, Message, Page, Received, Server};
use support::*;

// Fields drop in order: the server goes first, so it never sees its broker die at the end of a test.
struct Stack {
    server: Server,
    rtsp: RtspServer,
    broker: Broker,
}

fn stack(extra_config: &str) -> Stack {
    let broker = Broker::start();
    let rtsp = RtspServer::start(&[]);
    let prefix = format!("rtsp://127.0.0.1:{}/", rtsp.port());
    let server = Server::start(&server_config(broker.port, &[&prefix], extra_config));
    Stack { server, rtsp, broker }
}

fn page(stack: &Stack) -> Page {
    Page::connect(stack.broker.port, &format!("page-{}", rand_suffix()), None)
}

/// Splits received media into the init segment and fragments, checking that it is whole fMP4.
fn segments(media: &[Message]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut splitter = Splitter::new();
    let (mut init, mut fragments) = (Vec::new(), Vec::new());
    for m in media {
        for segment in splitter.push(&m.payload).expect("whole fMP4 boxes") {
            match segment {
                Segment::Init(bytes) => init = bytes,
                Segment::Fragment { bytes, .. } => fragments.push(bytes),
            }
        }
    }
    (init, fragments)
}

fn first_fragment_is_keyframe(init: &[u8], fragment: &[u8]) -> bool {
    let tracks = fmp4::parse_init(init).unwrap();
    let moof = fmp4::find_box(fragment, b"moof").unwrap().unwrap();
    let runs = fmp4::parse_moof(moof, &tracks).unwrap();
    let video = tracks.iter().find(|t| t.kind == fmp4::TrackKind::Video).unwrap();
    runs.iter().find(|r| r.track_id == video.track_id).is_some_and(|r| r.starts_with_sync)
}

fn decodes(init: &[u8], fragments: &[Vec<u8>], name: &str) {
    assert_bytes_decode(&[init.to_vec(), fragments.concat()].concat(), name);
}

#[test]
fn describe_then_play_delivers_the_described_stream() {
    let s = stack("");
    let p = page(&s);
    let described = p.describe(&s.rtsp.url, &format!("describe/{}", rand_suffix()));
    let mime = described["mimeCodec"].as_str().unwrap_or_else(|| panic!("no mimeCodec: {described}")).to_string();
    assert_eq!((described["width"].as_u64(), described["height"].as_u64()), (Some(640), Some(360)));
    assert_eq!(described["has_audio"], json!(true));
    assert_eq!(described["video"], json!("copy"));

    let topic = format!("viewer/{}", rand_suffix());
    p.play(&s.rtsp.url, &topic);
    let got = p.collect(&topic, Duration::from_secs(3));
    assert_eq!(got.states().first().map(String::as_str), Some("playing"), "{:?}", got.status);
    assert_eq!(got.status[0]["mimeCodec"], json!(mime));
    let (init, fragments) = segments(&got.media);
    assert_eq!(mime_type(&fmp4::parse_init(&init).unwrap()).unwrap(), mime, "describe matches the init segment");
    assert!(fragments.len() > 45, "about 30 fragments a second: {}", fragments.len());
    assert!(first_fragment_is_keyframe(&init, &fragments[0]));
    decodes(&init, &fragments, "served.mp4");
}

#[test]
fn viewers_of_one_source_share_one_pipeline() {
    let s = stack("");
    let (a, b) = (page(&s), page(&s));
    let (ta, tb) = (format!("a/{}", rand_suffix()), format!("b/{}", rand_suffix()));
    a.play(&s.rtsp.url, &ta);
    std::thread::sleep(Duration::from_millis(1500));
    b.play(&s.rtsp.url, &tb);
    let got_b = b.collect(&tb, Duration::from_secs(2));
    let got_a = a.collect(&ta, Duration::from_millis(500));
    let stats = a.stats_where(|s| s["viewers"] == json!(2));
    assert_eq!(stats["streams"].as_array().unwrap().len(), 1, "one pipeline for two viewers: {stats}");

    let (init_b, frags_b) = segments(&got_b.media);
    assert!(first_fragment_is_keyframe(&init_b, &frags_b[0]), "the late joiner starts at a keyframe");
    decodes(&init_b, &frags_b, "late-joiner.mp4");
    // B's live fragments are the very fragments A gets (no second transcode).
    let a_set: std::collections::HashSet<&[u8]> = got_a.media.iter().map(|m| &m.payload[..]).collect();
    let shared = got_b.media.iter().filter(|m| a_set.contains(&m.payload[..])).count();
    assert!(shared > 5, "B and A received identical fragments ({shared})");
}

#[test]
fn bad_requests_get_their_error_and_the_server_keeps_serving() {
    let s = stack("[limits]\nmax_request_bytes = 1024\n");
    let p = page(&s);
    let topic = format!("errors/{}", rand_suffix());
    p.subscribe(&topic);
    p.subscribe(&format!("{topic}/status"));
    let expect = |payload: Vec<u8>, on: &str, code: &str| {
        p.publish_raw(on, payload);
        let sub = if on.ends_with("play") { format!("{topic}/status") } else { topic.clone() };
        let m = p.next_on(&sub, Duration::from_secs(5)).unwrap_or_else(|| panic!("no answer for {code}"));
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        let got = v["error"]["code"].as_str().or(v["code"].as_str()).unwrap_or_default().to_string();
        assert_eq!(got, code, "{v}");
    };
    let j = |v: Value| serde_json::to_vec(&v).unwrap();
    expect(j(json!({"url": "rtsp://10.0.0.1/cam", "reply_topic": topic})), "video/describe", "forbidden_url");
    expect(j(json!({"url": "file:///etc/passwd", "reply_topic": topic})), "video/play", "forbidden_url");
    expect(j(json!({"reply_topic": topic})), "video/describe", "bad_request");
    expect(j(json!({"url": s.rtsp.url, "reply_topic": topic, "admin": true})), "video/describe", "bad_request");
    expect(j(json!({"url": 5, "reply_topic": topic})), "video/play", "bad_request");
    let huge = json!({"url": "x".repeat(2000), "reply_topic": topic});
    expect(j(huge), "video/describe", "payload_too_large");

    // Requests with no usable reply topic cannot be answered; they must not disturb anything.
    for bad in ["video/steal", "a/+/b", "#", "$SYS/x", "", "a//b"] {
        p.publish("video/play", &json!({"url": s.rtsp.url, "reply_topic": bad}));
    }
    p.publish_raw("video/describe", b"{not json".to_vec());
    p.publish_raw("video/play", vec![0xff; 100]);

    let described = p.describe(&s.rtsp.url, &format!("ok/{}", rand_suffix()));
    assert!(described["mimeCodec"].as_str().is_some(), "still serving: {described}");
    // 6 answered, 6 bad reply topics, 2 unreadable payloads.
    p.stats_where(|s| s["requests"]["rejected"] == json!(14));
}

#[test]
fn stop_ends_the_viewer_and_the_stream_lingers_out() {
    let s = stack("[limits]\nlinger_secs = 1\n");
    let threads_idle = s.server.threads();
    let p = page(&s);
    let topic = format!("stop/{}", rand_suffix());
    p.play(&s.rtsp.url, &topic);
    let got = p.collect(&topic, Duration::from_secs(1));
    assert!(!got.media.is_empty());
    p.stop(&topic);
    let after = p.collect(&topic, Duration::from_millis(500));
    assert_eq!(after.states().last().map(String::as_str), Some("ended"), "{:?}", after.status);
    assert_eq!(after.status.last().unwrap()["reason"], json!("stopped"));
    let late = p.collect(&topic, Duration::from_secs(1));
    assert!(late.media.is_empty(), "no media after stop");
    // Linger is 1 s: the stream, its thread and its memory are gone shortly after.
    p.stats_where(|s| s["streams"] == json!([]));
    assert_eq!(s.server.threads(), threads_idle, "the media threads exited");
}

/// The names of the server's threads.
fn thread_names(server: &Server) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", server.pid())).expect("server /proc");
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().into())
        .collect()
}

#[test]
fn a_playing_stream_adds_only_its_pipelines_threads() {
    let s = stack("");
    let idle = thread_names(&s.server);
    let p = page(&s);
    let topic = format!("threads/{}", rand_suffix());
    p.play(&s.rtsp.url, &topic);
    assert!(p.media_within(&topic, Duration::from_secs(5)));
    let playing = thread_names(&s.server);
    // The pipeline's thread and those it starts carry its tag (`mv<id> ...`); the RTSP relay's are its own.
    // Nothing else: the events go from the pipeline's thread to the stream's task with no thread between.
    let others: Vec<&String> = playing
        .iter()
        .filter(|n| !idle.contains(n))
        .filter(|n| mqtt_video::media::load::threads::tag_of(n).is_none() && !n.starts_with("rtsp-relay"))
        .collect();
    assert!(others.is_empty(), "threads beside the pipeline's: {others:?} (idle {idle:?}, playing {playing:?})");
    assert!(playing.len() > idle.len(), "the pipeline's thread is there: {playing:?}");
    p.stop(&topic);
}

#[test]
fn a_closed_tab_ends_its_viewer_through_its_last_will() {
    let s = stack("[limits]\nlinger_secs = 30\n");
    let topic = format!("will/{}", rand_suffix());
    let will = serde_json::to_vec(&json!({"reply_topic": topic})).unwrap();
    let tab = raw_client_with_will(s.broker.port, &format!("tab-{}", rand_suffix()), "video/stop", &will);
    let watcher = page(&s);
    watcher.play(&s.rtsp.url, &topic);
    assert!(watcher.media_within(&topic, Duration::from_secs(5)));
    drop(tab);
    let got = watcher.collect(&topic, Duration::from_secs(2));
    let last = got.status.last().cloned().unwrap_or_default();
    assert_eq!((last["state"].as_str(), last["reason"].as_str()), (Some("ended"), Some("stopped")), "{:?}", got.status);
    watcher.stats_where(|s| s["viewers"] == json!(0) && s["streams"].as_array().is_some_and(|a| a.len() == 1));
}

#[test]
fn a_viewer_that_does_not_renew_times_out() {
    let s = stack("[limits]\nviewer_timeout_secs = 2\n");
    let (renewing, quiet) = (page(&s), page(&s));
    let (t1, t2) = (format!("renew/{}", rand_suffix()), format!("quiet/{}", rand_suffix()));
    renewing.play(&s.rtsp.url, &t1);
    quiet.play(&s.rtsp.url, &t2);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_secs(1));
        renewing.publish("video/play", &json!({"url": s.rtsp.url, "reply_topic": t1}));
    }
    let got = quiet.collect(&t2, Duration::from_secs(1));
    let ended: Vec<&Value> = got.status.iter().filter(|st| st["state"] == json!("ended")).collect();
    assert!(ended.iter().any(|st| st["reason"] == json!("viewer_timeout")), "{:?}", got.status);
    let kept = renewing.collect(&t1, Duration::from_secs(1));
    assert!(kept.media.len() > 20, "renewing keeps the viewer: {}", kept.media.len());
    // The inbox holds everything since the first play: one `playing`, so renewals did not restart delivery.
    assert_eq!(kept.states().iter().filter(|st| *st == "playing").count(), 1, "{:?}", kept.status);
}

#[test]
fn broker_restart_mid_stream_resumes_for_viewers_that_resubscribe() {
    let mut s = stack("");
    let topic = format!("restart/{}", rand_suffix());
    {
        let p = page(&s);
        p.play(&s.rtsp.url, &topic);
        assert!(p.media_within(&topic, Duration::from_secs(5)));
    }
    s.broker.kill();
    std::thread::sleep(Duration::from_millis(500));
    s.broker.restart();
    s.server.wait_for_log("reconnected to the broker", Duration::from_secs(10));
    let p = page(&s);
    p.subscribe(&topic);
    let got = p.collect(&topic, Duration::from_secs(2));
    assert!(got.media.len() > 20, "media flows again to the same reply topic: {}", got.media.len());
    assert!(s.server.alive());
}

#[test]
fn source_drop_and_return_keeps_viewers_playing() {
    let mut s = stack("[retry]\ninitial_backoff_ms = 200\nmax_backoff_ms = 500\nmax_attempts = 0\n");
    let port = s.rtsp.port();
    let p = page(&s);
    let topic = format!("drop/{}", rand_suffix());
    p.play(&s.rtsp.url, &topic);
    assert!(p.media_within(&topic, Duration::from_secs(5)));
    drop(std::mem::replace(&mut s.rtsp, RtspServer::start(&[])));
    let during: Received = p.collect(&topic, Duration::from_secs(7));
    assert!(during.states().iter().any(|st| st == "reconnecting"), "{:?}", during.status);
    s.rtsp = RtspServer::start_on(port, &[]);
    let after = p.collect(&topic, Duration::from_secs(8));
    assert!(
        after.media.len() > 20,
        "media again after the source came back: {} ({:?})",
        after.media.len(),
        after.status
    );

    // The timeline goes on (a player would otherwise place the new media in the past), and the prft clocks
    // keep time with the source.
    let stamps: Vec<(u64, u64)> = after.media.iter().filter_map(prft_of).collect();
    let (last_clock, last_media) = *stamps.last().expect("prft stamps after the return");
    let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64;
    assert!(now_us - last_clock < 2_000_000, "the last fragment is dated {} ms ago", (now_us - last_clock) / 1000);
    assert!(last_media > 90_000 * 3, "media time continued past the first run: {last_media} ticks");
    assert!(stamps.windows(2).all(|w| w[0].1 < w[1].1), "media time only grows");
}

/// `(wall clock µs, media time)` of a fragment's leading prft box.
fn prft_of(m: &Message) -> Option<(u64, u64)> {
    let header = fmp4::parse_box_header(&m.payload).ok()??;
    (&header.kind == b"prft").then(|| fmp4::parse_prft(&m.payload[8..32]).ok()).flatten().map(|(_, c, t)| (c, t))
}

#[test]
fn nobody_can_write_into_a_viewers_topics() {
    let s = stack("");
    let victim = page(&s);
    let topic = format!("victim/{}", rand_suffix());
    victim.play(&s.rtsp.url, &topic);
    std::thread::sleep(Duration::from_secs(1));
    let attacker = page(&s);
    let nested = format!("{topic}/inner");
    attacker.publish("video/describe", &json!({"url": s.rtsp.url, "reply_topic": topic}));
    attacker.publish("video/describe", &json!({"url": s.rtsp.url, "reply_topic": nested}));
    attacker.publish("video/play", &json!({"url": s.rtsp.url, "reply_topic": nested}));
    let got = victim.collect(&topic, Duration::from_secs(2));
    // Any JSON on the media topic would fail the box splitter here.
    let (init, fragments) = segments(&got.media);
    decodes(&init, &fragments, "victim.mp4");
    // Its play started the stream, so `buffering` came first; nothing else reached its status topic.
    assert_eq!(got.states(), vec!["buffering", "playing"]);
    attacker.stats_where(|s| s["viewers"] == json!(1) && s["requests"]["rejected"] == json!(3));
}
