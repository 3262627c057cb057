//! A stream's figures for `<prefix>/stats` and `/metrics`: what it counts while it runs ([`Counters`],
//! [`Latencies`]) and the snapshot read from them ([`StreamStats`]).

use super::{Phase, Stream};
use crate::media::events::PipelineStats;
use crate::media::OutputInfo;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Latency samples kept for the stats percentiles.
const LATENCY_SAMPLES: usize = 300;

/// Counters for the stats message.
#[derive(Debug, Default)]
pub struct Counters {
    /// Fragments received from the pipeline.
    pub fragments: AtomicU64,
    /// Fragment bytes received.
    pub bytes: AtomicU64,
    /// Video frames received.
    pub frames: AtomicU64,
    /// Source restarts after a drop.
    pub restarts: AtomicU64,
    /// Fragments the pipeline dropped because the server fell behind.
    pub pipeline_drops: AtomicU64,
    /// Damaged source packets of finished pipeline runs (the running one counts in its stats).
    pub damaged: AtomicU64,
    /// Media bytes published: to each direct viewer, and once to the stream topic for all shared ones.
    pub published_bytes: AtomicU64,
    /// Of finished pipeline runs (the running one counts in its stats): skips ahead, the media they left
    /// out (µs), and frames left out before the encoder.
    pub skips: AtomicU64,
    /// See `skips`.
    pub skipped_us: AtomicU64,
    /// See `skips`.
    pub frames_shed: AtomicU64,
}

