//! The state of one stream, with no MQTT, no tokio and no clock of its own: the init segment, the GOP cache,
//! the viewers and their leases, the media timeline across source restarts. It takes events with `now` and
//! returns what to publish, as rumqtt's `MqttState` does; the stream's task carries it out.
//!
//! Two ways of delivery: a `Direct` viewer (protocol v1) gets every fragment on its own reply topic; a
//! `Shared` viewer (v2) gets the init segment and the GOP so far on its reply topic (the join burst) and the
//! rest from the stream's own topics, published once for all of them, so that the broker fans out.

use crate::media::{Fragment, OutputInfo};
use bytes::Bytes;
use mqtt_video_wire::protocol::{EndReason, Status, StreamTopics};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Fragments kept for late joiners at most; a source without keyframes must not grow the cache forever.
const MAX_GOP_FRAGMENTS: usize = 1200;

/// Media time over which the bitrate is measured.
const BITRATE_WINDOW_US: i64 = 3_000_000;

/// How a viewer gets its media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Every fragment on its reply topic (protocol v1).
    Direct,
    /// The join burst on its reply topic, then the stream's topics (protocol v2): a lease the page renews.
    Shared,
}

/// One of the stream's own topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// The current init segment (retained).
    Init,
    /// Fragments, and a new init segment in band when it changes.
    Media,
    /// The stream's state as a status (retained).
    State,
}

/// Something to carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A new viewer: make its queue and publisher.
    Open {
        /// Reply topic.
        viewer: String,
    },
    /// A status on the viewer's status topic.
    Status {
        /// Reply topic.
        viewer: String,
        /// The status.
        status: Status,
    },
    /// The viewer's start: an init segment and the GOP so far (which starts at a keyframe), never dropped.
    Start {
        /// Reply topic.
        viewer: String,
        /// Init segment.
        init: Bytes,
        /// Fragments since the last keyframe.
        gop: Vec<Bytes>,
    },
    /// A live fragment for a direct viewer (its queue may drop whole GOPs when it lags).
    Fragment {
        /// Reply topic.
        viewer: String,
        /// The fragment.
        bytes: Bytes,
        /// Whether it starts with a keyframe.
        keyframe: bool,
    },
    /// Forget what is queued for the viewer: the source restarted, old fragments are of no use.
    ResetMedia {
        /// Reply topic.
        viewer: String,
    },
    /// Close the viewer once its queue has drained.
    Close {
        /// Reply topic.
        viewer: String,
    },
    /// Close the viewer at once, dropping what is queued (its topic lives on elsewhere).
    Discard {
        /// Reply topic.
        viewer: String,
    },
    /// Publish on one of the stream's topics, once for every shared viewer.
    Publish {
        /// Which topic.
        topic: Topic,
        /// What.
        payload: Bytes,
        /// Retained.
        retain: bool,
    },
}

/// The stream has its maximum of viewers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

#[derive(Debug, Clone)]
struct Viewer {
    delivery: Delivery,
    /// It got its start (an init segment); until then it waits for the source.
    started: bool,
    last_seen: Instant,
}

/// One stream's state.
#[derive(Debug)]
pub struct StreamCore {
    topics: StreamTopics,
    init: Option<(Bytes, OutputInfo)>,
    gop: Vec<Bytes>,
    viewers: BTreeMap<String, Viewer>,
    idle_since: Option<Instant>,
    /// End of the media so far on the viewers' timeline, and when the source was lost.
    media_end_us: i64,
    lost_at: Option<Instant>,
    next_sequence: u64,
    /// What the retained state topic says now (published again only when it changes).
    state: Option<Status>,
    /// The `degraded` status the viewers were told, while the pipeline cannot keep up.
    degraded: Option<Status>,
    /// The rendition these topics carry, told to shared viewers (set when the stream has renditions).
    rendition: Option<String>,
    /// Viewers moved to a sibling rendition lately: the media topic stays published until then, so that
    /// they can hand over at a keyframe of the other.
    handed_over_until: Option<Instant>,
    /// Recent fragments' (media time µs, bytes), for the bitrate.
    recent: std::collections::VecDeque<(i64, usize)>,
}

