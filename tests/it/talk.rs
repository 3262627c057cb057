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
    let frames = (seconds * 50.0) as u32;
    let (mut encoding, mut sending) = (Duration::ZERO, Duration::ZERO);
    for n in 0..frames {
        let pcm = tone_20ms(freq, n);
        let encoded = Instant::now();
        let (bytes, samples) = encoder.encode(&pcm).expect("encoding");
        let sent = Instant::now();
        channel.send(&bytes, samples).await?;
        (encoding, sending) = (encoding + sent.duration_since(encoded), sending + sent.elapsed());
        let due = start + Duration::from_millis(20 * (u64::from(n) + 1));
        tokio::time::sleep_until(due.into()).await;
    }
    channel.close().await;
    // The server's work per talker: what 1 s of audio costs to resample, encode and send (a debug build).
    let per_second = |d: Duration| d.as_secs_f64() * 1000.0 / seconds;
    eprintln!(
        "talk, {}: per second of audio, {:.2} ms resampling and encoding, {:.2} ms sending",
        codec.name(),
        per_second(encoding),
        per_second(sending)
    );
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
    assert_heard_1khz(&file, &want, 12_000);
}

/// The camera's file holds at least `min_bytes` of `codec` (a byte a sample: the first packets may go before
/// its pipeline runs), and they are a 1 kHz tone.
fn assert_heard_1khz(file: &std::path::Path, codec: &TalkCodec, min_bytes: usize) {
    let bytes = received(file);
    assert!(bytes.len() >= min_bytes, "the camera received {} bytes of {}", bytes.len(), codec.name());
    let samples: Vec<i32> = bytes.iter().map(|&b| linear(b, codec)).collect();
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

#[test]
fn a_camera_that_asks_for_a_login_gets_the_urls_login_as_digest() {
    let file = support::work_dir().join(format!("backchannel-login-{}.raw", rand_suffix()));
    let login = "--login=admin:p@ss word";
    let camera = RtspServer::start(&["--no-audio", "--backchannel", file.to_str().unwrap(), login]);
    let with = |userinfo: &str| camera.url.replacen("rtsp://", &format!("rtsp://{userinfo}"), 1);
    let rt = runtime();
    // The URL's login, percent-encoded as a URL holds it.
    rt.block_on(send_tone(&with("admin:p%40ss%20word@"), 1000.0, 1.0)).expect("talking with the login");
    assert_heard_1khz(&file, &TalkCodec::Pcmu, 6_000);
    for (url, why) in [(with("admin:nope@"), "a wrong password"), (camera.url.clone(), "no login")] {
        let refused = rt.block_on(Backchannel::open(&url)).err();
        assert!(matches!(refused, Some(TalkError::LoginRefused("DESCRIBE"))), "{why}: {refused:?}");
    }
}

/// A PUBLISH (QoS 0) packet.
fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + topic.len() + payload.len());
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(payload);
    let mut packet = vec![0x30];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        packet.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

/// The `n`th 20 ms of a `freq` Hz tone at 16 kHz.
fn tone_20ms(freq: f64, n: u32) -> Vec<i16> {
    (0..320)
        .map(|i| (10000.0 * (2.0 * std::f64::consts::PI * freq * f64::from(n * 320 + i) / 16000.0).sin()) as i16)
        .collect()
}

/// Frame `n` of a press: the `n`th 20 ms of a `freq` Hz tone at 16 kHz.
fn tone_frame(talker: &str, freq: f64, n: u32, end: bool) -> Vec<u8> {
    mqtt_video_wire::talk::frame_bytes(talker, end, 16000, n, &tone_20ms(freq, n)).expect("a frame")
}

/// The next talk status on `topic`.
fn talk_status(page: &support::page::Page, topic: &str, wait: Duration) -> Option<serde_json::Value> {
    page.next_on(topic, wait).and_then(|m| serde_json::from_slice(&m.payload).ok())
}

