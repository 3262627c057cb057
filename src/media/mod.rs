//! Everything that touches FFmpeg, behind a small safe API: open a source, copy or transcode, mux
//! fragmented MP4 in memory, hand out the init segment and fragments from a worker thread.

pub mod audio;
pub mod channel;
pub mod config;
mod emitter;
pub mod error;
pub mod events;
mod ffi;
pub mod fragments;
pub mod keycheck;
pub mod lag;
pub mod load;
pub mod mux;
pub mod pipeline;
pub mod plan;
pub mod ready;
pub mod rendition;
pub mod rtsp_relay;
pub mod rtsp_transport;
pub mod shedding;
pub mod snapshot;
pub mod source;
pub mod threads;
pub mod timing;
pub mod video;

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
