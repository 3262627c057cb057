//! A still picture of a stream: its latest keyframe (as the server holds it for late joiners) decoded on one
//! thread, scaled, and encoded as JPEG by libavcodec. One frame decoded per snapshot, whether the stream is
//! copied or transcoded; nothing runs between snapshots.

use super::video::output_size;
use crate::media::error::{processing, MediaError};
use crate::media::ffi;
use ffmpeg::codec::{self, threading};
use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg::{frame, Packet};
use ffmpeg_next as ffmpeg;
use mqtt_video_wire::keyframe::{annex_b_keyframe, Keyframe, VideoCodec};

/// FFmpeg's lambda per quantiser step (`FF_QP2LAMBDA`).
const QP2LAMBDA: i32 = 118;

/// Size and quality of snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegSettings {
    /// Largest width; larger pictures are scaled down keeping their aspect ratio. 0: the stream's own.
    pub max_width: u32,
    /// Largest height. 0: the stream's own.
    pub max_height: u32,
    /// JPEG quality from 1 (smallest) to 100 (best); 90 is FFmpeg's `-q:v 5`.
    pub quality: u8,
}

impl Default for JpegSettings {
    fn default() -> Self {
        Self { max_width: 0, max_height: 0, quality: 90 }
    }
}

impl JpegSettings {
    /// The MJPEG quantiser for the quality: 100 gives 2 (FFmpeg's best), 1 gives 31.
    pub fn qscale(&self) -> i32 {
        let quality = i32::from(self.quality.clamp(1, 100));
        2 + ((100 - quality) * 29 + 49) / 99
    }
}

/// A JPEG picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jpeg {
    /// The JPEG file's bytes.
    pub bytes: Vec<u8>,
    /// Its width in pixels.
    pub width: u32,
    /// Its height in pixels.
    pub height: u32,
}

/// Decodes the keyframe that starts `fragment` (with the parameter sets of `init`) and encodes it as JPEG.
pub fn jpeg_of_keyframe(init: &[u8], fragment: &[u8], settings: &JpegSettings) -> Result<Jpeg, MediaError> {
    let keyframe = annex_b_keyframe(init, fragment).map_err(|e| MediaError::Processing(format!("snapshot: {e}")))?;
    let picture = decode(&keyframe)?;
    encode(&picture, settings)
}

fn decode(keyframe: &Keyframe) -> Result<frame::Video, MediaError> {
    let (id, name) = match keyframe.codec {
        VideoCodec::H264 => (codec::Id::H264, "H.264"),
        VideoCodec::Hevc => (codec::Id::HEVC, "HEVC"),
    };
    let found = codec::decoder::find(id).ok_or_else(|| MediaError::Processing(format!("no {name} decoder")))?;
    let mut context = codec::context::Context::new_with_codec(found);
    // One thread: a snapshot never takes more than one core, whatever the picture's size.
    context.set_threading(threading::Config { kind: threading::Type::Slice, count: 1, ..Default::default() });
    let opening = format!("snapshot: opening the {name} decoder");
    let mut decoder = context.decoder().video().map_err(|e| MediaError::Processing(format!("{opening}: {e}")))?;
    let access_unit = &keyframe.access_unit;
    decoder.send_packet(&Packet::copy(access_unit)).map_err(processing("snapshot: decoding the keyframe"))?;
    decoder.send_eof().map_err(processing("snapshot: decoding the keyframe"))?;
    let mut picture = frame::Video::empty();
    decoder.receive_frame(&mut picture).map_err(processing("snapshot: the keyframe gave no picture"))?;
    Ok(picture)
}

fn encode(picture: &frame::Video, settings: &JpegSettings) -> Result<Jpeg, MediaError> {
    let (width, height) = output_size(picture.width(), picture.height(), settings.max_width, settings.max_height);
    // MJPEG wants full-range 4:2:0, which FFmpeg 5.1 still names YUVJ420P.
    let mut scaler = scaling::Context::get(
        picture.format(),
        picture.width(),
        picture.height(),
        Pixel::YUVJ420P,
        width,
        height,
        scaling::Flags::BICUBIC,
    )
    .map_err(processing("snapshot: scaling"))?;
    let mut scaled = frame::Video::empty();
    scaler.run(picture, &mut scaled).map_err(processing("snapshot: scaling"))?;
    let mjpeg =
        codec::encoder::find(codec::Id::MJPEG).ok_or_else(|| MediaError::Processing("no MJPEG encoder".into()))?;
    let mut encoder = codec::context::Context::new_with_codec(mjpeg)
        .encoder()
        .video()
        .map_err(processing("snapshot: the MJPEG encoder"))?;
    encoder.set_width(width);
    encoder.set_height(height);
    encoder.set_format(Pixel::YUVJ420P);
    encoder.set_time_base((1, 25));
    encoder.set_flags(codec::Flags::QSCALE);
    let lambda = settings.qscale() * QP2LAMBDA;
    encoder.set_global_quality(lambda);
    let mut encoder = encoder.open_as(mjpeg).map_err(processing("snapshot: opening the MJPEG encoder"))?;
    ffi::set_frame_quality(&mut scaled, lambda);
    scaled.set_pts(Some(0));
    encoder.send_frame(&scaled).map_err(processing("snapshot: encoding"))?;
    encoder.send_eof().map_err(processing("snapshot: encoding"))?;
    let mut packet = Packet::empty();
    encoder.receive_packet(&mut packet).map_err(processing("snapshot: encoding"))?;
    let bytes = packet.data().map(<[u8]>::to_vec).unwrap_or_default();
    Ok(Jpeg { bytes, width, height })
}

/// The width and height a JPEG's frame header (SOF0-SOF15 but DHT, JPG and DAC) declares. Pure.
pub fn jpeg_size(jpeg: &[u8]) -> Option<(u16, u16)> {
    if jpeg.get(..2)? != [0xff, 0xd8] {
        return None;
    }
    let mut i = 2;
    while i + 4 <= jpeg.len() {
        if jpeg[i] != 0xff {
            return None;
        }
        let marker = jpeg[i + 1];
        let len = usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
        let is_sof = (0xc0..=0xcf).contains(&marker) && !matches!(marker, 0xc4 | 0xc8 | 0xcc);
        if is_sof {
            let h = u16::from_be_bytes([*jpeg.get(i + 5)?, *jpeg.get(i + 6)?]);
            let w = u16::from_be_bytes([*jpeg.get(i + 7)?, *jpeg.get(i + 8)?]);
            return Some((w, h));
        }
        i += 2 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_maps_to_the_mjpeg_quantiser() {
        let q = |quality| JpegSettings { quality, ..Default::default() }.qscale();
        assert_eq!((q(100), q(90), q(1), q(0)), (2, 5, 31, 31));
        assert!((1..100).all(|v| q(v) >= q(v + 1)), "higher quality never quantises coarser");
    }

    #[test]
    fn reads_the_size_from_a_frame_header() {
        // SOI, an APP0 of 4 bytes, SOF0 with height 360 and width 640.
        let jpeg = [0xff, 0xd8, 0xff, 0xe0, 0, 4, 0, 0, 0xff, 0xc0, 0, 11, 8, 1, 0x68, 2, 0x80, 3];
        assert_eq!(jpeg_size(&jpeg), Some((640, 360)));
        assert_eq!(jpeg_size(&jpeg[..12]), None, "truncated");
        assert_eq!(jpeg_size(b"\x89PNG"), None);
        assert_eq!(jpeg_size(&[]), None);
    }
}
