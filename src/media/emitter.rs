//! The worker's end of a pipeline's event channel, and its back-pressure. The channel is bounded
//! (`channel_capacity`); when the consumer falls behind and it is full, a fragment is dropped with
//! everything after it up to the next keyframe, which is the first that decodes without them
//! (`backpressure = "drop"`, counted in the stats), or the worker waits for room (`"block"`). Control events
//! (the source's facts, init segments, a rendition's facts or failure) are never dropped: the worker waits
//! for room, until it is stopped or the consumer is gone.

use super::channel::{wait, Until};
use super::config::Backpressure;
use super::encode::rendition;
use super::error::MediaError;
use super::events::{Fragment, PipelineEvent, PipelineStats, RenditionEvent};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{self, error::TrySendError};

/// How long the end event waits for room: the consumer may be gone already, and a stop must not hang.
const END_WAIT: Duration = Duration::from_secs(1);

/// Sends a pipeline's events to its consumer, dropping whole GOPs of fragments (not control events) when it
/// lags.
pub(super) struct Emitter {
    tx: mpsc::Sender<PipelineEvent>,
    policy: Backpressure,
    /// Fragments are being dropped up to the next keyframe.
    dropping: bool,
    /// The same as `dropping`, for each rendition's fragments.
    renditions_dropping: Vec<bool>,
    /// Set when the pipeline is asked to stop.
    pub(super) stop: Arc<AtomicBool>,
    /// The pipeline's counters, the drops among them.
    pub(super) stats: Arc<PipelineStats>,
}

impl Emitter {
    /// An emitter into `tx` for a pipeline with `renditions` configured renditions.
    pub(super) fn new(
        tx: mpsc::Sender<PipelineEvent>,
        policy: Backpressure,
        renditions: usize,
        stop: Arc<AtomicBool>,
        stats: Arc<PipelineStats>,
    ) -> Self {
        Self { tx, policy, dropping: false, renditions_dropping: vec![false; renditions], stop, stats }
    }

    /// Whether the pipeline was asked to stop.
    pub(super) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sends an event that must arrive, waiting for room; `Stopped` once a stop is asked or the consumer is
    /// gone.
    pub(super) fn control(&self, event: PipelineEvent) -> Result<(), MediaError> {
        let mut reserve = pin!(self.tx.reserve());
        match wait(|cx| reserve.as_mut().poll(cx), Until::Stopped(&self.stop)) {
            Some(Ok(permit)) => {
                permit.send(event);
                Ok(())
            }
            // The consumer is gone, or the stop was asked.
            Some(Err(_)) | None => Err(MediaError::Stopped),
        }
    }

