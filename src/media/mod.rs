//! Everything that touches FFmpeg, behind a small safe API: open a source, copy or transcode, mux
//! fragmented MP4 in memory, hand out the init segment and fragments from a worker thread.
//!
//! The folders follow a packet through:
//!
//! - [`source`]: open a URL (the allow-list's protocols, options, the stall watchdog, RTSP's transports and
//!   marker relay) and read until its parameters are known;
//! - [`copy`]: the source's packets passed on as they are, checked and retimed;
//! - [`encode`]: decode and encode (H.264, AAC), the renditions, and JPEG snapshots;
//! - [`mux`]: fragmented MP4 in memory, fragments numbered and dated;
//! - [`pipeline`]: the worker thread that runs the path for one source, and its handle;
//! - [`load`]: how far behind real time the pipeline is, what it gives up then, and whose CPU it is.
//!
//! Beside them, shared by the path: its settings ([`config`]), decisions ([`plan`]), errors ([`error`]),
//! events out ([`events`], and the channel they cross), time bookkeeping ([`timing`]), and the FFmpeg calls
//! ffmpeg-next does not wrap (`ffi.rs`, the only `unsafe` code).

pub mod channel;
pub mod config;
pub mod copy;
mod emitter;
pub mod encode;
pub mod error;
pub mod events;
mod ffi;
pub mod load;
pub mod mux;
pub mod pipeline;
pub mod plan;
pub mod source;
pub mod timing;

pub use config::{Mode, PipelineConfig};
pub use error::MediaError;
pub use events::{Fragment, InitSegment, OutputInfo, PipelineEvent, SourceInfo};
pub use pipeline::Pipeline;

/// Process-wide set-up for long-running use of FFmpeg; call once at start, before any pipeline.
pub fn init_process() {
    ffi::tune_allocator();
}

/// A log level name FFmpeg does not have.
#[derive(Debug, thiserror::Error)]
#[error("unknown FFmpeg log level '{0}' (quiet, panic, fatal, error, warning, info, verbose, debug, trace)")]
pub struct UnknownLogLevel(String);

/// Sets FFmpeg's own (global) log level by name: quiet, panic, fatal, error, warning, info, verbose, debug, trace.
pub fn set_ffmpeg_log_level(name: &str) -> Result<(), UnknownLogLevel> {
    use ffmpeg_next::util::log::{self, Level};
    let level = match name {
        "quiet" => Level::Quiet,
        "panic" => Level::Panic,
        "fatal" => Level::Fatal,
        "error" => Level::Error,
        "warning" => Level::Warning,
        "info" => Level::Info,
        "verbose" => Level::Verbose,
        "debug" => Level::Debug,
        "trace" => Level::Trace,
        other => return Err(UnknownLogLevel(other.to_string())),
    };
    log::set_level(level);
    Ok(())
}
