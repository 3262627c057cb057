//! One live stream: a pipeline for one source, shared by all its viewers. This file holds the stream as the
//! server sees it: its state and its API for viewers (join, renew, leave, expire) and for the hub (phase,
//! linger, stop). The rest is apart, each with one job:
//!
//! - `core.rs`: viewers, the GOP cache and the media timeline, decided purely (events and `now` in,
//!   effects out);
//! - `supervisor.rs`: when to open the source again, with what backoff, and when to give up, decided purely;
//! - `outputs.rs`: each output's state behind one lock, and the core's effects carried out to MQTT;
//! - `run.rs`: the stream's task, the effect shell: pipeline runs, their events to the cores, the
//!   supervisor's actions carried out;
//! - `stats.rs`: counters and the stats snapshot.
//!
//! The clock is read once per event where it comes in (a call from the hub, a pipeline event, the end of a
//! wait) and passed down as `now`.

pub mod core;
pub mod ids;
mod outputs;
mod run;
mod stats;
pub mod supervisor;

use crate::media::events::{PipelineStats, RenditionInfo};
use crate::media::pipeline::Gate;
use crate::media::{OutputInfo, PipelineConfig};
use crate::server::broker_client::Client;
use crate::server::viewer::Pieces;
use bytes::Bytes;
use core::{Delivery, Effect, Full, StreamCore};
use mqtt_video_wire::protocol::{EndReason, ErrorCode, Status, StreamTopics};
use outputs::{Outlet, Output, OutputState};
use rumqttc::QoS;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

pub use stats::{Counters, RenditionStats, StreamStats};

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

/// How long a rendition a viewer left stays published (and encoded) at least, for its hand-over: the page
/// goes on playing it until the rendition it moved to reaches a keyframe.
const HAND_OVER: Duration = Duration::from_secs(4);

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
    /// Where its effects go.
    outlet: Outlet,
    /// Its own output first, then its renditions.
    outputs: Vec<Output>,
    phase: watch::Sender<Phase>,
    stopping: AtomicBool,
    stop_notify: Notify,
    /// Counters for stats.
    pub counters: Counters,
    /// The running pipeline's live counters.
    running: Mutex<Option<Arc<PipelineStats>>>,
    /// When it started.
    pub created: Instant,
}

