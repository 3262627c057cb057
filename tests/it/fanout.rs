//! Protocol v2: a stream's media is published once, to its own topics, and the broker fans it out. A
//! joiner still starts at once at a keyframe (the join burst on its reply topic), then takes the stream
//! topic with no gap and no duplicate (the `mfhd` sequence numbers run on); brokers bridged to the one the
//! server uses carry viewers without the server writing more.

use crate::support;

use mqtt_video::bench::measure::{MediaCheck, Received, SequenceMerge};
use mqtt_video::media::timing::wallclock_us;
use mqtt_video_wire::fmp4;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::broker::Broker;
use support::page::{rand_suffix, server_config, Page, Server};
use support::throttle::Throttle;

/// What a v2 viewer got: the join burst and the stream topic's fragments, in sequence order.
#[derive(Default)]
struct Shared {
    init: Option<Vec<u8>>,
    /// Fragments by sequence number, with how often each came (a duplicate counts twice).
    fragments: BTreeMap<u32, (Vec<u8>, usize)>,
    states: Vec<String>,
    /// Bytes that came on the reply topic (the burst) and on the stream topic.
    burst_bytes: usize,
    stream_bytes: usize,
    /// Whether each fragment of the burst began with a keyframe, in the order they came.
    burst_keys: Vec<bool>,
}

impl Shared {
    fn take(&mut self, reply: &str, media: &str, m: &support::page::Message) {
        let from_burst = m.topic == reply;
        if m.topic == format!("{reply}/status") {
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            self.states.push(v["state"].as_str().unwrap_or("?").into());
            return;
        }
        if !from_burst && m.topic != media {
            return;
        }
        if from_burst {
            self.burst_bytes += m.payload.len();
        } else {
            self.stream_bytes += m.payload.len();
        }
        // Each message is an init segment or one fragment, on either topic.
        if m.payload.get(4..8) == Some(b"ftyp") {
            self.init = Some(m.payload.to_vec());
        } else {
            let seq = fmp4::sequence_number(&m.payload).expect("an mfhd");
            if from_burst {
                self.burst_keys.push(fmp4::starts_with_keyframe(&m.payload));
            }
            if std::env::var("FANOUT_DEBUG").is_ok() {
                eprintln!(
                    "{} {seq} key={}",
                    if from_burst { "burst" } else { "stream" },
                    fmp4::starts_with_keyframe(&m.payload)
                );
            }
            self.fragments.entry(seq).or_insert((m.payload.to_vec(), 0)).1 += 1;
        }
    }

    /// From the first keyframe on: the fragments in order, and the sequence numbers missing among them.
    fn played(&self) -> (Vec<u8>, Vec<u32>) {
        let mut bytes = self.init.clone().expect("an init segment");
        let mut missing = Vec::new();
        let first = self.fragments.iter().find(|(_, (f, _))| fmp4::starts_with_keyframe(f)).map(|(s, _)| *s);
        let mut expect = first.expect("a keyframe");
        for (&seq, (f, _)) in self.fragments.range(expect..) {
            missing.extend(expect..seq);
            bytes.extend_from_slice(f);
            expect = seq + 1;
        }
        (bytes, missing)
    }
}

/// Describes `url`, subscribes to its stream topic, plays it with `"version": 2`; returns the topics.
fn play_v2(page: &Page, url: &str, reply: &str) -> Value {
    let described = page.describe(url, &format!("{reply}-info"));
    let topics = described["stream"].clone();
    assert!(topics["media"].is_string(), "{described}");
    page.subscribe(topics["media"].as_str().unwrap());
    page.subscribe(&format!("{reply}/#"));
    page.subscribe(reply);
    page.publish("video/play", &json!({"url": url, "reply_topic": reply, "version": 2}));
    topics
}

fn watch(page: &Page, shared: &mut Shared, reply: &str, media: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match page.inbox.recv_timeout(left) {
            Ok(m) => shared.take(reply, media, &m),
            Err(_) => break,
        }
    }
}

/// Media bytes the server published for a stream, from its stats.
fn published(page: &Page, url: &str) -> u64 {
    let stats = page.stats_where(|v| v["streams"].as_array().is_some_and(|s| s.iter().any(|s| s["url"] == url)));
    stats["streams"].as_array().unwrap().iter().find(|s| s["url"] == url).unwrap()["published_bytes"].as_u64().unwrap()
}

