//! Protocol v1: the JSON control messages pages and server exchange, and the rules for topic names.
//! Pure: parses and checks bytes, never touches the broker.

use crate::output::{OutputInfo, RenditionInfo};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

/// The newest protocol version this server speaks; it answers version 1 requests too.
pub const PROTOCOL_VERSION: u32 = 2;
/// The control prefix when none is configured.
pub const DEFAULT_PREFIX: &str = "video";
/// The request size limit when none is configured, in bytes.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4096;
/// Longest source URL a request may carry, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Longest reply topic a request may name, in bytes.
pub const MAX_REPLY_TOPIC_BYTES: usize = 128;
/// The level appended to a reply topic for status messages; pages may not use it themselves.
pub const STATUS_LEVEL: &str = "status";
/// Largest payload [`reply_topic_hint`] reads: enough for any honest mistake, bounded for the rest.
pub const HINT_MAX_BYTES: usize = 64 * 1024;

/// A stable, machine-readable error code, sent in error replies and error statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is not valid JSON of the expected shape, or a field is invalid.
    BadRequest,
    /// The reply topic breaks the topic rules.
    BadReplyTopic,
    /// The request payload is larger than the configured limit.
    PayloadTooLarge,
    /// The URL is not on the allow-list.
    ForbiddenUrl,
    /// The source could not be reached.
    SourceUnreachable,
    /// The source did not answer, or stopped sending, in time.
    SourceTimeout,
    /// The source holds nothing we can stream.
    UnsupportedSource,
    /// The source ended.
    SourceEnded,
    /// The server is at its stream or viewer limit.
    Overloaded,
    /// The client sent too many requests.
    RateLimited,
    /// Something failed on our side.
    InternalError,
}

impl ErrorCode {
    /// Every code, for listings and tests.
    pub const ALL: [ErrorCode; 11] = [
        Self::BadRequest,
        Self::BadReplyTopic,
        Self::PayloadTooLarge,
        Self::ForbiddenUrl,
        Self::SourceUnreachable,
        Self::SourceTimeout,
        Self::UnsupportedSource,
        Self::SourceEnded,
        Self::Overloaded,
        Self::RateLimited,
        Self::InternalError,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::BadReplyTopic => "bad_reply_topic",
            Self::PayloadTooLarge => "payload_too_large",
            Self::ForbiddenUrl => "forbidden_url",
            Self::SourceUnreachable => "source_unreachable",
            Self::SourceTimeout => "source_timeout",
            Self::UnsupportedSource => "unsupported_source",
            Self::SourceEnded => "source_ended",
            Self::Overloaded => "overloaded",
            Self::RateLimited => "rate_limited",
            Self::InternalError => "internal_error",
        }
    }

    /// The code with this wire name, e.g. from `MediaError::code()`; `None` for names that are not errors.
    pub fn from_code(code: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request was refused before anything was done for it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// The payload is larger than the limit.
    #[error("request is {size} bytes, the limit is {limit}")]
    PayloadTooLarge {
        /// Payload size in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The payload is not a JSON object of the expected shape, or a field is invalid.
    #[error("{0}")]
    BadRequest(String),
    /// The reply topic breaks the topic rules.
    #[error("invalid reply_topic: {0}")]
    BadReplyTopic(String),
}

impl ProtocolError {
    /// The wire code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::BadReplyTopic(_) => ErrorCode::BadReplyTopic,
        }
    }

    /// The error reply a page gets for this error.
    pub fn to_reply(&self) -> ErrorReply {
        ErrorReply::new(self.code(), self.to_string())
    }
}

/// A topic name that cannot be used (as the control prefix).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{0}")]
pub struct TopicError(pub String);

/// The three requests a page can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// `<prefix>/describe`: what would I get from this URL?
    Describe,
    /// `<prefix>/play`: send me this URL's media.
    Play,
    /// `<prefix>/stop`: stop sending to this reply topic.
    Stop,
}

impl RequestKind {
    /// Every kind, in subscription order.
    pub const ALL: [RequestKind; 3] = [Self::Describe, Self::Play, Self::Stop];

    /// The last topic level, which is also the name used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Describe => "describe",
            Self::Play => "play",
            Self::Stop => "stop",
        }
    }
}

/// `{"url": ..., "reply_topic": ...}` on `<prefix>/describe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescribeRequest {
    /// The source URL, trimmed of surrounding whitespace.
    pub url: String,
    /// Where the reply goes.
    pub reply_topic: String,
}

/// `{"url": ..., "reply_topic": ..., "version": 2}` on `<prefix>/play`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlayRequest {
    /// The source URL, trimmed of surrounding whitespace.
    pub url: String,
    /// Where the media goes (all of it in v1, the join burst in v2); statuses go to `<reply_topic>/status`.
    pub reply_topic: String,
    /// 2: the stream's media once for everyone on its own topics, after a join burst on the reply topic;
    /// absent or 1: every fragment on the reply topic, as the seed protocol did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Version 2 only: which of the stream's renditions to watch (absent: `main`, the stream's own output).
    /// Another one on the same reply topic moves the viewer there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendition: Option<String>,
}