impl StreamCore {
    /// A stream with no viewers yet, idle since `now`, whose shared media goes to `topics`.
    pub fn new(topics: StreamTopics, now: Instant) -> Self {
        Self {
            topics,
            init: None,
            gop: Vec::new(),
            viewers: BTreeMap::new(),
            idle_since: Some(now),
            media_end_us: 0,
            lost_at: None,
            next_sequence: 1,
            state: None,
            degraded: None,
            rendition: None,
            handed_over_until: None,
            recent: std::collections::VecDeque::new(),
        }
    }

    /// The same, for the rendition `name` of a stream that has renditions (`main` for its own output).
    pub fn named(self, name: &str) -> Self {
        Self { rendition: Some(name.to_string()), ..self }
    }

    /// Names the rendition its topics carry from now on (`main`, once the stream offers another).
    pub fn name(&mut self, name: &str) {
        self.rendition = Some(name.to_string());
    }

    /// Whether its media is needed now: it has viewers, or viewers that moved away are handing over.
    pub fn is_wanted(&self, now: Instant) -> bool {
        !self.viewers.is_empty() || self.handed_over_until.is_some_and(|t| now < t)
    }

    /// Its video bitrate over the last few seconds of media, in kbit/s, once there are some.
    pub fn bitrate_kbps(&self) -> Option<u32> {
        let (first, _) = self.recent.front()?;
        let (last, _) = self.recent.back()?;
        let span = last - first;
        if span <= 0 {
            return None;
        }
        // The last fragment's bytes belong after `last`: leave them out with the span.
        let bytes: usize = self.recent.iter().take(self.recent.len() - 1).map(|(_, b)| b).sum();
        Some((bytes as i64 * 8 * 1000 / span) as u32)
    }

    /// A viewer moves to a sibling rendition: it leaves silently, and the media topic stays published
    /// until `until`.
    pub fn hand_over(&mut self, topic: &str, until: Instant, now: Instant) -> Vec<Effect> {
        let out = self.leave(topic, None, now);
        if !out.is_empty() {
            self.handed_over_until = Some(self.handed_over_until.map_or(until, |t| t.max(until)));
        }
        out
    }

    /// The stream's own topics.
    pub fn topics(&self) -> &StreamTopics {
        &self.topics
    }

    /// Viewers attached (both kinds).
    pub fn viewer_count(&self) -> usize {
        self.viewers.len()
    }

    /// Viewers on the stream's topics.
    pub fn shared_count(&self) -> usize {
        self.viewers.values().filter(|v| v.delivery == Delivery::Shared).count()
    }

    /// Whether a viewer with this reply topic is attached.
    pub fn has_viewer(&self, topic: &str) -> bool {
        self.viewers.contains_key(topic)
    }

    /// How long it has had no viewer, if it has none.
    pub fn idle_for(&self, now: Instant) -> Option<Duration> {
        self.idle_since.map(|t| now.saturating_duration_since(t))
    }

    /// Keeps the stream from lingering out for another linger period (a describe is usually followed by play).
    pub fn touch(&mut self, now: Instant) {
        if self.viewers.is_empty() {
            self.idle_since = Some(now);
        }
    }

    /// Keeps a viewer-less stream running (a pushed source with its publisher connected).
    pub fn pin(&mut self) {
        self.idle_since = None;
    }

    /// The output facts, once the source is playing.
    pub fn output(&self) -> Option<&OutputInfo> {
        self.init.as_ref().map(|(_, info)| info)
    }

    /// The init segment and the fragment that starts the current GOP (a keyframe), once there are both.
    pub fn keyframe(&self) -> Option<(Bytes, Bytes)> {
        Some((self.init.as_ref()?.0.clone(), self.gop.first()?.clone()))
    }

    /// The sequence number the next pipeline run starts at, so that they run on across restarts.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Where the next pipeline run starts on the viewers' timeline: after the media so far, leaving the
    /// outage as a gap they can skip.
    pub fn restart_offset_us(&self, now: Instant) -> i64 {
        self.media_end_us + self.lost_at.map_or(0, |t| now.saturating_duration_since(t).as_micros() as i64)
    }

    /// What a starting viewer is told with its init segment.
    fn playing(&self, delivery: Delivery) -> Option<Status> {
        let (_, info) = self.init.as_ref()?;
        let shared = delivery == Delivery::Shared;
        let stream = shared.then(|| self.topics.clone());
        let rendition = self.rendition.clone().filter(|_| shared);
        Some(Status::Playing { mime_codec: info.mime_codec.clone(), stream, rendition })
    }

