//! The media pipeline against real media: fixtures made by the ffmpeg CLI, a live GStreamer RTSP server, a
//! local HTTP server, and broken sources. Outputs are checked independently with ffmpeg and ffprobe.

use crate::support;

use mqtt_video::media::config::{Backpressure, Pacing};
use mqtt_video::media::plan::{AudioPlan, TrackMode};
use mqtt_video::media::{MediaError, Mode, Pipeline, PipelineConfig, PipelineEvent};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};
use support::*;

const LONG: Duration = Duration::from_secs(60);

fn hex_byte(mime: &str, codec: &str, byte: usize) -> u8 {
    let start = mime.find(codec).unwrap_or_else(|| panic!("{codec} in {mime}")) + codec.len() + 1 + 2 * byte;
    u8::from_str_radix(&mime[start..start + 2], 16).expect("hex in codec string")
}

#[test]
fn auto_copies_browser_ready_h264_and_aac() {
    let run = collect(h264_aac_mp4().to_str().unwrap(), fast_config(), 100.0, LONG);
    assert_eq!(run.end, Some(Ok(())), "a file ends normally");
    let source = run.source.as_ref().unwrap();
    assert_eq!(source.video, TrackMode::Copy);
    assert_eq!(source.audio, AudioPlan::Copy);
    let init = run.init.as_ref().unwrap();
    assert_eq!(init.info.width, 320);
    assert!(init.info.has_audio);
    let mime = &init.info.mime_codec;
    assert!(mime.starts_with("video/mp4; codecs=\"avc1.") && mime.ends_with(", mp4a.40.2\""), "{mime}");

    let path = assert_decodes(&run, "copy.mp4");
    let streams = probe_streams(&path);
    let video = streams.iter().find(|s| s.codec_type == "video").unwrap();
    // The codec string agrees with what ffprobe reads from the bitstream: Main profile (77), its level.
    assert_eq!(video.profile.as_deref(), Some("Main"));
    assert_eq!(hex_byte(mime, "avc1", 0), 77);
    assert_eq!(i64::from(hex_byte(mime, "avc1", 2)), video.level.unwrap());
    assert_eq!(video.nb_read_packets.as_deref(), Some("100"), "every frame of 4 s at 25 fps");
    assert!((run.media_secs() - 4.0).abs() < 0.05, "media time {}", run.media_secs());
}

#[test]
fn keyframe_flags_match_the_bitstream() {
    let run = collect(h264_aac_mp4().to_str().unwrap(), fast_config(), 100.0, LONG);
    let path = assert_decodes(&run, "keyframes.mp4");
    let flagged = run.fragments.iter().filter(|f| f.keyframe).count();
    let in_stream = video_keyframes(&path).iter().filter(|k| **k).count();
    assert_eq!(flagged, in_stream, "one fragment starts at each keyframe");
    assert_eq!(in_stream, 4, "GOP of 25 frames over 100 frames");
    assert!(run.fragments[0].keyframe, "the stream starts at a keyframe");
    let media: Vec<i64> = run.fragments.iter().filter(|f| f.video_samples > 0).map(|f| f.media_time_us).collect();
    assert!(media.windows(2).all(|w| w[0] < w[1]), "media time grows");
    assert!(run
        .fragments
        .iter()
        .all(|f| f.source_wallclock_us > 0 && f.source_wallclock_us <= f.produced_wallclock_us));
}

