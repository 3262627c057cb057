//! RFC 6381 codec strings (`avc1.64001F`, `mp4a.40.2`) read from the real parameter sets, never guessed.

use crate::fmp4::{self, Fmp4Error, Reader, TrackInfo, TrackKind};
use thiserror::Error;

/// Why no codec string could be derived.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodecStringError {
    /// No SPS NAL unit in the Annex B data.
    #[error("no H.264 SPS found in the parameter sets")]
    NoSps,
    /// The `avcC` record is too short or has the wrong version.
    #[error("invalid avcC record")]
    BadAvcC,
    /// The `hvcC` record is missing or malformed.
    #[error("invalid hvcC record: {0}")]
    BadHvcC(String),
    /// The `esds` descriptor chain is malformed.
    #[error("invalid esds descriptor")]
    BadEsds,
    /// A sample entry we cannot name for browsers.
    #[error("no codec string known for sample entry '{0}'")]
    UnknownSampleEntry(String),
    /// The init segment itself is malformed.
    #[error("invalid init segment: {0}")]
    Init(#[from] Fmp4Error),
}

/// `avc1.PPCCLL` from the profile, constraint flags and level bytes.
fn avc1(profile: u8, constraints: u8, level: u8) -> String {
    format!("avc1.{profile:02X}{constraints:02X}{level:02X}")
}

/// The codec string of an `AVCDecoderConfigurationRecord` (avcC payload): bytes 1..4.
pub fn from_avcc(avcc: &[u8]) -> Result<String, CodecStringError> {
    match avcc {
        [1, profile, constraints, level, ..] => Ok(avc1(*profile, *constraints, *level)),
        _ => Err(CodecStringError::BadAvcC),
    }
}

/// The codec string of Annex B H.264 parameter sets (as libx264 writes its extradata): the 3 bytes after the SPS NAL header.
pub fn from_annex_b(data: &[u8]) -> Result<String, CodecStringError> {
    annex_b_nals(data)
        .find(|nal| nal.first().map(|h| h & 0x1f) == Some(7))
        .and_then(|sps| match sps {
            [_, profile, constraints, level, ..] => Some(avc1(*profile, *constraints, *level)),
            _ => None,
        })
        .ok_or(CodecStringError::NoSps)
}

/// Splits Annex B data (`00 00 01` / `00 00 00 01` start codes) into NAL units.
pub fn annex_b_nals(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|&s| {
            // The start code before `s` is 3 bytes, or 4 with a leading zero that belongs to it.
            let mut e = s - 3;
            while e > 0 && data[e - 1] == 0 {
                e -= 1;
            }
            e
        })
        .chain(std::iter::once(data.len()))
        .collect();
    starts.into_iter().zip(ends).filter(|(s, e)| s < e).map(move |(s, e)| &data[s..e])
}

/// `mp4a.OO[.A]` from an `esds` payload (full box): object type, then the AAC audio object type.
pub fn from_esds(esds: &[u8]) -> Result<String, CodecStringError> {
    let mut r = Reader::new(esds, "esds");
    r.skip(4).map_err(|_| CodecStringError::BadEsds)?; // version + flags
    let es = descriptor(&mut r, 0x03)?;
    let mut r = Reader::new(es, "ES_Descriptor");
    let bad = |_| CodecStringError::BadEsds;
    r.skip(2).map_err(bad)?; // ES_ID
    let flags = r.u8().map_err(bad)?;
    if flags & 0x80 != 0 {
        r.skip(2).map_err(bad)?; // dependsOn_ES_ID
    }
    if flags & 0x40 != 0 {
        let len = r.u8().map_err(bad)?;
        r.skip(usize::from(len)).map_err(bad)?; // URL
    }
    if flags & 0x20 != 0 {
        r.skip(2).map_err(bad)?; // OCR_ES_ID
    }
    let dcd = descriptor(&mut r, 0x04)?;
    let mut r = Reader::new(dcd, "DecoderConfigDescriptor");
    let object_type = r.u8().map_err(bad)?;
    r.skip(12).map_err(bad)?; // stream type, buffer size, bitrates
    if object_type != 0x40 {
        return Ok(format!("mp4a.{object_type:02X}"));
    }
    let asc = descriptor(&mut r, 0x05)?;
    let aot = match asc {
        [b0, b1, ..] if b0 >> 3 == 31 => 32 + (((b0 & 0x07) << 3) | (b1 >> 5)),
        [b0, ..] => b0 >> 3,
        [] => return Err(CodecStringError::BadEsds),
    };
    Ok(format!("mp4a.40.{aot}"))
}

/// Reads one MPEG-4 descriptor of the expected tag and returns its body.
fn descriptor<'a>(r: &mut Reader<'a>, tag: u8) -> Result<&'a [u8], CodecStringError> {
    let bad = |_| CodecStringError::BadEsds;
    if r.u8().map_err(bad)? != tag {
        return Err(CodecStringError::BadEsds);
    }
    let mut len = 0usize;
    for _ in 0..4 {
        let b = r.u8().map_err(bad)?;
        len = (len << 7) | usize::from(b & 0x7f);
        if b & 0x80 == 0 {
            break;
        }
    }
    r.bytes(len).map_err(bad)
}

