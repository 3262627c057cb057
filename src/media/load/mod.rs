//! One pipeline's load control: the [`LagMeter`] and the [`Governor`] driven packet by packet, with what
//! they decide published in the pipeline's [`PipelineStats`] for the server's stats and the stream's status.
//! No FFmpeg and no clock of its own: the pipeline hands in each packet's facts and `now`. Beside it,
//! [`threads`] tags a pipeline's threads so that its CPU can be read.

pub mod frame_shedding;
pub mod lag;
pub mod threads;

use crate::media::events::PipelineStats;
use frame_shedding::{Governor, Verdict};
use lag::LagMeter;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// For this long after its first video packet a pipeline sheds nothing: opening the encoder and filling the
/// decoder's threads put any pipeline a few hundred ms behind once, which it then catches up.
pub const WARM_UP: Duration = Duration::from_secs(2);

/// What to do with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Hand it on as usual.
    Process,
    /// Leave it out: the pipeline is skipping ahead to real time.
    Drop,
    /// The first packet after a skip (a video keyframe): stages start afresh from it.
    Resume,
}

/// Drives lag measurement and shedding for one pipeline run.
#[derive(Debug)]
pub struct LoadControl {
    meter: LagMeter,
    governor: Governor,
    /// Whether the pipeline waited for its input since the last video packet.
    waited: bool,
    /// Whether the input runs at the pace of real time (a live protocol, a paced file): else there is no
    /// lag to measure and nothing is shed.
    realtime: bool,
    skipping: bool,
    /// When the warm-up ends.
    warm_until: Option<Instant>,
}

impl LoadControl {
    /// Load control for a run that transcodes video (`frames`: it may give up frames) or copies it, over an
    /// input that runs in real time (`realtime`) or not.
    pub fn new(frames: bool, realtime: bool) -> Self {
        Self {
            meter: LagMeter::default(),
            governor: Governor::new(frames),
            waited: false,
            realtime,
            skipping: false,
            warm_until: None,
        }
    }

    /// The pipeline had to wait for its input (the pacer held a packet back, or the source had nothing yet).
    pub fn waited(&mut self) {
        self.waited = true;
    }

    /// The share of the source's frames to encode now.
    pub fn share(&self) -> f64 {
        self.governor.share()
    }

    /// Takes a packet read at `now`: a video packet with its media time (µs) and keyframe flag, or another.
    pub fn packet(&mut self, video: Option<(i64, bool)>, now: Instant, stats: &PipelineStats) -> Step {
        if !self.realtime {
            return Step::Process;
        }
        let verdict = match video {
            Some((media_us, keyframe)) => {
                let lag = self.meter.observe(media_us, now, std::mem::take(&mut self.waited));
                stats.lag_us.store(lag.max(0) as u64, Ordering::Relaxed);
                if now < *self.warm_until.get_or_insert(now + WARM_UP) {
                    return Step::Process;
                }
                let verdict = self.governor.video(lag, media_us, keyframe, now);
                let shed = ((1.0 - self.governor.share()) * 1e6).round().max(0.0) as u64;
                stats.shed_ppm.store(shed, Ordering::Relaxed);
                stats.degraded.store(self.governor.degraded(), Ordering::Relaxed);
                let (skips, skipped_us) = self.governor.skipped();
                stats.skips.store(skips, Ordering::Relaxed);
                stats.skipped_us.store(skipped_us.max(0) as u64, Ordering::Relaxed);
                verdict
            }
            None => self.governor.other(),
        };
        let was_skipping = std::mem::replace(&mut self.skipping, self.governor.skipping());
        match verdict {
            Verdict::Drop => {
                if !was_skipping {
                    tracing::info!(
                        lag_ms = stats.lag_us.load(Ordering::Relaxed) / 1000,
                        "behind real time: skipping ahead"
                    );
                }
                stats.packets_skipped.fetch_add(1, Ordering::Relaxed);
                Step::Drop
            }
            Verdict::Process if was_skipping && video.is_some() => {
                tracing::info!(skipped = ?self.governor.skipped(), "skipped ahead to real time");
                // The skip ended near real time: the meter's reference from before it no longer holds.
                self.meter.reset();
                Step::Resume
            }
            Verdict::Process => Step::Process,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Feeds 25 fps video (a keyframe every 25 frames) to a pipeline whose every encoded frame costs
    /// `40 ms × share / speed` (dropping one costs 1 ms), paced: it waits when ahead of real time. Returns the
    /// steps, the stats after `secs` of media and the largest share of frames shed on the way (ppm).
    fn run(frames: bool, realtime: bool, speed: f64, secs: u64) -> (Vec<Step>, PipelineStats, u64) {
        let t0 = Instant::now();
        let stats = PipelineStats::default();
        let mut c = LoadControl::new(frames, realtime);
        let (mut wall_us, mut steps, mut most_shed) = (0f64, Vec::new(), 0);
        for i in 0..secs * 25 {
            let media_us = i as i64 * 40_000;
            if wall_us < media_us as f64 {
                wall_us = media_us as f64;
                c.waited();
            }
            let now = t0 + Duration::from_micros(wall_us as u64);
            let step = c.packet(Some((media_us, i % 25 == 0)), now, &stats);
            c.packet(None, now, &stats);
            wall_us += if step == Step::Drop { 1000.0 } else { 40_000.0 * c.share() / speed };
            steps.push(step);
            most_shed = most_shed.max(stats.shed_ppm.load(Ordering::Relaxed));
        }
        (steps, stats, most_shed)
    }

    #[test]
    fn nothing_is_shed_while_warming_up() {
        let t0 = Instant::now();
        let stats = PipelineStats::default();
        let mut c = LoadControl::new(true, true);
        // At a quarter of real time, over a second behind at the end: still warming up.
        for i in 0..45u64 {
            let now = t0 + Duration::from_millis(i * 40);
            assert_eq!(c.packet(Some((i as i64 * 10_000, i % 25 == 0)), now, &stats), Step::Process);
        }
        assert!(stats.lag_us.load(Ordering::Relaxed) > 1_000_000, "the lag is measured all the same");
        assert_eq!(stats.shed_ppm.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn steps_and_stats_follow_the_lag() {
        // (what, transcode, realtime input, speed, skips expected, share below 1 expected)
        let table = [
            ("keeping up", true, true, 1.5, false, false),
            ("an unpaced input is never governed", true, false, 0.5, false, false),
            ("a copy at half speed can only skip", false, true, 0.5, true, false),
            ("a transcode at 0.8 gives up frames", true, true, 0.8, false, true),
        ];
        for (what, frames, realtime, speed, skips, shed) in table {
            let (steps, stats, most_shed) = run(frames, realtime, speed, 20);
            let dropped = steps.contains(&Step::Drop);
            let resumed = steps.iter().filter(|s| **s == Step::Resume).count() as u64;
            assert_eq!(dropped, skips, "{what}: {steps:?}");
            assert_eq!(resumed, stats.skips.load(Ordering::Relaxed), "{what}: a resume per skip");
            if skips {
                assert!(stats.packets_skipped.load(Ordering::Relaxed) > 0, "{what}");
                assert!(stats.lag_us.load(Ordering::Relaxed) <= 1_600_000, "{what}: bounded");
            }
            assert_eq!(most_shed > 0, shed, "{what}: {most_shed} ppm of the frames shed");
        }
    }
}
