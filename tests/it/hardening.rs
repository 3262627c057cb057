//! Bad input and faults against the running server, with a viewer watching throughout: every bad request
//! gets its error (or, with no usable reply topic, nothing), floods are cut by the rate limits, and the
//! viewer's stream goes on without a gap. Killing viewers and the source leaves no thread or memory behind.

use crate::support;

use mqtt_video::bench::measure::MediaCheck;
use mqtt_video::server::stats::memory_and_threads_of;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::broker::Broker;
use support::page::{rand_suffix, raw_client_with_will, server_config, Page, Server};
use support::RtspServer;

/// Media on `topic` received by `page` for `secs`, checked (fragments, gaps, reordering) by `check`, which
/// carries the init segment and the timeline from one window to the next; the fragments of this window.
fn watch(check: &mut MediaCheck, page: &Page, topic: &str, secs: u64) -> u64 {
    let before = check.fragments;
    for m in page.collect(topic, Duration::from_secs(secs)).media {
        check.push(&m.payload, 0).expect("valid fMP4 while under attack");
    }
    check.fragments - before
}

fn answer(page: &Page, topic: &str) -> Option<String> {
    let m = page.next_on(topic, Duration::from_secs(3))?;
    let v: Value = serde_json::from_slice(&m.payload).ok()?;
    Some(v["error"]["code"].as_str().unwrap_or("ok").to_string())
}

