//! Whether the server is fit to serve, for `/healthz` on the gateway and `mqtt-video healthcheck`.

use std::sync::atomic::{AtomicBool, Ordering};

/// Shared liveness facts; the broker session updates them.
#[derive(Debug, Default)]
pub struct Health {
    broker_connected: AtomicBool,
}

impl Health {
    /// Records whether the broker session is up.
    pub fn set_broker_connected(&self, up: bool) {
        self.broker_connected.store(up, Ordering::Relaxed);
    }

    /// Healthy: connected to the broker (without it no page can be served).
    pub fn is_healthy(&self) -> bool {
        self.broker_connected.load(Ordering::Relaxed)
    }

    /// The `/healthz` body.
    pub fn to_json(&self) -> serde_json::Value {
        let up = self.is_healthy();
        serde_json::json!({
            "status": if up { "ok" } else { "unhealthy" },
            "broker": if up { "connected" } else { "disconnected" },
        })
    }
}

/// The status code of an HTTP/1.x response's first line (`HTTP/1.1 200 OK` gives 200).
pub fn http_status(response: &str) -> Option<u16> {
    let line = response.lines().next()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_the_broker() {
        let h = Health::default();
        assert!(!h.is_healthy());
        assert_eq!(h.to_json()["status"], "unhealthy");
        h.set_broker_connected(true);
        assert!(h.is_healthy());
        assert_eq!(h.to_json()["broker"], "connected");
    }

    #[test]
    fn reads_status_lines() {
        assert_eq!(http_status("HTTP/1.1 200 OK\r\ncontent-type: x\r\n\r\n{}"), Some(200));
        assert_eq!(http_status("HTTP/1.0 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(http_status("SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(http_status(""), None);
        assert_eq!(http_status("HTTP/1.1 abc"), None);
    }
}