#[test]
fn auto_transcodes_mpeg2_and_mp2_with_fragment_duration() {
    let mut config = fast_config();
    config.fragment.duration_ms = 200;
    let run = collect(mpeg2_mp2_ts().to_str().unwrap(), config, 100.0, LONG);
    assert_eq!(run.end, Some(Ok(())));
    let source = run.source.as_ref().unwrap();
    assert_eq!((source.video, &source.audio), (TrackMode::Transcode, &AudioPlan::Transcode));
    let mime = &run.init.as_ref().unwrap().info.mime_codec;
    assert!(mime.contains("avc1.64") && mime.contains("mp4a.40.2"), "High profile H.264 + AAC-LC: {mime}");
    let path = assert_decodes(&run, "mpeg2.mp4");
    let codecs: Vec<String> = probe_streams(&path).into_iter().map(|s| s.codec_name).collect();
    assert_eq!(codecs, vec!["h264", "aac"]);
    // 25 fps with a 1 s GOP: 200 ms fragments fit a GOP exactly.
    let video: Vec<&_> = run.fragments.iter().filter(|f| f.video_samples > 0).collect();
    let full = video.iter().filter(|f| f.duration_us == 200_000).count();
    assert!(
        video.iter().all(|f| f.duration_us <= 200_000),
        "{:?}",
        video.iter().map(|f| f.duration_us).collect::<Vec<_>>()
    );
    assert!(full + 1 >= video.len(), "all but the last are 200 ms: {full} of {}", video.len());
}

#[test]
fn one_frame_fragments_by_default() {
    let run = collect(mpeg2_mp2_ts().to_str().unwrap(), fast_config(), 100.0, LONG);
    let video: Vec<_> = run.fragments.iter().filter(|f| f.video_samples > 0).collect();
    assert_eq!(video.len(), 100);
    assert!(video.iter().all(|f| f.video_samples == 1 && f.duration_us == 40_000));
}

#[test]
fn mjpeg_without_audio_gives_a_video_only_stream() {
    let run = collect(mjpeg_avi().to_str().unwrap(), fast_config(), 100.0, LONG);
    let init = run.init.as_ref().unwrap();
    assert!(!init.info.has_audio);
    assert!(!init.info.mime_codec.contains("mp4a"), "{}", init.info.mime_codec);
    assert_eq!(run.source.as_ref().unwrap().video, TrackMode::Transcode);
    let path = assert_decodes(&run, "mjpeg.mp4");
    assert_eq!(probe_streams(&path).len(), 1);
}

#[test]
fn g711_audio_is_transcoded_while_h264_with_b_frames_is_copied() {
    let run = collect(h264_g711_mkv().to_str().unwrap(), fast_config(), 100.0, LONG);
    let source = run.source.as_ref().unwrap();
    assert_eq!((source.video, &source.audio), (TrackMode::Copy, &AudioPlan::Transcode));
    assert!(run.init.as_ref().unwrap().info.mime_codec.ends_with("mp4a.40.2\""));
    let path = assert_decodes(&run, "g711.mp4");
    let streams = probe_streams(&path);
    assert_eq!(streams[0].nb_read_packets.as_deref(), Some("100"), "no frame lost to missing dts");
    assert_eq!(streams[1].codec_name, "aac");
}

#[test]
fn video_only_h264_is_copied() {
    let run = collect(video_only_mp4().to_str().unwrap(), fast_config(), 100.0, LONG);
    let init = run.init.as_ref().unwrap();
    assert_eq!(init.info.video, TrackMode::Copy);
    assert_eq!(init.info.audio, None);
    assert!(init.info.mime_codec.starts_with("video/mp4; codecs=\"avc1.") && !init.info.mime_codec.contains(','));
    assert_decodes(&run, "video_only.mp4");
}

#[test]
fn transcode_scales_to_the_configured_maximum() {
    let mut config = fast_config();
    config.mode = Mode::Transcode;
    config.video.max_width = 160;
    config.video.profile = "baseline".into();
    let run = collect(h264_aac_mp4().to_str().unwrap(), config, 100.0, LONG);
    let init = run.init.as_ref().unwrap();
    assert_eq!((init.info.width, init.info.height), (160, 120));
    assert_eq!(hex_byte(&init.info.mime_codec, "avc1", 0), 66, "baseline profile");
    let path = assert_decodes(&run, "scaled.mp4");
    let video = probe_streams(&path).into_iter().find(|s| s.codec_type == "video").unwrap();
    assert_eq!((video.width, video.height), (Some(160), Some(120)));
}

