//! What a browser is told about a stream's output: its MIME type and size, and its renditions. The media
//! layer fills these in from the real init segment; the protocol carries them in describe replies.

use serde::Serialize;

/// What happens to one track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackMode {
    /// Remuxed as it is.
    Copy,
    /// Decoded and re-encoded.
    Transcode,
}

/// Facts about the output stream that a player needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputInfo {
    /// Exact MIME type with RFC 6381 codecs, from the init segment.
    #[serde(rename = "mimeCodec")]
    pub mime_codec: String,
    /// Video width.
    pub width: u32,
    /// Video height.
    pub height: u32,
    /// Nominal frame rate.
    pub fps: f64,
    /// Whether there is an audio track.
    pub has_audio: bool,
    /// Video copied or transcoded.
    pub video: TrackMode,
    /// Audio copied or transcoded (none without audio).
    pub audio: Option<TrackMode>,
}

/// A rendition as a player chooses it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RenditionInfo {
    /// Its name (`main` is the stream's own output).
    pub name: String,
    /// Exact MIME type with RFC 6381 codecs.
    #[serde(rename = "mimeCodec")]
    pub mime_codec: String,
    /// Video width.
    pub width: u32,
    /// Video height.
    pub height: u32,
    /// Nominal frame rate.
    pub fps: f64,
    /// Its video bitrate in kbit/s: the configured one, else measured (absent until known).
    pub bitrate_kbps: Option<u32>,
}
