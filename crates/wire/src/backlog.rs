//! What the gateway sends a browser that cannot keep up. The broker hands it everything at loopback speed,
//! so the gateway is the last hop that sees a browser's backlog: packets wait in this queue for the
//! browser's socket, and when the oldest has waited too long, the media of the stream topics (never control
//! packets, statuses, replies or init segments) is shed: what is queued of it and what comes, up to a
//! keyframe that finds the queue short again. The browser loses whole fragments up to a keyframe, never a
//! broken GOP, and stays live. Pure: packets in with `now`, packets out.
//!
//! The gateway's own queue is not the whole backlog: what left its socket may wait in the kernel's buffers
//! and in the queues of the network (a phone's cellular link, a Wi-Fi router), seconds deep. [`PathDelay`]
//! measures that part with WebSocket pings sent behind the data, which a browser answers once it has read
//! everything before them; the queue's delay and the path's excess over its least round trip are summed.

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

/// Pings a browser has not answered yet, at most: one every `every` covers `every * MAX_OUTSTANDING` of delay.
const MAX_OUTSTANDING: usize = 32;

/// The queueing between the gateway's socket and the browser, from WebSocket pings. Pure.
#[derive(Debug)]
pub struct PathDelay {
    every: Duration,
    next: u64,
    /// Sent and not answered yet, oldest first: (sequence number, when).
    outstanding: VecDeque<(u64, Instant)>,
    last_sent: Option<Instant>,
    /// The last answered round trip, and the least seen (the link's own, not queueing).
    last: Option<Duration>,
    least: Option<Duration>,
}

impl PathDelay {
    /// A meter that pings every `every`.
    pub fn new(every: Duration) -> Self {
        Self { every, next: 0, outstanding: VecDeque::new(), last_sent: None, last: None, least: None }
    }

    /// The payload of a ping to send now, when one is due.
    pub fn ping(&mut self, now: Instant) -> Option<[u8; 8]> {
        let due = self.last_sent.is_none_or(|at| now.saturating_duration_since(at) >= self.every);
        if !due || self.outstanding.len() >= MAX_OUTSTANDING {
            return None;
        }
        let sequence = self.next;
        self.next += 1;
        self.outstanding.push_back((sequence, now));
        self.last_sent = Some(now);
        Some(sequence.to_be_bytes())
    }

    /// When the next ping is due, after the first (none while as many as may be are unanswered: an answer
    /// comes first).
    pub fn next_ping(&self) -> Option<Instant> {
        if self.outstanding.len() >= MAX_OUTSTANDING {
            return None;
        }
        self.last_sent.map(|at| at + self.every)
    }

    /// A pong came with `payload`. Browsers answer in order, so the pings before it were answered too; a
    /// pong that answers none of ours (unsolicited, or of a ping long given up) changes nothing.
    pub fn pong(&mut self, payload: &[u8], now: Instant) {
        let Ok(bytes) = <[u8; 8]>::try_from(payload) else { return };
        let sequence = u64::from_be_bytes(bytes);
        let Some(i) = self.outstanding.iter().position(|(s, _)| *s == sequence) else { return };
        let sent = self.outstanding[i].1;
        self.outstanding.drain(..=i);
        let rtt = now.saturating_duration_since(sent);
        self.last = Some(rtt);
        self.least = Some(self.least.map_or(rtt, |least| least.min(rtt)));
    }

    /// How much longer than its least round trip the path takes now: the last answer's round trip, or the
    /// age of the oldest unanswered ping when that is longer (a path that stopped answering counts at once).
    pub fn excess(&self, now: Instant) -> Duration {
        let waiting = self.outstanding.front().map(|(_, at)| now.saturating_duration_since(*at));
        let current = self.last.into_iter().chain(waiting).max().unwrap_or(Duration::ZERO);
        current.saturating_sub(self.least.unwrap_or(Duration::ZERO))
    }
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
    /// The delay beyond the gateway's socket.
    pub path: PathDelay,
}

