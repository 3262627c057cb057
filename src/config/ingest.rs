//! Push ingest: endpoints an encoder (ffmpeg, OBS, a camera) connects to, each offered to pages as the named
//! source `ingest://NAME` while a publisher is connected. Pure: the endpoint settings and the RTMP server
//! session that checks the stream key; the listening and relaying live in `server::ingest`.

use crate::media::config::PipelineConfig;
use serde::Deserialize;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

/// The URL scheme pages use for pushed sources.
pub const SCHEME: &str = "ingest://";

/// Shortest stream key accepted: a key is the only thing between the internet and the server's encoders.
pub const MIN_KEY_LEN: usize = 12;
/// Longest stream key accepted (URLs and OBS's key field carry it).
pub const MAX_KEY_LEN: usize = 64;
/// How long a new connection has to prove itself by default (RTMP: a publish with the key; TCP: any data).
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 2000;

/// What a publisher speaks on an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestProtocol {
    /// A raw TCP byte stream: MPEG-TS, Matroska, fragmented MP4, FLV or NUT, detected from the bytes.
    Tcp,
    /// RTMP (`rtmp://host:port/app/KEY`, or OBS's server and stream key).
    Rtmp,
    /// SRT carrying MPEG-TS; the key is the SRT passphrase (libsrt refuses a wrong one in its handshake).
    Srt,
}

impl IngestProtocol {
    /// The scheme of this protocol's `listen` address.
    pub fn scheme(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Rtmp => "rtmp",
            Self::Srt => "srt",
        }
    }
}

/// One `[[ingest]]` entry as written in the configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIngest {
    /// Name; pages play `ingest://NAME`.
    pub name: String,
    /// `tcp://HOST:PORT`, `rtmp://HOST:PORT` or `srt://HOST:PORT`.
    pub listen: String,
    /// Stream key (RTMP) or passphrase (SRT) the publisher must present.
    #[serde(default)]
    pub key: Option<String>,
    /// A line about the source for the sources list.
    #[serde(default)]
    pub description: Option<String>,
    /// Milliseconds a new connection has to prove itself before it is closed (it holds nothing meanwhile).
    #[serde(default)]
    pub handshake_timeout_ms: Option<u64>,
    /// Settings merged over `[pipeline]` for this endpoint's stream (resolved by the config loader).
    #[serde(default)]
    pub pipeline: Option<toml::Table>,
}

/// A checked ingest endpoint.
#[derive(Clone, PartialEq)]
pub struct IngestEndpoint {
    /// Name; pages play `ingest://NAME`.
    pub name: String,
    /// Protocol publishers speak.
    pub protocol: IngestProtocol,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Required stream key, if any.
    pub key: Option<String>,
    /// A line about the source.
    pub description: Option<String>,
    /// How long a new connection has to prove itself (the key, or data) before it is closed.
    pub handshake_timeout: Duration,
    /// The global `[pipeline]` with this endpoint's `pipeline` table merged over it; `None` without one.
    pub pipeline: Option<PipelineConfig>,
}

// Endpoints end up in logs: never print the key.
impl fmt::Debug for IngestEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngestEndpoint")
            .field("name", &self.name)
            .field("protocol", &self.protocol)
            .field("listen", &self.listen)
            .field("key", &self.key.as_ref().map(|_| "***"))
            .finish()
    }
}

