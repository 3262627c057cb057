//! Shared test helpers: fixtures made with the ffmpeg CLI at test time, the GStreamer RTSP test server,
//! pipeline runs collected into memory, and independent checks of the output with ffmpeg/ffprobe.
#![allow(dead_code)]

pub mod broker;
pub mod page;
pub mod rabbitmq;
pub mod rtmp;
pub mod throttle;
pub mod tone;
pub mod udp;
pub mod udp_camera;

use mqtt_video::media::config::{Backpressure, Pacing};
use mqtt_video::media::{Fragment, InitSegment, MediaError, Pipeline, PipelineConfig, PipelineEvent, SourceInfo};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A folder for this test process's fixtures and outputs.
pub fn work_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("mqtt-video-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the test folder");
        mqtt_video::media::set_ffmpeg_log_level("quiet").expect("log level");
        dir
    })
}

/// Runs a command and panics with its stderr if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes (once) a small fixture with the ffmpeg CLI: `args` go between the inputs and the output.
pub fn fixture(name: &str, inputs: &[&str], args: &[&str]) -> PathBuf {
    let path = work_dir().join(name);
    if !path.exists() {
        let tmp =
            work_dir().join(format!("tmp-{}-{name}", std::thread::current().name().unwrap_or("t").replace("::", "-")));
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-v", "error", "-y"]);
        for input in inputs {
            cmd.args(["-f", "lavfi", "-i", input]);
        }
        cmd.args(args).arg(&tmp);
        run(&mut cmd);
        std::fs::rename(&tmp, &path).expect("moving the fixture in place");
    }
    path
}

/// 4 s of 320x240@25 test video.
pub const VIDEO: &str = "testsrc2=size=320x240:rate=25:duration=4";
/// 4 s of a 440 Hz tone at 44.1 kHz.
pub const TONE: &str = "sine=frequency=440:sample_rate=44100:duration=4";

/// H.264 Main + AAC in MP4: browser-ready, copied in auto mode.
pub fn h264_aac_mp4() -> PathBuf {
    fixture(
        "h264_aac.mp4",
        &[VIDEO, TONE],
        &["-c:v", "libx264", "-profile:v", "main", "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest"],
    )
}

/// MPEG-2 video + MP2 audio in MPEG-TS: both transcoded.
pub fn mpeg2_mp2_ts() -> PathBuf {
    fixture("mpeg2_mp2.ts", &[VIDEO, TONE], &["-c:v", "mpeg2video", "-g", "12", "-c:a", "mp2", "-shortest"])
}

/// MJPEG, no audio, in AVI.
pub fn mjpeg_avi() -> PathBuf {
    fixture("mjpeg.avi", &[VIDEO], &["-c:v", "mjpeg"])
}

