//! One live stream: a pipeline for one source, shared by all its viewers. Its state and what it publishes
//! are decided by the pure [`core::StreamCore`]; this shell runs the pipeline, restarts the source with
//! backoff when it drops (keeping viewers and their media timeline), and carries the core's effects out:
//! each viewer's queue and publisher on its reply topic, and one publisher for the stream's own topics.

pub mod core;
pub mod ids;
pub mod supervisor;

use super::viewer::Viewer;
use crate::config::RetryConfig;
use crate::media::events::PipelineStats;
use crate::media::events::{RenditionEvent, RenditionInfo};
use crate::media::pipeline::{Gate, Start};
use crate::media::rendition::RenditionControl;
use crate::media::{MediaError, OutputInfo, Pipeline, PipelineConfig, PipelineEvent};
use crate::protocol::{EndReason, ErrorCode, Status, StreamTopics};
use bytes::Bytes;
use core::{Delivery, Effect, Full, StreamCore, Topic};
use rumqttc::{AsyncClient, QoS};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

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

/// The viewers' queues and publishers, and what they leave behind.
struct Queues {
    viewers: HashMap<String, Viewer>,
    /// The stream's own media topic, with the same GOP-aware queue as a viewer.
    shared: Option<Viewer>,
    /// Drops of viewers that are gone.
    drops_gone: u64,
    latencies_ms: VecDeque<f64>,
}

/// How long a rendition a viewer left stays published (and encoded) at least, for its hand-over: the page
/// goes on playing it until the rendition it moved to reaches a keyframe.
const HAND_OVER: Duration = Duration::from_secs(4);

/// One of the stream's outputs: its own (`main`) or one of its renditions, each with its own topics, state and
/// queues.
struct Output {
    /// `main`, or the rendition's name.
    name: String,
    /// A rendition's switch and numbering, shared with each pipeline run; `None` for main (always encoded).
    control: Option<Arc<RenditionControl>>,
    core: Mutex<StreamCore>,
    queues: Mutex<Queues>,
    /// A rendition's facts, told by the pipeline once its source is open, or why it failed in this run.
    info: Mutex<Result<Option<RenditionInfo>, String>>,
}

impl Output {
    fn new(name: &str, control: Option<Arc<RenditionControl>>, core: StreamCore) -> Self {
        Self {
            name: name.to_string(),
            control,
            core: Mutex::new(core),
            queues: Mutex::new(Queues {
                viewers: HashMap::new(),
                shared: None,
                drops_gone: 0,
                latencies_ms: VecDeque::new(),
            }),
            info: Mutex::new(Ok(None)),
        }
    }

    fn info(&self) -> MutexGuard<'_, Result<Option<RenditionInfo>, String>> {
        self.info.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn core(&self) -> MutexGuard<'_, StreamCore> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn queues(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells the pipeline whether to encode it (a rendition), from its viewers and hand-overs.
    fn update_wanted(&self, now: Instant) {
        if let Some(control) = &self.control {
            control.set_wanted(self.core().is_wanted(now));
        }
    }
}

/// Why a viewer could not be attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinRefused {
    /// The stream has its maximum of viewers.
    Full,
    /// The stream has no rendition of that name; the message lists those it has.
    UnknownRendition(String),
    /// The rendition failed in the source's current run; the message says why.
    Unavailable(String),
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
    /// Asked by each pipeline run once it knows what its source needs (the CPU budget).
    gate: Option<Gate>,
    client: AsyncClient,
    qos: QoS,
    viewer_capacity: usize,
    /// Its own output first, then its renditions.
    outputs: Vec<Output>,
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

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    (!sorted.is_empty()).then(|| sorted[((sorted.len() - 1) as f64 * p).round() as usize])
}

fn json(status: &Status) -> String {
    serde_json::to_string(status).unwrap_or_default()
}

