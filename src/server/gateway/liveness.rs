//! When a browser's WebSocket must be closed for silence. Pure: fed with what the browser sends and `now`.
//!
//! A connection gets `connect_timeout` to send a whole MQTT CONNECT (a trickle of bytes does not buy more
//! time), then may stay silent for one and a half keep-alive periods, as MQTT itself allows a broker
//! (MQTT 3.1.1, section 3.1.2.10), and never longer than `max_idle`.

use mqtt_video_wire::mqtt_frames::{read_connect, Connect, FrameError, Framer};
use std::time::{Duration, Instant};

/// The deadline of one browser connection.
#[derive(Debug)]
pub struct Liveness {
    framer: Option<Framer>,
    connect: Option<Connect>,
    deadline: Instant,
    max_idle: Duration,
}

/// Why a connection was closed for silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// No whole CONNECT in time.
    NoConnect,
    /// Nothing for longer than allowed after it.
    Idle,
}

impl Liveness {
    /// A connection upgraded at `now`; CONNECTs of up to `max_packet` bytes.
    pub fn new(now: Instant, connect_timeout: Duration, max_idle: Duration, max_packet: usize) -> Self {
        Self { framer: Some(Framer::new(max_packet)), connect: None, deadline: now + connect_timeout, max_idle }
    }

    /// The browser sent `bytes` at `now`. An error means close: the first packet is not a CONNECT.
    pub fn on_bytes(&mut self, bytes: &[u8], now: Instant) -> Result<(), FrameError> {
        let Some(framer) = self.framer.as_mut() else {
            self.deadline = now + self.idle_limit();
            return Ok(());
        };
        let mut packets = Vec::new();
        framer.push(bytes, &mut packets)?;
        if let Some(first) = packets.first() {
            self.connect = Some(read_connect(first)?);
            // Only the first packet matters: later ones are the broker's business.
            self.framer = None;
            self.deadline = now + self.idle_limit();
        }
        Ok(())
    }

    /// The browser sent a WebSocket ping or pong: alive, if it has connected.
    pub fn on_control(&mut self, now: Instant) {
        if self.framer.is_none() {
            self.deadline = now + self.idle_limit();
        }
    }

    /// The protocol level the browser's CONNECT asked for (4 until it has sent one).
    pub fn level(&self) -> u8 {
        self.connect.map_or(4, |c| c.level)
    }

    /// When to close if nothing more comes.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Why a connection that reached its deadline is closed.
    pub fn silence(&self) -> Silence {
        if self.connect.is_some() {
            Silence::Idle
        } else {
            Silence::NoConnect
        }
    }

    fn idle_limit(&self) -> Duration {
        match self.connect.map(|c| c.keep_alive_secs) {
            Some(k) if k > 0 => (Duration::from_secs(u64::from(k)) * 3 / 2).min(self.max_idle),
            _ => self.max_idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONNECT_KEEP_20: &[u8] = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x14\x00\x04page";
    const CONNECT_KEEP_0: &[u8] = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x00\x00\x04page";
    const CONNECT_KEEP_MAX: &[u8] = b"\x10\x10\x00\x04MQTT\x04\x02\xff\xff\x00\x04page";

    #[test]
    fn deadlines_follow_the_connect_and_what_comes_after() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // (what arrives at which ms after the upgrade, expected deadline after it, expected reason)
        type Step = (&'static [u8], u64);
        let cases: [(&str, Vec<Step>, Duration, Silence); 6] = [
            ("nothing at all", vec![], s(5), Silence::NoConnect),
            (
                "a trickle of a CONNECT buys no time",
                vec![(&CONNECT_KEEP_20[..3], 1000), (&CONNECT_KEEP_20[3..9], 4000)],
                s(5),
                Silence::NoConnect,
            ),
            ("a CONNECT, keep-alive 20: 30 s", vec![(CONNECT_KEEP_20, 1000)], s(31), Silence::Idle),
            (
                "then a PINGREQ later moves it",
                vec![(CONNECT_KEEP_20, 1000), (b"\xc0\x00", 20_000)],
                s(50),
                Silence::Idle,
            ),
            ("keep-alive 0: the longest idle", vec![(CONNECT_KEEP_0, 500)], ms(500) + s(300), Silence::Idle),
            ("keep-alive 18 h: capped", vec![(CONNECT_KEEP_MAX, 0)], s(300), Silence::Idle),
        ];
        for (what, steps, deadline, why) in cases {
            let mut l = Liveness::new(t0, s(5), s(300), 64 * 1024);
            for (bytes, at) in steps {
                l.on_bytes(bytes, t0 + ms(at)).unwrap();
            }
            assert_eq!((l.deadline() - t0, l.silence()), (deadline, why), "{what}");
        }
    }

    #[test]
    fn a_first_packet_that_is_not_a_connect_closes() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, Duration::from_secs(5), Duration::from_secs(300), 1024);
        assert!(matches!(l.on_bytes(b"\x82\x05\x00\x01\x00\x00\x01", t0), Err(FrameError::NotConnect(8))));
        let mut l = Liveness::new(t0, Duration::from_secs(5), Duration::from_secs(300), 16);
        assert!(matches!(l.on_bytes(&[0x10, 0x7f], t0), Err(FrameError::TooLarge { .. })));
        // WebSocket pings count only once connected.
        let mut l = Liveness::new(t0, Duration::from_secs(5), Duration::from_secs(300), 1024);
        l.on_control(t0 + Duration::from_secs(4));
        assert_eq!(l.deadline(), t0 + Duration::from_secs(5));
    }
}
