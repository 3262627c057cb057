//! The control requests: describe, play and stop, from parsing and rate limits to the stream's answer.
//!
//! The hub decides each request as it comes (`decide`), one at a time in the order the broker delivered
//! them, and applies what it decided before it takes the next: so a page's stop that follows its play finds
//! the viewer, and two plays cannot pass a cap together. What takes time, publishing the answer and a
//! describe's wait for its source (up to `connect_timeout_ms` + 5 s), is the request's [`Followup`], which
//! runs on its own task while the next requests are decided.

use super::intake::{self, Arrival, Refusal};
use super::stream::{self, Phase, Stream};
use super::{lock, Hub};
use mqtt_video_wire::output::{self, TrackMode};
use mqtt_video_wire::policy::redact;
use mqtt_video_wire::protocol::{
    parse_request, reply_topic_hint, status_topic, DescribeReply, DescribeRequest, EndReason, ErrorCode, ErrorReply,
    GuardedPointer, PlayRequest, ProtocolError, RenditionEntry, Request, RequestKind, Status, StopRequest,
};
use mqtt_video_wire::ratelimit;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What is left of a request once the hub has decided it and applied the decision: what to publish, and for
/// a describe the wait for its source. Run on a task of its own, concurrently with the next requests.
pub(super) enum Followup {
    /// An error answer, counted and logged already.
    Error {
        /// The request's kind: where on `topic` the error goes.
        kind: RequestKind,
        /// The reply topic (or its guarded place).
        topic: String,
        /// The code.
        code: ErrorCode,
        /// The message.
        message: String,
    },
    /// A describe: its answer, once its source is open.
    Describe(Box<DescribeWait>),
}

/// What is left of a describe.
pub(super) struct DescribeWait {
    /// The request.
    request: DescribeRequest,
    /// Where the answer about the stream goes.
    answer_to: String,
    /// Guarded: the pointer to `answer_to`, published on the reply topic first.
    pointer: Option<GuardedPointer>,
    /// The stream to wait for, or why there is none (counted and logged already).
    stream: Result<Arc<Stream>, (ErrorCode, String)>,
}

impl Hub {
    /// Counts and logs a refusal: the decision's part of answering an error.
    fn note_refusal(&self, kind: RequestKind, reply_topic: &str, code: ErrorCode, message: &str) {
        self.requests.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::info!(kind = kind.as_str(), reply_topic, code = code.as_str(), %message, "request refused");
    }

    /// Refuses a request being decided: counted and logged now, answered by its followup.
    fn refused(&self, kind: RequestKind, reply_topic: &str, code: ErrorCode, message: String) -> Option<Followup> {
        self.note_refusal(kind, reply_topic, code, &message);
        Some(Followup::Error { kind, topic: reply_topic.to_string(), code, message })
    }

    /// Publishes an error answer: describe on its reply topic, play on its status topic.
    async fn publish_error(&self, kind: RequestKind, reply_topic: &str, code: ErrorCode, message: String) {
        match kind {
            RequestKind::Describe => {
                self.publish_json(reply_topic.to_string(), &ErrorReply::new(code, message), false).await;
            }
            RequestKind::Play => {
                self.publish_json(status_topic(reply_topic), &Status::error(code, message), false).await;
            }
            RequestKind::Stop => {}
        }
    }

    /// Answers a request that went wrong after it was decided (a describe whose source failed).
    async fn answer_error(&self, kind: RequestKind, reply_topic: &str, code: ErrorCode, message: String) {
        self.note_refusal(kind, reply_topic, code, &message);
        self.publish_error(kind, reply_topic, code, message).await;
    }

