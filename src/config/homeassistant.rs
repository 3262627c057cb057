//! `[homeassistant]`: the settings of the Home Assistant integration (`server::homeassistant`).

use super::ConfigError;
use serde::Deserialize;

/// `[homeassistant]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HomeAssistantConfig {
    /// Publish discovery, availability and snapshots.
    pub enabled: bool,
    /// Home Assistant's discovery prefix (its MQTT integration's setting).
    pub discovery_prefix: String,
    /// Seconds between snapshot refreshes.
    pub snapshot_secs: u64,
    /// This server's id in topics and unique ids (`[a-zA-Z0-9_-]`); empty: from `broker.client_id`.
    pub node_id: String,
    /// The device Home Assistant shows the cameras under.
    pub device_name: String,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            discovery_prefix: "homeassistant".into(),
            snapshot_secs: 10,
            node_id: String::new(),
            device_name: "mqtt-video".into(),
        }
    }
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: format!("homeassistant.{key}"), message: message.into() }
}

/// Whether `id` is a Home Assistant discovery id: `[a-zA-Z0-9_-]`, not empty.
fn is_discovery_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl HomeAssistantConfig {
    /// Checks what the types alone do not; `cluster` is `[cluster] enabled`.
    pub fn validate(&self, cluster: bool) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if cluster {
            return Err(invalid(
                "enabled",
                "cannot be used with [cluster] enabled yet: every instance would publish the same cameras",
            ));
        }
        mqtt_video_wire::protocol::validate_prefix(&self.discovery_prefix)
            .map_err(|e| invalid("discovery_prefix", e.to_string()))?;
        if self.snapshot_secs == 0 {
            return Err(invalid("snapshot_secs", "must be at least 1"));
        }
        if !self.node_id.is_empty() && !is_discovery_id(&self.node_id) {
            return Err(invalid("node_id", "may hold only letters, digits, `_` and `-`"));
        }
        Ok(())
    }

    /// The node id: the configured one, else the broker client id with other characters made `_`.
    pub fn node_id(&self, client_id: &str) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        let id: String =
            client_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        if id.is_empty() {
            "mqtt-video".into()
        } else {
            id
        }
    }
}
