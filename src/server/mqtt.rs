//! The broker session: options from the config, and the task that drives rumqttc's event loop, reconnects
//! with backoff, re-subscribes after every connect, and hands control requests to the server.

use crate::config::BrokerConfig;
use bytes::Bytes;
use mqtt_video_wire::protocol::{RequestKind, Topics};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Largest MQTT packet either way: a keyframe fragment of a 4K stream is a few MB. rumqttc's default is 10 KiB.
pub const MAX_PACKET_BYTES: usize = 64 * 1024 * 1024;

/// Media messages at least this large are noted in [`PublishLog`]: smaller ones pass any broker's limit.
const NOTED_FROM_BYTES: usize = 32 * 1024;
/// A connection lost this soon after a large publish gets the packet-limit hint.
const HINT_WITHIN: Duration = Duration::from_secs(2);

/// The last large media message published, so that a broker that drops the server for it is named in the log
/// (brokers with a packet limit close the connection without a word: mosquitto, EMQX, RabbitMQ, AWS IoT).
#[derive(Debug, Default)]
pub struct PublishLog(Mutex<Option<(Instant, usize)>>);

impl PublishLog {
    /// Notes a message of `len` bytes (a whole segment, or a piece of one) about to be published.
    pub fn note(&self, len: usize) {
        if len >= NOTED_FROM_BYTES {
            *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), len));
        }
    }

    fn last(&self) -> Option<(Instant, usize)> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What to tell the user when the broker connection was lost at `now`, given the last large publish and the
/// configured packet limit (0: none): why a broker's packet limit is the likely cause, and what to set.
pub fn oversize_hint(last: Option<(Instant, usize)>, now: Instant, max_packet_bytes: usize) -> Option<String> {
    let (at, len) = last?;
    let ago = now.checked_duration_since(at)?;
    if ago > HINT_WITHIN {
        return None;
    }
    let setting = if max_packet_bytes == 0 {
        "set broker.max_packet_bytes to the broker's limit (the server then sends large segments in pieces)".to_string()
    } else {
        format!("broker.max_packet_bytes is {max_packet_bytes}: set it to the broker's limit or below")
    };
    Some(format!(
        "the connection was lost {} ms after a {len}-byte publish: a broker whose packet limit is smaller drops \
         the client that sends it (mosquitto: max_packet_size; EMQX: mqtt.max_packet_size, 1MB by default; \
         RabbitMQ: mqtt.max_packet_size_authenticated); {setting}, or raise the broker's",
        ago.as_millis()
    ))
}

/// Why the broker session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MqttSetupError {
    /// The CA file could not be read.
    #[error("broker.ca_file {path}: {error}")]
    CaFile {
        /// The configured path.
        path: String,
        /// What went wrong.
        error: std::io::Error,
    },
}

/// rumqttc options for the configured broker, connecting as `client_id` (`broker.effective_client_id()`).
/// The last will empties the retained sources list, or, in a cluster, this instance's announcement (the
/// others still serve the list).
pub fn options(
    broker: &BrokerConfig,
    client_id: &str,
    topics: &Topics,
    cluster: bool,
) -> Result<MqttOptions, MqttSetupError> {
    let mut o = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    // 0 turns keep-alive off, as in MQTT itself.
    o.set_keep_alive(broker.keep_alive());
    o.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    o.set_clean_session(true);
    if let (Some(user), pass) = (&broker.username, &broker.password) {
        o.set_credentials(user.clone(), pass.clone().unwrap_or_default());
    }
    // A server that dies without saying so must not leave pages a list of sources nobody serves.
    let will_topic = if cluster { topics.instance(client_id) } else { topics.sources() };
    o.set_last_will(LastWill::new(will_topic, Vec::new(), QoS::AtLeastOnce, true));
    if broker.tls {
        let transport = match &broker.ca_file {
            Some(path) => {
                let ca = std::fs::read(path)
                    .map_err(|error| MqttSetupError::CaFile { path: path.display().to_string(), error })?;
                Transport::tls_with_config(TlsConfiguration::Simple { ca, alpn: None, client_auth: None })
            }
            None => Transport::tls_with_default_config(),
        };
        o.set_transport(transport);
    }
    Ok(o)
}

/// Turns Nagle's algorithm off on the broker connection (rumqttc leaves it on): with it, the tail of a
/// publish waits for the broker's delayed ACK, up to 40 ms, whenever earlier bytes are still unacknowledged.
pub fn without_nagle(eventloop: &mut EventLoop) {
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
}