#[test]
fn auto_transcodes_browser_ready_video_that_exceeds_the_limits() {
    let mut config = fast_config();
    config.video.max_width = 160;
    let run = collect(h264_aac_mp4().to_str().unwrap(), config, 1.0, LONG);
    let init = run.init.as_ref().unwrap();
    assert_eq!((init.info.video, init.info.width), (TrackMode::Transcode, 160));
    assert_eq!(run.source.as_ref().unwrap().audio, AudioPlan::Copy, "the audio is still copied");
}

#[test]
fn copy_mode_refuses_video_that_is_not_h264() {
    let mut config = fast_config();
    config.mode = Mode::Copy;
    let run = collect(mpeg2_mp2_ts().to_str().unwrap(), config, 100.0, LONG);
    assert!(run.init.is_none());
    let err = run.error();
    assert!(matches!(err, MediaError::Unsupported(ref m) if m.contains("mpeg2video")), "{err}");
}

#[test]
fn builtin_test_source_has_video_and_audio() {
    let run = collect("builtin://testsrc", fast_config(), 2.0, LONG);
    let init = run.init.as_ref().unwrap();
    assert_eq!((init.info.width, init.info.height), (640, 360));
    assert!(init.info.has_audio);
    assert_decodes(&run, "builtin.mp4");
    let silent = collect("builtin://testsrc-silent", fast_config(), 1.0, LONG);
    assert!(!silent.init.as_ref().unwrap().info.has_audio);
}

#[test]
fn live_rtsp_source_copy_and_transcode() {
    let server = RtspServer::start(&[]);
    for mode in [Mode::Copy, Mode::Transcode] {
        let mut config = PipelineConfig { mode, ..Default::default() };
        config.backpressure = Backpressure::Block;
        let run = collect(&server.url, config, 2.0, LONG);
        let init = run.init.as_ref().unwrap_or_else(|| panic!("{mode:?}: no init, end {:?}", run.end));
        assert_eq!((init.info.width, init.info.height, init.info.has_audio), (640, 360, true));
        assert!(run.fragments[0].keyframe, "{mode:?} starts at a keyframe");
        assert_decodes(&run, &format!("rtsp-{mode:?}.mp4"));
        let ttff = run.time_to_first_fragment.unwrap();
        eprintln!("rtsp {mode:?}: first fragment after {ttff:?}, {} fragments", run.fragments.len());
        let lag: Vec<u64> = run.fragments.iter().map(|f| f.produced_wallclock_us - f.source_wallclock_us).collect();
        assert!(lag.iter().all(|l| *l < 5_000_000), "fragments are dated by their source packets");
    }
}

#[test]
fn rtsp_source_without_audio() {
    let server = RtspServer::start(&["--no-audio"]);
    let run = collect(&server.url, PipelineConfig::default(), 1.0, LONG);
    let init = run.init.as_ref().unwrap();
    assert!(!init.info.has_audio);
    assert_eq!(init.info.video, TrackMode::Copy);
    assert_decodes(&run, "rtsp-noaudio.mp4");
}

/// Serves `body` once per connection over HTTP/1.0; with `stall_after`, sends that many bytes and then holds
/// the connection open without sending more.
fn http_server(body: Vec<u8>, stall_after: Option<usize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/stream.ts", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            // Read the whole request: closing with unread bytes would reset the connection instead of ending it.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: video/mp2t\r\n\r\n");
            let end = stall_after.unwrap_or(body.len()).min(body.len());
            let _ = conn.write_all(&body[..end]);
            if stall_after.is_some() {
                std::thread::sleep(Duration::from_secs(30));
            }
        }
    });
    url
}

fn h264_ts_10s() -> std::path::PathBuf {
    fixture(
        "h264_10s.ts",
        &["testsrc2=size=320x240:rate=25:duration=10", "sine=duration=10"],
        &["-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac"],
    )
}

#[test]
fn http_stream_plays_to_its_end() {
    let url = http_server(std::fs::read(h264_ts_10s()).unwrap(), None);
    let run = collect(&url, fast_config(), 100.0, LONG);
    assert_eq!(run.end, Some(Ok(())));
    assert!((run.media_secs() - 10.0).abs() < 0.1, "{}", run.media_secs());
    assert_decodes(&run, "http.mp4");
}

