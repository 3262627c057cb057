//! Home Assistant (`[homeassistant] enabled = true`): every named source appears as an MQTT camera by
//! discovery, showing a JPEG snapshot that the server publishes retained and refreshes every `snapshot_secs`.
//!
//! The session has a broker connection of its own, because a connection has one last will and the main
//! session's empties the sources list: this one's turns the retained availability topic `offline`, so Home
//! Assistant marks the cameras unavailable when the server dies, however it dies. It also answers snapshot
//! requests on `<prefix>/snapshot`.

use super::snapshots::{source_ids, Snapshots};
use super::{lock, mqtt, Hub};
use crate::config::homeassistant::HomeAssistantConfig;
use bytes::Bytes;
use mqtt_video_wire::policy::NamedSource;
use mqtt_video_wire::protocol::{reply_topic_hint, ErrorCode, ErrorReply, Topics};
use mqtt_video_wire::ratelimit;
use rumqttc::{AsyncClient, Event, LastWill, Packet, QoS};
use serde::Deserialize;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the availability topic holds while the server runs, and after it is gone.
pub const ONLINE: &str = "online";
/// See [`ONLINE`].
pub const OFFLINE: &str = "offline";

/// Where everything goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The node id.
    pub node_id: String,
    discovery_prefix: String,
    /// `<topics.prefix>/homeassistant/<node id>`.
    base: String,
    /// `<topics.prefix>/snapshot`.
    pub request_topic: String,
}

impl Layout {
    /// The topics of a server with these settings.
    pub fn new(config: &HomeAssistantConfig, topics_prefix: &str, client_id: &str) -> Self {
        let node_id = config.node_id(client_id);
        Self {
            base: format!("{topics_prefix}/homeassistant/{node_id}"),
            discovery_prefix: config.discovery_prefix.clone(),
            request_topic: format!("{topics_prefix}/snapshot"),
            node_id,
        }
    }

    /// Retained `online`, or `offline` by the last will.
    pub fn availability_topic(&self) -> String {
        format!("{}/availability", self.base)
    }

    /// The camera's retained JPEG.
    pub fn image_topic(&self, source_id: &str) -> String {
        format!("{}/{source_id}/snapshot", self.base)
    }

    /// The camera's retained discovery config.
    pub fn config_topic(&self, source_id: &str) -> String {
        format!("{}/camera/{}/{source_id}/config", self.discovery_prefix, self.node_id)
    }

    /// The discovery config of one source's camera (the keys of Home Assistant's MQTT camera documentation).
    pub fn discovery(&self, source_id: &str, source: &NamedSource, device_name: &str) -> serde_json::Value {
        let version = env!("CARGO_PKG_VERSION");
        json!({
            "name": source.name,
            "unique_id": format!("{}_{source_id}", self.node_id),
            // `object_id` did this until Home Assistant 2025.10 deprecated it (it stops working in 2026.4).
            "default_entity_id": format!("camera.{}", entity_slug(&format!("{}_{source_id}", self.node_id))),
            "topic": self.image_topic(source_id),
            "availability": [{
                "topic": self.availability_topic(),
                "payload_available": ONLINE,
                "payload_not_available": OFFLINE,
            }],
            "icon": "mdi:cctv",
            "device": {
                "identifiers": [format!("mqtt-video_{}", self.node_id)],
                "name": device_name,
                "manufacturer": "mqtt-video",
                "model": "mqtt-video serve",
                "sw_version": version,
            },
            "origin": { "name": "mqtt-video", "sw_version": version },
        })
    }
}

