//! Request rate limits. MQTT 3.1.1 does not tell the server who published a request, so a requester is
//! known by its reply topic's parent (`pages/<client id>` for `pages/<client id>/media`): with the broker's
//! ACL giving each client its own `pages/<client id>/` (docker/mosquitto.acl), that is one client. A total
//! per-second cap bounds what many made-up reply topics can cost.

use std::collections::HashMap;
use std::time::Instant;

/// Most requesters remembered; idle ones (a full bucket) are forgotten first.
const MAX_REQUESTERS: usize = 20_000;

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it.
    Allow,
    /// Refuse it with `rate_limited`: the first refusal of a requester since it was last allowed.
    RefuseOnce,
    /// Drop it silently: already told, or the total cap (answering a flood would feed it).
    Drop,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    told: bool,
}

/// Token buckets per requester plus one for everything.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    per_second_total: u32,
    requesters: HashMap<String, Bucket>,
    total: Bucket,
}

/// The requester a reply topic stands for: its parent topic, or the topic itself at the top level.
pub fn requester(reply_topic: &str) -> &str {
    reply_topic.rsplit_once('/').map_or(reply_topic, |(parent, _)| parent)
}

impl RateLimiter {
    /// `per_minute` requests per requester (burst: a quarter of it, at least 5) and `per_second_total` in all;
    /// 0 turns a limit off.
    pub fn new(per_minute: u32, per_second_total: u32, now: Instant) -> Self {
        Self {
            per_minute,
            per_second_total,
            requesters: HashMap::new(),
            total: Bucket { tokens: f64::from(per_second_total), at: now, told: false },
        }
    }

    /// Requests a minute one requester may send (0: no limit).
    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    fn burst(&self) -> f64 {
        f64::from((self.per_minute / 4).max(5))
    }

    /// Decides about one request from `reply_topic` (or, when it has none that can be read, `None`).
    pub fn check(&mut self, reply_topic: Option<&str>, now: Instant) -> Verdict {
        if self.per_second_total > 0 {
            let cap = f64::from(self.per_second_total);
            let t = &mut self.total;
            t.tokens = (t.tokens + now.duration_since(t.at).as_secs_f64() * cap).min(cap);
            t.at = now;
            if t.tokens < 1.0 {
                return Verdict::Drop;
            }
            t.tokens -= 1.0;
        }
        let (Some(topic), true) = (reply_topic, self.per_minute > 0) else { return Verdict::Allow };
        let key = requester(topic);
        let burst = self.burst();
        let rate = f64::from(self.per_minute) / 60.0;
        if !self.requesters.contains_key(key) && self.requesters.len() >= MAX_REQUESTERS {
            self.forget_idle(now);
            if self.requesters.len() >= MAX_REQUESTERS {
                return Verdict::Drop;
            }
        }
        let b = self.requesters.entry(key.to_string()).or_insert(Bucket { tokens: burst, at: now, told: false });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            b.told = false;
            Verdict::Allow
        } else if b.told {
            Verdict::Drop
        } else {
            b.told = true;
            Verdict::RefuseOnce
        }
    }

    /// Forgets requesters whose bucket has refilled: they are indistinguishable from new ones.
    pub fn forget_idle(&mut self, now: Instant) {
        let (burst, rate) = (self.burst(), f64::from(self.per_minute) / 60.0);
        self.requesters.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
    }

    /// Requesters remembered (for tests and stats).
    pub fn len(&self) -> usize {
        self.requesters.len()
    }

    /// Whether no requester is remembered.
    pub fn is_empty(&self) -> bool {
        self.requesters.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn requesters_are_reply_topic_parents() {
        assert_eq!(requester("pages/page_ab/media"), "pages/page_ab");
        assert_eq!(requester("pages/page_ab/info"), "pages/page_ab");
        assert_eq!(requester("solo"), "solo");
    }

    #[test]
    fn a_requester_gets_its_burst_then_one_refusal_then_silence_then_refills() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(60, 0, t0);
        for _ in 0..15 {
            assert_eq!(r.check(Some("pages/a/media"), t0), Verdict::Allow);
        }
        assert_eq!(r.check(Some("pages/a/info"), t0), Verdict::RefuseOnce);
        assert_eq!(r.check(Some("pages/a/media"), t0), Verdict::Drop);
        // Another requester is not affected.
        assert_eq!(r.check(Some("pages/b/media"), t0), Verdict::Allow);
        // One token per second at 60 a minute.
        assert_eq!(r.check(Some("pages/a/media"), t0 + Duration::from_millis(1100)), Verdict::Allow);
        assert_eq!(r.check(Some("pages/a/media"), t0 + Duration::from_millis(1200)), Verdict::RefuseOnce);
        // Without a reply topic only the total cap applies.
        assert_eq!(r.check(None, t0), Verdict::Allow);
    }

    #[test]
    fn the_total_cap_drops_without_answering() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(0, 10, t0);
        for i in 0..10 {
            assert_eq!(r.check(Some(&format!("x{i}/m")), t0), Verdict::Allow);
        }
        assert_eq!(r.check(Some("y/m"), t0), Verdict::Drop);
        assert_eq!(r.check(Some("y/m"), t0 + Duration::from_millis(150)), Verdict::Allow);
    }

    #[test]
    fn idle_requesters_are_forgotten_and_memory_is_bounded() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(60, 0, t0);
        r.check(Some("pages/a/m"), t0);
        assert_eq!(r.len(), 1);
        r.forget_idle(t0 + Duration::from_secs(2));
        assert!(r.is_empty());
        for i in 0..MAX_REQUESTERS + 10 {
            r.check(Some(&format!("p{i}/m")), t0);
        }
        assert_eq!(r.len(), MAX_REQUESTERS);
        // Once they are idle, new requesters take their place.
        assert_eq!(r.check(Some("late/m"), t0 + Duration::from_secs(60)), Verdict::Allow);
        assert!(r.len() <= MAX_REQUESTERS);
    }
}
