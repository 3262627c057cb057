//! Snapshots of sources, for `GET /snapshot/<id>.jpg` and Home Assistant: the keyframe a source's stream holds
//! for late joiners (the stream is started if nobody watches, and then lingers like any other), decoded into a
//! JPEG on a blocking thread. CPU is bounded: one snapshot is encoded at a time in the whole server, and a
//! source's JPEG is made once per keyframe; asking again before the next keyframe gets the same picture.

use super::stream::{Phase, Stream};
use super::{Hub, LateHub};
use crate::media::encode::snapshot::{jpeg_of_keyframe, Jpeg, JpegSettings};
use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use mqtt_video_wire::policy::NamedSource;
use mqtt_video_wire::protocol::{ErrorCode, RequestKind};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The id of each named source in topics, URLs and Home Assistant: its name in lower case, every run of other
/// characters than `a-z0-9` made one `_`; a repeated id gets `_2`, `_3`, ...
pub fn source_ids(sources: &[NamedSource]) -> Vec<(String, NamedSource)> {
    let mut out: Vec<(String, NamedSource)> = Vec::with_capacity(sources.len());
    for source in sources {
        let mut id = String::new();
        for c in source.name.chars().flat_map(char::to_lowercase) {
            if c.is_ascii_alphanumeric() {
                id.push(c);
            } else if !id.ends_with('_') {
                id.push('_');
            }
        }
        let base = match id.trim_matches('_') {
            "" => "source".to_string(),
            trimmed => trimmed.to_string(),
        };
        let mut id = base.clone();
        let mut n = 2;
        while out.iter().any(|(taken, _)| *taken == id) {
            id = format!("{base}_{n}");
            n += 1;
        }
        out.push((id, source.clone()));
    }
    out
}

/// Why there is no snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SnapshotError {
    /// The protocol's code for it.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
}

impl SnapshotError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// A source's last JPEG and the keyframe it was made from.
struct Cached {
    keyframe: Bytes,
    jpeg: Arc<Jpeg>,
}

/// The snapshot maker shared by the gateway and the Home Assistant session.
pub struct Snapshots {
    settings: JpegSettings,
    cache: Mutex<HashMap<String, Cached>>,
    /// One encode at a time, server-wide.
    encoder: tokio::sync::Semaphore,
    /// JPEGs encoded.
    pub encoded: AtomicU64,
    /// Snapshots answered from the cache (same keyframe).
    pub reused: AtomicU64,
}

