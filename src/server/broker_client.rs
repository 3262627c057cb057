//! The server's broker client: MQTT 5 where the broker speaks it, MQTT 3.1.1 where it does not
//! (`broker.protocol`). With MQTT 5 the broker's CONNACK says its packet limit (media then goes in pieces
//! that fit, as with `broker.max_packet_bytes`), and live media carries a message expiry, so that no broker
//! queues stale video for a slow subscriber.

use bytes::Bytes;
use rumqttc::v5;
use rumqttc::QoS;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Seconds a live media message may wait in a broker (MQTT 5's message expiry): older video is of no use.
pub const MEDIA_EXPIRY_SECS: u32 = 5;

/// A publish or subscribe that could not be queued: the client's event loop is gone (shutting down), or its
/// queue is full (`try_` calls).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(String);

/// A handle to the session, cheap to clone: requests go to the MQTT 5 or the 3.1.1 event loop, whichever
/// [`super::mqtt::drive`] runs.
#[derive(Clone)]
pub struct Client {
    v4: rumqttc::AsyncClient,
    v5: v5::AsyncClient,
    five: Arc<AtomicBool>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("mqtt5", &self.is_v5()).finish()
    }
}

fn qos5(qos: QoS) -> v5::mqttbytes::QoS {
    match qos {
        QoS::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

fn err(e: impl std::fmt::Display) -> ClientError {
    ClientError(e.to_string())
}

impl Client {
    /// Both handles, and which one is in use (shared with the session task, which may fall back to 3.1.1).
    pub fn new(v4: rumqttc::AsyncClient, v5: v5::AsyncClient, five: Arc<AtomicBool>) -> Self {
        Self { v4, v5, five }
    }

    /// Whether the session speaks MQTT 5 (or is trying to).
    pub fn is_v5(&self) -> bool {
        self.five.load(Ordering::Relaxed)
    }

    /// Publishes `payload` on `topic`.
    pub async fn publish(
        &self,
        topic: impl Into<String>,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let payload: Vec<u8> = payload.into();
        if self.is_v5() {
            self.v5.publish_bytes(topic, qos5(qos), retain, Bytes::from(payload)).await.map_err(err)
        } else {
            self.v4.publish(topic, qos, retain, payload).await.map_err(err)
        }
    }

    /// Bytes of MQTT 5 properties on a live media PUBLISH, with their length field: the message expiry's
    /// identifier and four bytes, after a one-byte length (0 with MQTT 3.1.1).
    pub fn media_properties_len(&self) -> usize {
        if self.is_v5() {
            1 + 1 + 4
        } else {
            0
        }
    }

    /// Publishes live media: with MQTT 5, with a message expiry of [`MEDIA_EXPIRY_SECS`].
    pub async fn publish_media(&self, topic: impl Into<String>, qos: QoS, payload: Bytes) -> Result<(), ClientError> {
        if self.is_v5() {
            let properties = v5::mqttbytes::v5::PublishProperties {
                message_expiry_interval: Some(MEDIA_EXPIRY_SECS),
                ..Default::default()
            };
            self.v5.publish_bytes_with_properties(topic, qos5(qos), false, payload, properties).await.map_err(err)
        } else {
            self.v4.publish_bytes(topic, qos, false, payload).await.map_err(err)
        }
    }

    /// Queues a publish without waiting; an error when the queue is full.
    pub fn try_publish(
        &self,
        topic: impl Into<String>,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let payload: Vec<u8> = payload.into();
        if self.is_v5() {
            self.v5.try_publish(topic, qos5(qos), retain, Bytes::from(payload)).map_err(err)
        } else {
            self.v4.try_publish(topic, qos, retain, payload).map_err(err)
        }
    }

    /// Subscribes to `filter`.
    pub async fn subscribe(&self, filter: impl Into<String>, qos: QoS) -> Result<(), ClientError> {
        if self.is_v5() {
            self.v5.subscribe(filter, qos5(qos)).await.map_err(err)
        } else {
            self.v4.subscribe(filter, qos).await.map_err(err)
        }
    }

    /// Ends the session with a DISCONNECT (no last will).
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        if self.is_v5() {
            self.v5.disconnect().await.map_err(err)
        } else {
            self.v4.disconnect().await.map_err(err)
        }
    }
}
