//! The media pipeline's typed errors, worded for the person who asked for the stream.

use mqtt_video_wire::codec_string::CodecStringError;
use mqtt_video_wire::fmp4::Fmp4Error;
use thiserror::Error;

/// Everything that can stop a media pipeline.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MediaError {
    /// The URL names a protocol we never open (e.g. `concat:`, `subfile:`, a filter graph).
    #[error(
        "protocol '{0}' is not allowed (allowed: rtsp, rtsps, http, https, rtmp, rtmps, srt, udp, rtp, file, builtin)"
    )]
    ForbiddenProtocol(String),
    /// The URL cannot be parsed or names nothing.
    #[error("invalid source URL: {0}")]
    InvalidUrl(String),
    /// The source could not be reached: refused, not found, DNS, HTTP error.
    #[error("source unreachable: {0}")]
    SourceUnreachable(String),
    /// The source did not answer (connect) or stopped sending (stall) in time.
    #[error("source timed out: {0}")]
    Timeout(String),
    /// The source was reached but holds nothing we can stream.
    #[error("unsupported source: {0}")]
    Unsupported(String),
    /// The source ended (end of file, or the server closed the stream).
    #[error("source ended")]
    Ended,
    /// The pipeline was asked to stop.
    #[error("stopped")]
    Stopped,
    /// The server cannot take on the work this source needs now (its CPU budget is used); the message says
    /// why.
    #[error("{0}")]
    Overloaded(String),
    /// A decoder, filter, encoder or the muxer failed.
    #[error("media processing failed: {0}")]
    Processing(String),
    /// The muxer's output was not the fragmented MP4 we expect.
    #[error("fragmented MP4 output is invalid: {0}")]
    Fmp4(#[from] Fmp4Error),
    /// No browser codec string could be derived from the init segment.
    #[error("cannot describe the stream for browsers: {0}")]
    CodecString(#[from] CodecStringError),
}

impl MediaError {
    /// A stable machine-readable code, used in protocol error replies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ForbiddenProtocol(_) => "forbidden_url",
            Self::InvalidUrl(_) => "bad_request",
            Self::SourceUnreachable(_) => "source_unreachable",
            Self::Timeout(_) => "source_timeout",
            Self::Unsupported(_) => "unsupported_source",
            Self::Ended => "source_ended",
            Self::Stopped => "stopped",
            Self::Overloaded(_) => "overloaded",
            Self::Processing(_) | Self::Fmp4(_) | Self::CodecString(_) => "internal_error",
        }
    }

    /// Whether retrying the same source later could succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::SourceUnreachable(_) | Self::Timeout(_) | Self::Ended)
    }
}

/// The outcome of a codec's receive call (`receive_frame`, `receive_packet`): `Ok(true)` when it produced
/// output, `Ok(false)` when it needs more input (EAGAIN) or is drained (EOF), else the error.
pub(crate) fn received(result: Result<(), ffmpeg_next::Error>) -> Result<bool, ffmpeg_next::Error> {
    match result {
        Ok(()) => Ok(true),
        Err(ffmpeg_next::Error::Other { errno: ffmpeg_next::error::EAGAIN }) | Err(ffmpeg_next::Error::Eof) => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Wraps an FFmpeg failure in a processing error that says which step failed.
pub(crate) fn processing(step: &str) -> impl Fn(ffmpeg_next::Error) -> MediaError + '_ {
    move |e| MediaError::Processing(format!("{step}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_error_codes_map() {
        let errors = [
            MediaError::ForbiddenProtocol("concat".into()),
            MediaError::InvalidUrl("x".into()),
            MediaError::SourceUnreachable("x".into()),
            MediaError::Timeout("x".into()),
            MediaError::Unsupported("x".into()),
            MediaError::Ended,
            MediaError::Processing("x".into()),
            MediaError::Overloaded("x".into()),
        ];
        for e in errors {
            assert!(mqtt_video_wire::protocol::ErrorCode::from_code(e.code()).is_some(), "{}", e.code());
        }
    }
}
