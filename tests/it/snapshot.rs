//! Snapshots from real streams: the keyframe a stream holds for late joiners, in copy mode (an H.264 file,
//! never decoded by the pipeline; HEVC fragments from libx265) and transcode mode (the built-in pattern through x264), decoded once and
//! encoded as JPEG at the source's size or a smaller one; broken input is an error, never a panic. Prints the
//! time one snapshot takes.

use crate::support;

use mqtt_video::media::config::Mode;
use mqtt_video::media::encode::snapshot::{jpeg_of_keyframe, jpeg_size, JpegSettings};
use mqtt_video::media::Fragment;
use mqtt_video_wire::keyframe::{annex_b_keyframe, KeyframeError, VideoCodec};
use std::process::Command;
use std::time::Instant;
use support::*;

fn keyframe(run: &Run) -> &Fragment {
    run.fragments.iter().find(|f| f.keyframe).expect("a keyframe fragment")
}

/// ffprobe's width,height of a file, decoded for real.
fn probed_size(bytes: &[u8], name: &str) -> String {
    let path = work_dir().join(name);
    std::fs::write(&path, bytes).unwrap();
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries"])
        .args(["stream=width,height,nb_read_frames", "-of", "csv=p=0"])
        .arg(&path)
        .output()
        .expect("ffprobe");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_copied_stream_gives_a_jpeg_of_its_keyframe_at_its_size_or_smaller() {
    let mut config = fast_config();
    config.mode = Mode::Copy;
    let run = collect(&h264_aac_mp4().display().to_string(), config, 2.0, std::time::Duration::from_secs(20));
    let init = &run.init.as_ref().expect("init").bytes;
    let key = keyframe(&run);

    let keyframe = annex_b_keyframe(init, &key.bytes).expect("an access unit");
    assert_eq!(keyframe.codec, VideoCodec::H264);
    assert_eq!(probed_size(&keyframe.access_unit, "keyframe.h264"), "320,240,1", "one decodable frame");

    let started = Instant::now();
    let jpeg = jpeg_of_keyframe(init, &key.bytes, &JpegSettings::default()).expect("a JPEG");
    let took = started.elapsed();
    assert_eq!((jpeg.width, jpeg.height), (320, 240));
    assert_eq!(jpeg_size(&jpeg.bytes), Some((320, 240)));
    assert_eq!(probed_size(&jpeg.bytes, "snapshot.jpg"), "320,240,1");
    let small = JpegSettings { max_width: 160, ..Default::default() };
    let smaller = jpeg_of_keyframe(init, &key.bytes, &small).expect("a smaller JPEG");
    assert_eq!(jpeg_size(&smaller.bytes), Some((160, 120)), "scaled keeping the aspect ratio");
    let worse = jpeg_of_keyframe(init, &key.bytes, &JpegSettings { quality: 10, ..Default::default() }).unwrap();
    assert!(worse.bytes.len() < jpeg.bytes.len(), "quality 10: {} bytes, 90: {}", worse.bytes.len(), jpeg.bytes.len());
    println!("snapshot 320x240 (copy mode): {} bytes in {:.1} ms", jpeg.bytes.len(), took.as_secs_f64() * 1000.0);

    // A fragment that does not start with a keyframe, a truncated one, a wrong init: errors.
    let delta = run.fragments.iter().find(|f| !f.keyframe && f.video_samples > 0).expect("a delta fragment");
    assert_eq!(annex_b_keyframe(init, &delta.bytes), Err(KeyframeError::NotAKeyframe));
    assert!(annex_b_keyframe(init, &key.bytes[..key.bytes.len() / 2]).is_err());
    assert!(jpeg_of_keyframe(&key.bytes, &key.bytes, &JpegSettings::default()).is_err());
}

#[test]
fn an_hevc_fragments_keyframe_decodes_to_a_jpeg() {
    // Fragmented MP4 as the server writes it (hvc1, parameter sets in the hvcC, moof-relative offsets), from
    // libx265 through FFmpeg's own muxer.
    let file = fixture(
        "hevc_fragmented.mp4",
        &[VIDEO],
        &["-c:v", "libx265", "-x265-params", "log-level=error", "-g", "25", "-tag:v", "hvc1", "-pix_fmt", "yuv420p"]
            .into_iter()
            .chain(["-movflags", "frag_keyframe+empty_moov+default_base_moof", "-f", "mp4"])
            .collect::<Vec<_>>(),
    );
    let bytes = std::fs::read(file).expect("the fixture");
    let mut splitter = mqtt_video_wire::fmp4::Splitter::new();
    let mut segments = splitter.push(&bytes).expect("fMP4").into_iter();
    let Some(mqtt_video_wire::fmp4::Segment::Init(init)) = segments.next() else { panic!("an init segment first") };
    let Some(mqtt_video_wire::fmp4::Segment::Fragment { bytes: key, .. }) = segments.next() else {
        panic!("a fragment")
    };
    let keyframe = annex_b_keyframe(&init, &key).expect("an access unit");
    assert_eq!(keyframe.codec, VideoCodec::Hevc);
    assert_eq!(probed_size(&keyframe.access_unit, "keyframe.hevc"), "320,240,1", "one decodable frame");
    let jpeg = jpeg_of_keyframe(&init, &key, &JpegSettings::default()).expect("a JPEG");
    assert_eq!(jpeg_size(&jpeg.bytes), Some((320, 240)));
    assert_eq!(probed_size(&jpeg.bytes, "snapshot-hevc.jpg"), "320,240,1");
}

#[test]
fn a_transcoded_stream_gives_a_jpeg_and_says_how_long_it_took() {
    let mut config = fast_config();
    config.mode = Mode::Transcode;
    let run = collect("builtin://testsrc-720p", config, 1.5, std::time::Duration::from_secs(30));
    let init = &run.init.as_ref().expect("init").bytes;
    let key = keyframe(&run);
    // Decoding, scaling and encoding all run on this thread: its CPU time is the snapshot's cost.
    const RUNS: usize = 10;
    let mut times = Vec::new();
    let mut size = 0;
    let cpu = thread_cpu_seconds();
    for _ in 0..RUNS {
        let started = Instant::now();
        let jpeg = jpeg_of_keyframe(init, &key.bytes, &JpegSettings::default()).expect("a JPEG");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(jpeg_size(&jpeg.bytes), Some((1280, 720)));
        size = jpeg.bytes.len();
    }
    let cpu_ms = (thread_cpu_seconds() - cpu) * 1000.0 / RUNS as f64;
    let wall = median(times);
    println!("snapshot 1280x720 (transcode mode): {size} bytes, median {wall:.1} ms wall, {cpu_ms:.0} ms CPU each ({RUNS} runs, one thread)");
}
