//! A stream's id names its topics (`<prefix>/live/<id>/...`, protocol v2). For a named source it is the slug
//! of its name, stable and readable, so that a broker ACL can say who may watch which camera
//! (`"Front door"` -> `front-door`); for a pushed source `ingest-<name>`; for any other allowed URL an
//! opaque id, an HMAC of the URL under a key made at start, which reveals neither the URL nor its password.

use crate::config::ingest::IngestEndpoint;
use mqtt_video_wire::policy::NamedSource;
use ring::hmac;
use std::collections::HashMap;

/// Longest slug.
const MAX_SLUG: usize = 48;

/// The ids of a server's streams.
pub struct StreamIds {
    named: HashMap<String, String>,
    key: hmac::Key,
    /// For [`StreamIds::requester_key`]: random, or derived from a secret the instances of a pool share.
    requesters: hmac::Key,
}

/// `name` in lower-case letters, digits and dashes (never empty).
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.trim().chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.len() >= MAX_SLUG {
            break;
        }
    }
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "source".into()
    } else {
        out
    }
}

impl StreamIds {
    /// Ids for the named sources and ingest endpoints; two names with one slug get `-2`, `-3`, ...
    pub fn new(sources: &[NamedSource], ingest: &[IngestEndpoint]) -> Self {
        let mut named = HashMap::new();
        let mut taken: Vec<String> = Vec::new();
        let named_urls = sources.iter().map(|s| (s.url.trim().to_string(), slug(&s.name)));
        let ingest_urls = ingest.iter().map(|e| (e.url(), format!("ingest-{}", slug(&e.name))));
        for (url, base) in named_urls.chain(ingest_urls) {
            if named.contains_key(&url) {
                continue;
            }
            let mut id = base.clone();
            let mut n = 2;
            while taken.contains(&id) {
                id = format!("{base}-{n}");
                n += 1;
            }
            taken.push(id.clone());
            named.insert(url, id);
        }
        let rng = ring::rand::SystemRandom::new();
        // A fixed key only if the system has no randomness at all; ids then stay opaque, just guessable.
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, b"mqtt-video"));
        let requesters = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, b"mqtt-video requesters"));
        Self { named, key, requesters }
    }

    /// Requester keys derived from `secret` (the server's broker password): the same after a restart and
    /// on every instance of a pool, so a page's guarded place does not move under it; unknown without the
    /// secret. `None` keeps the random key.
    pub fn with_requester_secret(mut self, secret: Option<&str>) -> Self {
        if let Some(secret) = secret.filter(|s| !s.is_empty()) {
            let mut seed = b"mqtt-video requester keys\0".to_vec();
            seed.extend_from_slice(secret.as_bytes());
            let derived = ring::digest::digest(&ring::digest::SHA256, &seed);
            self.requesters = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
        }
        self
    }

    /// The id of the stream of an allowed URL (as the policy returned it).
    pub fn id_of(&self, url: &str) -> String {
        if let Some(id) = self.named.get(url.trim()) {
            return id.clone();
        }
        let tag = hmac::sign(&self.key, url.trim().as_bytes());
        let hex: String = tag.as_ref()[..10].iter().map(|b| format!("{b:02x}")).collect();
        format!("u{hex}")
    }

    /// The opaque key of a requester (a reply topic's parent) that names its guarded place under a stream's
    /// topics (`topics.guarded`): stable while the server runs, and no one can tell the requester from it,
    /// so a viewer of the same camera who sees the topic cannot learn (and stop) another viewer's reply topic.
    pub fn requester_key(&self, requester: &str) -> String {
        let mut message = b"requester\0".to_vec();
        message.extend_from_slice(requester.as_bytes());
        let tag = hmac::sign(&self.requesters, &message);
        tag.as_ref()[..10].iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_readable_and_safe_in_topics() {
        assert_eq!(slug("Front door"), "front-door");
        assert_eq!(slug("  Garage / Nord (2)  "), "garage-nord-2");
        assert_eq!(slug("Caméra #1"), "cam-ra-1");
        assert_eq!(slug("+/#"), "source");
        assert!(slug(&"x".repeat(100)).len() <= MAX_SLUG);
    }

    #[test]
    fn named_sources_get_their_slug_and_other_urls_an_opaque_id() {
        let sources = [
            NamedSource::new("Front door", "rtsp://viewer:secret@192.0.2.1/1", ""),
            NamedSource::new("front  DOOR", "rtsp://192.0.2.2/1", ""),
        ];
        let ids = StreamIds::new(&sources, &[]);
        assert_eq!(ids.id_of("rtsp://viewer:secret@192.0.2.1/1"), "front-door");
        assert_eq!(ids.id_of("rtsp://192.0.2.2/1"), "front-door-2");
        let opaque = ids.id_of("rtsp://user:pw@cams.example.net/back");
        assert!(opaque.starts_with('u') && opaque.len() == 21, "{opaque}");
        assert!(!opaque.contains("pw") && !opaque.contains("cams"));
        assert_eq!(opaque, ids.id_of("rtsp://user:pw@cams.example.net/back"), "stable while the server runs");
        assert_ne!(opaque, StreamIds::new(&sources, &[]).id_of("rtsp://user:pw@cams.example.net/back"), "keyed");
    }

    #[test]
    fn requester_keys_are_opaque_stable_and_distinct() {
        let ids = StreamIds::new(&[], &[]);
        let key = ids.requester_key("pages/page_ab12");
        assert_eq!(key.len(), 20);
        assert!(key.chars().all(|c| c.is_ascii_hexdigit()) && !key.contains("page"), "{key}");
        assert_eq!(key, ids.requester_key("pages/page_ab12"), "stable while the server runs");
        assert_ne!(key, ids.requester_key("pages/page_ab13"));
        assert_ne!(key, StreamIds::new(&[], &[]).requester_key("pages/page_ab12"), "keyed per server run");
        let shared = |secret| StreamIds::new(&[], &[]).with_requester_secret(secret).requester_key("pages/page_ab12");
        assert_eq!(shared(Some("pw")), shared(Some("pw")), "one secret, one key: across restarts and a pool");
        assert_ne!(shared(Some("pw")), shared(Some("other")));
        assert_ne!(shared(None), shared(None), "no secret: random per run");
        assert_ne!(shared(Some("")), shared(Some("")), "an empty secret is none");
        // Not the URL id of the same text: the two keyed hashes are kept apart.
        assert_ne!(format!("u{key}"), ids.id_of("pages/page_ab12"));
    }
}