/// An entity id's object part: lower-case letters, digits and `_`.
fn entity_slug(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

/// Runs the session until the process ends; logs and retries on broker errors.
pub async fn run(hub: Arc<Hub>, snapshots: Arc<Snapshots>) {
    let config = &hub.config;
    let client_id = config.broker.effective_client_id();
    let layout = Arc::new(Layout::new(&config.homeassistant, &config.topics.prefix, &client_id));
    let topics = match Topics::new(&config.topics.prefix) {
        Ok(t) => t,
        Err(e) => return tracing::error!(error = %e, "homeassistant: bad topics.prefix"),
    };
    // Its own MQTT 3.1.1 session: discovery and commands are small, and every broker Home Assistant uses
    // takes 3.1.1.
    let mut options = match mqtt::options(&config.broker, &format!("{client_id}-ha"), &topics, false) {
        Ok((o, _)) => o,
        Err(e) => return tracing::error!(error = %e, "homeassistant: cannot set up the broker session"),
    };
    options.set_last_will(LastWill::new(layout.availability_topic(), OFFLINE, QoS::AtLeastOnce, true));
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    mqtt::without_nagle(&mut eventloop);
    let sources = Arc::new(source_ids(&config.named_sources()));
    for (id, source) in sources.iter() {
        let (hub, snapshots, client) = (Arc::clone(&hub), Arc::clone(&snapshots), client.clone());
        tokio::spawn(refresh_forever(hub, snapshots, client, layout.image_topic(id), source.clone()));
    }
    let rate = Arc::new(Mutex::new(ratelimit::RateLimiter::new(
        config.limits.requests_per_minute,
        config.limits.requests_per_second,
        Instant::now(),
    )));
    let mut failures = 0u32;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                tracing::info!(node_id = %layout.node_id, cameras = sources.len(), "homeassistant: announcing the cameras");
                let (client, layout, sources, device) = (
                    client.clone(),
                    Arc::clone(&layout),
                    Arc::clone(&sources),
                    config.homeassistant.device_name.clone(),
                );
                // Publishing from this task would wait on the queue that only this task drains.
                tokio::spawn(async move { announce(&client, &layout, &sources, &device).await });
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == layout.request_topic => {
                let (hub, snapshots, client, rate) =
                    (Arc::clone(&hub), Arc::clone(&snapshots), client.clone(), Arc::clone(&rate));
                tokio::spawn(async move { answer(&hub, &snapshots, &client, &rate, &p.payload).await });
            }
            Ok(_) => {}
            Err(error) => {
                let wait = config.broker.reconnect_delay(failures + 1);
                if failures == 0 {
                    tracing::warn!(%error, "homeassistant: broker connection lost, reconnecting");
                }
                failures = failures.saturating_add(1);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Availability, every camera's discovery config, and the request subscription, after each connect.
async fn announce(client: &AsyncClient, layout: &Layout, sources: &[(String, NamedSource)], device: &str) {
    let mut ok = client.publish(layout.availability_topic(), QoS::AtLeastOnce, true, ONLINE).await.is_ok();
    for (id, source) in sources {
        let config = layout.discovery(id, source, device).to_string();
        ok &= client.publish(layout.config_topic(id), QoS::AtLeastOnce, true, config).await.is_ok();
    }
    ok &= client.subscribe(layout.request_topic.as_str(), QoS::AtMostOnce).await.is_ok();
    if !ok {
        tracing::warn!("homeassistant: could not queue the announcements");
    }
}

/// Publishes a camera's snapshot, retained, every `snapshot_secs` when the picture changed. Each camera has
/// its own task, so one that takes its connect timeout to fail does not hold the others back.
async fn refresh_forever(
    hub: Arc<Hub>,
    snapshots: Arc<Snapshots>,
    client: AsyncClient,
    topic: String,
    source: NamedSource,
) {
    let every = Duration::from_secs(hub.config.homeassistant.snapshot_secs);
    let mut last: Option<Arc<crate::media::encode::snapshot::Jpeg>> = None;
    let (mut failures, mut failing) = (0u32, None::<String>);
    while !hub.is_closing() {
        match snapshots.of(&hub, &source).await {
            Ok(jpeg) => {
                (failures, failing) = (0, None);
                let fresh = !last.as_ref().is_some_and(|l| Arc::ptr_eq(l, &jpeg));
                let bytes = Bytes::from(jpeg.bytes.clone());
                if fresh && client.publish_bytes(topic.as_str(), QoS::AtMostOnce, true, bytes).await.is_ok() {
                    last = Some(jpeg);
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                // Said once per new reason: a camera that stays down must not fill the log.
                if failing.as_deref() != Some(e.message.as_str()) {
                    tracing::warn!(source = %source.name, code = e.code.as_str(), error = %e.message, "homeassistant: no snapshot");
                    failing = Some(e.message);
                }
            }
        }
        tokio::time::sleep(retry_after(every, failures)).await;
    }
}

/// Longest wait between two tries of a camera that keeps failing.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// When to take the next snapshot: after `every`, or for a camera that failed `failures` times in a row,
/// after `every` doubled each time up to [`MAX_RETRY`] (each try opens the source again).
fn retry_after(every: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    every.saturating_mul(factor).min(MAX_RETRY.max(every))
}

/// A snapshot request: `{"source": "<name or id>", "reply_topic": "..."}`, nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotRequest {
    source: String,
    #[serde(rename = "reply_topic")]
    _reply_topic: String,
}

/// Answers a snapshot request: the JPEG on its reply topic, or a JSON error there. Requests without a valid
/// reply topic are dropped (there is nowhere safe to answer), and the rate limits apply as to other requests.
async fn answer(
    hub: &Arc<Hub>,
    snapshots: &Snapshots,
    client: &AsyncClient,
    rate: &Mutex<ratelimit::RateLimiter>,
    payload: &[u8],
) {
    let limits = hub.config.request_limits();
    let Some(mut reply) = reply_topic_hint(payload, &limits) else {
        return tracing::info!("homeassistant: snapshot request without a valid reply topic, not answered");
    };
    if hub.guarded() {
        // The picture (or why there is none) is the camera's: it goes under the camera's topics.
        let wanted = serde_json::from_slice::<SnapshotRequest>(payload).ok();
        if let Some(url) = wanted.and_then(|r| snapshots.url_of(hub, &r.source)) {
            match hub.answer_topic(&reply, &hub.ids.id_of(&url)) {
                Some(to) => reply = to,
                None => return tracing::info!("homeassistant: snapshot request refused, not answered: topics.guarded needs a reply topic of two levels or more"),
            }
        }
    }
    let error =
        |code: ErrorCode, message: String| serde_json::to_vec(&ErrorReply::new(code, message)).unwrap_or_default();
    let verdict = lock(rate).check(Some(&reply), Instant::now());
    let body = match verdict {
        ratelimit::Verdict::Allow if payload.len() > limits.max_request_bytes => {
            let message = format!("the request is {} bytes, the limit is {}", payload.len(), limits.max_request_bytes);
            error(ErrorCode::PayloadTooLarge, message)
        }
        ratelimit::Verdict::Allow => match serde_json::from_slice::<SnapshotRequest>(payload) {
            Ok(request) => match snapshots.of_id(hub, &request.source).await {
                Ok(jpeg) => jpeg.bytes.clone(),
                Err(e) => error(e.code, e.message),
            },
            Err(e) => error(ErrorCode::BadRequest, format!("invalid snapshot request: {e}")),
        },
        ratelimit::Verdict::RefuseOnce => {
            error(ErrorCode::RateLimited, "too many requests; wait before asking again".into())
        }
        ratelimit::Verdict::Drop => return,
    };
    if let Err(e) = client.publish(reply, QoS::AtMostOnce, false, body).await {
        tracing::warn!(error = %e, "homeassistant: could not queue a snapshot reply");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_ids_follow_the_discovery_rules() {
        let config = HomeAssistantConfig { enabled: true, ..Default::default() };
        let layout = Layout::new(&config, "video", "mqtt-video-host.1");
        assert_eq!(layout.node_id, "mqtt-video-host_1");
        assert_eq!(layout.config_topic("front_door"), "homeassistant/camera/mqtt-video-host_1/front_door/config");
        assert_eq!(layout.image_topic("front_door"), "video/homeassistant/mqtt-video-host_1/front_door/snapshot");
        assert_eq!(layout.availability_topic(), "video/homeassistant/mqtt-video-host_1/availability");
        let source = NamedSource::new("Front door", "rtsp://u:secret@cam/1", "");
        let d = layout.discovery("front_door", &source, "mqtt-video");
        assert_eq!(d["unique_id"], "mqtt-video-host_1_front_door");
        assert_eq!(d["default_entity_id"], "camera.mqtt_video_host_1_front_door");
        assert_eq!(d["availability"][0]["payload_not_available"], OFFLINE);
        assert!(!d.to_string().contains("secret"), "{d}");
    }

    #[test]
    fn a_failing_camera_is_tried_less_and_less_often() {
        let every = Duration::from_secs(10);
        let waits: Vec<u64> = (0..8).map(|n| retry_after(every, n).as_secs()).collect();
        assert_eq!(waits, [10, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(retry_after(Duration::from_secs(600), 3), Duration::from_secs(600), "never below the period");
        assert_eq!(retry_after(every, u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn settings_are_checked() {
        let on = HomeAssistantConfig { enabled: true, ..Default::default() };
        assert!(on.validate(false).is_ok());
        assert!(HomeAssistantConfig::default().validate(true).is_ok(), "off: nothing to check");
        assert!(on
            .validate(true)
            .unwrap_err()
            .to_string()
            .starts_with("homeassistant.enabled cannot be used with [cluster]"));
        let bad = |c: HomeAssistantConfig| c.validate(false).unwrap_err().to_string();
        assert!(bad(HomeAssistantConfig { discovery_prefix: "home/#".into(), ..on.clone() })
            .starts_with("homeassistant.discovery_prefix"));
        assert_eq!(
            bad(HomeAssistantConfig { snapshot_secs: 0, ..on.clone() }),
            "homeassistant.snapshot_secs must be at least 1"
        );
        assert!(bad(HomeAssistantConfig { node_id: "a b".into(), ..on.clone() }).starts_with("homeassistant.node_id"));
        assert_eq!(on.node_id(""), "mqtt-video");
        assert_eq!(HomeAssistantConfig { node_id: "garage".into(), ..on }.node_id("x"), "garage");
    }
}
