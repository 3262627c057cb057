//! Opening a source: URL classification, the protocol whitelist, options, and the stall watchdog. Then
//! [`ready`] reads on until the source's parameters are known; an RTSP camera is opened over the transports
//! [`rtsp_transport`] picks, and over TCP through the marker relay of [`rtsp_relay`] when the settings ask for it.

pub mod ready;
pub mod rtsp_relay;
pub mod rtsp_transport;

use crate::media::config::{RtspFrameEnd, RtspTransport, SourceConfig};
use crate::media::error::MediaError;
use crate::media::ffi;
use ffmpeg::format::context::Input;
use ffmpeg::Dictionary;
use ffmpeg_next as ffmpeg;
use rtsp_relay::RtspRelay;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The built-in test sources: fixed graphs, never a client-supplied one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestPattern {
    /// 640x360 at 30 fps with a 1 kHz beep each second.
    Default,
    /// 1280x720 at 30 fps with the beep.
    Hd,
    /// 640x360 at 30 fps, no audio.
    Silent,
}

impl TestPattern {
    /// Every built-in source with its URL, for listings.
    pub const ALL: [(&'static str, TestPattern); 3] = [
        ("builtin://testsrc", TestPattern::Default),
        ("builtin://testsrc-720p", TestPattern::Hd),
        ("builtin://testsrc-silent", TestPattern::Silent),
    ];

    /// The built-in source a `builtin://` URL names, if any.
    pub fn from_url(url: &str) -> Option<TestPattern> {
        TestPattern::ALL.iter().find(|(name, _)| name.eq_ignore_ascii_case(url)).map(|&(_, p)| p)
    }

    /// The lavfi graph; `clock` adds a wall-clock overlay (needs a font through fontconfig).
    pub fn graph(self, clock: bool) -> String {
        let size = match self {
            TestPattern::Hd => "1280x720",
            _ => "640x360",
        };
        let overlay = if clock {
            ",drawtext=text='%{localtime\\:%X}':fontsize=h/12:fontcolor=white:box=1:boxcolor=black@0.6:x=(w-tw)/2:y=h-th-h/20"
        } else {
            ""
        };
        let video = format!("testsrc2=size={size}:rate=30{overlay}[out0]");
        match self {
            TestPattern::Silent => video,
            _ => format!("{video};sine=frequency=1000:beep_factor=2:sample_rate=48000[out1]"),
        }
    }
}

/// What kind of input a URL names, which decides the allowed protocols and the options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// `rtsp://`, `rtsps://`
    Rtsp,
    /// `http://`, `https://` (progressive files, MPEG-TS, HLS playlists)
    Http,
    /// `rtmp://`, `rtmps://`
    Rtmp,
    /// `srt://`
    Srt,
    /// `udp://`, `rtp://`
    Udp,
    /// `tcp://`: a raw byte stream (MPEG-TS, Matroska, fragmented MP4, FLV)
    Tcp,
    /// `unix:PATH`: a pushed stream the server relays to its pipeline over a private Unix socket (never a URL
    /// a page or a configuration can name: see [`classify_for`])
    Relay,
    /// `file://` or a plain path
    File,
    /// `builtin://NAME`
    Builtin(TestPattern),
}

impl SourceKind {
    /// Network protocols that deliver live media at their own pace.
    pub fn is_live_protocol(self) -> bool {
        matches!(self, Self::Rtsp | Self::Rtmp | Self::Srt | Self::Udp | Self::Tcp | Self::Relay)
    }

    /// The demuxers this kind may use. Probing would otherwise also pick `concat` (a list of other files),
    /// `image2` (file patterns) or `tty` (any text file shown as video).
    pub fn format_whitelist(self) -> &'static str {
        const CONTAINERS: &str =
            "mov,mp4,matroska,webm,mpegts,flv,live_flv,avi,hls,h264,hevc,mpjpeg,mjpeg,aac,mp3,wav,ogg,mpeg,asf,nut,ivf";
        match self {
            Self::Rtsp => "rtsp",
            Self::Rtmp => "flv,live_flv",
            Self::Srt | Self::Udp => "mpegts,rtp,h264,hevc",
            Self::Http | Self::File | Self::Tcp | Self::Relay => CONTAINERS,
            Self::Builtin(_) => "lavfi",
        }
    }

    /// The FFmpeg protocols this kind may use, including the ones its demuxer opens itself (HLS segments, RTP).
    pub fn protocol_whitelist(self) -> &'static str {
        match self {
            Self::Rtsp => "rtsp,rtsps,rtp,srtp,udp,tcp,tls",
            Self::Http => "http,https,tcp,tls,crypto",
            Self::Rtmp => "rtmp,rtmps,tcp,tls",
            Self::Srt => "srt",
            Self::Udp => "udp,rtp",
            Self::Tcp => "tcp",
            Self::Relay => "unix",
            Self::File => "file,crypto",
            Self::Builtin(_) => "",
        }
    }
}