impl Stream {
    /// A stream that is not running yet, whose shared media goes to `topics`; call [`Stream::run`].
    pub fn new(
        url: String,
        topics: StreamTopics,
        config: PipelineConfig,
        client: AsyncClient,
        qos: QoS,
        viewer_capacity: usize,
    ) -> Self {
        let now = Instant::now();
        let named = !config.renditions.is_empty();
        let main = StreamCore::new(topics.clone(), now);
        let mut outputs = vec![Output::new("main", None, if named { main.named("main") } else { main })];
        for r in &config.renditions {
            let core = StreamCore::new(topics.rendition(&r.name), now).named(&r.name);
            outputs.push(Output::new(&r.name, Some(Arc::default()), core));
        }
        Self {
            source_url: url.clone(),
            publisher: None,
            started_by: None,
            url,
            config,
            gate: None,
            client,
            qos,
            viewer_capacity,
            outputs,
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

    /// Has every pipeline run ask `gate` before it takes on its source's work.
    pub fn gated(self, gate: Gate) -> Self {
        Self { gate: Some(gate), ..self }
    }

    /// The running pipeline's counters, if one runs.
    fn running(&self) -> Option<std::sync::Arc<PipelineStats>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Share of its source's frames the running pipeline encodes now.
    pub fn frame_share(&self) -> f64 {
        self.running().map_or(1.0, |s| 1.0 - s.shed_ppm.load(Ordering::Relaxed) as f64 / 1e6)
    }

    /// How far the running pipeline is behind real time, in µs.
    pub fn lag_us(&self) -> u64 {
        self.running().map_or(0, |s| s.lag_us.load(Ordering::Relaxed))
    }

    /// Records which requester started the stream.
    pub fn started_by(self, requester: Option<&str>) -> Self {
        Self { started_by: requester.map(str::to_string), ..self }
    }

    /// The requester that started it, if a request did.
    pub fn starter(&self) -> Option<&str> {
        self.started_by.as_deref()
    }

    /// The stream's own topics (protocol v2).
    pub fn topics(&self) -> StreamTopics {
        self.core().topics().clone()
    }

    /// A publisher connected to this pushed source: the stream (re)starts its pipeline and does not linger out.
    pub fn publisher_arrived(&self) {
        if let Some(p) = &self.publisher {
            p.present.store(true, Ordering::SeqCst);
            p.arrived.notify_one();
            self.core().pin();
        }
    }

    /// The publisher left; viewers wait for the next one, and without viewers the stream lingers out.
    pub fn publisher_left(&self) {
        if let Some(p) = &self.publisher {
            p.present.store(false, Ordering::SeqCst);
            self.core().touch(Instant::now());
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

    /// Its own output's state.
    fn core(&self) -> MutexGuard<'_, StreamCore> {
        self.outputs[0].core()
    }

    fn queues(&self) -> MutexGuard<'_, Queues> {
        self.outputs[0].queues()
    }

    /// The output a play asks for: `None` and `main` are the stream's own.
    fn output(&self, rendition: Option<&str>) -> Result<&Output, JoinRefused> {
        let name = rendition.unwrap_or("main");
        self.outputs.iter().find(|o| o.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.outputs.iter().map(|o| o.name.as_str()).collect();
            let has = if names.len() > 1 { format!("it has {}", names.join(", ")) } else { "it has none".into() };
            JoinRefused::UnknownRendition(format!("the stream has no rendition {name:?}: {has}"))
        })
    }

    /// What a player can choose from: `main` (the stream's output) and each rendition whose facts are
    /// known; empty for a stream without renditions or before its source is open.
    pub fn renditions(&self) -> Vec<RenditionInfo> {
        if self.outputs.len() < 2 {
            return Vec::new();
        }
        let main = {
            let core = self.core();
            let Some(o) = core.output() else { return Vec::new() };
            let configured = self.config.video.bitrate_kbps;
            let bitrate_kbps = match o.video {
                crate::media::plan::TrackMode::Transcode if configured > 0 => Some(configured),
                _ => core.bitrate_kbps(),
            };
            RenditionInfo {
                name: "main".into(),
                mime_codec: o.mime_codec.clone(),
                width: o.width,
                height: o.height,
                fps: o.fps,
                bitrate_kbps,
            }
        };
        let rest = self.outputs[1..].iter().filter_map(|o| o.info().clone().ok().flatten());
        std::iter::once(main).chain(rest).collect()
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
        self.core().touch(Instant::now());
    }

    /// Viewers attached now, on any of its outputs.
    pub fn viewer_count(&self) -> usize {
        self.outputs.iter().map(|o| o.core().viewer_count()).sum()
    }

    /// How long it has had no viewer on any output, if it has none.
    pub fn idle_for(&self) -> Option<Duration> {
        let now = Instant::now();
        self.outputs
            .iter()
            .map(|o| o.core().idle_for(now))
            .try_fold(Duration::MAX, |least, idle| Some(least.min(idle?)))
    }

    /// Attaches (or re-attaches) a viewer to its own output or to `rendition`: it gets the init segment and
    /// the current GOP at once if that is playing, else as soon as it is. A viewer on another of the stream's
    /// outputs moves, and the one it left stays published for its hand-over.
    pub fn add_viewer(
        &self,
        reply_topic: &str,
        delivery: Delivery,
        max_viewers: usize,
        rendition: Option<&str>,
    ) -> Result<(), JoinRefused> {
        let target = self.output(rendition)?;
        if let Err(why) = &*target.info() {
            return Err(JoinRefused::Unavailable(why.clone()));
        }
        let now = Instant::now();
        if !self.has_viewer_anywhere(reply_topic) && self.viewer_count() >= max_viewers {
            return Err(JoinRefused::Full);
        }
        let keyframes = Duration::from_secs_f64(self.config.video.keyframe_interval_secs.clamp(0.0, 60.0) * 3.0);
        let hand_over = HAND_OVER.max(keyframes);
        for o in self.outputs.iter().filter(|o| !std::ptr::eq(*o, target)) {
            let mut core = o.core();
            let effects = core.hand_over(reply_topic, now + hand_over, now);
            self.apply_on(o, &core, effects);
        }
        let mut core = target.core();
        let effects = core.join(reply_topic, delivery, usize::MAX, now).map_err(|Full| JoinRefused::Full)?;
        self.apply_on(target, &core, effects);
        drop(core);
        target.update_wanted(now);
        Ok(())
    }

    /// Whether a viewer with this reply topic is attached to any of its outputs.
    pub fn has_viewer_anywhere(&self, reply_topic: &str) -> bool {
        self.outputs.iter().any(|o| o.core().has_viewer(reply_topic))
    }

    /// Whether a viewer with this reply topic is attached to that output (`None`: the stream's own).
    pub fn has_viewer(&self, reply_topic: &str, rendition: Option<&str>) -> bool {
        self.output(rendition).is_ok_and(|o| o.core().has_viewer(reply_topic))
    }

    /// Ends every viewer with `shutdown` and stops.
    pub fn shutdown(&self) {
        self.end_viewers(Status::Ended { reason: EndReason::Shutdown });
        self.stop();
    }

    /// Renews a viewer's lease.
    pub fn renew_viewer(&self, reply_topic: &str) {
        let now = Instant::now();
        for o in &self.outputs {
            o.core().renew(reply_topic, now);
        }
    }

    /// Detaches a viewer, telling it why (or, with `None`, silently: its topic lives on elsewhere).
    pub fn remove_viewer(&self, reply_topic: &str, reason: Option<EndReason>) {
        let now = Instant::now();
        for o in &self.outputs {
            let mut core = o.core();
            let effects = core.leave(reply_topic, reason, now);
            self.apply_on(o, &core, effects);
            drop(core);
            o.update_wanted(now);
        }
    }

    /// Ends the viewers that have not renewed their play within `timeout`; returns their reply topics.
    pub fn expire_viewers(&self, timeout: Duration) -> Vec<String> {
        let now = Instant::now();
        let mut all = Vec::new();
        for o in &self.outputs {
            let mut core = o.core();
            let (expired, effects) = core.expire(timeout, now);
            self.apply_on(o, &core, effects);
            drop(core);
            o.update_wanted(now);
            all.extend(expired);
        }
        all
    }

    /// The init segment and the fragment that starts the current GOP (a keyframe), once there are both.
    pub fn keyframe(&self) -> Option<(Bytes, Bytes)> {
        self.core().keyframe()
    }

    /// Numbers for the stats message.
    pub fn stats(&self, shown_url: String) -> StreamStats {
        let output = self.core().output().cloned();
        let (mut viewers, mut shared_viewers, mut dropped_by_viewers) = (0, 0, 0);
        let mut renditions = Vec::new();
        let at = Instant::now();
        for o in &self.outputs {
            let core = o.core();
            viewers += core.viewer_count();
            shared_viewers += core.shared_count();
            let q = o.queues();
            let live: u64 = q.viewers.values().chain(q.shared.iter()).map(|v| v.queue().dropped).sum();
            dropped_by_viewers += live + q.drops_gone;
            if self.outputs.len() > 1 {
                renditions.push(RenditionStats {
                    name: o.name.clone(),
                    viewers: core.viewer_count(),
                    encoding: o.control.as_ref().is_none_or(|c| c.wanted() && core.is_wanted(at)),
                    bitrate_kbps: core.bitrate_kbps(),
                    encode_seconds: o.control.as_ref().map(|c| c.encode_seconds()),
                });
            }
        }
        let mut sorted = self.queues().latencies_ms.iter().copied().collect::<Vec<f64>>();
        sorted.sort_by(f64::total_cmp);
        let phase = self.phase.borrow().clone();
        let running = self.running();
        let now = |f: fn(&PipelineStats) -> &AtomicU64| running.as_ref().map_or(0, |s| f(s).load(Ordering::Relaxed));
        let running_damaged = now(|s| &s.damaged);
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
            dropped: dropped_by_viewers + self.counters.pipeline_drops.load(Ordering::Relaxed),
            damaged: self.counters.damaged.load(Ordering::Relaxed) + running_damaged,
            fragments: self.counters.fragments.load(Ordering::Relaxed),
            published_bytes: self.counters.published_bytes.load(Ordering::Relaxed),
            restarts: self.counters.restarts.load(Ordering::Relaxed),
            latency_p50_ms: percentile(&sorted, 0.5),
            latency_p95_ms: percentile(&sorted, 0.95),
            lag_ms: now(|s| &s.lag_us) / 1000,
            frame_share: self.frame_share(),
            degraded: self.core().is_degraded(),
            skips: c.skips.load(Ordering::Relaxed) + now(|s| &s.skips),
            skipped_ms: (c.skipped_us.load(Ordering::Relaxed) + now(|s| &s.skipped_us)) / 1000,
            frames_shed: c.frames_shed.load(Ordering::Relaxed) + now(|s| &s.frames_shed),
            cpu_percent: None,
        }
    }

