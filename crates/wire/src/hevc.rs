//! H.265/HEVC parameter sets: NAL unit types, the profile, tier and level a stream declares (in its `hvcC` or
//! an in-band SPS), its picture size and format, the VPS/SPS/PPS lifted out of a keyframe, and the RFC 6381
//! codec string (ISO/IEC 14496-15 annex E), e.g. `hvc1.1.6.L93.B0`, made from them and never guessed.
//! Pure: bytes of network origin in, a result or a specific error out.

use std::fmt::Write;

use crate::bits::{rbsp, Bits, BitsError};
use crate::codec_string::annex_b_nals;
use thiserror::Error;

/// NAL unit type of a video parameter set.
pub const VPS: u8 = 32;
/// NAL unit type of a sequence parameter set.
pub const SPS: u8 = 33;
/// NAL unit type of a picture parameter set.
pub const PPS: u8 = 34;
/// NAL unit type of an access unit delimiter.
pub const AUD: u8 = 35;

/// Why HEVC parameter sets could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HevcError {
    /// Not the NAL unit type expected.
    #[error("not an HEVC {expected} (NAL type {found})")]
    WrongNal {
        /// What was expected.
        expected: &'static str,
        /// The NAL unit type found.
        found: u8,
    },
    /// The bytes ran out mid-field.
    #[error("HEVC {0} cut short")]
    Truncated(&'static str),
    /// A field out of the range the standard allows.
    #[error("HEVC field {0} out of range")]
    OutOfRange(&'static str),
    /// An `hvcC` whose configurationVersion is not 1.
    #[error("hvcC version {0}, not 1")]
    HvccVersion(u8),
}

/// The NAL unit type of a NAL unit (its 2-byte header first).
pub fn nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|h| (h >> 1) & 0x3f)
}

/// Whether a NAL unit type is an intra random access point (BLA, IDR, CRA): a picture to start decoding at.
pub fn is_irap(nal_type: u8) -> bool {
    (16..=23).contains(&nal_type)
}

/// The general profile, tier and level of a stream: what a browser is asked whether it decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileTierLevel {
    /// general_profile_space (0 in every published profile).
    pub profile_space: u8,
    /// general_tier_flag: the High tier.
    pub high_tier: bool,
    /// general_profile_idc (1 Main, 2 Main 10, 3 Main Still Picture, 4 range extensions, ...).
    pub profile_idc: u8,
    /// general_profile_compatibility_flag[0..32], flag j in bit 31 - j (as in the bitstream).
    pub compatibility: u32,
    /// The 48 constraint indicator bits (progressive_source_flag first), as 6 bytes.
    pub constraints: [u8; 6],
    /// general_level_idc: 30 times the level (93 for 3.1).
    pub level_idc: u8,
}

impl ProfileTierLevel {
    /// Reads the 12 bytes of general profile, tier and level (as both the SPS and the `hvcC` hold them).
    fn read(b: &mut Bits<'_>) -> Result<Self, BitsError> {
        let profile_space = b.bits(2)? as u8;
        let high_tier = b.bit()? == 1;
        let profile_idc = b.bits(5)? as u8;
        let compatibility = b.bits(32)?;
        let mut constraints = [0; 6];
        for byte in &mut constraints {
            *byte = b.bits(8)? as u8;
        }
        let level_idc = b.bits(8)? as u8;
        Ok(Self { profile_space, high_tier, profile_idc, compatibility, constraints, level_idc })
    }

    /// The codec string for a sample entry (`hvc1`, parameter sets in the `hvcC`; or `hev1`): profile space
    /// as a letter (none for 0), profile idc, the compatibility flags in reverse bit order in hex, tier and
    /// level, then the constraint bytes in hex, trailing zero bytes left out.
    pub fn codec_string(&self, sample_entry: &str) -> String {
        let space = ["", "A", "B", "C"][usize::from(self.profile_space & 3)];
        let tier = if self.high_tier { 'H' } else { 'L' };
        let mut s = format!(
            "{sample_entry}.{space}{}.{:X}.{tier}{}",
            self.profile_idc,
            self.compatibility.reverse_bits(),
            self.level_idc
        );
        let used = self.constraints.iter().rposition(|&b| b != 0).map_or(0, |last| last + 1);
        for byte in &self.constraints[..used] {
            let _ = write!(s, ".{byte:02X}");
        }
        s
    }