/// Classifies a URL, refusing anything but the protocols we support. Pure: touches no network or file.
pub fn classify(url: &str) -> Result<SourceKind, MediaError> {
    let url = url.trim();
    if url.is_empty() {
        return Err(MediaError::InvalidUrl("empty URL".into()));
    }
    if url.chars().any(|c| c.is_control()) {
        return Err(MediaError::InvalidUrl("control characters in URL".into()));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        // A colon before any slash is a protocol prefix (`concat:`, `subfile:`, `data:`) or a filter graph.
        if let Some((prefix, _)) = url.split_once(':') {
            if !prefix.contains('/') {
                return Err(MediaError::ForbiddenProtocol(prefix.to_ascii_lowercase()));
            }
        }
        return Ok(SourceKind::File);
    };
    let scheme = scheme.to_ascii_lowercase();
    if rest.is_empty() {
        return Err(MediaError::InvalidUrl(format!("nothing after {scheme}://")));
    }
    match scheme.as_str() {
        "rtsp" | "rtsps" => Ok(SourceKind::Rtsp),
        "http" | "https" => Ok(SourceKind::Http),
        "rtmp" | "rtmps" => Ok(SourceKind::Rtmp),
        "srt" => Ok(SourceKind::Srt),
        "udp" | "rtp" => Ok(SourceKind::Udp),
        "tcp" => Ok(SourceKind::Tcp),
        "file" => Ok(SourceKind::File),
        "builtin" => TestPattern::from_url(url).map(SourceKind::Builtin).ok_or_else(|| {
            let names: Vec<&str> = TestPattern::ALL.iter().map(|(n, _)| *n).collect();
            MediaError::InvalidUrl(format!("unknown built-in source '{url}' (known: {})", names.join(", ")))
        }),
        other => Err(MediaError::ForbiddenProtocol(other.to_string())),
    }
}

/// Classifies what a pipeline with these settings opens: a listening pipeline of the server's push ingest
/// may also read the relay's `unix:` socket; to everyone else `unix:` is as forbidden as `file:`.
pub fn classify_for(url: &str, config: &SourceConfig) -> Result<SourceKind, MediaError> {
    match url.strip_prefix("unix:") {
        Some(path) if config.listen && path.starts_with('/') => Ok(SourceKind::Relay),
        _ => classify(url),
    }
}

/// Aborts blocking FFmpeg I/O when the source goes quiet for too long or a stop is requested.
#[derive(Debug)]
pub struct Watchdog {
    epoch: Instant,
    last_activity_ms: AtomicU64,
    limit_ms: AtomicU64,
    fired: AtomicBool,
    stop: Arc<AtomicBool>,
}

impl Watchdog {
    /// A watchdog allowing `limit` of silence, also tripped by `stop`.
    pub fn new(limit: Duration, stop: Arc<AtomicBool>) -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            limit_ms: AtomicU64::new(limit.as_millis() as u64),
            fired: AtomicBool::new(false),
            stop,
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Records that the source delivered something.
    pub fn touch(&self) {
        self.last_activity_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Changes the allowed silence (connecting allows more than streaming, or less).
    pub fn set_limit(&self, limit: Duration) {
        self.limit_ms.store(limit.as_millis() as u64, Ordering::Relaxed);
        self.touch();
    }

    /// Whether FFmpeg should abort now; called by FFmpeg from blocking I/O.
    pub fn should_interrupt(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return true;
        }
        let silent = self.now_ms().saturating_sub(self.last_activity_ms.load(Ordering::Relaxed));
        if silent > self.limit_ms.load(Ordering::Relaxed) {
            self.fired.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Whether the silence limit (not a stop) caused an abort.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Relaxed)
    }

    /// Whether a stop was requested.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Turns an FFmpeg error from reading the source into a typed error, using what the watchdog saw.
    pub fn classify_error(&self, e: ffmpeg::Error, during: &str) -> MediaError {
        if self.stopping() {
            return MediaError::Stopped;
        }
        if self.fired() || e == ffmpeg::Error::Exit {
            let limit = self.limit_ms.load(Ordering::Relaxed);
            return MediaError::Timeout(format!("no data for {limit} ms while {during}"));
        }
        ffmpeg_error(e, during)
    }
}

