//! One live stream: a pipeline for one source, shared by all its viewers. Keeps the init segment and the
//! fragments since the last keyframe (so joiners start at once, at a keyframe), fans fragments out, and
//! restarts the source with backoff when it drops, keeping viewers and their media timeline.

use super::viewer::Viewer;
use crate::config::RetryConfig;
use crate::media::{MediaError, OutputInfo, Pipeline, PipelineConfig, PipelineEvent};
use crate::protocol::{EndReason, ErrorCode, Status};
use bytes::Bytes;
use rumqttc::{AsyncClient, QoS};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch, Notify};

/// Fragments kept for late joiners at most; a source without keyframes must not grow the cache forever.
const MAX_GOP_FRAGMENTS: usize = 1200;
/// Latency samples kept for the stats percentiles.
const LATENCY_SAMPLES: usize = 300;

/// Where a stream is in its life, for describe requests waiting on it.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Opening the source.
    Starting,
    /// Media is flowing; what a player needs to know.
    Ready(OutputInfo),
    /// The source dropped and is being opened again.
    Reconnecting {
        /// Retry number, from 1.
        attempt: u32,
    },
    /// The stream failed for good.
    Failed {
        /// Protocol error code.
        code: ErrorCode,
        /// Message for people.
        message: String,
    },
    /// The stream stopped (source ended, no viewers, shutdown).
    Ended,
}

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
}

struct State {
    init: Option<(Bytes, OutputInfo)>,
    gop: Vec<Bytes>,
    viewers: HashMap<String, (Viewer, bool)>,
    idle_since: Option<Instant>,
    media_end_us: i64,
    ended_at: Option<Instant>,
    latencies_ms: VecDeque<f64>,
    viewer_drops_gone: u64,
}

/// A pushed source's publisher, as the stream sees it.
#[derive(Debug)]
struct Publisher {
    /// A publisher is connected (relayed endpoints), or the stream listens for ever (SRT).
    present: AtomicBool,
    arrived: Notify,
    /// The pipeline itself listens for publishers (SRT): one is there when media plays.
    listening: bool,
}

/// A live stream shared by its viewers.
pub struct Stream {
    /// The allowed URL (the registry key).
    pub url: String,
    /// What the pipeline opens: the URL itself, or for a pushed source the relay's loopback listener.
    source_url: String,
    /// Set for a pushed source: the stream waits for a publisher instead of reconnecting.
    publisher: Option<Publisher>,
    /// The requester (`ratelimit::requester`) whose request started it, for the per-requester stream limit.
    started_by: Option<String>,
    config: PipelineConfig,
    client: AsyncClient,
    qos: QoS,
    viewer_capacity: usize,
    state: Mutex<State>,
    phase: watch::Sender<Phase>,
    stopping: AtomicBool,
    stop_notify: Notify,
    /// Counters for stats.
    pub counters: Counters,
    /// The running pipeline's live counters.
    running: Mutex<Option<std::sync::Arc<crate::media::events::PipelineStats>>>,
    /// When it started.
    pub created: Instant,
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
    /// Viewers attached.
    pub viewers: usize,
    /// Fragments dropped for slow viewers plus fragments the pipeline dropped.
    pub dropped: u64,
    /// Damaged source packets: concealed by the decoder (transcode), or kept back, never sent (copy: the
    /// ones flagged corrupt and the video after them up to the next keyframe that decodes cleanly).
    pub damaged: u64,
    /// Fragments so far.
    pub fragments: u64,
    /// Source restarts.
    pub restarts: u64,
    /// Source arrival to hand-off for publishing, p50, in ms.
    pub latency_p50_ms: Option<f64>,
    /// The same, p95.
    pub latency_p95_ms: Option<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    (!sorted.is_empty()).then(|| sorted[((sorted.len() - 1) as f64 * p).round() as usize])
}

fn json(status: &Status) -> String {
    serde_json::to_string(status).unwrap_or_default()
}

