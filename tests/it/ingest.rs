//! Push ingest end to end: the ffmpeg CLI publishes (as an external encoder would) over TCP, RTMP and SRT into
//! `mqtt-video serve`, and MQTT clients acting as pages watch `ingest://NAME` through a real mosquitto.

use crate::support;

use mqtt_video_wire::fmp4::{self, Segment, Splitter, TrackKind};
use mqtt_video_wire::rtmp::amf0::Value as AmfValue;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::broker::{free_port, Broker};
use support::page::{rand_suffix, server_config, sources_list, Message, Page, Server};
use support::rtmp::{flv_file_tags, Connection, Script};
use support::*;

const KEY: &str = "test-key-0123456789";

/// The ffmpeg CLI pushing a test pattern (H.264 + AAC, 30 fps, a keyframe a second) until dropped.
struct Publisher {
    child: Child,
    /// When ffmpeg read its first video frame (paced by `-re`): frame n was captured n/30 s later.
    first_frame_at: Arc<Mutex<Option<Instant>>>,
}

const X264: [&str; 6] = ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency"];
/// An HEVC encoder as a camera or an OBS would push it: no B-frames, a keyframe a second.
const X265: [&str; 8] =
    ["-c:v", "libx265", "-preset", "ultrafast", "-tune", "zerolatency", "-x265-params", "log-level=error"];

impl Publisher {
    fn start(size: &str, format: &str, url: &str) -> Self {
        Self::start_with(&X264, size, format, url)
    }

