//! Plain HTTP beside HTTPS on one port: which bytes open a TLS connection, where a plain page request is
//! sent instead, and the port a browser reached the gateway at. Pure, over what the request carries.

/// The first byte of a TLS record carrying a handshake (a ClientHello); no HTTP method starts with it.
pub const TLS_HANDSHAKE: u8 = 0x16;

/// The HTTPS URL for a plain-HTTP page request, or `None` to serve it as it is: with no usable `Host`
/// header, or one naming loopback, which browsers already treat as a secure context.
pub fn https_location(host: Option<&str>, path_and_query: &str) -> Option<String> {
    let host = host?.trim();
    // Only the characters of a host name or an address (and its port) go into the Location header.
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_');
    if host.is_empty() || !host.chars().all(plain) || is_loopback(host_name(host)) {
        return None;
    }
    let path = if path_and_query.starts_with('/') { path_and_query } else { "/" };
    Some(format!("https://{host}{path}"))
}

/// The port a browser used, from its `Host` header (`80` when it names none, as for `http://box/`).
pub fn host_port(host: Option<&str>) -> u16 {
    let Some(host) = host else { return 80 };
    let after_address = host.rfind(']').map_or(host, |end| &host[end..]);
    after_address.rsplit_once(':').and_then(|(_, port)| port.parse().ok()).unwrap_or(80)
}

/// The name or address of a `Host` header, without its port or brackets.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

fn is_loopback(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_page_requests_from_other_machines_go_to_https_on_the_same_host_and_port() {
        let cases: [(Option<&str>, &str, Option<&str>); 13] = [
            (Some("nas.lan:8080"), "/?url=builtin://testsrc", Some("https://nas.lan:8080/?url=builtin://testsrc")),
            (Some("nas.lan"), "/", Some("https://nas.lan/")),
            (Some("192.168.1.5:8080"), "/cams/", Some("https://192.168.1.5:8080/cams/")),
            (Some("[2001:db8::5]:8080"), "/", Some("https://[2001:db8::5]:8080/")),
            (Some("198.18.0.1:9"), "*", Some("https://198.18.0.1:9/")),
            // Loopback is a secure context already: served as it is.
            (Some("127.0.0.1:8080"), "/", None),
            (Some("127.9.9.9"), "/", None),
            (Some("localhost:8080"), "/", None),
            (Some("cams.localhost"), "/", None),
            (Some("[::1]:8080"), "/", None),
            // Nothing usable to redirect to.
            (None, "/", None),
            (Some(""), "/", None),
            (Some("evil.example\r\nSet-Cookie: a=b"), "/", None),
        ];
        for (host, path, expected) in cases {
            assert_eq!(https_location(host, path).as_deref(), expected, "{host:?} {path}");
        }
    }

    #[test]
    fn the_port_comes_from_the_host_header() {
        let cases = [
            (Some("nas.lan:8443"), 8443),
            (Some("nas.lan"), 80),
            (Some("[2001:db8::5]:9000"), 9000),
            (Some("[2001:db8::5]"), 80),
            (Some("nas.lan:x"), 80),
            (None, 80),
        ];
        for (host, port) in cases {
            assert_eq!(host_port(host), port, "{host:?}");
        }
    }
}