impl Stream {
    /// A stream that is not running yet; call [`Stream::run`].
    pub fn new(url: String, config: PipelineConfig, client: AsyncClient, qos: QoS, viewer_capacity: usize) -> Self {
        Self {
            source_url: url.clone(),
            publisher: None,
            started_by: None,
            url,
            config,
            client,
            qos,
            viewer_capacity,
            state: Mutex::new(State {
                init: None,
                gop: Vec::new(),
                viewers: HashMap::new(),
                idle_since: Some(Instant::now()),
                media_end_us: 0,
                ended_at: None,
                latencies_ms: VecDeque::new(),
                viewer_drops_gone: 0,
            }),
            phase: watch::channel(Phase::Starting).0,
            stopping: AtomicBool::new(false),
            stop_notify: Notify::new(),
            counters: Counters::default(),
            running: Mutex::new(None),
            created: Instant::now(),
        }
    }

    /// A stream of a pushed source: its pipeline listens on `source_url`, and it waits for the next publisher
    /// when one leaves (viewers keep their session). With `listening`, the pipeline takes publishers itself
    /// for as long as the stream runs (SRT); without, the relay announces each one (`publisher_arrived`).
    pub fn pushed(self, source_url: String, listening: bool) -> Self {
        let publisher = Publisher { present: AtomicBool::new(listening), arrived: Notify::new(), listening };
        Self { source_url, publisher: Some(publisher), ..self }
    }

    /// Records which requester started the stream.
    pub fn started_by(self, requester: Option<&str>) -> Self {
        Self { started_by: requester.map(str::to_string), ..self }
    }

    /// The requester that started it, if a request did.
    pub fn starter(&self) -> Option<&str> {
        self.started_by.as_deref()
    }

    /// A publisher connected to this pushed source: the stream (re)starts its pipeline and does not linger out.
    pub fn publisher_arrived(&self) {
        if let Some(p) = &self.publisher {
            p.present.store(true, Ordering::SeqCst);
            p.arrived.notify_one();
            self.state().idle_since = None;
        }
    }

    /// The publisher left; viewers wait for the next one, and without viewers the stream lingers out.
    pub fn publisher_left(&self) {
        if let Some(p) = &self.publisher {
            p.present.store(false, Ordering::SeqCst);
            let mut state = self.state();
            if state.viewers.is_empty() {
                state.idle_since = Some(Instant::now());
            }
        }
    }

    /// Whether a publisher sends to this pushed source.
    pub fn has_publisher(&self) -> bool {
        match &self.publisher {
            Some(p) if p.listening => matches!(*self.phase.borrow(), Phase::Ready(_)),
            Some(p) => p.present.load(Ordering::SeqCst),
            None => false,
        }
    }

    /// Whether the stream runs without viewers: a pushed source while a publisher is connected (or listened for).
    pub fn is_pinned(&self) -> bool {
        self.publisher.as_ref().is_some_and(|p| p.present.load(Ordering::SeqCst))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches the phase (describe waits for `Ready` or `Failed`).
    pub fn phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Whether the stream can still take viewers.
    pub fn is_alive(&self) -> bool {
        !self.stopping.load(Ordering::Relaxed) && !matches!(*self.phase.borrow(), Phase::Failed { .. } | Phase::Ended)
    }

    /// Asks the stream to stop; its task ends the viewers and frees the pipeline.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.stop_notify.notify_one();
    }

    async fn stopped(&self) {
        while !self.stopping.load(Ordering::Relaxed) {
            self.stop_notify.notified().await;
        }
    }

    /// Keeps the stream from lingering out for another linger period (a describe is usually followed by play).
    pub fn touch(&self) {
        let mut state = self.state();
        if state.viewers.is_empty() {
            state.idle_since = Some(Instant::now());
        }
    }

    /// Viewers attached now.
    pub fn viewer_count(&self) -> usize {
        self.state().viewers.len()
    }

    /// How long it has had no viewer, if it has none.
    pub fn idle_for(&self) -> Option<Duration> {
        self.state().idle_since.map(|t| t.elapsed())
    }

    /// Attaches (or re-attaches) a viewer: it gets the init segment and the current GOP at once if the stream
    /// is playing, else as soon as it is. Returns false when the stream is full.
    pub fn add_viewer(&self, reply_topic: &str, max_viewers: usize) -> bool {
        let mut state = self.state();
        if let Some((old, _)) = state.viewers.remove(reply_topic) {
            old.discard();
        }
        if state.viewers.len() >= max_viewers {
            return false;
        }
        let viewer = Viewer::new(reply_topic.to_string(), self.viewer_capacity);
        viewer.spawn_publisher(self.client.clone(), self.qos);
        let started = match &state.init {
            Some((init, info)) => {
                let mut queue = viewer.queue();
                queue.push_status(json(&Status::Playing { mime_codec: info.mime_codec.clone() }));
                queue.push_start(init.clone(), &state.gop);
                true
            }
            None => {
                // Tell the page something is happening while the source opens (up to the connect timeout).
                viewer.queue().push_status(json(&Status::Buffering { attempt: 1, retry_in_ms: 0 }));
                false
            }
        };
        viewer.wake();
        state.viewers.insert(reply_topic.to_string(), (viewer, started));
        state.idle_since = None;
        true
    }

