//! HEVC copied into fragmented MP4 (copy mode), from every kind of source an HEVC camera is read through: an
//! RTSP camera (x265 through rtph265pay, frames ended by the marker relay), a file, and MPEG-TS over UDP
//! joined mid-stream. The track is `hvc1` with the stream's own `hvcC`, its codec string is the one that
//! record and the stream's SPS both give, and ffmpeg decodes every fragment without an error.

use crate::support;

use mqtt_video::media::config::Mode;
use mqtt_video_wire::output::TrackMode;
use mqtt_video_wire::{codec_string, fmp4, hevc};
use std::time::Duration;
use support::udp::UdpSource;
use support::*;

/// Checks a copied HEVC run and returns its MIME type.
fn check_copied_hevc(run: &Run, name: &str) -> String {
    assert!(run.end.as_ref().is_none_or(|r| r.is_ok()), "{name}: {:?}", run.end);
    let init = &run.init.as_ref().expect("an init segment").bytes;
    let tracks = fmp4::parse_init(init).expect("an init segment that parses");
    let video = tracks.iter().find(|t| t.kind == fmp4::TrackKind::Video).expect("a video track");
    assert_eq!(&video.sample_entry[4..8], b"hvc1", "{name}: the sample entry Safari plays");
    let record = hevc::parse_hvcc(codec_string::hvcc_of(&video.sample_entry).expect("an hvcC")).expect("valid");
    let sps = record.nals.iter().find_map(|n| hevc::parse_sps(n).ok()).expect("an SPS in the hvcC");
    assert_eq!(sps.ptl, record.ptl, "{name}: the record's header is its SPS's");
    assert!(sps.browser_decodable(), "{name}: Main, 4:2:0");
    let mime = codec_string::mime_type(&tracks).expect("a MIME type");
    let expected = record.ptl.codec_string("hvc1");
    assert!(mime.starts_with(&format!("video/mp4; codecs=\"{expected}")), "{name}: {mime}");
    assert!(run.fragments.len() > 20, "{name}: {} fragments", run.fragments.len());
    assert!(run.fragments[0].keyframe, "{name}: starts at a keyframe");
    assert_decodes(run, &format!("{name}.mp4"));
    println!("{name}: {mime}, {} fragments, {}x{}", run.fragments.len(), sps.width, sps.height);
    mime
}

fn copy() -> mqtt_video::media::PipelineConfig {
    let mut config = fast_config();
    config.mode = Mode::Copy;
    config
}

#[test]
fn an_hevc_rtsp_camera_is_copied_as_hvc1_with_its_exact_codec_string() {
    let camera = RtspServer::start(&["--codec", "h265"]);
    let mut config = copy();
    config.source.pacing = mqtt_video::media::config::Pacing::Auto;
    let run = collect(&camera.url, config, 3.0, Duration::from_secs(30));
    let mime = check_copied_hevc(&run, "rtsp-hevc");
    assert!(mime.ends_with(", mp4a.40.2\""), "the camera's AAC copied beside it: {mime}");
    assert_eq!(run.source.as_ref().map(|s| s.video), Some(TrackMode::Copy));
}

#[test]
fn an_hevc_file_is_copied() {
    let file = fixture(
        "hevc_aac.mp4",
        &[VIDEO, TONE],
        &["-c:v", "libx265", "-x265-params", "log-level=error", "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac"],
    );
    let run = collect(&file.display().to_string(), copy(), 3.0, Duration::from_secs(30));
    check_copied_hevc(&run, "file-hevc");
}

#[test]
fn hevc_over_udp_ts_joined_mid_stream_is_copied_from_its_next_keyframe() {
    let source = UdpSource::start_hevc(30);
    std::thread::sleep(Duration::from_millis(700));
    let mut config = copy();
    config.source.pacing = mqtt_video::media::config::Pacing::Auto;
    let run = collect(&source.url, config, 3.0, Duration::from_secs(30));
    check_copied_hevc(&run, "udp-ts-hevc");
}