    /// Decides a request that arrived at `now` and applies the decision to the hub's state; returns what is
    /// left to do. Nothing here waits: the next request is decided only after this one is applied.
    pub(super) fn decide(self: &Arc<Self>, kind: RequestKind, payload: &[u8], now: Instant) -> Option<Followup> {
        let parsed = parse_request(kind, payload, &self.limits);
        // Where an answer would go, read once: the request's reply topic, or for a request that failed its
        // checks the valid reply topic its payload names, if any.
        let reply_topic = match &parsed {
            Ok(r) => Some(r.reply_topic().to_string()),
            Err(_) => reply_topic_hint(payload, &self.limits),
        };
        let ownership = self.ownership(payload, &parsed, reply_topic.as_deref());
        let arrival = intake::arrive(kind, reply_topic.as_deref(), ownership, &mut lock(&self.rate), now);
        match arrival {
            Arrival::NotMine => return None,
            Arrival::Drop => {
                self.requests.rate_limited.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(kind = kind.as_str(), "request dropped by the rate limits");
                return None;
            }
            Arrival::Refuse { reply_topic, refusal } => {
                self.requests.rate_limited.fetch_add(1, Ordering::Relaxed);
                return self.refused(kind, &reply_topic, refusal.code(), refusal.to_string());
            }
            Arrival::Handle => {}
        }
        let request = match parsed {
            Ok(r) => r,
            Err(e) => return self.refuse(kind, reply_topic.as_deref(), e),
        };
        match request {
            Request::Describe(d) => self.describe(d),
            Request::Play(p) => self.play(p),
            Request::Stop(s) => {
                self.talk_gone(&s.reply_topic);
                self.stop(s);
                None
            }
        }
    }

    /// Carries out what is left of a decided request.
    pub(super) async fn follow_up(self: Arc<Self>, followup: Followup) {
        match followup {
            Followup::Error { kind, topic, code, message } => self.publish_error(kind, &topic, code, message).await,
            Followup::Describe(wait) => {
                let DescribeWait { request, answer_to, pointer, stream } = *wait;
                if let Some(pointer) = pointer {
                    self.publish_json(request.reply_topic.clone(), &pointer, false).await;
                }
                match stream {
                    Ok(stream) => self.described(request, answer_to, stream).await,
                    Err((code, message)) => self.publish_error(RequestKind::Describe, &answer_to, code, message).await,
                }
            }
        }
    }

    fn refuse(&self, kind: RequestKind, reply_topic: Option<&str>, error: ProtocolError) -> Option<Followup> {
        match reply_topic {
            Some(topic) => self.refused(kind, topic, error.code(), error.to_string()),
            None => {
                // No valid reply topic: there is nowhere safe to answer.
                self.requests.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::info!(kind = kind.as_str(), code = error.code().as_str(), %error, "request refused, no reply topic to answer on");
                None
            }
        }
    }

    fn describe(self: &Arc<Self>, request: DescribeRequest) -> Option<Followup> {
        self.requests.describe.fetch_add(1, Ordering::Relaxed);
        let kind = RequestKind::Describe;
        // A JSON reply on a viewer's media topic (or inside it) would corrupt that viewer's stream.
        let taken = {
            let viewers = lock(&self.viewers);
            viewers.contains_key(&request.reply_topic) || intake::nested(&viewers, &request.reply_topic)
        };
        if taken {
            self.requests.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(reply_topic = %request.reply_topic, "describe refused, not answered: its reply topic belongs to a viewer");
            return None;
        }
        let url = match self.allow(&request.url) {
            Ok(url) => url,
            Err(m) => return self.refused(kind, &request.reply_topic, ErrorCode::ForbiddenUrl, m),
        };
        // From here on every answer is about the stream: guarded, it goes under the stream's topics, and the
        // reply topic only learns where (which the public sources list already tells, but for the key).
        let id = self.ids.id_of(&url);
        let Some(answer_to) = self.answer_topic(&request.reply_topic, &id) else {
            self.unanswerable(kind, &request.reply_topic);
            return None;
        };
        let pointer = self.guarded().then(|| GuardedPointer {
            url: request.url.clone(),
            guarded: true,
            stream: self.stream_topics_for(&id, &request.reply_topic),
        });
        let stream = self.stream_of(&url, kind, Some(ratelimit::requester(&request.reply_topic)));
        match &stream {
            Ok(stream) => stream.touch(),
            Err((code, message)) => self.note_refusal(kind, &answer_to, *code, message),
        }
        Some(Followup::Describe(Box::new(DescribeWait { request, answer_to, pointer, stream })))
    }

