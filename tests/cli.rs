//! The binary's edges: what a person sees when a command fails, and `probe`'s options.

mod support;

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
    std::fs::write(
        &conf,
        "[pipeline]\nmode = \"auto\"\n\n[[sources]]\nname = \"Desk\"\nurl = \"builtin://testsrc-silent\"\n\
         pipeline = { mode = \"transcode\", video = { max_height = 180 } }\n\n[[sources]]\nname = \"Door\"\n\
         url = \"rtsp://viewer:s3cret-pw@127.0.0.1:1/stream1\"\n",
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

    // The command line wins over the config.
    let out = mqtt_video(&["probe", "Desk", "--config", &conf, "--seconds", "1", "--mode", "copy"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "copy mode cannot copy raw video: {stderr}");
    assert!(stderr.contains("error: unsupported source"), "{stderr}");

    // A source with a password: the error names the transport, never the password.
    let out = mqtt_video(&["probe", "Door", "--config", &conf, "--seconds", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("over RTSP/TCP: connection refused"), "{stderr}");
    assert!(!stderr.contains("s3cret-pw"), "{stderr}");
}