    /// Carries out what the core of its own output decided, while its lock is held (so that effects keep
    /// their order).
    fn apply(&self, core: &StreamCore, effects: Vec<Effect>) {
        self.apply_on(&self.outputs[0], core, effects);
    }

    /// Carries out what the core of `output` decided, while its lock is held.
    fn apply_on(&self, output: &Output, core: &StreamCore, effects: Vec<Effect>) {
        if effects.is_empty() {
            return;
        }
        let mut q = output.queues();
        for effect in effects {
            self.carry_out(core, &mut q, effect);
        }
    }

    fn carry_out(&self, core: &StreamCore, q: &mut Queues, effect: Effect) {
        let published = |n: usize| self.counters.published_bytes.fetch_add(n as u64, Ordering::Relaxed);
        match effect {
            Effect::Open { viewer } => {
                let v = Viewer::new(viewer.clone(), self.viewer_capacity);
                v.spawn_publisher(self.client.clone(), self.qos);
                q.viewers.insert(viewer, v);
            }
            Effect::Status { viewer, status } => {
                if let Some(v) = q.viewers.get(&viewer) {
                    v.queue().push_status(json(&status));
                    v.wake();
                }
            }
            Effect::Start { viewer, init, gop } => {
                if let Some(v) = q.viewers.get(&viewer) {
                    published(init.len() + gop.iter().map(Bytes::len).sum::<usize>());
                    v.queue().push_start(init, &gop);
                    v.wake();
                }
            }
            Effect::Fragment { viewer, bytes, keyframe } => {
                if let Some(v) = q.viewers.get(&viewer) {
                    published(bytes.len());
                    v.queue().push_fragment(bytes, keyframe);
                    v.wake();
                }
            }
            Effect::ResetMedia { viewer } => {
                if let Some(v) = q.viewers.get(&viewer) {
                    v.queue().reset_media();
                }
            }
            Effect::Close { viewer } => {
                if let Some(v) = q.viewers.remove(&viewer) {
                    q.drops_gone += v.queue().dropped;
                    v.close();
                }
            }
            Effect::Discard { viewer } => {
                if let Some(v) = q.viewers.remove(&viewer) {
                    q.drops_gone += v.queue().dropped;
                    v.discard();
                }
            }
            Effect::Publish { topic: Topic::Media, payload, .. } => {
                // One queue for the stream's media topic, dropping whole GOPs like a viewer's when it lags.
                let shared = q.shared.get_or_insert_with(|| {
                    let v = Viewer::new(core.topics().media.clone(), self.viewer_capacity);
                    v.queue().take_from_here();
                    v.spawn_publisher(self.client.clone(), self.qos);
                    v
                });
                published(payload.len());
                if payload.get(4..8) == Some(b"ftyp") {
                    // A new init segment in band: never dropped, and only a keyframe may follow it.
                    shared.queue().push_start(payload, &[]);
                } else {
                    let keyframe = crate::media::fmp4::starts_with_keyframe(&payload);
                    shared.queue().push_fragment(payload, keyframe);
                }
                shared.wake();
            }
            Effect::Publish { topic, payload, retain } => {
                let name = match topic {
                    Topic::Init => &core.topics().init,
                    _ => &core.topics().state,
                };
                // Rare and small (a change of init or state): straight to the client, in order.
                if let Err(e) = self.client.try_publish(name.as_str(), QoS::AtLeastOnce, retain, payload) {
                    tracing::warn!(error = %e, topic = %name, "could not queue a stream topic");
                }
            }
        }
    }

