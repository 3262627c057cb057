//! Several `serve` instances on one broker (`[cluster] enabled = true`): every instance receives every
//! request, and exactly one handles it. Instances announce themselves, and the streams they run, on the
//! retained `<prefix>/instances/<id>` (emptied by their last will). The owner of a URL is the instance that
//! already runs it, else the one chosen by rendezvous hashing over the live instances, so describe and play
//! of one URL land on one instance and a new instance does not take running streams from the others.
//! MQTT v5 shared subscriptions were not used: they spread requests without regard to the URL, so a play
//! could start a second copy of a stream on another instance, and a stop could miss the viewer's instance.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// 64-bit FNV-1a: stable across builds and platforms (unlike std's hasher), so every instance agrees.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The key of a URL in announcements: a hash, so that no URL (and no password in one) is published.
pub fn url_key(url: &str) -> u64 {
    fnv1a64(url.as_bytes())
}

/// What an instance announces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The instance (its MQTT client id).
    pub id: String,
    /// [`url_key`] of every stream it runs.
    pub streams: Vec<u64>,
}

/// The instances this one knows about, itself included.
#[derive(Debug, Clone, Default)]
pub struct Members {
    me: String,
    others: BTreeMap<String, Vec<u64>>,
    mine: Vec<u64>,
}

impl Members {
    /// Just this instance.
    pub fn new(me: &str) -> Self {
        Self { me: me.to_string(), others: BTreeMap::new(), mine: Vec::new() }
    }

    /// This instance's id.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Records another instance's retained announcement; an empty payload (its will, or a clean shutdown)
    /// removes it. Returns whether the set of instances changed.
    pub fn update(&mut self, id: &str, payload: &[u8]) -> bool {
        if id == self.me {
            return false;
        }
        if payload.is_empty() {
            return self.others.remove(id).is_some();
        }
        match serde_json::from_slice::<Announcement>(payload) {
            Ok(a) if a.id == id => self.others.insert(id.to_string(), a.streams).is_none(),
            // Not an announcement of ours (or a forged one naming another id): ignore it.
            _ => false,
        }
    }

    /// Sets the streams this instance runs; its announcement.
    pub fn set_mine(&mut self, streams: Vec<u64>) -> Announcement {
        self.mine = streams;
        self.mine.sort_unstable();
        self.mine.dedup();
        Announcement { id: self.me.clone(), streams: self.mine.clone() }
    }

    /// Instances, this one included.
    pub fn count(&self) -> usize {
        self.others.len() + 1
    }

    /// The instance that handles requests about `key` (a [`url_key`], or the hash of a reply topic for
    /// requests without a usable URL): one that runs it (the smallest id, if several), else the highest
    /// rendezvous score `fnv1a64(id, key)`.
    pub fn owner(&self, key: u64) -> &str {
        let runs = |s: &Vec<u64>| s.contains(&key);
        let mut running: Vec<&str> = self.others.iter().filter(|(_, s)| runs(s)).map(|(id, _)| id.as_str()).collect();
        if runs(&self.mine) {
            running.push(&self.me);
        }
        if let Some(first) = running.into_iter().min() {
            return first;
        }
        let score = |id: &str| {
            let mut bytes = id.as_bytes().to_vec();
            bytes.push(0);
            bytes.extend_from_slice(&key.to_be_bytes());
            (fnv1a64(&bytes), id.to_string())
        };
        self.others.keys().map(String::as_str).chain([self.me.as_str()]).max_by_key(|id| score(id)).unwrap_or(&self.me)
    }

    /// Whether this instance handles `key`.
    pub fn is_mine(&self, key: u64) -> bool {
        self.owner(key) == self.me
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announce(id: &str, streams: &[u64]) -> Vec<u8> {
        serde_json::to_vec(&Announcement { id: id.into(), streams: streams.to_vec() }).unwrap()
    }

    #[test]
    fn fnv_is_the_published_function() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn every_instance_agrees_and_the_keys_spread() {
        let ids = ["srv-a", "srv-b", "srv-c"];
        let views: Vec<Members> = ids
            .iter()
            .map(|me| {
                let mut m = Members::new(me);
                for other in ids.iter().filter(|o| *o != me) {
                    assert!(m.update(other, &announce(other, &[])));
                }
                m
            })
            .collect();
        let mut per_owner = BTreeMap::new();
        for k in 0..300u64 {
            let key = url_key(&format!("rtsp://cam/{k}"));
            let owners: Vec<&str> = views.iter().map(|m| m.owner(key)).collect();
            assert!(owners.windows(2).all(|w| w[0] == w[1]), "{owners:?}");
            assert_eq!(views.iter().filter(|m| m.is_mine(key)).count(), 1);
            *per_owner.entry(owners[0].to_string()).or_insert(0) += 1;
        }
        assert_eq!(per_owner.len(), 3);
        assert!(per_owner.values().all(|n| *n > 60), "{per_owner:?}");
    }

    #[test]
    fn running_streams_stay_where_they_are() {
        let key = url_key("rtsp://cam/1");
        let mut a = Members::new("a");
        a.set_mine(vec![key]);
        let mut b = Members::new("b");
        b.update("a", &announce("a", &[key]));
        // Whatever rendezvous says, the instance that runs the stream keeps it.
        assert_eq!(a.owner(key), "a");
        assert_eq!(b.owner(key), "a");
        // When a goes away, b takes over.
        assert!(b.update("a", b""));
        assert_eq!(b.owner(key), "b");
        assert_eq!(b.count(), 1);
    }

    #[test]
    fn forged_or_own_announcements_are_ignored() {
        let mut m = Members::new("me");
        assert!(!m.update("me", &announce("me", &[1])));
        assert!(!m.update("x", &announce("y", &[1])));
        assert!(!m.update("x", b"not json"));
        assert_eq!(m.count(), 1);
        assert_eq!(m.owner(1), "me");
    }
}
