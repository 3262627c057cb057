//! In copy mode the server never decodes, so it cannot see damage the demuxer did not flag. Where a stream
//! (re)starts, at its first keyframe and at the first after damage, that keyframe is decoded once with
//! FFmpeg's strictest error detection: one that does not decode cleanly would show every viewer a broken
//! picture (or break the browser's decoder) for a whole GOP, so the stream waits for the next one instead.
//! A few milliseconds per (re)start; nothing per frame.
//!
//! Copied AAC is decoded frame by frame (about 1 % of a core): a frame cut short by a lost datagram is not
//! always flagged by the demuxer, and it would reach every viewer's decoder.

use crate::media::ffi;
use ffmpeg::{codec, decoder, frame, Dictionary, Packet};
use ffmpeg_next as ffmpeg;

/// A decoder kept to check keyframes.
pub struct KeyframeCheck {
    decoder: decoder::Video,
}

impl KeyframeCheck {
    /// A checker for video of `parameters`, if FFmpeg can decode it.
    pub fn new(parameters: &codec::Parameters) -> Option<Self> {
        let context = codec::context::Context::from_parameters(parameters.clone()).ok()?;
        let codec = decoder::find(parameters.id())?;
        let mut options = Dictionary::new();
        // Any bitstream error is an error, not concealed; one thread, no frame delay.
        options.set("err_detect", "crccheck+bitstream+buffer+explode");
        options.set("threads", "1");
        let decoder = context.decoder().open_as_with(codec, options).ok()?.video().ok()?;
        Some(Self { decoder })
    }

    /// Whether `keyframe` decodes to a picture without a single error.
    pub fn is_clean(&mut self, keyframe: &Packet) -> bool {
        self.decoder.flush();
        let clean = self.decoder.send_packet(keyframe).is_ok() && self.decoder.send_eof().is_ok() && self.drain();
        // Drained to the end: a flush makes it take packets again.
        self.decoder.flush();
        clean
    }

    /// Takes every picture out; true when there was one and none had an error.
    fn drain(&mut self) -> bool {
        let mut picture = frame::Video::empty();
        let mut clean = false;
        loop {
            match self.decoder.receive_frame(&mut picture) {
                Ok(()) => clean = ffi::decode_error_flags(&picture) == 0,
                Err(ffmpeg::Error::Eof) => return clean,
                Err(_) => return false,
            }
        }
    }
}

/// A decoder kept to check every copied audio frame.
pub struct AudioCheck {
    decoder: decoder::Audio,
    frame: frame::Audio,
}

impl AudioCheck {
    /// A checker for audio of `parameters`, if FFmpeg can decode it.
    pub fn new(parameters: &codec::Parameters) -> Option<Self> {
        let context = codec::context::Context::from_parameters(parameters.clone()).ok()?;
        let codec = decoder::find(parameters.id())?;
        let mut options = Dictionary::new();
        options.set("err_detect", "crccheck+bitstream+buffer+explode");
        let decoder = context.decoder().open_as_with(codec, options).ok()?.audio().ok()?;
        Some(Self { decoder, frame: frame::Audio::empty() })
    }

    /// Whether `packet` (as the source gave it, ADTS header included) decodes without an error.
    pub fn is_clean(&mut self, packet: &Packet) -> bool {
        let mut clean = self.decoder.send_packet(packet).is_ok();
        loop {
            match self.decoder.receive_frame(&mut self.frame) {
                Ok(()) => {}
                Err(ffmpeg::Error::Other { errno: ffmpeg::util::error::EAGAIN } | ffmpeg::Error::Eof) => break,
                Err(_) => {
                    clean = false;
                    break;
                }
            }
        }
        if !clean {
            // What it held of the damaged frame goes with it.
            self.decoder.flush();
        }
        clean
    }
}
