//! RTP packets to a camera's backchannel (RFC 3550), framed for RTSP's interleaved TCP (RFC 2326 10.12), and
//! their payloads: G.711 as it is (RFC 3551), AAC as RFC 3640's AAC-hbr access units.

/// One RTP packet (version 2, no padding, extension or CSRC), interleaved on `channel`: `$`, the channel,
/// the packet's length, the packet.
pub fn interleaved(
    channel: u8,
    payload_type: u8,
    marker: bool,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    payload: &[u8],
) -> Vec<u8> {
    let len = 12 + payload.len();
    let mut out = Vec::with_capacity(4 + len);
    out.push(b'$');
    out.push(channel);
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    out.push(0x80);
    out.push((u8::from(marker) << 7) | (payload_type & 0x7F));
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The most payload one interleaved packet carries (its length is 16 bits).
pub const MAX_PAYLOAD: usize = u16::MAX as usize - 12;

/// One AAC access unit as an RFC 3640 AAC-hbr payload: a 16-bit AU-headers-length (16 bits), one AU header
/// (13-bit size, 3-bit index 0), the unit. None where the unit passes 13 bits of size.
pub fn aac_hbr(unit: &[u8]) -> Option<Vec<u8>> {
    let size = u16::try_from(unit.len()).ok().filter(|&s| s < 1 << 13)?;
    let mut out = Vec::with_capacity(4 + unit.len());
    out.extend_from_slice(&16u16.to_be_bytes());
    out.extend_from_slice(&(size << 3).to_be_bytes());
    out.extend_from_slice(unit);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interleaved_packet() {
        let p = interleaved(2, 0, true, 0x1234, 0x0A0B0C0D, 0xDEADBEEF, &[1, 2, 3]);
        assert_eq!(
            p,
            [b'$', 2, 0, 15, 0x80, 0x80, 0x12, 0x34, 0x0A, 0x0B, 0x0C, 0x0D, 0xDE, 0xAD, 0xBE, 0xEF, 1, 2, 3]
        );
        assert_eq!(interleaved(0, 8, false, 0, 0, 0, &[])[5], 8, "no marker, PCMA");
    }

    #[test]
    fn aac_hbr_headers() {
        assert_eq!(aac_hbr(&[9; 5]).unwrap()[..4], [0, 16, 0, 5 << 3]);
        assert_eq!(aac_hbr(&vec![0; 8191]).map(|p| p.len()), Some(8195));
        assert_eq!(aac_hbr(&vec![0; 8192]), None);
    }
}
