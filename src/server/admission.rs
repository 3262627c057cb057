//! Admission against the CPU budget (`limits.cpu_budget_percent`): a stream whose video needs a transcode
//! starts only if the transcodes already running leave room for it, by what they are measured to use.
//!
//! Each pipeline's CPU is read from its threads (see `media/load/threads.rs`), sampled by the [`Ledger`]. A
//! transcode that sheds frames would need more to encode them all, and one that falls behind (a machine busy
//! with other work gives it less CPU than it needs) more to keep up: its need is its cost divided by the
//! share it encodes and by its speed (1 minus how fast its lag grew over the window). A new stream's need is estimated from the measured ones, per pixel of output per second,
//! scaled to its own size and frame rate; a transcode admitted less than [`STARTING`] + [`MEASURE_FOR`] (1 s) ago counts at
//! that estimate too. With nothing measured yet (the first transcodes of a burst are just starting), a
//! request waits for the first measurement, up to [`ADMIT_WAIT`]; a measured one stays measured. Copies cost little (~2 % of a core) and are
//! never refused for CPU. The decision is pure ([`decide`]); the ledger holds the samples.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A pipeline's CPU is known once it has been sampled over this long (after [`STARTING`]).
pub const MEASURE_FOR: Duration = Duration::from_millis(700);
/// The first moments after admission are left out of the cost: the decoder and encoder are still being
/// opened, and a cost measured over them came out at two thirds of the steady one (360p).
pub const STARTING: Duration = Duration::from_millis(300);
/// The window the CPU of a pipeline is measured over, at most.
pub const WINDOW: Duration = Duration::from_secs(3);
/// How long a request waits for a measurement when none is there yet. A transcode is measured about 1 s after
/// it starts on a quiet machine; six opened at once on two busy cores took longer than 1.5 s in one CI run.
pub const ADMIT_WAIT: Duration = Duration::from_secs(3);
/// Samples closer together than this are not taken.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// Clock ticks per second of /proc times (USER_HZ).
const TICKS_PER_SEC: f64 = 100.0;

/// One running transcode, as the decision sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transcode {
    /// Measured CPU, percent of one core; `None` while it is too young to tell.
    pub cost: Option<f64>,
    /// Share of its source's frames it encodes now (1.0: all).
    pub share: f64,
    /// Media time it got through per wall second over the window, at most 1.0 (keeping up).
    pub speed: f64,
    /// Output pixels per second (width × height × frame rate).
    pub pixel_rate: f64,
}

impl Transcode {
    /// What it would use encoding every frame, if measured.
    fn need(&self) -> Option<f64> {
        Some(self.cost? / self.share.clamp(0.05, 1.0) / self.speed.clamp(0.05, 1.0))
    }
}

/// What to do with a request for a new transcode.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Start it.
    Admit,
    /// Ask again shortly: nothing is measured yet.
    Wait,
    /// Refuse it, saying why.
    Refuse(String),
}

/// Whether a new transcode of `pixel_rate` fits in `budget` (percent of one core, 0: no limit) beside
/// `running`; `may_wait`: whether the request can still wait for a measurement.
pub fn decide(budget: u32, running: &[Transcode], pixel_rate: f64, may_wait: bool) -> Decision {
    if budget == 0 || running.is_empty() {
        return Decision::Admit;
    }
    let budget = f64::from(budget);
    let measured: Vec<(f64, f64)> = running.iter().filter_map(|t| Some((t.need()?, t.pixel_rate))).collect();
    if measured.is_empty() {
        if may_wait {
            return Decision::Wait;
        }
        return Decision::Refuse(format!(
            "{} transcode(s) just started and their CPU is not measured yet against limits.cpu_budget_percent; ask \
             again in a few seconds",
            running.len()
        ));
    }
    let (needs, pixels): (f64, f64) = measured.iter().fold((0.0, 0.0), |(n, p), (need, px)| (n + need, p + px));
    let mean = needs / measured.len() as f64;
    let estimate = |px: f64| if pixels > 0.0 && px > 0.0 { needs / pixels * px } else { mean };
    let used: f64 = running.iter().map(|t| t.need().unwrap_or_else(|| estimate(t.pixel_rate))).sum();
    let new = estimate(pixel_rate);
    if used + new > budget {
        return Decision::Refuse(format!(
            "the server is at its CPU budget: {} running transcode(s) use {used:.0}% of a core (measured) and \
             this stream would need about {new:.0}% more, over the {budget:.0}% allowed (limits.cpu_budget_percent)",
            running.len()
        ));
    }
    Decision::Admit
}