/// H.264 High with B-frames + G.711 µ-law in Matroska: video copied, audio transcoded.
pub fn h264_g711_mkv() -> PathBuf {
    fixture(
        "h264_g711.mkv",
        &[VIDEO, "sine=sample_rate=8000:duration=4"],
        &["-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "pcm_mulaw", "-ac", "1", "-shortest"],
    )
}

/// H.264 video only.
pub fn video_only_mp4() -> PathBuf {
    fixture("video_only.mp4", &[VIDEO], &["-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p"])
}

/// A pipeline config that reads as fast as possible and never drops (for deterministic checks).
pub fn fast_config() -> PipelineConfig {
    let mut c = PipelineConfig { backpressure: Backpressure::Block, ..Default::default() };
    c.source.pacing = Pacing::Unpaced;
    c
}

/// Everything one pipeline run produced.
pub struct Run {
    pub source: Option<SourceInfo>,
    pub init: Option<InitSegment>,
    pub fragments: Vec<Fragment>,
    pub end: Option<Result<(), MediaError>>,
    pub time_to_first_fragment: Option<Duration>,
}

impl Run {
    /// The init segment followed by every fragment: a playable MP4 file.
    pub fn concatenated(&self) -> Vec<u8> {
        let mut out = self.init.as_ref().expect("an init segment").bytes.to_vec();
        for f in &self.fragments {
            out.extend_from_slice(&f.bytes);
        }
        out
    }

    /// The media time covered, in seconds.
    pub fn media_secs(&self) -> f64 {
        self.fragments.iter().map(|f| f.media_time_us + f.duration_us).max().unwrap_or(0) as f64 / 1e6
    }

    /// The error the run ended with.
    pub fn error(&self) -> MediaError {
        match &self.end {
            Some(Err(e)) => e.clone(),
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

/// Runs a pipeline until it ends, `max_media_secs` of media arrived, or `deadline` passed.
pub fn collect(url: &str, config: PipelineConfig, max_media_secs: f64, deadline: Duration) -> Run {
    collect_with_stats(url, config, max_media_secs, deadline).0
}

/// [`collect`], with the pipeline's counters at its end (e.g. the damaged packets it kept back).
pub fn collect_with_stats(
    url: &str,
    config: PipelineConfig,
    max_media_secs: f64,
    deadline: Duration,
) -> (Run, mqtt_video::media::events::StatsSnapshot) {
    let started = Instant::now();
    let mut pipeline = Pipeline::start(url, config).expect("pipeline starts");
    let stats = std::sync::Arc::clone(pipeline.stats());
    let mut run = Run { source: None, init: None, fragments: Vec::new(), end: None, time_to_first_fragment: None };
    while let Some(left) = deadline.checked_sub(started.elapsed()) {
        let Ok(event) = pipeline.events().recv_timeout(left) else { break };
        match event {
            PipelineEvent::Source(s) => run.source = Some(s),
            PipelineEvent::Init(i) => run.init = Some(i),
            PipelineEvent::Fragment(f) => {
                run.time_to_first_fragment.get_or_insert_with(|| started.elapsed());
                run.fragments.push(f);
                if run.media_secs() >= max_media_secs {
                    break;
                }
            }
            PipelineEvent::End(r) => {
                run.end = Some(r);
                break;
            }
            PipelineEvent::Rendition(..) => {}
        }
    }
    pipeline.join();
    (run, stats.snapshot())
}

/// Writes the run's output to a file and asserts that ffmpeg decodes it with no error at all.
pub fn assert_decodes(run: &Run, name: &str) -> PathBuf {
    assert_bytes_decode(&run.concatenated(), name)
}

/// Writes fMP4 bytes (init segment and fragments) to a file and asserts that ffmpeg decodes them cleanly.
pub fn assert_bytes_decode(bytes: &[u8], name: &str) -> PathBuf {
    let path = work_dir().join(name);
    std::fs::write(&path, bytes).expect("writing the output");
    // passthrough and the file's own time base: the null output keeps the file's timestamps. A transcode that
    // sheds frames writes a variable frame rate (valid MP4), and the CLI's default constant-rate output put two
    // frames 27 ms apart into one tick of 1/25 s and failed a run in about ten (non monotonically increasing
    // dts); a rendition of an open-GOP source steps its decode times by a tick once (`decode_time`).
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-xerror", "-i"])
        .arg(&path)
        .args(["-fps_mode", "passthrough", "-enc_time_base", "-1", "-f", "null", "-"])
        .output()
        .expect("running ffmpeg");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{name} does not decode cleanly: {stderr}");
    path
}

/// One stream as ffprobe sees it.
#[derive(Debug, serde::Deserialize)]
pub struct ProbedStream {
    pub codec_name: String,
    pub codec_type: String,
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub level: Option<i64>,
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    #[serde(default)]
    pub nb_read_packets: Option<String>,
}

/// ffprobe's view of a file's streams (with packet counts).
pub fn probe_streams(path: &Path) -> Vec<ProbedStream> {
    #[derive(serde::Deserialize)]
    struct Out {
        streams: Vec<ProbedStream>,
    }
    let json =
        run(Command::new("ffprobe").args(["-v", "error", "-count_packets", "-show_streams", "-of", "json"]).arg(path));
    serde_json::from_str::<Out>(&json).expect("ffprobe JSON").streams
}

/// Video packet flags in file order: true for keyframes.
pub fn video_keyframes(path: &Path) -> Vec<bool> {
    run(Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v", "-show_entries", "packet=flags", "-of", "csv=p=0"])
        .arg(path))
    .lines()
    .map(|l| l.starts_with('K'))
    .collect()
}

/// The GStreamer RTSP test server (tests/support/rtsp_server.py), stopped on drop.
pub struct RtspServer {
    child: Child,
    pub url: String,
}

impl RtspServer {
    /// Starts a server on a free port and waits for its READY line.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_on(0, extra)
    }

    /// Starts a server on `port` (0: any free port) and waits for its READY line.
    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/rtsp_server.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .args(["--port", &port.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the RTSP test server (is python3-gi with gst-rtsp-server installed?)");
        let stdout = child.stdout.take().expect("server stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("reading READY");
        let url = line
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("unexpected server output: {line}"))
            .to_string();
        Self { child, url }
    }
}

impl RtspServer {
    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .expect("port in URL")
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

/// Resident memory of this process in KiB (the figure the server's stats report).
pub fn rss_kib() -> u64 {
    mqtt_video::server::stats::memory_and_threads().0.expect("VmRSS in /proc/self/status")
}

/// CPU seconds the calling thread has used (user + system, 10 ms resolution).
pub fn thread_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat");
    mqtt_video::server::stats::parse_cpu_ticks(&stat).expect("utime and stime") as f64 / 100.0
}

/// Threads of this process.
pub fn thread_count() -> u64 {
    mqtt_video::server::stats::memory_and_threads().1.expect("Threads in /proc/self/status")
}

/// The middle value (upper middle for an even count); panics on an empty list.
pub fn median(v: Vec<f64>) -> f64 {
    percentile(v, 0.5)
}

/// The value at fraction `p` (0..=1) of the sorted list; panics on an empty list.
pub fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// A TCP connection to 127.0.0.1:`port` from the loopback address `ip` (127.0.0.2, ...): another host, as
/// far as the server can tell.
pub fn connect_from(ip: &str, port: u16) -> std::net::TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(format!("{ip}:0").parse().expect("address")).expect("bind");
        let stream = socket.connect(([127, 0, 0, 1], port).into()).await.expect("connect");
        stream.into_std().and_then(|s| s.set_nonblocking(false).map(|()| s)).expect("a blocking socket")
    })
}

/// Whether the server closes `socket` within `limit` (reading until EOF or a reset).
pub fn closed_by_server(socket: &mut std::net::TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match std::io::Read::read(socket, &mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}
