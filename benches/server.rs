//! Server figures on the live 640x360@30 RTSP test source, through a real mosquitto: describe round trip,
//! play to first fragment (cold and warm), source-to-receipt latency per fragment from the `prft` stamps
//! (copy and transcode), and server CPU with 1, 10 and 50 viewers. Run: `cargo bench --bench server`.

#[path = "../tests/support/mod.rs"]
mod support;

use mqtt_video::media::fmp4::{parse_box_header, parse_prft};
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::broker::Broker;
use support::page::{rand_suffix, server_config, Page, Server};
use support::{median, percentile, RtspServer};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Server CPU ticks (utime + stime) from /proc.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("server stat");
    mqtt_video::server::stats::parse_cpu_ticks(&stat).expect("cpu ticks")
}

/// Round trip of one describe, timed from publish to reply (the subscription is made first).
fn describe(page: &Page, url: &str) -> Duration {
    let topic = format!("d/{}", rand_suffix());
    page.subscribe(&topic);
    let started = Instant::now();
    page.publish("video/describe", &json!({"url": url, "reply_topic": topic}));
    let reply = page.next_on(&topic, Duration::from_secs(10)).expect("a describe reply");
    let value: serde_json::Value = serde_json::from_slice(&reply.payload).expect("JSON");
    assert!(value["mimeCodec"].is_string(), "{value}");
    reply.at.duration_since(started)
}

/// Time from play to the first fragment after the init segment.
fn play_to_first_fragment(page: &Page, url: &str) -> Duration {
    let topic = format!("bench/{}", rand_suffix());
    page.subscribe(&topic);
    let started = Instant::now();
    page.publish("video/play", &json!({"url": url, "reply_topic": topic}));
    let mut seen_init = false;
    while let Some(m) = page.next_on(&topic, Duration::from_secs(10)) {
        if seen_init {
            let elapsed = m.at.duration_since(started);
            page.stop(&topic);
            return elapsed;
        }
        seen_init = true;
    }
    panic!("no fragment after play");
}

/// Latency from the fragment's source wall clock (its prft) to receipt by a subscriber, over `secs` of live
/// fragments. The first 2 s are left out: a joiner is sent the GOP cache (up to a second old) on purpose.
fn latencies(page: &Page, url: &str, secs: u64) -> Vec<f64> {
    let topic = format!("lat/{}", rand_suffix());
    page.play(url, &topic);
    let mut out = Vec::new();
    let live_from = Instant::now() + Duration::from_secs(2);
    let deadline = live_from + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let Some(m) = page.next_on(&topic, Duration::from_secs(5)) else { break };
        if m.at < live_from {
            continue;
        }
        let now_us = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
        let Ok(Some(h)) = parse_box_header(&m.payload) else { continue };
        if &h.kind == b"prft" {
            let (_, clock_us, _) = parse_prft(&m.payload[8..32]).expect("prft");
            out.push(now_us.saturating_sub(clock_us) as f64 / 1000.0);
        }
    }
    page.stop(&topic);
    out
}

fn run_mode(mode: &str, broker: &Broker, rtsp: &RtspServer) {
    let prefix = format!("rtsp://127.0.0.1:{}/", rtsp.port());
    let extra = format!("[limits]\nlinger_secs = 1\n\n[pipeline]\nmode = \"{mode}\"\n");
    let server = Server::start(&server_config(broker.port, &[&prefix], &extra));
    let page = Page::connect(broker.port, &format!("bench-{}", rand_suffix()), None);
    let url = &rtsp.url;

    // Cold: the stream is not running (linger expired); warm: it is.
    let (mut describe_cold, mut describe_warm, mut play_cold, mut play_warm) = (vec![], vec![], vec![], vec![]);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(1600));
        describe_cold.push(ms(describe(&page, url)));
        describe_warm.push(ms(describe(&page, url)));
        std::thread::sleep(Duration::from_millis(1600));
        play_cold.push(ms(play_to_first_fragment(&page, url)));
        play_warm.push(ms(play_to_first_fragment(&page, url)));
    }
    println!(
        "{mode:<9} describe round trip: cold {:.0} ms, warm {:.1} ms | play to first fragment: cold {:.0} ms, warm {:.1} ms",
        median(describe_cold),
        median(describe_warm),
        median(play_cold),
        median(play_warm)
    );

    let lat = latencies(&page, url, 10);
    println!(
        "{mode:<9} source-to-receipt per fragment over {} fragments: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        lat.len(),
        percentile(lat.clone(), 0.5),
        percentile(lat.clone(), 0.95),
        percentile(lat.clone(), 1.0)
    );

    {
        let mut viewers: Vec<(Page, String)> = Vec::new();
        let mut base = None;
        for n in [1usize, 10, 50] {
            while viewers.len() < n {
                let p = Page::connect(broker.port, &format!("v{}-{}", viewers.len(), rand_suffix()), None);
                let topic = format!("cpu/{}", rand_suffix());
                p.play(url, &topic);
                viewers.push((p, topic));
            }
            std::thread::sleep(Duration::from_secs(2));
            for (p, _) in &viewers {
                while p.inbox.try_recv().is_ok() {}
            }
            let (t0, c0) = (Instant::now(), cpu_ticks(server.pid()));
            let window = Duration::from_secs(10);
            let mut received = 0usize;
            while t0.elapsed() < window {
                for (p, _) in &viewers {
                    while p.inbox.try_recv().is_ok() {
                        received += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let cpu = (cpu_ticks(server.pid()) - c0) as f64 / 100.0 / t0.elapsed().as_secs_f64() * 100.0;
            let base_cpu = *base.get_or_insert(cpu);
            println!(
                "{mode:<9} {n:>2} viewers: server CPU {cpu:5.1}% of a core ({:.2} x one viewer), {:.0} messages/s delivered",
                cpu / base_cpu,
                received as f64 / window.as_secs_f64()
            );
        }
        for (p, topic) in &viewers {
            p.stop(topic);
        }
    }
    drop(page);
    drop(server);
}

fn main() {
    println!("mqtt-video server benchmark: RTSP 640x360@30 + AAC, mosquitto on loopback, medians of 5");
    let broker = Broker::start();
    let rtsp = RtspServer::start(&[]);
    run_mode("copy", &broker, &rtsp);
    run_mode("transcode", &broker, &rtsp);
}
