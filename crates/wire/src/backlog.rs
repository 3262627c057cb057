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
//! The same answers say how many bytes the browser has read by when, so how fast the path delivers: the
//! gateway keeps what it lets into the path to about [`QUEUE_BUDGET`] of that ([`PathDelay::send_budget`],
//! applied as the socket's send buffer). A path with a deep queue (a token bucket holding a second, a
//! cellular link) then holds little, and the backlog waits in the gateway's queue, where its age is known
//! at once and shedding starts in time, instead of a round trip later with a second more already sent.

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

/// What the path may hold beyond the least round trip's worth, in time at its delivery rate.
pub const QUEUE_BUDGET: Duration = Duration::from_millis(100);
/// The send budget never goes under this (a keyframe or two of a camera's stream, a first TCP window), nor
/// over the most.
pub const MIN_SEND_BUDGET: usize = 32 * 1024;
/// See [`MIN_SEND_BUDGET`].
pub const MAX_SEND_BUDGET: usize = 8 << 20;
/// Delivery rates are measured over at least this long (two answers read at once say nothing of a rate)...
const RATE_SPAN: Duration = Duration::from_millis(100);
/// ...and the fastest of the last this long is the path's (while the stream fills it, what it carries).
const RATE_WINDOW: Duration = Duration::from_secs(3);

/// The queueing between the gateway's socket and the browser, from WebSocket pings. Pure.
#[derive(Debug)]
pub struct PathDelay {
    every: Duration,
    next: u64,
    /// Sent and not answered yet, oldest first: (sequence number, when, bytes written before it).
    outstanding: VecDeque<(u64, Instant, u64)>,
    last_sent: Option<Instant>,
    /// The last answered round trip, and the least seen (the link's own, not queueing).
    last: Option<Duration>,
    least: Option<Duration>,
    /// Bytes written to the path so far.
    written: u64,
    /// (when answered, bytes the browser had read by then), oldest first, over the last RATE_WINDOW.
    delivered: VecDeque<(Instant, u64)>,
    /// (when, bytes a second) measured, over the last RATE_WINDOW.
    rates: VecDeque<(Instant, f64)>,
}

