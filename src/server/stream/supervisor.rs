//! When a stream opens its source again, with no clock, no tokio and no MQTT of its own: a state machine
//! that takes what happened to the stream's pipeline runs, with `now`, and says what to do next, as
//! [`super::core::StreamCore`] does for viewers. The stream's task (`run.rs`) reads the clock, feeds it
//! and carries its actions out.
//!
//! A source that has played and drops with a transient error (unreachable, timed out, a live source that
//! closed) is opened again after a backoff (`[retry]`), its viewers told `reconnecting`, until the retries
//! are used up; the count starts again each time the source plays. A failure before the first init
//! segment, or one that is not transient, fails the viewers at once. A pushed source is never given up
//! on: its viewers are told `waiting`, and it waits for its next publisher.

use crate::config::RetryConfig;
use crate::media::MediaError;
use mqtt_video_wire::protocol::{EndReason, ErrorCode, Status};
use std::time::{Duration, Instant};

/// A pushed source whose run lasted less than this waits as long before it takes a publisher again, so
/// that a listener that fails at once (its port taken, say) does not spin.
const PUSHED_PAUSE: Duration = Duration::from_secs(1);

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The time to open the source has come: when the stream starts, and when a wait is over.
    Due,
    /// A publisher is connected to the pushed source.
    PublisherArrived,
    /// The pipeline could not even be started (a forbidden URL, no thread).
    StartFailed(MediaError),
    /// The run's init segment came: the source plays.
    Playing,
    /// The run ended: `Ok` at the end of a file, else why; `Stopped` when the stream was asked to stop.
    Ended(Result<(), MediaError>),
    /// The stream was asked to stop while no pipeline ran (a running one ends with `Stopped` instead).
    Stop,
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start a pipeline run now.
    Start,
    /// Wait for a publisher to connect, then tell [`Event::PublisherArrived`] (or [`Event::Stop`]).
    AwaitPublisher,
    /// Nothing new: the run goes on (or, with no run, only a stop can come).
    Keep,
    /// The source is lost for now: count a restart, tell the viewers `status` (they keep their session),
    /// say that the stream reconnects (`attempt`), and tell [`Event::Due`] at `at` (or [`Event::Stop`]
    /// before).
    Retry {
        /// Retry number, from 1.
        attempt: u32,
        /// `reconnecting`, or for a pushed source `waiting` (boxed: a status is large, and rare here).
        status: Box<Status>,
        /// When to open the source again.
        at: Instant,
        /// Why the source was lost, for the log.
        cause: String,
    },
    /// The stream is over: end its viewers with `reason`.
    End(EndReason),
    /// The stream failed: its viewers get this error, and it is over.
    Fail {
        /// Protocol error code.
        code: ErrorCode,
        /// Message for people.
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not started yet, or waiting to start again.
    Idle,
    /// Waiting for a publisher.
    AwaitingPublisher,
    /// A pipeline runs, since then.
    Running { since: Instant },
    /// Ended or failed: nothing more happens.
    Over,
}

/// The restart and backoff of one stream's source.
#[derive(Debug)]
pub struct Supervisor {
    retry: RetryConfig,
    /// A pushed source: it waits for publishers and is never given up on.
    pushed: bool,
    /// Retries since the source last played.
    attempt: u32,
    /// The source has produced an init segment at least once: only then is a transient failure retried.
    ever_ready: bool,
    state: State,
}

/// The protocol error code of a media error.
pub fn error_code(e: &MediaError) -> ErrorCode {
    ErrorCode::from_code(e.code()).unwrap_or(ErrorCode::InternalError)
}

impl Supervisor {
    /// The supervisor of a stream that has not started yet; `pushed` for a pushed source.
    pub fn new(retry: RetryConfig, pushed: bool) -> Self {
        Self { retry, pushed, attempt: 0, ever_ready: false, state: State::Idle }
    }

    /// Takes what happened at `now`, says what to do.
    pub fn on(&mut self, event: Event, now: Instant) -> Action {
        match (self.state, event) {
            (State::Over, _) => Action::Keep,
            (_, Event::Stop) => self.over(Action::End(EndReason::Stopped)),
            (State::Idle, Event::Due) if self.pushed => {
                self.state = State::AwaitingPublisher;
                Action::AwaitPublisher
            }
            (State::Idle, Event::Due) | (State::AwaitingPublisher, Event::PublisherArrived) => {
                self.state = State::Running { since: now };
                Action::Start
            }
            (State::Running { .. }, Event::StartFailed(e)) => {
                self.over(Action::Fail { code: error_code(&e), message: e.to_string() })
            }
            (State::Running { .. }, Event::Playing) => {
                self.ever_ready = true;
                self.attempt = 0;
                Action::Keep
            }
            (State::Running { since }, Event::Ended(result)) => self.ended(result, since, now),
            _ => Action::Keep,
        }
    }

    fn over(&mut self, action: Action) -> Action {
        self.state = State::Over;
        action
    }