/// Maps an FFmpeg error to what it means for the person who asked for the stream.
pub fn ffmpeg_error(e: ffmpeg::Error, during: &str) -> MediaError {
    use ffmpeg::error::{EACCES, ECONNREFUSED, ECONNRESET, EHOSTUNREACH, EINVAL, EIO, ENETUNREACH, ENOENT, ETIMEDOUT};
    use ffmpeg::Error as E;
    match e {
        E::Eof => MediaError::Ended,
        E::Exit => MediaError::Timeout(format!("aborted while {during}")),
        E::InvalidData => MediaError::Unsupported(format!("not a recognised media stream ({during})")),
        // What avformat_open_input answers for a probed format that is not on the whitelist.
        E::Other { errno: EINVAL } => MediaError::Unsupported(format!("not a supported media format ({during})")),
        E::DemuxerNotFound | E::DecoderNotFound | E::StreamNotFound => {
            MediaError::Unsupported(format!("{e} ({during})"))
        }
        // The URL's protocol passed our classification, so FFmpeg itself lacks it (e.g. no TLS build).
        E::ProtocolNotFound => {
            MediaError::Unsupported(format!("this FFmpeg build cannot open that protocol ({during})"))
        }
        E::HttpBadRequest
        | E::HttpUnauthorized
        | E::HttpForbidden
        | E::HttpNotFound
        | E::HttpOther4xx
        | E::HttpServerError => MediaError::SourceUnreachable(format!("{e} ({during})")),
        E::Other { errno: ETIMEDOUT } => MediaError::Timeout(format!("connection timed out while {during}")),
        E::Other { errno: ECONNREFUSED } => MediaError::SourceUnreachable(format!("connection refused ({during})")),
        E::Other { errno: ENOENT } => MediaError::SourceUnreachable(format!("no such file ({during})")),
        E::Other { errno: EACCES } => MediaError::SourceUnreachable(format!("permission denied ({during})")),
        E::Other { errno: ENETUNREACH | EHOSTUNREACH } => {
            MediaError::SourceUnreachable(format!("host unreachable ({during})"))
        }
        E::Other { errno: ECONNRESET | EIO } => MediaError::SourceUnreachable(format!("{e} ({during})")),
        other => MediaError::SourceUnreachable(format!("{other} ({during})")),
    }
}

/// An opened, probed source.
pub struct Source {
    /// The demuxer.
    pub input: Input,
    /// What the URL named.
    pub kind: SourceKind,
    /// The watchdog FFmpeg polls while reading.
    pub watchdog: Arc<Watchdog>,
    /// Whether the input's duration is known (a file) rather than open-ended.
    pub has_duration: bool,
    /// The relay that ends an RTSP camera's frames on their RTP marker, when the input reads through one.
    pub relay: Option<RtspRelay>,
}

/// Opens `url` within the connect timeout; `stop` aborts at once.
pub fn open(url: &str, config: &SourceConfig, stop: Arc<AtomicBool>) -> Result<Source, MediaError> {
    let kind = classify_for(url, config)?;
    // An SRT listener waits for its publisher as long as it takes (libsrt's own I/O timeout covers a
    // publisher that then sends nothing); everything else must open within the connect timeout.
    let open_limit = if config.listen && kind == SourceKind::Srt { SRT_LISTEN_LIMIT } else { config.connect_timeout() };
    let watchdog = Watchdog::new(open_limit, stop);
    watchdog.touch();
    let mut relay = None;
    let input = match kind {
        SourceKind::Builtin(pattern) => open_builtin(pattern, &watchdog)?,
        SourceKind::Rtsp => open_rtsp(url, config, &watchdog, &mut relay)?,
        _ => {
            let target = match kind {
                SourceKind::File => url.strip_prefix("file://").unwrap_or(url),
                _ => url,
            };
            open_with(target, options(kind, config), &watchdog)
                .map_err(|e| watchdog.classify_error(e, "opening the source"))?
        }
    };
    watchdog.set_limit(config.stall_timeout());
    let has_duration = input.duration() > 0;
    Ok(Source { input, kind, watchdog, has_duration, relay })
}

fn open_with(target: &str, options: Dictionary<'static>, watchdog: &Arc<Watchdog>) -> Result<Input, ffmpeg::Error> {
    let wd = Arc::clone(watchdog);
    ffi::open_input(target, None, options, move || wd.should_interrupt())
}

