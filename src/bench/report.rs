//! What a bench run found: the JSON document (`--json`) and the table people read.

use super::measure::Summary;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Version of the JSON document; bumped when a field changes meaning.
pub const REPORT_VERSION: u32 = 1;

/// The whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// Broker `host:port`.
    pub broker: String,
    /// The source URL.
    pub url: String,
    /// Viewers asked for.
    pub viewers: usize,
    /// Seconds each viewer received media, after joining.
    pub seconds: f64,
    /// What the server said the stream is (the describe reply), if any viewer got one.
    pub stream: Option<serde_json::Value>,
    /// The rendition these viewers played (`main`, or the H.264 one version 1 viewers get of an HEVC stream).
    #[serde(default)]
    pub played: Option<String>,
    /// The first viewer's play, sent before any other request for the URL.
    pub first_play: FirstPlay,
    /// Describe and play of the other viewers, while the stream runs.
    pub warm: Warm,
    /// Source-to-receipt latency of every live fragment of every viewer (ms).
    pub latency: Option<Summary>,
    /// Per-viewer bitrate received (kbit/s).
    pub bitrate_kbps: Option<Summary>,
    /// Fragments received by all viewers.
    pub fragments: u64,
    /// Timeline jumps (media missing) seen by all viewers.
    pub gaps: u64,
    /// Media missing in those gaps, summed over viewers (ms).
    pub missing_ms: f64,
    /// Fragments whose timeline went backwards.
    pub out_of_order: u64,
    /// Media seconds received per wall second by the slowest viewer, after its join burst: 1.0 keeps up
    /// with real time.
    #[serde(default)]
    pub realtime_ratio: Option<f64>,
    /// Server CPU, memory and threads while the viewers played.
    pub server: ServerFigures,
    /// The ffmpeg CLI reference, with `--compare-ffmpeg`.
    pub ffmpeg: Option<FfmpegFigures>,
    /// One entry per viewer.
    pub per_viewer: Vec<ViewerReport>,
    /// Everything that went wrong; empty in a clean run.
    pub errors: Vec<String>,
}

/// Time to media for the first viewer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FirstPlay {
    /// Whether the stream was not running before (from the server's stats, or because the bench started it).
    pub cold: Option<bool>,
    /// Play sent to init segment received (ms).
    pub init_ms: Option<f64>,
    /// Play sent to first fragment received (ms).
    pub first_fragment_ms: Option<f64>,
}

/// Request round trips of the viewers that joined a running stream (ms).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Warm {
    /// Describe sent to reply received.
    pub describe: Option<Summary>,
    /// Play sent to init segment received.
    pub init: Option<Summary>,
    /// Play sent to first fragment received.
    pub first_fragment: Option<Summary>,
}

/// Server process figures over the measuring window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerFigures {
    /// Where they come from: `/proc` (a local server) or the stats topic.
    pub from: Option<String>,
    /// Mean CPU, percent of one core.
    pub cpu_percent: Option<f64>,
    /// Resident memory at the start and the end of the window, and its peak (KiB).
    pub rss_kib_start: Option<u64>,
    /// See `rss_kib_start`.
    pub rss_kib_end: Option<u64>,
    /// See `rss_kib_start`.
    pub rss_kib_max: Option<u64>,
    /// Most threads seen.
    pub threads_max: Option<u64>,
    /// Bytes the server wrote per second (all sockets: its upload) while every viewer received, kbit/s.
    #[serde(default)]
    pub written_kbps: Option<f64>,
    /// The same over the whole run, the viewers' join bursts included (a local server only).
    #[serde(default)]
    pub written_run_kbps: Option<f64>,
}

/// The original design on the same source: the ffmpeg CLI spawned, fMP4 on a pipe.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FfmpegFigures {
    /// The command that was run.
    pub command: String,
    /// Spawn to init segment (ms).
    pub init_ms: Option<f64>,
    /// Spawn to first fragment (ms).
    pub first_fragment_ms: Option<f64>,
    /// Receipt minus the wall clock at which ffmpeg read the fragment's oldest frame (ms).
    pub latency: Option<Summary>,
    /// CPU of the ffmpeg process, percent of one core.
    pub cpu_percent: Option<f64>,
    /// Peak resident memory (KiB).
    pub rss_kib_max: Option<u64>,
    /// Fragments read.
    pub fragments: u64,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// One viewer's figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ViewerReport {
    /// 0 is the first viewer.
    pub index: usize,
    /// Describe round trip (ms); the first viewer does not describe.
    pub describe_ms: Option<f64>,
    /// Play to init segment (ms).
    pub init_ms: Option<f64>,
    /// Play to first fragment (ms).
    pub first_fragment_ms: Option<f64>,
    /// Live fragments' latency (ms).
    pub latency: Option<Summary>,
    /// Fragments received.
    pub fragments: u64,
    /// Fragments dropped because they came before any init segment.
    pub before_init: u64,
    /// Bitrate over the receiving window (kbit/s).
    pub bitrate_kbps: Option<f64>,
    /// Timeline jumps.
    pub gaps: u64,
    /// Media missing in those jumps (ms).
    pub missing_ms: f64,
    /// Timeline went backwards.
    pub out_of_order: u64,
    /// Media seconds received per wall second after the join burst.
    #[serde(default)]
    pub realtime_ratio: Option<f64>,
    /// Statuses received, in order (`playing`, `reconnecting`, ...).
    pub statuses: Vec<String>,
    /// What went wrong for this viewer.
    pub error: Option<String>,
}

