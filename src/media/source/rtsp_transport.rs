//! Which RTSP lower transports to try for a setting, when a failure means "try the next one", and what the
//! final error tells the person. Pure: the opening itself is in `source/mod.rs`.
//!
//! `auto` tries TCP first (it crosses NAT and firewalls and loses nothing), then UDP when the camera answered
//! but refused TCP: Debian's rtsp-server-perl, for one, serves RTP over UDP only and answers a TCP SETUP with
//! `400 Bad Request`. FFmpeg's own multi-transport setting (`rtsp_transport=udp+tcp`) tries UDP first and moves
//! on only after `461 Unsupported Transport`, so it does not cover such a camera.

use crate::media::config::RtspTransport;
use crate::media::error::MediaError;
use ffmpeg_next as ffmpeg;

impl RtspTransport {
    /// The value of libavformat's `rtsp_transport` option (`auto` is never passed on).
    pub fn ffmpeg_name(self) -> &'static str {
        match self {
            RtspTransport::Udp => "udp",
            RtspTransport::Tcp | RtspTransport::Auto => "tcp",
        }
    }

    fn shown(self) -> &'static str {
        match self {
            RtspTransport::Udp => "RTSP/UDP",
            RtspTransport::Tcp | RtspTransport::Auto => "RTSP/TCP",
        }
    }
}

/// The transports to try, in order.
pub fn attempts(setting: RtspTransport) -> &'static [RtspTransport] {
    match setting {
        RtspTransport::Auto => &[RtspTransport::Tcp, RtspTransport::Udp],
        RtspTransport::Tcp => &[RtspTransport::Tcp],
        RtspTransport::Udp => &[RtspTransport::Udp],
    }
}

/// Whether an open failed because the camera answered and refused the transport, so that another may work:
/// an RTSP error status other than the authorisation and path ones (which any transport meets), or a reply that
/// does not match the transport asked for. Network failures and timeouts are not: UDP needs the same RTSP
/// connection first.
pub fn refused(e: &ffmpeg::Error) -> bool {
    use ffmpeg::Error as E;
    matches!(e, E::HttpBadRequest | E::HttpOther4xx | E::HttpServerError | E::InvalidData)
}

/// The error of the last attempt, saying which transports were tried and, when the transport may be at fault,
/// what to change; `failures` holds each attempt in order, with whether the camera refused the transport.
pub fn explain(setting: RtspTransport, failures: Vec<(RtspTransport, bool, MediaError)>) -> MediaError {
    let tried: Vec<String> = failures.iter().map(|(t, _, e)| format!("over {}: {}", t.shown(), reason(e))).collect();
    let Some((_, refused, last)) = failures.into_iter().last() else {
        return MediaError::Processing("no RTSP transport to try".into());
    };
    let timed_out = matches!(last, MediaError::Timeout(_));
    let hint = match setting {
        RtspTransport::Auto if tried.len() > 1 => {
            Some("the camera refused TCP and UDP: check its RTSP settings, or try probe --rtsp-transport")
        }
        RtspTransport::Tcp if refused => Some(
            "the camera may serve RTP over UDP only: set rtsp_transport = \"udp\" or \"auto\" \
             (probe: --rtsp-transport udp)",
        ),
        RtspTransport::Udp if timed_out || refused => Some(
            "UDP may be blocked between here and the camera, or it may not serve UDP: set rtsp_transport = \
             \"tcp\" or \"auto\" (probe: --rtsp-transport tcp)",
        ),
        _ => None,
    };
    let detail = match hint {
        Some(hint) => format!("{}; {hint}", tried.join(", then ")),
        None => tried.join(", then "),
    };
    match last {
        MediaError::SourceUnreachable(_) => MediaError::SourceUnreachable(detail),
        MediaError::Timeout(_) => MediaError::Timeout(detail),
        MediaError::Unsupported(_) => MediaError::Unsupported(detail),
        // Stopped, ended, or an error that names no cause: nothing to add.
        other => other,
    }
}

/// What an attempt's error says, without the variant's own prefix (the final error adds it once).
fn reason(e: &MediaError) -> String {
    match e {
        MediaError::SourceUnreachable(m) | MediaError::Timeout(m) | MediaError::Unsupported(m) => m.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RtspTransport::{Auto, Tcp, Udp};

    fn unreachable(m: &str) -> MediaError {
        MediaError::SourceUnreachable(m.into())
    }

    #[test]
    fn auto_tries_tcp_then_udp() {
        assert_eq!(attempts(Auto), &[Tcp, Udp]);
        assert_eq!(attempts(Tcp), &[Tcp]);
        assert_eq!(attempts(Udp), &[Udp]);
        assert_eq!((Auto.ffmpeg_name(), Tcp.ffmpeg_name(), Udp.ffmpeg_name()), ("tcp", "tcp", "udp"));
    }

    #[test]
    fn only_a_refusal_of_the_transport_moves_on() {
        for e in [ffmpeg::Error::HttpBadRequest, ffmpeg::Error::HttpOther4xx, ffmpeg::Error::HttpServerError] {
            assert!(refused(&e), "{e}");
        }
        for e in [
            ffmpeg::Error::HttpUnauthorized,
            ffmpeg::Error::HttpForbidden,
            ffmpeg::Error::HttpNotFound,
            ffmpeg::Error::Exit,
            ffmpeg::Error::Other { errno: ffmpeg::error::ECONNREFUSED },
            ffmpeg::Error::Other { errno: ffmpeg::error::ETIMEDOUT },
        ] {
            assert!(!refused(&e), "{e}");
        }
    }

    #[test]
    fn errors_name_the_transports_and_what_to_change() {
        let tcp_refused = (Tcp, true, unreachable("Server returned 400 Bad Request (opening the source)"));
        let e = explain(Tcp, vec![tcp_refused.clone()]);
        assert_eq!(
            e.to_string(),
            "source unreachable: over RTSP/TCP: Server returned 400 Bad Request (opening the source); the camera \
             may serve RTP over UDP only: set rtsp_transport = \"udp\" or \"auto\" (probe: --rtsp-transport udp)"
        );
        let e = explain(Auto, vec![tcp_refused, (Udp, false, MediaError::Timeout("no packets (opening)".into()))]);
        assert!(matches!(e, MediaError::Timeout(_)), "the last attempt's kind: {e:?}");
        let text = e.to_string();
        assert!(text.starts_with("source timed out: over RTSP/TCP: Server returned 400"), "{text}");
        assert!(text.contains(", then over RTSP/UDP: no packets (opening); the camera refused TCP and UDP"), "{text}");

        let e = explain(Udp, vec![(Udp, false, MediaError::Timeout("no packets".into()))]).to_string();
        assert!(e.contains("over RTSP/UDP: no packets; UDP may be blocked") && e.contains("\"tcp\" or \"auto\""));

        // Not the transport's fault: the transport is named, nothing to change is suggested.
        let e = explain(Auto, vec![(Tcp, false, unreachable("connection refused (opening the source)"))]);
        assert_eq!(e.to_string(), "source unreachable: over RTSP/TCP: connection refused (opening the source)");
        assert_eq!(explain(Auto, vec![(Tcp, false, MediaError::Stopped)]), MediaError::Stopped);
    }
}
