//! `[gateway]` and `[gateway.tls]`: where the page and the MQTT WebSocket are served, and how.

use super::{at_least, ConfigError};
use serde::Deserialize;
use std::path::PathBuf;

/// The gateway: serves the page over HTTP and bridges MQTT-over-WebSocket to the broker's TCP port byte for
/// byte, because mosquitto's own WebSocket listener is far too slow for video (docs/design.md, section 4).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Run the gateway; off leaves pages to a broker's own WebSocket listener.
    pub enabled: bool,
    /// Address and port to listen on.
    pub listen: String,
    /// A folder to serve at `/` instead of the page built into the binary (for a customised page).
    pub client_dir: Option<PathBuf>,
    /// Path of the MQTT WebSocket endpoint.
    pub path: String,
    /// Most WebSocket connections at once; more are refused with 503.
    pub max_connections: usize,
    /// Largest WebSocket message a browser may send, in bytes (pages send only small control packets).
    pub max_message_bytes: usize,
    /// Most connections (HTTP and WebSocket) from one client address; more are closed at once.
    pub max_connections_per_address: usize,
    /// Addresses not limited per address: a reverse proxy in front (every browser then comes from its
    /// address), and loopback.
    pub trusted_proxies: Vec<String>,
    /// Seconds a connection has for each HTTP request's headers, the first and every one after an idle
    /// keep-alive; a socket that sends nothing is closed then.
    pub request_timeout_secs: u64,
    /// Seconds from the WebSocket upgrade to a whole MQTT CONNECT.
    pub connect_timeout_secs: u64,
    /// Longest silence from a connected browser, in seconds; its MQTT keep-alive (times 1.5) shortens it.
    pub max_idle_secs: u64,
    /// HTTPS on the same port as plain HTTP.
    pub tls: GatewayTlsConfig,
}

/// The gateway's HTTPS: browsers give WebCodecs and AudioWorklet only to secure contexts, and a page opened
/// from another machine over plain HTTP is not one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayTlsConfig {
    /// Serve HTTPS (and WSS) on `gateway.listen`, beside plain HTTP.
    pub enabled: bool,
    /// PEM file of the certificate chain, leaf first; with `key_file`. Unset: a certificate made by the server.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the private key (PKCS#8, RSA or EC).
    pub key_file: Option<PathBuf>,
    /// Where the made certificate is kept across restarts, so a browser's exception for it stays valid.
    pub state_dir: Option<PathBuf>,
    /// Host names and addresses the made certificate names, beside the machine's own.
    pub names: Vec<String>,
    /// What a plain-HTTP page request from another machine gets.
    pub http: PlainHttp,
}

impl Default for GatewayTlsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cert_file: None,
            key_file: None,
            state_dir: None,
            names: Vec::new(),
            http: PlainHttp::Redirect,
        }
    }
}

/// What the gateway does with a plain-HTTP request for the page when it serves HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlainHttp {
    /// Redirect it to the same URL over HTTPS (loopback and trusted proxies excepted: those are secure already).
    Redirect,
    /// Serve the page; it plays with MediaSource and offers the HTTPS link.
    Serve,
}

impl GatewayTlsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                Err(ConfigError::invalid("gateway.tls.cert_file", "is set without gateway.tls.key_file"))
            }
            (None, Some(_)) => {
                Err(ConfigError::invalid("gateway.tls.key_file", "is set without gateway.tls.cert_file"))
            }
            _ => match self.names.iter().find(|n| n.trim().is_empty() || n.contains(char::is_whitespace)) {
                Some(bad) => {
                    Err(ConfigError::invalid("gateway.tls.names", format!("has {bad:?}, not a host name or address")))
                }
                None => Ok(()),
            },
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            client_dir: None,
            path: "/mqtt".into(),
            max_connections: 256,
            max_message_bytes: 64 * 1024,
            max_connections_per_address: 32,
            trusted_proxies: vec!["127.0.0.1".into(), "::1".into()],
            request_timeout_secs: 5,
            connect_timeout_secs: 5,
            max_idle_secs: 300,
            tls: GatewayTlsConfig::default(),
        }
    }
}

impl GatewayConfig {
    /// The listen address, checked at load.
    pub fn listen_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        self.listen.parse().map_err(|e| {
            ConfigError::invalid("gateway.listen", format!("{:?} is not an address:port ({e})", self.listen))
        })
    }

    /// The trusted proxies as addresses, checked at load.
    pub fn trusted_proxies(&self) -> Result<Vec<std::net::IpAddr>, ConfigError> {
        self.trusted_proxies
            .iter()
            .map(|a| {
                a.trim()
                    .parse::<std::net::IpAddr>()
                    .map(|ip| ip.to_canonical())
                    .map_err(|_| ConfigError::invalid("gateway.trusted_proxies", format!("{a:?} is not an IP address")))
            })
            .collect()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        self.trusted_proxies()?;
        if !self.path.starts_with('/') || self.path.len() < 2 {
            return Err(ConfigError::invalid("gateway.path", "must start with `/` and name a path, e.g. `/mqtt`"));
        }
        at_least("gateway.max_connections", self.max_connections, 1)?;
        at_least("gateway.max_connections_per_address", self.max_connections_per_address, 1)?;
        at_least("gateway.request_timeout_secs", self.request_timeout_secs as usize, 1)?;
        at_least("gateway.connect_timeout_secs", self.connect_timeout_secs as usize, 1)?;
        at_least("gateway.max_idle_secs", self.max_idle_secs as usize, 1)?;
        at_least("gateway.max_message_bytes", self.max_message_bytes, 1024)?;
        self.tls.validate()
    }
}