#[test]
fn v2_viewers_start_at_a_keyframe_and_take_the_stream_topic_with_no_gap_and_no_duplicate() {
    let broker = Broker::start();
    let server = Server::start(&server_config(broker.port, &[], ""));
    let url = "builtin://testsrc";
    let first = Page::connect(broker.port, &format!("first-{}", rand_suffix()), None);
    let reply = format!("pages/{}/m", rand_suffix());
    let topics = play_v2(&first, url, &reply);
    assert_eq!(topics["id"], "test-pattern", "a named source's id is the slug of its name: {topics}");
    let media = topics["media"].as_str().unwrap().to_string();
    let mut a = Shared::default();
    watch(&first, &mut a, &reply, &media, 3);
    // A second viewer joins mid-GOP.
    std::thread::sleep(Duration::from_millis(450));
    let second = Page::connect(broker.port, &format!("second-{}", rand_suffix()), None);
    let reply_b = format!("pages/{}/m", rand_suffix());
    play_v2(&second, url, &reply_b);
    let mut b = Shared::default();
    watch(&second, &mut b, &reply_b, &media, 3);
    for (who, shared, reply) in [("first", &a, &reply), ("second", &b, &reply_b)] {
        assert!(shared.states.iter().any(|s| s == "playing"), "{who}: {:?}", shared.states);
        let (bytes, missing) = shared.played();
        assert!(missing.is_empty(), "{who}: sequence numbers missing: {missing:?}");
        assert!(shared.fragments.len() > 60, "{who}: {} fragments", shared.fragments.len());
        assert!(shared.stream_bytes > shared.burst_bytes, "{who}: most media came on the stream topic");
        support::assert_bytes_decode(&bytes, &format!("fanout-{who}.mp4"));
        eprintln!(
            "{who} ({reply}): {} fragments, burst {} B, stream topic {} B, {} duplicates across the hand-over",
            shared.fragments.len(),
            shared.burst_bytes,
            shared.stream_bytes,
            shared.fragments.values().filter(|(_, n)| *n > 1).count()
        );
    }
    // The burst brought the GOP so far to the second viewer: it starts at a keyframe before its play (how many
    // frames after it depends on where in the GOP the join fell, which a busy machine moves).
    assert_eq!(b.burst_keys.first(), Some(&true), "the join burst starts at a keyframe: {:?}", b.burst_keys);
    assert!(b.burst_keys[1..].iter().all(|k| !k), "one GOP, not more: {:?}", b.burst_keys);
    drop(server);
}

#[test]
fn the_server_writes_a_streams_media_once_whatever_the_number_of_v2_viewers() {
    let broker = Broker::start();
    let server = Server::start(&server_config(broker.port, &[], ""));
    let url = "builtin://testsrc";
    let pages: Vec<Page> =
        (0..10).map(|i| Page::connect(broker.port, &format!("p{i}-{}", rand_suffix()), None)).collect();
    play_v2(&pages[0], url, &format!("pages/{}/m", rand_suffix()));
    std::thread::sleep(Duration::from_secs(2));
    let rate = |secs: u64| {
        let before = published(&pages[0], url);
        std::thread::sleep(Duration::from_secs(secs));
        (published(&pages[0], url) - before) as f64 / secs as f64
    };
    let one = rate(3);
    for page in &pages[1..] {
        play_v2(page, url, &format!("pages/{}/m", rand_suffix()));
    }
    std::thread::sleep(Duration::from_secs(1));
    let ten = rate(3);
    eprintln!("published media: 1 v2 viewer {:.0} B/s, 10 v2 viewers {:.0} B/s ({:.2} x)", one, ten, ten / one);
    assert!(ten < one * 1.3, "10 viewers cost {:.2} x one", ten / one);
    // The same ten as v1 viewers: ten copies.
    for (i, page) in pages.iter().enumerate() {
        let topic = format!("pages/{}/v1-{i}", rand_suffix());
        page.play(url, &topic);
    }
    std::thread::sleep(Duration::from_secs(1));
    let v1 = rate(3);
    eprintln!("and with 10 v1 viewers besides: {:.0} B/s ({:.1} x)", v1, v1 / one);
    assert!(v1 > one * 8.0, "v1 viewers each get their own copy");
    drop(server);
}