    /// Waits for a described stream's source and answers with its description, or the error it got.
    async fn described(&self, request: DescribeRequest, answer_to: String, stream: Arc<Stream>) {
        let kind = RequestKind::Describe;
        let url = &stream.url;
        let limit = self.config.pipeline_for(url).source.connect_timeout() + Duration::from_secs(5);
        let mut phase = stream.phase();
        let outcome = tokio::time::timeout(limit, async {
            loop {
                match phase.borrow_and_update().clone() {
                    Phase::Ready(info) => return Ok(info),
                    Phase::Failed { code, message } => return Err((code, message)),
                    Phase::Ended => return Err((ErrorCode::SourceEnded, "the stream ended".to_string())),
                    Phase::Starting | Phase::Reconnecting { .. } => {}
                }
                if phase.changed().await.is_err() {
                    return Err((ErrorCode::InternalError, "the stream vanished".to_string()));
                }
            }
        })
        .await;
        match outcome {
            Ok(Ok(info)) => {
                stream.touch();
                let topics = self.stream_topics_for(&stream.topics().id, &request.reply_topic);
                let mut reply = DescribeReply::new(&request.url, &info, &topics);
                let renditions = stream.renditions();
                // A version 1 client reads the top-level facts and plays what they say: an HEVC main's H.264
                // repeat, when the stream has one (version 2 pages choose from the renditions).
                if let Some(repeat) = output::h264_repeat(&renditions) {
                    reply.info.mime_codec = repeat.mime_codec.clone();
                    reply.info.video = TrackMode::Transcode;
                }
                reply.renditions = renditions
                    .into_iter()
                    .map(|info| {
                        let stream = if info.name == "main" { topics.clone() } else { topics.rendition(&info.name) };
                        RenditionEntry { info, stream }
                    })
                    .collect();
                self.publish_json(answer_to, &reply, false).await;
            }
            Ok(Err((code, message))) => self.answer_error(kind, &answer_to, code, message).await,
            Err(_) => {
                let message = format!("no picture from the source within {} s", limit.as_secs());
                self.answer_error(kind, &answer_to, ErrorCode::SourceTimeout, message).await;
            }
        }
    }

