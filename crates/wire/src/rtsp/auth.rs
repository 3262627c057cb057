//! A camera's login: the `WWW-Authenticate` challenges of its 401 and the `Authorization` answering one
//! (RFC 2617: Basic, and Digest with MD5 and `qop=auth` or none, which is what cameras offer).

use base64::Engine;
use md5::{Digest, Md5};

/// A challenge a camera sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="..."`.
    Basic,
    /// `Digest realm="...", nonce="..."`, with what the answer must repeat.
    Digest {
        /// The realm.
        realm: String,
        /// The nonce.
        nonce: String,
        /// An opaque value to send back, if any.
        opaque: Option<String>,
        /// Whether `qop=auth` was offered (then the answer carries a client nonce and a count).
        qop_auth: bool,
    },
}

/// Why no challenge can be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The 401 had no challenge this client can answer.
    #[error("the camera asks for a login this server cannot give (WWW-Authenticate: {0:?})")]
    Unsupported(Vec<String>),
}

/// `key="value", key=value, ...` after the scheme.
fn params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.push((key, value.trim().to_string()));
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// The challenges of the `WWW-Authenticate` headers, Digest first (the stronger), then Basic. Digest with an
/// algorithm other than MD5 is skipped.
pub fn challenges<'a>(headers: impl IntoIterator<Item = &'a str>) -> Result<Vec<Challenge>, AuthError> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for header in headers {
        seen.push(header.to_string());
        let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            out.push(Challenge::Basic);
        } else if scheme.eq_ignore_ascii_case("digest") {
            let p = params(rest);
            let get = |k: &str| p.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            let md5 = get("algorithm").is_none_or(|a| a.eq_ignore_ascii_case("md5"));
            if let (Some(realm), Some(nonce), true) = (get("realm"), get("nonce"), md5) {
                let qop_auth = get("qop").is_some_and(|q| q.split(',').any(|q| q.trim() == "auth"));
                out.push(Challenge::Digest { realm, nonce, opaque: get("opaque"), qop_auth });
            }
        }
    }
    out.sort_by_key(|c| matches!(c, Challenge::Basic));
    if out.is_empty() {
        return Err(AuthError::Unsupported(seen));
    }
    Ok(out)
}

fn md5_hex(text: &str) -> String {
    Md5::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The `Authorization` value answering `challenge` for `method` on `uri`. `cnonce` and `count` are the
/// client's nonce and how many requests used this nonce so far (from 1), for `qop=auth`.
pub fn authorization(
    challenge: &Challenge,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    cnonce: &str,
    count: u32,
) -> String {
    match challenge {
        Challenge::Basic => {
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
        }
        Challenge::Digest { realm, nonce, opaque, qop_auth } => {
            let ha1 = md5_hex(&format!("{user}:{realm}:{password}"));
            let ha2 = md5_hex(&format!("{method}:{uri}"));
            let mut value = format!("Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\"");
            let response = if *qop_auth {
                let nc = format!("{count:08x}");
                value.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
                md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"))
            } else {
                md5_hex(&format!("{ha1}:{nonce}:{ha2}"))
            };
            value.push_str(&format!(", response=\"{response}\""));
            if let Some(opaque) = opaque {
                value.push_str(&format!(", opaque=\"{opaque}\""));
            }
            value
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_2617s_example() {
        // RFC 2617 3.5: "Mufasa", "Circle Of Life", GET /dir/index.html.
        let c = challenges([
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        ])
        .unwrap();
        let answer = authorization(&c[0], "Mufasa", "Circle Of Life", "GET", "/dir/index.html", "0a4f113b", 1);
        assert!(answer.contains("response=\"6629fae49393a05397450978507c4ef1\""), "{answer}");
        assert!(
            answer.contains("nc=00000001") && answer.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""),
            "{answer}"
        );
    }

    #[test]
    fn digest_before_basic_and_what_cannot_be_answered() {
        let c = challenges(["Basic realm=\"cam\"", "Digest realm=\"cam\", nonce=\"n1\""]).unwrap();
        assert!(matches!(c[0], Challenge::Digest { qop_auth: false, .. }) && c[1] == Challenge::Basic, "{c:?}");
        let basic = authorization(&Challenge::Basic, "admin", "pw", "DESCRIBE", "rtsp://cam/", "", 1);
        assert_eq!(basic, "Basic YWRtaW46cHc=");
        let unsupported = ["Digest realm=\"cam\", nonce=\"n\", algorithm=SHA-256", "Bearer x"];
        assert_eq!(challenges(unsupported), Err(AuthError::Unsupported(unsupported.map(String::from).to_vec())));
    }

    #[test]
    fn unquoted_and_odd_spacing() {
        let c = challenges(["Digest realm=cam ,nonce = \"a,b\" , opaque=xyz,algorithm=MD5"]).unwrap();
        assert_eq!(
            c[0],
            Challenge::Digest { realm: "cam".into(), nonce: "a,b".into(), opaque: Some("xyz".into()), qop_auth: false }
        );
    }
}
