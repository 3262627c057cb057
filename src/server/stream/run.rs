//! The stream's task, the shell around its pure parts: it starts pipeline runs and hands their events to
//! the outputs' cores, tells the [`Supervisor`] what happened to each run and carries out what it says
//! (start again, wait for a publisher, tell the viewers, give up), and reads the clock once per event, as
//! it comes in.

use super::supervisor::{Action, Event, Supervisor};
use super::{Phase, Stream};
use crate::config::RetryConfig;
use crate::media::events::{PipelineStats, RenditionEvent};
use crate::media::pipeline::Start;
use crate::media::{Fragment, InitSegment, MediaError, Pipeline, PipelineEvent};
use mqtt_video_wire::policy::redact;
use mqtt_video_wire::protocol::{ErrorCode, Status};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

impl Stream {
    /// Runs the stream until it fails, its source ends, or it is stopped; restarts the source after drops.
    pub async fn run(&self, retry: RetryConfig) {
        let mut supervisor = Supervisor::new(retry, self.publisher.is_some());
        let mut now = Instant::now();
        let mut action = supervisor.on(Event::Due, now);
        loop {
            let event = match action {
                Action::Start => self.run_pipeline(&mut supervisor, now).await,
                Action::AwaitPublisher => self.publisher_or_stop().await,
                Action::Retry { attempt, status, at, cause } => {
                    self.source_lost(attempt, *status, &cause, now);
                    self.wait_until(at, now).await
                }
                // Nothing to carry out, and no run: only a stop can come.
                Action::Keep => {
                    self.stopped().await;
                    Event::Stop
                }
                Action::End(reason) => {
                    self.end_viewers(Status::Ended { reason }, now);
                    break;
                }
                Action::Fail { code, message } => return self.fail(code, message, now),
            };
            now = Instant::now();
            action = supervisor.on(event, now);
        }
        self.phase.send_replace(Phase::Ended);
    }

    /// Waits until a publisher is connected to the pushed source, or the stream is stopped.
    async fn publisher_or_stop(&self) -> Event {
        let Some(publisher) = &self.publisher else { return Event::PublisherArrived };
        while !publisher.present.load(Ordering::SeqCst) {
            tokio::select! {
                _ = publisher.arrived.notified() => {}
                _ = self.stopped() => return Event::Stop,
            }
        }
        Event::PublisherArrived
    }

