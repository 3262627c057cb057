//! A live Matroska stream, the container the relay hands to libavformat when a publisher sends a codec FLV
//! cannot carry for this FFmpeg (enhanced RTMP's HEVC, AV1, VP9: FFmpeg 5.1's FLV demuxer predates them).
//! The frames stay as the publisher sent them (length-prefixed NAL units, with the `hvcC` as CodecPrivate),
//! so nothing of the media is parsed. Pure: bytes in, bytes out.

/// Milliseconds: a block's timestamp is in the same unit as an RTMP message's.
const TIMESTAMP_SCALE_NS: u64 = 1_000_000;
/// "Size unknown", as a live stream's Segment and Clusters are written.
const UNKNOWN_SIZE: [u8; 8] = [0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];

// Element IDs (RFC 9559), marker bits included.
const EBML: u32 = 0x1A45_DFA3;
const EBML_VERSION: u32 = 0x4286;
const EBML_READ_VERSION: u32 = 0x42F7;
const EBML_MAX_ID_LENGTH: u32 = 0x42F2;
const EBML_MAX_SIZE_LENGTH: u32 = 0x42F3;
const DOC_TYPE: u32 = 0x4282;
const DOC_TYPE_VERSION: u32 = 0x4287;
const DOC_TYPE_READ_VERSION: u32 = 0x4285;
const SEGMENT: u32 = 0x1853_8067;
const INFO: u32 = 0x1549_A966;
const TIMESTAMP_SCALE: u32 = 0x2A_D7B1;
const MUXING_APP: u32 = 0x4D80;
const WRITING_APP: u32 = 0x5741;
const TRACKS: u32 = 0x1654_AE6B;
const TRACK_ENTRY: u32 = 0xAE;
const TRACK_NUMBER: u32 = 0xD7;
const TRACK_UID: u32 = 0x73C5;
const TRACK_TYPE: u32 = 0x83;
const FLAG_LACING: u32 = 0x9C;
const CODEC_ID: u32 = 0x86;
const CODEC_PRIVATE: u32 = 0x63A2;
const AUDIO: u32 = 0xE1;
const SAMPLING_FREQUENCY: u32 = 0xB5;
const CHANNELS: u32 = 0x9F;
const CLUSTER: u32 = 0x1F43_B675;
const CLUSTER_TIMESTAMP: u32 = 0xE7;
const SIMPLE_BLOCK: u32 = 0xA3;

/// A track of the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    /// Matroska's codec ID (`V_MPEGH/ISO/HEVC`, `A_AAC`, ...).
    pub codec_id: &'static str,
    /// The decoder configuration (`hvcC`, AudioSpecificConfig, ...).
    pub codec_private: Vec<u8>,
    /// For audio: sample rate and channels.
    pub audio: Option<(u32, u32)>,
}

/// A Matroska stream being written: its header once, then blocks in clusters.
#[derive(Debug, Default)]
pub struct Writer {
    /// The open cluster's timestamp, once there is one.
    cluster: Option<i64>,
}

impl Writer {
    /// The EBML header, the Segment (of unknown size), its Info and its Tracks, numbered from 1 in order.
    pub fn header(&mut self, tracks: &[Track], out: &mut Vec<u8>) {
        let mut ebml = Vec::new();
        uint(&mut ebml, EBML_VERSION, 1);
        uint(&mut ebml, EBML_READ_VERSION, 1);
        uint(&mut ebml, EBML_MAX_ID_LENGTH, 4);
        uint(&mut ebml, EBML_MAX_SIZE_LENGTH, 8);
        element(&mut ebml, DOC_TYPE, b"matroska");
        uint(&mut ebml, DOC_TYPE_VERSION, 4);
        uint(&mut ebml, DOC_TYPE_READ_VERSION, 2);
        element(out, EBML, &ebml);
        id(out, SEGMENT);
        out.extend_from_slice(&UNKNOWN_SIZE);
        let mut info = Vec::new();
        uint(&mut info, TIMESTAMP_SCALE, TIMESTAMP_SCALE_NS);
        element(&mut info, MUXING_APP, b"mqtt-video");
        element(&mut info, WRITING_APP, b"mqtt-video");
        element(out, INFO, &info);
        let mut entries = Vec::new();
        for (i, t) in tracks.iter().enumerate() {
            let number = i as u64 + 1;
            let mut entry = Vec::new();
            uint(&mut entry, TRACK_NUMBER, number);
            uint(&mut entry, TRACK_UID, number);
            uint(&mut entry, TRACK_TYPE, if t.audio.is_some() { 2 } else { 1 });
            uint(&mut entry, FLAG_LACING, 0);
            element(&mut entry, CODEC_ID, t.codec_id.as_bytes());
            if !t.codec_private.is_empty() {
                element(&mut entry, CODEC_PRIVATE, &t.codec_private);
            }
            if let Some((rate, channels)) = t.audio {
                let mut audio = Vec::new();
                element(&mut audio, SAMPLING_FREQUENCY, &f64::from(rate).to_be_bytes());
                uint(&mut audio, CHANNELS, u64::from(channels));
                element(&mut entry, AUDIO, &audio);
            }
            element(&mut entries, TRACK_ENTRY, &entry);
        }
        element(out, TRACKS, &entries);
        self.cluster = None;
    }

