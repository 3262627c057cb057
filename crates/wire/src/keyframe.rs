//! The first video frame of a keyframe fragment as an Annex B access unit, H.264 or HEVC (the parameter sets
//! from the init segment's `avcC` or `hvcC`, then the frame's NAL units), ready for a decoder: what a snapshot
//! decodes, and nothing more. Pure, over the bytes the server already holds for late joiners (init segment,
//! GOP cache).

use crate::codec_string::{self, CodecStringError};
use crate::fmp4::{self, Fmp4Error, Reader, TrackKind};
use thiserror::Error;

/// Why a fragment yields no decodable keyframe.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KeyframeError {
    /// The init segment or fragment is not the fMP4 expected.
    #[error(transparent)]
    Fmp4(#[from] Fmp4Error),
    /// The video track's sample entry holds no usable `avcC`.
    #[error(transparent)]
    CodecString(#[from] CodecStringError),
    /// The init segment has no video track.
    #[error("the stream has no video track")]
    NoVideo,
    /// A video track of a codec other than H.264 and HEVC.
    #[error("no keyframe decoding for sample entry '{0}'")]
    UnknownCodec(String),
    /// The fragment has no video, or its first video sample is not a keyframe.
    #[error("the fragment does not start with a video keyframe")]
    NotAKeyframe,
    /// The `avcC` or `hvcC` record or the sample's NAL lengths do not add up.
    #[error("malformed video data: {0}")]
    Malformed(&'static str),
}

/// The codecs whose keyframes can be made Annex B access units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// H.264/AVC (`avc1`, `avc3`).
    H264,
    /// H.265/HEVC (`hvc1`, `hev1`).
    Hevc,
}

/// A keyframe as a decoder takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyframe {
    /// Which decoder.
    pub codec: VideoCodec,
    /// The parameter sets, then the frame's NAL units, each after a start code.
    pub access_unit: Vec<u8>,
}

const START_CODE: [u8; 4] = [0, 0, 0, 1];

/// Parameter sets and NAL length size of an `avcC` or `hvcC` payload.
struct AvcConfig<'a> {
    length_size: usize,
    parameter_sets: Vec<&'a [u8]>,
}

fn parse_avcc(avcc: &[u8]) -> Result<AvcConfig<'_>, KeyframeError> {
    let malformed = |_| KeyframeError::Malformed("avcC record");
    let mut r = Reader::new(avcc, "avcC");
    if r.u8().map_err(malformed)? != 1 {
        return Err(KeyframeError::Malformed("avcC version"));
    }
    r.skip(3).map_err(malformed)?; // profile, compatibility, level
    let length_size = usize::from(r.u8().map_err(malformed)? & 0x03) + 1;
    let mut parameter_sets = Vec::new();
    let sps_count = r.u8().map_err(malformed)? & 0x1f;
    for _ in 0..sps_count {
        let len = u16::from_be_bytes([r.u8().map_err(malformed)?, r.u8().map_err(malformed)?]);
        parameter_sets.push(r.bytes(usize::from(len)).map_err(malformed)?);
    }
    let pps_count = r.u8().map_err(malformed)?;
    for _ in 0..pps_count {
        let len = u16::from_be_bytes([r.u8().map_err(malformed)?, r.u8().map_err(malformed)?]);
        parameter_sets.push(r.bytes(usize::from(len)).map_err(malformed)?);
    }
    if parameter_sets.is_empty() {
        return Err(KeyframeError::Malformed("avcC without parameter sets"));
    }
    Ok(AvcConfig { length_size, parameter_sets })
}

/// The fragment's first video sample: its bytes (length-prefixed NAL units), if it is a keyframe.
fn first_video_sample<'a>(fragment: &'a [u8], video_track: &fmp4::TrackInfo) -> Result<&'a [u8], KeyframeError> {
    let mut offset = 0usize;
    for item in fmp4::boxes(fragment) {
        let (header, payload) = item?;
        if &header.kind == b"moof" {
            let tracks = std::slice::from_ref(video_track);
            let run = fmp4::parse_moof(payload, tracks)?
                .into_iter()
                .find(|r| r.track_id == video_track.track_id && r.sample_count > 0)
                .ok_or(KeyframeError::NotAKeyframe)?;
            if !run.starts_with_sync {
                return Err(KeyframeError::NotAKeyframe);
            }
            let (Some(data_offset), Some(size), true) = (run.data_offset, run.first_sample_size, run.base_is_moof)
            else {
                return Err(KeyframeError::Malformed("a video run without a moof-relative data offset and size"));
            };
            let start = usize::try_from(data_offset).ok().and_then(|d| offset.checked_add(d));
            let end = start.and_then(|s| s.checked_add(usize::try_from(size).ok()?));
            return match (start, end) {
                (Some(start), Some(end)) if end <= fragment.len() => Ok(&fragment[start..end]),
                _ => Err(KeyframeError::Malformed("the video sample lies outside the fragment")),
            };
        }
        // total_len <= MAX_BOX_SIZE: it fits in usize.
        offset += header.total_len as usize;
    }
    Err(KeyframeError::NotAKeyframe)
}