impl IngestEndpoint {
    /// Checks one entry; the error names what is wrong (the caller adds which entry).
    pub fn parse(raw: &RawIngest) -> Result<IngestEndpoint, String> {
        let name = raw.name.trim();
        if name.is_empty() || name.len() > 64 {
            return Err("name must be 1 to 64 characters".into());
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')) {
            return Err(format!("name {name:?} may hold only letters, digits, `-` and `_`"));
        }
        let (protocol, listen) = parse_listen(raw.listen.trim())?;
        let key = match raw.key.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(key) => Some(checked_key(key)?),
        };
        let loopback = listen.ip().is_loopback();
        match protocol {
            IngestProtocol::Tcp if key.is_some() => {
                return Err("a tcp endpoint cannot check a key (the publisher sends nothing but media); remove \
                            `key` and listen on a loopback address, or use rtmp"
                    .into());
            }
            IngestProtocol::Tcp if !loopback => {
                return Err(format!(
                    "a tcp endpoint has no stream key, so it must listen on a loopback address (127.0.0.1), not \
                     {}; use rtmp with a key for publishers on other machines",
                    listen.ip()
                ));
            }
            IngestProtocol::Rtmp | IngestProtocol::Srt if key.is_none() && !loopback => {
                return Err(format!(
                    "an {} endpoint on {} needs a `key` (at least {MIN_KEY_LEN} characters); only a loopback \
                     endpoint may go without",
                    protocol.scheme(),
                    listen.ip()
                ));
            }
            _ => {}
        }
        let handshake_ms = raw.handshake_timeout_ms.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT_MS);
        if !(100..=60_000).contains(&handshake_ms) {
            return Err("handshake_timeout_ms must be 100 to 60000".into());
        }
        Ok(IngestEndpoint {
            name: name.to_string(),
            protocol,
            listen,
            key,
            description: raw.description.clone(),
            handshake_timeout: Duration::from_millis(handshake_ms),
            pipeline: None,
        })
    }

    /// The URL pages play.
    pub fn url(&self) -> String {
        format!("{SCHEME}{}", self.name)
    }

    /// The URL libavformat listens on: for TCP and RTMP the relay's private Unix socket `socket` (the relay
    /// hands on the TCP bytes as they are, and a verified RTMP publisher's media as FLV), for SRT the endpoint.
    pub fn internal_url(&self, socket: &Path) -> String {
        match self.protocol {
            IngestProtocol::Tcp | IngestProtocol::Rtmp => format!("unix:{}", socket.display()),
            // SRT runs over UDP, which cannot be relayed like a TCP connection: libavformat listens on the
            // endpoint's own address (the passphrase goes in as an option, never in the URL).
            IngestProtocol::Srt => format!("srt://{}", self.listen),
        }
    }
}

/// The endpoint name an `ingest://NAME` URL names.
pub fn name_of(url: &str) -> Option<&str> {
    let rest = url.trim();
    let scheme = rest.get(..SCHEME.len())?;
    scheme.eq_ignore_ascii_case(SCHEME).then(|| &rest[SCHEME.len()..])
}

/// `tcp://HOST:PORT` or `rtmp://HOST:PORT` to a protocol and one socket address.
fn parse_listen(listen: &str) -> Result<(IngestProtocol, SocketAddr), String> {
    let usage = || format!("listen {listen:?} must be tcp://HOST:PORT, rtmp://HOST:PORT or srt://HOST:PORT");
    let (scheme, rest) = listen.split_once("://").ok_or_else(usage)?;
    let protocol = match scheme.to_ascii_lowercase().as_str() {
        "tcp" => IngestProtocol::Tcp,
        "rtmp" => IngestProtocol::Rtmp,
        "srt" => IngestProtocol::Srt,
        _ => return Err(usage()),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') || authority.contains('@') {
        return Err(usage());
    }
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()));
    if !has_port {
        return Err(format!("listen {listen:?} needs a port: {}://HOST:PORT", protocol.scheme()));
    }
    // An address is taken as it is; a host name (localhost, a container's name) resolves once, at load.
    let mut addrs = authority.to_socket_addrs().map_err(|e| format!("listen {listen:?}: {e}"))?;
    let addr = addrs.next().ok_or_else(|| format!("listen {listen:?} resolves to no address"))?;
    if addr.port() == 0 {
        return Err(format!("listen {listen:?} needs a port"));
    }
    Ok((protocol, addr))
}

/// A key publishers can type and URLs carry unchanged.
fn checked_key(key: &str) -> Result<String, String> {
    if key.len() < MIN_KEY_LEN || key.len() > MAX_KEY_LEN {
        return Err(format!("key must be {MIN_KEY_LEN} to {MAX_KEY_LEN} characters"));
    }
    if !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~')) {
        return Err("key may hold only letters, digits, `-`, `_`, `.` and `~`".into());
    }
    Ok(key.to_string())
}

