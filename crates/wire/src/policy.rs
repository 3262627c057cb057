//! The URL allow-list. The server opens connections on a page's behalf, so a URL is allowed only if it is a
//! configured source, an exact allow-list entry, or a plain extension of an allowed prefix. Pure: decides from
//! the text alone, before anything connects.

use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

/// The reason given when no rule matches the URL.
const NOT_LISTED: &str = "not on the allow-list";

/// A source offered by name in the sources list, always allowed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedSource {
    /// Name shown to people; unique.
    pub name: String,
    /// The URL the server opens; may hold credentials, which are never shown.
    pub url: String,
    /// A line about the source.
    #[serde(default)]
    pub description: Option<String>,
}

impl NamedSource {
    /// A named source with a description.
    pub fn new(name: &str, url: &str, description: &str) -> Self {
        NamedSource { name: name.into(), url: url.into(), description: Some(description.into()) }
    }
}

// Configs end up in logs: print URLs redacted.
impl fmt::Debug for NamedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamedSource")
            .field("name", &self.name)
            .field("url", &redact(&self.url))
            .field("description", &self.description)
            .finish()
    }
}

/// URLs allowed beyond the named sources.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AllowList {
    /// URLs allowed exactly as written (after trimming); the only place besides sources for credentials.
    pub urls: Vec<String>,
    /// Plain-text prefixes such as `rtsp://cam.local/`; each must end with `/`.
    pub prefixes: Vec<String>,
}

impl fmt::Debug for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact(u)).collect();
        f.debug_struct("AllowList").field("urls", &urls).field("prefixes", &self.prefixes).finish()
    }
}

/// A source as published in the retained sources list: the URL's password replaced with `***`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferedSource {
    /// Name shown to people.
    pub name: String,
    /// The URL to send in a play request, password redacted; the server maps it back.
    pub url: String,
    /// A line about the source.
    pub description: Option<String>,
}

/// Which rule let a URL through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedBy {
    /// A named source, by name.
    Source(String),
    /// An exact `allow.urls` entry.
    Exact,
    /// An `allow.prefixes` entry, as configured.
    Prefix(String),
}

/// A URL the server may open.
#[derive(Clone, PartialEq, Eq)]
pub struct Allowed {
    /// The URL to open and key the stream by: as configured (with credentials), or scheme and host lowercased.
    pub url: String,
    /// The rule that allowed it.
    pub by: AllowedBy,
}

impl fmt::Debug for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Allowed").field("url", &redact(&self.url)).field("by", &self.by).finish()
    }
}

/// A refused URL, or an allow-list that cannot be loaded. Messages never contain a password.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// The URL is not allowed.
    #[error("URL {url} is not allowed: {reason}")]
    Forbidden {
        /// The URL, password redacted.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// An `allow.prefixes` entry is unsafe or malformed.
    #[error("invalid prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        /// The prefix, password redacted.
        prefix: String,
        /// Why.
        reason: &'static str,
    },
    /// An `allow.urls` entry is malformed.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL, password redacted.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// A named source is malformed or clashes with another.
    #[error("source {name:?}: {reason}")]
    InvalidSource {
        /// The source's name as configured.
        name: String,
        /// Why.
        reason: String,
    },
}

/// A prefix as configured and in the form URLs are compared with.
#[derive(Debug, Clone)]
struct Prefix {
    configured: String,
    normalised: String,
}

/// The checked allow-list.
#[derive(Clone)]
pub struct Policy {
    sources: Vec<NamedSource>,
    /// `redacted[i]` is `sources[i].url` as offered, so a page can play what it was shown.
    redacted: Vec<String>,
    exact: Vec<String>,
    prefixes: Vec<Prefix>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exact: Vec<String> = self.exact.iter().map(|u| redact(u)).collect();
        let prefixes: Vec<&str> = self.prefixes.iter().map(|p| p.configured.as_str()).collect();
        f.debug_struct("Policy")
            .field("sources", &self.sources)
            .field("exact", &exact)
            .field("prefixes", &prefixes)
            .finish()
    }
}

