//! The server's TOML configuration (`mqtt-video serve --config FILE`): typed, checked at load, and every default
//! works, so the server runs with no file at all.

pub mod gateway;
pub mod homeassistant;
pub mod ingest;
pub mod snapshots;

use crate::media::config::PipelineConfig;
pub use gateway::{GatewayConfig, GatewayTlsConfig, PlainHttp};
use homeassistant::HomeAssistantConfig;
use ingest::{IngestEndpoint, RawIngest};
use mqtt_video_wire::policy::{AllowList, NamedSource, Policy, PolicyError};
use mqtt_video_wire::protocol::{self, RequestLimits};
use serde::Deserialize;
use snapshots::SnapshotConfig;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Smallest accepted `limits.max_request_bytes`: below it even a short play request would be refused.
pub const MIN_REQUEST_BYTES: usize = 256;

/// A configuration that cannot be used. Parse errors show the line and key; checks name the key path.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A problem in a file, with the file's path.
    #[error("{}: {inner}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// The problem.
        inner: Box<ConfigError>,
    },
    /// Not TOML, an unknown key, or a value of the wrong type; toml's message shows the line and the key.
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// A value that parses but cannot be used.
    #[error("{key} {message}")]
    Invalid {
        /// Dotted path of the key, such as `limits.max_streams`.
        key: String,
        /// What is wrong, starting with a verb (`must be at least 1`).
        message: String,
    },
    /// The allow-list or the named sources do not build a safe policy.
    #[error("{key}: {error}")]
    Policy {
        /// `allow.prefixes`, `allow.urls` or `sources`.
        key: &'static str,
        /// What is wrong.
        error: PolicyError,
    },
}

impl ConfigError {
    /// An error for a key whose value cannot be used.
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.into(), message: message.into() }
    }
}

/// The MQTT broker connection.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id; two servers with the same id disconnect each other.
    pub client_id: String,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// Password (needs a user name).
    pub password: Option<String>,
    /// MQTT keep-alive in seconds; 0 turns it off.
    pub keep_alive_secs: u16,
    /// Connect over TLS.
    pub tls: bool,
    /// PEM file of the CA that signed the broker's certificate; the system roots when unset (needs `tls`).
    pub ca_file: Option<PathBuf>,
    /// First delay before reconnecting to the broker, in milliseconds; doubles up to the maximum.
    pub reconnect_min_ms: u64,
    /// Longest delay between reconnect attempts, in milliseconds.
    pub reconnect_max_ms: u64,
    /// QoS of media and status messages: 0 (lowest latency) or 1.
    pub qos: u8,
    /// The broker's packet limit, when it has one: larger segments go in pieces that fit (0: no limit).
    pub max_packet_bytes: usize,
    /// The MQTT version: MQTT 5 where the broker takes it (`auto`), or always one of them.
    pub protocol: BrokerProtocol,
    /// Run a broker inside the process (for a first start) instead of connecting to `host`:`port`.
    pub embedded: bool,
    /// Where the embedded broker listens for the gateway and other MQTT clients.
    pub embedded_listen: SocketAddr,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: "mqtt-video".into(),
            username: None,
            password: None,
            keep_alive_secs: 30,
            tls: false,
            ca_file: None,
            reconnect_min_ms: 200,
            reconnect_max_ms: 10_000,
            qos: 0,
            max_packet_bytes: 0,
            protocol: BrokerProtocol::Auto,
            embedded: false,
            embedded_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
        }
    }
}

// The broker password must not reach logs.
impl fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("keep_alive_secs", &self.keep_alive_secs)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("reconnect_min_ms", &self.reconnect_min_ms)
            .field("reconnect_max_ms", &self.reconnect_max_ms)
            .field("qos", &self.qos)
            .field("max_packet_bytes", &self.max_packet_bytes)
            .field("protocol", &self.protocol)
            .field("embedded", &self.embedded)
            .field("embedded_listen", &self.embedded_listen)
            .finish()
    }
}

/// Which MQTT version the server speaks to its broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum BrokerProtocol {
    /// MQTT 5, or MQTT 3.1.1 when the broker turns MQTT 5 down before ever taking it.
    #[serde(rename = "auto")]
    Auto,
    /// MQTT 5 only.
    #[serde(rename = "5")]
    V5,
    /// MQTT 3.1.1 only.
    #[serde(rename = "3.1.1")]
    V311,
}

/// The smallest packet limit taken: a fragment's first piece carries its `moof` whole, and the control
/// messages (a describe reply, the sources list) go unsplit.
pub const MIN_PACKET_LIMIT: usize = 16 * 1024;

/// `{hostname}` and `{pid}` in a client id, replaced: one config file serves every instance of a pool
/// (MQTT brokers disconnect the older of two clients with the same id).
pub fn expand_client_id(template: &str, hostname: &str, pid: u32) -> String {
    template.replace("{hostname}", hostname).replace("{pid}", &pid.to_string())
}

impl BrokerConfig {
    /// The client id to connect with: `client_id` with `{hostname}` and `{pid}` filled in.
    pub fn effective_client_id(&self) -> String {
        let hostname = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        expand_client_id(&self.client_id, &hostname, std::process::id())
    }

    /// The keep-alive interval.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_secs.into())
    }

    /// The delay before reconnect attempt `attempt` (from 1).
    pub fn reconnect_delay(&self, attempt: u32) -> Duration {
        exponential(self.reconnect_min_ms, self.reconnect_max_ms, attempt)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.host.trim().is_empty() {
            return Err(ConfigError::invalid("broker.host", "must not be empty"));
        }
        if self.port == 0 {
            return Err(ConfigError::invalid("broker.port", "must not be 0"));
        }
        if self.client_id.is_empty() {
            return Err(ConfigError::invalid("broker.client_id", "must not be empty"));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(ConfigError::invalid("broker.password", "needs broker.username (MQTT 3.1.1)"));
        }
        if self.ca_file.is_some() && !self.tls {
            return Err(ConfigError::invalid("broker.ca_file", "is set but broker.tls is false"));
        }
        if self.qos > 1 {
            return Err(ConfigError::invalid("broker.qos", format!("must be 0 or 1, not {}", self.qos)));
        }
        if self.embedded && self.tls {
            return Err(ConfigError::invalid("broker.tls", "the embedded broker has no TLS (run mosquitto for it)"));
        }
        if self.embedded && self.username.is_some() {
            return Err(ConfigError::invalid(
                "broker.username",
                "the embedded broker has no logins (run mosquitto for them)",
            ));
        }
        if self.max_packet_bytes != 0 && self.max_packet_bytes < MIN_PACKET_LIMIT {
            return Err(ConfigError::invalid(
                "broker.max_packet_bytes",
                format!("must be 0 (no limit) or at least {MIN_PACKET_LIMIT}, not {}", self.max_packet_bytes),
            ));
        }
        check_backoff(
            "broker.reconnect_min_ms",
            self.reconnect_min_ms,
            "broker.reconnect_max_ms",
            self.reconnect_max_ms,
        )
    }
}