    /// A viewer plays (or plays again on the same topic, which starts it afresh).
    pub fn join(&mut self, topic: &str, delivery: Delivery, max: usize, now: Instant) -> Result<Vec<Effect>, Full> {
        let mut out = Vec::new();
        let was_shared = self.shared_count();
        if self.viewers.remove(topic).is_some() {
            out.push(Effect::Discard { viewer: topic.to_string() });
        }
        if self.viewers.len() >= max {
            return Err(Full);
        }
        out.push(Effect::Open { viewer: topic.to_string() });
        let started = match (self.playing(delivery), &self.init) {
            (Some(status), Some((init, _))) => {
                out.push(Effect::Status { viewer: topic.to_string(), status });
                out.push(Effect::Start { viewer: topic.to_string(), init: init.clone(), gop: self.gop.clone() });
                // Joined while the source is away, or while the stream is degraded: it is told so, as the
                // viewers already there were.
                if let (Some(_), Some(state)) = (self.lost_at, &self.state) {
                    out.push(Effect::Status { viewer: topic.to_string(), status: state.clone() });
                } else if let Some(degraded) = &self.degraded {
                    out.push(Effect::Status { viewer: topic.to_string(), status: degraded.clone() });
                }
                true
            }
            _ => {
                // Something is happening while the source opens (up to the connect timeout).
                let status = Status::Buffering { attempt: 1, retry_in_ms: 0 };
                out.push(Effect::Status { viewer: topic.to_string(), status });
                false
            }
        };
        self.viewers.insert(topic.to_string(), Viewer { delivery, started, last_seen: now });
        self.idle_since = None;
        if delivery == Delivery::Shared && was_shared == 0 {
            // The first viewer on the stream's topics: they carry the current init and state from now on.
            if let Some((init, _)) = &self.init {
                out.push(Effect::Publish { topic: Topic::Init, payload: init.clone(), retain: true });
            }
            self.publish_state(&mut out, true);
        }
        Ok(out)
    }

    /// The viewer played again: its lease runs on.
    pub fn renew(&mut self, topic: &str, now: Instant) {
        if let Some(v) = self.viewers.get_mut(topic) {
            v.last_seen = now;
        }
    }

    /// A viewer leaves, told why (or, with `None`, silently: its topic lives on elsewhere). Nothing when it
    /// was not attached.
    pub fn leave(&mut self, topic: &str, reason: Option<EndReason>, now: Instant) -> Vec<Effect> {
        if self.viewers.remove(topic).is_none() {
            return Vec::new();
        }
        let viewer = topic.to_string();
        let out = match reason {
            Some(reason) => vec![
                Effect::Status { viewer: viewer.clone(), status: Status::Ended { reason } },
                Effect::Close { viewer },
            ],
            None => vec![Effect::Discard { viewer }],
        };
        if self.viewers.is_empty() {
            self.idle_since = Some(now);
        }
        out
    }

    /// Ends the viewers that have not renewed within `timeout`; returns their reply topics too.
    pub fn expire(&mut self, timeout: Duration, now: Instant) -> (Vec<String>, Vec<Effect>) {
        let expired: Vec<String> = self
            .viewers
            .iter()
            .filter(|(_, v)| now.saturating_duration_since(v.last_seen) > timeout)
            .map(|(t, _)| t.clone())
            .collect();
        let effects = expired.iter().flat_map(|t| self.leave(t, Some(EndReason::ViewerTimeout), now)).collect();
        (expired, effects)
    }

