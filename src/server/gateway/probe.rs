//! `/probe?bytes=N`: N bytes sent back to back, for the page to time how fast its link carries them. A page
//! on a low rendition learns whether the link would carry a higher one this way, with a few hundred ms of
//! data, instead of switching up to find out (a switch that does not fit queues the higher rendition's GOP
//! in front of the picture on screen, seconds of it on a link with a deep queue).

use axum::extract::RawQuery;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// Where the page asks for a probe.
pub const PROBE_PATH: &str = "/probe";
/// The most one probe sends: a quarter of a second of a 16 Mbit/s rendition.
pub const MAX_PROBE_BYTES: usize = 512 * 1024;

/// Why a probe request was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// No `bytes=N` in the query.
    #[error("say how many bytes: /probe?bytes=N")]
    Missing,
    /// `bytes` is not a number of 1 to [`MAX_PROBE_BYTES`].
    #[error("bytes must be a number from 1 to {MAX_PROBE_BYTES}")]
    Size,
}

/// The size a probe's query asks for (other parameters, a cache-busting one, are ignored).
pub fn probe_size(query: Option<&str>) -> Result<usize, ProbeError> {
    let value =
        query.unwrap_or_default().split('&').find_map(|pair| pair.strip_prefix("bytes=")).ok_or(ProbeError::Missing)?;
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX_PROBE_BYTES).contains(&n) => Ok(n),
        _ => Err(ProbeError::Size),
    }
}

/// The handler: the bytes, never cached (a cached probe would time the browser's cache), readable by a page
/// of any origin (one embedded elsewhere, its broker this gateway): they are zeros.
pub async fn probe(RawQuery(query): RawQuery) -> Response {
    match probe_size(query.as_deref()) {
        Ok(n) => (
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::CONTENT_TYPE, "application/octet-stream"),
                (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            ],
            vec![0u8; n],
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let table: [(Option<&str>, Result<usize, ProbeError>); 9] = [
            (Some("bytes=65536"), Ok(65536)),
            (Some("t=123&bytes=1"), Ok(1)),
            (Some("bytes=524288"), Ok(MAX_PROBE_BYTES)),
            (Some("bytes=524289"), Err(ProbeError::Size)),
            (Some("bytes=0"), Err(ProbeError::Size)),
            (Some("bytes=-1"), Err(ProbeError::Size)),
            (Some("bytes=99999999999999999999999"), Err(ProbeError::Size)),
            (Some("size=10"), Err(ProbeError::Missing)),
            (None, Err(ProbeError::Missing)),
        ];
        for (query, want) in table {
            assert_eq!(probe_size(query), want, "{query:?}");
        }
    }
}