    /// One frame of track `track` (from 1) presented at `pts_ms`. A video keyframe opens a cluster, as does a
    /// frame too far from the cluster's timestamp for a block's 16 bits.
    pub fn block(&mut self, track: u8, pts_ms: i64, keyframe: bool, video: bool, data: &[u8], out: &mut Vec<u8>) {
        let relative = self.cluster.map(|c| pts_ms - c).filter(|r| i16::try_from(*r).is_ok());
        let relative = match relative {
            Some(r) if !(keyframe && video) => r,
            _ => {
                id(out, CLUSTER);
                out.extend_from_slice(&UNKNOWN_SIZE);
                // A cluster's timestamp is unsigned: a stream that starts below 0 starts its clusters at 0.
                let start = pts_ms.max(0);
                uint(out, CLUSTER_TIMESTAMP, start as u64);
                self.cluster = Some(start);
                match i16::try_from(pts_ms - start) {
                    Ok(r) => i64::from(r),
                    // Not representable at all (a frame dated far below 0): left out.
                    Err(_) => return,
                }
            }
        };
        let mut head = [0x80 | track, 0, 0, if keyframe { 0x80 } else { 0 }];
        head[1..3].copy_from_slice(&(relative as i16).to_be_bytes());
        id(out, SIMPLE_BLOCK);
        size(out, (head.len() + data.len()) as u64);
        out.extend_from_slice(&head);
        out.extend_from_slice(data);
    }
}

fn id(out: &mut Vec<u8>, id: u32) {
    let bytes = id.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.extend_from_slice(&bytes[skip..]);
}

/// A data size as an EBML variable-length integer, in the fewest bytes (all ones is "unknown", never used).
fn size(out: &mut Vec<u8>, n: u64) {
    let len = (1..=8).find(|l| n < (1u64 << (7 * l)) - 1).unwrap_or(8);
    let marked = n | (1u64 << (7 * len));
    out.extend_from_slice(&marked.to_be_bytes()[8 - len as usize..]);
}

fn element(out: &mut Vec<u8>, element_id: u32, data: &[u8]) {
    id(out, element_id);
    size(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn uint(out: &mut Vec<u8>, element_id: u32, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(7);
    element(out, element_id, &bytes[skip..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_the_fewest_bytes_and_never_read_as_unknown() {
        let encode = |n| {
            let mut out = Vec::new();
            size(&mut out, n);
            out
        };
        assert_eq!(encode(0), [0x80]);
        assert_eq!(encode(126), [0xfe]);
        assert_eq!(encode(127), [0x40, 0x7f], "0xff alone would mean unknown");
        assert_eq!(encode(16_382), [0x7f, 0xfe]);
        assert_eq!(encode(16_383), [0x20, 0x3f, 0xff]);
        assert_eq!(encode(1 << 40), [0x05, 0, 0, 0, 0, 0], "6 bytes hold 42 bits");
    }

    #[test]
    fn header_and_blocks_are_laid_out_as_matroska_says() {
        let mut w = Writer::default();
        let mut out = Vec::new();
        let tracks = [
            Track { codec_id: "V_MPEGH/ISO/HEVC", codec_private: vec![1, 2, 3], audio: None },
            Track { codec_id: "A_AAC", codec_private: vec![0x11, 0x90], audio: Some((48000, 2)) },
        ];
        w.header(&tracks, &mut out);
        assert_eq!(&out[..4], &[0x1A, 0x45, 0xDF, 0xA3]);
        let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
        assert!(find(&out, b"matroska").is_some());
        assert!(find(&out, &[0x18, 0x53, 0x80, 0x67, 0x01, 0xff]).is_some(), "a live Segment");
        assert!(find(&out, &[0x86, 0x90]).is_some(), "CodecID of 16 bytes");
        assert!(find(&out, &[0x63, 0xA2, 0x83, 1, 2, 3]).is_some(), "the hvcC as CodecPrivate");
        assert!(find(&out, &[0xB5, 0x88, 0x40, 0xE7, 0x70, 0, 0, 0, 0, 0]).is_some(), "48000.0 Hz");

        let mut blocks = Vec::new();
        w.block(1, 1000, true, true, b"key", &mut blocks);
        let cluster = [0x1F, 0x43, 0xB6, 0x75, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xE7, 0x82, 0x03, 0xE8];
        assert_eq!(&blocks[..16], &cluster, "a keyframe opens a cluster at its time");
        assert_eq!(&blocks[16..], &[0xA3, 0x87, 0x81, 0, 0, 0x80, b'k', b'e', b'y']);
        blocks.clear();
        w.block(2, 990, false, false, b"a", &mut blocks);
        assert_eq!(blocks, [0xA3, 0x85, 0x82, 0xff, 0xf6, 0, b'a'], "10 ms before the cluster: -10");
        blocks.clear();
        w.block(1, 1000 + 40_000, false, true, b"p", &mut blocks);
        assert_eq!(&blocks[..4], &[0x1F, 0x43, 0xB6, 0x75], "beyond 16 bits: a new cluster");
        blocks.clear();
        let mut fresh = Writer::default();
        fresh.block(1, -40_000, true, true, b"p", &mut blocks);
        assert_eq!(blocks.len(), 15, "far below 0: a cluster at 0 and no block");
    }
}
