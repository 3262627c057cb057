//! Time bookkeeping for the pipeline: native-rate pacing and source-arrival tracking. Pure, no FFmpeg.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock now, in microseconds since the Unix epoch.
pub fn wallclock_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Holds reading back so that media time advances no faster than wall time (ffmpeg's `-re`).
#[derive(Debug, Default)]
pub struct Pacer {
    start: Option<(Instant, i64)>,
}

impl Pacer {
    /// How long to wait before handing on a packet with media time `ts_us`, given the time `now`.
    pub fn delay(&mut self, ts_us: i64, now: Instant) -> Duration {
        let (t0, ts0) = *self.start.get_or_insert((now, ts_us));
        let due = t0 + Duration::from_micros(ts_us.saturating_sub(ts0).max(0) as u64);
        due.saturating_duration_since(now)
    }

    /// Forgets the reference point (after a seek or a loop).
    pub fn reset(&mut self) {
        self.start = None;
    }
}

/// Remembers when the source packet behind each timestamp arrived, through decoding and encoding stages.
#[derive(Debug, Default)]
pub struct ArrivalTracker {
    entries: VecDeque<(i64, u64)>,
}

/// Entries kept at most, so a stage that drops timestamps cannot grow the tracker.
const MAX_TRACKED: usize = 512;

impl ArrivalTracker {
    /// Records that the media at `ts` arrived at wall-clock `arrival_us`.
    pub fn push(&mut self, ts: i64, arrival_us: u64) {
        if self.entries.len() == MAX_TRACKED {
            self.entries.pop_front();
        }
        self.entries.push_back((ts, arrival_us));
    }

    /// The arrival of the latest entry at or before `ts`, forgetting older ones. Timestamps are in
    /// decode order, so anything before `ts` will not be asked for again.
    pub fn take(&mut self, ts: i64) -> Option<u64> {
        let mut found = None;
        while let Some(&(t, arrival)) = self.entries.front() {
            if t > ts {
                break;
            }
            found = Some(arrival);
            self.entries.pop_front();
        }
        // Keep the answer for a later equal timestamp (B-frame reordering, several fragments per packet).
        if let Some(arrival) = found {
            self.entries.push_front((ts, arrival));
        }
        found.or_else(|| self.entries.front().map(|&(_, a)| a))
    }

    /// The earliest arrival still tracked.
    pub fn oldest(&self) -> Option<u64> {
        self.entries.iter().map(|&(_, a)| a).min()
    }

    /// Forgets everything (after a reconnect or loop).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_waits_for_media_time() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        assert_eq!(p.delay(5_000_000, t0), Duration::ZERO);
        assert_eq!(p.delay(5_100_000, t0), Duration::from_millis(100));
        assert_eq!(p.delay(5_100_000, t0 + Duration::from_millis(150)), Duration::ZERO);
        assert_eq!(p.delay(4_000_000, t0), Duration::ZERO, "earlier media is never delayed");
        p.reset();
        assert_eq!(p.delay(0, t0 + Duration::from_secs(9)), Duration::ZERO);
    }

    #[test]
    fn arrival_tracker_maps_timestamps() {
        let mut t = ArrivalTracker::default();
        t.push(0, 100);
        t.push(10, 200);
        t.push(20, 300);
        assert_eq!(t.take(10), Some(200));
        assert_eq!(t.take(10), Some(200), "same timestamp asked twice");
        assert_eq!(t.take(15), Some(200), "between entries: the latest before");
        assert_eq!(t.take(5), Some(200), "before everything kept: the oldest kept");
        assert_eq!(t.take(25), Some(300));
        let mut empty = ArrivalTracker::default();
        assert_eq!(empty.take(0), None);
        for i in 0..2000 {
            empty.push(i, i as u64);
        }
        assert_eq!(empty.oldest(), Some(2000 - MAX_TRACKED as u64));
    }
}