    /// Whether this is Main or Main 10 (or says it is compatible with one): the profiles browsers decode.
    pub fn main_or_main10(&self) -> bool {
        let compatible = |j: u32| self.compatibility & (1 << (31 - j)) != 0;
        matches!(self.profile_idc, 1 | 2) || compatible(1) || compatible(2)
    }
}

/// What an SPS says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sps {
    /// The general profile, tier and level.
    pub ptl: ProfileTierLevel,
    /// chroma_format_idc: 0 monochrome, 1 4:2:0, 2 4:2:2, 3 4:4:4.
    pub chroma_format_idc: u32,
    /// Luma bit depth.
    pub bit_depth_luma: u32,
    /// Chroma bit depth.
    pub bit_depth_chroma: u32,
    /// Displayed width (after the conformance window).
    pub width: u32,
    /// Displayed height (after the conformance window).
    pub height: u32,
}

impl Sps {
    /// Whether browsers that decode HEVC decode this: Main or Main 10, 4:2:0, 8 or 10 bits.
    pub fn browser_decodable(&self) -> bool {
        self.ptl.main_or_main10()
            && self.chroma_format_idc == 1
            && matches!(self.bit_depth_luma, 8 | 10)
            && self.bit_depth_luma == self.bit_depth_chroma
    }
}

/// Reads an SPS NAL unit (2-byte header included).
pub fn parse_sps(nal: &[u8]) -> Result<Sps, HevcError> {
    let found = nal_type(nal).ok_or(HevcError::Truncated("SPS"))?;
    if found != SPS {
        return Err(HevcError::WrongNal { expected: "SPS", found });
    }
    let data = rbsp(nal.get(2..).ok_or(HevcError::Truncated("SPS"))?);
    read_sps(&mut Bits::new(&data)).map_err(|e| match e {
        BitsError::Truncated => HevcError::Truncated("SPS"),
        BitsError::ExpGolomb => HevcError::OutOfRange("exp-Golomb code"),
    })?
}

fn read_sps(b: &mut Bits<'_>) -> Result<Result<Sps, HevcError>, BitsError> {
    b.skip(4)?; // sps_video_parameter_set_id
    let max_sub_layers_minus1 = b.bits(3)? as usize;
    b.skip(1)?; // sps_temporal_id_nesting_flag
    let ptl = ProfileTierLevel::read(b)?;
    let mut present = [(false, false); 7];
    for p in present.iter_mut().take(max_sub_layers_minus1) {
        *p = (b.bit()? == 1, b.bit()? == 1);
    }
    if max_sub_layers_minus1 > 0 {
        b.skip(2 * (8 - max_sub_layers_minus1))?; // reserved_zero_2bits
    }
    for &(profile, level) in present.iter().take(max_sub_layers_minus1) {
        if profile {
            b.skip(88)?;
        }
        if level {
            b.skip(8)?;
        }
    }
    if b.ue()? > 15 {
        return Ok(Err(HevcError::OutOfRange("sps_seq_parameter_set_id")));
    }
    let chroma_format_idc = b.ue()?;
    if chroma_format_idc > 3 {
        return Ok(Err(HevcError::OutOfRange("chroma_format_idc")));
    }
    let separate_planes = chroma_format_idc == 3 && b.bit()? == 1;
    let width = u64::from(b.ue()?);
    let height = u64::from(b.ue()?);
    let (mut left, mut right, mut top, mut bottom) = (0, 0, 0, 0);
    if b.bit()? == 1 {
        (left, right, top, bottom) = (b.ue()?, b.ue()?, b.ue()?, b.ue()?);
    }
    // ue(v) reaches u32::MAX on hostile input: saturate, and the range check refuses it.
    let bit_depth_luma = b.ue()?.saturating_add(8);
    let bit_depth_chroma = b.ue()?.saturating_add(8);
    if bit_depth_luma > 16 || bit_depth_chroma > 16 {
        return Ok(Err(HevcError::OutOfRange("bit_depth")));
    }
    let (sub_width, sub_height) = match (chroma_format_idc, separate_planes) {
        (1, _) => (2, 2),
        (2, _) => (2, 1),
        _ => (1, 1),
    };
    let width = width.checked_sub(sub_width * (u64::from(left) + u64::from(right)));
    let height = height.checked_sub(sub_height * (u64::from(top) + u64::from(bottom)));
    let (Some(width), Some(height)) = (width, height) else {
        return Ok(Err(HevcError::OutOfRange("conformance window")));
    };
    if width == 0 || height == 0 || width > 16_888 || height > 16_888 {
        return Ok(Err(HevcError::OutOfRange("picture size")));
    }
    Ok(Ok(Sps { ptl, chroma_format_idc, bit_depth_luma, bit_depth_chroma, width: width as u32, height: height as u32 }))
}

