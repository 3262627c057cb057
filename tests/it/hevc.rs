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
pub(crate) fn hevc_aac_mp4() -> std::path::PathBuf {
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
fn probe_says_main_is_the_copied_hevc_and_h264_is_made_for_the_other_browsers() {
    let file = hevc_aac_mp4();
    let probe = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-video"))
            .args(["probe", &file.display().to_string(), "--seconds", "1"])
            .args(extra)
            .output()
            .expect("mqtt-video probe runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let report: serde_json::Value = serde_json::from_str(&probe(&["--json"])).expect("JSON");
    assert_eq!(report["source"]["video"], "copy", "auto copies HEVC: {report}");
    let renditions = report["renditions"].as_array().expect("renditions");
    assert_eq!(renditions.len(), 1, "{report}");
    assert_eq!(renditions[0]["name"], "h264");
    assert!(renditions[0]["mimeCodec"].as_str().is_some_and(|m| m.contains("avc1.")), "{report}");
    assert_eq!(renditions[0]["width"], report["output"]["width"]);
    let text = probe(&[]);
    assert!(text.contains("main (hvc1, video copied): browsers that decode it"), "{text}");
    assert!(text.contains("h264 (") && text.contains("version 1 clients"), "{text}");
    let transcoded: serde_json::Value = serde_json::from_str(&probe(&["--json", "--mode", "transcode"])).expect("JSON");
    assert_eq!(transcoded["source"]["video"], "transcode");
    assert_eq!(transcoded["renditions"], serde_json::json!([]), "no H.264 repeat of an H.264 main: {transcoded}");
}

#[test]
fn hevc_over_udp_ts_joined_mid_stream_is_copied_from_its_next_keyframe() {
    let source = UdpSource::start_hevc(30, 0.0);
    std::thread::sleep(Duration::from_millis(700));
    let mut config = copy();
    config.source.pacing = mqtt_video::media::config::Pacing::Auto;
    let run = collect(&source.url, config, 3.0, Duration::from_secs(30));
    check_copied_hevc(&run, "udp-ts-hevc");
}

#[test]
fn damaged_hevc_over_udp_ts_never_reaches_the_output() {
    // 2 % of the datagrams lost: the damaged frames and the rest of their GOP are kept back, as for H.264.
    let source = UdpSource::start_hevc(30, 0.02);
    std::thread::sleep(Duration::from_millis(500));
    let mut config = copy();
    config.source.pacing = mqtt_video::media::config::Pacing::Auto;
    let (run, stats) = collect_with_stats(&source.url, config, 8.0, Duration::from_secs(30));
    assert!(run.end.is_none(), "{:?}", run.end);
    let lost = source.dropped.load(std::sync::atomic::Ordering::Relaxed);
    assert!(lost > 0 && stats.damaged > 0, "the forwarder dropped {lost}, the pipeline kept back {}", stats.damaged);
    eprintln!(
        "HEVC TS, {lost} datagrams lost: {} fragments, {} damaged packets kept back",
        run.fragments.len(),
        stats.damaged
    );
    // What went out decodes without one error.
    assert_decodes(&run, "udp-loss-hevc.mp4");
}

#[test]
fn a_slow_consumer_of_copied_hevc_loses_whole_gops_up_to_a_keyframe() {
    use mqtt_video::media::config::Backpressure;
    use mqtt_video::media::{Pipeline, PipelineEvent};
    let mut config = copy();
    config.backpressure = Backpressure::Drop;
    config.channel_capacity = 4;
    config.source.looping = true;
    let mut pipeline = Pipeline::start(&hevc_aac_mp4().display().to_string(), config).expect("the pipeline starts");
    // The file is read as fast as it goes and nothing is taken for a while: the channel overflows.
    std::thread::sleep(Duration::from_millis(1500));
    let (mut last, mut received, mut gaps) = (None, 0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while received < 200 && std::time::Instant::now() < deadline {
        let Ok(PipelineEvent::Fragment(f)) = pipeline.events().recv_timeout(Duration::from_secs(5)) else { continue };
        if let Some(prev) = last {
            if f.sequence != prev + 1 {
                assert!(f.keyframe, "after a gap ({prev} -> {}) delivery resumes at a keyframe", f.sequence);
                gaps += 1;
            }
        }
        last = Some(f.sequence);
        received += 1;
    }
    let stats = pipeline.stats().snapshot();
    assert!(stats.fragments_dropped > 0 && gaps > 0, "{stats:?}, {gaps} gaps");
    assert_eq!(received, 200);
    pipeline.join();
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

/// The camera's entry in the stats' renditions, once `ok` holds for it.
fn rendition_stats(page: &Page, url: &str, name: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let find = |v: &serde_json::Value| -> Option<serde_json::Value> {
        let stream = v["streams"].as_array()?.iter().find(|s| s["url"] == url)?;
        stream["renditions"].as_array()?.iter().find(|r| r["name"] == name).cloned()
    };
    let stats = page.stats_where(|v| find(v).is_some_and(|r| ok(&r)));
    find(&stats).unwrap_or_default()
}

#[test]
fn served_in_auto_an_hevc_camera_is_hevc_for_version_2_pages_and_an_h264_rendition_for_the_rest() {
    use mqtt_video_wire::fmp4::{Segment, Splitter};
    let broker = Broker::start();
    let camera = RtspServer::start(&["--codec", "h265"]);
    let prefix = format!("rtsp://127.0.0.1:{}/", camera.port());
    // No [pipeline] at all: `auto`, the default, copies the HEVC and adds the H.264 rendition itself.
    let server = Server::start(&server_config(broker.port, &[&prefix], ""));
    let page = Page::connect(broker.port, &format!("hevc-page-{}", rand_suffix()), None);
    let reply = page.describe(&camera.url, &format!("pages/{}/describe", rand_suffix()));
    let renditions = reply["renditions"].as_array().expect("renditions").clone();
    let mime = |v: &serde_json::Value| v["mimeCodec"].as_str().unwrap_or("").to_string();
    let names: Vec<&str> = renditions.iter().map(|r| r["name"].as_str().unwrap_or("?")).collect();
    assert_eq!(names, ["main", "h264"], "{reply}");
    assert!(mime(&renditions[0]).contains("hvc1.1.6."), "main is the camera's HEVC for version 2: {reply}");
    assert!(mime(&renditions[1]).contains("avc1."), "{reply}");
    assert_eq!(
        (&renditions[1]["width"], &renditions[1]["height"]),
        (&renditions[0]["width"], &renditions[0]["height"])
    );
    assert_eq!(mime(&reply), mime(&renditions[1]), "the top level (version 1's) is the H.264 repeat: {reply}");
    assert_eq!(reply["video"], "transcode");
    let idle = rendition_stats(&page, &camera.url, "h264", |r| r["viewers"] == 0);
    assert_eq!(idle["encoding"], false, "nobody watches the H.264 rendition, so it is not made: {idle}");

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
    let watched = rendition_stats(&page, &camera.url, "h264", |r| r["viewers"] == 1);
    assert_eq!(watched["encoding"], true, "{watched}");
    println!("hevc camera: version 2 main {}, version 1 {mime_v1}", mime(&renditions[0]));
    drop(server);
}

#[test]
fn served_in_auto_an_h264_camera_offers_no_rendition_and_a_play_of_the_h264_one_is_refused() {
    let broker = Broker::start();
    let camera = RtspServer::start(&[]);
    let prefix = format!("rtsp://127.0.0.1:{}/", camera.port());
    let _server = Server::start(&server_config(broker.port, &[&prefix], ""));
    let page = Page::connect(broker.port, &format!("h264-page-{}", rand_suffix()), None);
    let reply = page.describe(&camera.url, &format!("pages/{}/describe", rand_suffix()));
    assert!(reply["mimeCodec"].as_str().is_some_and(|m| m.contains("avc1.")), "{reply}");
    assert_eq!(reply["video"], "copy", "{reply}");
    assert!(reply.get("renditions").is_none(), "nothing to choose from: {reply}");
    let stats = page.stats_where(|v| v["streams"].as_array().is_some_and(|s| s.iter().any(|s| s["url"] == camera.url)));
    let stream = stats["streams"].as_array().and_then(|s| s.iter().find(|s| s["url"] == camera.url)).cloned();
    let listed = stream.as_ref().and_then(|s| s["renditions"].as_array()).map_or(0, Vec::len);
    assert_eq!(listed, 0, "no renditions in the stats: {stats}");

    let topic = format!("pages/{}/v2", rand_suffix());
    page.subscribe(&format!("{topic}/status"));
    page.publish(
        "video/play",
        &serde_json::json!({"url": camera.url, "reply_topic": topic, "version": 2, "rendition": "h264"}),
    );
    let status = page.next_on(&format!("{topic}/status"), Duration::from_secs(10)).expect("a status");
    let status: serde_json::Value = serde_json::from_slice(&status.payload).expect("status JSON");
    assert_eq!(status["code"], "bad_request", "{status}");
    assert!(status["message"].as_str().is_some_and(|m| m.contains("\"h264\"")), "{status}");
}