    /// Ends every viewer with a final status.
    fn end_viewers(&self, status: Status) {
        let now = Instant::now();
        for o in &self.outputs {
            let mut core = o.core();
            let effects = core.on_end(status.clone(), now);
            self.apply_on(o, &core, effects);
            drop(core);
            o.update_wanted(now);
        }
    }

    fn on_init(&self, bytes: Bytes, info: OutputInfo) {
        let mut core = self.core();
        let effects = core.on_init(bytes, info.clone());
        self.apply(&core, effects);
        drop(core);
        self.phase.send_replace(Phase::Ready(info));
    }

    /// Tells the viewers when the pipeline starts or stops skipping media to stay live.
    fn check_load(&self, stats: &PipelineStats) {
        let degraded = stats.degraded.load(Ordering::Relaxed);
        let mut core = self.core();
        if core.is_degraded() == degraded {
            return;
        }
        let status = degraded.then(|| {
            let skipped_ms = (self.counters.skipped_us.load(Ordering::Relaxed)
                + stats.skipped_us.load(Ordering::Relaxed))
                / 1000;
            let share = 1.0 - stats.shed_ppm.load(Ordering::Relaxed) as f64 / 1e6;
            let fps = core.output().map(|o| o.fps * share);
            let frames = fps.map_or_else(String::new, |f| format!(", at {f:.1} frames a second"));
            Status::Degraded {
                message: format!(
                    "the server cannot keep up with this source: it skips ahead to stay live ({:.1} s left out so                      far{frames})",
                    skipped_ms as f64 / 1000.0
                ),
                skipped_ms,
            }
        });
        tracing::warn!(url = %crate::policy::redact(&self.url), degraded, "stream load changed");
        let effects = core.on_load(status.clone());
        self.apply(&core, effects);
        drop(core);
        for o in &self.outputs[1..] {
            let mut core = o.core();
            let effects = core.on_load(status.clone());
            self.apply_on(o, &core, effects);
        }
    }

