//! With `topics.guarded`, where the answers about a stream go: under the stream's own topics, at a place
//! named by an opaque key of the requester, so that the broker's ACL on `<prefix>/live/<id>/#` decides who
//! receives anything of that stream (docs/PROTOCOL.md, "Who may watch what"). Without it, the reply topic.

use super::stream::Stream;
use super::Hub;
use mqtt_video_wire::protocol::{guarded_base, guarded_topic, StreamTopics};
use mqtt_video_wire::ratelimit;

impl Hub {
    /// Whether answers about a stream go under the stream's topics (`topics.guarded`).
    pub(crate) fn guarded(&self) -> bool {
        self.config.topics.guarded
    }

    /// The topics of stream `id`, naming the requester's guarded place when guarded.
    pub(crate) fn stream_topics_for(&self, id: &str, reply_topic: &str) -> StreamTopics {
        let topics = StreamTopics::new(self.topics.prefix(), id);
        if !self.guarded() {
            return topics;
        }
        let key = self.ids.requester_key(ratelimit::requester(reply_topic));
        topics.with_replies(guarded_base(self.topics.prefix(), id, &key))
    }

    /// Where an answer for `reply_topic` about stream `id` goes: the reply topic itself, or when guarded its
    /// place under the stream's topics. `None` when guarded and the reply topic has one level (no place can
    /// be named for it without showing it).
    pub(crate) fn answer_topic(&self, reply_topic: &str, id: &str) -> Option<String> {
        if !self.guarded() {
            return Some(reply_topic.to_string());
        }
        let replies = self.stream_topics_for(id, reply_topic).replies?;
        guarded_topic(&replies, reply_topic)
    }

    /// The topic a viewer with `reply_topic` is known by in `stream` (where its burst and statuses go).
    pub(crate) fn delivery_topic(&self, reply_topic: &str, stream: &Stream) -> String {
        self.answer_topic(reply_topic, &stream.topics().id).unwrap_or_else(|| reply_topic.to_string())
    }
}
