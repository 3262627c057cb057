//! H.264 sequence parameter sets: the picture size and profile a stream declares, read from its SPS when a
//! source (MPEG-TS joined mid-stream, a camera without `sprop-parameter-sets`) gives them only in-band, and
//! the SPS and PPS lifted out of such a keyframe to serve as the stream's extradata.
//! Pure: bytes of network origin in, a result or a specific error out.

pub use crate::bits::rbsp;
use crate::bits::{Bits, BitsError};
use crate::codec_string::annex_b_nals;
use thiserror::Error;

/// Why an SPS could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpsError {
    /// Not an SPS NAL unit.
    #[error("not an H.264 SPS (NAL type {0})")]
    NotSps(u8),
    /// The bits ran out mid-field.
    #[error("H.264 SPS cut short")]
    Truncated,
    /// A field out of the range the standard allows.
    #[error("H.264 SPS field {0} out of range")]
    OutOfRange(&'static str),
}

/// What the SPS says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sps {
    /// profile_idc (66 baseline, 77 main, 100 high, ...).
    pub profile_idc: u8,
    /// The constraint_set flags byte.
    pub constraints: u8,
    /// level_idc (31 for level 3.1).
    pub level_idc: u8,
    /// chroma_format_idc: 0 monochrome, 1 4:2:0, 2 4:2:2, 3 4:4:4.
    pub chroma_format_idc: u32,
    /// Luma bit depth.
    pub bit_depth: u32,
    /// Displayed width (after cropping).
    pub width: u32,
    /// Displayed height (after cropping).
    pub height: u32,
}

impl From<BitsError> for SpsError {
    fn from(e: BitsError) -> Self {
        match e {
            BitsError::Truncated => SpsError::Truncated,
            BitsError::ExpGolomb => SpsError::OutOfRange("exp-Golomb code"),
        }
    }
}

/// Annex B extradata (SPS and PPS with start codes) from the NAL units of a keyframe; empty when it has none.
pub fn in_band_parameter_sets(keyframe: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for nal in annex_b_nals(keyframe) {
        if matches!(nal.first().map(|h| h & 0x1f), Some(7 | 8)) {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
        }
    }
    out
}