/// One tracked pipeline.
#[derive(Debug)]
struct Entry {
    pipeline: u64,
    transcode: bool,
    pixel_rate: f64,
    share: f64,
    /// How far it is behind real time now (µs).
    lag_us: u64,
    admitted: Instant,
    /// The cost measured before the samples last started afresh, kept until a new one is known.
    last_cost: Option<f64>,
    /// `(when, CPU ticks of its threads, lag in µs)`, oldest first, over the last [`WINDOW`].
    samples: VecDeque<(Instant, u64, u64)>,
}

impl Entry {
    /// Percent of one core over the samples, once they span [`MEASURE_FOR`], else the last one measured.
    fn cost(&self) -> Option<f64> {
        self.measured().or(self.last_cost)
    }

    /// Percent of one core over the samples, once they span [`MEASURE_FOR`].
    fn measured(&self) -> Option<f64> {
        let started = self.admitted + STARTING;
        let first = self.samples.iter().find(|(at, _, _)| *at >= started)?;
        let (&(t0, ticks0, _), &(t1, ticks1, _)) = (first, self.samples.back()?);
        let span = t1.saturating_duration_since(t0);
        (span >= MEASURE_FOR).then(|| ticks1.saturating_sub(ticks0) as f64 / TICKS_PER_SEC / span.as_secs_f64() * 100.0)
    }

    /// Media time per wall second over the samples: 1 minus the lag's growth, at most 1. The warm-up is left
    /// out: opening the encoder puts every new pipeline a few hundred ms behind once.
    fn speed(&self) -> f64 {
        let settled = self.admitted + crate::media::load::WARM_UP;
        let first = self.samples.iter().find(|(at, _, _)| *at >= settled);
        let (Some(&(t0, _, lag0)), Some(&(t1, _, lag1))) = (first, self.samples.back()) else {
            return 1.0;
        };
        let span = t1.saturating_duration_since(t0).as_micros() as f64;
        if span <= 0.0 {
            return 1.0;
        }
        (1.0 - (lag1 as f64 - lag0 as f64) / span).min(1.0)
    }

    fn as_transcode(&self) -> Transcode {
        Transcode { cost: self.cost(), share: self.share, speed: self.speed(), pixel_rate: self.pixel_rate }
    }
}

/// The pipelines of the running streams and their measured CPU, by stream URL.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: HashMap<String, Entry>,
    last_sample: Option<Instant>,
    /// Transcodes refused so far.
    pub refused: u64,
}

impl Ledger {
    /// Takes a sample of every tracked pipeline's CPU ticks (`ticks`: by pipeline number) at `now`.
    pub fn sample(&mut self, ticks: &HashMap<u64, u64>, now: Instant) {
        self.last_sample = Some(now);
        for entry in self.entries.values_mut() {
            let Some(&t) = ticks.get(&entry.pipeline) else { continue };
            // A thread that ended took its ticks along: start the window afresh rather than go negative.
            // Threads end at times (the stream probe's decoder threads, a rendition's encoder), so a
            // transcode measured once stays measured: it keeps its last cost until a new one is known.
            if entry.samples.back().is_some_and(|&(_, last, _)| t < last) {
                entry.last_cost = entry.cost();
                entry.samples.clear();
            }
            entry.samples.push_back((now, t, entry.lag_us));
            while entry.samples.len() > 2
                && entry.samples.get(1).is_some_and(|&(at, _, _)| now.saturating_duration_since(at) >= WINDOW)
            {
                entry.samples.pop_front();
            }
        }
    }

