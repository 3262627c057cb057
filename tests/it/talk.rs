//! Talking back to a camera's ONVIF backchannel (issue 30's camera side): GStreamer's RTSPOnvifMediaFactory
//! (tests/support/rtsp_server.py --backchannel) is the camera and writes what it receives to a file, as its
//! speaker would play it. The server's session opens the backchannel, sends a 1 kHz tone encoded by libav,
//! and the camera's file holds that tone, in the codec its SDP asked for.

use crate::support;

use mqtt_video::talk::backchannel::{self, Backchannel, TalkError};
use mqtt_video::talk::encode::TalkEncoder;
use mqtt_video_wire::rtsp::sdp::TalkCodec;
use serde_json::json;
use std::time::{Duration, Instant};
use support::page::rand_suffix;
use support::tone::{linear, power};
use support::RtspServer;

/// Sends `seconds` of a `freq` Hz tone at 16 kHz to `url`'s backchannel, in 20 ms packets at real time.
async fn send_tone(url: &str, freq: f64, seconds: f64) -> Result<TalkCodec, TalkError> {
    let mut channel = Backchannel::open(url).await?;
    let codec = channel.info.codec.clone();
    let mut encoder =
        TalkEncoder::new(&codec, 16000, channel.info.clock_rate).expect("an encoder for the camera's codec");
    let start = Instant::now();
    let frames = (seconds * 50.0) as usize;
    for n in 0..frames {
        let pcm: Vec<i16> = (0..320)
            .map(|i| {
                let t = (n * 320 + i) as f64 / 16000.0;
                (10000.0 * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16
            })
            .collect();
        let (bytes, samples) = encoder.encode(&pcm).expect("encoding");
        channel.send(&bytes, samples).await?;
        let due = start + Duration::from_millis(20 * (n as u64 + 1));
        tokio::time::sleep_until(due.into()).await;
    }
    channel.close().await;
    Ok(codec)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

/// What the camera wrote, once it stopped growing.
fn received(file: &std::path::Path) -> Vec<u8> {
    let mut last = usize::MAX;
    for _ in 0..20 {
        let bytes = std::fs::read(file).unwrap_or_default();
        if bytes.len() == last {
            return bytes;
        }
        last = bytes.len();
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::read(file).unwrap_or_default()
}

/// `mqtt-video probe URL --json`'s `talk`.
fn probed_talk(url: &str) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-video"))
        .args(["probe", url, "--seconds", "1", "--json"])
        .output()
        .expect("running mqtt-video probe");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("probe's JSON");
    report["talk"].clone()
}

fn the_camera_hears_the_tone(codec_arg: &str, want: TalkCodec) {
    let file = support::work_dir().join(format!("backchannel-{codec_arg}-{}.raw", rand_suffix()));
    let file_arg = file.to_str().unwrap();
    let camera = RtspServer::start(&["--no-audio", "--backchannel", file_arg, "--backchannel-codec", codec_arg]);
    let talk = probed_talk(&camera.url);
    assert_eq!(
        (&talk["backchannel"], &talk["codec"], &talk["clock_rate"], &talk["sendable"]),
        (&json!(true), &json!(want.name()), &json!(8000), &json!(true)),
        "probe: {talk}"
    );
    let rt = runtime();
    let offered = rt.block_on(backchannel::describe(&camera.url)).expect("a DESCRIBE").expect("a backchannel");
    assert_eq!((offered.codec.clone(), offered.clock_rate, offered.channels), (want.clone(), 8000, 1));
    let codec = rt.block_on(send_tone(&camera.url, 1000.0, 2.0)).expect("talking");
    assert_eq!(codec, want);
    let bytes = received(&file);
    // Two seconds at 8 kHz, a byte a sample: the first packets may go before the camera's pipeline runs.
    assert!(bytes.len() >= 12_000, "the camera received {} bytes of {codec_arg}", bytes.len());
    let samples: Vec<i32> = bytes.iter().map(|&b| linear(b, &want)).collect();
    let tone = power(&samples, 1000.0);
    let other = [500.0, 1500.0, 2000.0, 3000.0].map(|f| power(&samples, f)).into_iter().fold(0.0, f64::max);
    assert!(tone > 100.0 * other, "the camera did not hear 1 kHz: {tone:e} against {other:e}");
}

#[test]
fn a_pcmu_camera_hears_the_tone_sent_to_its_backchannel() {
    the_camera_hears_the_tone("pcmu", TalkCodec::Pcmu);
}

#[test]
fn a_pcma_camera_hears_the_tone_sent_to_its_backchannel() {
    the_camera_hears_the_tone("pcma", TalkCodec::Pcma);
}

#[test]
fn a_camera_without_a_backchannel_says_so() {
    let camera = RtspServer::start(&["--no-audio"]);
    let talk = probed_talk(&camera.url);
    assert_eq!((&talk["backchannel"], &talk["error"]), (&json!(false), &json!(null)), "probe: {talk}");
    let rt = runtime();
    assert_eq!(rt.block_on(backchannel::describe(&camera.url)).expect("a DESCRIBE"), None);
    let refused = rt.block_on(Backchannel::open(&camera.url)).err();
    assert!(matches!(refused, Some(TalkError::NoBackchannel)), "{refused:?}");
    // Nobody there: a specific error, not a hang.
    let nobody = rt.block_on(backchannel::describe(&format!("rtsp://127.0.0.1:{}/live", support::broker::free_port())));
    assert!(matches!(nobody, Err(TalkError::Connect { .. })), "{nobody:?}");
}
