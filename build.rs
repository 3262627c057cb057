//! Build-time checks and the page.
//!
//! - The FFmpeg development packages are checked up front, with one clear line instead of a bindgen failure.
//! - The page (`client/*.html`, `*.js`, `*.css`) and its one dependency, the MQTT.js browser bundle, are put
//!   together in `$OUT_DIR/page`, which `src/server/assets.rs` embeds, so the binary serves its page from any
//!   directory. MQTT.js comes from npm as `client/package-lock.json` pins it: `client/node_modules` when
//!   `npm ci` was run there, else this script runs `npm ci` in `$OUT_DIR` (npm checks the lock's integrity
//!   hash); without npm the build stops with one line saying what to do.

use std::path::{Path, PathBuf};
use std::process::Command;

const LIBS: [(&str, &str); 7] = [
    ("libavcodec", "libavcodec-dev"),
    ("libavformat", "libavformat-dev"),
    ("libavutil", "libavutil-dev"),
    ("libavfilter", "libavfilter-dev"),
    ("libavdevice", "libavdevice-dev"),
    ("libswscale", "libswscale-dev"),
    ("libswresample", "libswresample-dev"),
];

/// The page's import of the bundle, relative to the page's folder (the same with `gateway.client_dir`).
const BUNDLE: &str = "node_modules/mqtt/dist/mqtt.esm.js";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // The page's own files and the lock, one by one: watching the folder would take in `node_modules`, which
    // `npm ci` writes anew, and every test binary would be linked again after each install. The bundle is the
    // one the lock pins, so the lock stands for it. A file added to client/ is seen with the next change of
    // one that imports it.
    for name in ["package.json", "package-lock.json"] {
        println!("cargo:rerun-if-changed=client/{name}");
    }
    for (path, _) in page_files(Path::new("client")).unwrap_or_default() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    check_ffmpeg();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    if let Err(message) = assemble_page(Path::new("client"), &out) {
        fail(&message);
    }
}

/// The page's files in `client` (HTML, JavaScript, CSS; not the tests), with the names they are served by.
fn page_files(client: &Path) -> Result<Vec<(PathBuf, PathBuf)>, String> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(client).map_err(|e| format!("reading {}: {e}", client.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let page_file = ["html", "js", "css"].iter().any(|ext| name.ends_with(&format!(".{ext}")));
        if path.is_file() && page_file && !name.ends_with(".test.js") {
            files.push((path, PathBuf::from(name)));
        }
    }
    Ok(files)
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}

fn check_ffmpeg() {
    let missing: Vec<&str> = LIBS
        .iter()
        .filter(|(lib, _)| pkg_config::Config::new().cargo_metadata(false).probe(lib).is_err())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        fail(&format!(
            "FFmpeg development files not found. Install them with: \
             sudo apt-get install pkg-config clang libclang-dev {}",
            missing.join(" ")
        ));
    }
}

/// Writes the page's files and the bundle into `out/page`, leaving files whose bytes did not change untouched
/// (their modification time decides whether the crate is compiled again).
fn assemble_page(client: &Path, out: &Path) -> Result<(), String> {
    let version = locked_mqtt_version(&client.join("package-lock.json"))?;
    let bundle = mqtt_bundle(client, out, &version)?;
    let mut files = page_files(client)?;
    if !files.iter().any(|(_, name)| name == Path::new("index.html")) {
        return Err(format!("{} has no index.html", client.display()));
    }
    files.push((bundle, PathBuf::from(BUNDLE)));
    let page = out.join("page");
    for (from, to) in &files {
        let bytes = std::fs::read(from).map_err(|e| format!("reading {}: {e}", from.display()))?;
        let target = page.join(to);
        if std::fs::read(&target).ok().as_deref() != Some(bytes.as_slice()) {
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            }
            std::fs::write(&target, bytes).map_err(|e| format!("writing {}: {e}", target.display()))?;
        }
    }
    remove_stale(&page, &page, &files);
    Ok(())
}

/// Deletes files under `dir` that are no longer part of the page (a client file that was removed).
fn remove_stale(root: &Path, dir: &Path, keep: &[(PathBuf, PathBuf)]) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            remove_stale(root, &path, keep);
        } else if let Ok(rel) = path.strip_prefix(root) {
            if !keep.iter().any(|(_, to)| to == rel) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// The MQTT.js version `package-lock.json` pins.
fn locked_mqtt_version(lock: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(lock).map_err(|e| format!("reading {}: {e}", lock.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", lock.display()))?;
    json["packages"]["node_modules/mqtt"]["version"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{} pins no MQTT.js (packages.\"node_modules/mqtt\".version)", lock.display()))
}

/// The installed MQTT.js version under `root` (`root/node_modules/mqtt`), if its bundle is there too.
fn installed_mqtt_version(root: &Path) -> Option<String> {
    if !root.join(BUNDLE).is_file() {
        return None;
    }
    let text = std::fs::read_to_string(root.join("node_modules/mqtt/package.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["version"].as_str().map(str::to_string)
}

/// The bundle of exactly the locked version: `client/node_modules`, or an `npm ci` of the lock in `out/npm`.
fn mqtt_bundle(client: &Path, out: &Path, version: &str) -> Result<PathBuf, String> {
    if installed_mqtt_version(client).as_deref() == Some(version) {
        return Ok(client.join(BUNDLE));
    }
    let npm_dir = out.join("npm");
    if installed_mqtt_version(&npm_dir).as_deref() != Some(version) {
        println!(
            "cargo:warning=client/node_modules has no MQTT.js {version}: installing it with npm ci from \
             client/package-lock.json (or run `npm ci` in client/)"
        );
        std::fs::create_dir_all(&npm_dir).map_err(|e| format!("creating {}: {e}", npm_dir.display()))?;
        for file in ["package.json", "package-lock.json"] {
            std::fs::copy(client.join(file), npm_dir.join(file)).map_err(|e| format!("copying {file}: {e}"))?;
        }
        let status = Command::new("npm")
            .args(["ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&npm_dir)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                return Err(format!(
                    "`npm ci` for the page's MQTT.js {version} failed ({s}); run `npm ci` in client/ and build again"
                ))
            }
            Err(e) => {
                return Err(format!(
                    "the page needs MQTT.js {version} from npm and npm cannot run ({e}): install Node.js and npm \
                     (bash scripts/setup.sh), or run `npm ci` in client/ on a machine that has them"
                ))
            }
        }
    }
    if installed_mqtt_version(&npm_dir).as_deref() != Some(version) {
        return Err(format!("`npm ci` did not install MQTT.js {version} in {}", npm_dir.display()));
    }
    Ok(npm_dir.join(BUNDLE))
}