    fn play(self: &Arc<Self>, request: PlayRequest) -> Option<Followup> {
        self.requests.play.fetch_add(1, Ordering::Relaxed);
        let kind = RequestKind::Play;
        let shared = request.shared();
        let topic = request.reply_topic.clone();
        if self.guarded() && !shared {
            // A version 1 play sends everything to the reply topic, around the broker's ACL on the stream.
            let message =
                "this server sends media only on the stream topics (topics.guarded): play with \"version\": 2";
            return self.refused(kind, &topic, ErrorCode::BadRequest, message.to_string());
        }
        let url = match self.allow(&request.url) {
            Ok(url) => url,
            Err(m) => return self.refused(kind, &topic, ErrorCode::ForbiddenUrl, m),
        };
        let Some(target) = self.answer_topic(&topic, &self.ids.id_of(&url)) else {
            self.unanswerable(kind, &topic);
            return None;
        };
        let requester = ratelimit::requester(&topic);
        // The requester's share is checked and the viewer recorded under one lock, with the stream found or
        // started in between (lock order: viewers, then streams), so that no other play counts in between.
        let mut viewers = lock(&self.viewers);
        if let Err(refusal) = intake::play(&viewers, &topic, &self.config.limits) {
            drop(viewers);
            return self.play_refused(&topic, refusal);
        }
        let stream = match self.stream_of(&url, kind, Some(requester)) {
            Ok(s) => s,
            Err((code, m)) => {
                drop(viewers);
                return self.refused(kind, &target, code, m);
            }
        };
        // Version 1 plays what its describe said: an HEVC main's H.264 repeat where the stream has one.
        let repeat = if shared { None } else { output::h264_repeat(&stream.renditions()).map(|r| r.name.clone()) };
        let rendition = request.rendition.as_deref().or(repeat.as_deref());
        // The hub knows the viewer by its reply topic; the stream by the topic its media and statuses go to
        // (the same one unless guarded).
        let previous = viewers.insert(topic.clone(), url.clone());
        drop(viewers);
        match previous {
            // Playing again what it already plays renews the viewer; delivery goes on undisturbed.
            Some(old) if old == url && stream.has_viewer(&target, rendition) => {
                stream.renew_viewer(&target);
                return None;
            }
            Some(old) if old != url => {
                // The topic moves to the new stream: the old delivery ends silently, or its last fragments
                // and an `ended` could land after the new init segment.
                let old_stream = lock(&self.streams).get(&old).cloned();
                if let Some(old_stream) = old_stream {
                    old_stream.remove_viewer(&self.delivery_topic(&topic, &old_stream), None);
                }
            }
            _ => {}
        }
        let delivery = if shared { stream::core::Delivery::Shared } else { stream::core::Delivery::Direct };
        let most = self.config.limits.max_viewers_per_stream;
        if let Err(refused) = stream.add_viewer(&target, delivery, most, rendition) {
            let (code, message) = match refused {
                stream::JoinRefused::Full => {
                    (ErrorCode::Overloaded, format!("the stream already has its maximum of {most} viewers"))
                }
                stream::JoinRefused::UnknownRendition(message) => (ErrorCode::BadRequest, message),
                stream::JoinRefused::Unavailable(message) => (ErrorCode::InternalError, message),
            };
            // A viewer that asked for a rendition the stream does not have keeps what it plays, if anything.
            if !stream.has_viewer_anywhere(&target) {
                lock(&self.viewers).remove(&topic);
            }
            return self.refused(kind, &target, code, message);
        }
        tracing::info!(
            url = %redact(&url),
            reply_topic = %topic,
            rendition = rendition.unwrap_or("main"),
            viewers = stream.viewer_count(),
            "viewer joined"
        );
        None
    }

    /// A play the hub's viewers refuse: over its requester's share (answered), or nested in another
    /// viewer's reply topic, whose status topic lies inside that viewer's subscription (not answered).
    fn play_refused(&self, topic: &str, refusal: Refusal) -> Option<Followup> {
        let kind = RequestKind::Play;
        if refusal.answered() {
            return self.refused(kind, topic, refusal.code(), refusal.to_string());
        }
        self.requests.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::info!(kind = kind.as_str(), reply_topic = %topic, message = %refusal, "request refused, not answered");
        None
    }

    /// Guarded, a one-level reply topic: no place under the stream's topics can be named for it without
    /// showing it to the stream's other viewers. Refused, not answered (like any other bad reply topic).
    fn unanswerable(&self, kind: RequestKind, reply_topic: &str) {
        self.requests.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            kind = kind.as_str(),
            reply_topic,
            "request refused, not answered: topics.guarded needs a reply topic of two levels or more"
        );
    }

    pub(super) fn stop(&self, request: StopRequest) {
        self.requests.stop.fetch_add(1, Ordering::Relaxed);
        let Some(url) = lock(&self.viewers).remove(&request.reply_topic) else { return };
        let stream = lock(&self.streams).get(&url).cloned();
        if let Some(stream) = stream {
            stream.remove_viewer(&self.delivery_topic(&request.reply_topic, &stream), Some(EndReason::Stopped));
            tracing::info!(reply_topic = %request.reply_topic, viewers = stream.viewer_count(), "viewer left");
        }
    }
}