    /// The pipeline's init segment: viewers that wait get their start; if it changed (a restart with another
    /// size or codec), every viewer gets it, and the stream's topics carry it.
    pub fn on_init(&mut self, bytes: Bytes, info: OutputInfo) -> Vec<Effect> {
        let changed = self.init.as_ref().is_none_or(|(old, _)| *old != bytes);
        self.gop.clear();
        // A new pipeline run measures its load afresh.
        self.degraded = None;
        self.init = Some((bytes.clone(), info));
        self.lost_at = None;
        let mut out = Vec::new();
        for (topic, viewer) in &mut self.viewers {
            // Same init after a restart: the viewer's decoder is still set up, only media continues. A
            // shared viewer that started gets a new one in band on the media topic.
            let direct_again = changed && viewer.delivery == Delivery::Direct;
            if viewer.started && !direct_again {
                continue;
            }
            let shared = viewer.delivery == Delivery::Shared;
            let stream = shared.then(|| self.topics.clone());
            let rendition = self.rendition.clone().filter(|_| shared);
            let mime_codec = self.init.as_ref().map(|(_, i)| i.mime_codec.clone()).unwrap_or_default();
            let status = Status::Playing { mime_codec, stream, rendition };
            out.push(Effect::Status { viewer: topic.clone(), status });
            out.push(Effect::Start { viewer: topic.clone(), init: bytes.clone(), gop: Vec::new() });
            viewer.started = true;
        }
        if self.shared_count() > 0 {
            if changed {
                out.push(Effect::Publish { topic: Topic::Init, payload: bytes.clone(), retain: true });
                out.push(Effect::Publish { topic: Topic::Media, payload: bytes, retain: false });
            }
            self.publish_state(&mut out, false);
        }
        out
    }

    /// A fragment from the pipeline: into the GOP cache, to every started direct viewer, once to the
    /// stream's media topic.
    pub fn on_fragment(&mut self, f: &Fragment, now: Instant) -> Vec<Effect> {
        self.media_end_us = self.media_end_us.max(f.media_time_us + f.duration_us);
        if f.video_samples > 0 {
            self.recent.push_back((f.media_time_us, f.bytes.len()));
            while self.recent.front().is_some_and(|(t, _)| f.media_time_us - t > BITRATE_WINDOW_US) {
                self.recent.pop_front();
            }
        }
        self.next_sequence = self.next_sequence.max(f.sequence + 1);
        if f.keyframe {
            self.gop.clear();
        }
        if (!self.gop.is_empty() || f.keyframe) && self.gop.len() < MAX_GOP_FRAGMENTS {
            self.gop.push(f.bytes.clone());
        } else if self.gop.len() >= MAX_GOP_FRAGMENTS {
            self.gop.clear();
        }
        let mut out: Vec<Effect> = self
            .viewers
            .iter()
            .filter(|(_, v)| v.started && v.delivery == Delivery::Direct)
            .map(|(t, _)| Effect::Fragment { viewer: t.clone(), bytes: f.bytes.clone(), keyframe: f.keyframe })
            .collect();
        let handing_over = self.handed_over_until.is_some_and(|t| now < t) && self.init.is_some();
        if handing_over || self.viewers.values().any(|v| v.started && v.delivery == Delivery::Shared) {
            out.push(Effect::Publish { topic: Topic::Media, payload: f.bytes.clone(), retain: false });
        }
        out
    }

    /// Whether the viewers were told the stream is degraded.
    pub fn is_degraded(&self) -> bool {
        self.degraded.is_some()
    }

    /// The pipeline cannot keep up (`Some`: the `degraded` status to tell), or keeps up again (`None`: the
    /// viewers are told `playing` again). Nothing when that is what they were told already, or while the
    /// source is away.
    pub fn on_load(&mut self, degraded: Option<Status>) -> Vec<Effect> {
        if self.degraded.is_some() == degraded.is_some() || self.lost_at.is_some() {
            return Vec::new();
        }
        self.degraded = degraded;
        let mut out = Vec::new();
        for (topic, viewer) in self.viewers.iter().filter(|(_, v)| v.started) {
            let status = match &self.degraded {
                Some(status) => Some(status.clone()),
                None => self.playing(viewer.delivery),
            };
            if let Some(status) = status {
                out.push(Effect::Status { viewer: topic.clone(), status });
            }
        }
        if self.shared_count() > 0 {
            self.publish_state(&mut out, false);
        }
        out
    }

    /// The source is gone for now (a drop being retried, a publisher that left): every viewer keeps its
    /// session, is told `status`, and waits for the next keyframe.
    pub fn on_source_lost(&mut self, status: Status, now: Instant) -> Vec<Effect> {
        self.gop.clear();
        self.lost_at = Some(now);
        let mut out = Vec::new();
        for topic in self.viewers.keys() {
            out.push(Effect::ResetMedia { viewer: topic.clone() });
            out.push(Effect::Status { viewer: topic.clone(), status: status.clone() });
        }
        self.state = Some(status);
        if self.shared_count() > 0 {
            self.publish_state(&mut out, true);
        }
        out
    }

