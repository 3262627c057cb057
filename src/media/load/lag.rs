//! How far a pipeline is behind real time. Pure: it takes media times and a clock reading, no FFmpeg.
//!
//! A live source delivers media at the rate it happens; a paced file is read at that rate. A pipeline that
//! keeps up therefore waits for every packet (the socket has nothing yet, or the pacer holds the packet
//! back), and one that does not finds the next packet already there, later and later. The lag is the wall
//! time passed minus the media time passed since the pipeline last had to wait: it grows by a third of a
//! second every second when the pipeline runs at two thirds of real time, and is 0 while it keeps up.
//! Measured from the last wait, not from the start, it does not mistake a source whose clock runs slow,
//! jitter on the network, or a burst after a stall for the pipeline falling behind.

use std::time::Instant;

/// Measures the lag of one pipeline run.
#[derive(Debug, Default)]
pub struct LagMeter {
    /// The clock reading all times are taken from.
    origin: Option<Instant>,
    /// Wall minus media time (µs) of the packet that was most on time since the last wait.
    offset_us: Option<i64>,
    last_media_us: Option<i64>,
    lag_us: i64,
}

impl LagMeter {
    /// Takes the packet with media time `media_us` as it is handed on at `now`; `waited` says whether the
    /// pipeline had to wait for it (it could not be behind then). Returns the lag in µs, never negative.
    pub fn observe(&mut self, media_us: i64, now: Instant, waited: bool) -> i64 {
        let origin = *self.origin.get_or_insert(now);
        let wall_us = now.saturating_duration_since(origin).as_micros() as i64;
        let behind = wall_us - media_us;
        // Timestamps that go back (a loop, a camera's clock reset) start a new measurement.
        let went_back = self.last_media_us.is_some_and(|last| media_us < last);
        let offset = match self.offset_us {
            Some(offset) if !waited && !went_back => offset.min(behind),
            _ => behind,
        };
        self.offset_us = Some(offset);
        self.last_media_us = Some(media_us);
        self.lag_us = behind - offset;
        self.lag_us
    }

    /// The lag of the latest packet, in µs.
    pub fn lag_us(&self) -> i64 {
        self.lag_us
    }

    /// Starts measuring afresh (after a seek or a skip).
    pub fn reset(&mut self) {
        *self = Self { origin: self.origin, ..Self::default() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// `(wall ms, media ms, waited)` of each packet.
    type Steps = Vec<(u64, i64, bool)>;

    /// Feeds `(wall ms, media ms, waited)` and returns the lags in ms.
    fn lags(steps: &[(u64, i64, bool)]) -> Vec<i64> {
        let t0 = Instant::now();
        let mut m = LagMeter::default();
        steps
            .iter()
            .map(|&(wall, media, waited)| m.observe(media * 1000, t0 + Duration::from_millis(wall), waited) / 1000)
            .collect()
    }

    #[test]
    fn the_lag_is_wall_time_minus_media_time_since_the_last_wait() {
        let table: [(&str, Steps, Vec<i64>); 6] = [
            ("keeping up: every packet waited for", vec![(0, 0, true), (40, 40, true), (80, 80, true)], vec![0, 0, 0]),
            (
                "two thirds of real time: a third of a second more every second",
                vec![(0, 0, false), (1500, 1000, false), (3000, 2000, false)],
                vec![0, 500, 1000],
            ),
            (
                "a slow source clock: the pipeline waits, so no lag however far media falls behind the wall",
                vec![(0, 0, true), (1010, 1000, true), (2020, 2000, true)],
                vec![0, 0, 0],
            ),
            (
                "a burst after a stall: packets earlier than the best so far lower the reference",
                vec![(0, 0, true), (600, 40, true), (601, 80, false), (602, 600, false)],
                vec![0, 0, 0, 0],
            ),
            (
                "behind, then caught up: the first wait clears the lag",
                vec![(0, 0, false), (2000, 1000, false), (2001, 1001, true), (2041, 1041, false)],
                vec![0, 1000, 0, 0],
            ),
            (
                "timestamps that go back start afresh",
                vec![(0, 5000, false), (1000, 5500, false), (1100, 0, false), (1200, 100, false)],
                vec![0, 500, 0, 0],
            ),
        ];
        for (what, steps, want) in table {
            assert_eq!(lags(&steps), want, "{what}");
        }
    }

    #[test]
    fn reset_forgets_the_reference() {
        let t0 = Instant::now();
        let mut m = LagMeter::default();
        m.observe(0, t0, false);
        assert_eq!(m.observe(1_000_000, t0 + Duration::from_secs(3), false), 2_000_000);
        assert_eq!(m.lag_us(), 2_000_000);
        m.reset();
        assert_eq!(m.observe(1_000_000, t0 + Duration::from_secs(3), false), 0);
    }
}
