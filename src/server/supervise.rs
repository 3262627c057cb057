//! Long-lived tasks, watched: the server's own (the broker session, the gateway, ingest listeners, sweeps,
//! stats) end only with the server, so one that ends or panics stops it with an error that names it, for a
//! service manager to restart; a stream's task that panics is cleaned up after (`Hub::start_stream`).

use std::collections::HashMap;
use std::future::Future;
use tokio::task::{Id, JoinError, JoinSet};

/// The server's long-lived tasks.
#[derive(Default)]
pub struct Tasks {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

impl Tasks {
    /// Runs `task` under `name`.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Waits until a task ends: its name, and the panic's message if it panicked. Pending for ever when there
    /// are no tasks.
    pub async fn ended(&mut self) -> (&'static str, Option<String>) {
        match self.set.join_next_with_id().await {
            Some(Ok((id, ()))) => (self.names.remove(&id).unwrap_or("a task"), None),
            Some(Err(e)) => (self.names.remove(&e.id()).unwrap_or("a task"), Some(panic_message(e))),
            None => std::future::pending().await,
        }
    }
}

/// What a task that did not finish left to say: its panic's message, or that it was cancelled.
pub fn panic_message(e: JoinError) -> String {
    if !e.is_panic() {
        return "cancelled".into();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// In debug builds only (the tests' binary): makes the stream of a URL containing
/// `MQTT_VIDEO_TEST_PANIC_URL` panic at its first fragment, so that the supervision can be tested.
pub fn fault_point(url: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("MQTT_VIDEO_TEST_PANIC_URL").is_ok_and(|marker| !marker.is_empty() && url.contains(&marker)) {
        panic!("test fault: MQTT_VIDEO_TEST_PANIC_URL matched this stream");
    }
    #[cfg(not(debug_assertions))]
    let _ = url;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_or_panics_is_named() {
        let mut tasks = Tasks::default();
        tasks.spawn("quiet", std::future::pending());
        tasks.spawn("short", async {});
        assert_eq!(tasks.ended().await, ("short", None));
        tasks.spawn("broken", async { panic!("boom") });
        assert_eq!(tasks.ended().await, ("broken", Some("boom".to_string())));
    }
}
