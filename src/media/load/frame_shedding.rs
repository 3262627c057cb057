//! What a live pipeline that cannot keep up gives up, decided from its lag (see [`super::lag`]). Pure: lag
//! readings and `now` in, decisions out. (What a browser that falls behind loses is the gateway's:
//! `mqtt_video_wire::backlog`.)
//!
//! First frames: a transcode encodes a smaller share of the source's frames (a lower frame rate; the
//! keyframe cadence stays, see [`crate::media::encode::video`]), chosen from how fast the lag grows. Then,
//! when the lag still passes [`SKIP_LAG_US`] (a copy has no frames to give up, so it goes straight there),
//! the pipeline skips ahead: it drops what it reads, decoding nothing, up to a keyframe close to real time
//! again, and the stream counts as degraded until it has gone [`CLEAR_AFTER`] without a skip. The lag
//! therefore never grows past about `SKIP_LAG_US`. Once the lag has stayed low for a while, a share is given
//! back; a share that soon has to be taken again is next tried only after twice as long.

use std::time::{Duration, Instant};

/// Shares of the source's frames a transcode encodes, from all of them down to the floor.
pub const SHARES: [f64; 6] = [1.0, 0.75, 0.5, 1.0 / 3.0, 0.25, 1.0 / 6.0];

/// Above this lag (µs) frames are given up.
pub const HIGH_LAG_US: i64 = 300_000;
/// Below this lag (µs) the pipeline counts as calm.
pub const LOW_LAG_US: i64 = 100_000;
/// Above this lag (µs) the pipeline skips ahead.
pub const SKIP_LAG_US: i64 = 1_500_000;
/// A skip ends at the first keyframe at most this far (µs) behind real time.
pub const RESUME_LAG_US: i64 = 250_000;
/// How long a share is watched before the next one is chosen.
pub const SETTLE: Duration = Duration::from_secs(1);
/// Calm time before a share is first given back.
pub const FIRST_HOLD: Duration = Duration::from_secs(5);
/// The longest calm time asked before a share is given back.
pub const MAX_HOLD: Duration = Duration::from_secs(80);
/// A degraded stream is back to normal after this long without a skip.
pub const CLEAR_AFTER: Duration = Duration::from_secs(10);
/// A lag that shrinks at least this fast (µs per µs) is catching up: no more frames are given up for it.
const CATCHING_UP: f64 = 0.05;

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Decode (or copy) it as usual.
    Process,
    /// Drop it: the pipeline is skipping ahead.
    Drop,
}

/// Decides what one pipeline gives up.
#[derive(Debug)]
pub struct Governor {
    max_level: usize,
    level: usize,
    /// Start of the window over which the lag's growth is measured: when, and the lag then.
    reference: Option<(Instant, i64)>,
    calm_since: Option<Instant>,
    hold: Duration,
    /// When a share was last given back, while it is on trial.
    lowered_at: Option<Instant>,
    /// Media time (µs) where the running skip began.
    skip_from: Option<i64>,
    last_skip: Option<Instant>,
    degraded: bool,
    skips: u64,
    skipped_us: i64,
}

impl Governor {
    /// A governor for a transcode (`frames`: it may give up frames) or a copy (it may only skip ahead).
    pub fn new(frames: bool) -> Self {
        Self {
            max_level: if frames { SHARES.len() - 1 } else { 0 },
            level: 0,
            reference: None,
            calm_since: None,
            hold: FIRST_HOLD,
            lowered_at: None,
            skip_from: None,
            last_skip: None,
            degraded: false,
            skips: 0,
            skipped_us: 0,
        }
    }

    /// The share of the source's frames to encode now.
    pub fn share(&self) -> f64 {
        SHARES[self.level]
    }

    /// Whether frame dropping was not enough: the pipeline skipped ahead lately.
    pub fn degraded(&self) -> bool {
        self.degraded
    }

    /// Whether the pipeline is skipping ahead now.
    pub fn skipping(&self) -> bool {
        self.skip_from.is_some()
    }

    /// Skips that ended so far, and the media they left out (µs).
    pub fn skipped(&self) -> (u64, i64) {
        (self.skips, self.skipped_us)
    }

    /// What to do with an audio (or other non-video) packet.
    pub fn other(&self) -> Verdict {
        if self.skipping() {
            Verdict::Drop
        } else {
            Verdict::Process
        }
    }