/// The parameter sets and NAL length size of an `hvcC` payload.
fn parse_hvcc(hvcc: &[u8]) -> Result<AvcConfig<'_>, KeyframeError> {
    let record = crate::hevc::parse_hvcc(hvcc).map_err(|_| KeyframeError::Malformed("hvcC record"))?;
    if record.nals.is_empty() {
        return Err(KeyframeError::Malformed("hvcC without parameter sets"));
    }
    Ok(AvcConfig { length_size: usize::from(record.nal_length_size), parameter_sets: record.nals })
}

/// The keyframe that starts `fragment` as an Annex B access unit, with the parameter sets of `init`.
pub fn annex_b_keyframe(init: &[u8], fragment: &[u8]) -> Result<Keyframe, KeyframeError> {
    let tracks = fmp4::parse_init(init)?;
    let video = tracks.iter().find(|t| t.kind == TrackKind::Video).ok_or(KeyframeError::NoVideo)?;
    let kind = video.sample_entry.get(4..8).unwrap_or_default();
    let (codec, config) = match kind {
        b"avc1" | b"avc3" => (VideoCodec::H264, parse_avcc(codec_string::avcc_of(&video.sample_entry)?)?),
        b"hvc1" | b"hev1" => (VideoCodec::Hevc, parse_hvcc(codec_string::hvcc_of(&video.sample_entry)?)?),
        other => return Err(KeyframeError::UnknownCodec(String::from_utf8_lossy(other).into_owned())),
    };
    let mut sample = first_video_sample(fragment, video)?;
    let mut out = Vec::with_capacity(sample.len() + 64);
    for set in &config.parameter_sets {
        out.extend_from_slice(&START_CODE);
        out.extend_from_slice(set);
    }
    while !sample.is_empty() {
        let (len, rest) = sample.split_at_checked(config.length_size).ok_or(KeyframeError::Malformed("NAL length"))?;
        let len = len.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
        let (nal, rest) = rest.split_at_checked(len).ok_or(KeyframeError::Malformed("NAL longer than the sample"))?;
        out.extend_from_slice(&START_CODE);
        out.extend_from_slice(nal);
        sample = rest;
    }
    Ok(Keyframe { codec, access_unit: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_parameter_sets_from_avcc() {
        // version 1, High 4.0, 4-byte lengths, one SPS (3 bytes), one PPS (2 bytes).
        let avcc = [1, 0x64, 0, 0x28, 0xff, 0xe1, 0, 3, 0x67, 0x64, 0x28, 1, 0, 2, 0x68, 0xee];
        let config = parse_avcc(&avcc).expect("valid");
        assert_eq!(config.length_size, 4);
        assert_eq!(config.parameter_sets, vec![&[0x67, 0x64, 0x28][..], &[0x68, 0xee][..]]);
        assert_eq!(parse_avcc(&avcc[..10]).err(), Some(KeyframeError::Malformed("avcC record")));
        assert_eq!(parse_avcc(&[2, 0, 0, 0, 0xff, 0xe0, 0]).err(), Some(KeyframeError::Malformed("avcC version")));
        let empty = [1, 0x64, 0, 0x28, 0xff, 0xe0, 0];
        assert_eq!(parse_avcc(&empty).err(), Some(KeyframeError::Malformed("avcC without parameter sets")));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(annex_b_keyframe(b"", b"").is_err());
        assert!(annex_b_keyframe(&[0, 0, 0, 8, b'f', b't', b'y', b'p'], &[0, 0, 0, 8, b'm', b'o', b'o', b'f']).is_err());
    }
}
