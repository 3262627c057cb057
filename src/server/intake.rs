//! What the hub does with a request, decided from its state and `now`, with no MQTT, no tokio and no clock of
//! its own: who in a pool handles it, the rate limits, a requester's share of viewers and of streams. The
//! hub reads the clock and its state, asks here, and carries the answer out (src/server/requests.rs).
//!
//! The hub decides one request at a time, in the order the broker delivered them, and records what a
//! decision admits in the same step (under the lock the decision read), so that two requests can neither
//! pass a cap together nor be applied out of order (docs/design.md, "Requests in order").

use crate::config::LimitsConfig;
use mqtt_video_wire::protocol::{ErrorCode, RequestKind};
use mqtt_video_wire::ratelimit::{self, RateLimiter, Verdict};
use std::collections::HashMap;
use std::time::Instant;

/// Who handles a request, as far as a pool of instances (`[cluster]`) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// No pool: this instance handles everything.
    Alone,
    /// In a pool.
    Pool {
        /// The request's reply topic is a viewer of this instance (a renewal, or a play that moves it).
        known_viewer: bool,
        /// This instance owns the request's key (its URL as allowed, or its reply topic).
        owns_key: bool,
    },
}

/// What to do with a request as it arrives, before its content is acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// Another instance of the pool handles it: ignore it.
    NotMine,
    /// Over the rate limits with nobody to tell (told already, no reply topic, or the total cap): drop it.
    Drop,
    /// Over its requester's rate limit for the first time since it was last allowed: answer on `reply_topic`.
    Refuse {
        /// Where the refusal goes.
        reply_topic: String,
        /// What it says.
        refusal: Refusal,
    },
    /// Go on with it.
    Handle,
}

/// Why a request is refused; the text is the message the requester gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The requester sent more requests than `limits.requests_per_minute`.
    #[error("more than {per_minute} requests a minute from {requester}; wait before asking again")]
    RateLimited {
        /// The requester (a reply topic's parent).
        requester: String,
        /// The limit.
        per_minute: u32,
    },
    /// The reply topic lies inside another viewer's, or holds one: it would receive that viewer's media.
    #[error("the reply topic is nested in another viewer's reply topic (or contains one)")]
    Nested,
    /// The requester has its `limits.max_viewers_per_requester` viewers.
    #[error("{requester} already plays {theirs} streams, the most one page may; stop one first")]
    RequesterViewers {
        /// The requester.
        requester: String,
        /// How many viewers it has.
        theirs: usize,
    },
    /// The server runs its `limits.max_streams` streams.
    #[error("the server already runs its maximum of {running} streams")]
    Streams {
        /// How many run.
        running: usize,
    },
    /// The requester started `limits.max_streams_per_requester` streams that still run.
    #[error(
        "{requester} already started {theirs} streams that still run, the most one page may; wait for them to \
         stop ({linger_secs} s after their last viewer)"
    )]
    RequesterStreams {
        /// The requester.
        requester: String,
        /// How many of the running streams it started.
        theirs: usize,
        /// `limits.linger_secs`, for the message.
        linger_secs: u64,
    },
}

impl Refusal {
    /// The protocol's error code for it.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::RateLimited { .. } => ErrorCode::RateLimited,
            Refusal::Nested => ErrorCode::BadReplyTopic,
            Refusal::RequesterViewers { .. } | Refusal::Streams { .. } | Refusal::RequesterStreams { .. } => {
                ErrorCode::Overloaded
            }
        }
    }

    /// Whether the requester is told: a nested reply topic is not, since its status topic would lie in
    /// another viewer's subscription.
    pub fn answered(&self) -> bool {
        !matches!(self, Refusal::Nested)
    }
}

/// Whether this instance handles a request of `kind`: alone, always; in a pool, the owner of its key, and
/// every instance for stops (only the one with the viewer acts) and for renewals of its own viewers.
pub fn mine(kind: RequestKind, ownership: Ownership) -> bool {
    match ownership {
        Ownership::Alone => true,
        Ownership::Pool { known_viewer, owns_key } => kind == RequestKind::Stop || known_viewer || owns_key,
    }
}

