//! `--spawn`: a mosquitto and an `mqtt-video serve` of the bench's own, on free loopback ports, so that a
//! bench runs with no setup. Both are killed and their scratch folder removed when dropped.

use super::BenchError;
use crate::media::config::RtspFrameEnd;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What `--spawn` started.
#[derive(Debug)]
pub struct Spawned {
    dir: PathBuf,
    broker: Option<Child>,
    server: Child,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
}

/// The server's settings that matter to a bench.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `pipeline.mode`.
    pub mode: String,
    /// `topics.prefix`.
    pub prefix: String,
    /// Viewers the bench will start (the per-stream limit is raised to fit).
    pub viewers: usize,
    /// The source URL (allowed exactly, unless it is a built-in source).
    pub url: String,
    /// `[[pipeline.renditions]]`: (name, max height, kbit/s).
    pub renditions: Vec<(String, u32, u32)>,
    /// `[pipeline.source] rtsp_frame_end`.
    pub rtsp_frame_end: RtspFrameEnd,
}

/// `NAME:MAX_HEIGHT:KBPS` (`low:360:600`) as (name, max height, kbit/s).
pub fn parse_rendition(text: &str) -> Result<(String, u32, u32), String> {
    let bad = || format!("--spawn-rendition {text:?}: expected NAME:MAX_HEIGHT:KBPS, such as low:360:600");
    let mut parts = text.split(':');
    let (Some(name), Some(height), Some(kbps), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let number = |s: &str| s.parse::<u32>().ok().filter(|n| *n > 0);
    match (name.is_empty(), number(height), number(kbps)) {
        (false, Some(h), Some(k)) => Ok((name.to_string(), h, k)),
        _ => Err(bad()),
    }
}

fn free_port() -> Result<u16, BenchError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| BenchError::Spawn(format!("no free port: {e}")))?;
    l.local_addr().map(|a| a.port()).map_err(|e| BenchError::Spawn(format!("no free port: {e}")))
}