/// Reads an SPS NAL unit (header byte included).
pub fn parse_sps(nal: &[u8]) -> Result<Sps, SpsError> {
    let header = *nal.first().ok_or(SpsError::Truncated)?;
    if header & 0x1f != 7 {
        return Err(SpsError::NotSps(header & 0x1f));
    }
    let data = rbsp(&nal[1..]);
    let mut r = Bits::new(&data);
    let profile_idc = r.bits(8)? as u8;
    let constraints = r.bits(8)? as u8;
    let level_idc = r.bits(8)? as u8;
    if r.ue()? > 31 {
        return Err(SpsError::OutOfRange("seq_parameter_set_id"));
    }
    let (mut chroma_format_idc, mut bit_depth) = (1, 8);
    if matches!(profile_idc, 100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc > 3 {
            return Err(SpsError::OutOfRange("chroma_format_idc"));
        }
        if chroma_format_idc == 3 {
            r.bit()?; // separate_colour_plane_flag
        }
        // H.264 7.4.2.1.1: both bit depths are 8 to 14; a larger value would overflow the sum below.
        let luma_minus8 = r.ue()?;
        if luma_minus8 > 6 || r.ue()? > 6 {
            return Err(SpsError::OutOfRange("bit_depth_minus8"));
        }
        bit_depth = luma_minus8 + 8;
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? == 1 {
            // Scaling lists: only their length matters here.
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.bit()?; // delta_pic_order_always_zero_flag
            r.se()?; // offset_for_non_ref_pic
            r.se()?; // offset_for_top_to_bottom_field
            let cycle = r.ue()?;
            if cycle > 255 {
                return Err(SpsError::OutOfRange("num_ref_frames_in_pic_order_cnt_cycle"));
            }
            for _ in 0..cycle {
                r.se()?;
            }
        }
        2 => {}
        _ => return Err(SpsError::OutOfRange("pic_order_cnt_type")),
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = u64::from(r.bit()?);
    if frame_mbs_only == 0 {
        r.bit()?; // mb_adaptive_frame_field_flag
    }
    r.bit()?; // direct_8x8_inference_flag
    let (mut crop_left, mut crop_right, mut crop_top, mut crop_bottom) = (0, 0, 0, 0);
    if r.bit()? == 1 {
        crop_left = u64::from(r.ue()?);
        crop_right = u64::from(r.ue()?);
        crop_top = u64::from(r.ue()?);
        crop_bottom = u64::from(r.ue()?);
    }
    let (unit_x, unit_y) = match chroma_format_idc {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let unit_y = unit_y * (2 - frame_mbs_only);
    let full_width = width_mbs * 16;
    let full_height = height_units * 16 * (2 - frame_mbs_only);
    let width = full_width.checked_sub(unit_x * (crop_left + crop_right)).filter(|w| *w > 0);
    let height = full_height.checked_sub(unit_y * (crop_top + crop_bottom)).filter(|h| *h > 0);
    let (Some(width), Some(height)) = (width, height) else { return Err(SpsError::OutOfRange("frame cropping")) };
    // Level 6.2 allows 139264 macroblocks a frame; anything larger is not a picture.
    // Saturating: both counts come from the stream (up to 2^32 each), and their product can overflow.
    if width_mbs.saturating_mul(height_units).saturating_mul(2 - frame_mbs_only) > 139_264 {
        return Err(SpsError::OutOfRange("picture size"));
    }
    Ok(Sps {
        profile_idc,
        constraints,
        level_idc,
        chroma_format_idc,
        bit_depth,
        width: width as u32,
        height: height as u32,
    })
}

fn skip_scaling_list(r: &mut Bits<'_>, size: usize) -> Result<(), SpsError> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            let delta = r.se()?;
            next = (last + delta + 256).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_sets_from_a_keyframe() {
        let key = [0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x67, 0x42, 0, 0x1e, 0, 0, 1, 0x68, 0xce, 0, 0, 1, 0x65, 0x88];
        assert_eq!(in_band_parameter_sets(&key), vec![0, 0, 0, 1, 0x67, 0x42, 0, 0x1e, 0, 0, 0, 1, 0x68, 0xce]);
        assert!(in_band_parameter_sets(&[0, 0, 1, 0x65, 1]).is_empty());
    }

    #[test]
    fn a_picture_size_too_large_to_multiply_is_refused() {
        // Found by the media_headers fuzzer: width and height in macroblocks near 2^32 each, whose product
        // overflowed u64 before the size check.
        let sps = [
            0x27, 0x7a, 0x02, 0x1f, 0xbc, 0xd9, 0, 0, 0, 0, 0x36, 0, 0, 0, 0, 0, 0, 0, 0x67, 0xff, 0xa5, 0x64, 0, 0xd3,
            0, 0, 0, 0, 0, 0x67, 0xff, 0xa5, 0x64, 0, 0xd3, 0x2f,
        ];
        assert!(parse_sps(&sps).is_err());
    }

    #[test]
    fn sizes_and_profiles_of_real_encoders() {
        // x264 High 4:2:0 640x360 (cropped from 368 lines), level 3.0, as libx264 writes it.
        let x264_high = [
            0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03, 0x00, 0x01, 0x00,
            0x00, 0x03, 0x00, 0x3c, 0x0f, 0x16, 0x2d, 0x96,
        ];
        let sps = parse_sps(&x264_high).unwrap();
        assert_eq!((sps.profile_idc, sps.level_idc, sps.width, sps.height), (100, 30, 640, 360));
        assert_eq!((sps.chroma_format_idc, sps.bit_depth), (1, 8));
        // Constrained baseline 320x240, level 1.3.
        let baseline = [
            0x67, 0x42, 0xc0, 0x0d, 0xd9, 0x01, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03,
            0x03, 0xc0, 0xf1, 0x42, 0xa4, 0x80,
        ];
        let sps = parse_sps(&baseline).unwrap();
        assert_eq!((sps.profile_idc, sps.constraints, sps.width, sps.height), (66, 0xc0, 320, 240));
        // High 4:2:2 1280x720, level 3.1.
        let high422 = [
            0x67, 0x7a, 0x00, 0x1f, 0xbc, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00,
            0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60,
        ];
        let sps = parse_sps(&high422).unwrap();
        assert_eq!((sps.profile_idc, sps.chroma_format_idc, sps.width, sps.height), (122, 2, 1280, 720));
    }

    #[test]
    fn emulation_prevention_is_taken_out() {
        assert_eq!(rbsp(&[0, 0, 3, 1, 0, 0, 3, 0, 3]), vec![0, 0, 1, 0, 0, 0, 3]);
    }

    #[test]
    fn hostile_sps_are_refused() {
        assert_eq!(parse_sps(&[0x68, 0xce]), Err(SpsError::NotSps(8)));
        assert_eq!(parse_sps(&[0x67, 0x64, 0x00]), Err(SpsError::Truncated));
        assert_eq!(parse_sps(&[]), Err(SpsError::Truncated));
        // An exp-Golomb code of 40 leading zeros.
        assert_eq!(
            parse_sps(&[0x67, 0x42, 0, 0x1e, 0, 0, 0, 0, 0, 0x80]),
            Err(SpsError::OutOfRange("exp-Golomb code"))
        );
        // High profile with a luma bit depth of 2^32 - 2 (found by the media_headers fuzz target: it overflowed).
        assert_eq!(
            parse_sps(&[0x67, 0x64, 0, 0x1f, 0xa0, 0, 0, 0, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(SpsError::OutOfRange("bit_depth_minus8"))
        );
        // The fuzzer's input for the same overflow, High 4:2:2.
        let mut nal = vec![0x67, 0x7a, 0x00, 0x67, 0x64, 0, 0, 0, 0];
        nal.extend([0xff; 56]);
        nal.extend([0; 9]);
        nal.push(0xf9);
        assert!(parse_sps(&nal).is_err());
        for n in 0..200u32 {
            let bytes: Vec<u8> = (0..n).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
            let mut nal = vec![0x67];
            nal.extend(bytes);
            let _ = parse_sps(&nal);
        }
    }
}
