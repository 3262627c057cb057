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

/// Source timestamps continued across the loops of a file: each loop starts where the previous one ended
/// (its last packet's end), so that pacing and the lag see one timeline, as a live source would give.
#[derive(Debug, Default)]
pub struct LoopClock {
    shift_us: i64,
    end_us: Option<i64>,
    rebase: bool,
}

impl LoopClock {
    /// The source was rewound: the next packet continues where the packets so far ended.
    pub fn looped(&mut self) {
        self.rebase = true;
    }

    /// The continued time of a packet at `ts_us` lasting `duration_us`.
    pub fn continued(&mut self, ts_us: i64, duration_us: i64) -> i64 {
        if std::mem::take(&mut self.rebase) {
            if let Some(end) = self.end_us {
                self.shift_us = end - ts_us;
            }
        }
        let at = ts_us + self.shift_us;
        let end = at + duration_us.max(0);
        self.end_us = Some(self.end_us.map_or(end, |e| e.max(end)));
        at
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

/// Decode times and durations that keep a fragmented MP4 track on its packets' timestamps.
///
/// The mov muxer requires each sample to start at or after the end of the previous one (its dts plus its
/// duration); a sample that starts earlier is moved to that end plus one tick, and the end of every later
/// sample moves with it. With one sample per fragment a sample's duration is the packet's own, a frame
/// estimate, so one RTP timestamp a tick early (2999 ticks after the previous frame instead of 3000) made
/// every later frame one tick later than the one before: video ran 20 ms a minute ahead of audio, and the
/// page, which plays at the end of what both tracks hold, fell behind live by as much. So the decode time
/// written is where the track actually ends, and each duration is chosen to bring the next sample back to
/// its own timestamp: the error stays within one packet's jitter instead of adding up.
#[derive(Debug, Default)]
pub struct DurationFixer {
    /// Where the previous sample ends, in the track's time base.
    end: Option<i64>,
}

impl DurationFixer {
    /// `(decode time to write, duration to write)` for a packet with decode time `dts` whose own duration is
    /// `given`; the decode time moves by as much as the pts must.
    pub fn place(&mut self, dts: i64, given: i64) -> (i64, i64) {
        // Samples are contiguous in a fragmented track: each starts where the previous ended.
        let at = self.end.unwrap_or(dts);
        let duration = (dts - at + given.max(1)).max(1);
        self.end = Some(at + duration);
        (at, duration)
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
    fn loops_continue_the_timeline() {
        let mut c = LoopClock::default();
        // A 3-frame file at 40 ms, twice; video and audio interleaved.
        let first: Vec<i64> =
            [(0, 40), (0, 21), (40, 40), (80, 40), (64, 21)].iter().map(|&(t, d)| c.continued(t, d)).collect();
        assert_eq!(first, [0, 0, 40, 80, 64]);
        c.looped();
        let second: Vec<i64> = [(0, 40), (40, 40), (21, 21)].iter().map(|&(t, d)| c.continued(t, d)).collect();
        assert_eq!(second, [120, 160, 141], "from the end of the last frame on");
        // A source with its own offset keeps it until it loops.
        let mut d = LoopClock::default();
        assert_eq!(d.continued(5_000_000, 40), 5_000_000);
        d.looped();
        assert_eq!(d.continued(4_000_000, 40), 5_000_040);
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

    #[test]
    fn an_early_timestamp_does_not_shift_every_later_sample() {
        let mut fixer = DurationFixer::default();
        let mut end = None;
        for k in 0..10_000i64 {
            // Every 100th frame is a tick early, as RTP timestamps converted between clocks can be.
            let dts = 3000 * k - i64::from(k % 100 == 50);
            let (at, d) = fixer.place(dts, 3000);
            if let Some(e) = end {
                assert!(at >= e, "sample {k} at {at} starts before the previous end {e}: the muxer would move it");
            }
            assert!((at - dts).abs() <= 1, "sample {k} placed at {at}, dts {dts}");
            end = Some(at + d);
        }
        // A wrong duration estimate does not add up either, and exact audio stays exact.
        let mut video = DurationFixer::default();
        assert!((0..1000).all(|k| (video.place(3000 * k, 3001).0 - 3000 * k).abs() <= 1));
        let mut audio = DurationFixer::default();
        assert!((0..1000).all(|k| audio.place(1024 * k, 1024) == (1024 * k, 1024)));
    }

    #[test]
    fn a_gap_is_closed_on_the_next_sample_and_durations_stay_positive() {
        let mut fixer = DurationFixer::default();
        assert_eq!(fixer.place(0, 3000), (0, 3000));
        // Two frames lost: the sample after the gap starts where the last ended and carries the gap.
        assert_eq!(fixer.place(9000, 3000), (3000, 9000));
        assert_eq!(fixer.place(12_000, 3000), (12_000, 3000));
        // A timestamp that comes early is placed at the end, with a shorter duration.
        assert_eq!(fixer.place(12_500, 3000), (15_000, 500));
        // Never a duration below one tick.
        assert_eq!(fixer.place(0, 3000), (15_500, 1));
    }
}