impl PlayRequest {
    /// Whether the play asks for delivery on the stream's topics (protocol v2).
    pub fn shared(&self) -> bool {
        self.version == Some(2)
    }
}

/// A stream's own topics (protocol v2), under `<prefix>/live/<id>/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamTopics {
    /// The stream's id: the slug of a named source's name (stable, for broker ACLs), else an opaque one.
    pub id: String,
    /// Init segment, retained: the current one, for anyone who subscribes.
    pub init: String,
    /// Fragments (and, in band, a new init segment when it changes), not retained.
    pub media: String,
    /// The stream's state as a status message, retained.
    pub state: String,
    /// With `topics.guarded`: the requester's own place under the stream's topics, where every answer about
    /// the stream goes (`<prefix>/live/<id>/to/<key>`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replies: Option<String>,
    /// For a rendition's topics (`<prefix>/live/<id>/<name>/...`), its name; absent for the stream's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendition: Option<String>,
}

impl StreamTopics {
    /// The topics of stream `id` under `prefix`.
    pub fn new(prefix: &str, id: &str) -> Self {
        let base = format!("{prefix}/live/{id}");
        Self {
            id: id.to_string(),
            init: format!("{base}/init"),
            media: format!("{base}/media"),
            state: format!("{base}/state"),
            replies: None,
            rendition: None,
        }
    }

    /// The topics of this stream's rendition `name`: one level below its own.
    pub fn rendition(&self, name: &str) -> Self {
        let base = self.init.strip_suffix("/init").unwrap_or(&self.init);
        Self {
            id: self.id.clone(),
            init: format!("{base}/{name}/init"),
            media: format!("{base}/{name}/media"),
            state: format!("{base}/{name}/state"),
            replies: self.replies.clone(),
            rendition: Some(name.to_string()),
        }
    }

    /// The same topics naming the requester's guarded place `replies` (see [`guarded_base`]).
    pub fn with_replies(mut self, replies: String) -> Self {
        self.replies = Some(replies);
        self
    }
}

/// With `topics.guarded`, `<prefix>/live/<id>/source`: a source's own retained entry of the sources list,
/// `{"name", "url", "description"}`, readable by those the broker lets watch it.
pub fn source_entry_topic(prefix: &str, id: &str) -> String {
    format!("{prefix}/live/{id}/source")
}

/// The level under a stream's topics that holds the requesters' guarded places (`topics.guarded`).
pub const GUARDED_LEVEL: &str = "to";

/// `<prefix>/live/<id>/to/<key>`: with `topics.guarded`, where the answers about stream `id` for the requester
/// whose opaque key is `key` go, so that only those the broker lets read the stream's topics receive them.
pub fn guarded_base(prefix: &str, id: &str, key: &str) -> String {
    format!("{prefix}/live/{id}/{GUARDED_LEVEL}/{key}")
}

/// Where an answer meant for `reply_topic` goes under the guarded place `base`: `base` and the reply topic's
/// last level (`pages/page_ab/media` -> `<base>/media`, statuses on `<base>/media/status`). `None` for a
/// one-level reply topic: its last level is the whole topic, which must not be shown to other viewers (it
/// is the viewer's identity: whoever knows it can stop the play).
pub fn guarded_topic(base: &str, reply_topic: &str) -> Option<String> {
    let (_, last) = reply_topic.rsplit_once('/')?;
    Some(format!("{base}/{last}"))
}

/// With `topics.guarded`, the answer to a describe on its own reply topic: only where the real answer goes,
/// nothing of the stream that the public sources list does not show.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardedPointer {
    /// The URL as requested.
    pub url: String,
    /// Always `true`: the facts come on `<stream.replies>/<last level of the reply topic>`.
    pub guarded: bool,
    /// The stream's topics, with `replies`.
    pub stream: StreamTopics,
}

/// `{"reply_topic": ...}` on `<prefix>/stop` (also the page's last will).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// The reply topic of the play to stop.
    pub reply_topic: String,
}

/// A checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A describe request.
    Describe(DescribeRequest),
    /// A play request.
    Play(PlayRequest),
    /// A stop request.
    Stop(StopRequest),
}

impl Request {
    /// Which kind of request this is.
    pub fn kind(&self) -> RequestKind {
        match self {
            Self::Describe(_) => RequestKind::Describe,
            Self::Play(_) => RequestKind::Play,
            Self::Stop(_) => RequestKind::Stop,
        }
    }

    /// The reply topic the request names.
    pub fn reply_topic(&self) -> &str {
        match self {
            Self::Describe(r) => &r.reply_topic,
            Self::Play(r) => &r.reply_topic,
            Self::Stop(r) => &r.reply_topic,
        }
    }

    /// The source URL, for the requests that carry one.
    pub fn url(&self) -> Option<&str> {
        match self {
            Self::Describe(r) => Some(&r.url),
            Self::Play(r) => Some(&r.url),
            Self::Stop(_) => None,
        }
    }
}

/// What a request is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLimits {
    /// Largest accepted payload in bytes.
    pub max_request_bytes: usize,
    /// The control prefix, which reply topics must stay out of.
    pub prefix: String,
    /// If not empty, reply topics must start with it (`topics.reply_prefix`).
    pub reply_prefix: String,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            prefix: DEFAULT_PREFIX.into(),
            reply_prefix: String::new(),
        }
    }
}