    /// A run that started at `since` ended at `now` with `result`.
    fn ended(&mut self, result: Result<(), MediaError>, since: Instant, now: Instant) -> Action {
        match result {
            Err(MediaError::Stopped) => self.over(Action::End(EndReason::Stopped)),
            // A pushed source's end is its publisher leaving, or sending what we cannot use: either way the
            // endpoint goes on listening and the viewers wait for the next publisher.
            result if self.pushed => {
                let why = match result {
                    Ok(()) | Err(MediaError::Ended) => "the publisher disconnected".to_string(),
                    Err(e) => format!("the publisher's stream failed: {e}"),
                };
                let quick = now.saturating_duration_since(since) < PUSHED_PAUSE;
                let status = Status::Waiting { message: format!("{why}; waiting for it to come back") };
                self.retry_at(status, if quick { now + PUSHED_PAUSE } else { now }, why)
            }
            Ok(()) => self.over(Action::End(EndReason::SourceEnded)),
            Err(e) if e.is_transient() && self.ever_ready => {
                if !self.retry.allows(self.attempt + 1) {
                    let message = format!("gave up after {} retries: {e}", self.attempt);
                    return self.over(Action::Fail { code: ErrorCode::SourceEnded, message });
                }
                let wait = self.retry.backoff(self.attempt + 1);
                let status = Status::Reconnecting { attempt: self.attempt + 1, retry_in_ms: wait.as_millis() as u64 };
                self.retry_at(status, now + wait, e.to_string())
            }
            Err(e) => self.over(Action::Fail { code: error_code(&e), message: e.to_string() }),
        }
    }