/// An `HEVCDecoderConfigurationRecord` (the `hvcC` payload): what it declares and its parameter sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hvcc<'a> {
    /// The general profile, tier and level.
    pub ptl: ProfileTierLevel,
    /// Bytes of each NAL unit's length prefix in the samples (1, 2 or 4).
    pub nal_length_size: u8,
    /// The parameter-set NAL units, in order (VPS, SPS, PPS, SEI).
    pub nals: Vec<&'a [u8]>,
}

/// Reads an `hvcC` payload.
pub fn parse_hvcc(hvcc: &[u8]) -> Result<Hvcc<'_>, HevcError> {
    let short = HevcError::Truncated("hvcC");
    let version = *hvcc.first().ok_or(short.clone())?;
    if version != 1 {
        return Err(HevcError::HvccVersion(version));
    }
    let head = hvcc.get(1..13).ok_or(short.clone())?;
    let ptl = ProfileTierLevel::read(&mut Bits::new(head)).map_err(|_| short.clone())?;
    let nal_length_size = (hvcc.get(21).ok_or(short.clone())? & 3) + 1;
    if nal_length_size == 3 {
        return Err(HevcError::OutOfRange("lengthSizeMinusOne"));
    }
    let arrays = *hvcc.get(22).ok_or(short.clone())?;
    let mut at = 23;
    let mut take = |n: usize| -> Result<&[u8], HevcError> {
        let bytes = hvcc.get(at..at + n).ok_or(HevcError::Truncated("hvcC"))?;
        at += n;
        Ok(bytes)
    };
    let mut nals = Vec::new();
    for _ in 0..arrays {
        take(1)?; // array_completeness, NAL_unit_type
        let count = u16::from_be_bytes([take(1)?[0], take(1)?[0]]);
        for _ in 0..count {
            let len = u16::from_be_bytes([take(1)?[0], take(1)?[0]]);
            nals.push(take(usize::from(len))?);
        }
    }
    Ok(Hvcc { ptl, nal_length_size, nals })
}

/// Annex B extradata (VPS, SPS and PPS with start codes) from the NAL units of a keyframe; empty when it has
/// none (a camera that sends them only in-band, or a stream joined mid-way, until its next keyframe).
pub fn in_band_parameter_sets(keyframe: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for nal in annex_b_nals(keyframe) {
        if matches!(nal_type(nal), Some(VPS | SPS | PPS)) {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
        }
    }
    out
}