    /// Takes a video packet with media time `media_us` (a `keyframe` or not) whose lag is `lag_us`, at `now`.
    pub fn video(&mut self, lag_us: i64, media_us: i64, keyframe: bool, now: Instant) -> Verdict {
        if let Some(from) = self.skip_from {
            if !(keyframe && lag_us <= RESUME_LAG_US) {
                return Verdict::Drop;
            }
            self.skip_from = None;
            self.skips += 1;
            self.skipped_us += (media_us - from).max(0);
            self.last_skip = Some(now);
            self.reference = None;
            self.calm_since = None;
            return Verdict::Process;
        }
        if lag_us > SKIP_LAG_US {
            // Giving up frames was not enough, or not fast enough: give up more from here on too.
            self.skip_from = Some(media_us);
            self.degraded = true;
            self.raise(self.level + 1);
            return Verdict::Drop;
        }
        if self.degraded && self.last_skip.is_some_and(|t| now.saturating_duration_since(t) >= CLEAR_AFTER) {
            self.degraded = false;
        }
        self.follow(lag_us, now);
        Verdict::Process
    }

    /// Chooses the share from the lag and how fast it grows.
    fn follow(&mut self, lag_us: i64, now: Instant) {
        if lag_us < LOW_LAG_US {
            self.calm_since.get_or_insert(now);
        } else {
            self.calm_since = None;
        }
        if let Some(lowered) = self.lowered_at {
            if now.saturating_duration_since(lowered) >= self.hold * 2 {
                // The share given back has held: the next one may be tried sooner.
                self.hold = (self.hold / 2).max(FIRST_HOLD);
                self.lowered_at = None;
            }
        }
        let (since, lag_then) = *self.reference.get_or_insert((now, lag_us));
        let window = now.saturating_duration_since(since);
        if window >= SETTLE {
            self.reference = Some((now, lag_us));
            let growth = (lag_us - lag_then) as f64 / window.as_micros() as f64;
            if lag_us > HIGH_LAG_US && growth > -CATCHING_UP && self.level < self.max_level {
                // The share that would run at real time with a tenth to spare, at least one step down.
                let speed = (1.0 - growth).clamp(0.05, 1.0);
                let target = self.share() * speed * 0.9;
                let next = (self.level + 1..=self.max_level).find(|&l| SHARES[l] <= target).unwrap_or(self.max_level);
                self.raise(next);
                return;
            }
        }
        if self.level > 0 && self.calm_since.is_some_and(|c| now.saturating_duration_since(c) >= self.hold) {
            self.level -= 1;
            self.lowered_at = Some(now);
            self.calm_since = Some(now);
            self.reference = None;
        }
    }

    fn raise(&mut self, level: usize) {
        let level = level.min(self.max_level);
        if level == self.level {
            return;
        }
        if self.lowered_at.take().is_some() {
            // The share given back did not hold: wait twice as long before trying again.
            self.hold = (self.hold * 2).min(MAX_HOLD);
        }
        self.level = level;
        self.calm_since = None;
        // The next window measures the new share.
        self.reference = None;
    }
}

/// A schedule of frames one `interval` apart (any unit): a frame is due when it is nearer its due time
/// than the next frame would be (`tolerance`, half the source's frame spacing), and the schedule keeps its
/// own pace, so that keeping 3 of 4 frames keeps 3 of 4 and 25 of 30 keeps 25.
#[derive(Debug, Default, Clone)]
pub struct Schedule {
    next_due: Option<i64>,
}

impl Schedule {
    /// Whether the frame at `at` is due; if so it is taken and the next falls due `interval` later.
    pub fn take(&mut self, at: i64, interval: i64, tolerance: i64) -> bool {
        match self.next_due {
            Some(due) if at + tolerance < due => false,
            Some(due) => {
                // After a gap the schedule starts again from this frame rather than catching up with a burst.
                let next = due + interval;
                self.next_due = Some(if next <= at { at + interval } else { next });
                true
            }
            None => {
                self.next_due = Some(at + interval);
                true
            }
        }
    }

    /// The next frame is due `interval` after `at` (a frame chosen elsewhere, such as the encoder's own
    /// keyframe).
    pub fn restart_at(&mut self, at: i64, interval: i64) {
        self.next_due = Some(at + interval);
    }