    /// Whether a viewer with this reply topic is attached.
    pub fn has_viewer(&self, reply_topic: &str) -> bool {
        self.state().viewers.contains_key(reply_topic)
    }

    /// Ends every viewer with `shutdown` and stops.
    pub fn shutdown(&self) {
        self.end_viewers(&Status::Ended { reason: EndReason::Shutdown });
        self.stop();
    }

    /// Renews a viewer's timeout.
    pub fn renew_viewer(&self, reply_topic: &str) {
        if let Some((viewer, _)) = self.state().viewers.get_mut(reply_topic) {
            viewer.last_seen = Instant::now();
        }
    }

    /// Detaches a viewer, telling it why (or, with `None`, silently: its topic lives on elsewhere); false
    /// when it was not attached.
    pub fn remove_viewer(&self, reply_topic: &str, reason: Option<EndReason>) -> bool {
        let mut state = self.state();
        let Some((viewer, _)) = state.viewers.remove(reply_topic) else { return false };
        state.viewer_drops_gone += viewer.queue().dropped;
        match reason {
            Some(reason) => {
                viewer.queue().push_status(json(&Status::Ended { reason }));
                viewer.close();
            }
            None => viewer.discard(),
        }
        if state.viewers.is_empty() {
            state.idle_since = Some(Instant::now());
        }
        true
    }

    /// Viewers that have not renewed their play within `timeout`.
    pub fn expired_viewers(&self, timeout: Duration) -> Vec<String> {
        let state = self.state();
        state
            .viewers
            .values()
            .filter(|(v, _)| v.last_seen.elapsed() > timeout)
            .map(|(v, _)| v.reply_topic.clone())
            .collect()
    }

    /// The init segment and the fragment that starts the current GOP (a keyframe), once there are both.
    pub fn keyframe(&self) -> Option<(Bytes, Bytes)> {
        let state = self.state();
        Some((state.init.as_ref()?.0.clone(), state.gop.first()?.clone()))
    }

    /// Numbers for the stats message.
    pub fn stats(&self, shown_url: String) -> StreamStats {
        let state = self.state();
        let mut sorted: Vec<f64> = state.latencies_ms.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let phase = self.phase.borrow().clone();
        let viewer_drops: u64 =
            state.viewers.values().map(|(v, _)| v.queue().dropped).sum::<u64>() + state.viewer_drops_gone;
        StreamStats {
            url: shown_url,
            state: match phase {
                Phase::Starting => "starting",
                Phase::Ready(_) => "playing",
                Phase::Reconnecting { .. } => "reconnecting",
                Phase::Failed { .. } => "failed",
                Phase::Ended => "ended",
            },
            output: state.init.as_ref().map(|(_, info)| info.clone()),
            viewers: state.viewers.len(),
            dropped: viewer_drops + self.counters.pipeline_drops.load(Ordering::Relaxed),
            damaged: self.counters.damaged.load(Ordering::Relaxed)
                + self
                    .running
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_ref()
                    .map_or(0, |s| s.damaged.load(Ordering::Relaxed)),
            fragments: self.counters.fragments.load(Ordering::Relaxed),
            restarts: self.counters.restarts.load(Ordering::Relaxed),
            latency_p50_ms: percentile(&sorted, 0.5),
            latency_p95_ms: percentile(&sorted, 0.95),
        }
    }

    /// Sends a status to every viewer.
    fn broadcast(&self, status: &Status) {
        let text = json(status);
        for (viewer, _) in self.state().viewers.values() {
            viewer.queue().push_status(text.clone());
            viewer.wake();
        }
    }

    /// Ends every viewer with a final status.
    fn end_viewers(&self, status: &Status) {
        let text = json(status);
        let mut state = self.state();
        for (_, (viewer, _)) in state.viewers.drain() {
            viewer.queue().push_status(text.clone());
            viewer.close();
        }
        state.idle_since = Some(Instant::now());
    }