/// Where the control topics live.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    /// Control prefix: requests arrive on `<prefix>/describe`, `/play`, `/stop`.
    pub prefix: String,
    /// When set (e.g. `pages/`), reply topics must start with it: the broker's ACL gives each page its own
    /// topics there, and the server refuses any other reply topic too (defence in depth). Empty: any.
    pub reply_prefix: String,
    /// Everything about a stream goes under its own topics (`<prefix>/live/<id>/`), never to a reply topic,
    /// so that the broker's ACL on those topics decides who watches which camera: describe facts, statuses
    /// and join bursts go to the requester's place there, version 1 plays are refused, and the HTTP
    /// snapshots are off (docs/PROTOCOL.md, "Who may watch what").
    pub guarded: bool,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self { prefix: protocol::DEFAULT_PREFIX.into(), reply_prefix: String::new(), guarded: false }
    }
}

impl TopicsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        protocol::validate_prefix(&self.prefix).map_err(|e| ConfigError::invalid("topics.prefix", e.to_string()))?;
        if self.reply_prefix.is_empty() {
            return Ok(());
        }
        let Some(levels) = self.reply_prefix.strip_suffix('/') else {
            return Err(ConfigError::invalid("topics.reply_prefix", "must end with `/`"));
        };
        protocol::validate_prefix(levels).map_err(|e| ConfigError::invalid("topics.reply_prefix", e.to_string()))?;
        // A reply topic under the prefix would then be under the control topics, which is always refused.
        if protocol::validate_reply_topic(&format!("{}x", self.reply_prefix), &self.prefix).is_err() {
            return Err(ConfigError::invalid("topics.reply_prefix", "must not be under the control prefix"));
        }
        Ok(())
    }
}

/// Bounds on what clients can make the server do.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most live streams (sources) at once.
    pub max_streams: usize,
    /// Most viewers of one stream.
    pub max_viewers_per_stream: usize,
    /// Most viewers (reply topics) of one requester (a reply topic's parent, e.g. `pages/<client id>`).
    pub max_viewers_per_requester: usize,
    /// Most running streams one requester started (by a describe or play of a source nobody watched).
    pub max_streams_per_requester: usize,
    /// Largest request payload in bytes.
    pub max_request_bytes: usize,
    /// Seconds a stream with no viewers keeps running (a describe followed by a play reuses it).
    pub linger_secs: u64,
    /// A viewer must send its play again within this many seconds or it is ended (pages renew every 10 s);
    /// 0: only stop (or the page's last will) ends a viewer.
    pub viewer_timeout_secs: u64,
    /// Fragments queued for one viewer before whole GOPs are dropped for it.
    pub viewer_queue_fragments: usize,
    /// Requests per minute from one requester (reply topic parent, e.g. `pages/<client id>`); 0: no limit.
    pub requests_per_minute: u32,
    /// Requests per second from everyone together; above it requests are dropped unanswered. 0: no limit.
    pub requests_per_second: u32,
    /// CPU the running transcodes may use, in percent of one core (200 is two cores): a new stream that
    /// needs a transcode beyond it is refused with `overloaded`. 0: no limit. Default: 75 % of the cores.
    pub cpu_budget_percent: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_streams: 16,
            max_viewers_per_stream: 100,
            max_viewers_per_requester: 8,
            max_streams_per_requester: 4,
            max_request_bytes: protocol::DEFAULT_MAX_REQUEST_BYTES,
            linger_secs: 10,
            viewer_timeout_secs: 30,
            viewer_queue_fragments: 120,
            requests_per_minute: 120,
            requests_per_second: 200,
            cpu_budget_percent: default_budget_percent(),
        }
    }
}

impl LimitsConfig {
    /// How long a stream with no viewers keeps running.
    pub fn linger(&self) -> Duration {
        Duration::from_secs(self.linger_secs)
    }

    /// How long a viewer lasts without renewing its play, if that is required.
    pub fn viewer_timeout(&self) -> Option<Duration> {
        (self.viewer_timeout_secs > 0).then(|| Duration::from_secs(self.viewer_timeout_secs))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        at_least("limits.max_streams", self.max_streams, 1)?;
        at_least("limits.max_viewers_per_stream", self.max_viewers_per_stream, 1)?;
        at_least("limits.max_viewers_per_requester", self.max_viewers_per_requester, 1)?;
        at_least("limits.max_streams_per_requester", self.max_streams_per_requester, 1)?;
        at_least("limits.max_request_bytes", self.max_request_bytes, MIN_REQUEST_BYTES)?;
        at_least("limits.viewer_queue_fragments", self.viewer_queue_fragments, 1)
    }
}

/// How a failed source is retried while viewers wait.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts to reopen a failed source before its viewers get an error; 0 never gives up.
    pub max_attempts: u32,
    /// Delay before the first retry, in milliseconds; doubles each attempt.
    pub initial_backoff_ms: u64,
    /// Longest delay between retries, in milliseconds.
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self { max_attempts: 10, initial_backoff_ms: 500, max_backoff_ms: 10_000 }
    }
}

impl RetryConfig {
    /// The delay before retry `attempt` (from 1).
    pub fn backoff(&self, attempt: u32) -> Duration {
        exponential(self.initial_backoff_ms, self.max_backoff_ms, attempt)
    }

    /// Whether retry `attempt` (from 1) may still be made.
    pub fn allows(&self, attempt: u32) -> bool {
        self.max_attempts == 0 || attempt <= self.max_attempts
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_backoff("retry.initial_backoff_ms", self.initial_backoff_ms, "retry.max_backoff_ms", self.max_backoff_ms)
    }
}

/// Several `serve` instances against one broker (src/server/cluster.rs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Share the requests with the other instances that have it on (same config, unique client ids):
    /// each request is handled by exactly one of them.
    pub enabled: bool,
}

/// The retained statistics message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsConfig {
    /// Seconds between statistics messages; 0 publishes none.
    pub interval_secs: u64,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self { interval_secs: 5 }
    }
}

impl StatsConfig {
    /// The publishing interval, if statistics are on.
    pub fn interval(&self) -> Option<Duration> {
        (self.interval_secs > 0).then(|| Duration::from_secs(self.interval_secs))
    }
}

