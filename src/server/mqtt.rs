//! The broker session: options from the config, and the task that drives rumqttc's event loop, reconnects
//! with backoff, re-subscribes after every connect, and hands control requests to the server.

use crate::config::BrokerConfig;
use bytes::Bytes;
use mqtt_video_wire::protocol::{RequestKind, Topics};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc;

/// Largest MQTT packet either way: a keyframe fragment of a 4K stream is a few MB. rumqttc's default is 10 KiB.
pub const MAX_PACKET_BYTES: usize = 64 * 1024 * 1024;

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

/// Drives the event loop forever: reconnects with backoff after any error and re-subscribes on every connect.
pub async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    topics: Topics,
    broker: BrokerConfig,
    tx: mpsc::Sender<SessionEvent>,
    health: std::sync::Arc<super::health::Health>,
    cluster: bool,
) {
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
                } else {
                    tracing::debug!(%error, attempt = failures, "broker still unreachable, next try in {wait:?}");
                }
                failures = failures.saturating_add(1);
                tokio::time::sleep(wait).await;
            }
        }
    }
}