/// RTSP over each transport the setting allows, in order, until one opens (see `rtsp_transport.rs`); over TCP,
/// through the marker relay when the setting asks for it, which `relay` then holds.
fn open_rtsp(
    url: &str,
    config: &SourceConfig,
    watchdog: &Arc<Watchdog>,
    relay: &mut Option<RtspRelay>,
) -> Result<Input, MediaError> {
    let mut failures = Vec::new();
    for &transport in rtsp_transport::attempts(config.rtsp_transport) {
        watchdog.touch();
        let mut d = options(SourceKind::Rtsp, config);
        d.set("rtsp_transport", transport.ffmpeg_name());
        if transport == RtspTransport::Tcp {
            // Packets over TCP arrive in order; a reorder queue would only hold frames back.
            d.set("reorder_queue_size", "0");
        }
        let through = match rtsp_relay::relayed(url) {
            Some(target) if transport == RtspTransport::Tcp && config.rtsp_frame_end == RtspFrameEnd::Marker => {
                match rtsp_relay::start(&target, config.connect_timeout()) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        failures.push((transport, false, watchdog.classify_error(e, "opening the source")));
                        break;
                    }
                }
            }
            _ => None,
        };
        let target = through.as_ref().map_or(url, |r| r.url());
        match open_with(target, d, watchdog) {
            Ok(input) => {
                *relay = through;
                return Ok(input);
            }
            Err(e) => {
                let refused = rtsp_transport::refused(&e);
                failures.push((transport, refused, watchdog.classify_error(e, "opening the source")));
                if !refused {
                    break;
                }
                tracing::info!(transport = transport.ffmpeg_name(), error = %e, "the camera refused the RTSP transport");
            }
        }
    }
    Err(rtsp_transport::explain(config.rtsp_transport, failures))
}

fn open_builtin(pattern: TestPattern, watchdog: &Arc<Watchdog>) -> Result<Input, MediaError> {
    ffmpeg::device::register_all();
    let attempt = |clock: bool| {
        let wd = Arc::clone(watchdog);
        ffi::open_input(&pattern.graph(clock), Some("lavfi"), Dictionary::new(), move || wd.should_interrupt())
    };
    // The clock overlay needs drawtext and a font; without them the pattern still has its own running time.
    attempt(true)
        .or_else(|e| {
            tracing::debug!(error = %e, "test pattern without wall-clock overlay");
            attempt(false)
        })
        .map_err(|e| MediaError::Processing(format!("built-in test source: {e}")))
}

/// How long an SRT listener may wait for a publisher: for ever, in practice; a stop still ends it at once.
const SRT_LISTEN_LIMIT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The receive latency an SRT listener asks for, in microseconds.
const SRT_LISTEN_LATENCY_US: u64 = 20_000;

/// Media time probed on a pushed source at least, in milliseconds.
const LISTEN_ANALYZE_MS: u64 = 1500;