    /// Sends a fragment of the stream's own output, or drops it (see the module's comment).
    pub(super) fn fragment(&mut self, fragment: Fragment) -> Result<(), MediaError> {
        if self.dropping && !fragment.keyframe {
            self.stats.fragments_dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.dropping = false;
        let (len, samples) = (fragment.bytes.len() as u64, u64::from(fragment.video_samples));
        let sent = match self.policy {
            Backpressure::Block => self.control(PipelineEvent::Fragment(fragment)).map(|()| true)?,
            Backpressure::Drop => match self.tx.try_send(PipelineEvent::Fragment(fragment)) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    // Whatever follows until the next keyframe would not decode without this fragment.
                    self.dropping = true;
                    self.stats.fragments_dropped.fetch_add(1, Ordering::Relaxed);
                    false
                }
                Err(TrySendError::Closed(_)) => return Err(MediaError::Stopped),
            },
        };
        if sent {
            self.stats.fragments_out.fetch_add(1, Ordering::Relaxed);
            self.stats.bytes_out.fetch_add(len, Ordering::Relaxed);
            self.stats.video_frames_out.fetch_add(samples, Ordering::Relaxed);
        }
        Ok(())
    }

    /// A rendition's event: fragments are dropped up to its next keyframe when the consumer lags, like the
    /// stream's own (but not counted: the stream's drops are what its viewers lose), the rest always goes.
    pub(super) fn rendition(&mut self, index: usize, event: RenditionEvent) -> Result<(), MediaError> {
        let RenditionEvent::Fragment(fragment) = event else {
            return self.control(PipelineEvent::Rendition(index, event));
        };
        let Some(dropping) = self.renditions_dropping.get_mut(index) else { return Ok(()) };
        if *dropping && !fragment.keyframe {
            return Ok(());
        }
        *dropping = false;
        let event = PipelineEvent::Rendition(index, RenditionEvent::Fragment(fragment));
        match self.policy {
            Backpressure::Block => self.control(event),
            Backpressure::Drop => match self.tx.try_send(event) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(_)) => {
                    *dropping = true;
                    Ok(())
                }
                Err(TrySendError::Closed(_)) => Err(MediaError::Stopped),
            },
        }
    }

    /// Sends the renditions' events, in order.
    pub(super) fn send_renditions(&mut self, events: &mut rendition::Events) -> Result<(), MediaError> {
        for (index, event) in events.drain(..) {
            self.rendition(index, event)?;
        }
        Ok(())
    }

    /// Sends the end, best effort: it waits [`END_WAIT`] at most for room. Taking the emitter, it closes the
    /// channel with it, which tells the consumer that the run is over ([`super::Pipeline::finish`]).
    pub(super) fn end(self, result: Result<(), MediaError>) {
        let mut reserve = pin!(self.tx.reserve());
        if let Some(Ok(permit)) = wait(|cx| reserve.as_mut().poll(cx), Until::Deadline(Instant::now() + END_WAIT)) {
            permit.send(PipelineEvent::End(result));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::channel::{Events, RecvTimeoutError, STOP_CHECK};
    use bytes::Bytes;

    fn frag(sequence: u64, keyframe: bool) -> Fragment {
        Fragment {
            bytes: Bytes::from_static(b"moof"),
            sequence,
            keyframe,
            media_time_us: 0,
            duration_us: 33_333,
            video_samples: 1,
            source_wallclock_us: 0,
            produced_wallclock_us: 0,
        }
    }

    fn emitter(policy: Backpressure, capacity: usize) -> (Emitter, Events) {
        let (tx, events) = Events::channel(capacity);
        (Emitter::new(tx, policy, 1, Arc::default(), Arc::default()), events)
    }

    /// What is in the channel now, shortly: `f3`, `k1` (a keyframe), `r0 f2` (rendition 0), `init`.
    fn drain(events: &mut Events) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(event) = events.recv_timeout(Duration::ZERO) {
            out.push(match event {
                PipelineEvent::Fragment(f) => format!("{}{}", if f.keyframe { "k" } else { "f" }, f.sequence),
                PipelineEvent::Rendition(i, RenditionEvent::Fragment(f)) => format!("r{i} f{}", f.sequence),
                PipelineEvent::Rendition(i, _) => format!("r{i} control"),
                PipelineEvent::Init(_) => "init".into(),
                PipelineEvent::Source(_) => "source".into(),
                PipelineEvent::End(r) => format!("end {r:?}"),
            });
        }
        out
    }

    #[test]
    fn a_slow_consumer_loses_whole_gops_counted_and_never_a_broken_one() {
        let (mut em, mut events) = emitter(Backpressure::Drop, 4);
        // What happens, the fragments sent (sequence, keyframe), what the consumer then finds in the channel.
        type Step = (&'static str, &'static [(u64, bool)], &'static [&'static str]);
        let steps: [Step; 3] = [
            ("room for four", &[(1, true), (2, false), (3, false), (4, false)], &["k1", "f2", "f3", "f4"]),
            (
                "full after 8: 9 is dropped, and 10 with it, which needs 9 to decode",
                &[(5, true), (6, false), (7, false), (8, false), (9, false), (10, false)],
                &["k5", "f6", "f7", "f8"],
            ),
            (
                "room again, but nothing before the next keyframe",
                &[(11, false), (12, true), (13, false)],
                &["k12", "f13"],
            ),
        ];
        for (what, sent, want) in steps {
            for &(sequence, keyframe) in sent {
                em.fragment(frag(sequence, keyframe)).expect("the consumer is there");
            }
            assert_eq!(drain(&mut events), want, "{what}");
        }
        let stats = em.stats.snapshot();
        assert_eq!((stats.fragments_out, stats.fragments_dropped), (10, 3), "9, 10 and 11 dropped, counted");
    }

    #[test]
    fn a_renditions_fragments_drop_apart_from_the_streams_and_control_events_wait_for_room() {
        let (mut em, mut events) = emitter(Backpressure::Drop, 4);
        let r = |s: u64, k: bool| RenditionEvent::Fragment(frag(s, k));
        em.fragment(frag(1, true)).expect("sent");
        for (s, k) in [(1, true), (2, false), (3, false), (4, false), (5, true)] {
            em.rendition(0, r(s, k)).expect("sent or dropped");
        }
        em.fragment(frag(2, false)).expect("dropped");
        assert_eq!(drain(&mut events), ["k1", "r0 f1", "r0 f2", "r0 f3"]);
        // The rendition dropped 4 and 5 (no room for either) and waits for a keyframe; the stream's own
        // dropped 2 and does too.
        em.rendition(0, r(6, false)).expect("dropped");
        em.rendition(0, r(7, true)).expect("sent");
        em.fragment(frag(3, false)).expect("dropped");
        em.fragment(frag(4, true)).expect("sent");
        assert_eq!(drain(&mut events), ["r0 f7", "k4"]);
        assert_eq!(em.stats.fragments_dropped.load(Ordering::Relaxed), 2, "the rendition's drops are not counted");

        // A full channel: a control event waits for the consumer instead of being dropped.
        for s in 5..9 {
            em.fragment(frag(s, s == 5)).expect("sent");
        }
        let sender = std::thread::spawn(move || {
            let sent = em.rendition(0, RenditionEvent::Failed("encoder".into()));
            (sent, em)
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(matches!(events.recv_timeout(Duration::ZERO), Ok(PipelineEvent::Fragment(f)) if f.sequence == 5));
        let (sent, _em) = sender.join().expect("the sender");
        assert_eq!(sent, Ok(()));
        assert_eq!(drain(&mut events), ["f6", "f7", "f8", "r0 control"], "in order");
    }

    #[test]
    fn a_blocked_worker_waits_for_room_and_gives_up_on_a_stop_or_a_gone_consumer() {
        let (mut em, mut events) = emitter(Backpressure::Block, 4);
        for s in 1..=4 {
            em.fragment(frag(s, s == 1)).expect("room");
        }
        let stop = Arc::clone(&em.stop);
        let blocked = std::thread::spawn(move || {
            let sent = em.fragment(frag(5, false));
            (sent, em)
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!blocked.is_finished(), "it waits for room");
        assert!(events.recv_timeout(Duration::ZERO).is_ok());
        let (sent, mut em) = blocked.join().expect("the worker");
        assert_eq!(sent, Ok(()), "the room was taken");
        assert_eq!(em.stats.fragments_dropped.load(Ordering::Relaxed), 0, "blocking drops nothing");

        // Full again, and nobody reads: a stop frees the worker within a check.
        let asked = Instant::now();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            stop.store(true, Ordering::Relaxed);
        });
        assert_eq!(em.fragment(frag(6, false)), Err(MediaError::Stopped));
        assert!(asked.elapsed() < Duration::from_millis(50) + STOP_CHECK * 3, "{:?}", asked.elapsed());
        stopper.join().expect("the stopper");

        // A consumer that closes its end frees it at once.
        let (mut em, mut events) = emitter(Backpressure::Block, 4);
        for s in 1..=4 {
            em.fragment(frag(s, s == 1)).expect("room");
        }
        let blocked = std::thread::spawn(move || em.fragment(frag(5, false)));
        std::thread::sleep(Duration::from_millis(50));
        events.close();
        assert_eq!(blocked.join().expect("the worker"), Err(MediaError::Stopped));
        assert_eq!(drain(&mut events).len(), 4, "what was sent can still be read");
        assert_eq!(events.recv_timeout(Duration::ZERO).err(), Some(RecvTimeoutError::Closed));
    }

    #[test]
    fn the_end_waits_a_moment_for_room_then_closes_the_channel() {
        let (mut em, mut events) = emitter(Backpressure::Drop, 4);
        em.fragment(frag(1, true)).expect("sent");
        em.end(Ok(()));
        assert_eq!(drain(&mut events), ["k1", "end Ok(())"]);
        assert_eq!(events.recv_timeout(Duration::ZERO).err(), Some(RecvTimeoutError::Closed), "the sender is gone");

        let (mut em, mut events) = emitter(Backpressure::Drop, 4);
        for s in 1..=4 {
            em.fragment(frag(s, s == 1)).expect("sent");
        }
        let t0 = Instant::now();
        em.end(Err(MediaError::Ended));
        let waited = t0.elapsed();
        assert!(waited >= END_WAIT && waited < END_WAIT * 3, "nobody reads: it gave up after {waited:?}");
        assert_eq!(drain(&mut events).len(), 4, "no end, and the channel is closed");
        assert_eq!(events.recv_timeout(Duration::ZERO).err(), Some(RecvTimeoutError::Closed));
    }
}