/// A named source with the pipeline settings it runs with, if they differ from the global ones.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceEntry {
    /// Name, URL and description.
    pub source: NamedSource,
    /// The global `[pipeline]` with this source's `pipeline` table merged over it; `None` without one.
    pub pipeline: Option<PipelineConfig>,
    /// Pages may talk to this camera's ONVIF backchannel (`talk = true`; an `rtsp://` source).
    pub talk: bool,
}

/// The whole configuration, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// MQTT broker connection.
    pub broker: BrokerConfig,
    /// Several instances on one broker.
    pub cluster: ClusterConfig,
    /// The page's HTTP server and WebSocket bridge to the broker.
    pub gateway: GatewayConfig,
    /// Control topics.
    pub topics: TopicsConfig,
    /// Bounds on streams, viewers and requests.
    pub limits: LimitsConfig,
    /// Source retries.
    pub retry: RetryConfig,
    /// Statistics publishing.
    pub stats: StatsConfig,
    /// Pipeline settings for every source without its own.
    pub pipeline: PipelineConfig,
    /// Sources offered by name, always allowed.
    pub sources: Vec<SourceEntry>,
    /// Further allowed URLs.
    pub allow: AllowList,
    /// Push ingest endpoints, each offered as `ingest://NAME` while a publisher is connected.
    pub ingest: Vec<IngestEndpoint>,
    /// JPEG snapshots of the named sources (`GET /snapshot/<id>.jpg`, Home Assistant).
    pub snapshots: SnapshotConfig,
    /// Home Assistant cameras by MQTT discovery.
    pub homeassistant: HomeAssistantConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            broker: BrokerConfig::default(),
            cluster: ClusterConfig::default(),
            gateway: GatewayConfig::default(),
            topics: TopicsConfig::default(),
            limits: LimitsConfig::default(),
            retry: RetryConfig::default(),
            stats: StatsConfig::default(),
            pipeline: PipelineConfig::default(),
            sources: default_sources()
                .into_iter()
                .map(|source| SourceEntry { source, pipeline: None, talk: false })
                .collect(),
            allow: AllowList::default(),
            ingest: Vec::new(),
            snapshots: SnapshotConfig::default(),
            homeassistant: HomeAssistantConfig::default(),
        }
    }
}

/// The default budget: three quarters of the machine's cores, in percent of one core (150 on 2 cores), so
/// that the broker, the server's own tasks and the machine keep a share.
pub fn default_budget_percent() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores as u32).saturating_mul(75)
}

/// The built-in test sources offered when the configuration lists none.
pub fn default_sources() -> Vec<NamedSource> {
    vec![
        NamedSource::new("Test pattern", "builtin://testsrc", "640x360, 30 fps, with a 1 kHz beep every second"),
        NamedSource::new("Test pattern 720p", "builtin://testsrc-720p", "1280x720, 30 fps, with a 1 kHz beep"),
        NamedSource::new("Test pattern (silent)", "builtin://testsrc-silent", "640x360, 30 fps, no audio"),
    ]
}

/// The file as written: per-source pipeline tables stay raw until merged over `[pipeline]`.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    broker: BrokerConfig,
    cluster: ClusterConfig,
    gateway: GatewayConfig,
    topics: TopicsConfig,
    limits: LimitsConfig,
    retry: RetryConfig,
    stats: StatsConfig,
    pipeline: PipelineConfig,
    /// `None` when the file has no sources, which keeps the built-in ones.
    sources: Option<Vec<RawSource>>,
    allow: AllowList,
    ingest: Vec<RawIngest>,
    snapshots: SnapshotConfig,
    homeassistant: HomeAssistantConfig,
}

/// One `[[sources]]` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: String,
    url: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    pipeline: Option<toml::Table>,
    #[serde(default)]
    talk: bool,
}

/// What an environment override's value must parse as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvKind {
    /// Taken as it is.
    Text,
    /// A whole number.
    Integer,
    /// `true` or `false` (also `1`, `0`, `yes`, `no`, `on`, `off`).
    Bool,
    /// Comma-separated words.
    List,
}

/// The settings people change most, overridable from the environment (containers): variable, key, kind.
pub const ENV_OVERRIDES: [(&str, &str, EnvKind); 15] = [
    ("MQTT_VIDEO_BROKER_HOST", "broker.host", EnvKind::Text),
    ("MQTT_VIDEO_BROKER_EMBEDDED", "broker.embedded", EnvKind::Bool),
    ("MQTT_VIDEO_BROKER_PORT", "broker.port", EnvKind::Integer),
    ("MQTT_VIDEO_BROKER_USERNAME", "broker.username", EnvKind::Text),
    ("MQTT_VIDEO_BROKER_PASSWORD", "broker.password", EnvKind::Text),
    ("MQTT_VIDEO_CLIENT_ID", "broker.client_id", EnvKind::Text),
    ("MQTT_VIDEO_GATEWAY_LISTEN", "gateway.listen", EnvKind::Text),
    ("MQTT_VIDEO_MODE", "pipeline.mode", EnvKind::Text),
    ("MQTT_VIDEO_VIDEO_PRESET", "pipeline.video.preset", EnvKind::Text),
    ("MQTT_VIDEO_VIDEO_CRF", "pipeline.video.crf", EnvKind::Integer),
    ("MQTT_VIDEO_VIDEO_MAX_HEIGHT", "pipeline.video.max_height", EnvKind::Integer),
    ("MQTT_VIDEO_MAX_STREAMS", "limits.max_streams", EnvKind::Integer),
    ("MQTT_VIDEO_GUARDED", "topics.guarded", EnvKind::Bool),
    ("MQTT_VIDEO_TLS", "gateway.tls.enabled", EnvKind::Bool),
    ("MQTT_VIDEO_TLS_NAMES", "gateway.tls.names", EnvKind::List),
];

/// Sets `key` (dotted) in a TOML table from an environment value.
fn set_from_env(table: &mut toml::Table, var: &str, key: &str, kind: EnvKind, value: &str) -> Result<(), ConfigError> {
    let value = match kind {
        EnvKind::Text => toml::Value::String(value.to_string()),
        EnvKind::Integer => toml::Value::Integer(
            value
                .trim()
                .parse()
                .map_err(|_| ConfigError::invalid(var, format!("must be an integer, not '{value}'")))?,
        ),
        EnvKind::Bool => match value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
            "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
            _ => return Err(ConfigError::invalid(var, format!("must be true or false, not '{value}'"))),
        },
        EnvKind::List => toml::Value::Array(
            value.split(',').map(str::trim).filter(|w| !w.is_empty()).map(|w| toml::Value::String(w.into())).collect(),
        ),
    };
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop() else { return Ok(()) };
    let mut at = table;
    for part in parts {
        let entry = at.entry(part).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry.as_table_mut().ok_or_else(|| ConfigError::invalid(part, "must be a table"))?;
    }
    at.insert(last.to_string(), value);
    Ok(())
}

