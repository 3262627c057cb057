//! A stream's outputs, its own (`main`) and each rendition's, and how what their cores decide reaches
//! MQTT. Each output's state is behind one lock: its core, its viewers' queues and publishers, the queue of
//! its media topic, and what the pipeline said about it. Effects are carried out while that lock is held,
//! so that they keep the core's order, and nothing ever holds two outputs' locks.

use super::core::{Effect, StreamCore, Topic};
use super::stats::Latencies;
use crate::media::encode::rendition::RenditionControl;
use crate::media::events::RenditionInfo;
use crate::server::broker_client::Client;
use crate::server::viewer::{Pieces, Viewer};
use bytes::Bytes;
use mqtt_video_wire::protocol::Status;
use rumqttc::QoS;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Where effects go: the broker client, the QoS of media, and what a viewer's queue holds.
pub(super) struct Outlet {
    /// The server's broker client.
    pub client: Client,
    /// QoS of viewers' media and statuses.
    pub qos: QoS,
    /// Media messages queued for one viewer before whole GOPs are dropped.
    pub viewer_capacity: usize,
    /// How media fits the broker's packet limit.
    pub pieces: Pieces,
}

/// One of the stream's outputs: its own (`main`) or one of its renditions, each with its own topics, state
/// and queues.
pub(super) struct Output {
    /// `main`, or the rendition's name.
    pub name: String,
    /// A rendition's switch and numbering, shared with each pipeline run; `None` for main (always encoded).
    pub control: Option<Arc<RenditionControl>>,
    /// The implicit H.264 repeat (`auto`), listed and playable only while the pipeline offers it.
    pub implicit: bool,
    state: Mutex<OutputState>,
}

/// What one output's lock holds.
pub(super) struct OutputState {
    /// Its viewers, topics and media, decided.
    pub core: StreamCore,
    /// A rendition's facts, told by the pipeline once its source is open, or why it failed in this run.
    pub info: Result<Option<RenditionInfo>, String>,
    /// Source-to-hand-off latencies of its fragments (main's alone are measured).
    pub latencies: Latencies,
    /// Each viewer's queue and publisher, by reply topic.
    viewers: HashMap<String, Viewer>,
    /// The queue of the output's media topic, with the same GOP-aware drops as a viewer's.
    shared: Option<Viewer>,
    /// Drops of viewers that are gone.
    drops_gone: u64,
}

impl Output {
    /// An output whose state is `core`; `control` for a rendition, `implicit` for the H.264 repeat.
    pub fn new(name: &str, control: Option<Arc<RenditionControl>>, implicit: bool, core: StreamCore) -> Self {
        let state = OutputState {
            core,
            info: Ok(None),
            latencies: Latencies::default(),
            viewers: HashMap::new(),
            shared: None,
            drops_gone: 0,
        };
        Self { name: name.to_string(), control, implicit, state: Mutex::new(state) }
    }

    /// Whether players are told of it: a configured rendition always; the implicit repeat once the pipeline
    /// said what it is (or why it failed), never when `main` is H.264 itself.
    pub fn offered(&self, state: &OutputState) -> bool {
        !self.implicit || !matches!(state.info, Ok(None))
    }

    /// Its state, locked.
    pub fn lock(&self) -> MutexGuard<'_, OutputState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells the pipeline whether to encode it (a rendition), from its viewers and hand-overs at `now`.
    pub fn update_wanted(&self, state: &OutputState, now: Instant) {
        if let Some(control) = &self.control {
            control.set_wanted(state.core.is_wanted(now));
        }
    }
}

impl OutputState {
    /// Fragments dropped for its slow viewers, those still here and those gone, and on its media topic.
    pub fn dropped(&self) -> u64 {
        let live: u64 = self.viewers.values().chain(self.shared.iter()).map(|v| v.queue().dropped).sum();
        live + self.drops_gone
    }

    /// Carries out what its core decided, in order; `published` counts the media bytes.
    pub fn apply(&mut self, effects: Vec<Effect>, outlet: &Outlet, published: &AtomicU64) {
        for effect in effects {
            self.carry_out(effect, outlet, published);
        }
    }

    fn carry_out(&mut self, effect: Effect, outlet: &Outlet, published: &AtomicU64) {
        let published = |n: usize| published.fetch_add(n as u64, Ordering::Relaxed);
        match effect {
            Effect::Open { viewer } => {
                let v = Viewer::new(viewer.clone(), outlet.viewer_capacity);
                v.spawn_publisher(outlet.client.clone(), outlet.qos, outlet.pieces.clone());
                self.viewers.insert(viewer, v);
            }
            Effect::Status { viewer, status } => {
                if let Some(v) = self.viewers.get(&viewer) {
                    v.queue().push_status(json(&status));
                    v.wake();
                }
            }
            Effect::Start { viewer, init, gop } => {
                if let Some(v) = self.viewers.get(&viewer) {
                    published(init.len() + gop.iter().map(Bytes::len).sum::<usize>());
                    v.queue().push_start(init, &gop);
                    v.wake();
                }
            }
            Effect::Fragment { viewer, bytes, keyframe } => {
                if let Some(v) = self.viewers.get(&viewer) {
                    published(bytes.len());
                    v.queue().push_fragment(bytes, keyframe);
                    v.wake();
                }
            }
            Effect::ResetMedia { viewer } => {
                if let Some(v) = self.viewers.get(&viewer) {
                    v.queue().reset_media();
                }
            }
            Effect::Close { viewer } => {
                if let Some(v) = self.viewers.remove(&viewer) {
                    self.drops_gone += v.queue().dropped;
                    v.close();
                }
            }
            Effect::Discard { viewer } => {
                if let Some(v) = self.viewers.remove(&viewer) {
                    self.drops_gone += v.queue().dropped;
                    v.discard();
                }
            }
            Effect::Publish { topic: Topic::Media, payload, .. } => {
                // One queue for the output's media topic, dropping whole GOPs like a viewer's when it lags.
                let media_topic = &self.core.topics().media;
                let shared = self.shared.get_or_insert_with(|| {
                    let v = Viewer::new(media_topic.clone(), outlet.viewer_capacity);
                    v.queue().take_from_here();
                    v.spawn_publisher(outlet.client.clone(), outlet.qos, outlet.pieces.clone());
                    v
                });
                published(payload.len());
                if payload.get(4..8) == Some(b"ftyp") {
                    // A new init segment in band: never dropped, and only a keyframe may follow it.
                    shared.queue().push_start(payload, &[]);
                } else {
                    let keyframe = mqtt_video_wire::fmp4::starts_with_keyframe(&payload);
                    shared.queue().push_fragment(payload, keyframe);
                }
                shared.wake();
            }
            Effect::Publish { topic, payload, retain } => {
                let topics = self.core.topics();
                let name = match topic {
                    Topic::Init => &topics.init,
                    _ => &topics.state,
                };
                // Rare and small (a change of init or state): straight to the client, in order.
                if let Err(e) = outlet.client.try_publish(name.as_str(), QoS::AtLeastOnce, retain, payload) {
                    tracing::warn!(error = %e, topic = %name, "could not queue a stream topic");
                }
            }
        }
    }
}

fn json(status: &Status) -> String {
    serde_json::to_string(status).unwrap_or_default()
}