    fn retry_at(&mut self, status: Status, at: Instant, cause: String) -> Action {
        self.attempt += 1;
        self.state = State::Idle;
        Action::Retry { attempt: self.attempt, status: Box::new(status), at, cause }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retries enough to be sure that `max_attempts = 0` gives up at no count.
    const FOREVER: u64 = 1000;

    /// An action in a short form that reads like a table: `start`, `retry 2 reconnecting 1000 ms at 11.0 s`,
    /// `fail source_ended: gave up after ...`.
    fn short(action: &Action, t0: Instant) -> String {
        match action {
            Action::Start => "start".into(),
            Action::AwaitPublisher => "await publisher".into(),
            Action::Keep => "keep".into(),
            Action::Retry { attempt, status, at, cause: _ } => {
                let at = at.duration_since(t0).as_secs_f64();
                match &**status {
                    Status::Reconnecting { attempt: told, retry_in_ms } => {
                        assert_eq!(told, attempt, "the status says the attempt");
                        format!("retry {attempt} reconnecting {retry_in_ms} ms at {at:.1} s")
                    }
                    Status::Waiting { message } => format!("retry {attempt} waiting ({message}) at {at:.1} s"),
                    other => panic!("{other:?}"),
                }
            }
            Action::End(reason) => format!("end {}", serde_json::to_value(reason).unwrap().as_str().unwrap()),
            Action::Fail { code, message } => format!("fail {}: {message}", code.as_str()),
        }
    }

    /// Feeds `steps` (event, at seconds after `t0`) and checks each action.
    fn check(mut s: Supervisor, steps: &[(Event, f64, &str)]) {
        let t0 = Instant::now();
        for (i, (event, secs, want)) in steps.iter().enumerate() {
            let action = s.on(event.clone(), t0 + Duration::from_secs_f64(*secs));
            assert_eq!(short(&action, t0), *want, "step {i}: {event:?}");
        }
    }

    fn retry(max_attempts: u32) -> RetryConfig {
        RetryConfig { max_attempts, initial_backoff_ms: 500, max_backoff_ms: 2000 }
    }

    fn timeout() -> Event {
        Event::Ended(Err(MediaError::Timeout("no packet for 5 s".into())))
    }

    #[test]
    fn a_source_that_played_and_drops_is_retried_with_backoff_and_the_count_restarts_when_it_plays() {
        use Event::*;
        let unreachable = || Ended(Err(MediaError::SourceUnreachable("refused".into())));
        check(
            Supervisor::new(retry(10), false),
            &[
                (Due, 0.0, "start"),
                (Playing, 0.2, "keep"),
                (timeout(), 10.0, "retry 1 reconnecting 500 ms at 10.5 s"),
                (Due, 10.5, "start"),
                (unreachable(), 11.0, "retry 2 reconnecting 1000 ms at 12.0 s"),
                (Due, 12.0, "start"),
                (unreachable(), 12.5, "retry 3 reconnecting 2000 ms at 14.5 s"),
                (Due, 14.5, "start"),
                (unreachable(), 15.0, "retry 4 reconnecting 2000 ms at 17.0 s"),
                (Due, 17.0, "start"),
                (Playing, 17.3, "keep"),
                // A live source that closed is transient too; it played since, so the count starts again.
                (Ended(Err(MediaError::Ended)), 60.0, "retry 1 reconnecting 500 ms at 60.5 s"),
                (Due, 60.5, "start"),
            ],
        );
    }

    #[test]
    fn the_retries_are_used_up_and_the_viewers_get_an_error() {
        use Event::*;
        check(
            Supervisor::new(retry(2), false),
            &[
                (Due, 0.0, "start"),
                (Playing, 0.1, "keep"),
                (timeout(), 1.0, "retry 1 reconnecting 500 ms at 1.5 s"),
                (Due, 1.5, "start"),
                (timeout(), 2.0, "retry 2 reconnecting 1000 ms at 3.0 s"),
                (Due, 3.0, "start"),
                (timeout(), 4.0, "fail source_ended: gave up after 2 retries: source timed out: no packet for 5 s"),
                (Due, 5.0, "keep"),
                (Stop, 5.0, "keep"),
            ],
        );
        // 0 never gives up.
        let mut forever = Supervisor::new(retry(0), false);
        let t0 = Instant::now();
        forever.on(Due, t0);
        forever.on(Playing, t0);
        for n in 1..=FOREVER {
            let action = forever.on(timeout(), t0);
            assert!(matches!(action, Action::Retry { attempt, .. } if attempt as u64 == n), "{action:?}");
            forever.on(Due, t0);
        }
    }

    #[test]
    fn what_is_not_retried() {
        use Event::*;
        let played = |end: Event| vec![(Due, 0.0, "start"), (Playing, 0.1, "keep"), (end, 1.0, "")];
        type Steps = Vec<(Event, f64, &'static str)>;
        let table: Vec<(&str, Steps, &str)> = vec![
            ("a file that ended", played(Ended(Ok(()))), "end source_ended"),
            ("a stop", played(Ended(Err(MediaError::Stopped))), "end stopped"),
            (
                "a failure that is not transient",
                played(Ended(Err(MediaError::Unsupported("HEVC".into())))),
                "fail unsupported_source: unsupported source: HEVC",
            ),
            (
                "an overloaded server (the admission refused the source)",
                vec![(Due, 0.0, "start"), (Ended(Err(MediaError::Overloaded("CPU budget".into()))), 1.0, "")],
                "fail overloaded: CPU budget",
            ),
            (
                "a transient failure of a source that never played",
                vec![(Due, 0.0, "start"), (timeout(), 2.0, "")],
                "fail source_timeout: source timed out: no packet for 5 s",
            ),
            (
                "a pipeline that could not start",
                vec![(Due, 0.0, "start"), (StartFailed(MediaError::ForbiddenProtocol("concat".into())), 0.0, "")],
                "fail forbidden_url: protocol 'concat' is not allowed (allowed: rtsp, rtsps, http, https, rtmp, rtmps, srt, udp, rtp, file, builtin)",
            ),
            (
                "a stop while waiting to retry",
                vec![(Due, 0.0, "start"), (Playing, 0.1, "keep"), (timeout(), 1.0, "retry 1 reconnecting 500 ms at 1.5 s"), (Stop, 1.2, "")],
                "end stopped",
            ),
        ];
        for (what, mut steps, want) in table {
            if let Some(last) = steps.last_mut() {
                last.2 = want;
            }
            steps.push((Due, 100.0, "keep"));
            println!("{what}");
            check(Supervisor::new(retry(10), false), &steps);
        }
    }

    #[test]
    fn a_pushed_source_waits_for_its_next_publisher_for_ever() {
        use Event::*;
        let gone = "the publisher disconnected; waiting for it to come back";
        let failed = "the publisher's stream failed: media processing failed: bad SPS; waiting for it to come back";
        check(
            Supervisor::new(retry(1), true),
            &[
                (Due, 0.0, "await publisher"),
                (PublisherArrived, 2.0, "start"),
                (Playing, 2.1, "keep"),
                (Ended(Err(MediaError::Ended)), 30.0, &format!("retry 1 waiting ({gone}) at 30.0 s")),
                (Due, 30.0, "await publisher"),
                (PublisherArrived, 40.0, "start"),
                (
                    Ended(Err(MediaError::Processing("bad SPS".into()))),
                    45.0,
                    &format!("retry 2 waiting ({failed}) at 45.0 s"),
                ),
                (Due, 45.0, "await publisher"),
                (PublisherArrived, 50.0, "start"),
                // A run that ends within a second (a listener whose port is taken) pauses for one.
                (Ended(Ok(())), 50.3, &format!("retry 3 waiting ({gone}) at 51.3 s")),
                (Due, 51.3, "await publisher"),
                (Stop, 60.0, "end stopped"),
                (PublisherArrived, 61.0, "keep"),
            ],
        );
    }

    #[test]
    fn events_out_of_turn_change_nothing() {
        use Event::*;
        check(
            Supervisor::new(retry(10), false),
            &[
                (Playing, 0.0, "keep"),
                (timeout(), 0.0, "keep"),
                (PublisherArrived, 0.0, "keep"),
                (Due, 0.0, "start"),
                (Due, 0.5, "keep"),
                (PublisherArrived, 0.5, "keep"),
                (Playing, 1.0, "keep"),
                (timeout(), 2.0, "retry 1 reconnecting 500 ms at 2.5 s"),
                (Playing, 2.1, "keep"),
                (timeout(), 2.2, "keep"),
                (Due, 2.5, "start"),
            ],
        );
    }
}