/// The reply-topic rules plus the configured reply prefix.
pub fn check_reply_topic(topic: &str, limits: &RequestLimits) -> Result<(), ProtocolError> {
    validate_reply_topic(topic, &limits.prefix)?;
    if !topic.starts_with(&limits.reply_prefix) {
        return Err(ProtocolError::BadReplyTopic(format!(
            "must be under `{}` (topics.reply_prefix)",
            limits.reply_prefix
        )));
    }
    Ok(())
}

/// Parses and checks one request: size, JSON shape, URL, then reply topic, so the first problem is the one reported.
pub fn parse_request(kind: RequestKind, payload: &[u8], limits: &RequestLimits) -> Result<Request, ProtocolError> {
    if payload.len() > limits.max_request_bytes {
        return Err(ProtocolError::PayloadTooLarge { size: payload.len(), limit: limits.max_request_bytes });
    }
    let request = match kind {
        RequestKind::Describe => {
            let r: DescribeRequest = parse_object(kind, payload)?;
            Request::Describe(DescribeRequest { url: checked_url(&r.url)?, ..r })
        }
        RequestKind::Play => {
            let r: PlayRequest = parse_object(kind, payload)?;
            if r.version.is_some_and(|v| v != 1 && v != 2) {
                return Err(ProtocolError::BadRequest("version must be 1 or 2".into()));
            }
            if let Some(name) = &r.rendition {
                if !r.shared() {
                    return Err(ProtocolError::BadRequest(
                        "a rendition is delivered on its stream topics only: play with \"version\": 2".into(),
                    ));
                }
                let valid = !name.is_empty()
                    && name.len() <= 32
                    && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'+' && b != b'#');
                if !valid {
                    return Err(ProtocolError::BadRequest("rendition must be a name of at most 32 characters".into()));
                }
            }
            Request::Play(PlayRequest { url: checked_url(&r.url)?, ..r })
        }
        RequestKind::Stop => Request::Stop(parse_object(kind, payload)?),
    };
    check_reply_topic(request.reply_topic(), limits)?;
    Ok(request)
}

/// Deserialises a JSON object. Checked by hand first because serde would also accept an array for a struct.
fn parse_object<T: DeserializeOwned>(kind: RequestKind, payload: &[u8]) -> Result<T, ProtocolError> {
    let bad = |what: String| ProtocolError::BadRequest(format!("invalid {} request: {what}", kind.as_str()));
    let text = std::str::from_utf8(payload).map_err(|_| bad("payload is not UTF-8".into()))?;
    if !text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
        return Err(bad("payload is not a JSON object".into()));
    }
    serde_json::from_str(text).map_err(|e| bad(e.to_string()))
}

/// The URL trimmed, or why it is unusable. Never echoes the URL: it may hold a password.
fn checked_url(url: &str) -> Result<String, ProtocolError> {
    let url = url.trim();
    let problem = if url.is_empty() {
        Some("url is empty".to_string())
    } else if url.len() > MAX_URL_BYTES {
        Some(format!("url is {} bytes, the limit is {MAX_URL_BYTES}", url.len()))
    } else if url.chars().any(char::is_control) {
        Some("url contains control characters".to_string())
    } else {
        None
    };
    match problem {
        Some(p) => Err(ProtocolError::BadRequest(p)),
        None => Ok(url.to_string()),
    }
}

/// The reply topic of a request that failed to parse, if it can be read and is valid, so the error can be answered.
pub fn reply_topic_hint(payload: &[u8], limits: &RequestLimits) -> Option<String> {
    /// Reads only `reply_topic`; other fields are skipped without being stored.
    #[derive(Deserialize)]
    struct Hint {
        reply_topic: String,
    }
    if payload.len() > HINT_MAX_BYTES.max(limits.max_request_bytes) {
        return None;
    }
    let hint: Hint = serde_json::from_slice(payload).ok()?;
    check_reply_topic(&hint.reply_topic, limits).ok()?;
    Some(hint.reply_topic)
}

/// Rules every topic name we accept follows: what MQTT allows for publishing, minus what invites confusion.
fn check_topic_name(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("is empty".into());
    }
    if topic.contains(['+', '#']) {
        return Err("must not contain the wildcards `+` or `#`".into());
    }
    if topic.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    if topic.starts_with('$') {
        return Err("must not start with `$` (reserved for the broker)".into());
    }
    if topic.starts_with('/') || topic.ends_with('/') {
        return Err("must not start or end with `/`".into());
    }
    if topic.contains("//") {
        return Err("must not contain empty levels (`//`)".into());
    }
    Ok(())
}

/// Checks a control prefix: a valid topic name with no wildcards, `$` or empty levels.
pub fn validate_prefix(prefix: &str) -> Result<(), TopicError> {
    check_topic_name(prefix).map_err(TopicError)
}