impl Stream {
    /// A stream that is not running yet, whose shared media goes to `topics`; call [`Stream::run`].
    pub fn new(
        url: String,
        topics: StreamTopics,
        config: PipelineConfig,
        client: Client,
        qos: QoS,
        viewer_capacity: usize,
    ) -> Self {
        let now = Instant::now();
        // Main tells its viewers its name once the stream offers another; the implicit repeat names it when
        // offered (`run::on_rendition`).
        let named = config.renditions.iter().any(|r| !r.implicit);
        let main = StreamCore::new(topics.clone(), now);
        let mut outputs = vec![Output::new("main", None, false, if named { main.named("main") } else { main })];
        for r in &config.renditions {
            let core = StreamCore::new(topics.rendition(&r.name), now).named(&r.name);
            outputs.push(Output::new(&r.name, Some(Arc::default()), r.implicit, core));
        }
        Self {
            source_url: url.clone(),
            publisher: None,
            started_by: None,
            url,
            config,
            gate: None,
            outlet: Outlet { client, qos, viewer_capacity, pieces: Pieces::default() },
            outputs,
            phase: watch::channel(Phase::Starting).0,
            stopping: AtomicBool::new(false),
            stop_notify: Notify::new(),
            counters: Counters::default(),
            running: Mutex::new(None),
            created: now,
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

    /// Sends media in pieces that fit the broker's packet limit.
    pub fn pieces(mut self, pieces: Pieces) -> Self {
        self.outlet.pieces = pieces;
        self
    }

    /// Records which requester started the stream.
    pub fn started_by(self, requester: Option<&str>) -> Self {
        Self { started_by: requester.map(str::to_string), ..self }
    }

    /// The requester that started it, if a request did.
    pub fn starter(&self) -> Option<&str> {
        self.started_by.as_deref()
    }

    /// The running pipeline's counters, if one runs.
    fn running(&self) -> Option<Arc<PipelineStats>> {
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

    /// The stream's own topics (protocol v2).
    pub fn topics(&self) -> StreamTopics {
        self.main().lock().core.topics().clone()
    }

    /// A publisher connected to this pushed source: the stream (re)starts its pipeline and does not linger out.
    pub fn publisher_arrived(&self) {
        if let Some(p) = &self.publisher {
            p.present.store(true, Ordering::SeqCst);
            p.arrived.notify_one();
            self.main().lock().core.pin();
        }
    }

    /// The publisher left; viewers wait for the next one, and without viewers the stream lingers out.
    pub fn publisher_left(&self) {
        if let Some(p) = &self.publisher {
            p.present.store(false, Ordering::SeqCst);
            self.main().lock().core.touch(Instant::now());
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

    /// Its own output.
    fn main(&self) -> &Output {
        &self.outputs[0]
    }

    /// The output a play asks for: `None` and `main` are the stream's own.
    fn output(&self, rendition: Option<&str>) -> Result<&Output, JoinRefused> {
        let name = rendition.unwrap_or("main");
        let offered = |o: &&Output| o.offered(&o.lock());
        self.outputs.iter().filter(offered).find(|o| o.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.outputs.iter().filter(offered).map(|o| o.name.as_str()).collect();
            let has = if names.len() > 1 { format!("it has {}", names.join(", ")) } else { "it has none".into() };
            JoinRefused::UnknownRendition(format!("the stream has no rendition {name:?}: {has}"))
        })
    }

    /// What a player can choose from: `main` (the stream's output) and each rendition whose facts are
    /// known; empty for a stream without renditions or before its source is open.
    pub fn renditions(&self) -> Vec<RenditionInfo> {
        if !self.has_renditions() {
            return Vec::new();
        }
        let main = {
            let s = self.main().lock();
            let Some(o) = s.core.output() else { return Vec::new() };
            let configured = self.config.video.bitrate_kbps;
            let bitrate_kbps = match o.video {
                crate::media::plan::TrackMode::Transcode if configured > 0 => Some(configured),
                _ => s.core.bitrate_kbps(),
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
        let rest = self.outputs[1..].iter().filter_map(|o| o.lock().info.clone().ok().flatten());
        std::iter::once(main).chain(rest).collect()
    }

    /// Whether players are offered a choice: a configured rendition, or the implicit H.264 repeat of a `main`
    /// in another codec.
    pub fn has_renditions(&self) -> bool {
        self.outputs[1..].iter().any(|o| o.offered(&o.lock()))
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

    /// Returns once the stream is asked to stop.
    async fn stopped(&self) {
        while !self.stopping.load(Ordering::Relaxed) {
            self.stop_notify.notified().await;
        }
    }

    /// Keeps the stream from lingering out for another linger period (a describe is usually followed by play).
    pub fn touch(&self) {
        self.main().lock().core.touch(Instant::now());
    }

    /// Viewers attached now, on any of its outputs.
    pub fn viewer_count(&self) -> usize {
        self.outputs.iter().map(|o| o.lock().core.viewer_count()).sum()
    }

    /// How long it has had no viewer on any output at `now`, if it has none.
    pub fn idle_for(&self, now: Instant) -> Option<Duration> {
        self.outputs
            .iter()
            .map(|o| o.lock().core.idle_for(now))
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
        if let Err(why) = &target.lock().info {
            return Err(JoinRefused::Unavailable(why.clone()));
        }
        if !self.has_viewer_anywhere(reply_topic) && self.viewer_count() >= max_viewers {
            return Err(JoinRefused::Full);
        }
        let now = Instant::now();
        let keyframes = Duration::from_secs_f64(self.config.video.keyframe_interval_secs.clamp(0.0, 60.0) * 3.0);
        let hand_over = HAND_OVER.max(keyframes);
        for o in self.outputs.iter().filter(|o| !std::ptr::eq(*o, target)) {
            let mut s = o.lock();
            let effects = s.core.hand_over(reply_topic, now + hand_over, now);
            self.apply(&mut s, effects);
        }
        let mut s = target.lock();
        let effects = s.core.join(reply_topic, delivery, usize::MAX, now).map_err(|Full| JoinRefused::Full)?;
        self.apply(&mut s, effects);
        target.update_wanted(&s, now);
        Ok(())
    }

    /// Whether a viewer with this reply topic is attached to any of its outputs.
    pub fn has_viewer_anywhere(&self, reply_topic: &str) -> bool {
        self.outputs.iter().any(|o| o.lock().core.has_viewer(reply_topic))
    }

    /// Whether a viewer with this reply topic is attached to that output (`None`: the stream's own).
    pub fn has_viewer(&self, reply_topic: &str, rendition: Option<&str>) -> bool {
        self.output(rendition).is_ok_and(|o| o.lock().core.has_viewer(reply_topic))
    }

    /// Ends every viewer with `shutdown` and stops.
    pub fn shutdown(&self) {
        self.end_viewers(Status::Ended { reason: EndReason::Shutdown }, Instant::now());
        self.stop();
    }

    /// Renews a viewer's lease.
    pub fn renew_viewer(&self, reply_topic: &str) {
        let now = Instant::now();
        for o in &self.outputs {
            o.lock().core.renew(reply_topic, now);
        }
    }

    /// Detaches a viewer, telling it why (or, with `None`, silently: its topic lives on elsewhere).
    pub fn remove_viewer(&self, reply_topic: &str, reason: Option<EndReason>) {
        let now = Instant::now();
        for o in &self.outputs {
            let mut s = o.lock();
            let effects = s.core.leave(reply_topic, reason, now);
            self.apply(&mut s, effects);
            o.update_wanted(&s, now);
        }
    }

    /// Ends the viewers that have not renewed their play within `timeout` of `now`; returns their reply topics.
    pub fn expire_viewers(&self, timeout: Duration, now: Instant) -> Vec<String> {
        let mut all = Vec::new();
        for o in &self.outputs {
            let mut s = o.lock();
            let (expired, effects) = s.core.expire(timeout, now);
            self.apply(&mut s, effects);
            o.update_wanted(&s, now);
            all.extend(expired);
        }
        all
    }

    /// The init segment and the fragment that starts the current GOP (a keyframe), once there are both.
    pub fn keyframe(&self) -> Option<(Bytes, Bytes)> {
        self.main().lock().core.keyframe()
    }

    /// The stream's task panicked: its viewers get an error, and it counts as failed.
    pub fn crashed(&self) {
        let message = "the stream stopped on an internal error (see the server's log); play again to start it afresh";
        self.fail(ErrorCode::InternalError, message.into(), Instant::now());
    }

    /// Carries out what the core of an output decided, while its lock is held (so that effects keep their
    /// order).
    fn apply(&self, state: &mut OutputState, effects: Vec<Effect>) {
        state.apply(effects, &self.outlet, &self.counters.published_bytes);
    }

    /// Ends every viewer with a final status.
    fn end_viewers(&self, status: Status, now: Instant) {
        for o in &self.outputs {
            let mut s = o.lock();
            let effects = s.core.on_end(status.clone(), now);
            self.apply(&mut s, effects);
            o.update_wanted(&s, now);
        }
    }

    /// The stream failed for good: its viewers get the error.
    fn fail(&self, code: ErrorCode, message: String, now: Instant) {
        tracing::warn!(url = %mqtt_video_wire::policy::redact(&self.url), code = code.as_str(), %message, "stream failed");
        self.end_viewers(Status::error(code, message.clone()), now);
        self.phase.send_replace(Phase::Failed { code, message });
    }
}