    fn start_with(video: &[&str], size: &str, format: &str, url: &str) -> Self {
        let mut child = Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-debug_ts", "-re", "-f", "lavfi", "-i"])
            .arg(format!("testsrc2=size={size}:rate=30"))
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
            .args(video)
            .args(["-g", "30", "-pix_fmt", "yuv420p"])
            .args(["-c:a", "aac"])
            // One PES per audio frame: by default ffmpeg groups ~180 ms of audio, which pages must wait for.
            .args(if format == "mpegts" { &["-pes_payload_size", "0"][..] } else { &[] })
            .args(["-f", format, url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting ffmpeg");
        let stderr = child.stderr.take().expect("ffmpeg stderr");
        let first_frame_at = Arc::new(Mutex::new(None));
        let seen = Arc::clone(&first_frame_at);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // `-debug_ts`: "demuxer -> ist_index:0 type:video ..." as ffmpeg takes each input frame.
                if line.starts_with("demuxer -> ist_index:0 type:video") {
                    let mut first = seen.lock().unwrap();
                    first.get_or_insert_with(Instant::now);
                }
            }
        });
        Publisher { child, first_frame_at }
    }

    /// Waits for ffmpeg to exit (a refused publisher) and returns whether it failed.
    fn exits_with_failure(mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return !status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Stack {
    server: Server,
    broker: Broker,
    tcp_port: u16,
    rtmp_port: u16,
    srt_port: u16,
}

fn stack() -> Stack {
    stack_logging("error", "info")
}

/// A stack whose server logs FFmpeg at `ffmpeg_log` and itself at `log`.
fn stack_logging(ffmpeg_log: &str, log: &str) -> Stack {
    let broker = Broker::start();
    let (tcp_port, rtmp_port) = (free_port(), free_port());
    let srt_port = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a UDP port").port();
    let ingest = format!(
        "[[ingest]]\nname = \"desk\"\nlisten = \"tcp://127.0.0.1:{tcp_port}\"\ndescription = \"pushed over TCP\"\n\n\
         [[ingest]]\nname = \"studio\"\nlisten = \"rtmp://127.0.0.1:{rtmp_port}\"\nkey = \"{KEY}\"\n\n\
         [[ingest]]\nname = \"field\"\nlisten = \"srt://127.0.0.1:{srt_port}\"\nkey = \"{KEY}\"\n\n\
         [limits]\nlinger_secs = 2\n\n[pipeline.source]\nconnect_timeout_ms = 3000\nstall_timeout_ms = 3000\n"
    );
    let server = Server::start_logging(&server_config(broker.port, &[], &ingest), ffmpeg_log, log);
    server.wait_for_log("push ingest listening on rtmp://", Duration::from_secs(10));
    Stack { server, broker, tcp_port, rtmp_port, srt_port }
}

fn page(stack: &Stack) -> Page {
    Page::connect(stack.broker.port, &format!("page-{}", rand_suffix()), None)
}

/// The URLs in the retained sources list, once it satisfies `ok` (within 15 s).
fn sources_where(stack: &Stack, ok: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        // A fresh subscription gets the retained list as it is now.
        if let Some(v) = sources_list(stack.broker.port, Duration::from_secs(2)) {
            last = v["sources"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s["url"].as_str().map(String::from)).collect())
                .unwrap_or_default();
            if ok(&last) {
                return last;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the sources list never matched; last {last:?}");
}

/// Fragments with the time each arrived.
type Arrivals = Vec<(Instant, Vec<u8>)>;

/// Media received by a viewer: init segments and fragments in order, with when each fragment arrived.
#[derive(Default)]
struct Watched {
    splitter: Splitter,
    /// Each init segment with the fragments that followed it.
    runs: Vec<(Vec<u8>, Arrivals)>,
    states: Vec<String>,
}

impl Watched {
    fn take(&mut self, reply_topic: &str, m: &Message) {
        if m.topic == format!("{reply_topic}/status") {
            let v: Value = serde_json::from_slice(&m.payload).expect("status JSON");
            self.states.push(v["state"].as_str().unwrap_or("?").to_string());
        } else if m.topic == reply_topic {
            // A new init segment (the publisher came back with other parameters) starts a new fMP4 stream.
            if m.payload.get(4..8) == Some(b"ftyp") {
                self.splitter = Splitter::new();
            }
            for segment in self.splitter.push(&m.payload).expect("whole fMP4 boxes") {
                match segment {
                    Segment::Init(bytes) => self.runs.push((bytes, Vec::new())),
                    Segment::Fragment { bytes, .. } => {
                        let run = self.runs.last_mut().expect("a fragment before any init segment");
                        run.1.push((m.at, bytes));
                    }
                }
            }
        }
    }

    /// Receives for `duration`, or until `until` holds.
    fn watch(&mut self, page: &Page, reply_topic: &str, duration: Duration, until: impl Fn(&Watched) -> bool) {
        let deadline = Instant::now() + duration;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if until(self) {
                return;
            }
            if let Ok(m) = page.inbox.recv_timeout(left.min(Duration::from_millis(100))) {
                self.take(reply_topic, &m);
            }
        }
    }

    /// Receives until a status `state` arrives (within `secs`), and fails if none does.
    fn until_state(&mut self, page: &Page, reply_topic: &str, state: &str, secs: u64) {
        self.watch(page, reply_topic, Duration::from_secs(secs), |w| w.states.iter().any(|s| s == state));
        assert!(self.states.iter().any(|s| s == state), "no {state} status: {:?}", self.states);
    }

    fn fragments(&self) -> usize {
        self.runs.iter().map(|r| r.1.len()).sum()
    }
}

/// Asserts that an init segment and its fragments decode without a single error.
fn decodes(init: &[u8], fragments: &[(Instant, Vec<u8>)], name: &str) {
    let bytes: Vec<u8> = fragments.iter().flat_map(|(_, f)| f.iter().copied()).collect();
    assert_bytes_decode(&[init.to_vec(), bytes].concat(), name);
}

/// Capture-to-publish latency (p50, p95 in ms, fragments): frame n left ffmpeg's input at its first frame
/// plus n/30 s (`-re`), and the fragment ending with it reached the page at its arrival. Copy mode, so the
/// fragments' decode times count the publisher's frames from 0. The first 2 s are left out: a joiner gets
/// the GOP so far at once, on purpose.
fn capture_to_publish(publisher: &Publisher, init: &[u8], fragments: &[(Instant, Vec<u8>)]) -> (f64, f64, usize) {
    let first_frame_at = publisher.first_frame_at.lock().unwrap().expect("ffmpeg's first frame line");
    let tracks = fmp4::parse_init(init).expect("init segment");
    let video = tracks.iter().find(|t| t.kind == TrackKind::Video).expect("a video track");
    let joined = fragments.first().map(|(at, _)| *at).expect("fragments");
    let latencies: Vec<f64> = fragments
        .iter()
        .filter(|(at, _)| *at >= joined + Duration::from_secs(2))
        .filter_map(|(at, bytes)| {
            let moof = fmp4::find_box(bytes, b"moof").ok()??;
            let run = fmp4::parse_moof(moof, &tracks).ok()?.into_iter().find(|r| r.track_id == video.track_id)?;
            let end_secs = (run.base_decode_time + run.duration) as f64 / f64::from(video.timescale);
            let captured = first_frame_at + Duration::from_secs_f64((end_secs - 1.0 / 30.0).max(0.0));
            Some(at.saturating_duration_since(captured).as_secs_f64() * 1000.0)
        })
        .collect();
    let n = latencies.len();
    (percentile(latencies.clone(), 0.5), percentile(latencies, 0.95), n)
}

/// Prints the capture-to-publish latency of a run and checks that it is sane.
fn report_capture_to_publish(what: &str, publisher: &Publisher, init: &[u8], fragments: &[(Instant, Vec<u8>)]) {
    let (p50, p95, n) = capture_to_publish(publisher, init, fragments);
    eprintln!("capture to publish ({what}): p50 {p50:.1} ms, p95 {p95:.1} ms over {n} fragments");
    assert!(p50 > 0.0 && p50 < 1000.0, "p50 {p50} ms");
}

/// The video size an init segment declares, from its `avc1` sample entry.
fn video_size(init: &[u8]) -> (u16, u16) {
    let tracks = fmp4::parse_init(init).expect("init segment");
    let video = tracks.iter().find(|t| t.kind == TrackKind::Video).expect("a video track");
    // VisualSampleEntry: 8 header + 6 reserved + 2 index + 16 predefined, then width and height.
    let e = &video.sample_entry;
    (u16::from_be_bytes([e[32], e[33]]), u16::from_be_bytes([e[34], e[35]]))
}

#[test]
fn tcp_push_plays_and_a_returning_publisher_resumes_the_viewers_session() {
    let stack = stack();
    let page = page(&stack);
    let url = "ingest://desk";

    // Nobody publishes yet: not offered, and asking for it says why.
    let sources = sources_where(&stack, |s| !s.is_empty());
    assert!(!sources.iter().any(|u| u == url), "{sources:?}");
    let reply = page.describe(url, &format!("pages/{}/d0", rand_suffix()));
    assert_eq!(reply["error"]["code"], "source_unreachable", "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap_or("").contains("nobody is publishing"), "{reply}");

    let publisher = Publisher::start("640x360", "mpegts", &format!("tcp://127.0.0.1:{}", stack.tcp_port));
    sources_where(&stack, |s| s.iter().any(|u| u == url));
    let reply = page.describe(url, &format!("pages/{}/d1", rand_suffix()));
    let mime = reply["mimeCodec"].as_str().unwrap_or_default();
    assert!(mime.contains("avc1.") && mime.contains("mp4a.40.2"), "{reply}");
    assert_eq!(reply["video"], "copy", "{reply}");

    let topic = format!("pages/{}/media", rand_suffix());
    page.play(url, &topic);
    let mut watched = Watched::default();
    watched.watch(&page, &topic, Duration::from_secs(4), |_| false);
    assert_eq!(watched.runs.len(), 1, "one init segment");
    let (init, fragments) = &watched.runs[0];
    assert!(fragments.len() > 60, "{} fragments in 4 s", fragments.len());
    assert_eq!(video_size(init), (640, 360));
    decodes(init, fragments, "ingest-tcp-first.mp4");

    report_capture_to_publish("TCP, MPEG-TS, copy", &publisher, init, fragments);

    // The publisher dies mid-stream: the viewer hears why and keeps its session, the source leaves the list.
    drop(publisher);
    watched.until_state(&page, &topic, "waiting", 10);
    sources_where(&stack, |s| !s.iter().any(|u| u == url));

    // Another publisher with other parameters: the viewer gets a new init segment and plays on.
    let _publisher = Publisher::start("320x240", "mpegts", &format!("tcp://127.0.0.1:{}", stack.tcp_port));
    watched.watch(&page, &topic, Duration::from_secs(15), |w| w.runs.len() == 2 && w.runs[1].1.len() > 45);
    assert_eq!(watched.runs.len(), 2, "a new init segment after the publisher came back; states {:?}", watched.states);
    let (init, fragments) = &watched.runs[1];
    assert_eq!(video_size(init), (320, 240));
    assert!(fragments.len() > 45, "{} fragments after the publisher came back", fragments.len());
    decodes(init, fragments, "ingest-tcp-second.mp4");
    assert!(!watched.states.iter().any(|s| s == "ended" || s == "error"), "{:?}", watched.states);
    drop(stack.server);
}

#[test]
fn rtmp_push_needs_the_key_and_takes_one_publisher_at_a_time() {
    let stack = stack();
    let page = page(&stack);
    let rtmp = |key: &str| format!("rtmp://127.0.0.1:{}/live/{key}", stack.rtmp_port);

    let publisher = Publisher::start("640x360", "flv", &rtmp(KEY));
    sources_where(&stack, |s| s.iter().any(|u| u == "ingest://studio"));
    let topic = format!("pages/{}/media", rand_suffix());
    page.play("ingest://studio", &topic);
    let mut watched = Watched::default();
    watched.watch(&page, &topic, Duration::from_secs(10), |w| w.fragments() > 30);

    // The stats show who publishes, since when and how much.
    let stats = page.stats_where(|v| {
        v["ingest"].as_array().is_some_and(|a| {
            a.iter().any(|e| e["name"] == "studio" && e["publishing"] == true && e["bytes"].as_u64() > Some(10_000))
        })
    });
    let studio = stats["ingest"].as_array().unwrap().iter().find(|e| e["name"] == "studio").unwrap().clone();
    assert_eq!(studio["protocol"], "rtmp", "{studio}");
    assert!(studio["publisher"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{studio}");

    // A second publisher with the right key is turned away while the first one plays on.
    let second = Publisher::start("320x240", "flv", &rtmp(KEY));
    assert!(second.exits_with_failure(Duration::from_secs(15)), "a second publisher was let in");
    stack.server.wait_for_log("refused a second publisher", Duration::from_secs(5));
    let before = watched.fragments();
    watched.watch(&page, &topic, Duration::from_secs(3), |_| false);
    assert!(
        watched.fragments() > before + 45,
        "the first publisher's viewer stalled: {before} -> {}",
        watched.fragments()
    );
    assert_eq!(watched.runs.len(), 1);
    let (init, fragments) = &watched.runs[0];
    assert_eq!(video_size(init), (640, 360));
    decodes(init, fragments, "ingest-rtmp.mp4");
    report_capture_to_publish("RTMP, FLV, copy", &publisher, init, fragments);
    assert!(!watched.states.iter().any(|s| s == "waiting" || s == "ended" || s == "error"), "{:?}", watched.states);

    // The publisher leaves; one with a wrong key is refused (and says so in the log): the waiting viewer
    // gets nothing from it, and the source is not offered.
    drop(publisher);
    watched.until_state(&page, &topic, "waiting", 10);
    let wrong = Publisher::start("320x240", "flv", &rtmp("wrong-key-0123456789"));
    assert!(wrong.exits_with_failure(Duration::from_secs(15)), "ffmpeg kept publishing with a wrong key");
    stack.server.wait_for_log("refused: wrong stream key", Duration::from_secs(5));
    watched.watch(&page, &topic, Duration::from_secs(1), |_| false);
    assert_eq!(watched.runs.len(), 1, "media from a publisher with a wrong key reached the viewer");
    let reply = page.describe("ingest://studio", &format!("pages/{}/d", rand_suffix()));
    assert_eq!(reply["error"]["code"], "source_unreachable", "{reply}");
    sources_where(&stack, |s| !s.iter().any(|u| u == "ingest://studio"));
    drop(stack.server);
}

#[test]
fn an_enhanced_rtmp_hevc_publisher_as_obs_sends_is_copied_as_hvc1_with_an_h264_rendition() {
    let stack = stack();
    let page = page(&stack);
    // x265's defaults (B-frames: the composition times matter), AAC beside it, 12 s.
    let file = fixture(
        "hevc_aac_12s.mp4",
        &["testsrc2=size=320x240:rate=25:duration=12", "sine=frequency=440:sample_rate=44100:duration=12"],
        &["-c:v", "libx265", "-x265-params", "log-level=error", "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac"],
    );
    let tags = support::rtmp::enhanced_hevc_tags(&file);
    let hvcc = &tags[0].2[5..];
    let expected = mqtt_video_wire::hevc::parse_hvcc(hvcc).expect("the file's hvcC").ptl.codec_string("hvc1");
    let mut c = Connection::open(stack.rtmp_port, None);
    let mut script = Script::ffmpeg_opening(KEY, 4096);
    c.send(&script.take());
    assert!(c.wait_for(b"NetStream.Publish.Start", Duration::from_secs(5)), "the right key was not let in");
    script.metadata();
    c.send(&script.take());
    let sender = std::thread::spawn(move || {
        let sent = c.send_media(&mut script, &tags, Duration::from_secs(12));
        (sent, c)
    });
    sources_where(&stack, |s| s.iter().any(|u| u == "ingest://studio"));

    // Version 2 pages are offered the publisher's HEVC as it came, and H.264 made from it.
    let reply = page.describe("ingest://studio", &format!("pages/{}/d", rand_suffix()));
    let renditions = reply["renditions"].as_array().unwrap_or_else(|| panic!("no renditions: {reply}"));
    let mime = |v: &Value| v["mimeCodec"].as_str().unwrap_or("").to_string();
    assert_eq!(mime(&renditions[0]), format!("video/mp4; codecs=\"{expected}, mp4a.40.2\""), "{reply}");
    assert_eq!(renditions[1]["name"], "h264", "{reply}");
    let stats = page.stats_where(|v| {
        v["streams"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["url"] == "ingest://studio" && s["output"]["video"] == "copy"))
    });
    assert!(stats["streams"].as_array().is_some_and(|s| !s.is_empty()), "{stats}");

    // A version 1 viewer gets the H.264, decoded from the HEVC and encoded again, and it plays.
    let topic = format!("pages/{}/media", rand_suffix());
    page.play("ingest://studio", &topic);
    let mut watched = Watched::default();
    watched.watch(&page, &topic, Duration::from_secs(10), |w| w.fragments() > 60);
    let (sent, _c) = sender.join().expect("the publisher thread");
    let (init, fragments) = &watched.runs[0];
    let tracks = fmp4::parse_init(init).expect("an init segment");
    let v1 = mqtt_video_wire::codec_string::mime_type(&tracks).expect("a MIME type");
    assert!(v1.contains("avc1.") && v1.contains("mp4a.40.2"), "{v1}");
    assert!(fragments.len() > 60, "{} fragments from {sent} tags", fragments.len());
    decodes(init, fragments, "ingest-rtmp-hevc-v1.mp4");
    eprintln!("enhanced RTMP HEVC: {sent} tags; main {expected}, version 1 {v1}, {} fragments", fragments.len());
    drop(stack.server);
}

#[test]
fn hevc_pushed_as_mpeg_ts_over_tcp_and_srt_is_copied_with_an_h264_rendition() {
    let stack = stack();
    let page = page(&stack);
    let srt = format!("srt://127.0.0.1:{}?passphrase={KEY}&latency=20000", stack.srt_port);
    for (name, url) in [("desk", format!("tcp://127.0.0.1:{}", stack.tcp_port)), ("field", srt)] {
        let _publisher = Publisher::start_with(&X265, "640x360", "mpegts", &url);
        let source = format!("ingest://{name}");
        sources_where(&stack, |s| s.contains(&source));
        let reply = page.describe(&source, &format!("pages/{}/d", rand_suffix()));
        let renditions = reply["renditions"].as_array().unwrap_or_else(|| panic!("{name}: no renditions: {reply}"));
        let mime = |v: &Value| v["mimeCodec"].as_str().unwrap_or("").to_string();
        assert!(mime(&renditions[0]).starts_with("video/mp4; codecs=\"hvc1.1.6."), "{name}: {reply}");
        assert_eq!(renditions[1]["name"], "h264", "{name}: {reply}");
        // Version 1: the H.264 made from it, which decodes.
        let topic = format!("pages/{}/media", rand_suffix());
        page.play(&source, &topic);
        let mut watched = Watched::default();
        watched.watch(&page, &topic, Duration::from_secs(15), |w| w.fragments() > 45);
        let (init, fragments) = watched.runs.first().unwrap_or_else(|| panic!("{name}: nothing played"));
        let v1 = mqtt_video_wire::codec_string::mime_type(&fmp4::parse_init(init).expect("an init")).expect("a MIME");
        assert!(v1.contains("avc1."), "{name}: {v1}");
        assert!(fragments.len() > 45, "{name}: {} fragments", fragments.len());
        decodes(init, fragments, &format!("ingest-{name}-hevc-v1.mp4"));
        page.stop(&topic);
        eprintln!("HEVC pushed to {name}: main {}, version 1 {v1}", mime(&renditions[0]));
    }
    drop(stack.server);
}

#[test]
fn srt_push_needs_the_passphrase_and_survives_its_publisher_leaving() {
    let stack = stack();
    let page = page(&stack);
    // 20 ms of SRT receive latency (ffmpeg's default is 120 ms): loopback loses nothing.
    let srt = |passphrase: &str| format!("srt://127.0.0.1:{}?passphrase={passphrase}&latency=20000", stack.srt_port);
    let reply = page.describe("ingest://field", &format!("pages/{}/d", rand_suffix()));
    assert_eq!(reply["error"]["code"], "source_unreachable", "{reply}");

    let publisher = Publisher::start("640x360", "mpegts", &srt(KEY));
    sources_where(&stack, |s| s.iter().any(|u| u == "ingest://field"));
    let topic = format!("pages/{}/media", rand_suffix());
    page.play("ingest://field", &topic);
    let mut watched = Watched::default();
    watched.watch(&page, &topic, Duration::from_secs(10), |w| w.fragments() > 30);

    // libsrt refuses a wrong passphrase in its handshake; while a publisher is in, nobody else gets in.
    let wrong = Publisher::start("320x240", "mpegts", &srt("wrong-key-0123456789"));
    assert!(wrong.exits_with_failure(Duration::from_secs(15)), "ffmpeg kept publishing with a wrong passphrase");
    let second = Publisher::start("320x240", "mpegts", &srt(KEY));
    assert!(second.exits_with_failure(Duration::from_secs(15)), "a second publisher was let in");
    watched.watch(&page, &topic, Duration::from_secs(2), |_| false);
    assert_eq!(watched.runs.len(), 1, "one init segment: nothing from the refused publishers");
    let (init, fragments) = &watched.runs[0];
    assert_eq!(video_size(init), (640, 360));
    assert!(fragments.len() > 150, "{} fragments: the viewer stalled", fragments.len());
    decodes(init, fragments, "ingest-srt.mp4");
    report_capture_to_publish("SRT, MPEG-TS, copy", &publisher, init, fragments);

    // The publisher leaves: the viewer waits. One with the passphrase sending noise instead of MPEG-TS is
    // dropped, and the next publisher's media continues the session.
    drop(publisher);
    watched.until_state(&page, &topic, "waiting", 10);
    let noise = Command::new("ffmpeg")
        .args(["-v", "quiet", "-nostdin", "-re", "-f", "lavfi", "-i", "anoisesrc=d=4:r=48000", "-f", "u8"])
        .arg(srt(KEY))
        .status()
        .expect("ffmpeg");
    eprintln!("a publisher of noise over SRT ended with {noise}");
    stack.server.wait_for_log("the publisher's stream failed", Duration::from_secs(10));
    watched.watch(&page, &topic, Duration::from_secs(1), |_| false);
    assert_eq!(watched.runs.len(), 1, "the noise reached the viewer");
    let before = watched.fragments();
    let _publisher = Publisher::start("320x240", "mpegts", &srt(KEY));
    watched.watch(&page, &topic, Duration::from_secs(15), |w| w.fragments() > before + 45);
    assert!(watched.fragments() > before + 45, "no media after the publisher came back: {:?}", watched.states);
    let (init, fragments) = watched.runs.last().expect("init");
    assert_eq!(video_size(init), (320, 240));
    decodes(init, fragments, "ingest-srt-second.mp4");
    assert!(!watched.states.iter().any(|s| s == "ended" || s == "error"), "{:?}", watched.states);
    drop(stack.server);
}

#[test]
fn garbage_silence_and_cut_streams_leave_the_endpoints_listening() {
    let stack = stack();
    // The SRT endpoint's stream listens from the start, with its pipeline thread: count once it is up.
    stack.server.wait_for_log("push ingest listening on srt://", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1000));
    let threads_at_start = stack.server.threads();
    let noise: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    // Garbage on both endpoints, a publisher that sends nothing on both: each is disconnected in time.
    for port in [stack.tcp_port, stack.rtmp_port] {
        let mut socket = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _ = socket.write_all(&noise);
        assert!(
            support::closed_by_server(&mut socket, Duration::from_secs(10)),
            "garbage on port {port} was not cut off"
        );
        let mut silent = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let started = Instant::now();
        assert!(
            support::closed_by_server(&mut silent, Duration::from_secs(10)),
            "a silent publisher on {port} was kept"
        );
        eprintln!("silent publisher on port {port} disconnected after {:?}", started.elapsed());
    }
    stack.server.wait_for_log("refused: not an RTMP client", Duration::from_secs(5));
    stack.server.wait_for_log("refused: sent nothing within", Duration::from_secs(5));

    // A stream cut in the middle of a packet: the first half of a real MPEG-TS capture, then nothing.
    let clip = fixture(
        "ingest-cut.ts",
        &["testsrc2=size=320x240:rate=30:duration=3"],
        &["-c:v", "libx264", "-g", "30", "-f", "mpegts"],
    );
    let bytes = std::fs::read(&clip).expect("the clip");
    let mut socket = TcpStream::connect(("127.0.0.1", stack.tcp_port)).expect("connect");
    socket.write_all(&bytes[..bytes.len() / 2 + 101]).expect("half a clip");
    drop(socket);

    // Every one of those sessions is gone with its pipeline: once the streams linger out, no thread is left.
    let deadline = Instant::now() + Duration::from_secs(15);
    while stack.server.threads() > threads_at_start && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(stack.server.threads(), threads_at_start, "threads left behind by refused publishers");

    // After all that, a real publisher plays.
    let page = page(&stack);
    let _publisher = Publisher::start("320x240", "mpegts", &format!("tcp://127.0.0.1:{}", stack.tcp_port));
    sources_where(&stack, |s| s.iter().any(|u| u == "ingest://desk"));
    let topic = format!("pages/{}/media", rand_suffix());
    page.play("ingest://desk", &topic);
    let mut watched = Watched::default();
    watched.watch(&page, &topic, Duration::from_secs(10), |w| w.fragments() > 45);
    let (init, fragments) = watched.runs.last().expect("an init segment");
    assert!(fragments.len() > 45, "{} fragments", fragments.len());
    decodes(init, fragments, "ingest-after-garbage.mp4");
    drop(stack.server);
}

/// 6 s of 320x240 H.264 + AAC as the ffmpeg CLI writes FLV: the media an RTMP publisher sends.
fn flv_media() -> Vec<(u8, u32, Vec<u8>)> {
    let clip = fixture(
        "ingest-320.flv",
        &["testsrc2=size=320x240:rate=30:duration=6", "sine=frequency=440:sample_rate=48000:duration=6"],
        &["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", "30", "-pix_fmt", "yuv420p"],
    );
    flv_file_tags(&std::fs::read(clip).expect("the FLV clip"))
}

/// The endpoint's entry in the stats.
fn endpoint_stats(page: &Page, name: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let stats =
        page.stats_where(|v| v["ingest"].as_array().is_some_and(|a| a.iter().any(|e| e["name"] == name && ok(e))));
    stats["ingest"].as_array().unwrap().iter().find(|e| e["name"] == name).unwrap().clone()
}

#[test]
fn rtmp_publishers_with_a_wrong_key_in_any_framing_get_nothing_to_a_viewer() {
    // FFmpeg and the server log everything: the key must not show up anywhere.
    let stack = stack_logging("debug", "debug");
    let page = page(&stack);
    let media = flv_media();
    // A viewer from a real publisher, left waiting when it goes.
    let publisher = Publisher::start("640x360", "flv", &format!("rtmp://127.0.0.1:{}/live/{KEY}", stack.rtmp_port));
    sources_where(&stack, |s| s.iter().any(|u| u == "ingest://studio"));
    let topic = format!("pages/{}/media", rand_suffix());
    page.play("ingest://studio", &topic);
    let mut watched = Watched::default();
    watched.watch(&page, &topic, Duration::from_secs(10), |w| w.fragments() > 30);
    drop(publisher);
    watched.until_state(&page, &topic, "waiting", 10);
    let before = watched.fragments();

    let wrong = "wrong-key-0123456789";
    let mut attacks: Vec<(String, Script)> = Vec::new();
    for chunk_size in [1, 4, 9, 128] {
        attacks.push((format!("a wrong key at chunk size {chunk_size}"), Script::ffmpeg_opening(wrong, chunk_size)));
    }
    let mut s = Script::new();
    s.connect().command(0, "FCPublish", &[AmfValue::String("WRONG".into())]);
    attacks.push(("FCPublish with a wrong name and no publish".into(), s));
    let mut s = Script::new();
    s.connect().prepare(KEY);
    attacks.push(("FCPublish with the key, then media without a publish".into(), s));
    let mut s = Script::new();
    s.chunk_size(1).connect().command(0, "createStream", &[]);
    attacks.push(("media right after createStream".into(), s));
    let mut s = Script::new();
    s.chunk_size(4).connect().prepare(KEY).publish_changing_chunk_size(wrong, 1);
    attacks.push(("the key in FCPublish, a wrong one in a publish cut by a chunk size change".into(), s));
    for (what, mut script) in attacks {
        let mut c = Connection::open(stack.rtmp_port, None);
        c.send(&script.take());
        script.metadata();
        let sent = c.send_media(&mut script, &media, Duration::from_secs(1));
        assert!(c.closed_within(Duration::from_secs(3)), "{what}: the connection stayed open ({sent} tags sent)");
        assert!(!c.heard(b"NetStream.Publish.Start"), "{what}: it was told to publish");
        eprintln!("{what}: refused, {sent} media tags sent before the close");
    }
    // A publisher that never publishes but sends commands for ever: cut off at the handshake deadline.
    let mut c = Connection::open(stack.rtmp_port, None);
    let mut s = Script::new();
    s.connect();
    c.send(&s.take());
    let started = Instant::now();
    while !c.closed_within(Duration::from_millis(100)) && started.elapsed() < Duration::from_secs(5) {
        s.command(0, "_checkbw", &[]);
        c.send(&s.take());
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a publisher that never published was kept {:?}",
        started.elapsed()
    );

    watched.watch(&page, &topic, Duration::from_secs(1), |_| false);
    assert_eq!(watched.runs.len(), 1, "a new init segment reached the viewer: {:?}", watched.states);
    assert_eq!(watched.fragments(), before, "media from a refused publisher reached the viewer");
    let reply = page.describe("ingest://studio", &format!("pages/{}/d", rand_suffix()));
    assert_eq!(reply["error"]["code"], "source_unreachable", "{reply}");
    let studio = endpoint_stats(&page, "studio", |e| e["refused"].as_u64() >= Some(9));
    assert_eq!(studio["publishing"], false, "{studio}");
    stack.server.wait_for_log("refused: wrong stream key in publish", Duration::from_secs(5));
    stack.server.wait_for_log("refused: wrong stream key in FCPublish", Duration::from_secs(5));
    stack.server.wait_for_log("refused: media before a publish with the stream key", Duration::from_secs(5));

    // The right key at chunk size 4: the whole stream goes through (no cut after 64 KiB) and plays.
    let mut c = Connection::open(stack.rtmp_port, None);
    let mut script = Script::ffmpeg_opening(KEY, 4);
    c.send(&script.take());
    assert!(c.wait_for(b"NetStream.Publish.Start", Duration::from_secs(5)), "the right key was not let in");
    let sender = std::thread::spawn(move || {
        let sent = c.send_media(&mut script, &media, Duration::from_secs(6));
        (sent, c)
    });
    watched.watch(&page, &topic, Duration::from_secs(10), |w| w.runs.len() == 2 && w.runs[1].1.len() > 90);
    let (sent, _c) = sender.join().expect("the publisher thread");
    assert_eq!(watched.runs.len(), 2, "no new init segment from the right key: {:?}", watched.states);
    let (init, fragments) = &watched.runs[1];
    assert_eq!(video_size(init), (320, 240));
    assert!(fragments.len() > 90, "{} fragments from {sent} tags at chunk size 4", fragments.len());
    decodes(init, fragments, "ingest-rtmp-chunk4.mp4");
    let studio = endpoint_stats(&page, "studio", |e| e["bytes"].as_u64() > Some(100_000));
    eprintln!("right key at chunk size 4: {sent} tags, {} fragments, {} bytes", fragments.len(), studio["bytes"]);
    let log_path = stack.server.log.clone();
    drop(stack.server);
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    assert!(log.contains("publisher connected") && log.contains("DEBUG"), "the log is not at debug level?");
    assert!(!log.contains(KEY), "the stream key reached the log");
    assert!(!log.contains(wrong), "a wrong key reached the log");
}

#[test]
fn silent_trickling_and_flooding_connections_never_keep_a_publisher_out() {
    let stack = stack();
    let rtmp = format!("rtmp://127.0.0.1:{}/live/{KEY}", stack.rtmp_port);
    // Another host (127.0.0.2) opens a silent connection every 0.1 s and keeps it; a third (127.0.0.3)
    // trickles a handshake one byte every 0.1 s.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (stop, port) = (Arc::clone(&stop), stack.rtmp_port);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                held.push(Connection::open(port, Some("127.0.0.2")));
                std::thread::sleep(Duration::from_millis(100));
            }
            let closed = held.iter().filter(|c| c.closed_within(Duration::ZERO)).count();
            (held.len(), closed)
        })
    };
    let mut trickler = Connection::open(stack.rtmp_port, Some("127.0.0.3"));
    let trickle_started = Instant::now();
    let handshake = Script::new().take();
    let trickle = std::thread::spawn(move || {
        for byte in handshake {
            if !trickler.send(&[byte]) || trickler.closed_within(Duration::from_millis(100)) {
                break;
            }
        }
        (trickle_started.elapsed(), trickler.closed_within(Duration::from_millis(500)))
    });
    std::thread::sleep(Duration::from_millis(500));

    // The real publisher gets in at once, twice: the slot is free again as soon as it leaves.
    for round in 0..2 {
        let started = Instant::now();
        let publisher = Publisher::start("320x240", "flv", &rtmp);
        sources_where(&stack, |s| s.iter().any(|u| u == "ingest://studio"));
        let took = started.elapsed();
        eprintln!("round {round}: the publisher was offered after {took:?} under the flood");
        assert!(took < Duration::from_secs(5), "round {round}: the publisher waited {took:?}");
        let page = page(&stack);
        let topic = format!("pages/{}/media", rand_suffix());
        page.play("ingest://studio", &topic);
        let mut watched = Watched::default();
        watched.watch(&page, &topic, Duration::from_secs(10), |w| w.fragments() > 30);
        assert!(watched.fragments() > 30, "round {round}: {} fragments", watched.fragments());
        drop(publisher);
        sources_where(&stack, |s| !s.iter().any(|u| u == "ingest://studio"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (opened, closed) = flood.join().expect("the flood");
    let (trickled_for, trickler_closed) = trickle.join().expect("the trickler");
    eprintln!(
        "flood: {opened} silent connections, {closed} closed by the server; trickler cut off after {trickled_for:?}"
    );
    assert!(trickler_closed && trickled_for < Duration::from_secs(3), "the trickler was kept {trickled_for:?}");
    // All but the newest few (younger than the deadline) were closed.
    assert!(closed + 25 >= opened, "{closed} of {opened} silent connections closed");
    stack.server.wait_for_log("refused: sent no publish with the stream key within 2s", Duration::from_secs(5));

    // The TCP endpoint: a silent connection does not hold it either.
    let mut silent = TcpStream::connect(("127.0.0.1", stack.tcp_port)).expect("connect");
    let started = Instant::now();
    let _publisher = Publisher::start("320x240", "mpegts", &format!("tcp://127.0.0.1:{}", stack.tcp_port));
    sources_where(&stack, |s| s.iter().any(|u| u == "ingest://desk"));
    eprintln!("TCP publisher offered after {:?} beside a silent connection", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(support::closed_by_server(&mut silent, Duration::from_secs(4)), "the silent TCP connection was kept");
    drop(stack.server);
}
