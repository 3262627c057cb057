//! Talking back through the server (docs/PROTOCOL.md, "Talk back"): a page's frames on
//! `<prefix>/live/<id>/talk` to the camera's ONVIF backchannel. One task per camera someone talks to holds
//! its floor (`wire::talk::Floor`: one talker at a time), the backchannel session and the encoder
//! (`crate::talk`), and tells each talker `on`, `busy`, `off` or an error on its reply topic.

use super::{lock, Hub};
use crate::talk::backchannel::Backchannel;
use crate::talk::encode::TalkEncoder;
use mqtt_video_wire::protocol::check_reply_topic;
use mqtt_video_wire::talk::{parse_frame, Action, Floor, Frame};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often a camera's floor looks at the time (a quiet talker's hold ends within this of Floor::QUIET).
const TICK: Duration = Duration::from_millis(250);
/// Frames waiting for a camera's task: 2 s of 20 ms frames. More means the camera cannot keep up; the
/// newest are dropped.
const QUEUE: usize = 100;

/// What a camera's task is told.
enum Cmd {
    /// A talker's frame.
    Frame(Frame),
    /// A page went away (its last will names this reply topic).
    Gone(String),
}

/// The cameras someone talks to.
#[derive(Default)]
pub struct Talk {
    cameras: Mutex<HashMap<String, mpsc::Sender<Cmd>>>,
}

/// A talk status, on the talker's reply topic.
#[derive(Serialize)]
struct Status<'a> {
    talk: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl Hub {
    /// A frame on stream `id`'s talk topic.
    pub(super) fn talk_frame(self: &Arc<Self>, id: &str, payload: &[u8]) {
        let frame = match parse_frame(payload) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::debug!(stream = id, error = %e, "talk frame refused");
                return;
            }
        };
        // The talker is where statuses go: a reply topic like any other, or a page could make the server
        // publish on any topic.
        if let Err(e) = check_reply_topic(&frame.talker, &self.limits) {
            tracing::debug!(stream = id, error = %e, "talk frame refused");
            return;
        }
        let camera = self.config.sources.iter().find(|e| e.talk && self.ids.id_of(&e.source.url) == id);
        let Some(url) = camera.map(|e| e.source.url.clone()) else {
            // Said once a press (its first frame), not once a frame.
            if frame.sequence != 0 {
                return;
            }
            let hub = Arc::clone(self);
            let talker = frame.talker;
            tokio::spawn(async move {
                let message = Some("this source takes no talk (no `talk = true` in its [[sources]])".to_string());
                hub.talk_status(&talker, Status { talk: "error", why: Some("not_talkable"), message }).await;
            });
            return;
        };
        let mut cameras = lock(&self.talk.cameras);
        let sender = cameras.entry(id.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(Arc::clone(self).camera(id.to_string(), url, rx));
            tx
        });
        if sender.try_send(Cmd::Frame(frame)).is_err() {
            tracing::debug!(stream = id, "talk frame dropped: the camera's task is behind");
        }
    }

    /// The page of `reply_topic` went away: a floor it holds is free.
    pub(super) fn talk_gone(&self, reply_topic: &str) {
        for sender in lock(&self.talk.cameras).values() {
            let _ = sender.try_send(Cmd::Gone(reply_topic.to_string()));
        }
    }

    async fn talk_status(&self, talker: &str, status: Status<'_>) {
        self.publish_json(talker.to_string(), &status, false).await;
    }

    /// One camera's floor and backchannel, until nobody has talked to it for a minute.
    async fn camera(self: Arc<Self>, id: String, url: String, mut rx: mpsc::Receiver<Cmd>) {
        let mut floor = Floor::default();
        // The holder's backchannel: None before it opens, or when it did not (the holder's frames then go
        // nowhere until it lets go, and its next press tries again).
        let mut session: Option<Speaking> = None;
        let mut tick = tokio::time::interval(TICK);
        let mut idle_since = Instant::now();
        loop {
            let (actions, frame) = tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Frame(frame)) => (floor.frame(&frame.talker, frame.end, Instant::now()), Some(frame)),
                    Some(Cmd::Gone(topic)) => (floor.gone(&topic), None),
                    None => break,
                },
                _ = tick.tick() => {
                    if floor.holder().is_none() && idle_since.elapsed() > Duration::from_secs(60) {
                        // Under the lock that senders take, so that no frame is sent to a task that ended.
                        let mut cameras = lock(&self.talk.cameras);
                        if rx.is_empty() {
                            cameras.remove(&id);
                            break;
                        }
                    }
                    (floor.tick(Instant::now()), None)
                }
            };
            for action in actions {
                match action {
                    Action::Open(talker) => session = self.open_backchannel(&id, &url, &talker).await,
                    Action::Send => {
                        idle_since = Instant::now();
                        let (Some(open), Some(frame)) = (session.as_mut(), frame.as_ref()) else { continue };
                        if let Err(message) = open.send(frame).await {
                            tracing::warn!(stream = %id, error = %message, "talking to the camera failed");
                            let status = Status { talk: "error", why: Some("backchannel"), message: Some(message) };
                            self.talk_status(&frame.talker, status).await;
                            session = None;
                        }
                    }
                    Action::Busy(talker) => {
                        self.talk_status(&talker, Status { talk: "busy", why: None, message: None }).await
                    }
                    Action::Close(talker, why) => {
                        if let Some(open) = session.take() {
                            open.channel.close().await;
                            tracing::info!(stream = %id, why = why.word(), "stopped talking to the camera");
                        }
                        self.talk_status(&talker, Status { talk: "off", why: Some(why.word()), message: None }).await;
                    }
                }
            }
        }
        if let Some(open) = session.take() {
            open.channel.close().await;
        }
    }

    /// Opens the backchannel for `talker`, and tells it `on` or why not.
    async fn open_backchannel(&self, id: &str, url: &str, talker: &str) -> Option<Speaking> {
        match Backchannel::open(url).await {
            Ok(channel) => {
                tracing::info!(stream = %id, codec = channel.info.codec.name(), "talking to the camera");
                self.talk_status(talker, Status { talk: "on", why: None, message: None }).await;
                Some(Speaking { channel, encoder: None })
            }
            Err(e) => {
                tracing::warn!(stream = %id, error = %e, "the camera's backchannel did not open");
                self.talk_status(
                    talker,
                    Status { talk: "error", why: Some("backchannel"), message: Some(e.to_string()) },
                )
                .await;
                None
            }
        }
    }
}

/// An open backchannel and the encoder for its holder's frames.
struct Speaking {
    channel: Backchannel,
    /// The encoder for frames at this rate.
    encoder: Option<(u16, TalkEncoder)>,
}

impl Speaking {
    async fn send(&mut self, frame: &Frame) -> Result<(), String> {
        if self.encoder.as_ref().map(|(rate, _)| *rate) != Some(frame.rate) {
            let info = &self.channel.info;
            let encoder =
                TalkEncoder::new(&info.codec, u32::from(frame.rate), info.clock_rate).map_err(|e| e.to_string())?;
            self.encoder = Some((frame.rate, encoder));
        }
        let Some((_, encoder)) = self.encoder.as_mut() else { return Ok(()) };
        let (bytes, samples) = encoder.encode(&frame.pcm).map_err(|e| e.to_string())?;
        if samples == 0 {
            return Ok(());
        }
        self.channel.send(&bytes, samples).await.map_err(|e| e.to_string())
    }
}