/// Bytes between a sample entry's header and its child boxes.
fn sample_entry_fields(kind: &[u8]) -> Option<usize> {
    match kind {
        // SampleEntry (8) + VisualSampleEntry fields (70).
        b"avc1" | b"avc3" | b"hvc1" | b"hev1" | b"vp09" | b"av01" => Some(78),
        // SampleEntry (8) + AudioSampleEntry v0 fields (20).
        b"mp4a" | b"Opus" | b"fLaC" => Some(28),
        _ => None,
    }
}

/// A sample entry's type and its child boxes (after the fields of its kind).
fn sample_entry_children(entry: &[u8]) -> Result<(fmp4::BoxHeader, &[u8]), CodecStringError> {
    let header = fmp4::parse_box_header(entry)?.ok_or_else(|| Fmp4Error::Truncated("stsd".into()))?;
    let skip =
        sample_entry_fields(&header.kind).ok_or_else(|| CodecStringError::UnknownSampleEntry(header.kind_str()))?;
    let body = entry
        .get(header.header_len..)
        .and_then(|b| b.get(skip..))
        .ok_or_else(|| Fmp4Error::Truncated(header.kind_str()))?;
    Ok((header, body))
}

/// The `avcC` payload (AVCDecoderConfigurationRecord) of an `avc1`/`avc3` sample entry box.
pub fn avcc_of(entry: &[u8]) -> Result<&[u8], CodecStringError> {
    match sample_entry_children(entry)? {
        (header, body) if &header.kind == b"avc1" || &header.kind == b"avc3" => {
            fmp4::find_box(body, b"avcC")?.ok_or(CodecStringError::BadAvcC)
        }
        (header, _) => Err(CodecStringError::UnknownSampleEntry(header.kind_str())),
    }
}

/// The `hvcC` payload (HEVCDecoderConfigurationRecord) of an `hvc1`/`hev1` sample entry box.
pub fn hvcc_of(entry: &[u8]) -> Result<&[u8], CodecStringError> {
    match sample_entry_children(entry)? {
        (header, body) if &header.kind == b"hvc1" || &header.kind == b"hev1" => {
            fmp4::find_box(body, b"hvcC")?.ok_or(CodecStringError::BadHvcC("none".into()))
        }
        (header, _) => Err(CodecStringError::UnknownSampleEntry(header.kind_str())),
    }
}

/// The codec string of one sample entry box (`avc1`, `mp4a`, ...), header included.
pub fn from_sample_entry(entry: &[u8]) -> Result<String, CodecStringError> {
    let (header, body) = sample_entry_children(entry)?;
    let kind = header.kind;
    let unknown = || CodecStringError::UnknownSampleEntry(header.kind_str());
    match &kind {
        b"avc1" | b"avc3" => {
            let name = from_avcc(avcc_of(entry)?)?;
            Ok(name.replacen("avc1", std::str::from_utf8(&kind).unwrap_or("avc1"), 1))
        }
        b"hvc1" | b"hev1" => {
            let record =
                crate::hevc::parse_hvcc(hvcc_of(entry)?).map_err(|e| CodecStringError::BadHvcC(e.to_string()))?;
            Ok(record.ptl.codec_string(if &kind == b"hvc1" { "hvc1" } else { "hev1" }))
        }
        b"mp4a" => {
            let esds = fmp4::find_box(body, b"esds")?.ok_or(CodecStringError::BadEsds)?;
            from_esds(esds)
        }
        b"Opus" => Ok("opus".into()),
        b"fLaC" => Ok("flac".into()),
        _ => Err(unknown()),
    }
}