    /// The stream ends: every viewer gets `status` and is closed; the stream's retained topics are emptied.
    pub fn on_end(&mut self, status: Status, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        let had_shared = self.shared_count() > 0 || self.state.is_some();
        for topic in std::mem::take(&mut self.viewers).into_keys() {
            out.push(Effect::Status { viewer: topic.clone(), status: status.clone() });
            out.push(Effect::Close { viewer: topic });
        }
        self.idle_since = Some(now);
        if had_shared {
            out.push(Effect::Publish { topic: Topic::State, payload: Bytes::new(), retain: true });
            out.push(Effect::Publish { topic: Topic::Init, payload: Bytes::new(), retain: true });
        }
        self.state = None;
        out
    }

    /// The retained state: `playing` with the init known, else what the stream last said.
    fn publish_state(&mut self, out: &mut Vec<Effect>, force: bool) {
        let now = match (self.playing(Delivery::Shared), &self.degraded) {
            (Some(_), Some(degraded)) if self.lost_at.is_none() => degraded.clone(),
            (Some(playing), None) if self.lost_at.is_none() => playing,
            _ => self.state.clone().unwrap_or(Status::Buffering { attempt: 1, retry_in_ms: 0 }),
        };
        if force || self.state.as_ref() != Some(&now) {
            let payload = Bytes::from(serde_json::to_vec(&now).unwrap_or_default());
            out.push(Effect::Publish { topic: Topic::State, payload, retain: true });
            self.state = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::plan::TrackMode;

    fn info(mime: &str) -> OutputInfo {
        OutputInfo {
            mime_codec: mime.into(),
            width: 640,
            height: 360,
            fps: 30.0,
            has_audio: true,
            video: TrackMode::Copy,
            audio: Some(TrackMode::Copy),
        }
    }

    fn frag(sequence: u64, keyframe: bool) -> Fragment {
        Fragment {
            bytes: Bytes::from(format!("f{sequence}")),
            sequence,
            keyframe,
            media_time_us: sequence as i64 * 33_333,
            duration_us: 33_333,
            video_samples: 1,
            source_wallclock_us: 0,
            produced_wallclock_us: 0,
        }
    }

    fn core(t0: Instant) -> StreamCore {
        StreamCore::new(StreamTopics::new("video", "front-door"), t0)
    }

    /// The effects in a short form that reads like a table: `open v`, `status v playing`, `start v 3`, ...
    fn short(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .map(|e| match e {
                Effect::Open { viewer } => format!("open {viewer}"),
                Effect::Status { viewer, status } => {
                    let v = serde_json::to_value(status).unwrap();
                    format!("status {viewer} {}", v["state"].as_str().unwrap())
                }
                Effect::Start { viewer, gop, .. } => format!("start {viewer} {}", gop.len()),
                Effect::Fragment { viewer, bytes, .. } => {
                    format!("fragment {viewer} {}", String::from_utf8_lossy(bytes))
                }
                Effect::ResetMedia { viewer } => format!("reset {viewer}"),
                Effect::Close { viewer } => format!("close {viewer}"),
                Effect::Discard { viewer } => format!("discard {viewer}"),
                Effect::Publish { topic, payload, retain } => {
                    let what = if payload.starts_with(b"{") {
                        serde_json::from_slice::<serde_json::Value>(payload).unwrap()["state"]
                            .as_str()
                            .unwrap()
                            .to_string()
                    } else {
                        String::from_utf8_lossy(payload).into_owned()
                    };
                    format!("publish {topic:?} {what}{}", if *retain { " retained" } else { "" })
                }
            })
            .collect()
    }

    #[test]
    fn a_late_joiner_starts_at_the_keyframe_with_the_gop_so_far() {
        let t0 = Instant::now();
        let mut c = core(t0);
        c.on_init(Bytes::from_static(b"init"), info("a"));
        assert!(c.on_fragment(&frag(1, false), t0).is_empty(), "nobody watches; before a keyframe nothing is cached");
        for (s, k) in [(2, true), (3, false), (4, false)] {
            c.on_fragment(&frag(s, k), t0);
        }
        let joined = c.join("pages/a/m", Delivery::Direct, 10, t0).unwrap();
        assert_eq!(short(&joined), ["open pages/a/m", "status pages/a/m playing", "start pages/a/m 3"]);
        assert_eq!(short(&c.on_fragment(&frag(5, false), t0)), ["fragment pages/a/m f5"]);
        assert_eq!(c.next_sequence(), 6);
        assert_eq!(c.keyframe().map(|(_, k)| k), Some(Bytes::from_static(b"f2")));
    }

    #[test]
    fn degraded_is_told_once_to_every_viewer_and_joiner_and_cleared_with_playing() {
        let t0 = Instant::now();
        let mut c = core(t0);
        c.join("pages/a/m", Delivery::Direct, 10, t0).unwrap();
        c.join("pages/b/m", Delivery::Shared, 10, t0).unwrap();
        c.on_init(Bytes::from_static(b"init"), info("a"));
        c.on_fragment(&frag(1, true), t0);
        let degraded = || Some(Status::Degraded { message: "behind".into(), skipped_ms: 1500 });
        let steps: [(&str, Option<Status>, Vec<&str>); 4] = [
            (
                "degraded: every viewer, and the retained state",
                degraded(),
                vec!["status pages/a/m degraded", "status pages/b/m degraded", "publish State degraded retained"],
            ),
            ("told already: nothing", degraded(), vec![]),
            (
                "kept up again: playing",
                None,
                vec!["status pages/a/m playing", "status pages/b/m playing", "publish State playing retained"],
            ),
            ("not degraded: nothing", None, vec![]),
        ];
        for (what, status, want) in steps {
            assert_eq!(short(&c.on_load(status)), want, "{what}");
        }
        c.on_load(degraded());
        assert!(c.is_degraded());
        let joined = c.join("pages/c/m", Delivery::Direct, 10, t0).unwrap();
        assert_eq!(
            short(&joined),
            ["open pages/c/m", "status pages/c/m playing", "start pages/c/m 1", "status pages/c/m degraded"]
        );
        // While the source is away nothing is said about the load; a new run starts afresh.
        c.on_source_lost(Status::Reconnecting { attempt: 1, retry_in_ms: 500 }, t0);
        assert!(c.on_load(None).is_empty());
        c.on_init(Bytes::from_static(b"init"), info("a"));
        assert!(!c.is_degraded());
    }

    #[test]
    fn a_joiner_before_the_source_plays_waits_for_its_init() {
        let t0 = Instant::now();
        let mut c = core(t0);
        assert_eq!(
            short(&c.join("pages/a/m", Delivery::Direct, 10, t0).unwrap()),
            ["open pages/a/m", "status pages/a/m buffering"]
        );
        assert!(c.on_fragment(&frag(1, true), t0).is_empty(), "not started: nothing yet");
        let started = c.on_init(Bytes::from_static(b"init"), info("a"));
        assert_eq!(short(&started), ["status pages/a/m playing", "start pages/a/m 0"]);
        // With an empty GOP the viewer's queue waits for the next keyframe itself.
        assert_eq!(short(&c.on_fragment(&frag(2, false), t0)), ["fragment pages/a/m f2"]);
        assert_eq!(c.join("pages/b/m", Delivery::Direct, 1, t0), Err(Full));
    }

    #[test]
    fn a_source_restart_keeps_the_timeline_and_a_new_init_reaches_everyone() {
        let t0 = Instant::now();
        let mut c = core(t0);
        c.on_init(Bytes::from_static(b"init-a"), info("a"));
        c.join("pages/d/m", Delivery::Direct, 10, t0).unwrap();
        c.join("pages/s/m", Delivery::Shared, 10, t0).unwrap();
        for s in 1..=30 {
            c.on_fragment(&frag(s, s == 1), t0);
        }
        let lost = c.on_source_lost(Status::Reconnecting { attempt: 1, retry_in_ms: 500 }, t0 + Duration::from_secs(1));
        assert_eq!(
            short(&lost),
            [
                "reset pages/d/m",
                "status pages/d/m reconnecting",
                "reset pages/s/m",
                "status pages/s/m reconnecting",
                "publish State reconnecting retained"
            ]
        );
        // 31 frames of media, then 2 s without a source.
        assert_eq!(c.restart_offset_us(t0 + Duration::from_secs(3)), 31 * 33_333 + 2_000_000);
        // The same init again: nothing to redo; another one: every viewer gets it.
        assert_eq!(short(&c.on_init(Bytes::from_static(b"init-a"), info("a"))), ["publish State playing retained"]);
        c.on_source_lost(Status::Reconnecting { attempt: 1, retry_in_ms: 500 }, t0 + Duration::from_secs(4));
        let changed = c.on_init(Bytes::from_static(b"init-b"), info("b"));
        assert_eq!(
            short(&changed),
            [
                "status pages/d/m playing",
                "start pages/d/m 0",
                "publish Init init-b retained",
                "publish Media init-b",
                "publish State playing retained"
            ]
        );
        assert_eq!(c.next_sequence(), 31, "the next run goes on counting");
    }

    #[test]
    fn shared_viewers_get_a_join_burst_then_the_stream_topic_once_for_all() {
        let t0 = Instant::now();
        let mut c = core(t0);
        c.on_init(Bytes::from_static(b"init"), info("a"));
        c.on_fragment(&frag(1, true), t0);
        c.on_fragment(&frag(2, false), t0);
        let first = c.join("pages/a/m", Delivery::Shared, 10, t0).unwrap();
        assert_eq!(
            short(&first),
            [
                "open pages/a/m",
                "status pages/a/m playing",
                "start pages/a/m 2",
                "publish Init init retained",
                "publish State playing retained"
            ]
        );
        match &first[1] {
            Effect::Status { status: Status::Playing { stream: Some(topics), .. }, .. } => {
                assert_eq!(topics.media, "video/live/front-door/media");
            }
            other => panic!("{other:?}"),
        }
        let second = c.join("pages/b/m", Delivery::Shared, 10, t0).unwrap();
        assert_eq!(short(&second), ["open pages/b/m", "status pages/b/m playing", "start pages/b/m 2"]);
        c.join("pages/c/m", Delivery::Direct, 10, t0).unwrap();
        // One publish for the two shared viewers; the direct one gets its own.
        assert_eq!(short(&c.on_fragment(&frag(3, false), t0)), ["fragment pages/c/m f3", "publish Media f3"]);
        assert_eq!((c.viewer_count(), c.shared_count()), (3, 2));
        let ended = c.on_end(Status::Ended { reason: EndReason::SourceEnded }, t0);
        assert_eq!(ended.len(), 8, "{:?}", short(&ended));
        assert_eq!(
            &short(&ended)[6..],
            ["publish State  retained", "publish Init  retained"],
            "the retained ones emptied"
        );
    }

    #[test]
    fn a_joiner_after_a_drop_gets_the_init_and_no_gop_and_starts_at_the_next_keyframe() {
        let t0 = Instant::now();
        let mut c = core(t0);
        c.on_init(Bytes::from_static(b"init"), info("a"));
        for s in 1..=5 {
            c.on_fragment(&frag(s, s == 1), t0);
        }
        c.on_source_lost(Status::Reconnecting { attempt: 1, retry_in_ms: 500 }, t0);
        let joined = c.join("pages/s/m", Delivery::Shared, 10, t0).unwrap();
        assert_eq!(
            short(&joined),
            [
                "open pages/s/m",
                "status pages/s/m playing",
                "start pages/s/m 0",
                "status pages/s/m reconnecting",
                "publish Init init retained",
                "publish State reconnecting retained"
            ],
            "the GOP went with the source"
        );
        // The source is back with the same init: a P-frame is not cached for anyone, the next keyframe is.
        c.on_init(Bytes::from_static(b"init"), info("a"));
        assert_eq!(short(&c.on_fragment(&frag(6, false), t0)), ["publish Media f6"]);
        c.on_fragment(&frag(7, true), t0);
        let late = c.join("pages/t/m", Delivery::Direct, 10, t0).unwrap();
        assert_eq!(short(&late), ["open pages/t/m", "status pages/t/m playing", "start pages/t/m 1"]);
    }

    #[test]
    fn a_viewer_that_plays_again_moves_without_a_stale_fragment() {
        let t0 = Instant::now();
        let mut c = core(t0);
        c.on_init(Bytes::from_static(b"init"), info("a"));
        c.on_fragment(&frag(1, true), t0);
        c.join("pages/a/m", Delivery::Direct, 10, t0).unwrap();
        // The same reply topic joins again (after a move between streams): what was queued is dropped first.
        let again = c.join("pages/a/m", Delivery::Shared, 10, t0).unwrap();
        assert_eq!(short(&again)[..2], ["discard pages/a/m", "open pages/a/m"]);
        assert_eq!((c.viewer_count(), c.shared_count()), (1, 1));
        assert_eq!(short(&c.leave("pages/a/m", None, t0)), ["discard pages/a/m"], "a silent leave");
    }

    #[test]
    fn leases_expire_unless_renewed_and_the_stream_lingers_without_viewers() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut c = core(t0);
        c.join("pages/a/m", Delivery::Shared, 10, t0).unwrap();
        c.join("pages/b/m", Delivery::Direct, 10, t0).unwrap();
        assert_eq!(c.idle_for(at(1)), None);
        c.renew("pages/a/m", at(20));
        let (gone, effects) = c.expire(Duration::from_secs(30), at(40));
        assert_eq!(gone, ["pages/b/m"]);
        assert_eq!(short(&effects), ["status pages/b/m ended", "close pages/b/m"]);
        let (gone, _) = c.expire(Duration::from_secs(30), at(51));
        assert_eq!(gone, ["pages/a/m"]);
        assert_eq!(c.idle_for(at(61)), Some(Duration::from_secs(10)), "idle since the last one left");
        assert!(c.leave("pages/a/m", Some(EndReason::Stopped), at(61)).is_empty(), "already gone");
        // A describe keeps an idle stream for another linger period.
        c.touch(at(70));
        assert_eq!(c.idle_for(at(71)), Some(Duration::from_secs(1)));
    }

    #[test]
    fn a_viewer_that_moves_to_a_sibling_rendition_keeps_this_one_published_for_its_hand_over() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = core(t0).named("main");
        c.on_init(Bytes::from_static(b"init"), info("a"));
        assert!(!c.is_wanted(t0), "nobody watches");
        let joined = c.join("pages/a/m", Delivery::Shared, 10, t0).unwrap();
        let playing = joined.iter().find_map(|e| match e {
            Effect::Status { status: Status::Playing { rendition, .. }, .. } => Some(rendition.clone()),
            _ => None,
        });
        assert_eq!(playing, Some(Some("main".to_string())), "a shared viewer is told which rendition it plays");
        assert_eq!(short(&c.on_fragment(&frag(1, true), t0)), ["publish Media f1"]);
        // The viewer moves: it leaves silently, and the media topic goes on until the hand-over is over.
        assert_eq!(short(&c.hand_over("pages/a/m", t0 + 4 * s, t0 + s)), ["discard pages/a/m"]);
        assert!(c.is_wanted(t0 + 2 * s) && c.viewer_count() == 0);
        assert_eq!(short(&c.on_fragment(&frag(2, false), t0 + 3 * s)), ["publish Media f2"]);
        assert!(c.on_fragment(&frag(3, false), t0 + 4 * s).is_empty(), "the hand-over is over");
        assert!(!c.is_wanted(t0 + 4 * s));
        assert!(c.hand_over("pages/b/m", t0 + 9 * s, t0 + 5 * s).is_empty(), "not a viewer here: nothing to hand over");
        assert!(!c.is_wanted(t0 + 6 * s));
    }

    #[test]
    fn the_bitrate_is_measured_over_the_last_seconds_of_media() {
        let t0 = Instant::now();
        let mut c = core(t0);
        assert_eq!(c.bitrate_kbps(), None, "nothing yet");
        let mut f = frag(1, true);
        f.bytes = Bytes::from(vec![0u8; 12_500]); // 100 kbit a frame
        for n in 0..300u64 {
            f.media_time_us = n as i64 * 100_000; // 10 frames a second: 1 Mbit/s
            f.sequence = n + 1;
            c.on_fragment(&f, t0);
        }
        assert_eq!(c.bitrate_kbps(), Some(1000));
        assert!(c.recent.len() <= 31, "only the window is kept: {}", c.recent.len());
    }
}