#[test]
fn source_that_stalls_mid_stream_times_out() {
    let body = std::fs::read(h264_ts_10s()).unwrap();
    let url = http_server(body.clone(), Some(body.len() * 7 / 10));
    let mut config = fast_config();
    config.source.stall_timeout_ms = 1000;
    let started = Instant::now();
    let run = collect(&url, config, 100.0, LONG);
    assert!(run.fragments.len() > 25, "it played until the stall: {}", run.fragments.len());
    assert!(matches!(run.error(), MediaError::Timeout(_)), "{:?}", run.end);
    assert!(started.elapsed() < Duration::from_secs(20), "gave up in {:?}", started.elapsed());
}

#[test]
fn server_that_accepts_and_never_answers_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("rtsp://{}/live", listener.local_addr().unwrap());
    let holder = std::thread::spawn(move || {
        let conn = listener.accept();
        std::thread::sleep(Duration::from_secs(5));
        drop(conn);
    });
    let mut config = PipelineConfig::default();
    config.source.connect_timeout_ms = 1000;
    let started = Instant::now();
    let run = collect(&url, config, 1.0, LONG);
    assert!(matches!(run.error(), MediaError::Timeout(_)), "{:?}", run.end);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "{took:?}");
    holder.join().unwrap();
}

#[test]
fn closed_port_is_unreachable() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let run = collect(&format!("rtsp://127.0.0.1:{port}/live"), PipelineConfig::default(), 1.0, LONG);
    let err = run.error();
    assert!(matches!(err, MediaError::SourceUnreachable(ref m) if m.contains("refused")), "{err}");
    assert_eq!(err.code(), "source_unreachable");
}

#[test]
fn missing_file_is_unreachable() {
    let run = collect("/nonexistent/clip.mp4", fast_config(), 1.0, LONG);
    assert!(matches!(run.error(), MediaError::SourceUnreachable(ref m) if m.contains("no such file")), "{:?}", run.end);
}

#[test]
fn non_media_file_is_unsupported() {
    let path = work_dir().join("notes.txt");
    std::fs::write(&path, "this is not a video\n".repeat(200)).unwrap();
    let run = collect(path.to_str().unwrap(), fast_config(), 1.0, LONG);
    assert!(matches!(run.error(), MediaError::Unsupported(_)), "{:?}", run.end);
}

#[test]
fn forbidden_protocols_fail_before_any_io() {
    for url in [
        "concat:/etc/passwd|/etc/hosts",
        "subfile:,start,0,end,10,:/etc/passwd",
        "gopher://x/",
        "builtin://testsrc=size=9999x9999",
    ] {
        let err = Pipeline::start(url, PipelineConfig::default()).err().unwrap_or_else(|| panic!("{url} accepted"));
        assert!(matches!(err, MediaError::ForbiddenProtocol(_) | MediaError::InvalidUrl(_)), "{url}: {err}");
    }
}

#[test]
fn a_slow_consumer_loses_whole_gops_and_they_are_counted() {
    let mut config = fast_config();
    config.backpressure = Backpressure::Drop;
    config.channel_capacity = 4;
    let mut pipeline = Pipeline::start("builtin://testsrc-silent", config).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut last = None;
    let mut received = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while received < 200 && Instant::now() < deadline {
        let Ok(PipelineEvent::Fragment(f)) = pipeline.events().recv_timeout(Duration::from_secs(5)) else { continue };
        if let Some(prev) = last {
            if f.sequence != prev + 1 {
                assert!(f.keyframe, "after a gap ({prev} -> {}) delivery resumes at a keyframe", f.sequence);
            }
        }
        last = Some(f.sequence);
        received += 1;
    }
    let stats = pipeline.stats().snapshot();
    assert!(stats.fragments_dropped > 0, "{stats:?}");
    assert_eq!(received, 200);
    pipeline.join();
}

