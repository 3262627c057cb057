//! One viewer: a bounded queue of what to publish on its reply topic, and the task that publishes it.
//! A viewer that falls behind loses whole fragments up to the next keyframe, never a broken GOP.

use super::broker_client::{Client, ClientError};
use super::mqtt::PublishLog;
use bytes::Bytes;
use mqtt_video_wire::pieces;
use rumqttc::QoS;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;
use tokio::sync::Notify;

/// How media messages fit the broker: its packet limit (0: none), and where large publishes are noted.
#[derive(Debug, Clone, Default)]
pub struct Pieces {
    /// `broker.max_packet_bytes`.
    pub max_packet: usize,
    /// The limit the broker's MQTT 5 CONNACK gave (0: none).
    pub broker_limit: Arc<AtomicUsize>,
    /// The last large publish, for the log line when the broker drops the connection.
    pub log: Arc<PublishLog>,
}

impl Pieces {
    /// The packet limit in force: the smaller of the configured one and the broker's (0: none).
    pub fn limit(&self) -> usize {
        match (self.max_packet, self.broker_limit.load(Ordering::Relaxed)) {
            (0, broker) => broker,
            (configured, 0) => configured,
            (configured, broker) => configured.min(broker),
        }
    }

    /// Publishes one segment on `topic`: whole, or in pieces that fit the packet limit (docs/PROTOCOL.md,
    /// "Pieces"), consecutively, so that nothing else on the topic comes between them.
    async fn publish(&self, client: &Client, topic: &str, qos: QoS, segment: Bytes) -> Result<(), ClientError> {
        let max_payload = match self.limit() {
            0 => usize::MAX,
            limit => pieces::max_payload(
                limit,
                topic,
                pieces::Framing { qos_above_0: qos != QoS::AtMostOnce, properties: client.media_properties_len() },
            ),
        };
        if segment.len() <= max_payload {
            self.log.note(segment.len());
            return client.publish_media(topic, qos, segment).await;
        }
        for piece in pieces::split(&segment, max_payload) {
            self.log.note(piece.len());
            client.publish_media(topic, qos, piece).await?;
        }
        Ok(())
    }
}

/// Something to publish for a viewer, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// Binary media on the reply topic (an init segment or a fragment).
    Media(Bytes),
    /// A JSON status message on `<reply_topic>/status`.
    Status(String),
}

/// The queue between a stream's fan-out and one viewer's publisher task.
#[derive(Debug)]
pub struct Queue {
    items: VecDeque<Item>,
    capacity: usize,
    /// Nothing but a keyframe may come next: at the start, after a reset, and after a drop.
    waiting_for_keyframe: bool,
    /// The wait is because the viewer fell behind (its skipped fragments count as drops).
    lagging: bool,
    /// Fragments this viewer lost because it was behind.
    pub dropped: u64,
    closed: bool,
}

impl Queue {
    /// An empty queue for at most `capacity` fragments; it starts waiting for a keyframe.
    pub fn new(capacity: usize) -> Self {
        Self {
            items: VecDeque::new(),
            capacity: capacity.max(1),
            waiting_for_keyframe: true,
            lagging: false,
            dropped: 0,
            closed: false,
        }
    }

    /// Queues a fragment, or drops it (and everything up to the next keyframe) when the viewer is behind.
    pub fn push_fragment(&mut self, bytes: Bytes, keyframe: bool) {
        if self.closed {
            return;
        }
        let full = self.media_len() >= self.capacity;
        if keyframe && !full {
            self.waiting_for_keyframe = false;
            self.lagging = false;
        }
        if full {
            self.waiting_for_keyframe = true;
            self.lagging = true;
        }
        if self.waiting_for_keyframe {
            self.dropped += u64::from(self.lagging);
            return;
        }
        self.items.push_back(Item::Media(bytes));
    }

    /// Queues an init segment followed by a GOP that starts with a keyframe; never dropped.
    pub fn push_start(&mut self, init: Bytes, gop: &[Bytes]) {
        self.items.push_back(Item::Media(init));
        self.items.extend(gop.iter().cloned().map(Item::Media));
        // With no cached GOP the next keyframe is the first thing the viewer can decode.
        self.waiting_for_keyframe = gop.is_empty();
    }

    /// Takes fragments from here on without waiting for a keyframe: for the stream's own topic, whose
    /// viewers got the GOP so far in their join burst.
    pub fn take_from_here(&mut self) {
        self.waiting_for_keyframe = false;
        self.lagging = false;
    }

    /// Queues a status message; never dropped.
    pub fn push_status(&mut self, json: String) {
        if !self.closed {
            self.items.push_back(Item::Status(json));
        }
    }

    /// Forgets queued media (the source restarted: old fragments are useless) and waits for a keyframe.
    pub fn reset_media(&mut self) {
        self.items.retain(|i| matches!(i, Item::Status(_)));
        self.waiting_for_keyframe = true;
    }

    /// Marks the queue closed: the publisher drains what is left, then ends.
    pub fn close(&mut self) {
        self.closed = true;
    }