impl Config {
    /// Parses and checks a configuration; an empty text gives the defaults.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str_with_env(text, |_| None)
    }

    /// Like [`Config::from_toml_str`], with the [`ENV_OVERRIDES`] that `env` returns a value for set over the
    /// text's (an empty value counts as unset).
    pub fn from_toml_str_with_env(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let overrides: Vec<_> = ENV_OVERRIDES
            .iter()
            .filter_map(|&(var, key, kind)| env(var).filter(|v| !v.is_empty()).map(|v| (var, key, kind, v)))
            .collect();
        // Parsed straight from the text when nothing overrides it: toml's errors then show the line.
        let raw: RawConfig = if overrides.is_empty() {
            toml::from_str(text)?
        } else {
            let mut table: toml::Table = toml::from_str(text)?;
            for (var, key, kind, value) in overrides {
                set_from_env(&mut table, var, key, kind, &value)?;
            }
            toml::Value::Table(table).try_into()?
        };
        let config = raw.resolve()?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a configuration file (or the defaults without one) with the process's environment overrides.
    pub fn load_with_env(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env = |var: &str| std::env::var(var).ok();
        match path {
            None => Config::from_toml_str_with_env("", env),
            Some(path) => Config::read_file(path, env),
        }
    }

    /// Reads, parses and checks a configuration file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        Config::read_file(path.as_ref(), |_| None)
    }

    /// A file's configuration with the overrides `env` gives; errors name the file.
    fn read_file(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::from_toml_str_with_env(&text, env)
            .map_err(|e| ConfigError::InFile { path: path.to_path_buf(), inner: Box::new(e) })
    }

    /// The named sources, for the policy and the sources list.
    pub fn named_sources(&self) -> Vec<NamedSource> {
        self.sources.iter().map(|e| e.source.clone()).collect()
    }

    /// The allow-list; cannot fail on a configuration that loaded.
    pub fn policy(&self) -> Result<Policy, PolicyError> {
        Policy::new(&self.named_sources(), &self.allow)
    }

    /// What requests are checked against.
    pub fn request_limits(&self) -> RequestLimits {
        RequestLimits {
            max_request_bytes: self.limits.max_request_bytes,
            prefix: self.topics.prefix.clone(),
            reply_prefix: self.topics.reply_prefix.clone(),
        }
    }

    /// The pipeline settings for a URL as the policy allowed it: a named source's own, else the global ones.
    pub fn pipeline_for(&self, url: &str) -> PipelineConfig {
        let url = url.trim();
        if let Some(endpoint) = self.ingest_endpoint(url) {
            return endpoint.pipeline.clone().unwrap_or_else(|| self.pipeline.clone());
        }
        self.sources
            .iter()
            .find(|e| e.source.url.trim() == url)
            .and_then(|e| e.pipeline.clone())
            .unwrap_or_else(|| self.pipeline.clone())
    }

    /// The `[[ingest]]` endpoint an `ingest://NAME` URL names (the name compares case-insensitively).
    pub fn ingest_endpoint(&self, url: &str) -> Option<&IngestEndpoint> {
        let name = crate::config::ingest::name_of(url)?;
        self.ingest.iter().find(|e| e.name.eq_ignore_ascii_case(name))
    }

    /// Checks what the types alone do not.
    fn validate(&self) -> Result<(), ConfigError> {
        self.broker.validate()?;
        self.gateway.validate()?;
        self.topics.validate()?;
        if self.broker.embedded && self.topics.guarded {
            return Err(ConfigError::invalid(
                "topics.guarded",
                "needs a broker with an ACL; the embedded broker has none (run mosquitto: docker/rights/)",
            ));
        }
        if self.broker.embedded && self.cluster.enabled {
            return Err(ConfigError::invalid(
                "cluster.enabled",
                "instances share an external broker, not an embedded one",
            ));
        }
        self.limits.validate()?;
        self.retry.validate()?;
        self.snapshots.validate()?;
        self.homeassistant.validate(self.cluster.enabled)?;
        self.pipeline.check_renditions().map_err(|m| ConfigError::invalid("pipeline.renditions", m))?;
        for (i, entry) in self.sources.iter().enumerate() {
            if let Some(p) = &entry.pipeline {
                p.check_renditions()
                    .map_err(|m| ConfigError::invalid(&format!("sources[{i}].pipeline.renditions"), m))?;
            }
        }
        for (i, endpoint) in self.ingest.iter().enumerate() {
            if let Some(p) = &endpoint.pipeline {
                p.check_renditions()
                    .map_err(|m| ConfigError::invalid(&format!("ingest[{i}].pipeline.renditions"), m))?;
            }
        }
        self.policy().map_err(|error| ConfigError::Policy { key: policy_key(&error), error })?;
        Ok(())
    }
}

impl RawConfig {
    /// Merges each source's and ingest endpoint's pipeline table over the global pipeline.
    fn resolve(self) -> Result<Config, ConfigError> {
        let ingest = resolve_ingest(self.ingest, &self.pipeline)?;
        let sources = match self.sources {
            None => Config::default().sources,
            Some(raw) => {
                raw.into_iter().enumerate().map(|(i, s)| s.resolve(i, &self.pipeline)).collect::<Result<_, _>>()?
            }
        };
        Ok(Config {
            broker: self.broker,
            cluster: self.cluster,
            gateway: self.gateway,
            topics: self.topics,
            limits: self.limits,
            retry: self.retry,
            stats: self.stats,
            pipeline: self.pipeline,
            sources,
            allow: self.allow,
            ingest,
            snapshots: self.snapshots,
            homeassistant: self.homeassistant,
        })
    }
}

