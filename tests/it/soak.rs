//! Soak: viewers join and leave two streams (the built-in pattern, transcoded; the RTSP source, copied), some
//! stopping, some killed (their last will stops them), each its own page (requester), as real pages are. The
//! server's RSS and threads are sampled every 10 s; at the end threads must be back, nothing may have failed,
//! and in a run of 3 minutes or more memory must be flat after warm-up.
//! A minute of it runs in every test run, so that it cannot rot; the 10-minute one on purpose:
//! `cargo test --release --test it soak -- --ignored --nocapture` (SOAK_SECS to change its length, SOAK_ONLY=copy
//! or SOAK_ONLY=transcode: one stream only).

use crate::support;

use mqtt_video::bench::measure::MediaCheck;
use mqtt_video::server::stats::memory_and_threads_of;
use serde_json::json;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::broker::Broker;
use support::page::{rand_suffix, raw_client_with_will, server_config, Page, Server};
use support::RtspServer;

struct Viewer {
    topic: String,
    /// A tab whose last will stops this viewer when dropped (None: it stops politely).
    tab: Option<TcpStream>,
}

#[test]
fn viewers_come_and_go_for_a_minute() {
    soak(60);
}

#[test]
#[ignore = "10 minutes; run on purpose"]
fn viewers_come_and_go_for_ten_minutes() {
    soak(std::env::var("SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(600));
}

fn soak(secs: u64) {
    let rtsp = RtspServer::start(&[]);
    let broker = Broker::start();
    let prefix = format!("rtsp://127.0.0.1:{}/", rtsp.port());
    let server = Server::start(&server_config(broker.port, &[&prefix], "[limits]\nlinger_secs = 2\n"));
    // SOAK_ONLY=copy or =transcode soaks one of the two streams, to tell where memory goes.
    let urls = match std::env::var("SOAK_ONLY").as_deref() {
        Ok("copy") => [rtsp.url.clone(), rtsp.url.clone()],
        Ok("transcode") => ["builtin://testsrc".to_string(), "builtin://testsrc".to_string()],
        _ => ["builtin://testsrc".to_string(), rtsp.url.clone()],
    };
    let page = Page::connect(broker.port, &format!("soak-{}", rand_suffix()), None);
    page.subscribe("soak/#");
    let idle_threads_at_start = memory_and_threads_of(server.pid()).1.unwrap_or(0);

    let started = Instant::now();
    let mut viewers: Vec<Viewer> = Vec::new();
    let mut samples: Vec<(u64, u64, u64)> = Vec::new(); // (second, RSS KiB, threads)
    let mut checks: std::collections::HashMap<String, MediaCheck> = Default::default();
    let mut errors: Vec<String> = Vec::new();
    let (mut joined, mut left, mut fragments) = (0u64, 0u64, 0u64);
    let mut next_sample = Instant::now();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut random = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    while started.elapsed() < Duration::from_secs(secs) {
        // Join or leave about every second; between 2 and 12 viewers.
        let join = viewers.len() < 2 || (viewers.len() < 12 && random(2) == 0);
        if join {
            let url = &urls[random(2) as usize];
            // Each viewer its own page: the requester is the reply topic's parent, and one page may hold only
            // limits.max_viewers_per_requester.
            let topic = format!("soak/v{joined}/media");
            let tab = (random(2) == 0).then(|| {
                let will = serde_json::to_vec(&json!({"reply_topic": topic})).unwrap();
                raw_client_with_will(broker.port, &format!("tab-{}", rand_suffix()), "video/stop", &will)
            });
            page.publish("video/play", &json!({"url": url, "reply_topic": topic}));
            viewers.push(Viewer { topic, tab });
            joined += 1;
        } else {
            let v = viewers.remove(random(viewers.len() as u64) as usize);
            match v.tab {
                Some(tab) => drop(tab),
                None => page.stop(&v.topic),
            }
            left += 1;
        }
        let until = Instant::now() + Duration::from_millis(1000);
        while let Some(left_time) = until.checked_duration_since(Instant::now()) {
            let Ok(m) = page.inbox.recv_timeout(left_time) else { break };
            if let Some(base) = m.topic.strip_suffix("/status") {
                let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                if v["state"] == "error" {
                    errors.push(format!("{base}: {v}"));
                }
            } else {
                let check = checks.entry(m.topic.clone()).or_default();
                match check.push(&m.payload, 0) {
                    Ok(_) => fragments += 1,
                    Err(e) => errors.push(format!("{}: {e}", m.topic)),
                }
            }
        }
        if Instant::now() >= next_sample {
            let (rss, threads) = memory_and_threads_of(server.pid());
            samples.push((started.elapsed().as_secs(), rss.unwrap_or(0), threads.unwrap_or(0)));
            next_sample += Duration::from_secs(10);
        }
    }
    // Everyone leaves: after the linger the server must be back to its idle thread count.
    for v in viewers.drain(..) {
        match v.tab {
            Some(tab) => drop(tab),
            None => page.stop(&v.topic),
        }
    }
    let until = Instant::now() + Duration::from_secs(20);
    let idle_threads = loop {
        let threads = memory_and_threads_of(server.pid()).1.unwrap_or(0);
        if threads <= idle_threads_at_start || Instant::now() > until {
            break threads;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let gaps: u64 = checks.values().map(|c| c.gaps + c.out_of_order).sum();
    for s in &samples {
        println!("soak t={:>4}s rss {:>6} KiB threads {}", s.0, s.1, s.2);
    }
    // Memory: the last minute against the minute after warm-up (the first third of the run, when codec
    // pools and allocator arenas fill: ~5 MiB in the first 4 minutes of a 10-minute run, flat after).
    let window = |from: u64, to: u64| {
        let v: Vec<u64> = samples.iter().filter(|s| s.0 >= from && s.0 < to).map(|s| s.1).collect();
        v.iter().sum::<u64>() / v.len().max(1) as u64
    };
    let warm = secs / 3;
    let early = window(warm, warm + 60);
    let late = window(secs.saturating_sub(60), secs + 10);
    let threads: Vec<u64> = samples.iter().map(|s| s.2).collect();
    println!(
        "soak: {secs} s, {joined} joins, {left} leaves, {fragments} fragments, {} errors, {gaps} gaps; RSS {early} KiB after warm-up ({warm} s) -> {late} KiB; threads {}..{} while playing, {idle_threads_at_start} idle before, {idle_threads} idle after",
        errors.len(),
        threads.iter().min().unwrap_or(&0),
        threads.iter().max().unwrap_or(&0)
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert!(idle_threads <= idle_threads_at_start, "threads left behind: {idle_threads_at_start} -> {idle_threads}");
    assert_eq!(gaps, 0, "a viewer saw a gap or reordering");
    assert!(fragments > secs * 30, "{fragments} fragments");
    if secs >= 180 {
        assert!(late < early + 3 * 1024, "RSS grew from {early} to {late} KiB after warm-up");
    }
}