fn ms(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"))
}

fn dist(s: &Option<Summary>) -> String {
    match s {
        Some(s) => format!("p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}  (n={})", s.p50, s.p95, s.p99, s.max, s.count),
        None => "-".to_string(),
    }
}

fn ratio(ours: Option<f64>, theirs: Option<f64>) -> String {
    match (ours, theirs) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".to_string(),
    }
}

/// The renditions a describe reply lists, `main` first (none for a stream without them).
pub fn renditions_of(stream: &serde_json::Value) -> Option<Vec<mqtt_video_wire::output::RenditionInfo>> {
    serde_json::from_value(stream.get("renditions")?.clone()).ok()
}

impl Report {
    /// The report as a table for people.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let stream = self.stream.as_ref();
        let field = |k: &str| {
            stream.and_then(|s| s.get(k)).filter(|v| !v.is_null()).map(|v| match v.as_str() {
                Some(text) => text.to_string(),
                None => v.to_string(),
            })
        };
        let _ = writeln!(out, "mqtt-video bench: {} via {}", self.url, self.broker);
        if stream.is_some() {
            let _ = writeln!(
                out,
                "stream: {}x{} @ {} fps, video {}, audio {}, {}",
                field("width").unwrap_or_default(),
                field("height").unwrap_or_default(),
                field("fps").unwrap_or_default(),
                field("video").unwrap_or_default(),
                field("audio").unwrap_or_else(|| "none".into()),
                field("mimeCodec").unwrap_or_default(),
            );
        }
        let renditions = stream.and_then(renditions_of);
        if let Some((main, others)) = renditions.as_ref().and_then(|r| r.split_first()) {
            for (i, line) in mqtt_video_wire::output::who_gets_what(main, None, others).iter().enumerate() {
                let _ = writeln!(out, "{}{line}", if i == 0 { "shapes: " } else { "        " });
            }
        }
        let played = self.played.as_deref().map(|p| format!(", playing {p}")).unwrap_or_default();
        let _ = writeln!(out, "{} viewer(s){played}, {:.0} s each\n", self.viewers, self.seconds);
        let cold = match self.first_play.cold {
            Some(true) => "cold",
            Some(false) => "warm: the stream was already running",
            None => "cold or warm: unknown",
        };
        let rows: Vec<(String, String)> = vec![
            (format!("first play to init segment ({cold})"), ms(self.first_play.init_ms)),
            ("first play to first fragment".into(), ms(self.first_play.first_fragment_ms)),
            ("describe round trip, warm".into(), dist(&self.warm.describe)),
            ("play to init segment, warm".into(), dist(&self.warm.init)),
            ("play to first fragment, warm".into(), dist(&self.warm.first_fragment)),
            ("latency, source to receipt".into(), dist(&self.latency)),
            ("bitrate per viewer (kbit/s)".into(), dist(&self.bitrate_kbps)),
            (
                "realtime, media s per wall s".into(),
                match self.realtime_ratio {
                    Some(r) => format!("{r:.3} (slowest of {} viewer(s); 1.0 keeps up)", self.per_viewer.len()),
                    None => "-".into(),
                },
            ),
            (
                "fragments / gaps / out of order".into(),
                format!(
                    "{} / {} ({:.0} ms missing) / {}",
                    self.fragments, self.gaps, self.missing_ms, self.out_of_order
                ),
            ),
            (
                format!("server CPU % of a core ({})", self.server.from.as_deref().unwrap_or("unknown")),
                ms(self.server.cpu_percent),
            ),
            (
                "server RSS KiB start / end / max".into(),
                format!(
                    "{} / {} / {}",
                    opt(self.server.rss_kib_start),
                    opt(self.server.rss_kib_end),
                    opt(self.server.rss_kib_max)
                ),
            ),
            ("server threads, max".into(), opt(self.server.threads_max)),
            ("server upload (kbit/s)".into(), ms(self.server.written_kbps)),
            ("server upload, whole run (kbit/s)".into(), ms(self.server.written_run_kbps)),
        ];
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &rows {
            let _ = writeln!(out, "  {k:<width$}  {v}");
        }
        if let Some(f) = &self.ffmpeg {
            let _ = writeln!(out, "\ncompared with the ffmpeg CLI on a pipe (ours / ffmpeg = ratio):");
            let _ = writeln!(out, "  {}", f.command);
            if let Some(e) = &f.error {
                let _ = writeln!(out, "  ffmpeg failed: {e}");
            }
            let p50 = |s: &Option<Summary>| s.as_ref().map(|s| s.p50);
            let p95 = |s: &Option<Summary>| s.as_ref().map(|s| s.p95);
            let lines = [
                ("time to first fragment (ms)", self.first_play.first_fragment_ms, f.first_fragment_ms),
                ("latency p50, oldest frame (ms)", p50(&self.latency), p50(&f.latency)),
                ("latency p95, oldest frame (ms)", p95(&self.latency), p95(&f.latency)),
                ("CPU % of a core", self.server.cpu_percent, f.cpu_percent),
            ];
            for (name, ours, theirs) in lines {
                let _ = writeln!(out, "  {name:<32} {:>9} / {:>9} = {}", ms(ours), ms(theirs), ratio(ours, theirs));
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(out, "\nerrors:");
            for e in &self.errors {
                let _ = writeln!(out, "  {e}");
            }
        }
        out
    }
}