fn wait_for_port(port: u16, timeout: Duration, what: &str, child: &mut Child, log: &Path) -> Result<(), BenchError> {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let said = std::fs::read_to_string(log).unwrap_or_default();
            return Err(BenchError::Spawn(format!("{what} exited ({status}): {}", said.trim())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BenchError::Spawn(format!("{what} did not listen on port {port} within {timeout:?}")))
}

/// The server's config for a bench; pure, so that it can be checked against the real config loader.
pub fn server_config(settings: &ServerSettings, host: &str, port: u16, client_id: &str) -> String {
    let allow = if settings.url.starts_with("builtin://") {
        String::new()
    } else {
        format!("[allow]\nurls = [{}]\n", toml_string(&settings.url))
    };
    let renditions: String = settings
        .renditions
        .iter()
        .map(|(name, height, kbps)| {
            format!(
                "[[pipeline.renditions]]\nname = {}\nmax_height = {height}\nbitrate_kbps = {kbps}\n\n",
                toml_string(name)
            )
        })
        .collect();
    format!(
        "[broker]\nhost = {}\nport = {port}\nclient_id = {}\n\n[gateway]\nenabled = false\n\n[topics]\nprefix = {}\n\n\
         [limits]\nmax_viewers_per_stream = {}\n\n[stats]\ninterval_secs = 1\n\n[pipeline]\nmode = {}\n\n[pipeline.source]\nrtsp_frame_end = \"{}\"\n\n{renditions}{allow}",
        toml_string(host),
        toml_string(client_id),
        toml_string(&settings.prefix),
        settings.viewers.max(100) + 10,
        toml_string(&settings.mode),
        match settings.rtsp_frame_end {
            RtspFrameEnd::Marker => "marker",
            RtspFrameEnd::Parser => "parser",
        },
    )
}

fn toml_string(s: &str) -> String {
    // A JSON string is a valid TOML basic string.
    serde_json::Value::String(s.to_string()).to_string()
}

impl Spawned {
    /// Starts a mosquitto (unless `broker` names one) and the server of this executable.
    pub fn start(settings: &ServerSettings, broker: Option<(String, u16)>) -> Result<Spawned, BenchError> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let tag = format!("mqtt-video-bench-{}-{nanos}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir).map_err(|e| BenchError::Spawn(format!("{}: {e}", dir.display())))?;
        let io = |e: std::io::Error| BenchError::Spawn(format!("{}: {e}", dir.display()));

        let (host, port, broker_child) = match broker {
            Some((h, p)) => (h, p, None),
            None => {
                let port = free_port()?;
                let conf = dir.join("mosquitto.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
                    ),
                )
                .map_err(io)?;
                let log = dir.join("mosquitto.log");
                let mut child = Command::new("mosquitto")
                    .arg("-c")
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).map_err(io)?)
                    .spawn()
                    .map_err(|e| {
                        BenchError::Spawn(format!(
                            "cannot start mosquitto ({e}): install it (apt-get install mosquitto) or pass --broker"
                        ))
                    })?;
                if let Err(e) = wait_for_port(port, Duration::from_secs(5), "mosquitto", &mut child, &log) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e);
                }
                ("127.0.0.1".to_string(), port, Some(child))
            }
        };

        let config = dir.join("server.toml");
        std::fs::write(&config, server_config(settings, &host, port, &tag)).map_err(io)?;
        let exe = std::env::current_exe().map_err(|e| BenchError::Spawn(format!("own executable: {e}")))?;
        let log = std::fs::File::create(dir.join("server.log")).map_err(io)?;
        let server = Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("MQTT_VIDEO_LOG", std::env::var("MQTT_VIDEO_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        let server = match server {
            Ok(s) => s,
            Err(e) => {
                if let Some(mut b) = broker_child {
                    let _ = b.kill();
                    let _ = b.wait();
                }
                return Err(BenchError::Spawn(format!("cannot start the server: {e}")));
            }
        };
        Ok(Spawned { dir, broker: broker_child, server, host, port })
    }

    /// The server's process id, for /proc figures.
    pub fn server_pid(&self) -> u32 {
        self.server.id()
    }

    /// The server's log so far (for error messages).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        if let Some(b) = &mut self.broker {
            let _ = b.kill();
            let _ = b.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_server_config_loads_and_allows_the_url() {
        let settings = ServerSettings {
            mode: "copy".into(),
            prefix: "bench/video".into(),
            viewers: 250,
            url: "rtsp://cam.local:8554/a?b=1".into(),
            renditions: vec![("low".into(), 360, 600)],
            rtsp_frame_end: RtspFrameEnd::Parser,
        };
        let text = server_config(&settings, "127.0.0.1", 1883, "id-1");
        let dir = std::env::temp_dir().join(format!("bench-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Config::load(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(config.broker.port, 1883);
        assert_eq!(config.pipeline.source.rtsp_frame_end, RtspFrameEnd::Parser);
        assert!(!config.gateway.enabled);
        assert_eq!(config.limits.max_viewers_per_stream, 260);
        assert_eq!(config.allow.urls, vec!["rtsp://cam.local:8554/a?b=1".to_string()]);
        let low = &config.pipeline.renditions[0];
        assert_eq!((low.name.as_str(), low.max_height, low.bitrate_kbps), ("low", Some(360), Some(600)));
        assert_eq!(parse_rendition("low:360:600"), Ok(("low".into(), 360, 600)));
        for bad in ["low", "low:360", ":360:600", "low:0:600", "low:360:x", "a:1:2:3"] {
            assert!(parse_rendition(bad).is_err(), "{bad}");
        }
        assert_eq!(toml_string("a \"b\" \\"), r#""a \"b\" \\""#);
        let builtin = server_config(&ServerSettings { url: "builtin://testsrc".into(), ..settings }, "h", 1, "i");
        assert!(!builtin.contains("[allow]"));
    }
}