impl Policy {
    /// Checks and builds the allow-list; an unsafe prefix or a clashing source is an error, never ignored.
    pub fn new(sources: &[NamedSource], allow: &AllowList) -> Result<Policy, PolicyError> {
        let sources = checked_sources(sources)?;
        let redacted = sources.iter().map(|s| redact(&s.url)).collect();
        let exact = allow.urls.iter().map(|u| checked_exact(u)).collect::<Result<_, _>>()?;
        let prefixes = allow.prefixes.iter().map(|p| checked_prefix(p)).collect::<Result<_, _>>()?;
        Ok(Policy { sources, redacted, exact, prefixes })
    }

    /// Whether a page may have this URL opened, and which URL to open.
    pub fn check(&self, url: &str) -> Result<Allowed, PolicyError> {
        let url = url.trim();
        if let Some(allowed) = self.exact_match(url) {
            return Ok(allowed);
        }
        let forbidden = |reason| PolicyError::Forbidden { url: redact(url), reason };
        // Only exact entries may bend these rules: a prefix match must be a plain, literal extension.
        if let Some(reason) = url_problem(url) {
            return Err(forbidden(reason));
        }
        let normalised = normalise(url);
        self.prefixes
            .iter()
            .find(|p| normalised.starts_with(&p.normalised))
            .map(|p| Allowed { url: normalised.clone(), by: AllowedBy::Prefix(p.configured.clone()) })
            .ok_or_else(|| forbidden(NOT_LISTED))
    }

    /// A named source (by URL or by its offered, redacted URL) or an exact entry.
    fn exact_match(&self, url: &str) -> Option<Allowed> {
        let named = self.sources.iter().zip(&self.redacted).find(|(s, r)| s.url == url || r.as_str() == url);
        if let Some((source, _)) = named {
            return Some(Allowed { url: source.url.clone(), by: AllowedBy::Source(source.name.clone()) });
        }
        self.exact.iter().find(|e| e.as_str() == url).map(|e| Allowed { url: e.clone(), by: AllowedBy::Exact })
    }

    /// The named sources as published in the retained sources list.
    pub fn offered(&self) -> Vec<OfferedSource> {
        self.sources
            .iter()
            .zip(&self.redacted)
            .map(|(s, url)| OfferedSource {
                name: s.name.clone(),
                url: url.clone(),
                description: s.description.clone(),
            })
            .collect()
    }

    /// The named sources, as checked (trimmed).
    pub fn sources(&self) -> &[NamedSource] {
        &self.sources
    }
}

/// Trimmed sources with unique names and unique (redacted) URLs.
fn checked_sources(sources: &[NamedSource]) -> Result<Vec<NamedSource>, PolicyError> {
    let mut checked: Vec<NamedSource> = Vec::with_capacity(sources.len());
    for source in sources {
        let source = NamedSource {
            name: source.name.trim().to_string(),
            url: source.url.trim().to_string(),
            description: source.description.clone(),
        };
        let invalid = |reason: String| PolicyError::InvalidSource { name: source.name.clone(), reason };
        if let Some(reason) = source_problem(&source) {
            return Err(invalid(reason.into()));
        }
        if let Some(other) = checked.iter().find(|o| o.name.to_lowercase() == source.name.to_lowercase()) {
            return Err(invalid(format!("the name is used twice (also {:?})", other.name)));
        }
        if let Some(other) = checked.iter().find(|o| redact(&o.url) == redact(&source.url)) {
            return Err(invalid(format!("same URL as source {:?}", other.name)));
        }
        checked.push(source);
    }
    Ok(checked)
}

/// What is wrong with a (trimmed) named source on its own.
fn source_problem(source: &NamedSource) -> Option<&'static str> {
    if source.name.is_empty() {
        return Some("the name is empty");
    }
    if source.name.chars().any(char::is_control) {
        return Some("the name contains control characters");
    }
    if let Some(reason) = configured_url_problem(&source.url) {
        return Some(reason);
    }
    // Redaction looks for the password before the host only; a stray `@` later means it would be published.
    if after_authority(&source.url).contains('@') {
        return Some("the URL has an `@` after the host; percent-encode it (%40), and `/`, `?`, `#` in passwords");
    }
    None
}