/// Checks the `[[ingest]]` entries: each valid, names and ports unique, pipeline tables merged over `global`.
fn resolve_ingest(raw: Vec<RawIngest>, global: &PipelineConfig) -> Result<Vec<IngestEndpoint>, ConfigError> {
    let mut endpoints: Vec<IngestEndpoint> = Vec::with_capacity(raw.len());
    for (i, entry) in raw.into_iter().enumerate() {
        let key = format!("ingest[{i}]");
        let mut endpoint = IngestEndpoint::parse(&entry).map_err(|m| ConfigError::invalid(&key, m))?;
        if let Some(table) = entry.pipeline {
            let merged = merged_pipeline(global, table).map_err(|m| {
                ConfigError::invalid(&format!("{key}.pipeline"), format!("(ingest {:?}): {m}", entry.name))
            })?;
            endpoint.pipeline = Some(merged);
        }
        if endpoints.iter().any(|e| e.name.eq_ignore_ascii_case(&endpoint.name)) {
            return Err(ConfigError::invalid(&key, format!("name {:?} is used twice", endpoint.name)));
        }
        if let Some(other) = endpoints.iter().find(|e| crate::config::ingest::same_port(e.listen, endpoint.listen)) {
            return Err(ConfigError::invalid(&key, format!("listens on the port of ingest {:?}", other.name)));
        }
        endpoints.push(endpoint);
    }
    Ok(endpoints)
}

impl RawSource {
    /// The entry with its pipeline resolved; `index` names it in errors.
    fn resolve(self, index: usize, global: &PipelineConfig) -> Result<SourceEntry, ConfigError> {
        let key = format!("sources[{index}].pipeline");
        let pipeline = match self.pipeline {
            None => None,
            Some(table) => Some(merged_pipeline(global, table).map_err(|message| ConfigError::Invalid {
                key: key.clone(),
                message: format!("(source {:?}): {message}", self.name),
            })?),
        };
        if self.talk && !self.url.trim().to_ascii_lowercase().starts_with("rtsp://") {
            return Err(ConfigError::Invalid {
                key: format!("sources[{index}].talk"),
                message: format!(
                    "(source {:?}): talking back needs an rtsp:// camera (an ONVIF backchannel)",
                    self.name
                ),
            });
        }
        Ok(SourceEntry {
            source: NamedSource { name: self.name, url: self.url, description: self.description },
            pipeline,
            talk: self.talk,
        })
    }
}

/// `global` with `overrides` merged over it key by key, so a source can change one setting and keep the rest.
fn merged_pipeline(global: &PipelineConfig, overrides: toml::Table) -> Result<PipelineConfig, String> {
    let mut base = toml::Table::try_from(global).map_err(|e| format!("cannot merge: {e}"))?;
    merge_tables(&mut base, overrides);
    base.try_into().map_err(|e: toml::de::Error| e.message().replace('\n', " "))
}

/// Deep merge: tables merge recursively, any other value replaces.
fn merge_tables(base: &mut toml::Table, overrides: toml::Table) {
    for (key, value) in overrides {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(table)) => merge_tables(base_table, table),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Which configuration key a policy error is about.
fn policy_key(error: &PolicyError) -> &'static str {
    match error {
        PolicyError::InvalidPrefix { .. } => "allow.prefixes",
        PolicyError::InvalidUrl { .. } => "allow.urls",
        PolicyError::InvalidSource { .. } | PolicyError::Forbidden { .. } => "sources",
    }
}

/// Refuses values below a minimum.
pub(crate) fn at_least(key: &str, value: usize, min: usize) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::invalid(key, format!("must be at least {min}")));
    }
    Ok(())
}

/// A backoff must start above 0 (doubling 0 stays 0, a busy loop) and not above its maximum.
fn check_backoff(min_key: &str, min: u64, max_key: &str, max: u64) -> Result<(), ConfigError> {
    if min == 0 {
        return Err(ConfigError::invalid(min_key, "must be at least 1"));
    }
    if min > max {
        return Err(ConfigError::invalid(min_key, format!("must not exceed {max_key} ({min} > {max})")));
    }
    Ok(())
}