impl Counters {
    /// Adds what a finished pipeline run counted; the running one is read from its own counters.
    pub(super) fn add_run(&self, run: &PipelineStats) {
        let done = run.snapshot();
        self.pipeline_drops.fetch_add(done.fragments_dropped, Ordering::Relaxed);
        self.damaged.fetch_add(done.damaged, Ordering::Relaxed);
        self.skips.fetch_add(run.skips.load(Ordering::Relaxed), Ordering::Relaxed);
        self.skipped_us.fetch_add(run.skipped_us.load(Ordering::Relaxed), Ordering::Relaxed);
        self.frames_shed.fetch_add(run.frames_shed.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// The last [`LATENCY_SAMPLES`] latencies, in ms.
#[derive(Debug, Default)]
pub struct Latencies(VecDeque<f64>);

impl Latencies {
    /// Keeps a sample, forgetting the oldest beyond the window.
    pub fn record(&mut self, ms: f64) {
        if self.0.len() == LATENCY_SAMPLES {
            self.0.pop_front();
        }
        self.0.push_back(ms);
    }

    /// The median and the 95th percentile, once there are samples.
    pub fn p50_p95(&self) -> (Option<f64>, Option<f64>) {
        let mut sorted: Vec<f64> = self.0.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        (percentile(&sorted, 0.5), percentile(&sorted, 0.95))
    }
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    (!sorted.is_empty()).then(|| sorted[((sorted.len() - 1) as f64 * p).round() as usize])
}

/// A rendition in the stream's stats.
#[derive(Debug, serde::Serialize)]
pub struct RenditionStats {
    /// Its name.
    pub name: String,
    /// Viewers on it.
    pub viewers: usize,
    /// Whether it is being encoded now (`main` always is).
    pub encoding: bool,
    /// Its video bitrate over the last seconds, kbit/s.
    pub bitrate_kbps: Option<u32>,
    /// Seconds its encoder has worked so far (a rendition's; absent for `main`, whose work is the stream's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encode_seconds: Option<f64>,
}

/// A snapshot for the stats message.
#[derive(Debug, serde::Serialize)]
pub struct StreamStats {
    /// URL with any password hidden.
    pub url: String,
    /// starting, playing, reconnecting, failed, ended.
    pub state: &'static str,
    /// Output facts, once known.
    pub output: Option<OutputInfo>,
    /// Viewers attached, both kinds.
    pub viewers: usize,
    /// Of them, viewers on the stream's own topics (protocol v2).
    pub shared_viewers: usize,
    /// With renditions configured: each (`main` first) with its viewers and bitrate.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub renditions: Vec<RenditionStats>,
    /// Fragments dropped for slow viewers plus fragments the pipeline dropped.
    pub dropped: u64,
    /// Damaged source packets: concealed by the decoder (transcode), or kept back, never sent (copy: the
    /// ones flagged corrupt and the video after them up to the next keyframe that decodes cleanly).
    pub damaged: u64,
    /// Fragments so far.
    pub fragments: u64,
    /// Media bytes published so far: once per direct viewer, once for all shared ones.
    pub published_bytes: u64,
    /// Source restarts.
    pub restarts: u64,
    /// Source arrival to hand-off for publishing, p50, in ms.
    pub latency_p50_ms: Option<f64>,
    /// The same, p95.
    pub latency_p95_ms: Option<f64>,
    /// How far the pipeline is behind real time now, in ms (0 for an input not read in real time).
    pub lag_ms: u64,
    /// Share of the source's frames encoded now: 1 unless the transcode sheds load.
    pub frame_share: f64,
    /// Whether the viewers were told `degraded`: frames shed were not enough, media was skipped.
    pub degraded: bool,
    /// Skips ahead to real time so far.
    pub skips: u64,
    /// Media those skips left out, in ms.
    pub skipped_ms: u64,
    /// Decoded frames left out before the encoder so far.
    pub frames_shed: u64,
    /// CPU the stream's pipeline uses, percent of one core, measured from its threads (see
    /// `admission.rs`); set by the hub.
    pub cpu_percent: Option<f64>,
}

impl Stream {
    /// Numbers for the stats message.
    pub fn stats(&self, shown_url: String) -> StreamStats {
        let now = Instant::now();
        let (mut viewers, mut shared_viewers, mut dropped_by_viewers) = (0, 0, 0);
        let mut renditions = Vec::new();
        let listed = self.has_renditions();
        for o in &self.outputs {
            let s = o.lock();
            viewers += s.core.viewer_count();
            shared_viewers += s.core.shared_count();
            dropped_by_viewers += s.dropped();
            if listed && o.offered(&s) {
                renditions.push(RenditionStats {
                    name: o.name.clone(),
                    viewers: s.core.viewer_count(),
                    encoding: o.control.as_ref().is_none_or(|c| c.wanted() && s.core.is_wanted(now)),
                    bitrate_kbps: s.core.bitrate_kbps(),
                    encode_seconds: o.control.as_ref().map(|c| c.encode_seconds()),
                });
            }
        }
        let (output, degraded, (latency_p50_ms, latency_p95_ms)) = {
            let main = self.main().lock();
            (main.core.output().cloned(), main.core.is_degraded(), main.latencies.p50_p95())
        };
        let phase = self.phase.borrow().clone();
        let running = self.running();
        let live = |f: fn(&PipelineStats) -> &AtomicU64| running.as_ref().map_or(0, |s| f(s).load(Ordering::Relaxed));
        let c = &self.counters;
        StreamStats {
            url: shown_url,
            state: match phase {
                Phase::Starting => "starting",
                Phase::Ready(_) => "playing",
                Phase::Reconnecting { .. } => "reconnecting",
                Phase::Failed { .. } => "failed",
                Phase::Ended => "ended",
            },
            output,
            viewers,
            shared_viewers,
            renditions,
            dropped: dropped_by_viewers + c.pipeline_drops.load(Ordering::Relaxed),
            damaged: c.damaged.load(Ordering::Relaxed) + live(|s| &s.damaged),
            fragments: c.fragments.load(Ordering::Relaxed),
            published_bytes: c.published_bytes.load(Ordering::Relaxed),
            restarts: c.restarts.load(Ordering::Relaxed),
            latency_p50_ms,
            latency_p95_ms,
            lag_ms: live(|s| &s.lag_us) / 1000,
            frame_share: self.frame_share(),
            degraded,
            skips: c.skips.load(Ordering::Relaxed) + live(|s| &s.skips),
            skipped_ms: (c.skipped_us.load(Ordering::Relaxed) + live(|s| &s.skipped_us)) / 1000,
            frames_shed: c.frames_shed.load(Ordering::Relaxed) + live(|s| &s.frames_shed),
            cpu_percent: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_keep_a_window_and_give_its_percentiles() {
        let mut l = Latencies::default();
        assert_eq!(l.p50_p95(), (None, None), "no samples yet");
        for ms in [30.0, 10.0, 20.0] {
            l.record(ms);
        }
        assert_eq!(l.p50_p95(), (Some(20.0), Some(30.0)));
        // 1..=400 ms: only the last 300 (101..=400) are kept.
        for ms in 1..=400 {
            l.record(f64::from(ms));
        }
        assert_eq!(l.p50_p95(), (Some(251.0), Some(385.0)));
    }
}
