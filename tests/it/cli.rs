//! The binary's edges: what a person sees when a command fails, and `probe`'s options.

use crate::support;

use std::process::{Command, Output};

fn mqtt_video(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mqtt-video"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .output()
        .expect("running mqtt-video")
}

#[test]
fn an_error_prints_its_message_and_causes_without_a_backtrace() {
    // Nothing listens on port 1: an ordinary failure, with the backtrace variables a developer often has set.
    let out = mqtt_video(&["probe", "rtsp://127.0.0.1:1/stream", "--seconds", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("error: source unreachable: over RTSP/TCP: connection refused"), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace") && !stderr.contains(".rs:"), "no backtrace: {stderr}");

    let missing = support::work_dir().join("no-such-config.toml");
    let out = mqtt_video(&["serve", "--config", &missing.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: cannot read") && stderr.contains("No such file"), "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "the cause is said once: {stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
}

#[test]
fn probe_takes_a_servers_settings_and_its_source_names() {
    let conf = support::work_dir().join("probe-config.toml");
    let clip = support::h264_aac_mp4();
    std::fs::write(
        &conf,
        format!(
            "[pipeline]\nmode = \"auto\"\n\n[[sources]]\nname = \"Desk\"\nurl = \"builtin://testsrc-silent\"\n\
             pipeline = {{ mode = \"transcode\", video = {{ max_height = 180 }} }}\n\n[[sources]]\nname = \"Door\"\n\
             url = \"rtsp://viewer:s3cret-pw@127.0.0.1:1/stream1\"\n\n[[sources]]\nname = \"Clip\"\nurl = {:?}\n\
             pipeline = {{ mode = \"transcode\" }}\n",
            clip.display().to_string()
        ),
    )
    .unwrap();
    let conf = conf.display().to_string();
    let out = mqtt_video(&["probe", "desk", "--config", &conf, "--seconds", "1", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["url"], "builtin://testsrc-silent", "the name stands for its URL");
    assert_eq!((report["output"]["width"].as_u64(), report["output"]["height"].as_u64()), (Some(320), Some(180)));
    assert_eq!(report["source"]["video"], "transcode", "the source's own pipeline settings: {report}");

    // The command line wins over the config: the clip's own settings say transcode, --mode says copy.
    let out = mqtt_video(&["probe", "Clip", "--config", &conf, "--seconds", "1", "--mode", "copy", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["source"]["video"], "copy", "{report}");
    // The built-in patterns are raw video: encoded whatever the mode.
    let out = mqtt_video(&["probe", "Desk", "--config", &conf, "--seconds", "1", "--mode", "copy", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A source with a password: the error names the transport, never the password.
    let out = mqtt_video(&["probe", "Door", "--config", &conf, "--seconds", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("over RTSP/TCP: connection refused"), "{stderr}");
    assert!(!stderr.contains("s3cret-pw"), "{stderr}");
}

#[test]
fn a_config_the_server_may_not_read_is_named_with_the_fix() {
    // As the docker image runs it: uid 10001, and a config of mode 600 owned by someone else (root here).
    let dir = support::work_dir().join(format!("unreadable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let conf = dir.join("config.toml");
    std::fs::write(&conf, "[broker]\nport = 1883\n").unwrap();
    std::fs::set_permissions(&conf, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "10001",
            "--regid",
            "10001",
            "--clear-groups",
            env!("CARGO_BIN_EXE_mqtt-video"),
            "serve",
            "--config",
        ])
        .arg(&conf)
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let file = conf.display();
    assert!(
        stderr.contains(&format!(
            "error: cannot read {file}: permission denied: this server runs as uid 10001 and the file is owned by \
             uid 0 with mode 600; make it readable by that user (chmod a+r {file}, or chown 10001 {file})"
        )),
        "{stderr}"
    );
}

#[test]
fn healthcheck_asks_where_the_config_puts_the_gateway() {
    let broker = support::broker::Broker::start();
    let port = support::broker::free_port();
    let conf = support::work_dir().join("healthcheck-config.toml");
    std::fs::write(&conf, format!("[broker]\nport = {}\n\n[gateway]\nlisten = \"127.0.0.1:{port}\"\n", broker.port))
        .unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_mqtt-video"))
        .args(["serve", "--config"])
        .arg(&conf)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let conf = conf.display().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let healthy = loop {
        let out = mqtt_video(&["healthcheck", "--config", &conf]);
        if out.status.success() || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(healthy.status.success(), "{}", String::from_utf8_lossy(&healthy.stderr));
    assert!(String::from_utf8_lossy(&healthy.stdout).starts_with("healthy: "));
    // The environment override moves it, as compose's MQTT_VIDEO_GATEWAY_LISTEN would: nothing listens there.
    let moved = Command::new(env!("CARGO_BIN_EXE_mqtt-video"))
        .args(["healthcheck", "--config", &conf, "--timeout", "1"])
        .env("MQTT_VIDEO_GATEWAY_LISTEN", format!("127.0.0.1:{}", support::broker::free_port()))
        .output()
        .unwrap();
    assert_eq!(moved.status.code(), Some(1));
    let _ = server.kill();
    let _ = server.wait();
}
