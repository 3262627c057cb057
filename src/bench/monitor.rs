//! The bench's own MQTT session beside the viewers: finds the server (its retained sources list), follows
//! its stats, and asks for the stream's facts with a describe.

use super::BenchError;
use crate::server::lock;
use crate::server::mqtt::MAX_PACKET_BYTES;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct State {
    connected: bool,
    sources: bool,
    stats: Vec<(Instant, serde_json::Value)>,
    replies: Vec<(String, Instant, Vec<u8>)>,
    error: Option<String>,
}

/// A connected monitor session.
pub struct Monitor {
    client: AsyncClient,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
    prefix: String,
    reply_base: String,
}

impl Monitor {
    /// Connects and waits up to `wait` for the server's retained sources list.
    pub async fn connect(
        host: &str,
        port: u16,
        prefix: &str,
        tag: &str,
        wait: Duration,
    ) -> Result<Monitor, BenchError> {
        let mut options = MqttOptions::new(format!("{tag}-monitor"), host, port);
        options.set_keep_alive(Duration::from_secs(20));
        options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        crate::server::mqtt::without_nagle(&mut eventloop);
        let state = Arc::new(Mutex::new(State::default()));
        let reply_base = format!("{tag}/monitor");
        let (sources_topic, stats_topic) = (format!("{prefix}/sources"), format!("{prefix}/stats"));
        // `<prefix>/stats/#` also matches `<prefix>/stats`; a cluster's instances publish under it.
        let stats_filter = format!("{stats_topic}/#");
        let task = {
            let (client, state, reply_base) = (client.clone(), Arc::clone(&state), reply_base.clone());
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            lock(&state).connected = true;
                            for topic in [&sources_topic, &stats_filter, &format!("{reply_base}/#")] {
                                let _ = client.try_subscribe(topic.as_str(), QoS::AtMostOnce);
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let mut s = lock(&state);
                            if p.topic == sources_topic {
                                // An empty retained payload means "no server".
                                s.sources = !p.payload.is_empty();
                            } else if p.topic == stats_topic || p.topic.starts_with(&format!("{stats_topic}/")) {
                                if let Ok(v) = serde_json::from_slice(&p.payload) {
                                    s.stats.push((Instant::now(), v));
                                }
                            } else {
                                s.replies.push((p.topic.clone(), Instant::now(), p.payload.to_vec()));
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            lock(&state).error = Some(e.to_string());
                            return;
                        }
                    }
                }
            })
        };
        let monitor = Monitor { client, state, task, prefix: prefix.to_string(), reply_base };
        let broker = format!("{host}:{port}");
        let until = Instant::now() + wait;
        loop {
            {
                let s = lock(&monitor.state);
                if s.sources {
                    break;
                }
                if let Some(reason) = &s.error {
                    return Err(BenchError::Broker { broker, reason: reason.clone() });
                }
                if Instant::now() >= until {
                    if !s.connected {
                        return Err(BenchError::Broker { broker, reason: format!("no CONNACK within {wait:?}") });
                    }
                    return Err(BenchError::NoServer { broker, prefix: monitor.prefix.clone(), waited: wait });
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The retained stats (if the server publishes any) follow the sources list at once.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(monitor)
    }

    /// Whether the stats received so far (each instance's, in a cluster) list a stream for `url`; `None`
    /// without stats.
    pub fn stream_running(&self, url: &str) -> Option<bool> {
        let s = lock(&self.state);
        if s.stats.is_empty() {
            return None;
        }
        let listed = |stats: &serde_json::Value| {
            stats["streams"].as_array().is_some_and(|a| a.iter().any(|st| st["url"].as_str() == Some(url)))
        };
        Some(s.stats.iter().any(|(_, v)| listed(v)))
    }

    /// The stats messages received in `window` (all of them without one).
    pub fn stats_between(&self, window: Option<(Instant, Instant)>) -> Vec<serde_json::Value> {
        lock(&self.state)
            .stats
            .iter()
            .filter(|(at, _)| window.is_none_or(|(a, b)| *at >= a && *at <= b))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Describes `url`: the reply and its round trip in ms, or why there is none.
    pub async fn describe(&self, url: &str, timeout: Duration) -> Result<(serde_json::Value, f64), String> {
        let topic = format!("{}/describe", self.reply_base);
        let request = serde_json::json!({ "url": url, "reply_topic": topic }).to_string();
        let asked = Instant::now();
        self.client
            .publish(format!("{}/describe", self.prefix), QoS::AtMostOnce, false, request.into_bytes())
            .await
            .map_err(|e| e.to_string())?;
        while asked.elapsed() < timeout {
            let reply = lock(&self.state).replies.iter().find(|(t, _, _)| *t == topic).cloned();
            if let Some((_, at, payload)) = reply {
                let v: serde_json::Value =
                    serde_json::from_slice(&payload).map_err(|e| format!("describe reply is not JSON: {e}"))?;
                if let Some(err) = v.get("error") {
                    return Err(format!("{}: {}", err["code"], err["message"]));
                }
                return Ok((v, (at - asked).as_secs_f64() * 1000.0));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(format!("no describe reply within {timeout:?}"))
    }

    /// Disconnects.
    pub async fn close(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.task.abort();
    }
}