#[test]
fn pages_talk_to_the_camera_over_the_broker_one_at_a_time() {
    use std::io::Write;
    let file = support::work_dir().join(format!("backchannel-talk-{}.raw", rand_suffix()));
    let camera = RtspServer::start(&["--no-audio", "--backchannel", file.to_str().unwrap()]);
    let broker = support::broker::Broker::start();
    let sources = format!(
        "[topics]\nreply_prefix = \"pages/\"\n\n[[sources]]\nname = \"Door\"\nurl = \"{}\"\ntalk = true\n\n\
         [[sources]]\nname = \"Yard\"\nurl = \"builtin://testsrc\"\n",
        camera.url
    );
    let _server = support::page::Server::start(&support::page::server_config(broker.port, &[], &sources));
    let (a, b) = ("pages/page_a/talk", "pages/page_b/talk");
    let listener = support::page::Page::connect(broker.port, "page_listener", None);
    listener.subscribe("pages/+/talk");
    // Page a, as a tab: a raw connection whose will is the page's stop, so that dropping it is a killed tab.
    let will = serde_json::json!({"reply_topic": "pages/page_a/media"}).to_string();
    let mut tab = support::page::raw_client_with_will(broker.port, "page_a", "video/stop", will.as_bytes());
    let start = Instant::now();
    let mut n = 0u32;
    let mut send_a = |tab: &mut std::net::TcpStream, frames: u32, end_last: bool| {
        for i in 0..frames {
            let end = end_last && i + 1 == frames;
            tab.write_all(&publish_packet("video/live/door/talk", &tone_frame(a, 1000.0, n, end))).expect("a frame");
            n += 1;
            std::thread::sleep(
                (start + Duration::from_millis(20 * u64::from(n))).saturating_duration_since(Instant::now()),
            );
        }
    };
    send_a(&mut tab, 5, false);
    let on = talk_status(&listener, a, Duration::from_secs(10)).expect("a's status");
    assert_eq!(on["talk"], "on", "{on}");
    // b talks meanwhile (a 2 kHz tone): told busy, once a second at most, while a goes on.
    let b_page = support::page::Page::connect(broker.port, "page_b", None);
    b_page.publish_raw("video/live/door/talk", tone_frame(b, 2000.0, 0, false));
    send_a(&mut tab, 100, true);
    let busy = talk_status(&listener, b, Duration::from_secs(2)).expect("b's status");
    assert_eq!(busy["talk"], "busy", "{busy}");
    let off = talk_status(&listener, a, Duration::from_secs(2)).expect("a let go");
    assert_eq!((&off["talk"], &off["why"]), (&json!("off"), &json!("let_go")), "{off}");
    assert_heard_1khz(&file, &TalkCodec::Pcmu, 12_000);

    // a presses again, then its tab is killed: the broker publishes its will, and the floor is free for b
    // within 2 s.
    send_a(&mut tab, 10, false);
    assert_eq!(talk_status(&listener, a, Duration::from_secs(10)).expect("on again")["talk"], "on");
    drop(tab);
    let killed = Instant::now();
    let gone = talk_status(&listener, a, Duration::from_secs(3)).expect("a's hold ended");
    assert_eq!((&gone["talk"], &gone["why"]), (&json!("off"), &json!("gone")), "{gone}");
    let freed_in = killed.elapsed();
    assert!(freed_in < Duration::from_secs(2), "freed {freed_in:?} after the tab died");
    b_page.publish_raw("video/live/door/talk", tone_frame(b, 2000.0, 1, false));
    assert_eq!(talk_status(&listener, b, Duration::from_secs(10)).expect("b's turn")["talk"], "on");
    // b goes quiet: its hold ends without a word from it.
    let quiet = talk_status(&listener, b, Duration::from_secs(3)).expect("b's hold ended");
    assert_eq!((&quiet["talk"], &quiet["why"]), (&json!("off"), &json!("quiet")), "{quiet}");
    eprintln!("talk: a killed tab's hold freed in {} ms", freed_in.as_millis());

    // A source without `talk = true` says so, and a frame whose talker is not a reply topic (a control
    // topic here) is dropped: no status goes there.
    b_page.publish_raw("video/live/yard/talk", tone_frame(b, 2000.0, 0, false));
    let refused = talk_status(&listener, b, Duration::from_secs(3)).expect("an error");
    assert_eq!((&refused["talk"], &refused["why"]), (&json!("error"), &json!("not_talkable")), "{refused}");
    let control = support::page::Page::connect(broker.port, "page_control", None);
    control.subscribe("video/describe");
    b_page.publish_raw("video/live/door/talk", tone_frame("video/describe", 2000.0, 0, false));
    let leaked = control.next_on("video/describe", Duration::from_secs(1));
    assert!(leaked.is_none(), "the server published a talk status on a control topic");
}