/// Checks a page's reply topic: a plain topic of bounded length, outside the control prefix and `$`, not ours.
pub fn validate_reply_topic(topic: &str, prefix: &str) -> Result<(), ProtocolError> {
    let bad = |reason: String| Err(ProtocolError::BadReplyTopic(reason));
    if topic.len() > MAX_REPLY_TOPIC_BYTES {
        return bad(format!("is {} bytes, the limit is {MAX_REPLY_TOPIC_BYTES}", topic.len()));
    }
    check_topic_name(topic).or_else(bad)?;
    if is_under(topic, prefix) {
        return bad(format!("must not be `{prefix}` or under `{prefix}/` (control topics)"));
    }
    if topic.ends_with(&format!("/{STATUS_LEVEL}")) {
        return bad(format!("must not end with `/{STATUS_LEVEL}` (the server publishes statuses there)"));
    }
    Ok(())
}

/// Whether `topic` is `prefix` itself or a topic below it.
fn is_under(topic: &str, prefix: &str) -> bool {
    topic.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Where statuses for a reply topic are published.
pub fn status_topic(reply_topic: &str) -> String {
    format!("{reply_topic}/{STATUS_LEVEL}")
}

/// The server's topics under one control prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Topics under a checked prefix.
    pub fn new(prefix: &str) -> Result<Topics, TopicError> {
        validate_prefix(prefix)?;
        Ok(Topics { prefix: prefix.to_string() })
    }

    /// The control prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The topic a kind of request arrives on.
    pub fn request(&self, kind: RequestKind) -> String {
        format!("{}/{}", self.prefix, kind.as_str())
    }

    /// The retained list of offered sources.
    pub fn sources(&self) -> String {
        format!("{}/sources", self.prefix)
    }

    /// The retained server statistics.
    pub fn stats(&self) -> String {
        format!("{}/stats", self.prefix)
    }

    /// Where instances of a cluster announce themselves: `<prefix>/instances/<id>`, retained.
    pub fn instance(&self, id: &str) -> String {
        format!("{}/instances/{id}", self.prefix)
    }

    /// The filter for every instance's announcement.
    pub fn instances_filter(&self) -> String {
        format!("{}/instances/+", self.prefix)
    }

    /// The instance id in an announcement topic.
    pub fn instance_id<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let id = topic.strip_prefix(self.prefix.as_str())?.strip_prefix("/instances/")?;
        (!id.is_empty() && !id.contains('/')).then_some(id)
    }

    /// Where pages talk to the cameras that take it (`<prefix>/live/+/talk`, wire::talk).
    pub fn talk_filter(&self) -> String {
        format!("{}/live/+/talk", self.prefix)
    }

    /// The stream id of a talk topic.
    pub fn talk_stream<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let id = topic.strip_prefix(self.prefix.as_str())?.strip_prefix("/live/")?.strip_suffix("/talk")?;
        (!id.is_empty() && !id.contains('/')).then_some(id)
    }

    /// Which request a topic carries, if it is one of ours.
    pub fn request_kind(&self, topic: &str) -> Option<RequestKind> {
        let level = topic.strip_prefix(self.prefix.as_str())?.strip_prefix('/')?;
        RequestKind::ALL.into_iter().find(|k| k.as_str() == level)
    }
}

impl Default for Topics {
    fn default() -> Self {
        Topics { prefix: DEFAULT_PREFIX.into() }
    }
}

/// The body of an error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One of the [`ErrorCode`] wire names.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

/// `{"error": {"code": ..., "message": ...}}`, the answer to a request that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The error.
    pub error: ErrorBody,
}

impl ErrorReply {
    /// An error reply with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply { error: ErrorBody { code: code.as_str().into(), message: message.into() } }
    }
}

/// The answer to a describe: what a player will receive from this URL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DescribeReply {
    /// The URL as requested.
    pub url: String,
    /// The output facts (`mimeCodec` for `MediaSource.isTypeSupported` and `addSourceBuffer`, size, fps, ...),
    /// as fields of the reply itself.
    #[serde(flatten)]
    pub info: OutputInfo,
    /// The stream's own topics, for a v2 play (a page subscribes to the media topic before it plays).
    pub stream: StreamTopics,
    /// With renditions configured, every one (`main` first) with its topics; absent otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub renditions: Vec<RenditionEntry>,
}

/// A rendition in a describe reply: what it is, and its topics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RenditionEntry {
    /// Name, codec string, size, frame rate, bitrate.
    #[serde(flatten)]
    pub info: RenditionInfo,
    /// Its topics (a v2 play with `rendition` set to its name delivers there).
    pub stream: StreamTopics,
}

impl DescribeReply {
    /// The reply for a URL from the facts of its running pipeline.
    pub fn new(url: &str, info: &OutputInfo, stream: &StreamTopics) -> Self {
        DescribeReply { url: url.to_string(), info: info.clone(), stream: stream.clone(), renditions: Vec::new() }
    }
}

/// Why a play ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The page sent stop (or its last will did).
    Stopped,
    /// The source has no more media (end of a file).
    SourceEnded,
    /// The page did not renew its play within the viewer timeout.
    ViewerTimeout,
    /// The server is shutting down.
    Shutdown,
}