/// A trimmed exact entry, or why it is unusable.
fn checked_exact(url: &str) -> Result<String, PolicyError> {
    let url = url.trim();
    match configured_url_problem(url) {
        Some(reason) => Err(PolicyError::InvalidUrl { url: redact(url), reason }),
        None => Ok(url.to_string()),
    }
}

/// What is wrong with a configured exact URL; credentials and odd paths are the administrator's call.
fn configured_url_problem(url: &str) -> Option<&'static str> {
    if url.is_empty() {
        Some("the URL is empty")
    } else if url.chars().any(char::is_control) {
        Some("contains control characters")
    } else if url.chars().any(char::is_whitespace) {
        Some("contains whitespace")
    } else {
        None
    }
}

/// A trimmed, normalised prefix, or why it could let more through than it names.
fn checked_prefix(prefix: &str) -> Result<Prefix, PolicyError> {
    let prefix = prefix.trim();
    match prefix_problem(prefix) {
        Some(reason) => Err(PolicyError::InvalidPrefix { prefix: redact(prefix), reason }),
        None => Ok(Prefix { configured: prefix.to_string(), normalised: normalise(prefix) }),
    }
}

/// What makes a prefix unsafe or not a prefix.
fn prefix_problem(prefix: &str) -> Option<&'static str> {
    let Some((scheme, _)) = prefix.split_once("://") else {
        return Some("must contain `://`");
    };
    if !is_scheme(scheme) {
        return Some("must start with a scheme such as `rtsp://`");
    }
    // Without the slash `rtsp://cam.local` would match `rtsp://cam.local.evil.com/`.
    if !prefix.ends_with('/') {
        return Some("must end with `/`");
    }
    if prefix.contains(['*', '?', '#']) {
        return Some("must not contain `*`, `?` or `#`: prefixes are plain text, not patterns");
    }
    if has_userinfo(prefix) {
        return Some("must not contain credentials; list URLs with credentials exactly in allow.urls");
    }
    url_problem(prefix)
}

/// A URL scheme: a letter, then letters, digits, `+`, `-` or `.`.
fn is_scheme(scheme: &str) -> bool {
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// What keeps a URL from being a literal extension of a prefix: anything that could resolve elsewhere than it reads.
fn url_problem(url: &str) -> Option<&'static str> {
    if let Some(problem) = configured_url_problem(url) {
        Some(problem)
    } else if url.contains('\\') {
        Some("contains `\\`")
    } else if url.contains("..") {
        Some("contains `..`")
    } else if has_userinfo(url) {
        Some("contains credentials, which only exact allow-list entries may")
    } else {
        percent_problem(url)
    }
}

/// Refuses escapes of path syntax, of `%` (double encoding), of control bytes, and malformed ones: servers differ.
fn percent_problem(url: &str) -> Option<&'static str> {
    let bytes = url.as_bytes();
    for (i, _) in url.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
            return Some("contains a malformed percent escape");
        };
        if matches!(byte, b'.' | b'/' | b'\\' | b'%') || byte < 0x20 || byte == 0x7f {
            return Some("contains a percent-encoded `.`, `/`, `\\`, `%` or control character");
        }
    }
    None
}

/// The text after `scheme://`, if there is a scheme.
fn after_scheme(url: &str) -> Option<&str> {
    url.split_once("://").map(|(_, rest)| rest)
}

/// The host part after `scheme://`, up to the first `/` (or the end).
fn authority(url: &str) -> &str {
    let rest = after_scheme(url).unwrap_or("");
    rest.split('/').next().unwrap_or(rest)
}

/// Everything after the host part.
fn after_authority(url: &str) -> &str {
    let rest = after_scheme(url).unwrap_or("");
    &rest[authority(url).len()..]
}