impl PathDelay {
    /// A meter that pings every `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            next: 0,
            outstanding: VecDeque::new(),
            last_sent: None,
            last: None,
            least: None,
            written: 0,
            delivered: VecDeque::new(),
            rates: VecDeque::new(),
        }
    }

    /// `n` more bytes went into the path.
    pub fn wrote(&mut self, n: usize) {
        self.written += n as u64;
    }

    /// The payload of a ping to send now, when one is due.
    pub fn ping(&mut self, now: Instant) -> Option<[u8; 8]> {
        let due = self.last_sent.is_none_or(|at| now.saturating_duration_since(at) >= self.every);
        if !due || self.outstanding.len() >= MAX_OUTSTANDING {
            return None;
        }
        let sequence = self.next;
        self.next += 1;
        self.outstanding.push_back((sequence, now, self.written));
        self.last_sent = Some(now);
        Some(sequence.to_be_bytes())
    }

    /// What the gateway should let into the path (its socket's send buffer), in bytes: the path's delivery
    /// rate over the least round trip plus [`QUEUE_BUDGET`], within [`MIN_SEND_BUDGET`] and
    /// [`MAX_SEND_BUDGET`]; none before a rate is measured.
    pub fn send_budget(&self) -> Option<usize> {
        let rate = self.rates.iter().map(|(_, r)| *r).reduce(f64::max)?;
        let time = self.least.unwrap_or(Duration::ZERO) + QUEUE_BUDGET;
        let bytes = rate * time.as_secs_f64();
        Some((bytes as usize).clamp(MIN_SEND_BUDGET, MAX_SEND_BUDGET))
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
        let Some(i) = self.outstanding.iter().position(|(s, _, _)| *s == sequence) else { return };
        let (_, sent, read) = self.outstanding[i];
        self.outstanding.drain(..=i);
        let rtt = now.saturating_duration_since(sent);
        self.last = Some(rtt);
        self.least = Some(self.least.map_or(rtt, |least| least.min(rtt)));
        // The browser has read everything written before the ping: a rate against the latest answer at least
        // RATE_SPAN older.
        let base = self.delivered.iter().rev().find(|(at, _)| now.saturating_duration_since(*at) >= RATE_SPAN);
        if let Some(&(at, before)) = base {
            let span = now.saturating_duration_since(at).as_secs_f64();
            self.rates.push_back((now, read.saturating_sub(before) as f64 / span));
        }
        self.delivered.push_back((now, read));
        while self.delivered.len() > 1
            && self.delivered.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) > RATE_WINDOW)
        {
            self.delivered.pop_front();
        }
        while self.rates.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) > RATE_WINDOW) {
            self.rates.pop_front();
        }
    }

    /// How much longer than its least round trip the path takes now: the last answer's round trip, or the
    /// age of the oldest unanswered ping when that is longer (a path that stopped answering counts at once).
    pub fn excess(&self, now: Instant) -> Duration {
        let waiting = self.outstanding.front().map(|(_, at, _)| now.saturating_duration_since(*at));
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

/// Keyframes queued this close together start the same GOP (of two renditions of one stream).
const SAME_GOP_START: Duration = Duration::from_millis(250);

/// How often the gateway pings a browser.
pub const PING_EVERY: Duration = Duration::from_millis(100);

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
                // Behind: the GOP being queued would only add to it, so it goes, with what is queued of it. An
                // older GOP's rest still queued stays: it is whole and keeps the link busy until the next
                // keyframe, where dropping it would leave the link idle and show less (on a link carrying
                // 60 % of the stream, one GOP in two shown whole instead of a part of one in two).
                self.shedding = true;
                let is_key = |k: &Kind| matches!(k, Kind::Media { keyframe: true });
                // The GOP that is starting: from its first keyframe, counting those of other renditions queued
                // with it (a page switching between two gets both; a transcoded one's comes a few frames after
                // the copied one's), so that one rendition's is not kept while the other's goes. Without a
                // keyframe queued, the rest of the GOP being sent.
                let from = if keyframe {
                    self.queue.len()
                } else {
                    let last_key = self.queue.iter().rev().find(|(_, k, _)| is_key(k)).map(|(at, _, _)| *at);
                    last_key
                        .and_then(|last| {
                            self.queue.iter().position(|(at, k, _)| {
                                is_key(k) && last.saturating_duration_since(*at) <= SAME_GOP_START
                            })
                        })
                        .unwrap_or(0)
                };
                let mut starting = self.queue.split_off(from);
                let before = starting.len();
                starting.retain(|(_, k, _)| !matches!(k, Kind::Media { .. }));
                self.shed += (before - starting.len()) as u64;
                self.queue.append(&mut starting);
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
    fn an_older_gop_s_rest_still_queued_is_kept_and_the_starting_one_is_shed() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // (queued at, what): GOP 1's rest is queued when GOP 2 starts and the queue passes the bound.
        // (ms queued at, kind, bytes); a row: what, queued before, the packet over the bound, left, shed
        const K: Kind = Kind::Media { keyframe: true };
        const D: Kind = Kind::Media { keyframe: false };
        type Queued = (u64, Kind, &'static [u8]);
        type Row<'a> = (&'a str, &'a [Queued], Queued, &'a [&'a [u8]], u64);
        let table: [Row<'_>; 4] = [
            (
                "a delta of GOP 2 over the bound: GOP 2 goes, GOP 1's rest stays",
                &[(0, K, b"k1"), (100, D, b"d1"), (450, K, b"k2"), (480, D, b"d2")],
                (520, D, b"d3"),
                &[b"k1", b"d1"],
                3,
            ),
            (
                "GOP 2's keyframe over the bound: it goes, what is queued stays",
                &[(0, K, b"k1"), (100, D, b"d1"), (300, D, b"d2")],
                (520, K, b"k2"),
                &[b"k1", b"d1", b"d2"],
                1,
            ),
            (
                "two renditions' keyframes queued together start the same GOP: both go",
                &[(0, K, b"k1"), (100, D, b"d1"), (450, K, b"k2"), (470, D, b"d2"), (480, K, b"l2")],
                (560, D, b"d3"),
                &[b"k1", b"d1"],
                4,
            ),
            (
                "no keyframe queued: the rest of the GOP being sent goes",
                &[(0, D, b"d1"), (100, D, b"d2")],
                (520, D, b"d3"),
                &[],
                3,
            ),
        ];
        for (what, queued, (ms, kind, bytes), left, shed) in table {
            let mut s = Shedder::new(LIMITS);
            for &(ms, kind, bytes) in queued {
                s.push(kind, Bytes::from_static(bytes), at(ms)).unwrap();
            }
            s.push(kind, Bytes::from_static(bytes), at(ms)).unwrap();
            assert!(s.is_shedding(), "{what}");
            let sent: Vec<Bytes> = std::iter::from_fn(|| s.pop()).collect();
            assert_eq!(sent, left.iter().map(|b| Bytes::from_static(b)).collect::<Vec<_>>(), "{what}");
            assert_eq!(s.shed, shed, "{what}");
        }
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
    fn the_send_budget_is_the_delivery_rate_over_the_least_round_trip_and_the_queue_budget() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut p = PathDelay::new(Duration::from_millis(200));
        assert_eq!(p.send_budget(), None, "nothing measured");
        // A 2 Mbit/s link (250 000 B/s) that the stream fills: the browser reads 50 000 B per 200 ms.
        for i in 0..10u64 {
            p.wrote(50_000);
            let ping = p.ping(at(i * 200)).expect("due");
            // answered 10 ms after it was sent: what was written before it has been read by then
            p.pong(&ping, at(i * 200 + 10));
        }
        // 250 000 B/s x (10 ms + 100 ms) = 27 500 B: under the least.
        assert_eq!(p.send_budget(), Some(MIN_SEND_BUDGET));
        // A 40 Mbit/s link: 5 MB/s x 110 ms.
        let mut fast = PathDelay::new(Duration::from_millis(200));
        for i in 0..5u64 {
            fast.wrote(1_000_000);
            let ping = fast.ping(at(i * 200)).expect("due");
            fast.pong(&ping, at(i * 200 + 10));
        }
        assert_eq!(fast.send_budget(), Some(550_000));
        // Two answers read at once (a browser that stood still) are no rate; an old fast rate is forgotten.
        let ping = fast.ping(at(5000)).expect("due");
        fast.wrote(10);
        let next = fast.ping(at(5200)).expect("due");
        fast.pong(&ping, at(5300));
        fast.pong(&next, at(5301));
        assert!(fast.rates.iter().all(|(_, r)| *r < 6_000_000.0), "{:?}", fast.rates);
        let ping = fast.ping(at(9000)).expect("due");
        fast.pong(&ping, at(9010));
        assert_eq!(fast.send_budget(), Some(MIN_SEND_BUDGET), "only the slow rates of the last 3 s");
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
