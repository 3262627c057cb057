//! The page the gateway serves at `/`: built into the binary (the page's files and the MQTT.js bundle, put
//! together by `build.rs`), so any copy of the binary serves a working page from any directory; or, for people
//! who customise the page, a folder named by `gateway.client_dir`, checked when the server starts.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::path::{Path, PathBuf};
use tower_http::services::ServeDir;

/// The page as built: `$OUT_DIR/page`, written by `build.rs`.
#[derive(rust_embed::Embed)]
#[folder = "$OUT_DIR/page"]
struct Embedded;

/// Why the configured page folder cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum AssetsError {
    /// `gateway.client_dir` names no folder with an `index.html`.
    #[error(
        "gateway.client_dir {}: {why} (leave gateway.client_dir unset to serve the page built into the binary)",
        path.display()
    )]
    ClientDir {
        /// The configured folder.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// The router that answers every path not taken by another route: the page's files.
pub fn page_router(client_dir: Option<&Path>) -> Result<Router, AssetsError> {
    match client_dir {
        None => Ok(Router::new().fallback(embedded)),
        Some(dir) => {
            check_dir(dir)?;
            Ok(Router::new().fallback_service(ServeDir::new(dir).append_index_html_on_directories(true)))
        }
    }
}

fn check_dir(dir: &Path) -> Result<(), AssetsError> {
    let error = |why: String| AssetsError::ClientDir { path: dir.to_path_buf(), why };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(error("is not a folder".into())),
        Err(e) => return Err(error(e.to_string())),
    }
    if !dir.join("index.html").is_file() {
        return Err(error("has no index.html".into()));
    }
    Ok(())
}

/// The embedded file a request path names: `/` and folders mean their `index.html`.
fn file_name(path: &str) -> String {
    let path = path.trim_start_matches('/');
    if path.is_empty() || path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path.to_string()
    }
}

/// The names of the files built into the binary.
pub fn embedded_files() -> Vec<String> {
    Embedded::iter().map(|name| name.into_owned()).collect()
}

async fn embedded(uri: Uri, headers: HeaderMap) -> Response {
    let Some(file) = Embedded::get(&file_name(uri.path())) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    // The content hash as ETag: a browser revalidates (no-cache) and gets 304 until the binary changes.
    let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()[..16]));
    let mut response = if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Response::new(Body::from(file.data))
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(file.metadata.mimetype()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_bundle_are_built_in() {
        let files = embedded_files();
        for name in ["index.html", "app.js", "player.js", "mp4.js", "style.css", "node_modules/mqtt/dist/mqtt.esm.js"] {
            assert!(files.iter().any(|f| f == name), "{name} is embedded: {files:?}");
        }
        assert!(!files.iter().any(|f| f.ends_with(".json") || f.ends_with(".md")), "{files:?}");
        let index = Embedded::get("index.html").expect("index.html");
        assert!(std::str::from_utf8(&index.data).is_ok_and(|t| t.contains("app.js")));
        assert_eq!(
            Embedded::get("app.js").map(|f| f.metadata.mimetype().to_string()).as_deref(),
            Some("text/javascript")
        );
    }

    #[test]
    fn request_paths_name_files() {
        assert_eq!(file_name("/"), "index.html");
        assert_eq!(file_name(""), "index.html");
        assert_eq!(file_name("/player.js"), "player.js");
        assert_eq!(file_name("/node_modules/mqtt/dist/mqtt.esm.js"), "node_modules/mqtt/dist/mqtt.esm.js");
        assert_eq!(file_name("/sub/"), "sub/index.html");
        // rust-embed looks names up in its table: `..` names nothing there.
        assert!(Embedded::get(&file_name("/../Cargo.toml")).is_none());
    }

    #[test]
    fn a_missing_override_folder_is_refused() {
        let missing = Path::new("/nonexistent/mqtt-video-page");
        let e = page_router(Some(missing)).expect_err("refused").to_string();
        assert!(e.starts_with("gateway.client_dir /nonexistent/mqtt-video-page: No such file"), "{e}");
        let e = page_router(Some(Path::new("/"))).expect_err("refused").to_string();
        assert!(e.contains("has no index.html"), "{e}");
    }
}
