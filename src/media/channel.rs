//! The pipeline's event channel, as its consumers see it: tokio's bounded mpsc channel, which the worker
//! thread sends into and which a server's stream awaits from its task, so no thread relays between them.
//! A thread can read it too (the probe, tests, benchmarks): tokio's own `blocking_recv` and
//! `blocking_send` cannot give up at a deadline or when a stop is asked, so `wait` polls the channel's
//! future on the calling thread and parks it between polls.

use super::events::PipelineEvent;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often a wait that ends on a stop flag looks at it: a stop is noticed within this.
pub(crate) const STOP_CHECK: Duration = Duration::from_millis(100);

/// When a [`wait`] gives up.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Until<'a> {
    /// Never: only the channel can end it.
    Ready,
    /// At this time.
    Deadline(Instant),
    /// Once this flag is set (looked at every [`STOP_CHECK`]).
    Stopped(&'a AtomicBool),
}

/// Wakes the thread that waits.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `poll` on this thread until it is ready (`Some`) or `until` gives up (`None`). Whatever `poll`
/// waits on wakes the thread, so an answer comes at once, not at the next check.
pub(crate) fn wait<T>(mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>, until: Until<'_>) -> Option<T> {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        // A stop is looked at before anything is sent (a stopped worker sends nothing more); a deadline
        // after the first poll (what is there already is taken, however short the timeout).
        if let Until::Stopped(flag) = until {
            if flag.load(Ordering::Relaxed) {
                return None;
            }
        }
        if let Poll::Ready(value) = poll(&mut cx) {
            return Some(value);
        }
        // A wake between the poll and here leaves a token: the park returns at once.
        match until {
            Until::Ready => std::thread::park(),
            Until::Deadline(at) => {
                let left = at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                std::thread::park_timeout(left);
            }
            Until::Stopped(_) => std::thread::park_timeout(STOP_CHECK),
        }
    }
}

/// Why [`Events::recv_timeout`] has no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvTimeoutError {
    /// None came within the time given.
    #[error("no pipeline event within the time given")]
    Timeout,
    /// The pipeline's worker is done and every event was read.
    #[error("the pipeline's events ended")]
    Closed,
}

/// A pipeline's events, in order; they end (`None`) once its worker is done and has freed everything.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<PipelineEvent>,
}

impl Events {
    /// A bounded channel of `capacity` events: the worker's end and this one.
    pub(crate) fn channel(capacity: usize) -> (mpsc::Sender<PipelineEvent>, Self) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, Self { rx })
    }

    /// The next event, from a task; `None` once they ended. Cancel-safe (`tokio::select!`).
    pub async fn recv(&mut self) -> Option<PipelineEvent> {
        self.rx.recv().await
    }

    /// The next event, from a thread, waiting `timeout` at most.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<PipelineEvent, RecvTimeoutError> {
        let rx = &mut self.rx;
        match wait(|cx| rx.poll_recv(cx), Until::Deadline(Instant::now() + timeout)) {
            Some(Some(event)) => Ok(event),
            Some(None) => Err(RecvTimeoutError::Closed),
            None => Err(RecvTimeoutError::Timeout),
        }
    }

    /// The events from a thread, each waited for, until they end.
    pub fn iter(&mut self) -> impl Iterator<Item = PipelineEvent> + '_ {
        std::iter::from_fn(move || {
            let rx = &mut self.rx;
            wait(|cx| rx.poll_recv(cx), Until::Ready).flatten()
        })
    }

    /// Takes no more events: a worker waiting for room gives up at once. Those already sent can still be read.
    pub(crate) fn close(&mut self) {
        self.rx.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::MediaError;

    fn end() -> PipelineEvent {
        PipelineEvent::End(Err(MediaError::Ended))
    }

    #[test]
    fn a_thread_waits_for_an_event_until_its_deadline() {
        let (tx, mut events) = Events::channel(4);
        let t0 = Instant::now();
        assert_eq!(events.recv_timeout(Duration::from_millis(50)).err(), Some(RecvTimeoutError::Timeout));
        assert!(t0.elapsed() >= Duration::from_millis(50));
        // Sent from another thread while this one waits: it wakes at once, not at the deadline.
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            tx.blocking_send(end()).expect("the receiver is there");
        });
        let t1 = Instant::now();
        assert!(matches!(events.recv_timeout(Duration::from_secs(10)), Ok(PipelineEvent::End(_))));
        assert!(t1.elapsed() < Duration::from_secs(5), "woken by the send: {:?}", t1.elapsed());
        sender.join().expect("the sender");
        assert_eq!(events.recv_timeout(Duration::from_secs(10)).err(), Some(RecvTimeoutError::Closed));
        assert_eq!(events.iter().count(), 0, "closed: the iteration ends");
    }

    #[test]
    fn a_wait_on_a_stop_flag_ends_when_it_is_set() {
        let stop = Arc::new(AtomicBool::new(false));
        let setter = Arc::clone(&stop);
        let t0 = Instant::now();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            setter.store(true, Ordering::Relaxed);
        });
        assert_eq!(wait(|_| Poll::<()>::Pending, Until::Stopped(&stop)), None);
        assert!(t0.elapsed() < STOP_CHECK * 3, "{:?}", t0.elapsed());
        assert_eq!(wait(|_| Poll::Ready(7), Until::Stopped(&AtomicBool::new(false))), Some(7));
    }
}