/// Whether the host part carries `user@` or `user:password@`.
fn has_userinfo(url: &str) -> bool {
    authority(url).contains('@')
}

/// Scheme and host lowercased (they are case-insensitive), path untouched (it is not).
fn normalise(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host_len = rest.find('/').unwrap_or(rest.len());
            let (host, path) = rest.split_at(host_len);
            format!("{}://{}{path}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase())
        }
        None => url.to_string(),
    }
}

/// The URL with the password in `scheme://user:password@host` replaced by `***`; other URLs unchanged.
pub fn redact(url: &str) -> String {
    let Some(rest) = after_scheme(url) else {
        return url.to_string();
    };
    let rest_start = url.len() - rest.len();
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_len].rfind('@') else {
        return url.to_string();
    };
    let Some(colon) = rest[..at].find(':') else {
        return url.to_string();
    };
    format!("{}***{}", &url[..rest_start + colon + 1], &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(name: &str, url: &str) -> NamedSource {
        NamedSource { name: name.into(), url: url.into(), description: None }
    }

    fn allow(urls: &[&str], prefixes: &[&str]) -> AllowList {
        AllowList {
            urls: urls.iter().map(|s| s.to_string()).collect(),
            prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn policy(urls: &[&str], prefixes: &[&str]) -> Policy {
        let sources =
            [source("Test pattern", "builtin://testsrc"), source("Lobby", "rtsp://admin:s3cret@10.0.0.5/live")];
        Policy::new(&sources, &allow(urls, prefixes)).unwrap()
    }

    fn reason(p: &Policy, url: &str) -> &'static str {
        match p.check(url) {
            Err(PolicyError::Forbidden { reason, .. }) => reason,
            other => panic!("{url}: expected forbidden, got {other:?}"),
        }
    }

    #[test]
    fn named_sources_are_allowed() {
        let p = policy(&[], &[]);
        let a = p.check("builtin://testsrc").unwrap();
        assert_eq!(a, Allowed { url: "builtin://testsrc".into(), by: AllowedBy::Source("Test pattern".into()) });
        assert!(p.check(" builtin://testsrc\n").is_ok(), "trimmed");
        assert_eq!(reason(&p, "builtin://testsrc2"), NOT_LISTED);
        assert_eq!(reason(&p, "builtin://testsrc/"), NOT_LISTED);
        assert_eq!(reason(&p, "BUILTIN://TESTSRC"), NOT_LISTED, "exact means exact");
    }

    #[test]
    fn offered_url_of_a_source_with_credentials_plays() {
        let p = policy(&[], &[]);
        let offered = p.offered();
        assert_eq!(offered[1].url, "rtsp://admin:***@10.0.0.5/live");
        let a = p.check(&offered[1].url).unwrap();
        assert_eq!(a.url, "rtsp://admin:s3cret@10.0.0.5/live");
        assert_eq!(a.by, AllowedBy::Source("Lobby".into()));
        assert!(p.check("rtsp://admin:s3cret@10.0.0.5/live").is_ok());
    }

    #[test]
    fn exact_entries() {
        let p = policy(&["rtsp://viewer:pw@cam.example.com:554/h264", "http://media.example.com/a.ts"], &[]);
        let a = p.check("rtsp://viewer:pw@cam.example.com:554/h264").unwrap();
        assert_eq!(a.by, AllowedBy::Exact);
        assert_eq!(a.url, "rtsp://viewer:pw@cam.example.com:554/h264");
        assert!(p.check("http://media.example.com/a.ts").is_ok());
        assert_eq!(reason(&p, "http://media.example.com/a.ts?x=1"), NOT_LISTED);
        assert_eq!(reason(&p, "http://media.example.com/a.tsx"), NOT_LISTED);
        assert_eq!(reason(&p, "http://media.example.com/"), NOT_LISTED);
    }

    #[test]
    fn prefix_matches() {
        let p = policy(&[], &["rtsp://cam.local/", "http://media.example.com/live/"]);
        let a = p.check("rtsp://cam.local/stream1").unwrap();
        assert_eq!(
            a,
            Allowed { url: "rtsp://cam.local/stream1".into(), by: AllowedBy::Prefix("rtsp://cam.local/".into()) }
        );
        assert!(p.check("http://media.example.com/live/a/b.m3u8?token=abc").is_ok());
        assert_eq!(reason(&p, "http://media.example.com/vod/a.mp4"), NOT_LISTED);
        assert_eq!(reason(&p, "http://media.example.com/liveX/a.mp4"), NOT_LISTED);
        assert_eq!(reason(&p, "rtsp://cam.local:8554/stream1"), NOT_LISTED, "another port is another server");
        assert_eq!(reason(&p, "rtsps://cam.local/stream1"), NOT_LISTED);
    }

    #[test]
    fn host_lookalikes_do_not_match() {
        let p = policy(&[], &["rtsp://cam.local/"]);
        for url in
            ["rtsp://cam.local.evil.com/", "rtsp://cam.local.evil.com/x", "rtsp://cam.localhost/x", "rtsp://cam.local"]
        {
            assert_eq!(reason(&p, url), NOT_LISTED, "{url}");
        }
        assert_eq!(reason(&p, "rtsp://evil.com/rtsp://cam.local/x"), NOT_LISTED);
    }

    #[test]
    fn scheme_and_host_case_is_ignored() {
        let p = policy(&[], &["RTSP://Cam.Local/Streams/"]);
        let a = p.check("rtsp://CAM.local/Streams/1").unwrap();
        assert_eq!(a.url, "rtsp://cam.local/Streams/1", "the stream key is normalised");
        assert_eq!(a.by, AllowedBy::Prefix("RTSP://Cam.Local/Streams/".into()));
        assert_eq!(reason(&p, "rtsp://cam.local/streams/1"), NOT_LISTED, "paths are case-sensitive");
    }

    #[test]
    fn traversal_is_refused() {
        let p = policy(&[], &["http://media.example.com/live/"]);
        let cases = [
            ("http://media.example.com/live/../admin", "contains `..`"),
            ("http://media.example.com/live/..", "contains `..`"),
            ("http://media.example.com/live/a..b", "contains `..`"),
            (
                "http://media.example.com/live/%2e%2e/admin",
                "contains a percent-encoded `.`, `/`, `\\`, `%` or control character",
            ),
            (
                "http://media.example.com/live/%2E./admin",
                "contains a percent-encoded `.`, `/`, `\\`, `%` or control character",
            ),
            (
                "http://media.example.com/live/a%2Fb",
                "contains a percent-encoded `.`, `/`, `\\`, `%` or control character",
            ),
            (
                "http://media.example.com/live/a%2fb",
                "contains a percent-encoded `.`, `/`, `\\`, `%` or control character",
            ),
            (
                "http://media.example.com/live/%252e%252e/",
                "contains a percent-encoded `.`, `/`, `\\`, `%` or control character",
            ),
            ("http://media.example.com/live/a%5c..", "contains `..`"),
            (
                "http://media.example.com/live/a%00",
                "contains a percent-encoded `.`, `/`, `\\`, `%` or control character",
            ),
            ("http://media.example.com/live/a%zz", "contains a malformed percent escape"),
            ("http://media.example.com/live/a%2", "contains a malformed percent escape"),
            ("http://media.example.com/live\\..\\x", "contains `\\`"),
            ("http://media.example.com/live/a\\b", "contains `\\`"),
            ("http://media.example.com/live/a b", "contains whitespace"),
            ("http://media.example.com/live/a\u{a0}b", "contains whitespace"),
            ("http://media.example.com/live/a\u{1}b", "contains control characters"),
        ];
        for (url, why) in cases {
            assert_eq!(reason(&p, url), why, "{url}");
        }
        assert!(p.check("http://media.example.com/live/a%20b").is_ok(), "harmless escapes pass");
    }

    #[test]
    fn credentials_only_in_exact_entries() {
        let p = policy(&["rtsp://admin:pw@cam.local/main"], &["rtsp://cam.local/"]);
        assert!(p.check("rtsp://admin:pw@cam.local/main").is_ok());
        for url in ["rtsp://admin:pw@cam.local/other", "rtsp://admin@cam.local/x", "rtsp://cam.local@evil.com/x"] {
            let err = p.check(url).unwrap_err();
            assert!(matches!(err, PolicyError::Forbidden { reason, .. } if reason.contains("credentials")), "{url}");
        }
        assert!(p.check("rtsp://cam.local/a@b").is_ok(), "an @ in the path is not userinfo");
    }

    #[test]
    fn forbidden_messages_never_show_a_password() {
        let p = policy(&[], &["rtsp://cam.local/"]);
        for url in [
            "rtsp://admin:hunter2@cam.local/x",
            "rtsp://admin:hunter2@other/x",
            "rtsp://u:hunter2@h/..",
            "x://u:hunter2@h/ /",
        ] {
            let err = p.check(url).unwrap_err();
            assert!(!err.to_string().contains("hunter2"), "{err}");
            assert!(format!("{err:?}").contains("***"), "{err:?}");
        }
        let err = p.check("rtsp://other.local/x").unwrap_err();
        assert_eq!(err.to_string(), "URL rtsp://other.local/x is not allowed: not on the allow-list");
    }

    #[test]
    fn protocol_tricks_without_a_prefix_are_refused() {
        let p = policy(&[], &["http://media.example.com/"]);
        for url in
            ["concat:a|b", "file:///etc/passwd", "/etc/passwd", "subfile,,start,0,end,0,,:/etc/passwd", "", "   "]
        {
            assert!(p.check(url).is_err(), "{url}");
        }
    }

    fn prefix_error(prefix: &str) -> &'static str {
        match Policy::new(&[], &allow(&[], &[prefix])) {
            Err(PolicyError::InvalidPrefix { reason, .. }) => reason,
            other => panic!("{prefix}: expected an invalid prefix, got {other:?}"),
        }
    }

    #[test]
    fn bad_prefixes_are_refused_at_load() {
        let cases = [
            ("cam.local/", "must contain `://`"),
            ("rtsp:/cam.local/", "must contain `://`"),
            ("://cam.local/", "must start with a scheme such as `rtsp://`"),
            ("1tp://cam.local/", "must start with a scheme such as `rtsp://`"),
            ("rtsp://cam.local", "must end with `/`"),
            ("rtsp://cam.local/live", "must end with `/`"),
            ("rtsp://cam.*/", "must not contain `*`, `?` or `#`: prefixes are plain text, not patterns"),
            ("http://h/a?/", "must not contain `*`, `?` or `#`: prefixes are plain text, not patterns"),
            ("http://h/a#/", "must not contain `*`, `?` or `#`: prefixes are plain text, not patterns"),
            ("http://h/a/../", "contains `..`"),
            ("rtsp://u:p@cam.local/", "must not contain credentials; list URLs with credentials exactly in allow.urls"),
            (
                "rtsp://cam.local@evil/",
                "must not contain credentials; list URLs with credentials exactly in allow.urls",
            ),
            ("http://h/%2e%2e/", "contains a percent-encoded `.`, `/`, `\\`, `%` or control character"),
            ("http://h/a b/", "contains whitespace"),
            ("http://h\\a/", "contains `\\`"),
        ];
        for (prefix, why) in cases {
            assert_eq!(prefix_error(prefix), why, "{prefix}");
        }
        let err = Policy::new(&[], &allow(&[], &["rtsp://u:hunter2@cam/"])).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(Policy::new(&[], &allow(&[], &[" file:///srv/videos/ ", "rtsp://cam.local:8554/"])).is_ok());
    }

    #[test]
    fn bad_exact_entries_are_refused_at_load() {
        for url in ["", "  ", "rtsp://cam/a b", "rtsp://cam/\u{7}"] {
            let err = Policy::new(&[], &allow(&[url], &[])).unwrap_err();
            assert!(matches!(err, PolicyError::InvalidUrl { .. }), "{url:?}: {err:?}");
        }
    }

    #[test]
    fn source_names_are_unique_and_present() {
        let dup = [source("Lobby", "rtsp://a/1"), source("lobby ", "rtsp://a/2")];
        let err = Policy::new(&dup, &AllowList::default()).unwrap_err();
        assert_eq!(err.to_string(), "source \"lobby\": the name is used twice (also \"Lobby\")");

        let err = Policy::new(&[source("  ", "rtsp://a/1")], &AllowList::default()).unwrap_err();
        assert_eq!(err.to_string(), "source \"\": the name is empty");

        let same_url = [source("A", "rtsp://u:one@a/1"), source("B", "rtsp://u:two@a/1")];
        let err = Policy::new(&same_url, &AllowList::default()).unwrap_err();
        assert_eq!(err.to_string(), "source \"B\": same URL as source \"A\"");

        let err = Policy::new(&[source("A", "")], &AllowList::default()).unwrap_err();
        assert!(matches!(err, PolicyError::InvalidSource { .. }));

        let unsafe_password = [source("A", "rtsp://admin:pa/ss@cam/live")];
        let err = Policy::new(&unsafe_password, &AllowList::default()).unwrap_err();
        assert!(err.to_string().contains("percent-encode"), "{err}");
    }

    #[test]
    fn offered_list() {
        let sources = [
            NamedSource::new("Test pattern", "builtin://testsrc", "640x360"),
            source("Lobby", " rtsp://admin:s3cret@10.0.0.5/live "),
        ];
        let p = Policy::new(&sources, &AllowList::default()).unwrap();
        assert_eq!(
            p.offered(),
            [
                OfferedSource {
                    name: "Test pattern".into(),
                    url: "builtin://testsrc".into(),
                    description: Some("640x360".into())
                },
                OfferedSource { name: "Lobby".into(), url: "rtsp://admin:***@10.0.0.5/live".into(), description: None },
            ]
        );
        assert_eq!(
            serde_json::to_value(&p.offered()[0]).unwrap(),
            serde_json::json!({ "name": "Test pattern", "url": "builtin://testsrc", "description": "640x360" })
        );
        assert_eq!(p.sources()[1].url, "rtsp://admin:s3cret@10.0.0.5/live", "trimmed");
    }

    #[test]
    fn debug_output_is_redacted() {
        let p = policy(&["rtsp://u:exactpw@cam/x"], &[]);
        let text = format!("{p:?} {:?} {:?}", p.check("rtsp://u:exactpw@cam/x").unwrap(), p.sources());
        assert!(!text.contains("s3cret") && !text.contains("exactpw"), "{text}");
        let list = allow(&["rtsp://u:exactpw@cam/x"], &[]);
        assert!(!format!("{list:?}").contains("exactpw"));
    }

    #[test]
    fn redaction() {
        let cases = [
            ("rtsp://admin:secret@cam.local:554/live", "rtsp://admin:***@cam.local:554/live"),
            ("rtsp://admin:secret@cam.local", "rtsp://admin:***@cam.local"),
            ("rtsp://admin:p@ss@cam.local/x", "rtsp://admin:***@cam.local/x"),
            ("http://u:pw@h?x=1", "http://u:***@h?x=1"),
            ("rtsp://admin@cam.local/live", "rtsp://admin@cam.local/live"),
            ("rtsp://cam.local/a:b@c", "rtsp://cam.local/a:b@c"),
            ("rtsp://cam.local:554/live", "rtsp://cam.local:554/live"),
            ("rtsp://:secret@cam.local/", "rtsp://:***@cam.local/"),
            ("builtin://testsrc", "builtin://testsrc"),
            ("/srv/a:b@c.mp4", "/srv/a:b@c.mp4"),
            ("", ""),
        ];
        for (url, expected) in cases {
            assert_eq!(redact(url), expected, "{url}");
        }
    }
}