/// A message on `<reply_topic>/status`, tagged by `"state"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Status {
    /// Media is flowing; the init segment comes next (or came already) on the reply topic.
    Playing {
        /// The exact MIME type with codecs of the media that follows.
        #[serde(rename = "mimeCodec")]
        mime_codec: String,
        /// For a v2 play: the stream's topics, where its media goes after the join burst.
        #[serde(skip_serializing_if = "Option::is_none")]
        stream: Option<StreamTopics>,
        /// For a v2 play of a stream with renditions: the one these topics carry (`main` for its own).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rendition: Option<String>,
    },
    /// The source is being opened; nothing to show yet.
    Buffering {
        /// Which attempt this is, from 1.
        attempt: u32,
        /// Milliseconds until the next attempt if this one fails.
        retry_in_ms: u64,
    },
    /// The source failed and is being opened again; the viewer keeps its session.
    Reconnecting {
        /// Which retry this is, from 1.
        attempt: u32,
        /// Milliseconds until the attempt.
        retry_in_ms: u64,
    },
    /// A pushed source's publisher is gone; the viewer keeps its session and media resumes when one is back.
    Waiting {
        /// What happened, for people.
        message: String,
    },
    /// The server cannot keep up with the source: it skipped media to stay live, and may encode fewer
    /// frames. Media goes on; `playing` follows once it has kept up for a while.
    Degraded {
        /// What happened, for people.
        message: String,
        /// Media left out so far to stay live, in ms.
        skipped_ms: u64,
    },
    /// The play failed for good.
    Error {
        /// One of the [`ErrorCode`] wire names.
        code: String,
        /// What went wrong, for people.
        message: String,
    },
    /// The play ended normally.
    Ended {
        /// Why.
        reason: EndReason,
    },
}