/// Whether two addresses would compete for the same port.
pub fn same_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(listen: &str, key: Option<&str>) -> RawIngest {
        RawIngest {
            name: "studio".into(),
            listen: listen.into(),
            key: key.map(Into::into),
            description: None,
            handshake_timeout_ms: None,
            pipeline: None,
        }
    }

    #[test]
    fn accepts_loopback_tcp_and_keyed_rtmp() {
        let tcp = IngestEndpoint::parse(&raw("tcp://127.0.0.1:9000", None)).unwrap();
        assert_eq!((tcp.protocol, tcp.listen.port()), (IngestProtocol::Tcp, 9000));
        assert_eq!(tcp.url(), "ingest://studio");
        assert_eq!(tcp.internal_url(Path::new("/run/x/desk.sock")), "unix:/run/x/desk.sock");
        assert_eq!(tcp.handshake_timeout, Duration::from_secs(2));
        let rtmp = IngestEndpoint::parse(&raw("rtmp://0.0.0.0:1935", Some("abcdefgh-1234"))).unwrap();
        assert_eq!(rtmp.protocol, IngestProtocol::Rtmp);
        assert!(!rtmp.internal_url(Path::new("/run/x/s.sock")).contains("abcdefgh"), "the key is nowhere in it");
        assert!(!format!("{rtmp:?}").contains("abcdefgh"), "the key stays out of logs");
        assert!(IngestEndpoint::parse(&raw("rtmp://127.0.0.1:1935", None)).is_ok());
        assert!(IngestEndpoint::parse(&raw("tcp://localhost:9000", None)).is_ok());
    }

    #[test]
    fn refuses_endpoints_anyone_could_publish_to() {
        let err = |listen: &str, key: Option<&str>| IngestEndpoint::parse(&raw(listen, key)).unwrap_err();
        assert!(err("tcp://0.0.0.0:9000", None).contains("loopback"));
        assert!(err("tcp://127.0.0.1:9000", Some("abcdefgh-1234")).contains("cannot check a key"));
        assert!(err("rtmp://0.0.0.0:1935", None).contains("needs a `key`"));
        assert!(err("rtmp://0.0.0.0:1935", Some("short")).contains("12 to 64"));
        assert!(err("rtmp://0.0.0.0:1935", Some("has/slash/inside")).contains("only letters"));
        assert!(err("http://0.0.0.0:80", None).contains("must be tcp://"));
        assert!(err("udp://0.0.0.0:80", None).contains("srt://HOST:PORT"));
        assert!(err("srt://0.0.0.0:9000", None).contains("an srt endpoint on 0.0.0.0 needs a `key`"));
        let srt = IngestEndpoint::parse(&raw("srt://0.0.0.0:9000", Some("abcdefgh-1234"))).unwrap();
        assert_eq!(srt.internal_url(Path::new("/x")), "srt://0.0.0.0:9000");
        let slow = RawIngest { handshake_timeout_ms: Some(50), ..raw("tcp://127.0.0.1:9000", None) };
        assert!(IngestEndpoint::parse(&slow).unwrap_err().contains("100 to 60000"));
        assert!(
            err("tcp://127.0.0.1", None).contains("tcp://HOST:PORT")
                || err("tcp://127.0.0.1", None).contains("127.0.0.1")
        );
        assert!(err("tcp://127.0.0.1:0", None).contains("needs a port"));
        assert!(err("tcp://127.0.0.1:9000/path", None).contains("must be tcp://"));
        let bad_name = RawIngest { name: "a b".into(), ..raw("tcp://127.0.0.1:9000", None) };
        assert!(IngestEndpoint::parse(&bad_name).unwrap_err().contains("letters"));
    }

    #[test]
    fn reads_names_from_ingest_urls() {
        assert_eq!(name_of("ingest://studio"), Some("studio"));
        assert_eq!(name_of(" INGEST://studio "), Some("studio"));
        assert_eq!(name_of("rtsp://studio"), None);
        assert_eq!(name_of("ingest:/"), None);
    }

    #[test]
    fn port_conflicts() {
        let a: SocketAddr = "0.0.0.0:1935".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1935".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:1936".parse().unwrap();
        assert!(same_port(a, b));
        assert!(!same_port(b, c));
    }
}
