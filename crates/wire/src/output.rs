//! What a browser is told about a stream's output: its MIME type and size, and its renditions. The media
//! layer fills these in from the real init segment; the protocol carries them in describe replies.

use serde::{Deserialize, Serialize};

/// What happens to one track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackMode {
    /// Remuxed as it is.
    Copy,
    /// Decoded and re-encoded.
    Transcode,
}

/// Facts about the output stream that a player needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputInfo {
    /// Exact MIME type with RFC 6381 codecs, from the init segment.
    #[serde(rename = "mimeCodec")]
    pub mime_codec: String,
    /// Video width.
    pub width: u32,
    /// Video height.
    pub height: u32,
    /// Nominal frame rate.
    pub fps: f64,
    /// Whether there is an audio track.
    pub has_audio: bool,
    /// Video copied or transcoded.
    pub video: TrackMode,
    /// Audio copied or transcoded (none without audio).
    pub audio: Option<TrackMode>,
}

/// A rendition as a player chooses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenditionInfo {
    /// Its name (`main` is the stream's own output).
    pub name: String,
    /// Exact MIME type with RFC 6381 codecs.
    #[serde(rename = "mimeCodec")]
    pub mime_codec: String,
    /// Video width.
    pub width: u32,
    /// Video height.
    pub height: u32,
    /// Nominal frame rate.
    pub fps: f64,
    /// Its video bitrate in kbit/s: the configured one, else measured (absent until known).
    pub bitrate_kbps: Option<u32>,
}

/// The sample entry of a MIME type's first codec: `video/mp4; codecs="hvc1.1.6.L93.B0, mp4a.40.2"` -> `hvc1`.
pub fn video_codec(mime: &str) -> &str {
    let codecs = mime.split_once("codecs=").map_or("", |(_, c)| c.trim_start_matches('"'));
    let first = codecs.split([',', '"']).next().unwrap_or("").trim();
    first.split('.').next().unwrap_or("")
}

/// Who gets which shape of a stream, a line each: `main` (its video `copied` or converted, when known) and
/// each other rendition, converted while watched; an H.264 rendition at the size of a `main` in another codec
/// is the one for browsers that do not decode that codec, and for version 1 clients.
pub fn who_gets_what(main: &RenditionInfo, copied: Option<bool>, others: &[RenditionInfo]) -> Vec<String> {
    let h264 = is_h264(&main.mime_codec);
    let how = match copied {
        Some(true) => ", video copied",
        Some(false) => ", video converted",
        None => "",
    };
    let who = if h264 { "every browser" } else { "browsers that decode it" };
    let mut lines = vec![format!("main ({}{how}): {who}", video_codec(&main.mime_codec))];
    let repeat = h264_repeat(&[std::slice::from_ref(main), others].concat()).map(|r| r.name.clone());
    for r in others {
        let who = if repeat.as_ref() == Some(&r.name) {
            "browsers that do not decode main, and version 1 clients"
        } else {
            "pages that pick it"
        };
        lines.push(format!(
            "{} ({}x{}, {}, video converted while watched): {who}",
            r.name, r.width, r.height, r.mime_codec
        ));
    }
    lines
}

/// Whether a MIME type's video is H.264 (`avc1`, `avc3`), which every browser decodes.
pub fn is_h264(mime: &str) -> bool {
    matches!(video_codec(mime), "avc1" | "avc3")
}

/// What a version 1 client gets instead of `main` (listed first): when `main` is not H.264 (an HEVC camera
/// copied), a rendition in H.264 at `main`'s size. Version 1 has no renditions, and its clients were always
/// given H.264.
pub fn h264_repeat(renditions: &[RenditionInfo]) -> Option<&RenditionInfo> {
    let (main, others) = renditions.split_first()?;
    if is_h264(&main.mime_codec) {
        return None;
    }
    others.iter().find(|r| is_h264(&r.mime_codec) && r.width == main.width && r.height == main.height)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendition(name: &str, codec: &str, width: u32, height: u32) -> RenditionInfo {
        let mime_codec = format!("video/mp4; codecs=\"{codec}, mp4a.40.2\"");
        RenditionInfo { name: name.into(), mime_codec, width, height, fps: 30.0, bitrate_kbps: None }
    }

    #[test]
    fn version_1_clients_get_an_h264_repeat_of_a_main_in_another_codec() {
        assert_eq!(video_codec("video/mp4; codecs=\"hvc1.1.6.L93.B0, mp4a.40.2\""), "hvc1");
        assert_eq!(video_codec("video/mp4; codecs=avc1.42C01E"), "avc1");
        assert_eq!(video_codec("video/mp4"), "");
        let hevc = rendition("main", "hvc1.1.6.L120.90", 1920, 1080);
        let repeat = rendition("h264", "avc1.640028", 1920, 1080);
        let low = rendition("low", "avc1.42C01E", 640, 360);
        let name = |list: &[RenditionInfo]| h264_repeat(list).map(|r| r.name.clone());
        assert_eq!(name(&[hevc.clone(), low.clone(), repeat.clone()]), Some("h264".into()));
        assert_eq!(name(&[hevc.clone(), low.clone()]), None, "no H.264 at main's size: main");
        assert_eq!(
            name(&[rendition("main", "avc1.64001F", 1920, 1080), repeat.clone()]),
            None,
            "main is H.264 already"
        );
        assert_eq!(name(std::slice::from_ref(&hevc)), None);
        assert_eq!(name(&[]), None);

        let lines = who_gets_what(&hevc, Some(true), &[low.clone(), repeat.clone()]);
        assert_eq!(lines[0], "main (hvc1, video copied): browsers that decode it");
        assert!(lines[1].starts_with("low (640x360, ") && lines[1].ends_with("pages that pick it"), "{lines:?}");
        assert!(lines[2].starts_with("h264 (1920x1080, ") && lines[2].ends_with("and version 1 clients"), "{lines:?}");
        let h264_main = rendition("main", "avc1.64001F", 1920, 1080);
        assert_eq!(who_gets_what(&h264_main, None, &[]), ["main (avc1): every browser"]);
    }
}