#[test]
fn paced_files_loop_and_look_live() {
    let one_second = fixture(
        "one_second.mp4",
        &["testsrc2=size=160x120:rate=25:duration=1", "sine=duration=1"],
        &["-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac"],
    );
    let mut config = PipelineConfig { backpressure: Backpressure::Block, ..Default::default() };
    config.source.looping = true;
    config.source.pacing = Pacing::Realtime;
    let started = Instant::now();
    let run = collect(one_second.to_str().unwrap(), config, 2.5, LONG);
    let elapsed = started.elapsed().as_secs_f64();
    // Paced: media never runs ahead of the clock by more than the first fragment's worth.
    assert!(run.media_secs() <= elapsed + 0.1, "media {} s in {elapsed} s", run.media_secs());
    assert!(run.media_secs() >= 2.5, "it looped past the 1 s file");
    let times: Vec<i64> = run.fragments.iter().filter(|f| f.video_samples > 0).map(|f| f.media_time_us).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "time keeps growing across loops");
    assert_decodes(&run, "looped.mp4");
}

#[test]
fn stopping_a_pipeline_that_is_connecting_is_immediate() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("rtsp://{}/live", listener.local_addr().unwrap());
    let pipeline = Pipeline::start(&url, PipelineConfig::default()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    pipeline.join();
    assert!(started.elapsed() < Duration::from_secs(2), "stop took {:?}", started.elapsed());
}

#[test]
fn video_fragments_start_with_a_producer_reference_time() {
    use mqtt_video_wire::fmp4::{parse_box_header, parse_init, parse_prft};
    let run = collect(h264_aac_mp4().to_str().unwrap(), fast_config(), 100.0, LONG);
    let timescale = i64::from(parse_init(&run.init.as_ref().unwrap().bytes).unwrap()[0].timescale);
    for f in run.fragments.iter().filter(|f| f.video_samples > 0) {
        let header = parse_box_header(&f.bytes).unwrap().unwrap();
        assert_eq!(&header.kind, b"prft");
        let (_, clock, media_time) = parse_prft(&f.bytes[8..32]).unwrap();
        assert!(clock.abs_diff(f.source_wallclock_us) <= 1);
        assert_eq!(media_time as i64 * 1_000_000 / timescale, f.media_time_us);
    }
    let mut config = fast_config();
    config.fragment.producer_reference_time = false;
    let plain = collect(h264_aac_mp4().to_str().unwrap(), config, 100.0, LONG);
    assert!(plain.fragments.iter().all(|f| &f.bytes[4..8] == b"moof"));
}

#[test]
fn a_start_offset_continues_the_timeline() {
    // A restarted source must continue where its viewers are, not at 0 (MSE would play it in the past).
    let mut pipeline = Pipeline::start_at(h264_aac_mp4().to_str().unwrap(), fast_config(), 20_000_000, 1).unwrap();
    let mut fragments = Vec::new();
    let mut init = None;
    for event in pipeline.events().iter() {
        match event {
            PipelineEvent::Init(i) => init = Some(i),
            PipelineEvent::Fragment(f) => fragments.push(f),
            PipelineEvent::End(_) => break,
            PipelineEvent::Source(_) | PipelineEvent::Rendition(..) => {}
        }
    }
    pipeline.join();
    let first = &fragments[0];
    assert_eq!(first.media_time_us, 20_000_000, "the fragment's own decode time");
    // The bytes say the same: every track's tfdt starts at the offset.
    let tracks = mqtt_video_wire::fmp4::parse_init(&init.unwrap().bytes).unwrap();
    let moof = mqtt_video_wire::fmp4::find_box(&first.bytes[32..], b"moof").unwrap().unwrap();
    for run in mqtt_video_wire::fmp4::parse_moof(moof, &tracks).unwrap() {
        let track = tracks.iter().find(|t| t.track_id == run.track_id).unwrap();
        let secs = run.base_decode_time as f64 / f64::from(track.timescale);
        assert!((secs - 20.0).abs() < 0.1, "track {} starts at {secs} s", run.track_id);
    }
}
