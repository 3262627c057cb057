//! The broker session: options from the config, and the task that drives rumqttc's event loop, reconnects
//! with backoff, re-subscribes after every connect, and hands control requests to the server.

use super::broker_client::Client;
use crate::config::{BrokerConfig, BrokerProtocol};
use bytes::Bytes;
use mqtt_video_wire::protocol::{RequestKind, Topics};
use rumqttc::{v5, Event, EventLoop, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// rumqttc options for the configured broker, MQTT 3.1.1 and MQTT 5, connecting as `client_id`
/// (`broker.effective_client_id()`). The last will empties the retained sources list, or, in a cluster, this
/// instance's announcement (the others still serve the list).
pub fn options(
    broker: &BrokerConfig,
    client_id: &str,
    topics: &Topics,
    cluster: bool,
) -> Result<(MqttOptions, v5::MqttOptions), MqttSetupError> {
    let mut o = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    let mut o5 = v5::MqttOptions::new(client_id, broker.host.clone(), broker.port);
    // 0 turns keep-alive off, as in MQTT itself.
    o.set_keep_alive(broker.keep_alive());
    o5.set_keep_alive(broker.keep_alive());
    o.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    o5.set_max_packet_size(Some(MAX_PACKET_BYTES as u32));
    o.set_clean_session(true);
    o5.set_clean_start(true);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    o5.set_network_options(network);
    if let (Some(user), pass) = (&broker.username, &broker.password) {
        o.set_credentials(user.clone(), pass.clone().unwrap_or_default());
        o5.set_credentials(user.clone(), pass.clone().unwrap_or_default());
    }
    // A server that dies without saying so must not leave pages a list of sources nobody serves.
    let will_topic = if cluster { topics.instance(client_id) } else { topics.sources() };
    o5.set_last_will(v5::mqttbytes::v5::LastWill::new(
        will_topic.clone(),
        Vec::new(),
        v5::mqttbytes::QoS::AtLeastOnce,
        true,
        None,
    ));
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
        o.set_transport(transport.clone());
        o5.set_transport(transport);
    }
    Ok((o, o5))
}

/// The session's two event loops, MQTT 3.1.1 and MQTT 5; [`drive`] runs one of them.
pub struct EventLoops {
    /// MQTT 3.1.1.
    pub v4: EventLoop,
    /// MQTT 5.
    pub v5: v5::EventLoop,
}

impl EventLoops {
    /// Both loops, with Nagle's algorithm off (the MQTT 5 one's in its options, [`options`]).
    pub fn new(mut v4: EventLoop, v5: v5::EventLoop) -> Self {
        without_nagle(&mut v4);
        Self { v4, v5 }
    }

    async fn poll(&mut self, five: bool) -> Polled {
        if five {
            match self.v5.poll().await {
                Ok(v5::Event::Incoming(v5::mqttbytes::v5::Packet::ConnAck(ack))) => {
                    Polled::ConnAck { max_packet: ack.properties.and_then(|p| p.max_packet_size) }
                }
                Ok(v5::Event::Incoming(v5::mqttbytes::v5::Packet::Publish(p))) => {
                    Polled::Publish { topic: String::from_utf8_lossy(&p.topic).into_owned(), payload: p.payload }
                }
                Ok(_) => Polled::Other,
                Err(error) => Polled::Lost { error: error.to_string() },
            }
        } else {
            match self.v4.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => Polled::ConnAck { max_packet: None },
                Ok(Event::Incoming(Packet::Publish(p))) => Polled::Publish { topic: p.topic, payload: p.payload },
                Ok(_) => Polled::Other,
                Err(error) => Polled::Lost { error: error.to_string() },
            }
        }
    }
}

/// One poll of the session, whichever MQTT version.
enum Polled {
    ConnAck {
        max_packet: Option<u32>,
    },
    Publish {
        topic: String,
        payload: Bytes,
    },
    Other,
    /// The connection failed or was lost.
    Lost {
        error: String,
    },
}

/// Whether the broker's port takes a TCP connection now: an MQTT 5 CONNECT that failed there was turned down
/// (a refusal, a 3.1.1 CONNACK the MQTT 5 parser cannot read, a hang-up), not lost on the way.
async fn reachable(broker: &BrokerConfig) -> bool {
    let connect = tokio::net::TcpStream::connect((broker.host.as_str(), broker.port));
    matches!(tokio::time::timeout(Duration::from_secs(2), connect).await, Ok(Ok(_)))
}

/// Turns Nagle's algorithm off on an MQTT 3.1.1 connection (rumqttc leaves it on): with it, the tail of a
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
    /// A talk frame for stream `id` (wire::talk).
    Talk(String, Bytes),
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
    /// A source takes talk: subscribe to the talk topics.
    pub talk: bool,
    /// The last large publish, named when the broker drops the connection.
    pub publishes: Arc<PublishLog>,
    /// The packet limit the broker's MQTT 5 CONNACK gave (0: none), read by the media publishers.
    pub broker_limit: Arc<AtomicUsize>,
    /// Whether the session speaks MQTT 5, shared with the [`Client`] handles.
    pub five: Arc<AtomicBool>,
}

/// Drives the session forever: reconnects with backoff after any error and re-subscribes on every connect.
/// With `broker.protocol = "auto"`, a broker that turns MQTT 5 down before ever taking it gets MQTT 3.1.1 from
/// then on.
pub async fn drive(mut loops: EventLoops, client: Client, session: Session) {
    let Session { topics, broker, tx, health, cluster, talk, publishes, broker_limit, five } = session;
    let mut failures = 0u32;
    let mut ever_connected = false;
    loop {
        let mqtt5 = five.load(Ordering::Relaxed);
        match loops.poll(mqtt5).await {
            Polled::ConnAck { max_packet } => {
                health.set_broker_connected(true);
                ever_connected = true;
                let limit = max_packet.and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
                broker_limit.store(limit, Ordering::Relaxed);
                let protocol = if mqtt5 { "5" } else { "3.1.1" };
                let said = if failures > 0 { "reconnected to the broker" } else { "connected to the broker" };
                match limit {
                    0 => tracing::info!(host = %broker.host, port = broker.port, mqtt = protocol, "{said}"),
                    n => {
                        tracing::info!(host = %broker.host, port = broker.port, mqtt = protocol, max_packet_bytes = n, "{said}")
                    }
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
                    if talk && client.subscribe(topics.talk_filter(), QoS::AtMostOnce).await.is_err() {
                        return;
                    }
                    let _ = tx.send(SessionEvent::Connected).await;
                });
            }
            Polled::Publish { topic, payload } => {
                if let Some(id) = topics.instance_id(&topic) {
                    if tx.send(SessionEvent::Instance(id.to_string(), payload)).await.is_err() {
                        return;
                    }
                } else if let Some(id) = topics.talk_stream(&topic) {
                    // Audio is live: a frame the hub cannot take now is dropped, never waited for.
                    let _ = tx.try_send(SessionEvent::Talk(id.to_string(), payload));
                } else if let Some(kind) = topics.request_kind(&topic) {
                    if tx.try_send(SessionEvent::Request(kind, payload)).is_err() {
                        tracing::warn!(%topic, "request dropped: the server is saturated");
                    }
                }
            }
            Polled::Other => {}
            Polled::Lost { error } => {
                health.set_broker_connected(false);
                if mqtt5 && !ever_connected && broker.protocol == BrokerProtocol::Auto && reachable(&broker).await {
                    tracing::info!(%error, "the broker does not take MQTT 5: MQTT 3.1.1 from now on");
                    five.store(false, Ordering::Relaxed);
                    continue;
                }
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