/// A mosquitto bridged to `core` as an edge: requests go up, replies, sources and stream topics come down.
fn edge_broker(core: u16) -> Broker {
    // Each bridge needs its own client id at the core, or the two edges take turns throwing each other out.
    Broker::start_with(&format!(
        "connection core\naddress 127.0.0.1:{core}\nremote_clientid edge-{}\ncleansession true\n\
         bridge_protocol_version mqttv311\n\
         topic video/describe out 0\ntopic video/play out 0\ntopic video/stop out 0\n\
         topic video/sources in 0\ntopic video/stats in 0\ntopic video/live/# in 0\ntopic pages/# in 0\n",
        rand_suffix()
    ))
}

/// Bytes the server process wrote (all of it, to the broker above all), from its stats.
fn written(page: &Page) -> u64 {
    page.stats_where(|v| v["process"]["bytes_written"].is_u64())["process"]["bytes_written"].as_u64().unwrap()
}

#[test]
fn edge_brokers_bridged_to_the_servers_broker_carry_the_viewers() {
    let core = Broker::start();
    let edges = [edge_broker(core.port), edge_broker(core.port)];
    let server = Server::start(&server_config(core.port, &[], ""));
    let url = "builtin://testsrc";
    let observer = Page::connect(core.port, &format!("observer-{}", rand_suffix()), None);
    // One viewer on an edge first, for the cost of one.
    let viewers: Vec<(Page, String)> = (0..6)
        .map(|i| {
            let edge = &edges[i % 2];
            (
                Page::connect(edge.port, &format!("edge{i}-{}", rand_suffix()), None),
                format!("pages/{}/m", rand_suffix()),
            )
        })
        .collect();
    let topics = {
        let (page, reply) = &viewers[0];
        let deadline = Instant::now() + Duration::from_secs(10);
        // The bridge may take a moment to subscribe at the core.
        loop {
            let d = page.describe(url, &format!("{reply}-info"));
            if d["stream"].is_object() || Instant::now() > deadline {
                break d["stream"].clone();
            }
        }
    };
    let media = topics["media"].as_str().expect("stream topics through the bridge").to_string();
    play_v2(&viewers[0].0, url, &viewers[0].1);
    std::thread::sleep(Duration::from_secs(2));
    let rate = |secs: u64| {
        let before = written(&observer);
        std::thread::sleep(Duration::from_secs(secs));
        (written(&observer) - before) as f64 / secs as f64
    };
    let one = rate(3);
    for (page, reply) in &viewers[1..] {
        play_v2(page, url, reply);
    }
    let mut watched: Vec<Shared> = (0..viewers.len()).map(|_| Shared::default()).collect();
    // Measured once the five join bursts (each the GOP so far, from the server) are out.
    let started = Instant::now();
    let mut before: Option<(Instant, u64)> = None;
    while started.elapsed() < Duration::from_secs(6) {
        for ((page, reply), shared) in viewers.iter().zip(watched.iter_mut()) {
            while let Ok(m) = page.inbox.try_recv() {
                shared.take(reply, &media, &m);
            }
        }
        if before.is_none() && started.elapsed() >= Duration::from_millis(1500) {
            before = Some((Instant::now(), written(&observer)));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (since, before) = before.expect("a first figure");
    let six = (written(&observer) - before) as f64 / since.elapsed().as_secs_f64();
    for (i, shared) in watched.iter().enumerate() {
        let (bytes, missing) = shared.played();
        assert!(missing.is_empty(), "viewer {i} on edge {}: missing {missing:?}", i % 2);
        assert!(shared.fragments.len() > 60, "viewer {i}: {} fragments", shared.fragments.len());
        support::assert_bytes_decode(&bytes, &format!("edge-viewer-{i}.mp4"));
    }
    eprintln!(
        "server wrote {:.0} B/s with one viewer, {:.0} B/s with six on two edge brokers ({:.2} x)",
        one,
        six,
        six / one
    );
    assert!(six < one * 1.3, "six viewers on the edges cost the server {:.2} x one", six / one);
    drop(server);
}

/// A v2 viewer's media as a page takes it: merged by sequence number, with the lag of every fragment.
#[derive(Default)]
struct Live {
    merge: SequenceMerge,
    check: MediaCheck,
    /// When each fragment came, and its lag behind the source (`prft`), ms.
    lags: Vec<(Instant, f64)>,
    last_sequence: Option<u32>,
    /// Jumps in the sequence that land on a keyframe (whole GOPs shed), and jumps that do not (a broken GOP).
    gaps_at_keyframes: usize,
    broken: usize,
    bytes: u64,
}

impl Live {
    fn take(&mut self, reply: &str, media: &str, m: &support::page::Message) {
        if m.topic != reply && m.topic != media {
            return;
        }
        let received_us = wallclock_us() - m.at.elapsed().as_micros() as u64;
        let key = fmp4::starts_with_keyframe(&m.payload);
        for payload in self.merge.push(m.payload.clone(), key) {
            if let Some(seq) = fmp4::sequence_number(&payload) {
                match self.last_sequence {
                    Some(last) if seq != last + 1 && fmp4::starts_with_keyframe(&payload) => {
                        self.gaps_at_keyframes += 1
                    }
                    Some(last) if seq != last + 1 => self.broken += 1,
                    _ => {}
                }
                self.last_sequence = Some(seq);
                self.bytes += payload.len() as u64;
            }
            if let Ok(Received::Fragment { latency_ms: Some(lag), .. }) = self.check.push(&payload, received_us) {
                self.lags.push((m.at, lag));
            }
        }
    }

    /// The lags of the fragments that came in `[from, to)`.
    fn lags_between(&self, from: Instant, to: Instant) -> Vec<f64> {
        self.lags.iter().filter(|(at, _)| *at >= from && *at < to).map(|(_, l)| *l).collect()
    }
}

/// Both pages' messages until `until`.
fn watch_live(viewers: &mut [(&Page, &str, &mut Live)], media: &str, until: Instant) {
    while Instant::now() < until {
        for (page, reply, live) in viewers.iter_mut() {
            while let Ok(m) = page.inbox.try_recv() {
                live.take(reply, media, &m);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

#[test]
fn a_slow_browser_loses_whole_gops_stays_live_and_recovers_while_the_others_notice_nothing() {
    slow_browser(0);
}

#[test]
fn a_slow_browser_behind_a_deep_queue_the_gateway_cannot_see_stays_live_too() {
    // 256 KB filled at once and drained at the link's rate, as a phone's or a Wi-Fi router's: the gateway's
    // socket never fills; its pings, queued behind the data, time the path.
    slow_browser(256 * 1024);
}

/// A slow page and a fast one behind the gateway; the slow one's link drops to 1/1.6 of the stream for 20 s,
/// behind a queue of `queue_bytes` (0: only the kernel's).
fn slow_browser(queue_bytes: usize) {
    let broker = Broker::start();
    // 35 s of watching without renewing.
    let server = Server::start(&server_config(broker.port, &[], "[limits]\nviewer_timeout_secs = 0\n"));
    let gateway: std::net::SocketAddr = server.gateway_addr().parse().expect("the gateway's address");
    let link = Throttle::start_with_queue(gateway, queue_bytes);
    let url = "builtin://testsrc";
    let observer = Page::connect(broker.port, &format!("observer-{}", rand_suffix()), None);
    let topics = observer.describe(url, &format!("pages/{}/info", rand_suffix()))["stream"].clone();
    let media = topics["media"].as_str().expect("stream topics").to_string();

    // Both pages are browsers behind the gateway; the slow one's link is the throttle.
    let fast_page =
        Page::connect_ws(&format!("ws://{gateway}/mqtt"), gateway.port(), &format!("fast-{}", rand_suffix()));
    let slow_page =
        Page::connect_ws(&format!("ws://{}/mqtt", link.addr), link.addr.port(), &format!("slow-{}", rand_suffix()));
    let (fast_reply, slow_reply) = (format!("pages/{}/m", rand_suffix()), format!("pages/{}/m", rand_suffix()));
    for (page, reply) in [(&fast_page, &fast_reply), (&slow_page, &slow_reply)] {
        page.subscribe(&media);
        page.subscribe(&format!("{reply}/#"));
        page.publish("video/play", &json!({"url": url, "reply_topic": reply, "version": 2}));
    }
    let (mut fast, mut slow) = (Live::default(), Live::default());

    // The stream's bitrate on an open link; then a link of 1/1.6 of it for 20 s; then open again for 10 s.
    let first_deadline = Instant::now() + Duration::from_secs(15);
    while slow.lags.is_empty() && fast.lags.is_empty() && Instant::now() < first_deadline {
        let soon = Instant::now() + Duration::from_millis(100);
        watch_live(&mut [(&fast_page, &fast_reply, &mut fast), (&slow_page, &slow_reply, &mut slow)], &media, soon);
    }
    let measured_from = Instant::now();
    let bytes_before = slow.bytes;
    let open_until = measured_from + Duration::from_secs(4);
    watch_live(&mut [(&fast_page, &fast_reply, &mut fast), (&slow_page, &slow_reply, &mut slow)], &media, open_until);
    let open_fragments = slow.lags_between(measured_from, open_until).len();
    assert!(open_fragments > 60, "the slow page plays on an open link: {open_fragments} fragments in 4 s");
    let bitrate = (slow.bytes - bytes_before) as f64 * 8.0 / 4.0;
    let limit = (bitrate / 1.6) as u64;
    link.set_rate(limit);
    let throttled = Instant::now();
    let recovered = throttled + Duration::from_secs(20);
    watch_live(&mut [(&fast_page, &fast_reply, &mut fast), (&slow_page, &slow_reply, &mut slow)], &media, recovered);
    link.set_rate(0);
    let end = recovered + Duration::from_secs(10);
    watch_live(&mut [(&fast_page, &fast_reply, &mut fast), (&slow_page, &slow_reply, &mut slow)], &media, end);

    let secs = |s: u64| Duration::from_secs(s);
    if std::env::var("FANOUT_DEBUG").is_ok() {
        for (name, live) in [("fast", &fast), ("slow", &slow)] {
            let buckets: Vec<String> = (0..35)
                .map(|i| {
                    let from = measured_from + secs(i);
                    let l = live.lags_between(from, from + secs(1));
                    format!("{:.0}/{}", max(&l), l.len())
                })
                .collect();
            eprintln!("{name} per second from the open link on (max lag/fragments): {}", buckets.join(" "));
        }
    }
    let slow_late = slow.lags_between(throttled + secs(10), recovered);
    let slow_shown = slow.lags_between(throttled, recovered).len();
    let slow_after = slow.lags_between(recovered + secs(8), end);
    let fast_open = fast.lags_between(measured_from, open_until);
    let fast_throttled = fast.lags_between(throttled, recovered);
    let shed = observer.stats_where(|v| v["gateway"]["shed_fragments"].as_u64() > Some(0))["gateway"]["shed_fragments"]
        .as_u64()
        .unwrap_or(0);
    eprintln!(
        "queue {queue_bytes} B; stream {:.0} kbit/s, link {:.0} kbit/s for 20 s: slow page lag max {:.0} ms after the first 10 s, \
         {slow_shown} fragments shown, {} GOP jumps, {} broken; 8-10 s after recovery max {:.0} ms; \
         fast page p95 {:.0} ms open, {:.0} ms meanwhile, {} gaps; {shed} fragments shed",
        bitrate / 1000.0,
        limit as f64 / 1000.0,
        max(&slow_late),
        slow.gaps_at_keyframes,
        slow.broken,
        max(&slow_after),
        support::percentile(fast_open.clone(), 0.95),
        support::percentile(fast_throttled.clone(), 0.95),
        fast.gaps_at_keyframes + fast.broken,
    );
    assert!(max(&slow_late) < 1500.0, "the slow page fell {:.0} ms behind", max(&slow_late));
    assert!(slow_shown > 100, "frames still shown while throttled: {slow_shown}");
    assert!(slow.gaps_at_keyframes > 0 && shed > 0, "nothing was shed: the link was not slow enough");
    assert_eq!(slow.broken, 0, "a jump that does not land on a keyframe: a broken GOP");
    assert!(!slow_after.is_empty() && max(&slow_after) < 300.0, "after recovery: {:.0} ms", max(&slow_after));
    assert_eq!(fast.gaps_at_keyframes + fast.broken, 0, "the fast page lost media");
    let (open_p95, meanwhile_p95) = (support::percentile(fast_open, 0.95), support::percentile(fast_throttled, 0.95));
    assert!(meanwhile_p95 < open_p95 + 100.0, "the fast page's p95 went from {open_p95:.0} to {meanwhile_p95:.0} ms");
    drop(server);
}