/// The full MIME type of an init segment, e.g. `video/mp4; codecs="avc1.64001F, mp4a.40.2"`, video first.
pub fn mime_type(tracks: &[TrackInfo]) -> Result<String, CodecStringError> {
    let mut ordered: Vec<&TrackInfo> = tracks.iter().filter(|t| t.kind != TrackKind::Other).collect();
    ordered.sort_by_key(|t| t.kind != TrackKind::Video);
    let codecs = ordered.iter().map(|t| from_sample_entry(&t.sample_entry)).collect::<Result<Vec<_>, _>>()?;
    let top = if ordered.iter().any(|t| t.kind == TrackKind::Video) { "video" } else { "audio" };
    Ok(format!("{top}/mp4; codecs=\"{}\"", codecs.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fmp4::tests::make_box;

    #[test]
    fn hevc_sample_entries_are_named_from_their_hvcc() {
        let record = include_bytes!("../testdata/hevc-main10.hvcc");
        for (kind, expected) in [(b"hvc1", "hvc1.2.4.L120.90"), (b"hev1", "hev1.2.4.L120.90")] {
            let entry = make_box(kind, &[vec![0; 78], make_box(b"hvcC", record)].concat());
            assert_eq!(from_sample_entry(&entry).unwrap(), expected);
        }
        let without = make_box(b"hvc1", &[0; 78]);
        assert_eq!(from_sample_entry(&without), Err(CodecStringError::BadHvcC("none".into())));
        let broken = make_box(b"hvc1", &[vec![0; 78], make_box(b"hvcC", &record[..30])].concat());
        assert!(matches!(from_sample_entry(&broken), Err(CodecStringError::BadHvcC(_))));
    }

    #[test]
    fn avcc_and_annex_b() {
        assert_eq!(from_avcc(&[1, 0x64, 0x00, 0x1f, 0xff]).unwrap(), "avc1.64001F");
        assert_eq!(from_avcc(&[0, 0x64, 0, 0x1f]), Err(CodecStringError::BadAvcC));
        assert_eq!(from_avcc(&[1, 0x64]), Err(CodecStringError::BadAvcC));

        // libx264's extradata: SEI-free SPS + PPS with 4- and 3-byte start codes.
        let x264 = [0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1e, 0xda, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80];
        assert_eq!(from_annex_b(&x264).unwrap(), "avc1.42C01E");
        let sei_first = [&[0u8, 0, 0, 1, 0x06, 0x05, 0x01][..], &x264].concat();
        assert_eq!(from_annex_b(&sei_first).unwrap(), "avc1.42C01E");
        assert_eq!(from_annex_b(&[0, 0, 1, 0x68, 1, 2]), Err(CodecStringError::NoSps));
        assert_eq!(from_annex_b(&[0, 0, 1, 0x67, 0x42]), Err(CodecStringError::NoSps));
        assert_eq!(from_annex_b(&[]), Err(CodecStringError::NoSps));
    }

    #[test]
    fn nal_split_handles_trailing_zeros() {
        let data = [0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x68, 3, 0, 0, 1, 0x65];
        let nals: Vec<&[u8]> = annex_b_nals(&data).collect();
        assert_eq!(nals, vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65][..]]);
    }

    fn esds_for(asc: &[u8], object_type: u8) -> Vec<u8> {
        let mut dsi = vec![0x05, asc.len() as u8];
        dsi.extend_from_slice(asc);
        let mut dcd = vec![0x04, 0x80, 0x80, 0x80, (13 + dsi.len()) as u8, object_type, 0x15];
        dcd.extend_from_slice(&[0; 11]);
        dcd.extend_from_slice(&dsi);
        let mut es = vec![0x03, (3 + dcd.len()) as u8, 0, 1, 0];
        es.extend_from_slice(&dcd);
        [vec![0, 0, 0, 0], es].concat()
    }

    #[test]
    fn esds_object_types() {
        assert_eq!(from_esds(&esds_for(&[0x11, 0x90], 0x40)).unwrap(), "mp4a.40.2");
        assert_eq!(from_esds(&esds_for(&[0x29, 0x90], 0x40)).unwrap(), "mp4a.40.5");
        // Escape value 31: 32 + 6 more bits (here 10 -> AOT 42, xHE-AAC).
        assert_eq!(from_esds(&esds_for(&[0xf9, 0x40], 0x40)).unwrap(), "mp4a.40.42");
        assert_eq!(from_esds(&esds_for(&[], 0x6b)).unwrap(), "mp4a.6B");
        assert_eq!(from_esds(&[0, 0, 0, 0, 0x04, 1, 0]), Err(CodecStringError::BadEsds));
        assert_eq!(from_esds(&esds_for(&[0x11, 0x90], 0x40)[..12]), Err(CodecStringError::BadEsds));
    }

    #[test]
    fn sample_entries_and_mime() {
        let avcc = make_box(b"avcC", &[1, 0x4d, 0x40, 0x1f, 0xff, 0xe1]);
        let avc1 = make_box(b"avc1", &[vec![0u8; 78], avcc].concat());
        let esds = make_box(b"esds", &esds_for(&[0x11, 0x90], 0x40));
        let mp4a = make_box(b"mp4a", &[vec![0u8; 28], esds].concat());
        let track = |kind, entry: &Vec<u8>| TrackInfo {
            track_id: 1,
            timescale: 1000,
            kind,
            sample_entry: entry.clone(),
            default_duration: 0,
            default_flags: 0,
        };
        let both = [track(TrackKind::Audio, &mp4a), track(TrackKind::Video, &avc1)];
        assert_eq!(mime_type(&both).unwrap(), "video/mp4; codecs=\"avc1.4D401F, mp4a.40.2\"");
        assert_eq!(mime_type(&both[1..]).unwrap(), "video/mp4; codecs=\"avc1.4D401F\"");
        let hevc = make_box(b"hvc1", &[0u8; 78]);
        assert_eq!(mime_type(&[track(TrackKind::Video, &hevc)]), Err(CodecStringError::BadHvcC("none".into())));
        let vp9 = make_box(b"vp09", &[0u8; 90]);
        assert_eq!(
            mime_type(&[track(TrackKind::Video, &vp9)]),
            Err(CodecStringError::UnknownSampleEntry("vp09".into()))
        );
        let short = make_box(b"avc1", &[0u8; 10]);
        assert!(mime_type(&[track(TrackKind::Video, &short)]).is_err());
    }
}