    fn on_fragment(&self, fragment: crate::media::Fragment) {
        let c = &self.counters;
        c.fragments.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(fragment.bytes.len() as u64, Ordering::Relaxed);
        c.frames.fetch_add(u64::from(fragment.video_samples), Ordering::Relaxed);
        if fragment.video_samples > 0 {
            let lag_ms =
                crate::media::timing::wallclock_us().saturating_sub(fragment.source_wallclock_us) as f64 / 1000.0;
            let mut q = self.queues();
            if q.latencies_ms.len() == LATENCY_SAMPLES {
                q.latencies_ms.pop_front();
            }
            q.latencies_ms.push_back(lag_ms);
        }
        let now = Instant::now();
        let mut core = self.core();
        let effects = core.on_fragment(&fragment, now);
        self.apply(&core, effects);
        drop(core);
        // Hand-overs run out with time: each of the stream's fragments is a tick of that clock.
        for o in &self.outputs[1..] {
            o.update_wanted(now);
        }
    }

    /// An event of rendition `index` (of the configured ones).
    fn on_rendition(&self, index: usize, event: RenditionEvent) {
        let Some(o) = self.outputs.get(index + 1) else { return };
        let now = Instant::now();
        let mut core = o.core();
        let effects = match event {
            RenditionEvent::Facts(info) => {
                *o.info() = Ok(Some(info));
                return;
            }
            RenditionEvent::Init(init) => core.on_init(init.bytes, init.info),
            RenditionEvent::Failed(message) => {
                tracing::warn!(url = %crate::policy::redact(&self.url), rendition = %o.name, %message, "rendition failed");
                *o.info() = Err(message.clone());
                let effects = core.on_end(Status::error(ErrorCode::InternalError, message), now);
                self.apply_on(o, &core, effects);
                drop(core);
                o.update_wanted(now);
                return;
            }
            RenditionEvent::Fragment(f) => {
                let c = &self.counters;
                c.fragments.fetch_add(1, Ordering::Relaxed);
                c.bytes.fetch_add(f.bytes.len() as u64, Ordering::Relaxed);
                core.on_fragment(&f, now)
            }
        };
        self.apply_on(o, &core, effects);
    }