fn opt(x: Option<u64>) -> String {
    x.map_or_else(|| "-".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            version: REPORT_VERSION,
            broker: "127.0.0.1:1883".into(),
            url: "builtin://testsrc".into(),
            viewers: 2,
            seconds: 5.0,
            stream: Some(serde_json::json!({"width": 640, "height": 360, "fps": 30.0, "video": "transcode",
                "audio": "transcode", "mimeCodec": "video/mp4; codecs=\"avc1.64001E, mp4a.40.2\""})),
            played: Some("main".into()),
            first_play: FirstPlay { cold: Some(true), init_ms: Some(210.0), first_fragment_ms: Some(230.0) },
            warm: Warm::default(),
            latency: Summary::of(&[30.0, 35.0, 40.0]),
            bitrate_kbps: None,
            fragments: 300,
            gaps: 0,
            missing_ms: 0.0,
            out_of_order: 0,
            realtime_ratio: Some(0.987),
            server: ServerFigures { cpu_percent: Some(10.0), written_kbps: Some(1234.5), ..Default::default() },
            ffmpeg: Some(FfmpegFigures {
                first_fragment_ms: Some(1150.0),
                cpu_percent: Some(12.5),
                ..Default::default()
            }),
            per_viewer: vec![ViewerReport::default()],
            errors: vec!["viewer 1: no init segment".into()],
        }
    }

    #[test]
    fn table_shows_figures_ratios_and_errors() {
        let t = report().to_table();
        assert!(t.contains("640x360 @ 30.0 fps, video transcode"), "{t}");
        assert!(t.contains("avc1.64001E, mp4a.40.2"), "{t}");
        assert!(t.contains("first play to init segment (cold)  210.0"), "{t}");
        assert!(t.contains("p50 35.0  p95 40.0"), "{t}");
        assert!(t.contains("230.0 /    1150.0 = 0.20"), "{t}");
        assert!(t.contains("10.0 /      12.5 = 0.80"), "{t}");
        assert!(t.contains("viewer 1: no init segment"), "{t}");
        assert!(t.contains("server upload (kbit/s)             1234.5"), "{t}");
        assert!(t.contains("realtime, media s per wall s       0.987 (slowest of 1 viewer(s)"), "{t}");
        assert!(t.contains("2 viewer(s), playing main, 5 s each"), "{t}");
        assert!(!t.contains("shapes:"), "a stream without renditions has one shape: {t}");
    }

    #[test]
    fn an_hevc_stream_s_shapes_and_who_gets_them() {
        let mut r = report();
        let rendition = |name: &str, codec: &str| {
            serde_json::json!({"name": name, "mimeCodec": format!("video/mp4; codecs=\"{codec}, mp4a.40.2\""),
                "width": 1920, "height": 1080, "fps": 30.0, "bitrate_kbps": null})
        };
        r.stream = Some(serde_json::json!({"width": 1920, "height": 1080, "fps": 30.0, "video": "transcode",
            "renditions": [rendition("main", "hvc1.1.6.L120.90"), rendition("h264", "avc1.640028")]}));
        r.played = Some("h264 (version 1)".into());
        let t = r.to_table();
        assert!(t.contains("shapes: main (hvc1): browsers that decode it"), "{t}");
        assert!(t.contains("        h264 (1920x1080, video/mp4; codecs=\"avc1.640028, mp4a.40.2\", video converted while watched): browsers that do not decode main, and version 1 clients"), "{t}");
        assert!(t.contains("playing h264 (version 1)"), "{t}");
    }

    #[test]
    fn json_round_trips() {
        let r = report();
        let text = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back.latency, r.latency);
        assert_eq!(back.first_play.first_fragment_ms, Some(230.0));
    }
}
