//! Decoding and encoding: the video transcoder (libx264) and the audio one (AAC), the renditions that take
//! the frames the stream decodes anyway, and the JPEG snapshot of a stream's keyframe.

pub mod audio;
pub mod rendition;
pub mod snapshot;
pub mod video;