/// Decides about a request of `kind` arriving at `now` with `reply_topic` (`None`: none could be read),
/// owned as `ownership`, against the rate limits in `rate`. Stops count toward the total only: dropping one
/// would leave a viewer playing to nobody.
pub fn arrive(
    kind: RequestKind,
    reply_topic: Option<&str>,
    ownership: Ownership,
    rate: &mut RateLimiter,
    now: Instant,
) -> Arrival {
    if !mine(kind, ownership) {
        return Arrival::NotMine;
    }
    let key = reply_topic.filter(|_| kind != RequestKind::Stop);
    match (rate.check(key, now), key) {
        (Verdict::Allow, _) => Arrival::Handle,
        (Verdict::RefuseOnce, Some(topic)) => Arrival::Refuse {
            reply_topic: topic.to_string(),
            refusal: Refusal::RateLimited {
                requester: ratelimit::requester(topic).to_string(),
                per_minute: rate.per_minute(),
            },
        },
        _ => Arrival::Drop,
    }
}

/// Whether `reply_topic` is nested in another viewer's reply topic, or holds one (`viewers` maps the
/// viewers' reply topics to their streams' URLs).
pub fn nested(viewers: &HashMap<String, String>, reply_topic: &str) -> bool {
    viewers.keys().any(|other| other != reply_topic && (is_under(reply_topic, other) || is_under(other, reply_topic)))
}

/// Whether `topic` lies under `parent` (`parent/...`).
fn is_under(topic: &str, parent: &str) -> bool {
    topic.strip_prefix(parent).is_some_and(|rest| rest.starts_with('/'))
}

/// What a play that may go on is, to the hub's viewers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// Its reply topic is a viewer already (a renewal, or a move to another stream or rendition): its
    /// requester's share is not asked again.
    Known,
    /// A new viewer, within its requester's share.
    New,
}

/// Whether a play on `reply_topic` may go on, given the hub's `viewers` (reply topic to URL): not nested in
/// another viewer, and a new viewer only within its requester's `limits.max_viewers_per_requester`. The
/// caller records the viewer under the same lock it read `viewers` under.
pub fn play(viewers: &HashMap<String, String>, reply_topic: &str, limits: &LimitsConfig) -> Result<Join, Refusal> {
    if nested(viewers, reply_topic) {
        return Err(Refusal::Nested);
    }
    if viewers.contains_key(reply_topic) {
        return Ok(Join::Known);
    }
    let requester = ratelimit::requester(reply_topic);
    let theirs = viewers.keys().filter(|t| ratelimit::requester(t) == requester).count();
    if theirs >= limits.max_viewers_per_requester {
        return Err(Refusal::RequesterViewers { requester: requester.to_string(), theirs });
    }
    Ok(Join::New)
}

