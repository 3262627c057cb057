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
    assert!(last.starts_with("error: source unreachable: connection refused"), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace") && !stderr.contains(".rs:"), "no backtrace: {stderr}");

    let missing = support::work_dir().join("no-such-config.toml");
    let out = mqtt_video(&["serve", "--config", &missing.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: cannot read") && stderr.contains("No such file"), "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "the cause is said once: {stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
}
