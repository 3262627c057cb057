//! mqtt-video's wire layer: every format the server reads or writes, as pure code over `&[u8]` in any pieces,
//! and the policies that decide from them. No FFmpeg, no tokio, no clock of its own (a `now` is passed in):
//! what the fuzzers and property tests depend on, building in seconds.
//!
//! - Media: [`fmp4`] (boxes in and out), [`h264`], [`hevc`] and [`aac`] headers, [`codec_string`] (RFC 6381), [`keyframe`]
//!   (a GOP's keyframe as an access unit), [`output`] (what a browser is told about a stream).
//! - Transport: [`marker_splice`] (RTP over RTSP/TCP, frames ended at the marker), [`rtmp`] (a publisher's
//!   session), [`mqtt_frames`] (MQTT packets in WebSocket messages), [`plain_http`] (HTTP beside TLS),
//!   [`rtsp`] (a camera's RTSP session for talking back: its messages, SDP, login and the RTP sent to it).
//! - Control: [`protocol`] (the JSON requests and replies, topics, statuses, errors).
//! - Policy: [`policy`] (which URLs may be opened), [`ratelimit`] (requests per page), [`backlog`] (what a
//!   browser that falls behind loses).
//! - [`fuzz_checks`]: what each fuzz target asserts on any bytes, shared with the seed replay test.

pub mod aac;
pub mod backlog;
mod bits;
pub mod codec_string;
pub mod fmp4;
pub mod fuzz_checks;
pub mod h264;
pub mod hevc;
pub mod keyframe;
pub mod marker_splice;
pub mod mqtt_frames;
pub mod output;
pub mod pieces;
pub mod plain_http;
pub mod policy;
pub mod protocol;
pub mod ratelimit;
pub mod rtmp;
pub mod rtsp;
pub mod talk;