/// `min_ms` doubled for each attempt after the first, capped at `max_ms`.
fn exponential(min_ms: u64, max_ms: u64, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(63);
    let ms = min_ms.saturating_mul(1u64 << doublings).min(max_ms);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::config::{Backpressure, Mode};
    use mqtt_video_wire::policy::AllowedBy;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text)
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(config) => panic!("expected an error for {text:?}, got {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn renditions_take_the_stream_s_video_settings_for_what_they_leave_out_and_bad_ones_are_named() {
        let config = parse(
            "[pipeline.video]\npreset = \"faster\"\nkeyframe_interval_secs = 2.0\n\n\
             [[pipeline.renditions]]\nname = \"low\"\nmax_height = 360\nbitrate_kbps = 500\nmax_bitrate_kbps = 600\n\n\
             [[sources]]\nname = \"Cam\"\nurl = \"rtsp://cam/1\"\n\
             pipeline = { renditions = [{ name = \"tiny\", max_width = 160 }] }\n",
        )
        .unwrap();
        let low = &config.pipeline.renditions[0];
        let video = low.video(&config.pipeline.video);
        assert_eq!((video.max_height, video.bitrate_kbps, video.max_bitrate_kbps), (360, 500, 600));
        assert_eq!((video.preset.as_str(), video.keyframe_interval_secs), ("faster", 2.0), "inherited");
        let cam = config.pipeline_for("rtsp://cam/1");
        assert_eq!(cam.renditions.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["tiny"], "a source's own list");
        for (text, wanted) in [
            ("[[pipeline.renditions]]\nname = \"main\"\n", "reserved"),
            ("[[pipeline.renditions]]\nname = \"Low\"\n", "lowercase"),
            ("[[pipeline.renditions]]\nname = \"a/b\"\n", "topic level"),
            ("[[pipeline.renditions]]\nname = \"a\"\n[[pipeline.renditions]]\nname = \"a\"\n", "used twice"),
            ("[[pipeline.renditions]]\nname = \"a\"\nkeyframe_interval_secs = 1.0\n", "unknown field"),
            ("[[pipeline.renditions]]\nname = \"a\"\naudio_bitrate_kbps = 0\n", "above 0"),
            (
                "[[sources]]\nname = \"C\"\nurl = \"rtsp://c/1\"\npipeline = { renditions = [{ name = \"to\" }] }\n",
                "sources[0].pipeline.renditions",
            ),
        ] {
            let e = error(text);
            assert!(e.contains(wanted), "{text:?}: {e}");
        }
        let five = "[[pipeline.renditions]]\nname = \"r\"\n".repeat(5).replacen("\"r\"", "\"r1\"", 1);
        assert!(error(&five).contains("at most 4"), "{}", error(&five));
    }

    #[test]
    fn empty_text_gives_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.broker.port, 1883);
        assert_eq!(config.topics.prefix, "video");
        assert_eq!(config.limits.max_request_bytes, 4096);
        let urls: Vec<String> = config.sources.iter().map(|e| e.source.url.clone()).collect();
        assert_eq!(urls, ["builtin://testsrc", "builtin://testsrc-720p", "builtin://testsrc-silent"]);
        assert!(config.allow.urls.is_empty() && config.allow.prefixes.is_empty());
        assert!(config.policy().unwrap().check("builtin://testsrc-720p").is_ok());
        assert!(config.policy().unwrap().check("rtsp://anything/").is_err());
        Config::default().validate().unwrap();
    }

    #[test]
    fn example_file_documents_the_defaults() {
        let example = parse(include_str!("../../config.example.toml")).unwrap();
        let defaults = Config::default();
        assert_eq!(example.broker, defaults.broker);
        assert_eq!(example.topics, defaults.topics);
        assert_eq!(example.limits, defaults.limits);
        assert_eq!(example.retry, defaults.retry);
        assert_eq!(example.stats, defaults.stats);
        assert_eq!(example.pipeline, defaults.pipeline);
        // Deliberately not the defaults: the built-in sources plus a camera with its own setting, and an allow-list.
        assert_eq!(example.sources[..3], defaults.sources[..]);
        let camera = &example.sources[3];
        assert_eq!(camera.source.name, "Lobby camera");
        let mut expected = defaults.pipeline.clone();
        expected.video.max_width = 640;
        expected.renditions =
            vec![
                toml::from_str("name = \"low\"\nmax_height = 360\nbitrate_kbps = 500\nmax_bitrate_kbps = 600").unwrap()
            ];
        assert_eq!(camera.pipeline, Some(expected));
        assert!(!example.allow.urls.is_empty() && !example.allow.prefixes.is_empty());
        let policy = example.policy().unwrap();
        assert!(policy.check("rtsp://cameras.example.net/parking").is_ok());
    }

    /// Every leaf key of a table, recursively.
    fn leaf_keys(table: &toml::Table) -> Vec<String> {
        table
            .iter()
            .flat_map(|(key, value)| match value {
                toml::Value::Table(inner) => leaf_keys(inner),
                _ => vec![key.clone()],
            })
            .collect()
    }

    #[test]
    fn example_file_mentions_every_key() {
        let example = include_str!("../../config.example.toml");
        // Pipeline keys come from the media module's own defaults, so a new one cannot go undocumented.
        let mut keys = leaf_keys(&toml::Table::try_from(PipelineConfig::default()).unwrap());
        let ours = [
            "host",
            "port",
            "client_id",
            "username",
            "password",
            "keep_alive_secs",
            "tls",
            "ca_file",
            "reconnect_min_ms",
            "reconnect_max_ms",
            "qos",
            "max_packet_bytes",
            "protocol",
            "embedded",
            "embedded_listen",
            "prefix",
            "max_streams",
            "max_viewers_per_stream",
            "max_request_bytes",
            "linger_secs",
            "viewer_timeout_secs",
            "viewer_queue_fragments",
            "max_attempts",
            "initial_backoff_ms",
            "max_backoff_ms",
            "interval_secs",
            "name",
            "url",
            "description",
            "urls",
            "prefixes",
            "listen",
            "key",
            "max_viewers_per_requester",
            "max_streams_per_requester",
            "cpu_budget_percent",
            "max_connections_per_address",
            "trusted_proxies",
            "request_timeout_secs",
            "connect_timeout_secs",
            "max_idle_secs",
            "handshake_timeout_ms",
            "guarded",
            "enabled",
            "cert_file",
            "key_file",
            "state_dir",
            "names",
            "http",
        ];
        keys.extend(ours.map(String::from));
        for key in keys {
            assert!(example.contains(&format!("{key} =")), "config.example.toml does not document `{key}`");
        }
    }

    #[test]
    fn ingest_endpoints_are_checked_at_load() {
        let ok = Config::from_toml_str(
            "[[ingest]]\nname = \"a\"\nlisten = \"tcp://127.0.0.1:9000\"\n\n\
             [[ingest]]\nname = \"b\"\nlisten = \"rtmp://0.0.0.0:1935\"\nkey = \"0123456789abcdef\"\n",
        )
        .unwrap();
        assert_eq!(ok.ingest.iter().map(|e| e.url()).collect::<Vec<_>>(), ["ingest://a", "ingest://b"]);
        assert_eq!(ok.pipeline_for("ingest://a"), ok.pipeline);
        let tuned = Config::from_toml_str(
            "[pipeline.video]\ncrf = 30\n\n[[ingest]]\nname = \"obs\"\nlisten = \"tcp://127.0.0.1:9000\"\n\
             pipeline = { mode = \"transcode\", video = { max_height = 720 } }\n",
        )
        .unwrap();
        let p = tuned.pipeline_for("ingest://OBS");
        assert_eq!((p.mode, p.video.max_height, p.video.crf), (crate::media::Mode::Transcode, 720, 30));
        let bad = "[[ingest]]\nname = \"a\"\nlisten = \"tcp://127.0.0.1:9000\"\npipeline = { mode = \"fast\" }\n";
        let message = Config::from_toml_str(bad).unwrap_err().to_string();
        assert!(message.contains("ingest[0].pipeline (ingest \"a\")"), "{message}");
        let err = |text: &str| Config::from_toml_str(text).unwrap_err().to_string();
        let twice = "[[ingest]]\nname = \"a\"\nlisten = \"tcp://127.0.0.1:9000\"\n\n\
                     [[ingest]]\nname = \"A\"\nlisten = \"tcp://127.0.0.1:9001\"\n";
        assert!(err(twice).contains("ingest[1] name \"A\" is used twice"), "{}", err(twice));
        let port = "[[ingest]]\nname = \"a\"\nlisten = \"tcp://127.0.0.1:9000\"\n\n\
                    [[ingest]]\nname = \"b\"\nlisten = \"rtmp://0.0.0.0:9000\"\nkey = \"0123456789abcdef\"\n";
        assert!(err(port).contains("ingest[1] listens on the port of ingest \"a\""), "{}", err(port));
        let open = "[[ingest]]\nname = \"a\"\nlisten = \"rtmp://0.0.0.0:1935\"\n";
        assert!(err(open).contains("ingest[0] an rtmp endpoint on 0.0.0.0 needs a `key`"), "{}", err(open));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = error("[limits]\nmax_stream = 3\n");
        assert!(e.contains("unknown field `max_stream`") && e.contains("line 2"), "{e}");
        let e = error("[limit]\nmax_streams = 3\n");
        assert!(e.contains("unknown field `limit`"), "{e}");
        let e = error("[pipeline.video]\nmax_widht = 3\n");
        assert!(e.contains("unknown field `max_widht`"), "{e}");
        let e = error("[[sources]]\nname = \"a\"\nurl = \"rtsp://a/\"\nuri = \"x\"\n");
        assert!(e.contains("unknown field `uri`"), "{e}");
    }

    #[test]
    fn wrong_types_show_the_key() {
        let e = error("[broker]\nport = \"1883\"\n");
        assert!(e.contains("port = \"1883\"") && e.contains("invalid type"), "{e}");
        let e = error("[limits]\nmax_streams = -1\n");
        assert!(e.contains("max_streams = -1"), "{e}");
        let e = error("[broker]\nport = 70000\n");
        assert!(e.contains("port = 70000"), "{e}");
        let e = error("[pipeline]\nmode = \"fast\"\n");
        assert!(e.contains("mode = \"fast\"") && e.contains("unknown variant"), "{e}");
        let e = error("this is not toml");
        assert!(e.contains("TOML parse error"), "{e}");
    }

    #[test]
    fn the_embedded_broker_listens_on_an_address_and_port() {
        let c = Config::from_toml_str("[broker]\nembedded = true\nembedded_listen = \"0.0.0.0:1884\"").unwrap();
        assert!(c.broker.embedded);
        assert_eq!(c.broker.embedded_listen, "0.0.0.0:1884".parse().unwrap());
        let e = error("[broker]\nembedded_listen = \"localhost\"");
        assert!(e.contains("embedded_listen") && e.contains("invalid socket address"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("[broker]\nport = 0", "broker.port must not be 0"),
            ("[broker]\nhost = \" \"", "broker.host must not be empty"),
            ("[broker]\nclient_id = \"\"", "broker.client_id must not be empty"),
            ("[broker]\nqos = 2", "broker.qos must be 0 or 1, not 2"),
            (
                "[broker]\nembedded = true\ntls = true",
                "broker.tls the embedded broker has no TLS (run mosquitto for it)",
            ),
            (
                "[broker]\nembedded = true\nusername = \"u\"",
                "broker.username the embedded broker has no logins (run mosquitto for them)",
            ),
            (
                "[broker]\nembedded = true\n[topics]\nguarded = true",
                "topics.guarded needs a broker with an ACL; the embedded broker has none (run mosquitto: docker/rights/)",
            ),
            (
                "[broker]\nmax_packet_bytes = 1000",
                "broker.max_packet_bytes must be 0 (no limit) or at least 16384, not 1000",
            ),
            ("[broker]\npassword = \"x\"", "broker.password needs broker.username (MQTT 3.1.1)"),
            ("[broker]\nca_file = \"/etc/ca.pem\"", "broker.ca_file is set but broker.tls is false"),
            ("[broker]\nreconnect_min_ms = 0", "broker.reconnect_min_ms must be at least 1"),
            (
                "[broker]\nreconnect_min_ms = 20000",
                "broker.reconnect_min_ms must not exceed broker.reconnect_max_ms (20000 > 10000)",
            ),
            ("[limits]\nmax_streams = 0", "limits.max_streams must be at least 1"),
            ("[limits]\nmax_viewers_per_stream = 0", "limits.max_viewers_per_stream must be at least 1"),
            ("[limits]\nmax_request_bytes = 100", "limits.max_request_bytes must be at least 256"),
            ("[limits]\nviewer_queue_fragments = 0", "limits.viewer_queue_fragments must be at least 1"),
            ("[retry]\ninitial_backoff_ms = 0", "retry.initial_backoff_ms must be at least 1"),
            (
                "[retry]\nmax_backoff_ms = 100",
                "retry.initial_backoff_ms must not exceed retry.max_backoff_ms (500 > 100)",
            ),
            ("[topics]\nprefix = \"\"", "topics.prefix is empty"),
            ("[topics]\nprefix = \"video/#\"", "topics.prefix must not contain the wildcards `+` or `#`"),
            ("[topics]\nprefix = \"$SYS/video\"", "topics.prefix must not start with `$` (reserved for the broker)"),
            ("[topics]\nreply_prefix = \"pages\"", "topics.reply_prefix must end with `/`"),
            ("[topics]\nreply_prefix = \"video/pages/\"", "topics.reply_prefix must not be under the control prefix"),
            ("[topics]\nreply_prefix = \"pa+ges/\"", "topics.reply_prefix must not contain the wildcards `+` or `#`"),
        ];
        for (text, expected) in cases {
            assert_eq!(error(text), expected, "{text}");
        }
    }

    #[test]
    fn unsafe_allow_lists_fail_at_load() {
        let e = error("[allow]\nprefixes = [\"rtsp://cam.local\"]");
        assert_eq!(e, "allow.prefixes: invalid prefix \"rtsp://cam.local\": must end with `/`");
        let e = error("[allow]\nurls = [\"\"]");
        assert!(e.starts_with("allow.urls: "), "{e}");
        let e =
            error("[[sources]]\nname = \"a\"\nurl = \"rtsp://a/1\"\n[[sources]]\nname = \"A\"\nurl = \"rtsp://a/2\"");
        assert!(e.starts_with("sources: source \"A\": the name is used twice"), "{e}");
        let e = error("[allow]\nprefixes = [\"rtsp://admin:hunter2@cam/\"]");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn sources_replace_the_builtin_ones() {
        let config = parse("[[sources]]\nname = \"Cam\"\nurl = \"rtsp://cam/1\"\n").unwrap();
        assert_eq!(config.sources.len(), 1);
        assert_eq!(
            config.sources[0].source,
            NamedSource { name: "Cam".into(), url: "rtsp://cam/1".into(), description: None }
        );
        let config = parse("sources = []").unwrap();
        assert!(config.sources.is_empty());
        assert!(config.policy().unwrap().check("builtin://testsrc").is_err());
    }

    #[test]
    fn per_source_pipeline_merges_over_the_global_one() {
        let text = r#"
            [pipeline]
            mode = "transcode"
            [pipeline.video]
            crf = 28

            [[sources]]
            name = "Small"
            url = "rtsp://cam/1"
            [sources.pipeline.video]
            max_width = 640

            [[sources]]
            name = "Plain"
            url = "rtsp://cam/2"

            [[sources]]
            name = "Copy"
            url = "rtsp://cam/3"
            pipeline = { mode = "copy", backpressure = "block" }
        "#;
        let config = parse(text).unwrap();
        let global = config.pipeline.clone();
        assert_eq!(global.mode, Mode::Transcode);
        assert_eq!(global.video.crf, 28);

        let mut small = global.clone();
        small.video.max_width = 640;
        assert_eq!(config.pipeline_for("rtsp://cam/1"), small, "only the overridden key differs");
        assert_eq!(config.pipeline_for(" rtsp://cam/1 "), small);

        assert_eq!(config.sources[1].pipeline, None);
        assert_eq!(config.pipeline_for("rtsp://cam/2"), global);
        assert_eq!(config.pipeline_for("rtsp://elsewhere/"), global);

        let copy = config.pipeline_for("rtsp://cam/3");
        assert_eq!((copy.mode, copy.backpressure, copy.video.crf), (Mode::Copy, Backpressure::Block, 28));
    }

    #[test]
    fn pipeline_for_takes_the_url_the_policy_returned() {
        let text =
            "[[sources]]\nname = \"Lobby\"\nurl = \"rtsp://u:pw@cam/1\"\npipeline = { video = { max_fps = 10 } }";
        let config = parse(text).unwrap();
        let policy = config.policy().unwrap();
        let offered = &policy.offered()[0].url;
        let allowed = policy.check(offered).unwrap();
        assert_eq!(allowed.by, AllowedBy::Source("Lobby".into()));
        assert_eq!(config.pipeline_for(&allowed.url).video.max_fps, 10);
    }

    #[test]
    fn bad_overrides_name_the_source() {
        let text = "[[sources]]\nname = \"Cam\"\nurl = \"rtsp://cam/1\"\n[sources.pipeline.video]\nmax_widht = 640\n";
        let e = error(text);
        assert!(e.starts_with("sources[0].pipeline (source \"Cam\"): unknown field `max_widht`"), "{e}");
        let text = "[[sources]]\nname = \"Cam\"\nurl = \"rtsp://cam/1\"\npipeline = { video = { crf = \"high\" } }\n";
        let e = error(text);
        assert!(e.starts_with("sources[0].pipeline (source \"Cam\"): invalid type"), "{e}");
    }

    #[test]
    fn durations_and_backoff() {
        let config = Config::default();
        assert_eq!(config.limits.linger(), Duration::from_secs(10));
        assert_eq!(config.limits.viewer_timeout(), Some(Duration::from_secs(30)));
        assert_eq!(config.stats.interval(), Some(Duration::from_secs(5)));
        assert_eq!(config.broker.keep_alive(), Duration::from_secs(30));
        let retry = &config.retry;
        let delays: Vec<u128> = (1..=7).map(|a| retry.backoff(a).as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(retry.backoff(0), Duration::from_millis(500));
        assert_eq!(retry.backoff(u32::MAX), Duration::from_millis(10_000));
        assert!(retry.allows(10) && !retry.allows(11));
        assert!(RetryConfig { max_attempts: 0, ..RetryConfig::default() }.allows(u32::MAX));
        assert_eq!(config.broker.reconnect_delay(1), Duration::from_millis(200));
        assert_eq!(config.broker.reconnect_delay(100), Duration::from_millis(10_000));
    }

    #[test]
    fn request_limits_follow_the_config() {
        let config = parse("[topics]\nprefix = \"org/cams\"\n[limits]\nmax_request_bytes = 1000").unwrap();
        assert_eq!(
            config.request_limits(),
            RequestLimits { max_request_bytes: 1000, prefix: "org/cams".into(), reply_prefix: String::new() }
        );
    }

    #[test]
    fn client_ids_can_name_the_host_and_process() {
        assert_eq!(expand_client_id("mqtt-video-{hostname}-{pid}", "c0ffee", 7), "mqtt-video-c0ffee-7");
        assert_eq!(expand_client_id("plain", "h", 1), "plain");
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let text = "[broker]\nhost = \"file-host\"\nusername = \"u\"\n[pipeline.video]\ncrf = 30\n";
        let c = Config::from_toml_str_with_env(
            text,
            env(&[
                ("MQTT_VIDEO_BROKER_HOST", "mosquitto"),
                ("MQTT_VIDEO_BROKER_PORT", "1884"),
                ("MQTT_VIDEO_BROKER_PASSWORD", "pw"),
                ("MQTT_VIDEO_MODE", "copy"),
                ("MQTT_VIDEO_MAX_STREAMS", "3"),
                ("MQTT_VIDEO_VIDEO_PRESET", ""),
                ("MQTT_VIDEO_GUARDED", "true"),
            ]),
        )
        .unwrap();
        assert!(c.topics.guarded);
        assert!(!Config::from_toml_str_with_env("", env(&[("MQTT_VIDEO_GUARDED", "off")])).unwrap().topics.guarded);
        let e = Config::from_toml_str_with_env("", env(&[("MQTT_VIDEO_GUARDED", "maybe")])).unwrap_err();
        assert_eq!(e.to_string(), "MQTT_VIDEO_GUARDED must be true or false, not 'maybe'");
        assert_eq!((c.broker.host.as_str(), c.broker.port), ("mosquitto", 1884));
        assert_eq!(c.broker.password.as_deref(), Some("pw"));
        assert_eq!(c.limits.max_streams, 3);
        assert_eq!(c.pipeline.video.crf, 30, "unset variables leave the file's value");
        assert_eq!(c.pipeline.video.preset, "veryfast", "an empty variable counts as unset");
        assert_eq!(c.pipeline.mode, crate::media::Mode::Copy);
        let e = Config::from_toml_str_with_env("", env(&[("MQTT_VIDEO_BROKER_PORT", "eighty")])).unwrap_err();
        assert_eq!(e.to_string(), "MQTT_VIDEO_BROKER_PORT must be an integer, not 'eighty'");
        let e = Config::from_toml_str_with_env("", env(&[("MQTT_VIDEO_MODE", "fast")])).unwrap_err();
        assert!(e.to_string().contains("fast"), "{e}");
        let e = Config::from_toml_str_with_env("broker = 1", env(&[("MQTT_VIDEO_BROKER_HOST", "h")])).unwrap_err();
        assert!(e.to_string().contains("broker"), "{e}");
    }

    #[test]
    fn broker_password_is_not_in_debug_output() {
        let config = parse("[broker]\nusername = \"u\"\npassword = \"hunter2\"").unwrap();
        let text = format!("{config:?}");
        assert!(!text.contains("hunter2") && text.contains("***"), "{text}");
    }

    #[test]
    fn load_names_the_file() {
        let missing = Path::new("/nonexistent/mqtt-video.toml");
        let e = Config::load(missing).unwrap_err();
        assert!(e.to_string().starts_with("cannot read /nonexistent/mqtt-video.toml: "), "{e}");
    }
}
