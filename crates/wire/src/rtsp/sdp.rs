//! The SDP of a camera's DESCRIBE (RFC 4566), read for talking back: the ONVIF backchannel is an audio stream
//! the camera receives, marked `a=sendonly` in its SDP (ONVIF Streaming Specification 5.3: the direction is
//! the client's), offered only to a DESCRIBE that says `Require: www.onvif.org/ver20/backchannel`.

/// The header a DESCRIBE, SETUP and PLAY carry to get and use the backchannel.
pub const REQUIRE_BACKCHANNEL: &str = "www.onvif.org/ver20/backchannel";

/// A media section's direction attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `sendrecv`, or none given.
    SendRecv,
    /// `sendonly`: in an ONVIF SDP, the client sends (the backchannel).
    SendOnly,
    /// `recvonly`: the client receives.
    RecvOnly,
    /// `inactive`.
    Inactive,
}

/// An `a=rtpmap` line (or a static payload type's defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// The RTP payload type.
    pub payload_type: u8,
    /// The encoding name, upper case (`PCMU`, `MPEG4-GENERIC`).
    pub encoding: String,
    /// The RTP clock rate, Hz.
    pub clock_rate: u32,
    /// Audio channels (1 where not given).
    pub channels: u8,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// `audio`, `video`, `application`.
    pub kind: String,
    /// The payload types in the order the camera prefers them.
    pub payload_types: Vec<u8>,
    /// Its direction (the session's where it has none of its own).
    pub direction: Direction,
    /// Its `a=control` URL, as written.
    pub control: Option<String>,
    /// Its `a=rtpmap` lines.
    pub rtpmaps: Vec<RtpMap>,
    /// Its `a=fmtp` lines: payload type and parameters.
    pub fmtps: Vec<(u8, String)>,
}

/// A session description: the session's control URL and its media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    /// The session-level `a=control`.
    pub control: Option<String>,
    /// The `m=` sections in order.
    pub media: Vec<Media>,
}

fn direction(attribute: &str) -> Option<Direction> {
    match attribute {
        "sendrecv" => Some(Direction::SendRecv),
        "sendonly" => Some(Direction::SendOnly),
        "recvonly" => Some(Direction::RecvOnly),
        "inactive" => Some(Direction::Inactive),
        _ => None,
    }
}

