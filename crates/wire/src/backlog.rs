//! What the gateway sends a browser that cannot keep up. The broker hands it everything at loopback speed,
//! so the gateway is the last hop that sees a browser's backlog: packets wait in this queue for the
//! browser's socket, and when the oldest has waited too long, the media of the stream topics (never control
//! packets, statuses, replies or init segments) is shed: what is queued of it and what comes, up to a
//! keyframe that finds the queue short again. The browser loses whole fragments up to a keyframe, never a
//! broken GOP, and stays live. Pure: packets in with `now`, packets out.

use bytes::Bytes;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What a packet is to the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Anything that must arrive: control packets, statuses, replies, init segments, acknowledged media.
    Keep,
    /// A fragment of a stream topic, which may be shed; `keyframe` when it starts with one.
    Media {
        /// The fragment starts with a video keyframe.
        keyframe: bool,
    },
}

/// The browser reads nothing at all: closing is all that is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the browser has not read {0} queued bytes")]
pub struct Overflow(pub usize);

/// When to shed.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The oldest queued packet this old: shed media.
    pub shed_after: Duration,
    /// A keyframe resumes delivery when the oldest queued packet is younger than this.
    pub resume_under: Duration,
    /// Queued bytes beyond which the connection is closed.
    pub max_bytes: usize,
}

/// The queue to one browser.
#[derive(Debug)]
pub struct Shedder {
    limits: Limits,
    queue: VecDeque<(Instant, Kind, Bytes)>,
    bytes: usize,
    shedding: bool,
    /// Fragments shed so far.
    pub shed: u64,
}

impl Shedder {
    /// An empty queue.
    pub fn new(limits: Limits) -> Self {
        Self { limits, queue: VecDeque::new(), bytes: 0, shedding: false, shed: 0 }
    }

    /// How long the oldest queued packet has waited.
    pub fn delay(&self, now: Instant) -> Duration {
        self.queue.front().map_or(Duration::ZERO, |(at, _, _)| now.saturating_duration_since(*at))
    }

    /// Whether media is being shed now.
    pub fn is_shedding(&self) -> bool {
        self.shedding
    }

    /// Queues a packet from the broker, or sheds it.
    pub fn push(&mut self, kind: Kind, packet: Bytes, now: Instant) -> Result<(), Overflow> {
        if let Kind::Media { keyframe } = kind {
            if !self.shedding && self.delay(now) > self.limits.shed_after {
                // Behind: the rest of this GOP would only add to it. What is queued of it goes too.
                self.shedding = true;
                let before = self.queue.len();
                self.queue.retain(|(_, k, _)| !matches!(k, Kind::Media { .. }));
                self.shed += (before - self.queue.len()) as u64;
                self.bytes = self.queue.iter().map(|(_, _, p)| p.len()).sum();
            }
            if self.shedding {
                if !(keyframe && self.delay(now) < self.limits.resume_under) {
                    self.shed += 1;
                    return Ok(());
                }
                self.shedding = false;
            }
        }
        self.bytes += packet.len();
        self.queue.push_back((now, kind, packet));
        if self.bytes > self.limits.max_bytes {
            return Err(Overflow(self.bytes));
        }
        Ok(())
    }

    /// The next packet to send.
    pub fn pop(&mut self) -> Option<Bytes> {
        let (_, _, packet) = self.queue.pop_front()?;
        self.bytes -= packet.len();
        Some(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits =
        Limits { shed_after: Duration::from_millis(500), resume_under: Duration::from_millis(100), max_bytes: 10_000 };

    fn key() -> Kind {
        Kind::Media { keyframe: true }
    }

    fn delta() -> Kind {
        Kind::Media { keyframe: false }
    }

    #[test]
    fn a_browser_that_keeps_up_gets_everything_in_order() {
        let t0 = Instant::now();
        let mut s = Shedder::new(LIMITS);
        for (i, kind) in [key(), delta(), Kind::Keep, delta()].into_iter().enumerate() {
            s.push(kind, Bytes::from(vec![i as u8]), t0 + Duration::from_millis(i as u64 * 33)).unwrap();
            assert_eq!(s.pop().as_deref(), Some(&[i as u8][..]));
        }
        assert_eq!(s.shed, 0);
    }

    #[test]
    fn a_browser_that_falls_behind_loses_whole_gops_and_resumes_at_a_keyframe() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = Shedder::new(LIMITS);
        // (ms, kind, pops before it): the browser reads nothing for 600 ms.
        s.push(key(), Bytes::from_static(b"k1"), at(0)).unwrap();
        s.push(delta(), Bytes::from_static(b"d1"), at(33)).unwrap();
        s.push(Kind::Keep, Bytes::from_static(b"status"), at(40)).unwrap();
        s.push(delta(), Bytes::from_static(b"d2"), at(600)).unwrap();
        assert!(s.is_shedding(), "600 ms behind");
        assert_eq!(s.shed, 3, "k1, d1 queued and d2 shed");
        // The status stays; media waits for a keyframe that finds the queue short.
        s.push(key(), Bytes::from_static(b"k2"), at(633)).unwrap();
        assert_eq!(s.shed, 4, "k2 came while the status still waited 593 ms");
        assert_eq!(s.pop().as_deref(), Some(&b"status"[..]));
        s.push(delta(), Bytes::from_static(b"d3"), at(666)).unwrap();
        s.push(key(), Bytes::from_static(b"k3"), at(1000)).unwrap();
        s.push(delta(), Bytes::from_static(b"d4"), at(1033)).unwrap();
        assert!(!s.is_shedding());
        assert_eq!(s.pop().as_deref(), Some(&b"k3"[..]));
        assert_eq!(s.pop().as_deref(), Some(&b"d4"[..]));
        assert_eq!(s.shed, 5);
    }

    #[test]
    fn a_browser_that_reads_nothing_is_closed_but_control_packets_are_never_shed() {
        let t0 = Instant::now();
        let mut s = Shedder::new(LIMITS);
        for i in 0..9 {
            s.push(Kind::Keep, Bytes::from(vec![0; 1000]), t0 + Duration::from_secs(i)).unwrap();
        }
        assert_eq!(s.push(Kind::Keep, Bytes::from(vec![0; 2000]), t0 + Duration::from_secs(10)), Err(Overflow(11_000)));
        assert_eq!(s.shed, 0);
    }
}