#[test]
fn bad_input_and_floods_leave_existing_viewers_streaming() {
    let rtsp = RtspServer::start(&[]);
    let broker = Broker::start();
    let prefix = format!("rtsp://127.0.0.1:{}/", rtsp.port());
    let limits = "[limits]\nrequests_per_minute = 30\nrequests_per_second = 100\n";
    let mut server = Server::start(&server_config(broker.port, &[&prefix], limits));

    let viewer = Page::connect(broker.port, &format!("viewer-{}", rand_suffix()), None);
    let media = format!("viewer{}/media", rand_suffix());
    viewer.play(&rtsp.url, &media);
    let mut check = MediaCheck::default();
    assert!(watch(&mut check, &viewer, &media, 2) > 30, "the viewer plays before the attack");

    let attack_port = broker.port;
    let rtsp_url = rtsp.url.clone();
    let rtsp_port = rtsp.port();
    let attacker = std::thread::spawn(move || {
        let p = Page::connect(attack_port, &format!("attacker-{}", rand_suffix()), None);
        let mut results = Vec::new();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (json!({"url": "lavfi:testsrc", "reply_topic": "r1/x"}).to_string().into_bytes(), "forbidden_url"),
            (
                json!({"url": "testsrc=size=640x360:rate=30", "reply_topic": "r2/x"}).to_string().into_bytes(),
                "forbidden_url",
            ),
            (
                json!({"url": "builtin://testsrc=size=8000x8000", "reply_topic": "r3/x"}).to_string().into_bytes(),
                "forbidden_url",
            ),
            (json!({"url": "file:///etc/passwd", "reply_topic": "r4/x"}).to_string().into_bytes(), "forbidden_url"),
            (
                json!({"url": "concat:/etc/passwd|/etc/hosts", "reply_topic": "r5/x"}).to_string().into_bytes(),
                "forbidden_url",
            ),
            (
                json!({"url": "subfile:,,start,0,end,100,,:/etc/passwd", "reply_topic": "r6/x"})
                    .to_string()
                    .into_bytes(),
                "forbidden_url",
            ),
            (
                json!({"url": format!("http://127.0.0.1:{rtsp_port}/"), "reply_topic": "r7/x"})
                    .to_string()
                    .into_bytes(),
                "forbidden_url",
            ),
            (
                json!({"url": format!("rtsp://user:pw@127.0.0.1:{rtsp_port}/live"), "reply_topic": "r8/x"})
                    .to_string()
                    .into_bytes(),
                "forbidden_url",
            ),
            (
                json!({"url": format!("rtsp://127.0.0.1:{rtsp_port}/../live"), "reply_topic": "r9/x"})
                    .to_string()
                    .into_bytes(),
                "forbidden_url",
            ),
            (json!({"url": "data:text/plain,hello", "reply_topic": "r10/x"}).to_string().into_bytes(), "forbidden_url"),
            (json!({"url": rtsp_url, "reply_topic": "r11/x", "admin": true}).to_string().into_bytes(), "bad_request"),
            (json!({"url": rtsp_url, "reply_topic": "r12/x", "url2": [1, 2]}).to_string().into_bytes(), "bad_request"),
            (json!({"url": "", "reply_topic": "r13/x"}).to_string().into_bytes(), "bad_request"),
            (json!({"url": "x".repeat(5000), "reply_topic": "r14/x"}).to_string().into_bytes(), "payload_too_large"),
        ];
        for (i, (payload, expected)) in cases.into_iter().enumerate() {
            let topic = format!("r{}/x", i + 1);
            p.subscribe(&topic);
            p.publish_raw("video/describe", payload);
            results.push((topic.clone(), expected, answer(&p, &topic)));
        }
        // No usable reply topic: nobody to answer, nothing may break.
        for topic in ["a/+/b", "#", "$SYS/broker", "video/steal", "x/status", ""] {
            p.publish("video/describe", &json!({"url": rtsp_url, "reply_topic": topic}));
        }
        p.publish_raw("video/describe", b"{not json".to_vec());
        p.publish_raw("video/play", vec![0xff; 3000]);
        let mut huge = br#"{"url": "a", "reply_topic": "huge/x", "pad": ""#.to_vec();
        huge.extend(std::iter::repeat_n(b'a', 1 << 20));
        huge.extend(b"\"}");
        p.publish_raw("video/describe", huge);
        // A flood from one requester: its burst (7), one rate_limited, then silence.
        p.subscribe("flood/#");
        for i in 0..40 {
            p.publish("video/describe", &json!({"url": rtsp_url, "reply_topic": format!("flood/{i}")}));
        }
        // A flood from made-up requesters: the total cap drops what is beyond it, unanswered.
        for i in 0..400 {
            p.publish("video/describe", &json!({"url": "rtsp://nowhere/x", "reply_topic": format!("spray{i}/x")}));
        }
        let mut flood = Vec::new();
        while let Ok(m) = p.inbox.recv_timeout(Duration::from_secs(2)) {
            if m.topic.starts_with("flood/") {
                let v: Value = serde_json::from_slice(&m.payload).unwrap();
                flood.push(v["error"]["code"].as_str().unwrap_or("ok").to_string());
            }
        }
        (results, flood)
    });
    let during = watch(&mut check, &viewer, &media, 8);
    let (results, flood) = attacker.join().expect("attacker thread");

    for (topic, expected, got) in &results {
        assert_eq!(got.as_deref(), Some(*expected), "{topic}");
    }
    // Burst 7 at 30 a minute; a slow machine may refill one token (every 2 s) during the flood.
    let ok = flood.iter().filter(|c| *c == "ok").count();
    let limited = flood.iter().filter(|c| *c == "rate_limited").count();
    assert!((7..=8).contains(&ok) && (1..=2).contains(&limited) && ok + limited < 40, "{flood:?}");
    // The viewer never noticed: media went on at the frame rate, no gap, no reordering.
    assert!(during > 8 * 25, "{during} fragments in 8 s");
    assert_eq!((check.gaps, check.out_of_order), (0, 0));
    assert!(server.alive(), "the server survived");
    std::thread::sleep(Duration::from_secs(2));
    let again = Page::connect(broker.port, &format!("after-{}", rand_suffix()), None);
    assert!(again.describe(&rtsp.url, &format!("after{}/x", rand_suffix()))["mimeCodec"].is_string());
    again.stats_where(|s| s["requests"]["rate_limited"].as_u64().unwrap_or(0) > 100);
}

