//! Delivery time of one message, publisher to subscriber, through (a) mosquitto's TCP port, (b) the
//! gateway's WebSocket bridge to that port, (c) mosquitto's own WebSocket listener, measured in one run for
//! 4 KB, 64 KB and 1 MB messages. Run: `cargo bench --bench gateway`.

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::broker::{free_port, Broker};
use support::median;
use support::page::{rand_suffix, server_config, Page, Server};

fn main() {
    let ws_port = free_port();
    let broker = Broker::start_with(&format!("listener {ws_port} 127.0.0.1\nprotocol websockets\n"));
    let server = Server::start(&server_config(broker.port, &[], ""));
    let gateway = server.gateway_addr();
    let gateway_port: u16 = gateway.rsplit(':').next().and_then(|p| p.parse().ok()).expect("gateway port");

    let publisher = Page::connect(broker.port, &format!("pub-{}", rand_suffix()), None);
    let paths = [
        ("mosquitto TCP", Page::connect(broker.port, &format!("tcp-{}", rand_suffix()), None)),
        ("gateway WebSocket", Page::connect_ws(&format!("ws://{gateway}/mqtt"), gateway_port, "gw-sub")),
        ("mosquitto WebSocket", Page::connect_ws(&format!("ws://127.0.0.1:{ws_port}/"), ws_port, "mws-sub")),
    ];
    println!("mqtt-video gateway benchmark: publish over TCP, receive through each path (medians, ms)");
    println!("{:<10} {:>16} {:>18} {:>20} {:>16}", "size", paths[0].0, paths[1].0, paths[2].0, "gateway / TCP");
    for (label, size, rounds) in [("4 KB", 4 * 1024, 20), ("64 KB", 64 * 1024, 10), ("1 MB", 1024 * 1024, 3)] {
        let topic = format!("bench/{}", rand_suffix());
        for (_, sub) in &paths {
            sub.subscribe(&topic);
        }
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
        // A path that loses a message (mosquitto's WebSocket listener can take longer than a keep-alive
        // to move 1 MB) is reported as lost and not tried again for that size.
        let mut lost = vec![false; paths.len()];
        for _ in 0..rounds {
            let started = Instant::now();
            publisher.publish_raw(&topic, vec![0x5a; size]);
            for (i, (_, sub)) in paths.iter().enumerate() {
                if lost[i] {
                    continue;
                }
                match sub.next_on(&topic, Duration::from_secs(60)) {
                    Some(m) => times[i].push(m.at.duration_since(started).as_secs_f64() * 1000.0),
                    None => lost[i] = true,
                }
            }
        }
        let cell = |i: usize| match (lost[i], times[i].is_empty()) {
            (true, _) | (_, true) => "lost (> 60 s)".to_string(),
            _ => format!("{:.2}", median(times[i].clone())),
        };
        let ratio = if lost[0] || lost[1] {
            "n/a".to_string()
        } else {
            format!("{:.2}", median(times[1].clone()) / median(times[0].clone()))
        };
        println!("{label:<10} {:>16} {:>18} {:>20} {:>16}", cell(0), cell(1), cell(2), ratio);
    }
}