    /// The source is gone for now: viewers keep their session and are told `status`.
    fn on_source_lost(&self, status: Status) {
        let now = Instant::now();
        for o in &self.outputs {
            let mut core = o.core();
            let effects = core.on_source_lost(status.clone(), now);
            self.apply_on(o, &core, effects);
        }
    }

    /// The stream's task panicked: its viewers get an error, and it counts as failed.
    pub fn crashed(&self) {
        let message = "the stream stopped on an internal error (see the server's log); play again to start it afresh";
        self.fail(ErrorCode::InternalError, message.into());
    }

    fn fail(&self, code: ErrorCode, message: String) {
        tracing::warn!(url = %crate::policy::redact(&self.url), code = code.as_str(), %message, "stream failed");
        self.end_viewers(Status::error(code, message.clone()));
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
                            self.end_viewers(Status::Ended { reason: EndReason::Stopped });
                            break 'run;
                        }
                    }
                }
            }
            // Continue the viewers' timeline, leaving the outage as a gap they can skip, and the sequence numbers.
            let (offset, sequence) = {
                let core = self.core();
                (core.restart_offset_us(Instant::now()), core.next_sequence())
            };
            let started = Instant::now();
            let start = Start {
                offset_us: offset,
                first_sequence: sequence,
                gate: self.gate.clone(),
                renditions: self.outputs[1..].iter().filter_map(|o| o.control.clone()).collect(),
            };
            let mut pipeline = match Pipeline::start_with(&self.source_url, self.config.clone(), start) {
                Ok(p) => p,
                Err(e) => return self.fail(error_code(&e), e.to_string()),
            };
            let stats = std::sync::Arc::clone(pipeline.stats());
            *self.running.lock().unwrap_or_else(PoisonError::into_inner) = Some(std::sync::Arc::clone(&stats));
            let mut end = None;
            loop {
                tokio::select! {
                    event = pipeline.events().recv() => match event {
                        Some(PipelineEvent::Init(init)) => {
                            self.on_init(init.bytes, init.info);
                            ever_ready = true;
                            attempt = 0;
                        }
                        Some(PipelineEvent::Fragment(f)) => {
                            super::supervise::fault_point(&self.url);
                            self.on_fragment(f);
                            self.check_load(&stats);
                        }
                        Some(PipelineEvent::Rendition(index, event)) => self.on_rendition(index, event),
                        Some(PipelineEvent::Source(_)) => {}
                        Some(PipelineEvent::End(result)) => { end = Some(result); break; }
                        None => { end = Some(Err(MediaError::Processing("the media thread ended".into()))); break; }
                    },
                    _ = self.stopped() => break,
                }
            }
            // The worker's thread has freed everything when this returns (a stream that ends leaves no thread).
            pipeline.finish().await;
            *self.running.lock().unwrap_or_else(PoisonError::into_inner) = None;
            let done = stats.snapshot();
            self.counters.pipeline_drops.fetch_add(done.fragments_dropped, Ordering::Relaxed);
            self.counters.damaged.fetch_add(done.damaged, Ordering::Relaxed);
            self.counters.skips.fetch_add(stats.skips.load(Ordering::Relaxed), Ordering::Relaxed);
            self.counters.skipped_us.fetch_add(stats.skipped_us.load(Ordering::Relaxed), Ordering::Relaxed);
            self.counters.frames_shed.fetch_add(stats.frames_shed.load(Ordering::Relaxed), Ordering::Relaxed);

            match end {
                None | Some(Err(MediaError::Stopped)) => {
                    self.end_viewers(Status::Ended { reason: EndReason::Stopped });
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
                    self.on_source_lost(Status::Waiting { message: format!("{why}; waiting for it to come back") });
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
                    self.end_viewers(Status::Ended { reason: EndReason::SourceEnded });
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
                    self.on_source_lost(Status::Reconnecting { attempt, retry_in_ms: wait.as_millis() as u64 });
                    self.phase.send_replace(Phase::Reconnecting { attempt });
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.stopped() => {
                            self.end_viewers(Status::Ended { reason: EndReason::Stopped });
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