#[test]
fn killed_viewers_and_a_killed_source_leave_nothing_behind() {
    let mut rtsp = RtspServer::start(&[]);
    let port = rtsp.port();
    let broker = Broker::start();
    let prefix = format!("rtsp://127.0.0.1:{port}/");
    let config = "[limits]\nlinger_secs = 0\n[retry]\ninitial_backoff_ms = 200\nmax_backoff_ms = 500\n";
    let server = Server::start(&server_config(broker.port, &[&prefix], config));
    let watcher = Page::connect(broker.port, &format!("watch-{}", rand_suffix()), None);
    let sample = || memory_and_threads_of(server.pid());

    // One full cycle first, so that lazily started runtime threads and allocator pools exist.
    let cycle = |i: usize| {
        let topic = format!("cycle{i}/{}", rand_suffix());
        let will = serde_json::to_vec(&json!({"reply_topic": topic})).unwrap();
        let tab = raw_client_with_will(broker.port, &format!("tab-{}", rand_suffix()), "video/stop", &will);
        watcher.play(&rtsp.url, &topic);
        let got = watcher.collect(&topic, Duration::from_secs(1));
        assert!(!got.media.is_empty(), "cycle {i} plays");
        drop(tab); // kill -9 of a viewer: the broker publishes its will
        watcher.collect(&topic, Duration::from_millis(700));
    };
    cycle(0);
    watcher.stats_where(|s| s["streams"].as_array().is_some_and(|a| a.is_empty()));
    let (rss0, threads0) = sample();

    for i in 1..=6 {
        cycle(i);
    }
    // The source dies under a viewer and comes back on the same port; the viewer resumes.
    let topic = format!("survivor/{}", rand_suffix());
    watcher.play(&rtsp.url, &topic);
    assert!(watcher.media_within(&topic, Duration::from_secs(5)));
    drop(rtsp);
    let gone = Instant::now();
    rtsp = RtspServer::start_on(port, &[]);
    let back = watcher.collect(&topic, Duration::from_secs(6));
    assert!(back.states().iter().any(|s| s == "reconnecting"), "{:?}", back.states());
    assert!(back.media.len() > 30, "resumed {} messages within 6 s of {:?}", back.media.len(), gone.elapsed());
    watcher.stop(&topic);
    watcher.stats_where(|s| s["streams"].as_array().is_some_and(|a| a.is_empty()) && s["viewers"] == json!(0));

    // Idle runtime threads may take a few seconds to exit.
    let (rss0, threads0) = (rss0.unwrap(), threads0.unwrap());
    let until = Instant::now() + Duration::from_secs(15);
    let (mut rss1, mut threads1) = (0, u64::MAX);
    while Instant::now() < until {
        let (r, t) = sample();
        (rss1, threads1) = (r.unwrap(), t.unwrap());
        if threads1 <= threads0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("server after warm-up: {rss0} KiB, {threads0} threads; after 7 cycles and a source kill: {rss1} KiB, {threads1} threads");
    assert_eq!(threads1, threads0, "threads left behind");
    assert!(rss1 < rss0 + 20 * 1024, "RSS grew from {rss0} to {rss1} KiB");
    drop(rtsp);
}

/// The state (and error code) of each play's first final answer: `playing` once media flows, or the error.
fn outcomes(page: &Page, topics: &[String], within: Duration) -> Vec<String> {
    let mut got: std::collections::HashMap<String, String> = Default::default();
    let deadline = Instant::now() + within;
    while got.len() < topics.len() {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
        let Ok(m) = page.inbox.recv_timeout(left) else { break };
        let Some(topic) = m.topic.strip_suffix("/status") else { continue };
        let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        let outcome = match v["state"].as_str() {
            Some("playing") => "playing".to_string(),
            Some("error") => v["code"].as_str().unwrap_or("?").to_string(),
            _ => continue,
        };
        got.entry(topic.to_string()).or_insert(outcome);
    }
    topics.iter().map(|t| got.get(t).cloned().unwrap_or_else(|| "no answer".into())).collect()
}

#[test]
fn one_page_cannot_take_the_shared_limits() {
    let broker = Broker::start();
    // An allowed camera host that accepts connections and never answers: its streams stay "starting".
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a silent listener");
    let cams = format!("rtsp://127.0.0.1:{}/", silent.local_addr().unwrap().port());
    let limits = "[limits]\nrequests_per_minute = 600\n\n[pipeline.source]\nconnect_timeout_ms = 15000\n";
    let server = Server::start(&server_config(broker.port, &[&cams], limits));
    let page = Page::connect(broker.port, &format!("greedy-{}", rand_suffix()), None);
    page.subscribe("pages/greedy/#");

    // 100 reply topics of one page playing one stream: its share is 8, the stream's 100 are not taken.
    let topics: Vec<String> = (0..100).map(|i| format!("pages/greedy/v{i}")).collect();
    for t in &topics {
        page.publish("video/play", &json!({"url": "builtin://testsrc", "reply_topic": t}));
    }
    let got = outcomes(&page, &topics, Duration::from_secs(15));
    let playing = got.iter().filter(|o| *o == "playing").count();
    let refused = got.iter().filter(|o| *o == "overloaded").count();
    assert_eq!((playing, refused), (8, 92), "{got:?}");
    let other = Page::connect(broker.port, &format!("other-{}", rand_suffix()), None);
    let topic = "pages/other/v0".to_string();
    other.play("builtin://testsrc", &topic);
    assert_eq!(outcomes(&other, &[topic], Duration::from_secs(10)), ["playing"]);

    // Describing 16 camera URLs: the page started testsrc already, so 3 more start and 13 are refused; another
    // page can still start one.
    for i in 0..16 {
        page.publish(
            "video/describe",
            &json!({"url": format!("{cams}cam{i}"), "reply_topic": format!("pages/greedy/d{i}")}),
        );
    }
    let mut codes = Vec::new();
    while let Some(m) = page.next_on_prefix("pages/greedy/d", Duration::from_secs(3)) {
        let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        codes.push(v["error"]["code"].as_str().unwrap_or("ok").to_string());
    }
    assert_eq!(codes.iter().filter(|c| *c == "overloaded").count(), 13, "{codes:?}");
    let stats = page.stats_where(|v| v["streams"].as_array().is_some_and(|s| s.len() == 4));
    assert_eq!(stats["streams"].as_array().unwrap().iter().filter(|s| s["state"] == "starting").count(), 3);
    other.publish("video/describe", &json!({"url": format!("{cams}theirs"), "reply_topic": "pages/other/d"}));
    let stats = page.stats_where(|v| v["streams"].as_array().is_some_and(|s| s.len() == 5));
    assert_eq!(stats["streams"].as_array().unwrap().iter().filter(|s| s["state"] == "starting").count(), 4);
    drop((server, silent));
}

#[test]
fn a_stream_whose_task_panics_is_forgotten_and_its_viewers_told() {
    let broker = Broker::start();
    let server = Server::start_with_env(
        &server_config(broker.port, &[], ""),
        "error",
        "info",
        &[("MQTT_VIDEO_TEST_PANIC_URL", "testsrc-silent")],
    );
    let page = Page::connect(broker.port, &format!("page-{}", rand_suffix()), None);
    let healthy = format!("pages/{}/ok", rand_suffix());
    page.play("builtin://testsrc", &healthy);
    let mut check = MediaCheck::default();
    assert!(watch(&mut check, &page, &healthy, 2) > 30);
    // The broken stream's viewer gets an error, and so does the next one: the registry forgot the first, so
    // nobody waits on a dead stream.
    let victim = Page::connect(broker.port, &format!("victim-{}", rand_suffix()), None);
    for round in 0..2 {
        let topic = format!("pages/{}/broken{round}", rand_suffix());
        victim.play("builtin://testsrc-silent", &topic);
        let status = victim.collect(&topic, Duration::from_secs(5)).status;
        let error =
            status.iter().find(|s| s["state"] == "error").unwrap_or_else(|| panic!("round {round}: {status:?}"));
        assert_eq!(error["code"], "internal_error", "{error}");
        assert!(error["message"].as_str().unwrap_or("").contains("play again"), "{error}");
    }
    server.wait_for_log("a stream's task panicked", Duration::from_secs(2));
    // The healthy stream never noticed.
    assert!(watch(&mut check, &page, &healthy, 2) > 30);
    assert_eq!(check.gaps, 0);
    drop(server);
}

/// Each topic's first answer to its play: its first status's state (`buffering`, `playing`, ...), or the code
/// of an `error`; the topics that got nothing within `within` are left out.
fn first_answers(page: &Page, topics: &[String], within: Duration) -> std::collections::HashMap<String, String> {
    let mut got = std::collections::HashMap::new();
    let deadline = Instant::now() + within;
    while got.len() < topics.len() {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
        let Ok(m) = page.inbox.recv_timeout(left) else { break };
        let Some(topic) = m.topic.strip_suffix("/status") else { continue };
        let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        let answer = match v["state"].as_str() {
            Some("error") => v["code"].as_str().unwrap_or("?").to_string(),
            Some(state) => state.to_string(),
            None => continue,
        };
        got.entry(topic.to_string()).or_insert(answer);
    }
    got
}

/// A server whose cameras (`<cams>camN`) accept connections and never answer, so that their streams stay
/// `starting` (no CPU, no media) for 15 s; `limits` goes into its `[limits]`.
fn silent_cameras(broker: &Broker, limits: &str) -> (Server, std::net::TcpListener, String) {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a silent listener");
    let cams = format!("rtsp://127.0.0.1:{}/", silent.local_addr().expect("its address").port());
    let config = format!("[limits]\n{limits}\n\n[pipeline.source]\nconnect_timeout_ms = 15000\n");
    (Server::start(&server_config(broker.port, &[&cams], &config)), silent, cams)
}

#[test]
fn concurrent_plays_of_one_page_get_exactly_its_share() {
    let broker = Broker::start();
    // Every play names a camera of its own, so each one that gets past the share starts a stream (the
    // longest a play takes): the stream limits are high so that only the share refuses.
    let limits = "max_viewers_per_requester = 2\nmax_streams = 200\nmax_streams_per_requester = 64\n\
                  requests_per_minute = 6000\nrequests_per_second = 10000";
    let (server, silent, cams) = silent_cameras(&broker, limits);
    let page = Page::connect(broker.port, &format!("crowd-{}", rand_suffix()), None);
    page.subscribe("pages/#");
    // Two plays race for microseconds, on two cores at best: 40 pages try, 24 plays each at once.
    for p in 0..40 {
        let topics: Vec<String> = (0..24).map(|i| format!("pages/crowd{p}/v{i}")).collect();
        for (i, t) in topics.iter().enumerate() {
            page.publish("video/play", &json!({"url": format!("{cams}p{p}cam{i}"), "reply_topic": t}));
        }
        let got = first_answers(&page, &topics, Duration::from_secs(10));
        let joined = got.values().filter(|a| *a == "buffering").count();
        let refused = got.values().filter(|a| *a == "overloaded").count();
        assert_eq!((joined, refused), (2, 22), "page {p}: {got:?}");
    }
    let stats = page.stats_where(|s| s["viewers"].as_u64().is_some_and(|n| n >= 80));
    assert_eq!(stats["viewers"], json!(80), "{stats}");
    drop((server, silent));
}

#[test]
fn a_stop_right_after_a_play_leaves_no_viewer() {
    let broker = Broker::start();
    let limits = "max_streams = 64\nmax_streams_per_requester = 16";
    let (server, silent, cams) = silent_cameras(&broker, limits);
    let page = Page::connect(broker.port, &format!("quick-{}", rand_suffix()), None);
    page.subscribe("pages/#");
    // Four pages play and at once change their minds, eight times each; each play starts a stream of its own.
    let topics: Vec<String> = (0..32).map(|i| format!("pages/quick{}/v{i}", i / 8)).collect();
    for (i, t) in topics.iter().enumerate() {
        page.publish("video/play", &json!({"url": format!("{cams}cam{i}"), "reply_topic": t}));
        page.stop(t);
    }
    // Each play was answered, then ended by its stop: in that order, and nothing after.
    let mut states: std::collections::HashMap<String, Vec<String>> = Default::default();
    while let Ok(m) = page.inbox.recv_timeout(Duration::from_secs(3)) {
        let Some(topic) = m.topic.strip_suffix("/status") else { continue };
        let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        states.entry(topic.to_string()).or_default().push(v["state"].as_str().unwrap_or("?").to_string());
    }
    let expected = ["buffering".to_string(), "ended".to_string()];
    for t in &topics {
        assert_eq!(states.get(t).map(Vec::as_slice), Some(&expected[..]), "{t}: {states:?}");
    }
    let stats = page.stats_where(|s| s["streams"].as_array().is_some_and(|a| a.len() == 32));
    assert_eq!(stats["viewers"], json!(0), "{stats}");
    drop((server, silent));
}

#[test]
fn a_slow_describe_holds_up_nobody() {
    let broker = Broker::start();
    let (server, silent, cams) = silent_cameras(&broker, "");
    let page = Page::connect(broker.port, &format!("slow-{}", rand_suffix()), None);
    page.subscribe("pages/#");
    // The camera never answers: this describe waits for it up to connect_timeout_ms + 5 s.
    page.publish("video/describe", &json!({"url": format!("{cams}slow"), "reply_topic": "pages/a/slow"}));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    // Meanwhile the same page and another one are answered at once.
    for page_id in ["a", "b"] {
        let (describe, play) = (format!("pages/{page_id}/d"), format!("pages/{page_id}/v"));
        page.publish("video/describe", &json!({"url": "file:///etc/passwd", "reply_topic": describe}));
        page.publish("video/play", &json!({"url": format!("{cams}cam-{page_id}"), "reply_topic": play}));
        // Whichever comes first: the describe's error reply and the play's first status.
        let (mut described, mut played) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(2);
        while described.is_none() || played.is_none() {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
            let Ok(m) = page.inbox.recv_timeout(left) else { break };
            let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            if m.topic == describe {
                described = v["error"]["code"].as_str().map(String::from);
            } else if m.topic == format!("{play}/status") {
                played = played.or_else(|| v["state"].as_str().map(String::from));
            }
        }
        assert_eq!(described.as_deref(), Some("forbidden_url"), "{describe}");
        assert_eq!(played.as_deref(), Some("buffering"), "{play}");
    }
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(page.next_on("pages/a/slow", Duration::from_millis(500)).is_none(), "the slow describe was still waiting");
    drop((server, silent));
}
