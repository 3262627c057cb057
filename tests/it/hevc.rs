//! HEVC copied into fragmented MP4 (copy mode), from every kind of source an HEVC camera is read through: an
//! RTSP camera (x265 through rtph265pay, frames ended by the marker relay), a file, and MPEG-TS over UDP
//! joined mid-stream. The track is `hvc1` with the stream's own `hvcC`, its codec string is the one that
//! record and the stream's SPS both give, and ffmpeg decodes every fragment without an error.

use crate::support;

use mqtt_video::media::config::Mode;
use mqtt_video_wire::output::TrackMode;
use mqtt_video_wire::{codec_string, fmp4, hevc};
use std::time::Duration;
use support::broker::Broker;
use support::page::{rand_suffix, server_config, Page, Server};
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

/// 4 s of libx265 Main video (a keyframe a second, B-frames as x265 places them) and AAC in MP4.
fn hevc_aac_mp4() -> std::path::PathBuf {
    fixture(
        "hevc_aac.mp4",
        &[VIDEO, TONE],
        &["-c:v", "libx265", "-x265-params", "log-level=error", "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac"],
    )
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
    let file = hevc_aac_mp4();
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

#[test]
fn an_h264_rendition_of_a_copied_hevc_stream_is_made_while_wanted_for_browsers_without_hevc() {
    use mqtt_video::media::config::RenditionConfig;
    use mqtt_video::media::encode::rendition::RenditionControl;
    use mqtt_video::media::events::RenditionEvent;
    use mqtt_video::media::pipeline::Start;
    use mqtt_video::media::{Pipeline, PipelineEvent};
    use std::sync::Arc;
    // The shape an HEVC camera is served in: main copied as hvc1, and a full-size H.264 rendition ("h264"),
    // decoded from the copied source and encoded only while some viewer wants it.
    let file = hevc_aac_mp4();
    let mut config = copy();
    config.renditions = vec![toml::from_str::<RenditionConfig>("name = \"h264\"").expect("rendition")];
    config.channel_capacity = 4;
    let control = Arc::new(RenditionControl::default());
    let start = Start { renditions: vec![Arc::clone(&control)], ..Start::default() };
    let mut pipeline = Pipeline::start_with(&file.display().to_string(), config, start).expect("pipeline starts");
    let (mut main_mime, mut facts_mime, mut init, mut fragments) = (None, None, None, Vec::new());
    let mut main_fragments = 0;
    loop {
        match pipeline.events().recv_timeout(Duration::from_secs(30)).expect("an event within 30 s") {
            PipelineEvent::Init(i) => main_mime = Some(i.info.mime_codec.clone()),
            PipelineEvent::Fragment(f) => {
                main_fragments += 1;
                // Wanted from 1 s of media on.
                control.set_wanted(f.media_time_us >= 1_000_000);
            }
            PipelineEvent::Rendition(0, RenditionEvent::Facts(info)) => facts_mime = Some(info.mime_codec.clone()),
            PipelineEvent::Rendition(0, RenditionEvent::Init(i)) => init = Some(i),
            PipelineEvent::Rendition(0, RenditionEvent::Fragment(f)) => fragments.push(f),
            PipelineEvent::Rendition(_, RenditionEvent::Failed(why)) => panic!("the rendition failed: {why}"),
            PipelineEvent::End(result) => {
                result.expect("the file plays to its end");
                break;
            }
            _ => {}
        }
    }
    let main_mime = main_mime.expect("main's init");
    assert!(main_mime.starts_with("video/mp4; codecs=\"hvc1.1.6.L"), "{main_mime}");
    let init = init.expect("the rendition's init segment, once wanted");
    assert!(init.info.mime_codec.starts_with("video/mp4; codecs=\"avc1."), "{}", init.info.mime_codec);
    assert_eq!(Some(init.info.mime_codec.clone()), facts_mime, "the describe's codec string is the init's");
    assert_eq!((init.info.width, init.info.height), (320, 240), "the size of main");
    assert!(fragments.len() > 40 && fragments[0].keyframe, "{} fragments", fragments.len());
    assert!(fragments[0].media_time_us >= 1_000_000, "not encoded before it was wanted");
    let mut bytes = init.bytes.to_vec();
    for f in &fragments {
        bytes.extend_from_slice(&f.bytes);
    }
    assert_bytes_decode(&bytes, "hevc-h264-rendition.mp4");
    println!(
        "hevc main {main_mime} ({main_fragments} fragments); h264 rendition {} ({} fragments)",
        init.info.mime_codec,
        fragments.len()
    );
}

#[test]
fn served_an_hevc_camera_is_hevc_for_version_2_pages_and_h264_for_version_1_clients() {
    use mqtt_video_wire::fmp4::{Segment, Splitter};
    let broker = Broker::start();
    let camera = RtspServer::start(&["--codec", "h265"]);
    let prefix = format!("rtsp://127.0.0.1:{}/", camera.port());
    let extra = "[pipeline]\nmode = \"copy\"\n\n[[pipeline.renditions]]\nname = \"h264\"\n";
    let server = Server::start(&server_config(broker.port, &[&prefix], extra));
    let page = Page::connect(broker.port, &format!("hevc-page-{}", rand_suffix()), None);
    let reply = page.describe(&camera.url, &format!("pages/{}/describe", rand_suffix()));
    let renditions = reply["renditions"].as_array().expect("renditions").clone();
    let mime = |v: &serde_json::Value| v["mimeCodec"].as_str().unwrap_or("").to_string();
    assert!(mime(&renditions[0]).contains("hvc1.1.6."), "main is the camera's HEVC for version 2: {reply}");
    assert_eq!(renditions[1]["name"], "h264");
    assert_eq!(mime(&reply), mime(&renditions[1]), "the top level (version 1's) is the H.264 repeat: {reply}");
    assert_eq!(reply["video"], "transcode");

    // A version 1 play gets that H.264, whole on its reply topic, and it decodes.
    let topic = format!("pages/{}/v1", rand_suffix());
    page.play(&camera.url, &topic);
    let received = page.collect(&topic, Duration::from_secs(4));
    let mut splitter = Splitter::new();
    let (mut init, mut fragments) = (Vec::new(), Vec::new());
    for m in &received.media {
        for segment in splitter.push(&m.payload).expect("whole fMP4 boxes") {
            match segment {
                Segment::Init(bytes) => init = bytes,
                Segment::Fragment { bytes, .. } => fragments.push(bytes),
            }
        }
    }
    let tracks = fmp4::parse_init(&init).expect("an init segment");
    let mime_v1 = codec_string::mime_type(&tracks).expect("a MIME type");
    assert_eq!(mime_v1, mime(&reply), "version 1 gets what its describe said");
    assert!(fragments.len() > 30, "{} fragments", fragments.len());
    assert_bytes_decode(&[init, fragments.concat()].concat(), "served-hevc-v1.mp4");
    println!("hevc camera: version 2 main {}, version 1 {mime_v1}", mime(&renditions[0]));
    drop(server);
}
