//! AAC framing: MPEG-TS and raw streams carry ADTS headers, MP4 wants the bare frames plus an
//! AudioSpecificConfig in the `esds`. Pure.

/// Sampling frequencies by their 4-bit index (ISO/IEC 14496-3).
const FREQUENCIES: [u32; 13] =
    [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

/// The 2-byte AudioSpecificConfig for an AAC profile (libavcodec's `FF_PROFILE_AAC_*`, i.e. object type - 1),
/// a sample rate and a channel count; None when MP4 cannot signal them this simply.
pub fn audio_specific_config(profile: i32, sample_rate: u32, channels: u32) -> Option<[u8; 2]> {
    let object_type = u16::try_from(profile + 1).ok().filter(|t| (1..31).contains(t))?;
    let freq_index = FREQUENCIES.iter().position(|&f| f == sample_rate)? as u16;
    let channels = u16::try_from(channels).ok().filter(|c| (1..=7).contains(c))?;
    let bits = (object_type << 11) | (freq_index << 7) | (channels << 3);
    Some(bits.to_be_bytes())
}

/// Length of the ADTS header at the start of `frame` (7 bytes, 9 with CRC), if it has one.
pub fn adts_header_len(frame: &[u8]) -> Option<usize> {
    match frame {
        [0xff, b1, ..] if b1 & 0xf6 == 0xf0 => {
            let len = if b1 & 0x01 == 0 { 9 } else { 7 };
            (frame.len() > len).then_some(len)
        }
        _ => None,
    }
}

/// What an ADTS header says: the AAC profile (object type - 1, as libavcodec numbers them), sample rate and
/// channel count; None when `frame` does not start with a usable one.
pub fn adts_config(frame: &[u8]) -> Option<(i32, u32, u32)> {
    adts_header_len(frame)?;
    let profile = i32::from(frame[2] >> 6);
    let rate = *FREQUENCIES.get(usize::from((frame[2] >> 2) & 0x0f))?;
    let channels = u32::from((frame[2] & 0x01) << 2 | frame[3] >> 6);
    (channels > 0).then_some((profile, rate, channels))
}

/// The sample rate and channel count an AudioSpecificConfig gives (escaped object types and explicit rates
/// included); None when it is too short or names neither.
pub fn config_rate_and_channels(asc: &[u8]) -> Option<(u32, u32)> {
    let mut b = crate::bits::Bits::new(asc);
    if b.bits(5).ok()? == 31 {
        b.bits(6).ok()?;
    }
    let rate = match b.bits(4).ok()? {
        15 => b.bits(24).ok()?,
        index => *FREQUENCIES.get(index as usize)?,
    };
    let channels = b.bits(4).ok()?;
    (rate > 0 && channels > 0).then_some((rate, channels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asc_for_common_streams() {
        // AAC-LC (profile 1 = object type 2), 48 kHz (index 3), stereo: 0x1190.
        assert_eq!(audio_specific_config(1, 48000, 2), Some([0x11, 0x90]));
        // 44.1 kHz mono: 0x1208.
        assert_eq!(audio_specific_config(1, 44100, 1), Some([0x12, 0x08]));
        assert_eq!(audio_specific_config(1, 12345, 2), None, "no index for that rate");
        assert_eq!(audio_specific_config(-99, 48000, 2), None, "unknown profile");
        assert_eq!(audio_specific_config(1, 48000, 0), None);
    }

    #[test]
    fn configs_read_back() {
        assert_eq!(config_rate_and_channels(&[0x11, 0x90]), Some((48000, 2)));
        assert_eq!(config_rate_and_channels(&[0x12, 0x08]), Some((44100, 1)));
        // Object type 31 escapes to 32 + 6 bits; index 15 is an explicit 24-bit rate (here 12345 Hz, mono).
        let explicit = [0x17, 0x80, 0x18, 0x1c, 0x88];
        assert_eq!(config_rate_and_channels(&explicit), Some((12345, 1)));
        let escaped = [0xf8, 0x06, 0x40];
        assert_eq!(config_rate_and_channels(&escaped), Some((48000, 2)));
        assert_eq!(config_rate_and_channels(&[0x11]), None, "truncated");
        assert_eq!(config_rate_and_channels(&[0x11, 0x80]), None, "no channels");
    }

    #[test]
    fn adts_headers() {
        assert_eq!(adts_header_len(&[0xff, 0xf1, 0x50, 0x80, 0x02, 0x1f, 0xfc, 0xde]), Some(7), "no CRC");
        assert_eq!(adts_header_len(&[0xff, 0xf0, 0, 0, 0, 0, 0, 0, 0, 0xde]), Some(9), "with CRC");
        assert_eq!(adts_header_len(&[0xff, 0xf1, 0x50]), None, "truncated");
        assert_eq!(adts_header_len(&[0x21, 0x10, 0x05, 0, 0, 0, 0, 0]), None, "raw frame");
    }

    #[test]
    fn adts_configs() {
        // AAC-LC, 48 kHz (index 3), stereo: as ffmpeg's AAC encoder writes it into MPEG-TS.
        assert_eq!(adts_config(&[0xff, 0xf1, 0x4c, 0x80, 0x02, 0x1f, 0xfc, 0xde]), Some((1, 48000, 2)));
        // 44.1 kHz mono.
        assert_eq!(adts_config(&[0xff, 0xf1, 0x50, 0x40, 0x02, 0x1f, 0xfc, 0xde]), Some((1, 44100, 1)));
        assert_eq!(adts_config(&[0xff, 0xf1, 0x7c, 0x80, 0, 0, 0, 0]), None, "sampling index 15");
        assert_eq!(adts_config(&[0xff, 0xf1, 0x4c, 0x00, 0, 0, 0, 0]), None, "channels in the stream, not the header");
    }
}
