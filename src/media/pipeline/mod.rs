//! One media pipeline on its own OS thread, and its handle: start it, read its events, stop it, wait for it.
//! The thread's work is apart, each with one job:
//!
//! - `worker.rs`: the loop over the source: read, pace, load control, looping, the end;
//! - `analyse.rs`: the source's facts and the plan (copy or transcode) decided from them;
//! - `session.rs`: one run's stages (copy or transcode, renditions) and its output (the muxer, the events);
//! - `timeline.rs`: where source time becomes output time.

mod analyse;
mod session;
mod timeline;
mod worker;

use crate::media::channel::Events;
use crate::media::config::PipelineConfig;
use crate::media::emitter::Emitter;
use crate::media::encode::rendition::RenditionControl;
use crate::media::error::MediaError;
use crate::media::events::{PipelineStats, SourceInfo};
use crate::media::load::threads;
use crate::media::source;
use ffmpeg_next as ffmpeg;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Asked once a pipeline knows what its source needs (the source's facts, and the pipeline's number, see
/// `load/threads.rs`), before any decoding: `Err` says why the server cannot take it on, and the pipeline ends
/// with [`MediaError::Overloaded`].
pub type Gate = Arc<dyn Fn(&SourceInfo, u64) -> Result<(), String> + Send + Sync>;

/// How a run of a stream's pipeline starts.
pub struct Start {
    /// Output media time of its first frame (µs): a restarted source continues its viewers' timeline.
    pub offset_us: i64,
    /// Number of its first fragment (`mfhd`).
    pub first_sequence: u64,
    /// Asked whether the work the source needs may start.
    pub gate: Option<Gate>,
    /// One per configured rendition: whether it is watched, and its numbering.
    pub renditions: Vec<Arc<RenditionControl>>,
}

impl Default for Start {
    fn default() -> Self {
        Self { offset_us: 0, first_sequence: 1, gate: None, renditions: Vec::new() }
    }
}

/// A running pipeline. Dropping it stops the worker and waits for it.
pub struct Pipeline {
    events: Events,
    stop: Arc<AtomicBool>,
    stats: Arc<PipelineStats>,
    thread: Option<JoinHandle<()>>,
}

impl Pipeline {
    /// Starts a worker thread for `url`. A URL with a forbidden protocol fails here, before any I/O.
    pub fn start(url: &str, config: PipelineConfig) -> Result<Self, MediaError> {
        Self::start_at(url, config, 0, 1)
    }

    /// Like [`Pipeline::start`], with output media time starting at `offset_us` instead of 0 and fragments
    /// numbered from `first_sequence` (in their `mfhd`): a restarted source continues the timeline and the
    /// numbering its viewers already play.
    pub fn start_at(
        url: &str,
        config: PipelineConfig,
        offset_us: i64,
        first_sequence: u64,
    ) -> Result<Self, MediaError> {
        Self::start_with(url, config, Start { offset_us, first_sequence, ..Start::default() })
    }

    /// Like [`Pipeline::start_at`], with everything a server's stream gives each run of its source.
    pub fn start_with(url: &str, config: PipelineConfig, start: Start) -> Result<Self, MediaError> {
        let Start { offset_us, first_sequence, gate, renditions } = start;
        source::classify_for(url, &config.source)?;
        ffmpeg::init().map_err(|e| MediaError::Processing(format!("initialising FFmpeg: {e}")))?;
        let (tx, events) = Events::channel(config.channel_capacity.max(4));
        let stop = Arc::new(AtomicBool::new(false));
        let id = threads::next_id();
        let stats = Arc::new(PipelineStats { id, ..PipelineStats::default() });
        let mut emitter =
            Emitter::new(tx, config.backpressure, config.renditions.len(), Arc::clone(&stop), Arc::clone(&stats));
        let url = url.to_string();
        // Thread names and log fields are visible to anyone reading logs or `ps`: never the password.
        let shown = if config.source.listen {
            // A listening URL carries the stream key in its path: show only where it listens.
            url.split('/').take(3).collect::<Vec<_>>().join("/")
        } else {
            mqtt_video_wire::policy::redact(&url)
        };
        // Tagged, so that the threads FFmpeg starts from it count as this pipeline's CPU.
        let name = threads::thread_name(id, &shown);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let span = tracing::info_span!("pipeline", url = %shown);
                let _enter = span.enter();
                // The worker asks the server's gate, if any, without knowing it: its number is this pipeline's.
                let admit = move |info: &SourceInfo| match &gate {
                    Some(gate) => gate(info, id).map_err(MediaError::Overloaded),
                    None => Ok(()),
                };
                let result = worker::run(&url, &config, (offset_us, first_sequence), admit, &renditions, &mut emitter);
                match &result {
                    Ok(()) => tracing::info!("source finished"),
                    Err(MediaError::Stopped) => tracing::debug!("pipeline stopped"),
                    Err(e) => tracing::warn!(error = %e, code = e.code(), "pipeline ended"),
                }
                // Everything the run held is freed by now; the end closes the channel, the last thing the
                // thread does that its consumer can see (`Pipeline::finish` waits for it).
                emitter.end(result);
            })
            .map_err(|e| MediaError::Processing(format!("spawning the media thread: {e}")))?;
        Ok(Self { events, stop, stats, thread: Some(thread) })
    }

    /// The events, in order; they end after `End`, once the worker has freed everything.
    pub fn events(&mut self) -> &mut Events {
        &mut self.events
    }

    /// The live counters.
    pub fn stats(&self) -> &Arc<PipelineStats> {
        &self.stats
    }

    /// Asks the worker to stop; blocking FFmpeg I/O is interrupted at once.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// A handle that stops this pipeline from another thread or task.
    pub fn stopper(&self) -> Stopper {
        Stopper(Arc::clone(&self.stop))
    }

    /// Stops the worker and waits until it has freed everything, from a thread.
    pub fn join(mut self) {
        self.close_and_join();
    }

    /// Stops the worker and waits until it has freed everything, from a task: the events that still come are
    /// read and dropped until they end, which is when the worker has freed everything and has only its own
    /// exit left; the join that follows waits for that alone, never for FFmpeg.
    pub async fn finish(mut self) {
        self.stop();
        while self.events.recv().await.is_some() {}
        self.close_and_join();
    }

    fn close_and_join(&mut self) {
        self.stop();
        // A worker waiting for room in the channel gives up at once rather than at its next stop check.
        self.events.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.close_and_join();
    }
}

/// Stops a pipeline from anywhere; cheap to clone.
#[derive(Debug, Clone)]
pub struct Stopper(Arc<AtomicBool>);

impl Stopper {
    /// Asks the pipeline to stop.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
