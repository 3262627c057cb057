//! The control requests: describe, play and stop, from parsing and rate limits to the stream's answer.

use super::intake::{self, Arrival, Refusal};
use super::stream::{self, Phase};
use super::{lock, Hub};
use bytes::Bytes;
use mqtt_video_wire::policy::redact;
use mqtt_video_wire::protocol::{
    parse_request, reply_topic_hint, status_topic, DescribeReply, DescribeRequest, EndReason, ErrorCode, ErrorReply,
    GuardedPointer, PlayRequest, ProtocolError, RenditionEntry, Request, RequestKind, Status, StopRequest,
};
use mqtt_video_wire::ratelimit;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Hub {
    /// Answers a request that went wrong: describe on its reply topic, play on its status topic.
    pub(super) async fn answer_error(&self, kind: RequestKind, reply_topic: &str, code: ErrorCode, message: String) {
        self.requests.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::info!(kind = kind.as_str(), reply_topic, code = code.as_str(), %message, "request refused");
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

    pub(super) async fn handle(self: Arc<Self>, kind: RequestKind, payload: Bytes) {
        let parsed = parse_request(kind, &payload, &self.limits);
        // Where an answer would go, read once: the request's reply topic, or for a request that failed its
        // checks the valid reply topic its payload names, if any.
        let reply_topic = match &parsed {
            Ok(r) => Some(r.reply_topic().to_string()),
            Err(_) => reply_topic_hint(&payload, &self.limits),
        };
        let ownership = self.ownership(&payload, &parsed, reply_topic.as_deref());
        let arrival = intake::arrive(kind, reply_topic.as_deref(), ownership, &mut lock(&self.rate), Instant::now());
        match arrival {
            Arrival::NotMine => return,
            Arrival::Drop => {
                self.requests.rate_limited.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(kind = kind.as_str(), "request dropped by the rate limits");
                return;
            }
            Arrival::Refuse { reply_topic, refusal } => {
                self.requests.rate_limited.fetch_add(1, Ordering::Relaxed);
                return self.answer_error(kind, &reply_topic, refusal.code(), refusal.to_string()).await;
            }
            Arrival::Handle => {}
        }
        let request = match parsed {
            Ok(r) => r,
            Err(e) => return self.refuse(kind, reply_topic.as_deref(), e).await,
        };
        match request {
            Request::Describe(d) => self.describe(d).await,
            Request::Play(p) => self.play(p).await,
            Request::Stop(s) => self.stop(s),
        }
    }

    pub(super) async fn refuse(&self, kind: RequestKind, reply_topic: Option<&str>, error: ProtocolError) {
        match reply_topic {
            Some(topic) => self.answer_error(kind, topic, error.code(), error.to_string()).await,
            None => {
                // No valid reply topic: there is nowhere safe to answer.
                self.requests.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::info!(kind = kind.as_str(), code = error.code().as_str(), %error, "request refused, no reply topic to answer on");
            }
        }
    }

    pub(super) async fn describe(self: Arc<Self>, request: DescribeRequest) {
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
            return;
        }
        let url = match self.allow(&request.url) {
            Ok(url) => url,
            Err(m) => return self.answer_error(kind, &request.reply_topic, ErrorCode::ForbiddenUrl, m).await,
        };
        // From here on every answer is about the stream: guarded, it goes under the stream's topics, and the
        // reply topic only learns where (which the public sources list already tells, but for the key).
        let id = self.ids.id_of(&url);
        let Some(answer_to) = self.answer_topic(&request.reply_topic, &id) else {
            return self.unanswerable(kind, &request.reply_topic);
        };
        if self.guarded() {
            let stream = self.stream_topics_for(&id, &request.reply_topic);
            let pointer = GuardedPointer { url: request.url.clone(), guarded: true, stream };
            self.publish_json(request.reply_topic.clone(), &pointer, false).await;
        }
        let stream = match self.stream_of(&url, kind, Some(ratelimit::requester(&request.reply_topic))) {
            Ok(s) => s,
            Err((code, m)) => return self.answer_error(kind, &answer_to, code, m).await,
        };
        stream.touch();
        let limit = self.config.pipeline_for(&url).source.connect_timeout() + Duration::from_secs(5);
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
                reply.renditions = stream
                    .renditions()
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

    pub(super) async fn play(self: Arc<Self>, request: PlayRequest) {
        self.requests.play.fetch_add(1, Ordering::Relaxed);
        let kind = RequestKind::Play;
        let shared = request.shared();
        let rendition = request.rendition.as_deref();
        let topic = request.reply_topic.clone();
        if self.guarded() && !shared {
            // A version 1 play sends everything to the reply topic, around the broker's ACL on the stream.
            let message =
                "this server sends media only on the stream topics (topics.guarded): play with \"version\": 2";
            return self.answer_error(kind, &topic, ErrorCode::BadRequest, message.to_string()).await;
        }
        let url = match self.allow(&request.url) {
            Ok(url) => url,
            Err(m) => return self.answer_error(kind, &topic, ErrorCode::ForbiddenUrl, m).await,
        };
        let Some(target) = self.answer_topic(&topic, &self.ids.id_of(&url)) else {
            return self.unanswerable(kind, &topic);
        };
        let requester = ratelimit::requester(&topic);
        // The requester's share is checked and the viewer recorded under one lock, with the stream found or
        // started in between (lock order: viewers, then streams): two plays cannot both take its last place.
        let admitted = {
            let mut viewers = lock(&self.viewers);
            intake::play(&viewers, &topic, &self.config.limits).map_err(Err).and_then(|_| {
                let stream = self.stream_of(&url, kind, Some(requester)).map_err(Ok)?;
                // The hub knows the viewer by its reply topic; the stream by the topic its media and statuses
                // go to (the same one unless guarded).
                Ok((stream, viewers.insert(topic.clone(), url.clone())))
            })
        };
        let (stream, previous) = match admitted {
            Ok(admitted) => admitted,
            Err(Err(refusal)) => return self.play_refused(&topic, refusal).await,
            Err(Ok((code, m))) => return self.answer_error(kind, &target, code, m).await,
        };
        match previous {
            // Playing again what it already plays renews the viewer; delivery goes on undisturbed.
            Some(old) if old == url && stream.has_viewer(&target, rendition) => {
                stream.renew_viewer(&target);
                return;
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
            return self.answer_error(kind, &target, code, message).await;
        }
        tracing::info!(
            url = %redact(&url),
            reply_topic = %topic,
            rendition = rendition.unwrap_or("main"),
            viewers = stream.viewer_count(),
            "viewer joined"
        );
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

    /// A play the hub's viewers refuse: over its requester's share (answered), or nested in another
    /// viewer's reply topic, whose status topic lies inside that viewer's subscription (not answered).
    async fn play_refused(&self, topic: &str, refusal: Refusal) {
        let kind = RequestKind::Play;
        if refusal.answered() {
            return self.answer_error(kind, topic, refusal.code(), refusal.to_string()).await;
        }
        self.requests.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::info!(kind = kind.as_str(), reply_topic = %topic, message = %refusal, "request refused, not answered");
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
