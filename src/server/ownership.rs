//! Who handles a request in a pool of instances (`[cluster]`): this instance's announcement, the others'
//! comings and goings, and the owner of a request's URL.

use super::{cluster, lock, Hub};
use mqtt_video_wire::protocol::{ProtocolError, Request, RequestKind};
use rumqttc::QoS;

impl Hub {
    /// In a cluster, whether this instance handles the request: the owner of its URL (as the allow-list
    /// maps it), or for a request without a usable URL the owner of its reply topic. Every instance handles
    /// stops (only the one with the viewer acts), and renewals of its own viewers.
    pub(super) fn is_mine(
        &self,
        kind: RequestKind,
        payload: &[u8],
        parsed: &Result<Request, ProtocolError>,
        reply_topic: Option<&str>,
    ) -> bool {
        let Some(members) = &self.members else { return true };
        if kind == RequestKind::Stop {
            return true;
        }
        let request = parsed.as_ref().ok();
        if request.is_some_and(|r| lock(&self.viewers).contains_key(r.reply_topic())) {
            return true;
        }
        let key = match request.and_then(Request::url).map(|u| self.allow(u)) {
            Some(Ok(url)) => cluster::url_key(&url),
            _ => cluster::fnv1a64(reply_topic.map_or(payload, str::as_bytes)),
        };
        lock(members).is_mine(key)
    }

    /// Publishes this instance's announcement (retained) with the streams it runs.
    pub(super) fn announce(&self) {
        let Some(members) = &self.members else { return };
        let keys = lock(&self.streams).values().filter(|s| s.is_alive()).map(|s| cluster::url_key(&s.url)).collect();
        let (topic, announcement) = {
            let mut m = lock(members);
            (self.topics.instance(m.me()), m.set_mine(keys))
        };
        match serde_json::to_vec(&announcement) {
            Ok(json) => {
                if let Err(e) = self.client.try_publish(topic, QoS::AtLeastOnce, true, json) {
                    tracing::warn!(error = %e, "could not queue the cluster announcement");
                }
            }
            Err(e) => tracing::error!(error = %e, "could not serialise the cluster announcement"),
        }
    }

    /// Another instance announced itself (or left).
    pub(super) fn instance_event(&self, id: &str, payload: &[u8]) {
        let Some(members) = &self.members else { return };
        let mut m = lock(members);
        if m.update(id, payload) {
            tracing::info!(
                instance = id,
                instances = m.count(),
                joined = !payload.is_empty(),
                "cluster membership changed"
            );
        }
    }
}
