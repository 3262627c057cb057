//! An `rtsp://` URL split for a session of its own: where to connect, the URL to put in requests (without the
//! login, which goes in `Authorization` instead) and the login, percent-decoded.

/// A camera's RTSP URL, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtspUrl {
    /// The URL without its user information, as requests name it.
    pub request: String,
    /// The host (an IPv6 address without its brackets).
    pub host: String,
    /// The port (554 where not given).
    pub port: u16,
    /// The login, if the URL has one: user and password, percent-decoded.
    pub login: Option<(String, String)>,
}

/// Why a URL cannot be opened as RTSP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not `rtsp://` (RTSPS and the others are not spoken here).
    #[error("talking back needs an rtsp:// camera URL")]
    Scheme,
    /// No host, or a port that is not a number.
    #[error("the camera URL has no host or a bad port")]
    Authority,
}

/// `%41` as `A`; a `%` not followed by two hex digits stays as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits `url`.
pub fn parse(url: &str) -> Result<RtspUrl, UrlError> {
    let rest = url.trim();
    let scheme_end = rest.find("://").ok_or(UrlError::Scheme)?;
    if !rest[..scheme_end].eq_ignore_ascii_case("rtsp") {
        return Err(UrlError::Scheme);
    }
    let rest = &rest[scheme_end + 3..];
    let (authority, path) = rest.find(['/', '?']).map_or((rest, ""), |at| rest.split_at(at));
    let (userinfo, hostport) = authority.rsplit_once('@').map_or((None, authority), |(u, h)| (Some(u), h));
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or(UrlError::Authority)?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::Authority);
    }
    let port = match port {
        None | Some("") => 554,
        Some(p) => p.parse().map_err(|_| UrlError::Authority)?,
    };
    let login = userinfo.map(|u| {
        let (user, password) = u.split_once(':').unwrap_or((u, ""));
        (percent_decode(user), percent_decode(password))
    });
    Ok(RtspUrl { request: format!("rtsp://{hostport}{path}"), host: host.to_string(), port, login })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse("rtsp://admin:p%40ss@192.0.2.7:8554/Streaming/Channels/101?transport=tcp").unwrap();
        assert_eq!(u.request, "rtsp://192.0.2.7:8554/Streaming/Channels/101?transport=tcp");
        assert_eq!((u.host.as_str(), u.port), ("192.0.2.7", 8554));
        assert_eq!(u.login, Some(("admin".into(), "p@ss".into())));
        let v6 = parse("RTSP://[2001:db8::1]/live").unwrap();
        assert_eq!((v6.host.as_str(), v6.port, v6.login), ("2001:db8::1", 554, None));
        assert_eq!(v6.request, "rtsp://[2001:db8::1]/live");
        assert_eq!(parse("rtsp://user@cam").unwrap().login, Some(("user".into(), String::new())));
        assert_eq!(parse("http://cam/live"), Err(UrlError::Scheme));
        assert_eq!(parse("rtsp://cam:x/live"), Err(UrlError::Authority));
        assert_eq!(parse("rtsp:///live"), Err(UrlError::Authority));
        assert_eq!(percent_decode("100%"), "100%");
    }
}
