//! FLV, the container the relay hands to libavformat: RTMP's audio, video and data messages are FLV tags
//! already, so a verified publisher's media becomes an FLV byte stream with no parsing of the media itself.

/// FLV tag type: audio.
pub const AUDIO: u8 = 8;
/// FLV tag type: video.
pub const VIDEO: u8 = 9;
/// FLV tag type: script data (onMetaData).
pub const SCRIPT: u8 = 18;

/// The 9-byte FLV header and the first PreviousTagSize (0). The flags say which tracks to wait for.
pub fn header(has_audio: bool, has_video: bool) -> [u8; 13] {
    let flags = u8::from(has_audio) << 2 | u8::from(has_video);
    [b'F', b'L', b'V', 1, flags, 0, 0, 0, 9, 0, 0, 0, 0]
}

/// Appends one tag and its PreviousTagSize. `data` is at most 2^24 - 1 bytes (RTMP's own limit).
pub fn put_tag(out: &mut Vec<u8>, tag_type: u8, timestamp_ms: u32, data: &[u8]) {
    let size = data.len() as u32;
    out.push(tag_type);
    out.extend_from_slice(&size.to_be_bytes()[1..]);
    let ts = timestamp_ms.to_be_bytes();
    // 24 low bits, then the high 8 bits (TimestampExtended).
    out.extend_from_slice(&[ts[1], ts[2], ts[3], ts[0]]);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(data);
    out.extend_from_slice(&(size + 11).to_be_bytes());
}

/// One tag of an RTMP aggregate message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag<'a> {
    /// Tag type.
    pub tag_type: u8,
    /// Its timestamp as written in the aggregate.
    pub timestamp_ms: u32,
    /// Its data.
    pub data: &'a [u8],
}

/// The FLV tags inside an aggregate message body, or `None` when they do not fit it.
pub fn tags(mut body: &[u8]) -> Option<Vec<Tag<'_>>> {
    let mut tags = Vec::new();
    while !body.is_empty() {
        let h = body.get(..11)?;
        let size = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
        let timestamp_ms = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
        let data = body.get(11..11 + size)?;
        tags.push(Tag { tag_type: h[0], timestamp_ms, data });
        // PreviousTagSize follows each tag (its value is not trusted).
        body = body.get(11 + size + 4..)?;
    }
    Some(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_written_are_the_tags_read() {
        let mut body = Vec::new();
        put_tag(&mut body, VIDEO, 0x1234_5678, b"frame");
        put_tag(&mut body, AUDIO, 40, b"");
        assert_eq!(
            tags(&body).unwrap(),
            vec![
                Tag { tag_type: VIDEO, timestamp_ms: 0x1234_5678, data: b"frame" },
                Tag { tag_type: AUDIO, timestamp_ms: 40, data: b"" }
            ]
        );
        assert_eq!(&body[..4], &[VIDEO, 0, 0, 5]);
        assert_eq!(tags(&body[..body.len() - 1]), None, "a cut tag");
        assert_eq!(header(true, true)[4], 5);
    }
}