    /// Waits until `at` (it is `now`), or until the stream is stopped.
    async fn wait_until(&self, at: Instant, now: Instant) -> Event {
        if at > now {
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = self.stopped() => return Event::Stop,
            }
        }
        Event::Due
    }

    /// The source is gone for now: viewers keep their session and are told `status`.
    fn source_lost(&self, attempt: u32, status: Status, cause: &str, now: Instant) {
        match &status {
            Status::Reconnecting { retry_in_ms, .. } => {
                let wait = Duration::from_millis(*retry_in_ms);
                tracing::info!(url = %redact(&self.url), attempt, error = %cause, "source dropped, retrying in {wait:?}");
            }
            _ => tracing::info!(url = %redact(&self.url), reason = %cause, "pushed source waiting for a publisher"),
        }
        self.counters.restarts.fetch_add(1, Ordering::Relaxed);
        for o in &self.outputs {
            let mut s = o.lock();
            let effects = s.core.on_source_lost(status.clone(), now);
            self.apply(&mut s, effects);
        }
        self.phase.send_replace(Phase::Reconnecting { attempt });
    }

    /// One run of the pipeline, started at `now`, until it ends or the stream is stopped: how it ended.
    async fn run_pipeline(&self, supervisor: &mut Supervisor, now: Instant) -> Event {
        // Continue the viewers' timeline, leaving the outage as a gap they can skip, and the sequence numbers.
        let (offset_us, first_sequence) = {
            let main = self.main().lock();
            (main.core.restart_offset_us(now), main.core.next_sequence())
        };
        let start = Start {
            offset_us,
            first_sequence,
            gate: self.gate.clone(),
            renditions: self.outputs[1..].iter().filter_map(|o| o.control.clone()).collect(),
        };
        let mut pipeline = match Pipeline::start_with(&self.source_url, self.config.clone(), start) {
            Ok(p) => p,
            Err(e) => return Event::StartFailed(e),
        };
        let stats = Arc::clone(pipeline.stats());
        self.set_running(Some(Arc::clone(&stats)));
        // Should this task panic (a bug), dropping the pipeline stops it and waits for its thread here.
        let end = loop {
            tokio::select! {
                event = pipeline.events().recv() => {
                    let now = Instant::now();
                    match event {
                        Some(PipelineEvent::Init(init)) => {
                            self.on_init(init);
                            // Only the count of retries changes: the run goes on.
                            supervisor.on(Event::Playing, now);
                        }
                        Some(PipelineEvent::Fragment(f)) => {
                            super::super::supervise::fault_point(&self.url);
                            // The other clock, the one the source dates its frames by: for the latency.
                            let wall_us = crate::media::timing::wallclock_us();
                            self.on_fragment(f, now, wall_us);
                            self.check_load(&stats);
                        }
                        Some(PipelineEvent::Rendition(index, event)) => self.on_rendition(index, event, now),
                        Some(PipelineEvent::Source(_)) => {}
                        Some(PipelineEvent::End(result)) => break result,
                        None => break Err(MediaError::Processing("the media thread ended".into())),
                    }
                }
                _ = self.stopped() => break Err(MediaError::Stopped),
            }
        };
        // The worker's thread has freed everything when this returns (a stream that ends leaves no thread).
        pipeline.finish().await;
        self.set_running(None);
        self.counters.add_run(&stats);
        Event::Ended(end)
    }

    fn set_running(&self, stats: Option<Arc<PipelineStats>>) {
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) = stats;
    }

    fn on_init(&self, init: InitSegment) {
        let mut s = self.main().lock();
        let effects = s.core.on_init(init.bytes, init.info.clone());
        self.apply(&mut s, effects);
        drop(s);
        self.phase.send_replace(Phase::Ready(init.info));
    }

    /// A fragment of the stream's own output, handed over at `now` (`wall_us` on the wall clock).
    fn on_fragment(&self, fragment: Fragment, now: Instant, wall_us: u64) {
        let c = &self.counters;
        c.fragments.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(fragment.bytes.len() as u64, Ordering::Relaxed);
        c.frames.fetch_add(u64::from(fragment.video_samples), Ordering::Relaxed);
        let mut s = self.main().lock();
        if fragment.video_samples > 0 {
            s.latencies.record(wall_us.saturating_sub(fragment.source_wallclock_us) as f64 / 1000.0);
        }
        let effects = s.core.on_fragment(&fragment, now);
        self.apply(&mut s, effects);
        drop(s);
        // Hand-overs run out with time: each of the stream's fragments is a tick of that clock.
        for o in &self.outputs[1..] {
            o.update_wanted(&o.lock(), now);
        }
    }

    /// An event of rendition `index` (of the configured ones), at `now`.
    fn on_rendition(&self, index: usize, event: RenditionEvent, now: Instant) {
        let Some(o) = self.outputs.get(index + 1) else { return };
        let mut s = o.lock();
        let effects = match event {
            RenditionEvent::Facts(info) => {
                s.info = Ok(Some(info));
                drop(s);
                if o.implicit {
                    // Main's viewers are told its name from now on, as with configured renditions.
                    self.main().lock().core.name("main");
                }
                return;
            }
            RenditionEvent::NotOffered => {
                s.info = Ok(None);
                let message = format!("the stream no longer offers {:?}: its video is H.264, play main", o.name);
                let effects = s.core.on_end(Status::error(ErrorCode::BadRequest, message), now);
                self.apply(&mut s, effects);
                o.update_wanted(&s, now);
                return;
            }
            RenditionEvent::Init(init) => s.core.on_init(init.bytes, init.info),
            RenditionEvent::Failed(message) => {
                tracing::warn!(url = %redact(&self.url), rendition = %o.name, %message, "rendition failed");
                s.info = Err(message.clone());
                let effects = s.core.on_end(Status::error(ErrorCode::InternalError, message), now);
                self.apply(&mut s, effects);
                o.update_wanted(&s, now);
                return;
            }
            RenditionEvent::Fragment(f) => {
                let c = &self.counters;
                c.fragments.fetch_add(1, Ordering::Relaxed);
                c.bytes.fetch_add(f.bytes.len() as u64, Ordering::Relaxed);
                s.core.on_fragment(&f, now)
            }
        };
        self.apply(&mut s, effects);
    }

    /// Tells the viewers when the pipeline starts or stops skipping media to stay live.
    fn check_load(&self, stats: &PipelineStats) {
        let degraded = stats.degraded.load(Ordering::Relaxed);
        let mut main = self.main().lock();
        if main.core.is_degraded() == degraded {
            return;
        }
        let status = degraded.then(|| {
            let skipped_ms =
                (self.counters.skipped_us.load(Ordering::Relaxed) + stats.skipped_us.load(Ordering::Relaxed)) / 1000;
            let share = 1.0 - stats.shed_ppm.load(Ordering::Relaxed) as f64 / 1e6;
            let fps = main.core.output().map(|o| o.fps * share);
            let frames = fps.map_or_else(String::new, |f| format!(", at {f:.1} frames a second"));
            Status::Degraded {
                message: format!(
                    "the server cannot keep up with this source: it skips ahead to stay live ({:.1} s left out so \
                     far{frames})",
                    skipped_ms as f64 / 1000.0
                ),
                skipped_ms,
            }
        });
        tracing::warn!(url = %redact(&self.url), degraded, "stream load changed");
        let effects = main.core.on_load(status.clone());
        self.apply(&mut main, effects);
        drop(main);
        for o in &self.outputs[1..] {
            let mut s = o.lock();
            let effects = s.core.on_load(status.clone());
            self.apply(&mut s, effects);
        }
    }
}