/// Whether a new stream may start for `starter` (`None`: for the server itself), given who started each of
/// the streams that run (`running`): within `limits.max_streams`, and within the starter's
/// `limits.max_streams_per_requester`. The caller adds the stream under the same lock it read `running` under.
pub fn start<'a>(
    running: impl IntoIterator<Item = Option<&'a str>>,
    starter: Option<&str>,
    limits: &LimitsConfig,
) -> Result<(), Refusal> {
    let running: Vec<Option<&str>> = running.into_iter().collect();
    if running.len() >= limits.max_streams {
        return Err(Refusal::Streams { running: running.len() });
    }
    if let Some(who) = starter {
        let theirs = running.iter().filter(|s| **s == Some(who)).count();
        if theirs >= limits.max_streams_per_requester {
            return Err(Refusal::RequesterStreams {
                requester: who.to_string(),
                theirs,
                linger_secs: limits.linger_secs,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> LimitsConfig {
        LimitsConfig {
            max_viewers_per_requester: 2,
            max_streams: 3,
            max_streams_per_requester: 2,
            requests_per_minute: 20,
            requests_per_second: 0,
            ..LimitsConfig::default()
        }
    }

    fn viewers(topics: &[&str]) -> HashMap<String, String> {
        topics.iter().map(|t| (t.to_string(), "rtsp://cam/1".to_string())).collect()
    }

    const ALONE: Ownership = Ownership::Alone;
    const THEIRS: Ownership = Ownership::Pool { known_viewer: false, owns_key: false };
    const OURS: Ownership = Ownership::Pool { known_viewer: false, owns_key: true };
    const OUR_VIEWER: Ownership = Ownership::Pool { known_viewer: true, owns_key: false };

    #[test]
    fn ownership_in_a_pool() {
        use RequestKind::{Describe, Play, Stop};
        let table = [
            (Describe, ALONE, true),
            (Play, ALONE, true),
            (Play, THEIRS, false),
            (Describe, THEIRS, false),
            (Play, OURS, true),
            (Play, OUR_VIEWER, true),
            (Stop, THEIRS, true),
        ];
        for (kind, ownership, expected) in table {
            assert_eq!(mine(kind, ownership), expected, "{kind:?} {ownership:?}");
        }
    }

    #[test]
    fn arrivals_over_time() {
        use RequestKind::{Describe, Play, Stop};
        let t0 = Instant::now();
        let refused = |topic: &str, requester: &str| Arrival::Refuse {
            reply_topic: topic.into(),
            refusal: Refusal::RateLimited { requester: requester.into(), per_minute: 20 },
        };
        // 20 a minute: a burst of 5, then one every 3 s.
        let mut rate = RateLimiter::new(20, 0, t0);
        let table: Vec<(u64, RequestKind, Option<&str>, Ownership, Arrival)> = vec![
            (0, Play, Some("pages/a/v0"), THEIRS, Arrival::NotMine),
            (0, Describe, Some("pages/a/d"), ALONE, Arrival::Handle),
            (0, Play, Some("pages/a/v0"), ALONE, Arrival::Handle),
            (0, Play, Some("pages/a/v1"), OURS, Arrival::Handle),
            (0, Play, Some("pages/a/v2"), OUR_VIEWER, Arrival::Handle),
            (0, Play, Some("pages/a/v3"), ALONE, Arrival::Handle),
            (0, Play, Some("pages/a/v4"), ALONE, refused("pages/a/v4", "pages/a")),
            (0, Play, Some("pages/a/v4"), ALONE, Arrival::Drop),
            // Stops are not limited per requester, and another requester has its own budget.
            (0, Stop, Some("pages/a/v0"), ALONE, Arrival::Handle),
            (0, Play, Some("pages/b/v0"), ALONE, Arrival::Handle),
            // Without a reply topic only the total applies (off here).
            (0, Describe, None, ALONE, Arrival::Handle),
            (1000, Describe, Some("pages/a/d"), ALONE, Arrival::Drop),
            (3100, Describe, Some("pages/a/d"), ALONE, Arrival::Handle),
            (3200, Describe, Some("pages/a/d"), ALONE, refused("pages/a/d", "pages/a")),
        ];
        for (i, (at_ms, kind, topic, ownership, expected)) in table.into_iter().enumerate() {
            let now = t0 + Duration::from_millis(at_ms);
            assert_eq!(arrive(kind, topic, ownership, &mut rate, now), expected, "row {i}");
        }
    }

    #[test]
    fn the_total_cap_drops_stops_too() {
        let t0 = Instant::now();
        let mut rate = RateLimiter::new(0, 2, t0);
        let arrivals: Vec<Arrival> = ["a/x", "b/x", "c/x"]
            .into_iter()
            .map(|t| arrive(RequestKind::Stop, Some(t), ALONE, &mut rate, t0))
            .collect();
        assert_eq!(arrivals, [Arrival::Handle, Arrival::Handle, Arrival::Drop]);
    }

    #[test]
    fn nesting() {
        let table = [
            (&["pages/a/v0"][..], "pages/a/v0", false),
            (&["pages/a/v0"][..], "pages/a/v1", false),
            (&["pages/a/v0"][..], "pages/a/v0/x", true),
            (&["pages/a/v0"][..], "pages/a", true),
            (&["pages/a/v0"][..], "pages/a/v0x", false),
            (&["pages/a/v0x"][..], "pages/a/v0", false),
            (&[][..], "pages", false),
        ];
        for (held, topic, expected) in table {
            assert_eq!(nested(&viewers(held), topic), expected, "{topic} beside {held:?}");
        }
    }

    #[test]
    fn plays_within_the_share() {
        let requester_full = |theirs| Err(Refusal::RequesterViewers { requester: "pages/a".into(), theirs });
        let table: Vec<(&[&str], &str, Result<Join, Refusal>)> = vec![
            (&[], "pages/a/v0", Ok(Join::New)),
            (&["pages/a/v0"], "pages/a/v1", Ok(Join::New)),
            (&["pages/a/v0", "pages/a/v1"], "pages/a/v2", requester_full(2)),
            // A renewal, or a move of a viewer it has, does not ask the share again.
            (&["pages/a/v0", "pages/a/v1"], "pages/a/v1", Ok(Join::Known)),
            // Other requesters' viewers do not count, top-level topics are their own requester.
            (&["pages/b/v0", "pages/b/v1", "pages/ab/v0"], "pages/a/v0", Ok(Join::New)),
            (&["solo"], "other", Ok(Join::New)),
            (&["pages/a/v0"], "pages/a/v0/deeper", Err(Refusal::Nested)),
        ];
        for (held, topic, expected) in table {
            assert_eq!(play(&viewers(held), topic, &limits()), expected, "{topic} beside {held:?}");
        }
    }

    #[test]
    fn a_burst_of_plays_decided_in_turn_gets_exactly_the_share() {
        // What the hub does: decide, and record what was admitted before the next decision.
        let mut held = HashMap::new();
        let mut admitted = 0;
        for i in 0..24 {
            let topic = format!("pages/a/v{i}");
            if play(&held, &topic, &limits()).is_ok() {
                held.insert(topic, format!("rtsp://cam/{i}"));
                admitted += 1;
            }
        }
        assert_eq!(admitted, limits().max_viewers_per_requester);
    }

    #[test]
    fn streams_within_the_limits() {
        let a = Some("pages/a");
        type Row<'a> = (Vec<Option<&'a str>>, Option<&'a str>, Result<(), Refusal>);
        let table: Vec<Row> = vec![
            (vec![], a, Ok(())),
            (vec![a], a, Ok(())),
            (vec![a, a], a, Err(Refusal::RequesterStreams { requester: "pages/a".into(), theirs: 2, linger_secs: 10 })),
            (vec![a, a], Some("pages/b"), Ok(())),
            // The server itself (a snapshot) has no share, only the total.
            (vec![a, a], None, Ok(())),
            (vec![a, None, Some("pages/b")], None, Err(Refusal::Streams { running: 3 })),
            (vec![a, None, Some("pages/b")], Some("pages/c"), Err(Refusal::Streams { running: 3 })),
        ];
        for (running, starter, expected) in table {
            assert_eq!(start(running.clone(), starter, &limits()), expected, "{starter:?} beside {running:?}");
        }
    }

    #[test]
    fn refusals_have_their_codes_and_messages() {
        let table = [
            (
                Refusal::RateLimited { requester: "pages/a".into(), per_minute: 20 },
                ErrorCode::RateLimited,
                "more than 20 requests a minute from pages/a; wait before asking again",
            ),
            (
                Refusal::RequesterViewers { requester: "pages/a".into(), theirs: 8 },
                ErrorCode::Overloaded,
                "pages/a already plays 8 streams, the most one page may; stop one first",
            ),
            (
                Refusal::Streams { running: 16 },
                ErrorCode::Overloaded,
                "the server already runs its maximum of 16 streams",
            ),
            (
                Refusal::RequesterStreams { requester: "pages/a".into(), theirs: 4, linger_secs: 10 },
                ErrorCode::Overloaded,
                "pages/a already started 4 streams that still run, the most one page may; wait for them to stop \
                 (10 s after their last viewer)",
            ),
        ];
        for (refusal, code, message) in table {
            assert_eq!((refusal.code(), refusal.to_string().as_str(), refusal.answered()), (code, message, true));
        }
        assert!(!Refusal::Nested.answered());
    }
}