impl Snapshots {
    /// A maker with these JPEG settings.
    pub fn new(settings: JpegSettings) -> Self {
        Self {
            settings,
            cache: Mutex::default(),
            encoder: tokio::sync::Semaphore::new(1),
            encoded: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    /// A JPEG of the source with this id, or of this name, among the named sources.
    pub async fn of_id(&self, hub: &Arc<Hub>, id_or_name: &str) -> Result<Arc<Jpeg>, SnapshotError> {
        let wanted = id_or_name.trim();
        let source = named(hub, wanted)
            .ok_or_else(|| SnapshotError::new(ErrorCode::ForbiddenUrl, format!("no source is named {wanted:?}")))?;
        self.of(hub, &source).await
    }

    /// The allowed URL of the named source `id_or_name`, if there is one.
    pub fn url_of(&self, hub: &Arc<Hub>, id_or_name: &str) -> Option<String> {
        hub.allow(&named(hub, id_or_name.trim())?.url).ok()
    }

    /// A JPEG of a named source's latest keyframe; starts its stream when nobody watches it.
    pub async fn of(&self, hub: &Arc<Hub>, source: &NamedSource) -> Result<Arc<Jpeg>, SnapshotError> {
        let url = hub.allow(&source.url).map_err(|m| SnapshotError::new(ErrorCode::ForbiddenUrl, m))?;
        let stream =
            hub.stream_of(&url, RequestKind::Describe, None).map_err(|(code, m)| SnapshotError::new(code, m))?;
        let limit = hub.config.pipeline_for(&url).source.connect_timeout() + Duration::from_secs(5);
        let (init, keyframe) = wait_for_keyframe(&stream, limit).await?;
        if let Some(jpeg) = self.cached(&url, &keyframe) {
            self.reused.fetch_add(1, Ordering::Relaxed);
            return Ok(jpeg);
        }
        let _permit =
            self.encoder.acquire().await.map_err(|_| SnapshotError::new(ErrorCode::InternalError, "closing"))?;
        // Another request may have made it while this one waited.
        if let Some(jpeg) = self.cached(&url, &keyframe) {
            self.reused.fetch_add(1, Ordering::Relaxed);
            return Ok(jpeg);
        }
        let settings = self.settings;
        let key = keyframe.clone();
        let made = tokio::task::spawn_blocking(move || jpeg_of_keyframe(&init, &key, &settings))
            .await
            .map_err(|e| SnapshotError::new(ErrorCode::InternalError, format!("the snapshot task failed: {e}")))?
            .map_err(|e| SnapshotError::new(ErrorCode::InternalError, e.to_string()))?;
        self.encoded.fetch_add(1, Ordering::Relaxed);
        let jpeg = Arc::new(made);
        let cached = Cached { keyframe, jpeg: Arc::clone(&jpeg) };
        super::lock(&self.cache).insert(url, cached);
        Ok(jpeg)
    }

    fn cached(&self, url: &str, keyframe: &Bytes) -> Option<Arc<Jpeg>> {
        let cache = super::lock(&self.cache);
        cache.get(url).filter(|c| c.keyframe == *keyframe).map(|c| Arc::clone(&c.jpeg))
    }
}

/// How often a stream that has no keyframe yet is looked at again.
const POLL: Duration = Duration::from_millis(40);

/// The stream's init segment and the keyframe that starts its current GOP, once it has them.
async fn wait_for_keyframe(stream: &Arc<Stream>, limit: Duration) -> Result<(Bytes, Bytes), SnapshotError> {
    let deadline = Instant::now() + limit;
    loop {
        // Keeps a stream that nobody watches from lingering out while it is asked for pictures.
        stream.touch();
        if let Some(pair) = stream.keyframe() {
            return Ok(pair);
        }
        match stream.phase().borrow().clone() {
            Phase::Failed { code, message } => return Err(SnapshotError { code, message }),
            Phase::Ended => return Err(SnapshotError::new(ErrorCode::SourceEnded, "the stream ended")),
            Phase::Starting | Phase::Reconnecting { .. } | Phase::Ready(_) => {}
        }
        if Instant::now() >= deadline {
            let message = format!("no keyframe from the source within {} s", limit.as_secs());
            return Err(SnapshotError::new(ErrorCode::SourceTimeout, message));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `GET /snapshot/<id>.jpg`: the JPEG, or the error as JSON with a fitting status.
pub fn router(hub: LateHub, snapshots: Arc<Snapshots>) -> Router {
    Router::new().route(
        "/snapshot/{file}",
        get(move |Path(file): Path<String>| {
            let (hub, snapshots) = (Arc::clone(&hub), Arc::clone(&snapshots));
            async move { http_snapshot(hub, snapshots, file).await }
        }),
    )
}

async fn http_snapshot(hub: LateHub, snapshots: Arc<Snapshots>, file: String) -> Response {
    let Some(hub) = hub.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the server is starting").into_response();
    };
    let Some(id) = file.strip_suffix(".jpg") else {
        return (StatusCode::NOT_FOUND, "snapshots are at /snapshot/<source id>.jpg").into_response();
    };
    let started = Instant::now();
    match snapshots.of_id(hub, id).await {
        Ok(jpeg) => {
            tracing::debug!(
                source = id,
                bytes = jpeg.bytes.len(),
                ms = started.elapsed().as_millis() as u64,
                "snapshot"
            );
            let headers = [(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "no-store")];
            (headers, jpeg.bytes.clone()).into_response()
        }
        Err(e) => {
            let status = match e.code {
                ErrorCode::ForbiddenUrl => StatusCode::NOT_FOUND,
                ErrorCode::SourceTimeout => StatusCode::GATEWAY_TIMEOUT,
                ErrorCode::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_GATEWAY,
            };
            let body = mqtt_video_wire::protocol::ErrorReply::new(e.code, e.message);
            (status, axum::Json(body)).into_response()
        }
    }
}

/// The named source with snapshot id or name `wanted`.
fn named(hub: &Hub, wanted: &str) -> Option<NamedSource> {
    let ids = source_ids(&hub.config.named_sources());
    ids.into_iter().find(|(id, s)| id == wanted || s.name.eq_ignore_ascii_case(wanted)).map(|(_, s)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(names: &[&str]) -> Vec<NamedSource> {
        names.iter().map(|n| NamedSource::new(n, "builtin://testsrc", "")).collect()
    }

    #[test]
    fn ids_are_slugs_of_the_names_and_unique() {
        let ids: Vec<String> =
            source_ids(&named(&["Front door", "front-door", "Garage (north)", "Été", "!!!", "Front door"]))
                .into_iter()
                .map(|(id, _)| id)
                .collect();
        assert_eq!(ids, ["front_door", "front_door_2", "garage_north", "t", "source", "front_door_3"]);
    }
}