/// Something the session tells the server.
#[derive(Debug)]
pub enum SessionEvent {
    /// (Re)connected and subscribed: publish retained state again.
    Connected,
    /// A control request arrived.
    Request(RequestKind, Bytes),
    /// Another instance's announcement (empty: it left).
    Instance(String, Bytes),
}

/// What the session task reports to, and what it reads.
pub struct Session {
    /// The server's topics.
    pub topics: Topics,
    /// The broker's settings (reconnect delays, packet limit).
    pub broker: BrokerConfig,
    /// Where requests and (re)connects go.
    pub tx: mpsc::Sender<SessionEvent>,
    /// Whether the broker is connected, for `/healthz`.
    pub health: Arc<super::health::Health>,
    /// `[cluster] enabled`: subscribe to the other instances' announcements.
    pub cluster: bool,
    /// The last large publish, named when the broker drops the connection.
    pub publishes: Arc<PublishLog>,
}

/// Drives the event loop forever: reconnects with backoff after any error and re-subscribes on every connect.
pub async fn drive(mut eventloop: EventLoop, client: AsyncClient, session: Session) {
    let Session { topics, broker, tx, health, cluster, publishes } = session;
    let mut failures = 0u32;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                health.set_broker_connected(true);
                if failures > 0 {
                    tracing::info!(host = %broker.host, port = broker.port, "reconnected to the broker");
                } else {
                    tracing::info!(host = %broker.host, port = broker.port, "connected to the broker");
                }
                failures = 0;
                let (client, topics, tx) = (client.clone(), topics.clone(), tx.clone());
                // Subscribing from this task would wait on the queue that only this task drains.
                tokio::spawn(async move {
                    // Announcements first: the broker sends the retained ones before it takes the request
                    // subscriptions, so the instance knows its peers before the first request reaches it.
                    if cluster && client.subscribe(topics.instances_filter(), QoS::AtLeastOnce).await.is_err() {
                        return;
                    }
                    for kind in RequestKind::ALL {
                        if client.subscribe(topics.request(kind), QoS::AtMostOnce).await.is_err() {
                            return;
                        }
                    }
                    let _ = tx.send(SessionEvent::Connected).await;
                });
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Some(id) = topics.instance_id(&p.topic) {
                    if tx.send(SessionEvent::Instance(id.to_string(), p.payload)).await.is_err() {
                        return;
                    }
                } else if let Some(kind) = topics.request_kind(&p.topic) {
                    if tx.try_send(SessionEvent::Request(kind, p.payload)).is_err() {
                        tracing::warn!(topic = %p.topic, "request dropped: the server is saturated");
                    }
                }
            }
            Ok(_) => {}
            Err(error) => {
                health.set_broker_connected(false);
                let wait = broker.reconnect_delay(failures + 1);
                if failures == 0 {
                    tracing::warn!(%error, "broker connection lost, reconnecting");
                    if let Some(hint) = oversize_hint(publishes.last(), Instant::now(), broker.max_packet_bytes) {
                        tracing::warn!("{hint}");
                    }
                } else {
                    tracing::debug!(%error, attempt = failures, "broker still unreachable, next try in {wait:?}");
                }
                failures = failures.saturating_add(1);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_lost_right_after_a_large_publish_names_the_packet_limits() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let hint = |last: Option<(Instant, usize)>, now: Instant, limit: usize| oversize_hint(last, now, limit);
        let h = hint(Some((at(0), 592_896)), at(12), 0).expect("a hint 12 ms after a 579 KB publish");
        for words in
            ["12 ms after a 592896-byte publish", "max_packet_size", "mqtt.max_packet_size", "broker.max_packet_bytes"]
        {
            assert!(h.contains(words), "{words:?} in {h}");
        }
        let h = hint(Some((at(0), 131_000)), at(500), 131_072).expect("a hint with a limit set");
        assert!(h.contains("broker.max_packet_bytes is 131072"), "{h}");
        assert_eq!(hint(Some((at(0), 592_896)), at(2_500), 0), None, "too long ago to be the cause");
        assert_eq!(hint(None, at(10), 0), None, "no large publish");
        assert_eq!(hint(Some((at(100), 592_896)), at(10), 0), None, "a clock that went back says nothing");
    }

    #[test]
    fn only_large_publishes_are_noted() {
        let log = PublishLog::default();
        log.note(1000);
        assert_eq!(log.last(), None);
        log.note(200_000);
        assert_eq!(log.last().map(|(_, n)| n), Some(200_000));
    }
}