    fn media_len(&self) -> usize {
        self.items.iter().filter(|i| matches!(i, Item::Media(_))).count()
    }

    /// Takes the next item; `None` with `true` when closed and drained.
    pub fn pop(&mut self) -> (Option<Item>, bool) {
        let item = self.items.pop_front();
        let done = item.is_none() && self.closed;
        (item, done)
    }
}

/// A viewer as the stream sees it.
#[derive(Debug)]
pub struct Viewer {
    /// The page's reply topic (media); status goes to `<reply_topic>/status`.
    pub reply_topic: String,
    queue: Arc<Mutex<Queue>>,
    notify: Arc<Notify>,
    /// When the page last sent play (for the viewer timeout).
    pub last_seen: Instant,
    /// When it joined.
    pub joined: Instant,
}

impl Viewer {
    /// A viewer whose publisher task is started with [`Viewer::spawn_publisher`].
    pub fn new(reply_topic: String, capacity: usize) -> Self {
        let now = Instant::now();
        Self {
            reply_topic,
            queue: Arc::new(Mutex::new(Queue::new(capacity))),
            notify: Arc::new(Notify::new()),
            last_seen: now,
            joined: now,
        }
    }

    /// Locks the queue; pushes through this wake the publisher when the guard's owner calls [`Viewer::wake`].
    pub fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the publisher after pushes.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Drops whatever is still queued and closes: for a viewer whose reply topic now belongs to a new delivery.
    pub fn discard(&self) {
        {
            let mut queue = self.queue();
            queue.items.clear();
            queue.close();
        }
        self.wake();
    }

    /// Closes the queue (after a final status, if any) and wakes the publisher so it can finish.
    pub fn close(&self) {
        self.queue().close();
        self.wake();
    }

    /// Starts the task that publishes the queue in order.
    pub fn spawn_publisher(&self, client: Client, qos: QoS, pieces: Pieces) {
        let (queue, notify) = (Arc::clone(&self.queue), Arc::clone(&self.notify));
        let media_topic = self.reply_topic.clone();
        let status_topic = mqtt_video_wire::protocol::status_topic(&self.reply_topic);
        tokio::spawn(async move {
            loop {
                let (item, done) = queue.lock().unwrap_or_else(PoisonError::into_inner).pop();
                let result = match item {
                    Some(Item::Media(bytes)) => pieces.publish(&client, media_topic.as_str(), qos, bytes).await,
                    Some(Item::Status(json)) => client.publish(status_topic.as_str(), qos, false, json).await,
                    None if done => return,
                    None => {
                        notify.notified().await;
                        continue;
                    }
                };
                if result.is_err() {
                    // The MQTT client is gone: the server is shutting down.
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(q: &mut Queue) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let (Some(item), _) = q.pop() {
            if let Item::Media(b) = item {
                out.push(b);
            }
        }
        out
    }

    #[test]
    fn waits_for_a_keyframe_then_drops_whole_gops_when_full() {
        let mut q = Queue::new(3);
        q.push_fragment(Bytes::from_static(b"p0"), false);
        assert_eq!((q.dropped, q.pop().0), (0, None), "nothing before the first keyframe, and that is no loss");
        q.push_fragment(Bytes::from_static(b"k1"), true);
        q.push_fragment(Bytes::from_static(b"p1"), false);
        q.push_fragment(Bytes::from_static(b"p2"), false);
        q.push_fragment(Bytes::from_static(b"p3"), false); // full: dropped, and the rest of the GOP with it
        assert_eq!(media(&mut q), vec!["k1", "p1", "p2"]);
        q.push_fragment(Bytes::from_static(b"p4"), false);
        assert_eq!(q.dropped, 2, "p3 and p4 were lost");
        q.push_fragment(Bytes::from_static(b"k2"), true);
        q.push_fragment(Bytes::from_static(b"p5"), false);
        assert_eq!(media(&mut q), vec!["k2", "p5"]);
    }

    #[test]
    fn start_is_never_dropped_and_status_keeps_order() {
        let mut q = Queue::new(1);
        let gop = [Bytes::from_static(b"k"), Bytes::from_static(b"p")];
        q.push_status("playing".into());
        q.push_start(Bytes::from_static(b"init"), &gop);
        assert_eq!(q.pop().0, Some(Item::Status("playing".into())));
        assert_eq!(media(&mut q), vec!["init", "k", "p"]);
        q.push_start(Bytes::from_static(b"init"), &[]);
        q.push_fragment(Bytes::from_static(b"p"), false);
        assert_eq!(media(&mut q), vec!["init"], "an empty GOP cache means: wait for the next keyframe");
    }

    #[test]
    fn reset_keeps_status_and_close_drains() {
        let mut q = Queue::new(8);
        q.push_fragment(Bytes::from_static(b"k"), true);
        q.push_status("reconnecting".into());
        q.reset_media();
        q.push_fragment(Bytes::from_static(b"p"), false);
        q.close();
        q.push_status("late".into());
        assert_eq!(q.pop(), (Some(Item::Status("reconnecting".into())), false));
        assert_eq!(q.pop(), (None, true));
    }
}