/// How often the gateway pings a browser.
pub const PING_EVERY: Duration = Duration::from_millis(200);

impl Shedder {
    /// An empty queue.
    pub fn new(limits: Limits) -> Self {
        Self { limits, queue: VecDeque::new(), bytes: 0, shedding: false, shed: 0, path: PathDelay::new(PING_EVERY) }
    }

    /// How far behind the browser is: how long the oldest queued packet has waited, plus the path's queueing.
    pub fn delay(&self, now: Instant) -> Duration {
        let queued = self.queue.front().map_or(Duration::ZERO, |(at, _, _)| now.saturating_duration_since(*at));
        queued + self.path.excess(now)
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
    fn the_path_delay_is_the_queueing_beyond_the_least_round_trip() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut p = PathDelay::new(Duration::from_millis(200));
        assert_eq!(p.excess(at(0)), Duration::ZERO, "nothing known yet");
        let first = p.ping(at(0)).expect("the first ping at once");
        assert_eq!(p.ping(at(100)), None, "not due yet");
        assert_eq!(p.next_ping(), Some(at(200)));
        p.pong(&first, at(30));
        assert_eq!(p.excess(at(30)), Duration::ZERO, "30 ms is this link's own round trip");
        // The link's queue fills: pings at 200, 400, 600 are answered late, the last not yet.
        let (a, b, _c) = (p.ping(at(200)).unwrap(), p.ping(at(400)).unwrap(), p.ping(at(600)).unwrap());
        p.pong(&b, at(900));
        assert_eq!(p.excess(at(900)), Duration::from_millis(470), "500 ms for the ping at 400, less 30");
        p.pong(&a, at(950));
        assert_eq!(p.excess(at(950)), Duration::from_millis(470), "an answer to a ping given up counts nothing");
        assert_eq!(p.excess(at(1600)), Duration::from_millis(970), "the ping at 600 unanswered for 1 s counts");
        p.pong(b"junk", at(1600));
        p.pong(&99u64.to_be_bytes(), at(1600));
        assert_eq!(p.excess(at(1600)), Duration::from_millis(970), "pongs of no ping of ours change nothing");
    }

    #[test]
    fn a_path_that_never_answers_is_pinged_a_bounded_number_of_times() {
        let t0 = Instant::now();
        let mut p = PathDelay::new(Duration::from_millis(10));
        let sent = (0..100).filter(|i| p.ping(t0 + Duration::from_millis(i * 10)).is_some()).count();
        assert_eq!(sent, MAX_OUTSTANDING);
        assert_eq!(p.next_ping(), None, "nothing is due until an answer comes");
    }

    #[test]
    fn a_queue_beyond_the_socket_sheds_as_the_gateway_s_own_does_and_resumes_when_it_drains() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = Shedder::new(LIMITS);
        let ping = s.path.ping(at(0)).unwrap();
        s.path.pong(&ping, at(20));
        // Every packet leaves the gateway at once, but the next ping waits in the network's queue.
        let late = s.path.ping(at(200)).unwrap();
        for (i, ms) in [(0u8, 210), (1, 400), (2, 600)] {
            s.push(if i == 0 { key() } else { delta() }, Bytes::from(vec![i]), at(ms)).unwrap();
            assert!(s.pop().is_some());
        }
        s.push(delta(), Bytes::from_static(b"d"), at(750)).unwrap();
        assert!(s.is_shedding(), "530 ms beyond the link's own 20 ms");
        assert_eq!(s.shed, 1);
        s.path.pong(&late, at(760));
        let fresh = s.path.ping(at(760)).unwrap();
        s.path.pong(&fresh, at(800));
        s.push(key(), Bytes::from_static(b"k"), at(800)).unwrap();
        assert!(!s.is_shedding(), "the last round trip is 40 ms: back at a keyframe");
        assert_eq!(s.pop().as_deref(), Some(&b"k"[..]));
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