    /// Whether a sample is due at `now`.
    pub fn sample_due(&self, now: Instant) -> bool {
        self.last_sample.is_none_or(|t| now.saturating_duration_since(t) >= SAMPLE_EVERY)
    }

    /// Decides on the stream `url`'s pipeline `pipeline`: a copy (`transcode` false) or a stream that was
    /// admitted before (a restart) is taken at once; a new transcode as [`decide`] says. Admitted pipelines
    /// are tracked from `now` (`ticks`: its threads' CPU so far).
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &mut self,
        url: &str,
        pipeline: u64,
        transcode: bool,
        pixel_rate: f64,
        budget: u32,
        ticks: u64,
        now: Instant,
        may_wait: bool,
    ) -> Decision {
        let known = self.entries.get(url).is_some_and(|e| e.transcode == transcode);
        if transcode && !known {
            let running: Vec<Transcode> =
                self.entries.values().filter(|e| e.transcode).map(Entry::as_transcode).collect();
            let decision = decide(budget, &running, pixel_rate, may_wait);
            match &decision {
                Decision::Admit => {}
                Decision::Refuse(_) => {
                    self.refused += 1;
                    return decision;
                }
                Decision::Wait => return decision,
            }
        }
        let samples = VecDeque::from([(now, ticks, 0)]);
        let entry =
            Entry { pipeline, transcode, pixel_rate, share: 1.0, lag_us: 0, admitted: now, last_cost: None, samples };
        self.entries.insert(url.to_string(), entry);
        Decision::Admit
    }

    /// The share of its frames the stream's transcode encodes now, and its lag behind real time (µs).
    pub fn set_load(&mut self, url: &str, share: f64, lag_us: u64) {
        if let Some(e) = self.entries.get_mut(url) {
            e.share = share;
            e.lag_us = lag_us;
        }
    }

    /// The stream ended: it uses nothing any more.
    pub fn forget(&mut self, url: &str) {
        self.entries.remove(url);
    }

    /// The stream's measured CPU, percent of one core.
    pub fn cost_of(&self, url: &str) -> Option<f64> {
        self.entries.get(url)?.cost()
    }

    /// The running transcodes: how many, and what they use in all (the young ones at their estimate left
    /// out), percent of one core.
    pub fn transcodes(&self) -> (usize, f64) {
        let t: Vec<_> = self.entries.values().filter(|e| e.transcode).collect();
        // `+ 0.0`: an empty sum is -0.0.
        (t.len(), t.iter().filter_map(|e| e.cost()).sum::<f64>() + 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P720: f64 = 1280.0 * 720.0 * 25.0;
    const P360: f64 = 640.0 * 360.0 * 25.0;

    fn t(cost: Option<f64>, share: f64, pixel_rate: f64) -> Transcode {
        Transcode { cost, share, speed: 1.0, pixel_rate }
    }

    /// What, budget, running, new pixel rate, may wait, decision.
    type Case = (&'static str, u32, Vec<Transcode>, f64, bool, &'static str);

    #[test]
    fn decisions() {
        let refuse = |d: &Decision| matches!(d, Decision::Refuse(_));
        let starved = Transcode { speed: 0.25, ..t(Some(20.0), 1.0, P720) };
        let table: [Case; 11] = [
            (
                "a transcode at a quarter of real time on a busy machine needs four times what it gets",
                150,
                vec![starved, starved],
                P720,
                true,
                "refuse",
            ),
            ("nothing runs", 150, vec![], P720, true, "admit"),
            ("no budget set", 0, vec![t(Some(190.0), 1.0, P720)], P720, true, "admit"),
            ("one 720p at 55 %: a second fits in 150", 150, vec![t(Some(55.0), 1.0, P720)], P720, true, "admit"),
            (
                "two at 55 %: a third would pass 150",
                150,
                vec![t(Some(55.0), 1.0, P720), t(Some(55.0), 1.0, P720)],
                P720,
                true,
                "refuse",
            ),
            (
                "one measured, one young counted at the estimate",
                150,
                vec![t(Some(55.0), 1.0, P720), t(None, 1.0, P720)],
                P720,
                true,
                "refuse",
            ),
            (
                "a 360p costs a quarter of a 720p",
                150,
                vec![t(Some(55.0), 1.0, P720), t(Some(55.0), 1.0, P720)],
                P360,
                true,
                "admit",
            ),
            (
                "a transcode that sheds half its frames needs twice what it uses",
                150,
                vec![t(Some(40.0), 0.5, P720)],
                P720,
                true,
                "refuse",
            ),
            ("only young ones: wait for a measurement", 150, vec![t(None, 1.0, P720)], P720, true, "wait"),
            ("only young ones and no more time", 150, vec![t(None, 1.0, P720)], P720, false, "refuse"),
            ("exactly at the budget still fits", 110, vec![t(Some(55.0), 1.0, P720)], P720, true, "admit"),
        ];
        for (what, budget, running, px, may_wait, want) in table {
            let d = decide(budget, &running, px, may_wait);
            let got = match &d {
                Decision::Admit => "admit",
                Decision::Wait => "wait",
                Decision::Refuse(_) => "refuse",
            };
            assert_eq!(got, want, "{what}: {d:?}");
            if refuse(&d) && may_wait {
                let Decision::Refuse(m) = d else { unreachable!() };
                assert!(m.contains("limits.cpu_budget_percent") && m.contains("measured"), "{what}: {m}");
            }
        }
    }

    #[test]
    fn the_ledger_measures_admits_and_forgets() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut l = Ledger::default();
        // A copy is taken whatever the budget.
        assert_eq!(l.request("copy", 1, false, P720, 1, 0, at(0), true), Decision::Admit);
        assert_eq!(l.request("a", 2, true, P720, 150, 0, at(0), true), Decision::Admit);
        // The second waits while the first is unmeasured...
        assert_eq!(l.request("b", 3, true, P720, 150, 0, at(100), true), Decision::Wait);
        // ...which it is after STARTING and MEASURE_FOR: 42 ticks in 0.7 s is 60 % of a core.
        l.sample(&HashMap::from([(1, 0), (2, 18)]), at(300));
        assert_eq!(l.cost_of("a"), None, "not measured yet");
        l.sample(&HashMap::from([(1, 2), (2, 60)]), at(1000));
        assert_eq!(l.cost_of("a").map(f64::round), Some(60.0));
        assert_eq!(l.cost_of("copy").map(f64::round), Some(3.0));
        assert_eq!(l.request("b", 3, true, P720, 150, 0, at(1000), true), Decision::Admit);
        // A third does not fit (60 + 60 estimated + 60), and is counted.
        assert!(matches!(l.request("c", 4, true, P720, 150, 0, at(1000), true), Decision::Refuse(_)));
        assert_eq!((l.refused, l.transcodes().0), (1, 2));
        // A restart of an admitted stream is never refused.
        assert_eq!(l.request("b", 5, true, P720, 1, 0, at(1100), true), Decision::Admit);
        // Once warmed up, 0.5 s further behind over 2 s at 60 % of a core: at 0.75 of real time, it needs 80 %.
        for (ms, ticks, lag_us) in [(2000, 120, 200_000), (3000, 180, 450_000), (4000, 240, 700_000)] {
            l.set_load("a", 1.0, lag_us);
            l.sample(&HashMap::from([(2, ticks)]), at(ms));
        }
        let a = l.entries.get("a").map(Entry::as_transcode).expect("a");
        assert_eq!(a.need().map(f64::round), Some(80.0), "{a:?}");
        // Threads that ended took ticks along: the window starts again instead of going negative, and the
        // cost measured before stands until a new one is known (so a burst's requests need not wait again).
        l.sample(&HashMap::from([(2, 10)]), at(4500));
        assert_eq!(l.cost_of("a").map(f64::round), Some(60.0), "kept");
        l.sample(&HashMap::from([(2, 80)]), at(5500));
        assert_eq!(l.cost_of("a").map(f64::round), Some(70.0), "measured again");
        l.forget("b");
        assert_eq!(l.request("c", 4, true, P720, 150, 0, at(5500), false), Decision::Admit, "room again");
        assert!(crate::config::default_budget_percent() >= 75);
    }
}