impl Status {
    /// An error status with a code and a message.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Status::Error { code: code.as_str().into(), message: message.into() }
    }

    /// The wire tag of this status.
    pub fn state(&self) -> &'static str {
        match self {
            Self::Playing { .. } => "playing",
            Self::Buffering { .. } => "buffering",
            Self::Reconnecting { .. } => "reconnecting",
            Self::Waiting { .. } => "waiting",
            Self::Degraded { .. } => "degraded",
            Self::Error { .. } => "error",
            Self::Ended { .. } => "ended",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::TrackMode;
    use serde_json::{json, Value};

    fn limits() -> RequestLimits {
        RequestLimits::default()
    }

    fn parse(kind: RequestKind, payload: &str) -> Result<Request, ProtocolError> {
        parse_request(kind, payload.as_bytes(), &limits())
    }

    fn code_of(kind: RequestKind, payload: &str) -> ErrorCode {
        parse(kind, payload).unwrap_err().code()
    }

    fn play(url: &str, reply_topic: &str) -> String {
        json!({ "url": url, "reply_topic": reply_topic }).to_string()
    }

    fn as_value<T: Serialize>(message: &T) -> Value {
        serde_json::to_value(message).unwrap()
    }

    #[test]
    fn valid_requests() {
        let r = parse(RequestKind::Play, &play("rtsp://cam/1", "video_abc123")).unwrap();
        let v1 = PlayRequest {
            url: "rtsp://cam/1".into(),
            reply_topic: "video_abc123".into(),
            version: None,
            rendition: None,
        };
        assert_eq!(r, Request::Play(v1));
        let v2 = parse(RequestKind::Play, r#"{"url":"rtsp://cam/1","reply_topic":"video_abc123","version":2}"#);
        assert!(matches!(v2, Ok(Request::Play(p)) if p.shared()));
        let v3 = parse(RequestKind::Play, r#"{"url":"rtsp://cam/1","reply_topic":"video_abc123","version":3}"#);
        assert!(matches!(v3, Err(ProtocolError::BadRequest(m)) if m.contains("version")));
        assert_eq!(r.kind(), RequestKind::Play);
        assert_eq!(r.url(), Some("rtsp://cam/1"));

        let r = parse(RequestKind::Describe, r#" {"reply_topic":"pages/p1/describe","url":"builtin://testsrc"}"#);
        assert_eq!(r.unwrap().reply_topic(), "pages/p1/describe");

        let r = parse(RequestKind::Stop, r#"{"reply_topic":"video_abc123"}"#).unwrap();
        assert_eq!(r, Request::Stop(StopRequest { reply_topic: "video_abc123".into() }));
        assert_eq!(r.url(), None);
    }

    #[test]
    fn url_is_trimmed() {
        let r = parse(RequestKind::Play, &play("  builtin://testsrc\n", "t")).unwrap();
        assert_eq!(r.url(), Some("builtin://testsrc"));
    }

    #[test]
    fn not_json_object() {
        for payload in ["", "   ", "nope", "[\"builtin://testsrc\", \"t\"]", "\"x\"", "42", "null", "{"] {
            assert_eq!(code_of(RequestKind::Play, payload), ErrorCode::BadRequest, "{payload:?}");
        }
        let err = parse(RequestKind::Play, r#"["builtin://testsrc", "t"]"#).unwrap_err();
        assert!(err.to_string().contains("not a JSON object"), "{err}");
        let err = parse_request(RequestKind::Play, b"{\"url\":\"\xff\"}", &limits()).unwrap_err();
        assert_eq!(err, ProtocolError::BadRequest("invalid play request: payload is not UTF-8".into()));
    }

    #[test]
    fn serde_problems_are_explained() {
        let err = parse(RequestKind::Play, r#"{"reply_topic":"t"}"#).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadRequest);
        assert!(err.to_string().contains("missing field `url`"), "{err}");

        let err = parse(RequestKind::Describe, r#"{"url":"a://b","reply_topic":"t","extra":1}"#).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadRequest);
        assert!(err.to_string().contains("unknown field `extra`"), "{err}");

        let err = parse(RequestKind::Play, r#"{"url":5,"reply_topic":"t"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid type: integer `5`"), "{err}");

        let err = parse(RequestKind::Stop, r#"{"reply_topic":"t","url":"a://b"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `url`"), "{err}");

        let err = parse(RequestKind::Play, r#"{"url":"a://b","url":"c://d","reply_topic":"t"}"#).unwrap_err();
        assert!(err.to_string().contains("duplicate field `url`"), "{err}");

        let err = parse(RequestKind::Play, r#"{"url":"a://b","reply_topic":"t"} trailing"#).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadRequest);
    }

    #[test]
    fn bad_urls() {
        for url in ["", "   ", "rtsp://cam/\u{0}x", "rtsp://cam/a\u{7f}", "rtsp://cam/\u{85}x"] {
            assert_eq!(code_of(RequestKind::Play, &play(url, "t")), ErrorCode::BadRequest, "{url:?}");
        }
        let long = format!("rtsp://cam/{}", "a".repeat(MAX_URL_BYTES));
        let limits = RequestLimits { max_request_bytes: 10_000, ..limits() };
        let err = parse_request(RequestKind::Describe, play(&long, "t").as_bytes(), &limits).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadRequest);
        assert!(err.to_string().contains("limit is 2048"), "{err}");
        let at_limit = format!("rtsp://cam/{}", "a".repeat(MAX_URL_BYTES - 11));
        assert!(parse_request(RequestKind::Describe, play(&at_limit, "t").as_bytes(), &limits).is_ok());
    }

    #[test]
    fn url_problems_never_echo_the_url() {
        let err = parse(RequestKind::Play, &play("rtsp://admin:hunter2@cam/\u{1}", "t")).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn payload_size_is_checked_first() {
        let limits = RequestLimits { max_request_bytes: 64, ..limits() };
        let big = format!("[{}]", "x".repeat(100));
        let err = parse_request(RequestKind::Play, big.as_bytes(), &limits).unwrap_err();
        assert_eq!(err, ProtocolError::PayloadTooLarge { size: 102, limit: 64 });
        assert_eq!(err.code(), ErrorCode::PayloadTooLarge);

        let exact = play("builtin://testsrc", "t");
        let limits = RequestLimits { max_request_bytes: exact.len(), ..limits };
        assert!(parse_request(RequestKind::Play, exact.as_bytes(), &limits).is_ok());
    }

    #[test]
    fn url_is_checked_before_reply_topic() {
        assert_eq!(code_of(RequestKind::Play, &play("", "video/x")), ErrorCode::BadRequest);
        assert_eq!(code_of(RequestKind::Play, &play("a://b", "video/x")), ErrorCode::BadReplyTopic);
    }

    #[test]
    fn bad_reply_topics_in_requests() {
        for topic in ["", "a/+/b", "a/#", "$SYS/x", "video", "video/play", "a//b", "/a", "a/", "x/status"] {
            assert_eq!(code_of(RequestKind::Play, &play("a://b", topic)), ErrorCode::BadReplyTopic, "{topic:?}");
            let stop = json!({ "reply_topic": topic }).to_string();
            assert_eq!(code_of(RequestKind::Stop, &stop), ErrorCode::BadReplyTopic, "{topic:?}");
        }
    }

    #[test]
    fn reply_topic_rules() {
        let ok = ["video_abc", "videos/x", "pages/p1/media", "video-x/y", "status", "a/status/b", "über/ström"];
        for topic in ok {
            assert_eq!(validate_reply_topic(topic, "video"), Ok(()), "{topic:?}");
        }
        let bad = [
            "",
            "a+b",
            "a/#",
            "a\u{0}b",
            "a\nb",
            "a\u{9f}b",
            "$share/x",
            "/a",
            "a/",
            "a//b",
            "video",
            "video/describe",
            "video/x/y",
            "page/status",
        ];
        for topic in bad {
            let err = validate_reply_topic(topic, "video").unwrap_err();
            assert_eq!(err.code(), ErrorCode::BadReplyTopic, "{topic:?}");
        }
        assert_eq!(validate_reply_topic(&"a".repeat(MAX_REPLY_TOPIC_BYTES), "video"), Ok(()));
        assert!(validate_reply_topic(&"a".repeat(MAX_REPLY_TOPIC_BYTES + 1), "video").is_err());
        // Multi-byte characters count in bytes, as MQTT does.
        assert!(validate_reply_topic(&"é".repeat(65), "video").is_err());
    }

    #[test]
    fn reply_topic_rules_follow_the_prefix() {
        assert_eq!(validate_reply_topic("video/x", "org/cams"), Ok(()));
        assert!(validate_reply_topic("org/cams/x", "org/cams").is_err());
        assert!(validate_reply_topic("org/cams", "org/cams").is_err());
        assert_eq!(validate_reply_topic("org/camsx", "org/cams"), Ok(()));
        assert_eq!(validate_reply_topic("org", "org/cams"), Ok(()));
    }

    #[test]
    fn reply_topic_errors_say_why() {
        let err = validate_reply_topic("video/x", "video").unwrap_err();
        assert_eq!(err.to_string(), "invalid reply_topic: must not be `video` or under `video/` (control topics)");
        let err = validate_reply_topic("a/#", "video").unwrap_err();
        assert!(err.to_string().contains("wildcards"), "{err}");
    }

    #[test]
    fn prefixes() {
        for prefix in ["video", "org/site/video", "v"] {
            assert_eq!(validate_prefix(prefix), Ok(()), "{prefix}");
        }
        for prefix in ["", "video/#", "+", "$SYS", "/video", "video/", "a//b", "a\tb"] {
            assert!(validate_prefix(prefix).is_err(), "{prefix:?}");
        }
        assert!(Topics::new("$x").is_err());
    }

    #[test]
    fn topics() {
        let t = Topics::new("org/video").unwrap();
        assert_eq!(t.request(RequestKind::Describe), "org/video/describe");
        assert_eq!(t.request(RequestKind::Play), "org/video/play");
        assert_eq!(t.request(RequestKind::Stop), "org/video/stop");
        assert_eq!(t.sources(), "org/video/sources");
        assert_eq!(t.stats(), "org/video/stats");
        assert_eq!(t.request_kind("org/video/play"), Some(RequestKind::Play));
        assert_eq!(t.request_kind("org/video/stop"), Some(RequestKind::Stop));
        assert_eq!(t.request_kind("org/video/sources"), None);
        assert_eq!(t.request_kind("org/videoplay"), None);
        assert_eq!(t.request_kind("org/video/play/x"), None);
        assert_eq!(Topics::default().request(RequestKind::Play), "video/play");
        assert_eq!(status_topic("video_abc"), "video_abc/status");
    }

    #[test]
    fn hint_recovers_a_valid_reply_topic() {
        let l = limits();
        let unknown = br#"{"url":"a://b","reply_topic":"page1","extra":true}"#;
        assert!(parse_request(RequestKind::Play, unknown, &l).is_err());
        assert_eq!(reply_topic_hint(unknown, &l).as_deref(), Some("page1"));

        let big = json!({ "url": "x".repeat(10_000), "reply_topic": "page1" }).to_string();
        assert_eq!(reply_topic_hint(big.as_bytes(), &l).as_deref(), Some("page1"));

        assert_eq!(reply_topic_hint(br#"{"url":"a://b","reply_topic":"video/x"}"#, &l), None);
        assert_eq!(reply_topic_hint(br#"{"url":"a://b"}"#, &l), None);
        assert_eq!(reply_topic_hint(b"not json", &l), None);
        let huge = json!({ "url": "x".repeat(HINT_MAX_BYTES), "reply_topic": "page1" }).to_string();
        assert_eq!(reply_topic_hint(huge.as_bytes(), &l), None);
    }

    #[test]
    fn error_codes() {
        let names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "bad_request",
                "bad_reply_topic",
                "payload_too_large",
                "forbidden_url",
                "source_unreachable",
                "source_timeout",
                "unsupported_source",
                "source_ended",
                "overloaded",
                "rate_limited",
                "internal_error"
            ]
        );
        for code in ErrorCode::ALL {
            assert_eq!(as_value(&code), Value::String(code.as_str().into()));
            assert_eq!(ErrorCode::from_code(code.as_str()), Some(code));
            assert_eq!(code.to_string(), code.as_str());
        }
        assert_eq!(ErrorCode::from_code("stopped"), None);
    }

    #[test]
    fn error_reply_shape() {
        let reply = ErrorReply::new(ErrorCode::ForbiddenUrl, "URL is not allowed");
        assert_eq!(as_value(&reply), json!({ "error": { "code": "forbidden_url", "message": "URL is not allowed" } }));
        let err = ProtocolError::PayloadTooLarge { size: 5000, limit: 4096 };
        assert_eq!(
            as_value(&err.to_reply()),
            json!({ "error": { "code": "payload_too_large", "message": "request is 5000 bytes, the limit is 4096" } })
        );
    }

    fn output_info(audio: Option<TrackMode>) -> OutputInfo {
        OutputInfo {
            mime_codec: "video/mp4; codecs=\"avc1.64001F, mp4a.40.2\"".into(),
            width: 1280,
            height: 720,
            fps: 30.0,
            has_audio: audio.is_some(),
            video: TrackMode::Copy,
            audio,
        }
    }

    #[test]
    fn describe_reply_shape() {
        let topics = StreamTopics::new("video", "front-door");
        let reply = DescribeReply::new("rtsp://cam/1", &output_info(Some(TrackMode::Transcode)), &topics);
        assert_eq!(
            as_value(&reply),
            json!({
                "url": "rtsp://cam/1",
                "mimeCodec": "video/mp4; codecs=\"avc1.64001F, mp4a.40.2\"",
                "width": 1280,
                "height": 720,
                "fps": 30.0,
                "has_audio": true,
                "video": "copy",
                "audio": "transcode",
                "stream": {
                    "id": "front-door",
                    "init": "video/live/front-door/init",
                    "media": "video/live/front-door/media",
                    "state": "video/live/front-door/state"
                }
            })
        );
        let silent = as_value(&DescribeReply::new("builtin://testsrc-silent", &output_info(None), &topics));
        assert_eq!(silent["audio"], Value::Null);
        assert_eq!(silent["has_audio"], false);
    }

    #[test]
    fn status_shapes() {
        let cases = [
            (
                Status::Playing {
                    mime_codec: "video/mp4; codecs=\"avc1.42E01E\"".into(),
                    stream: None,
                    rendition: None,
                },
                json!({ "state": "playing", "mimeCodec": "video/mp4; codecs=\"avc1.42E01E\"" }),
            ),
            (
                Status::Buffering { attempt: 1, retry_in_ms: 500 },
                json!({ "state": "buffering", "attempt": 1, "retry_in_ms": 500 }),
            ),
            (
                Status::Reconnecting { attempt: 3, retry_in_ms: 2000 },
                json!({ "state": "reconnecting", "attempt": 3, "retry_in_ms": 2000 }),
            ),
            (
                Status::Waiting { message: "the publisher disconnected".into() },
                json!({ "state": "waiting", "message": "the publisher disconnected" }),
            ),
            (
                Status::Degraded { message: "behind real time".into(), skipped_ms: 1600 },
                json!({ "state": "degraded", "message": "behind real time", "skipped_ms": 1600 }),
            ),
            (
                Status::error(ErrorCode::SourceUnreachable, "connection refused"),
                json!({ "state": "error", "code": "source_unreachable", "message": "connection refused" }),
            ),
            (Status::Ended { reason: EndReason::SourceEnded }, json!({ "state": "ended", "reason": "source_ended" })),
            (
                Status::Ended { reason: EndReason::ViewerTimeout },
                json!({ "state": "ended", "reason": "viewer_timeout" }),
            ),
        ];
        for (status, expected) in cases {
            assert_eq!(as_value(&status), expected);
            assert_eq!(expected["state"], status.state());
            let back: Status = serde_json::from_value(expected).unwrap();
            assert_eq!(back, status);
        }
    }

    #[test]
    fn a_reply_prefix_confines_reply_topics() {
        let limits = RequestLimits { reply_prefix: "pages/".into(), ..RequestLimits::default() };
        let ok = br#"{"url": "builtin://testsrc", "reply_topic": "pages/page_1/media"}"#;
        assert!(parse_request(RequestKind::Play, ok, &limits).is_ok());
        let outside = br#"{"url": "builtin://testsrc", "reply_topic": "page_1/media"}"#;
        let e = parse_request(RequestKind::Play, outside, &limits).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadReplyTopic);
        assert!(e.to_string().contains("must be under `pages/`"), "{e}");
        // Never answered: there is no valid reply topic to answer on.
        assert_eq!(reply_topic_hint(br#"{"reply_topic": "page_1/media"}"#, &limits), None);
        assert_eq!(
            reply_topic_hint(br#"{"reply_topic": "pages/p/media", "x": 1}"#, &limits).as_deref(),
            Some("pages/p/media")
        );
    }

    #[test]
    fn guarded_answers_go_under_the_stream_topics_without_showing_the_reply_topic() {
        let base = guarded_base("org/video", "front-door", "0123456789abcdef0123");
        assert_eq!(base, "org/video/live/front-door/to/0123456789abcdef0123");
        let cases = [
            ("pages/page_ab/media", Some("org/video/live/front-door/to/0123456789abcdef0123/media")),
            ("pages/page_ab/info", Some("org/video/live/front-door/to/0123456789abcdef0123/info")),
            ("a/b/c/media", Some("org/video/live/front-door/to/0123456789abcdef0123/media")),
            ("page_ab", None),
        ];
        for (reply_topic, want) in cases {
            let got = guarded_topic(&base, reply_topic);
            assert_eq!(got.as_deref(), want, "{reply_topic}");
            if let Some(got) = got {
                assert!(!got.contains("page_ab"), "{got} shows the reply topic");
                assert!(validate_reply_topic(&got, "org/video").is_err(), "under the control prefix: no page names it");
            }
        }
    }

    #[test]
    fn guarded_pointer_shape() {
        let stream = StreamTopics::new("video", "front-door").with_replies("video/live/front-door/to/k".into());
        let pointer = GuardedPointer { url: "builtin://testsrc".into(), guarded: true, stream };
        assert_eq!(
            as_value(&pointer),
            json!({"url": "builtin://testsrc", "guarded": true, "stream": {
                "id": "front-door", "init": "video/live/front-door/init", "media": "video/live/front-door/media",
                "state": "video/live/front-door/state", "replies": "video/live/front-door/to/k"}})
        );
        let plain = as_value(&StreamTopics::new("video", "front-door"));
        assert!(plain.get("replies").is_none(), "unguarded, no `replies`: {plain}");
    }
}