/// Whether an Annex B access unit holds an IRAP picture (a keyframe).
pub fn annex_b_is_keyframe(access_unit: &[u8]) -> bool {
    annex_b_nals(access_unit).any(|nal| nal_type(nal).is_some_and(is_irap))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `hvcC` records as FFmpeg's mp4 muxer wrote them for libx265 output (`crates/wire/testdata`, made with
    /// `ffmpeg -f lavfi -i testsrc2=... -c:v libx265 -tag:v hvc1`): the codec string each must give, its size.
    const RECORDS: [(&[u8], &str, (u32, u32)); 4] = [
        (include_bytes!("../testdata/hevc-main.hvcc"), "hvc1.1.6.L63.90", (640, 360)),
        (include_bytes!("../testdata/hevc-main10.hvcc"), "hvc1.2.4.L120.90", (1920, 1080)),
        (include_bytes!("../testdata/hevc-high.hvcc"), "hvc1.1.6.H153.90", (1280, 720)),
        (include_bytes!("../testdata/hevc-rext444.hvcc"), "hvc1.4.10.L93.9E.08", (1280, 720)),
    ];

    #[test]
    fn the_codec_string_of_the_hvcc_equals_that_of_its_sps_for_four_profiles_and_levels() {
        for (record, expected, (width, height)) in RECORDS {
            let hvcc = parse_hvcc(record).unwrap();
            assert_eq!(hvcc.ptl.codec_string("hvc1"), expected);
            assert_eq!(hvcc.nal_length_size, 4);
            let types: Vec<u8> = hvcc.nals.iter().filter_map(|n| nal_type(n)).collect();
            assert!(types.starts_with(&[VPS, SPS, PPS]), "{types:?}");
            let sps = parse_sps(hvcc.nals[1]).unwrap();
            assert_eq!(sps.ptl, hvcc.ptl, "the SPS and the hvcC header say the same");
            assert_eq!((sps.width, sps.height), (width, height), "{expected}");
        }
    }

    #[test]
    fn browsers_are_asked_about_main_and_main10_in_4_2_0_only() {
        let sps = |i: usize| parse_sps(parse_hvcc(RECORDS[i].0).unwrap().nals[1]).unwrap();
        assert!(sps(0).browser_decodable(), "Main");
        assert!(sps(1).browser_decodable(), "Main 10");
        assert_eq!(sps(1).bit_depth_luma, 10);
        assert!(sps(2).browser_decodable(), "Main, High tier");
        let rext = sps(3);
        assert_eq!((rext.ptl.profile_idc, rext.chroma_format_idc), (4, 3));
        assert!(!rext.browser_decodable(), "4:4:4 range extensions");
    }

    #[test]
    fn codec_strings_by_the_rules_of_annex_e() {
        let ptl = ProfileTierLevel {
            profile_space: 0,
            high_tier: false,
            profile_idc: 1,
            compatibility: 0x6000_0000,
            constraints: [0xb0, 0, 0, 0, 0, 0],
            level_idc: 93,
        };
        assert_eq!(ptl.codec_string("hvc1"), "hvc1.1.6.L93.B0", "the issue's example");
        let no_constraints = ProfileTierLevel { constraints: [0; 6], ..ptl };
        assert_eq!(no_constraints.codec_string("hev1"), "hev1.1.6.L93");
        let spaced = ProfileTierLevel { profile_space: 1, high_tier: true, constraints: [0, 0, 0, 0, 0, 1], ..ptl };
        assert_eq!(spaced.codec_string("hvc1"), "hvc1.A1.6.H93.00.00.00.00.00.01", "inner zero bytes stay");
    }

    #[test]
    fn in_band_parameter_sets_and_keyframes_from_annex_b() {
        let hvcc = parse_hvcc(RECORDS[0].0).unwrap();
        let mut access_unit = Vec::new();
        for nal in &hvcc.nals {
            access_unit.extend_from_slice(&[0, 0, 0, 1]);
            access_unit.extend_from_slice(nal);
        }
        let idr = [0, 0, 1, 19 << 1, 1, 0xaf];
        let trailing = [0, 0, 1, 1 << 1, 1, 0xd0];
        let key = [access_unit.as_slice(), &idr].concat();
        let sets = in_band_parameter_sets(&key);
        assert_eq!(annex_b_nals(&sets).count(), 3, "VPS, SPS and PPS; not the SEI or the picture");
        assert!(annex_b_is_keyframe(&key));
        assert!(!annex_b_is_keyframe(&trailing));
        assert!(in_band_parameter_sets(&trailing).is_empty());
    }

    #[test]
    fn malformed_records_and_sps_are_specific_errors() {
        let main = RECORDS[0].0;
        assert_eq!(parse_hvcc(&[]), Err(HevcError::Truncated("hvcC")));
        assert_eq!(parse_hvcc(&[0; 30]), Err(HevcError::HvccVersion(0)));
        assert_eq!(parse_hvcc(&main[..40]), Err(HevcError::Truncated("hvcC")));
        let sps = parse_hvcc(main).unwrap().nals[1];
        for cut in 0..15 {
            assert!(parse_sps(&sps[..cut]).is_err(), "cut at {cut}, in the profile, tier and level");
        }
        assert_eq!(parse_sps(&[0x40, 1, 0]), Err(HevcError::WrongNal { expected: "SPS", found: VPS }));
        // Found by the fuzzer: a bit depth whose exp-Golomb code is u32::MAX overflowed `+ 8`.
        let huge_depth =
            include_bytes!("../../../fuzz/seeds/hevc_parameter_sets/crash-86a035ee2880926e948c3486b466b90b32cdbcbe");
        assert!(parse_sps(huge_depth).is_err());
    }
}