    /// When the next frame is due, if anything was taken yet.
    pub fn next_due(&self) -> Option<i64> {
        self.next_due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds one video packet every 40 ms (25 fps, a keyframe every 25) whose lag follows `lag_ms` (a
    /// function of the time in ms) for `secs`, and returns what happened at each whole second:
    /// `(second, share, skipping, degraded)`.
    fn run(frames: bool, secs: u64, lag_ms: impl Fn(u64) -> i64) -> Vec<(u64, f64, bool, bool)> {
        let t0 = Instant::now();
        let mut g = Governor::new(frames);
        let mut out = Vec::new();
        for i in 0..secs * 25 {
            let ms = i * 40;
            g.video(lag_ms(ms) * 1000, ms as i64 * 1000, i % 25 == 0, t0 + Duration::from_millis(ms));
            if ms % 1000 == 960 {
                out.push((ms / 1000 + 1, g.share(), g.skipping(), g.degraded()));
            }
        }
        out
    }

    fn shares(rows: &[(u64, f64, bool, bool)]) -> Vec<f64> {
        rows.iter().map(|r| (r.1 * 100.0).round()).collect()
    }

    #[test]
    fn a_pipeline_that_keeps_up_gives_up_nothing() {
        let rows = run(true, 20, |ms| (ms % 7) as i64 * 10);
        assert!(rows.iter().all(|r| r.1 == 1.0 && !r.2 && !r.3), "{rows:?}");
    }

    #[test]
    fn a_lag_growing_at_a_third_a_second_gives_up_half_the_frames_at_once() {
        // Running at two thirds of real time until the share drops, then catching up at once.
        let t0 = Instant::now();
        let mut g = Governor::new(true);
        let (mut lag, mut last) = (0i64, 0u64);
        let mut first_cut = None;
        for i in 0..25 * 8 {
            let ms = i * 40;
            let speed = if g.share() >= 1.0 { 2.0 / 3.0 } else { 1.3 };
            lag = (lag + ((1.0 - speed) * (ms - last) as f64 * 1000.0) as i64).max(0);
            last = ms;
            g.video(lag, ms as i64 * 1000, i % 25 == 0, t0 + Duration::from_millis(ms));
            if g.share() < 1.0 && first_cut.is_none() {
                first_cut = Some((ms, g.share()));
            }
        }
        let (at, share) = first_cut.expect("frames given up");
        assert!(at <= 2000, "given up after {at} ms");
        // 2/3 of real time, with a tenth to spare: 0.6 of the frames, so a half.
        assert_eq!(share, 0.5);
        assert!(!g.degraded(), "no skip was needed");
        assert!(lag < HIGH_LAG_US, "caught up: {lag}");
    }

    #[test]
    fn a_lag_that_grows_whatever_is_given_up_skips_ahead_and_is_degraded_then_clears() {
        // The lag grows 0.5 s a second up to 4 s, whatever the share, then stays 0 (the load went away).
        let t0 = Instant::now();
        let mut g = Governor::new(true);
        let mut lag = 0i64;
        let mut verdicts = Vec::new();
        let mut max_lag = 0;
        for i in 0..25 * 40 {
            let ms = i * 40;
            let now = t0 + Duration::from_millis(ms);
            if ms < 4000 && !g.skipping() {
                lag += 20_000;
            } else if g.skipping() {
                // Reading without decoding drains the backlog quickly.
                lag = (lag - 200_000).max(0);
            } else {
                lag = 0;
            }
            max_lag = max_lag.max(lag);
            verdicts.push((ms, g.video(lag, ms as i64 * 1000, i % 25 == 0, now), g.degraded()));
        }
        assert!(max_lag <= SKIP_LAG_US + 20_000, "the lag stays bounded: {max_lag}");
        let dropped = verdicts.iter().filter(|v| v.1 == Verdict::Drop).count();
        assert!(dropped > 0 && dropped < 60, "a skip of up to a GOP or so: {dropped}");
        let (skips, skipped_us) = g.skipped();
        assert_eq!(skips, 1);
        assert!(skipped_us > 0 && skipped_us <= 2_000_000, "{skipped_us}");
        assert!(verdicts.iter().any(|v| v.2), "degraded during the skip");
        assert!(!g.degraded(), "back to normal 10 s after the skip");
        // The share came back step by step once calm, and is all frames again after 40 s.
        assert_eq!(g.share(), 1.0);
    }

    #[test]
    fn a_copy_can_only_skip() {
        let rows = run(false, 6, |ms| ms as i64 / 2);
        assert!(shares(&rows).iter().all(|&s| s == 100.0), "{rows:?}");
        assert!(rows.iter().any(|r| r.2 && r.3), "skipping and degraded: {rows:?}");
    }

    #[test]
    fn audio_is_dropped_only_while_skipping() {
        let t0 = Instant::now();
        let mut g = Governor::new(false);
        assert_eq!(g.other(), Verdict::Process);
        assert_eq!(g.video(2_000_000, 0, false, t0), Verdict::Drop);
        assert_eq!(g.other(), Verdict::Drop);
        assert_eq!(g.video(2_000_000, 40_000, true, t0), Verdict::Drop, "a keyframe still far behind");
        assert_eq!(g.video(100_000, 80_000, false, t0), Verdict::Drop, "caught up, but not at a keyframe");
        assert_eq!(g.video(100_000, 120_000, true, t0), Verdict::Process);
        assert_eq!(g.other(), Verdict::Process);
        assert_eq!(g.skipped(), (1, 120_000));
    }

    #[test]
    fn a_share_given_back_too_soon_is_next_tried_after_twice_as_long() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut g = Governor::new(true);
        let mut ms = 0;
        let feed = |g: &mut Governor, ms: &mut u64, until: u64, lag: &dyn Fn(u64) -> i64| {
            while *ms < until {
                g.video(lag(*ms) * 1000, *ms as i64 * 1000, *ms % 1000 == 0, at(*ms));
                *ms += 40;
            }
        };
        // Growing lag: a share is given up.
        feed(&mut g, &mut ms, 2000, &|ms| 350 + ms as i64 / 10);
        let cut = g.share();
        assert!(cut < 1.0);
        // Calm for FIRST_HOLD: the share is given back.
        feed(&mut g, &mut ms, 2000 + 5100, &|_| 0);
        assert!(g.share() > cut, "given back after the hold");
        // It does not hold: the lag grows again and the share is taken back...
        let back = ms;
        feed(&mut g, &mut ms, back + 3000, &|t| 350 + (t - back) as i64 / 5);
        let low = g.share();
        assert!(low <= cut);
        // ...and calm for 5 s more is not enough any more: 10 s is.
        let calm = ms;
        feed(&mut g, &mut ms, calm + 6000, &|_| 0);
        assert_eq!(g.share(), low, "not after 6 s of calm");
        feed(&mut g, &mut ms, calm + 10_500, &|_| 0);
        assert!(g.share() > low, "after 10 s of calm");
    }

    #[test]
    fn schedules_keep_their_pace() {
        let kept = |interval: i64, tolerance: i64, frames: &[i64]| -> Vec<i64> {
            let mut s = Schedule::default();
            frames.iter().copied().filter(|&f| s.take(f, interval, tolerance)).collect()
        };
        let every_3000: Vec<i64> = (0..12).map(|k| k * 3000).collect();
        // 30 fps to 25: five of every six frames.
        assert_eq!(kept(3600, 1500, &every_3000).len(), 10);
        // Three of four.
        assert_eq!(kept(4000, 1500, &every_3000), [0, 3000, 9000, 12_000, 15_000, 21_000, 24_000, 27_000, 33_000]);
        // A half, a third.
        assert_eq!(kept(6000, 1500, &every_3000).len(), 6);
        assert_eq!(kept(9000, 1500, &every_3000), [0, 9000, 18_000, 27_000]);
        // An interval shorter than the frames keeps every frame; a gap restarts the schedule.
        assert_eq!(kept(1000, 1500, &every_3000).len(), 12);
        assert_eq!(kept(6000, 1500, &[0, 6000, 60_000, 63_000, 66_000]), [0, 6000, 60_000, 66_000]);
        let mut s = Schedule::default();
        assert_eq!(s.next_due(), None);
        s.restart_at(90_000, 90_000);
        assert!(!s.take(150_000, 90_000, 1500));
        assert!(s.take(179_000, 90_000, 1500));
        assert_eq!(s.next_due(), Some(270_000));
    }
}