    fn on_init(&self, bytes: Bytes, info: OutputInfo) {
        let mut state = self.state();
        let changed = state.init.as_ref().is_none_or(|(old, _)| *old != bytes);
        state.gop.clear();
        let playing = json(&Status::Playing { mime_codec: info.mime_codec.clone() });
        for (viewer, started) in state.viewers.values_mut() {
            // Same init after a restart: the viewer's decoder is still set up, only media continues.
            if changed || !*started {
                let mut queue = viewer.queue();
                queue.push_status(playing.clone());
                queue.push_start(bytes.clone(), &[]);
                *started = true;
            }
            viewer.wake();
        }
        state.init = Some((bytes, info.clone()));
        drop(state);
        self.phase.send_replace(Phase::Ready(info));
    }

    fn on_fragment(&self, fragment: crate::media::Fragment) {
        let c = &self.counters;
        c.fragments.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(fragment.bytes.len() as u64, Ordering::Relaxed);
        c.frames.fetch_add(u64::from(fragment.video_samples), Ordering::Relaxed);
        let lag_ms = crate::media::timing::wallclock_us().saturating_sub(fragment.source_wallclock_us) as f64 / 1000.0;
        let mut state = self.state();
        state.media_end_us = state.media_end_us.max(fragment.media_time_us + fragment.duration_us);
        if state.latencies_ms.len() == LATENCY_SAMPLES {
            state.latencies_ms.pop_front();
        }
        if fragment.video_samples > 0 {
            state.latencies_ms.push_back(lag_ms);
        }
        if fragment.keyframe {
            state.gop.clear();
        }
        if (!state.gop.is_empty() || fragment.keyframe) && state.gop.len() < MAX_GOP_FRAGMENTS {
            state.gop.push(fragment.bytes.clone());
        } else if state.gop.len() >= MAX_GOP_FRAGMENTS {
            state.gop.clear();
        }
        for (viewer, started) in state.viewers.values() {
            if *started {
                viewer.queue().push_fragment(fragment.bytes.clone(), fragment.keyframe);
                viewer.wake();
            }
        }
    }

    /// The stream's task panicked: its viewers get an error, and it counts as failed.
    pub fn crashed(&self) {
        let message = "the stream stopped on an internal error (see the server's log); play again to start it afresh";
        self.fail(ErrorCode::InternalError, message.into());
    }

    fn fail(&self, code: ErrorCode, message: String) {
        tracing::warn!(url = %crate::policy::redact(&self.url), code = code.as_str(), %message, "stream failed");
        self.end_viewers(&Status::error(code, message.clone()));
        self.phase.send_replace(Phase::Failed { code, message });
    }