/// Reads an SDP. Lenient, as cameras' SDPs are: lines it does not know or cannot read are skipped.
pub fn parse(bytes: &[u8]) -> Sdp {
    let text = String::from_utf8_lossy(bytes);
    let mut sdp = Sdp { control: None, media: Vec::new() };
    let mut session_direction = Direction::SendRecv;
    let mut media_directions: Vec<Option<Direction>> = Vec::new();
    for line in text.lines().map(str::trim) {
        let Some((kind, value)) = line.split_once('=') else { continue };
        match kind {
            "m" => {
                let mut words = value.split_whitespace();
                let kind = words.next().unwrap_or_default().to_string();
                let payload_types = words.skip(2).filter_map(|w| w.parse::<u8>().ok()).collect();
                sdp.media.push(Media {
                    kind,
                    payload_types,
                    direction: Direction::SendRecv,
                    control: None,
                    rtpmaps: Vec::new(),
                    fmtps: Vec::new(),
                });
                media_directions.push(None);
            }
            "a" => {
                let (name, rest) = value.split_once(':').unwrap_or((value, ""));
                let Some(media) = sdp.media.last_mut() else {
                    match (name, direction(name)) {
                        ("control", _) => sdp.control = Some(rest.trim().to_string()),
                        (_, Some(d)) => session_direction = d,
                        _ => {}
                    }
                    continue;
                };
                match name {
                    "control" => media.control = Some(rest.trim().to_string()),
                    "rtpmap" => media.rtpmaps.extend(rtpmap(rest)),
                    "fmtp" => {
                        if let Some((pt, params)) = rest.split_once(' ') {
                            if let Ok(pt) = pt.trim().parse() {
                                media.fmtps.push((pt, params.trim().to_string()));
                            }
                        }
                    }
                    _ => {
                        if let (Some(d), Some(slot)) = (direction(name), media_directions.last_mut()) {
                            *slot = Some(d);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    for (media, own) in sdp.media.iter_mut().zip(media_directions) {
        media.direction = own.unwrap_or(session_direction);
    }
    sdp
}

/// `96 MPEG4-GENERIC/16000/1`.
fn rtpmap(value: &str) -> Option<RtpMap> {
    let (pt, format) = value.trim().split_once(' ')?;
    let mut parts = format.trim().split('/');
    let encoding = parts.next()?.to_ascii_uppercase();
    let clock_rate = parts.next()?.parse().ok()?;
    let channels = parts.next().map_or(Some(1), |c| c.parse().ok())?;
    Some(RtpMap { payload_type: pt.parse().ok()?, encoding, clock_rate, channels })
}

/// A codec a camera's backchannel takes that the server can send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TalkCodec {
    /// G.711 µ-law.
    Pcmu,
    /// G.711 A-law.
    Pcma,
    /// AAC (`mpeg4-generic`, RFC 3640's AAC-hbr mode), with its AudioSpecificConfig.
    Aac {
        /// The `config=` of its fmtp, as bytes.
        config: Vec<u8>,
    },
}

impl TalkCodec {
    /// Its name as `probe` and the describe reply give it.
    pub fn name(&self) -> &'static str {
        match self {
            TalkCodec::Pcmu => "PCMU",
            TalkCodec::Pcma => "PCMA",
            TalkCodec::Aac { .. } => "AAC",
        }
    }
}

/// The backchannel of a camera's SDP, as the server would use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backchannel {
    /// The URL to SETUP it with.
    pub control: String,
    /// The RTP payload type to send.
    pub payload_type: u8,
    /// The codec.
    pub codec: TalkCodec,
    /// The RTP clock rate (the sample rate), Hz.
    pub clock_rate: u32,
    /// Channels.
    pub channels: u8,
}

/// The map of payload type `pt` in `media`: its `a=rtpmap`, or a static type's (RFC 3551: 0 PCMU, 8 PCMA).
fn map_of(media: &Media, pt: u8) -> Option<RtpMap> {
    media.rtpmaps.iter().find(|m| m.payload_type == pt).cloned().or(match pt {
        0 => Some(RtpMap { payload_type: 0, encoding: "PCMU".into(), clock_rate: 8000, channels: 1 }),
        8 => Some(RtpMap { payload_type: 8, encoding: "PCMA".into(), clock_rate: 8000, channels: 1 }),
        _ => None,
    })
}

/// An fmtp's `config=` (hex) as bytes.
fn aac_config(params: &str) -> Option<Vec<u8>> {
    let hex = params.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("config").then(|| v.trim())
    })?;
    if hex.is_empty() || hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

/// Resolves a control attribute against the base URL (RFC 2326 C.1.1): absolute as it is, `*` the base
/// itself, else relative to the base.
pub fn control_url(base: &str, control: Option<&str>) -> String {
    match control {
        None | Some("*") | Some("") => base.to_string(),
        Some(c) if c.contains("://") => c.to_string(),
        Some(c) if base.ends_with('/') => format!("{base}{c}"),
        Some(c) => format!("{base}/{c}"),
    }
}

/// The first audio section the client may send on (`sendonly`) with a codec the server can send, in the
/// camera's order of preference; `base` is the Content-Base (or the URL described). None: no backchannel.
pub fn backchannel(sdp: &Sdp, base: &str) -> Option<Backchannel> {
    let base = sdp.control.as_deref().filter(|c| c.contains("://")).unwrap_or(base);
    sdp.media.iter().filter(|m| m.kind == "audio" && m.direction == Direction::SendOnly).find_map(|media| {
        media.payload_types.iter().find_map(|&pt| {
            let map = map_of(media, pt)?;
            let codec = match map.encoding.as_str() {
                "PCMU" => TalkCodec::Pcmu,
                "PCMA" => TalkCodec::Pcma,
                "MPEG4-GENERIC" => {
                    let params = media.fmtps.iter().find(|(p, _)| *p == pt).map(|(_, p)| p.as_str())?;
                    let hbr = params.to_ascii_lowercase().contains("mode=aac-hbr");
                    TalkCodec::Aac { config: aac_config(params).filter(|_| hbr)? }
                }
                _ => return None,
            };
            Some(Backchannel {
                control: control_url(base, media.control.as_deref()),
                payload_type: pt,
                codec,
                clock_rate: map.clock_rate,
                channels: map.channels,
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ONVIF camera's answer to a DESCRIBE with the backchannel required (the shape of GStreamer's
    /// RTSPOnvifMediaFactory's and of doorbells').
    const ONVIF: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=Session\r\nt=0 0\r\na=control:*\r\n\
        m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:stream=0\r\na=recvonly\r\n\
        m=audio 0 RTP/AVP 0\r\na=control:stream=1\r\na=recvonly\r\n\
        m=audio 0 RTP/AVP 8 0\r\na=rtpmap:8 PCMA/8000\r\na=control:stream=2\r\na=sendonly\r\n";

    #[test]
    fn the_sendonly_audio_section_is_the_backchannel_in_the_cameras_order() {
        let sdp = parse(ONVIF.as_bytes());
        assert_eq!(sdp.media.len(), 3);
        assert_eq!(sdp.media[0].direction, Direction::RecvOnly);
        let b = backchannel(&sdp, "rtsp://cam/live/").expect("a backchannel");
        assert_eq!(
            b,
            Backchannel {
                control: "rtsp://cam/live/stream=2".into(),
                payload_type: 8,
                codec: TalkCodec::Pcma,
                clock_rate: 8000,
                channels: 1
            }
        );
    }

    #[test]
    fn a_camera_without_one_has_none() {
        let plain = ONVIF.replace("a=sendonly", "a=recvonly");
        assert_eq!(backchannel(&parse(plain.as_bytes()), "rtsp://cam/live"), None);
        // A sendonly section of a codec the server cannot send (G.726) is none either.
        let g726 = "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 G726-32/8000\r\na=sendonly\r\n";
        assert_eq!(backchannel(&parse(g726.as_bytes()), "rtsp://cam/live"), None);
    }

    #[test]
    fn aac_in_hbr_mode_with_its_config() {
        let aac = "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 mpeg4-generic/16000/1\r\n\
            a=fmtp:97 streamtype=5; profile-level-id=15; mode=AAC-hbr; config=1408; sizeLength=13; indexLength=3\r\n\
            a=control:rtsp://cam/back\r\na=sendonly\r\n";
        let b = backchannel(&parse(aac.as_bytes()), "rtsp://cam/live").expect("AAC");
        assert_eq!(b.codec, TalkCodec::Aac { config: vec![0x14, 0x08] });
        assert_eq!((b.clock_rate, b.control.as_str()), (16000, "rtsp://cam/back"));
        let no_config = aac.replace("config=1408; ", "");
        assert_eq!(backchannel(&parse(no_config.as_bytes()), "rtsp://cam/live"), None);
    }

    #[test]
    fn session_direction_applies_where_a_section_has_none() {
        let sdp = parse(b"v=0\na=sendonly\nm=audio 0 RTP/AVP 0\na=control:track1\n");
        let b = backchannel(&sdp, "rtsp://cam/live").expect("PCMU by its static type");
        assert_eq!((b.codec, b.control.as_str()), (TalkCodec::Pcmu, "rtsp://cam/live/track1"));
    }

    #[test]
    fn control_urls() {
        let table = [
            ("rtsp://a/b", None, "rtsp://a/b"),
            ("rtsp://a/b", Some("*"), "rtsp://a/b"),
            ("rtsp://a/b", Some("t1"), "rtsp://a/b/t1"),
            ("rtsp://a/b/", Some("t1"), "rtsp://a/b/t1"),
            ("rtsp://a/b", Some("rtsp://c/d"), "rtsp://c/d"),
        ];
        for (base, control, want) in table {
            assert_eq!(control_url(base, control), want, "{base} {control:?}");
        }
    }
}