fn options(kind: SourceKind, config: &SourceConfig) -> Dictionary<'static> {
    let mut d = Dictionary::new();
    d.set("protocol_whitelist", kind.protocol_whitelist());
    d.set("format_whitelist", kind.format_whitelist());
    if kind.is_live_protocol() {
        d.set("probesize", &config.probe_size.max(32).to_string());
        // 0 would mean FFmpeg's default of 5 s, the opposite of what a small value asks for.
        let mut analyze_ms = u64::from(config.analyze_duration_ms.max(1));
        if config.listen {
            // A pushed MPEG-TS interleaves audio up to 0.7 s late (ffmpeg's default muxdelay): a short probe
            // would miss the audio. Only the publisher's start waits for it; viewers join the running stream.
            analyze_ms = analyze_ms.max(LISTEN_ANALYZE_MS);
        }
        d.set("analyzeduration", &(analyze_ms * 1000).to_string());
    }
    let timeout_us = (config.connect_timeout_ms * 1000).to_string();
    if config.listen && kind != SourceKind::Srt {
        // Wait for the relayed publisher (the watchdog still ends the wait on stop or after the connect timeout).
        d.set("listen", "1");
    }
    match kind {
        // The transport is set per attempt (`open_rtsp`).
        SourceKind::Rtsp => {
            d.set("timeout", &timeout_us);
        }
        SourceKind::Http | SourceKind::Rtmp => {
            d.set("rw_timeout", &timeout_us);
        }
        SourceKind::Tcp => {
            d.set("timeout", &timeout_us);
        }
        // The unix protocol's `timeout` is in milliseconds and only bounds the wait for the relay, which the
        // watchdog bounds already.
        SourceKind::Relay => {}
        SourceKind::Srt => {
            if config.listen {
                d.set("mode", "listener");
                // SRT uses the larger of both sides' receive latency: ask for little and let the publisher
                // choose (ffmpeg and OBS default to 120 ms, right for lossy links, too much on a LAN).
                d.set("latency", &SRT_LISTEN_LATENCY_US.to_string());
                // Once a publisher is in: silence for this long ends it, and the endpoint listens again.
                d.set("timeout", &timeout_us);
            }
            if let Some(passphrase) = &config.passphrase {
                d.set("passphrase", &passphrase.0);
            }
        }
        SourceKind::Udp | SourceKind::File | SourceKind::Builtin(_) => {}
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_supported_urls() {
        assert_eq!(classify("rtsp://cam/stream").unwrap(), SourceKind::Rtsp);
        assert_eq!(classify("RTSPS://cam/stream").unwrap(), SourceKind::Rtsp);
        assert_eq!(classify("https://x/y.m3u8").unwrap(), SourceKind::Http);
        assert_eq!(classify("/data/clip.mp4").unwrap(), SourceKind::File);
        assert_eq!(classify("clips/a:b.mp4").unwrap(), SourceKind::File);
        assert_eq!(classify("file:///data/clip.mp4").unwrap(), SourceKind::File);
        assert_eq!(classify("builtin://testsrc").unwrap(), SourceKind::Builtin(TestPattern::Default));
        assert_eq!(classify("srt://host:9000").unwrap(), SourceKind::Srt);
        assert_eq!(classify("tcp://127.0.0.1:9000").unwrap(), SourceKind::Tcp);
    }

    #[test]
    fn only_a_listening_pipeline_reads_the_relay_socket() {
        let listening = SourceConfig { listen: true, ..Default::default() };
        assert_eq!(classify_for("unix:/run/mqtt-video/a.sock", &listening).unwrap(), SourceKind::Relay);
        for url in ["unix:/run/mqtt-video/a.sock", "unix:relative.sock"] {
            assert!(matches!(classify_for(url, &SourceConfig::default()), Err(MediaError::ForbiddenProtocol(_))));
        }
        assert!(matches!(classify_for("unix:relative.sock", &listening), Err(MediaError::ForbiddenProtocol(_))));
    }

    #[test]
    fn refuses_dangerous_or_unknown_protocols() {
        for url in [
            "concat:/etc/passwd|x",
            "subfile:,start,0,end,9,:/etc/passwd",
            "data:video/mp4;base64,AA",
            "pipe:0",
            "gopher://x/y",
            "lavfi:testsrc",
        ] {
            assert!(matches!(classify(url), Err(MediaError::ForbiddenProtocol(_))), "{url}");
        }
        assert!(matches!(classify(""), Err(MediaError::InvalidUrl(_))));
        assert!(matches!(classify("rtsp://"), Err(MediaError::InvalidUrl(_))));
        assert!(matches!(classify("builtin://testsrc=size=8000x8000"), Err(MediaError::InvalidUrl(_))));
        assert!(matches!(classify("rtsp://a\nb"), Err(MediaError::InvalidUrl(_))));
    }

    #[test]
    fn whitelists_never_include_local_files_for_network_sources() {
        for kind in
            [SourceKind::Rtsp, SourceKind::Http, SourceKind::Rtmp, SourceKind::Srt, SourceKind::Udp, SourceKind::Tcp]
        {
            assert!(!kind.protocol_whitelist().split(',').any(|p| p == "file"), "{kind:?}");
        }
    }

    #[test]
    fn watchdog_fires_after_silence_and_on_stop() {
        let stop = Arc::new(AtomicBool::new(false));
        let wd = Watchdog::new(Duration::from_millis(20), Arc::clone(&stop));
        wd.touch();
        assert!(!wd.should_interrupt());
        std::thread::sleep(Duration::from_millis(40));
        assert!(wd.should_interrupt());
        assert!(wd.fired());
        wd.set_limit(Duration::from_secs(60));
        assert!(!wd.should_interrupt());
        stop.store(true, Ordering::Relaxed);
        assert!(wd.should_interrupt());
        assert_eq!(wd.classify_error(ffmpeg::Error::Exit, "reading"), MediaError::Stopped);
    }
}