    /// Runs the stream until it fails, its source ends, or it is stopped; restarts the source after drops.
    pub async fn run(&self, retry: RetryConfig) {
        let mut attempt = 0u32;
        let mut ever_ready = false;
        'run: loop {
            if let Some(publisher) = &self.publisher {
                while !publisher.present.load(Ordering::SeqCst) {
                    tokio::select! {
                        _ = publisher.arrived.notified() => {}
                        _ = self.stopped() => {
                            self.end_viewers(&Status::Ended { reason: EndReason::Stopped });
                            break 'run;
                        }
                    }
                }
            }
            let offset = {
                let state = self.state();
                // Continue the viewers' timeline, leaving the outage as a gap they can skip.
                state.media_end_us + state.ended_at.map_or(0, |t| t.elapsed().as_micros() as i64)
            };
            let started = Instant::now();
            let pipeline = match Pipeline::start_at(&self.source_url, self.config.clone(), offset) {
                Ok(p) => p,
                Err(e) => return self.fail(error_code(&e), e.to_string()),
            };
            let stopper = pipeline.stopper();
            let stats = std::sync::Arc::clone(pipeline.stats());
            *self.running.lock().unwrap_or_else(PoisonError::into_inner) = Some(std::sync::Arc::clone(&stats));
            let (tx, mut rx) = mpsc::channel(64);
            let (done_tx, done_rx) = oneshot::channel::<()>();
            // The pipeline's channel is blocking; a thread of its own bridges it, and exits with it (a
            // blocking-pool thread would linger after the stream).
            let bridge = std::thread::Builder::new().name("media bridge".into()).spawn(move || {
                for event in pipeline.events().iter() {
                    if tx.blocking_send(event).is_err() {
                        break;
                    }
                }
                pipeline.join();
                drop(done_tx);
            });
            if let Err(e) = bridge {
                stopper.stop();
                return self.fail(ErrorCode::InternalError, format!("cannot start a thread: {e}"));
            }
            let mut end = None;
            loop {
                tokio::select! {
                    event = rx.recv() => match event {
                        Some(PipelineEvent::Init(init)) => {
                            self.on_init(init.bytes, init.info);
                            ever_ready = true;
                            attempt = 0;
                        }
                        Some(PipelineEvent::Fragment(f)) => {
                            super::supervise::fault_point(&self.url);
                            self.on_fragment(f);
                        }
                        Some(PipelineEvent::Source(_)) => {}
                        Some(PipelineEvent::End(result)) => { end = Some(result); break; }
                        None => { end = Some(Err(MediaError::Processing("the media thread ended".into()))); break; }
                    },
                    _ = self.stopped() => break,
                }
            }
            stopper.stop();
            drop(rx);
            let _ = done_rx.await;
            *self.running.lock().unwrap_or_else(PoisonError::into_inner) = None;
            let done = stats.snapshot();
            self.counters.pipeline_drops.fetch_add(done.fragments_dropped, Ordering::Relaxed);
            self.counters.damaged.fetch_add(done.damaged, Ordering::Relaxed);
            self.state().ended_at = Some(Instant::now());

            match end {
                None | Some(Err(MediaError::Stopped)) => {
                    self.end_viewers(&Status::Ended { reason: EndReason::Stopped });
                    break;
                }
                // A pushed source's end is its publisher leaving, or sending what we cannot use: either way
                // the endpoint goes on listening and the viewers wait for the next publisher.
                Some(result) if self.publisher.is_some() => {
                    let why = match result {
                        Ok(()) | Err(MediaError::Ended) => "the publisher disconnected".to_string(),
                        Err(e) => format!("the publisher's stream failed: {e}"),
                    };
                    tracing::info!(url = %self.url, reason = %why, "pushed source waiting for a publisher");
                    attempt += 1;
                    self.counters.restarts.fetch_add(1, Ordering::Relaxed);
                    for (viewer, _) in self.state().viewers.values() {
                        viewer.queue().reset_media();
                    }
                    self.state().gop.clear();
                    self.broadcast(&Status::Waiting { message: format!("{why}; waiting for it to come back") });
                    self.phase.send_replace(Phase::Reconnecting { attempt });
                    // A listener that fails at once (its port taken, say) must not spin.
                    if started.elapsed() < Duration::from_secs(1) {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = self.stopped() => {}
                        }
                    }
                }
                Some(Ok(())) => {
                    self.end_viewers(&Status::Ended { reason: EndReason::SourceEnded });
                    break;
                }
                Some(Err(e)) if e.is_transient() && ever_ready => {
                    attempt += 1;
                    if !retry.allows(attempt) {
                        return self
                            .fail(ErrorCode::SourceEnded, format!("gave up after {} retries: {e}", attempt - 1));
                    }
                    let wait = retry.backoff(attempt);
                    tracing::info!(url = %crate::policy::redact(&self.url), attempt, error = %e, "source dropped, retrying in {wait:?}");
                    self.counters.restarts.fetch_add(1, Ordering::Relaxed);
                    for (viewer, _) in self.state().viewers.values() {
                        viewer.queue().reset_media();
                    }
                    self.state().gop.clear();
                    self.broadcast(&Status::Reconnecting { attempt, retry_in_ms: wait.as_millis() as u64 });
                    self.phase.send_replace(Phase::Reconnecting { attempt });
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.stopped() => {
                            self.end_viewers(&Status::Ended { reason: EndReason::Stopped });
                            break;
                        }
                    }
                }
                Some(Err(e)) => return self.fail(error_code(&e), e.to_string()),
            }
        }
        self.phase.send_replace(Phase::Ended);
    }
}

/// The protocol error code of a media error.
pub fn error_code(e: &MediaError) -> ErrorCode {
    ErrorCode::from_code(e.code()).unwrap_or(ErrorCode::InternalError)
}
