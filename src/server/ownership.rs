//! Who handles a request in a pool of instances (`[cluster]`): this instance's announcement, the others'
//! comings and goings, and the owner of a request's URL.

use super::intake::Ownership;
use super::{cluster, lock, Hub};
use mqtt_video_wire::protocol::{ProtocolError, Request};
use rumqttc::QoS;

impl Hub {
    /// Who handles the request, as far as a pool of instances goes (`intake::mine` decides): in a pool, whether
    /// its reply topic is a viewer here, and whether this instance owns its key: its URL as the allow-list
    /// maps it, or for a request without a usable URL its reply topic.
    pub(super) fn ownership(
        &self,
        payload: &[u8],
        parsed: &Result<Request, ProtocolError>,
        reply_topic: Option<&str>,
    ) -> Ownership {
        let Some(members) = &self.members else { return Ownership::Alone };
        let request = parsed.as_ref().ok();
        let known_viewer = request.is_some_and(|r| lock(&self.viewers).contains_key(r.reply_topic()));
        let key = match request.and_then(Request::url).map(|u| self.allow(u)) {
            Some(Ok(url)) => cluster::url_key(&url),
            _ => cluster::fnv1a64(reply_topic.map_or(payload, str::as_bytes)),
        };
        Ownership::Pool { known_viewer, owns_key: lock(members).is_mine(key) }
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
