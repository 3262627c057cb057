//! `GET /metrics` on the gateway: the server's figures in the Prometheus text format (0.0.4), encoded by
//! prometheus-client from what the hub, the broker session and /proc hold at scrape time. Sources are labelled
//! by their `[[sources]]` or `[[ingest]]` name, other URLs with the password hidden.

use super::health::Health;
use super::stream::{Stream, StreamStats};
use super::{lock, stats, Hub, LateHub};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use mqtt_video_wire::policy::redact;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where Prometheus scrapes.
pub const METRICS_PATH: &str = "/metrics";

/// The route, answering from `hub` once the server has one.
pub fn router(hub: LateHub, health: Arc<Health>) -> Router {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Figures { hub, health }));
    let registry = Arc::new(registry);
    Router::new().route(METRICS_PATH, get(move || scrape(Arc::clone(&registry))))
}

async fn scrape(registry: Arc<Registry>) -> Response {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        tracing::error!(error = %e, "metrics: encoding failed");
        return (StatusCode::INTERNAL_SERVER_ERROR, "metrics could not be encoded").into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// Reads the figures at each scrape.
struct Figures {
    hub: LateHub,
    health: Arc<Health>,
}

impl fmt::Debug for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Figures").field("hub", &self.hub.get().is_some()).finish_non_exhaustive()
    }
}

type Labels = Vec<(&'static str, String)>;

/// Reads one latency quantile from a stream's figures.
type Quantile = fn(&StreamStats) -> Option<f64>;

/// One metric family: a descriptor and its samples.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, samples: Vec<(Labels, f64)>) -> fmt::Result {
    family(encoder, name, help, MetricType::Gauge, samples.into_iter().map(|(l, v)| (l, ConstGauge::new(v))))
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, samples: Vec<(Labels, u64)>) -> fmt::Result {
    family(encoder, name, help, MetricType::Counter, samples.into_iter().map(|(l, v)| (l, ConstCounter::new(v))))
}

/// The states a stream reports; each stream has one series per state, 1 for the one it is in.
const STREAM_STATES: [&str; 5] = ["starting", "playing", "reconnecting", "failed", "ended"];

/// What a stream's `source` label says: the name it is configured under, else its URL without the password.
fn source_label(hub: &Hub, url: &str) -> String {
    if let Some(name) = crate::config::ingest::name_of(url) {
        return name.to_string();
    }
    hub.config
        .sources
        .iter()
        .find(|e| e.source.url.trim() == url.trim())
        .map_or_else(|| redact(url), |e| e.source.name.clone())
}

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let info = [("version", env!("CARGO_PKG_VERSION"))];
        let metric =
            encoder.encode_descriptor("mqtt_video_build", "The running server's version", None, MetricType::Info)?;
        prometheus_client::metrics::info::Info::new(info).encode(metric)?;
        let up = f64::from(u8::from(self.health.is_healthy()));
        gauge(
            &mut encoder,
            "mqtt_video_broker_connected",
            "1 while the server's broker session is up",
            vec![(vec![], up)],
        )?;
        if let Some(hub) = self.hub.get() {
            encode_hub(hub, &mut encoder)?;
        }
        encode_process(self.hub.get().map(|h| h.started.elapsed()), &mut encoder)
    }
}

fn encode_hub(hub: &Hub, e: &mut DescriptorEncoder) -> fmt::Result {
    let streams: Vec<_> = lock(&hub.streams).values().cloned().collect();
    let rows: Vec<_> = streams
        .iter()
        .map(|s| {
            let mut st = s.stats(String::new());
            st.cpu_percent = hub.stream_cpu(&s.url);
            (vec![("source", source_label(hub, &s.url))], st, s)
        })
        .collect();
    let per_f = |f: &dyn Fn(&StreamStats) -> Option<f64>| -> Vec<(Labels, f64)> {
        rows.iter().filter_map(|(l, st, _)| Some((l.clone(), f(st)?))).collect()
    };
    let per = |f: &dyn Fn(&StreamStats, &Stream) -> u64| -> Vec<(Labels, u64)> {
        rows.iter().map(|(l, st, s)| (l.clone(), f(st, s))).collect()
    };
    let viewers: usize = rows.iter().map(|(_, st, _)| st.viewers).sum();
    gauge(
        e,
        "mqtt_video_streams",
        "Streams running (one per source, shared by its viewers)",
        vec![(vec![], rows.iter().filter(|(_, _, s)| s.is_alive()).count() as f64)],
    )?;
    gauge(e, "mqtt_video_viewers", "Viewers of all streams", vec![(vec![], viewers as f64)])?;
    let gauges = per(&|st, _| st.viewers as u64);
    gauge(
        e,
        "mqtt_video_stream_viewers",
        "Viewers of the stream",
        gauges.into_iter().map(|(l, v)| (l, v as f64)).collect(),
    )?;
    let shared = per(&|st, _| st.shared_viewers as u64);
    gauge(
        e,
        "mqtt_video_stream_shared_viewers",
        "Viewers of the stream reading its stream topics (protocol 2, fanned out by the broker)",
        shared.into_iter().map(|(l, v)| (l, v as f64)).collect(),
    )?;
    let states = rows.iter().flat_map(|(l, st, _)| {
        STREAM_STATES.iter().map(move |state| {
            let mut labels = l.clone();
            labels.push(("state", (*state).to_string()));
            (labels, f64::from(u8::from(st.state == *state)))
        })
    });
    gauge(e, "mqtt_video_stream_state", "1 for the state the stream is in", states.collect())?;
    let relaxed = Ordering::Relaxed;
    counter(e, "mqtt_video_stream_fragments", "Fragments the stream's pipeline produced", per(&|st, _| st.fragments))?;
    counter(
        e,
        "mqtt_video_stream_frames",
        "Video frames the stream's pipeline produced",
        per(&|_, s| s.counters.frames.load(relaxed)),
    )?;
    counter(
        e,
        "mqtt_video_stream_bytes",
        "Bytes of fragments the stream's pipeline produced",
        per(&|_, s| s.counters.bytes.load(relaxed)),
    )?;
    counter(
        e,
        "mqtt_video_stream_published_bytes",
        "Bytes the server published for the stream: once per fragment for shared viewers, once per direct viewer",
        per(&|st, _| st.published_bytes),
    )?;
    counter(
        e,
        "mqtt_video_stream_dropped_fragments",
        "Fragments dropped for slow viewers or by the pipeline",
        per(&|st, _| st.dropped),
    )?;
    counter(
        e,
        "mqtt_video_stream_restarts",
        "Times the source was opened again after it dropped",
        per(&|st, _| st.restarts),
    )?;
    gauge(
        e,
        "mqtt_video_stream_lag_seconds",
        "How far the stream's pipeline is behind real time (0 while it keeps up)",
        per_f(&|st| Some(st.lag_ms as f64 / 1000.0)),
    )?;
    gauge(
        e,
        "mqtt_video_stream_frame_share_ratio",
        "Share of the source's frames the stream encodes now (below 1 while a transcode sheds load)",
        per_f(&|st| Some(st.frame_share)),
    )?;
    gauge(
        e,
        "mqtt_video_stream_degraded",
        "1 while the stream skips media to stay live (its viewers were told degraded)",
        per_f(&|st| Some(f64::from(u8::from(st.degraded)))),
    )?;
    counter(e, "mqtt_video_stream_skips", "Times the stream skipped ahead to real time", per(&|st, _| st.skips))?;
    let skipped = rows.iter().map(|(l, st, _)| (l.clone(), ConstCounter::new(st.skipped_ms as f64 / 1000.0)));
    family(
        e,
        "mqtt_video_stream_skipped_media_seconds",
        "Media the stream left out to stay live",
        MetricType::Counter,
        skipped,
    )?;
    counter(
        e,
        "mqtt_video_stream_frames_shed",
        "Decoded frames left out before the encoder to keep up",
        per(&|st, _| st.frames_shed),
    )?;
    gauge(
        e,
        "mqtt_video_stream_cpu_ratio",
        "CPU the stream's pipeline threads use, in cores (measured over the last seconds)",
        per_f(&|st| st.cpu_percent.map(|p| p / 100.0)),
    )?;
    let renditions: Vec<(Labels, &crate::server::stream::RenditionStats)> = rows
        .iter()
        .flat_map(|(l, st, _)| {
            st.renditions.iter().map(move |r| {
                let mut labels = l.clone();
                labels.push(("rendition", r.name.clone()));
                (labels, r)
            })
        })
        .collect();
    let per_rendition = |f: &dyn Fn(&crate::server::stream::RenditionStats) -> Option<f64>| -> Vec<(Labels, f64)> {
        renditions.iter().filter_map(|(l, r)| Some((l.clone(), f(r)?))).collect()
    };
    gauge(e, "mqtt_video_rendition_viewers", "Viewers of the rendition", per_rendition(&|r| Some(r.viewers as f64)))?;
    gauge(
        e,
        "mqtt_video_rendition_encoding",
        "1 while the rendition is encoded (someone watches it, or is handing over from it)",
        per_rendition(&|r| Some(f64::from(u8::from(r.encoding)))),
    )?;
    gauge(
        e,
        "mqtt_video_rendition_bitrate_bytes_per_second",
        "The rendition's video bitrate over the last seconds of media (promtool's base unit is the byte)",
        per_rendition(&|r| r.bitrate_kbps.map(|k| f64::from(k) * 1000.0 / 8.0)),
    )?;
    let encode = renditions.iter().filter_map(|(l, r)| Some((l.clone(), ConstCounter::new(r.encode_seconds?))));
    family(
        e,
        "mqtt_video_rendition_encode_seconds",
        "Time spent scaling and encoding the rendition's frames (its encoder's CPU, with x264's slice threads inside)",
        MetricType::Counter,
        encode,
    )?;
    // prometheus-client has no summary type, and promtool refuses a `quantile` label on anything else: the
    // quantiles of each stream's window of recent fragments are gauges of their own.
    let window = "quantile of the last 300 video fragments";
    let quantiles: [(&str, Quantile); 2] = [("p50", |st| st.latency_p50_ms), ("p95", |st| st.latency_p95_ms)];
    for (name, quantile) in quantiles {
        let samples = rows.iter().filter_map(|(l, st, _)| Some((l.clone(), quantile(st)? / 1000.0))).collect();
        let help = format!("Source arrival to hand-off for publishing, {name} {window}");
        gauge(e, &format!("mqtt_video_stream_latency_{name}_seconds"), &help, samples)?;
    }

    let r = &hub.requests;
    let kinds = [("describe", &r.describe), ("play", &r.play), ("stop", &r.stop)];
    let requests = kinds.iter().map(|(k, c)| (vec![("kind", (*k).to_string())], c.load(relaxed))).collect();
    counter(e, "mqtt_video_requests", "Control requests received, by kind", requests)?;
    counter(
        e,
        "mqtt_video_requests_refused",
        "Requests refused: answered with an error, or dropped for want of a valid reply topic",
        vec![(vec![], r.rejected.load(relaxed))],
    )?;
    counter(
        e,
        "mqtt_video_requests_rate_limited",
        "Requests refused or dropped by the rate limits",
        vec![(vec![], r.rate_limited.load(relaxed))],
    )?;

    let (transcodes, used, refused) = hub.admission_figures();
    let budget = f64::from(hub.config.limits.cpu_budget_percent) / 100.0;
    gauge(
        e,
        "mqtt_video_cpu_budget_ratio",
        "CPU the running transcodes may use, in cores (limits.cpu_budget_percent; 0: no limit)",
        vec![(vec![], budget)],
    )?;
    gauge(e, "mqtt_video_transcodes", "Running streams whose video is transcoded", vec![(vec![], transcodes as f64)])?;
    gauge(
        e,
        "mqtt_video_transcodes_cpu_ratio",
        "CPU the running transcodes use, in cores, as measured from their threads",
        vec![(vec![], used / 100.0)],
    )?;
    counter(
        e,
        "mqtt_video_transcodes_refused",
        "Streams refused with overloaded because their transcode would pass the CPU budget",
        vec![(vec![], refused)],
    )?;
    counter(
        e,
        "mqtt_video_gateway_shed_fragments",
        "Stream-topic fragments the WebSocket gateway shed for browsers that could not keep up",
        vec![(vec![], hub.gateway_shed.load(relaxed))],
    )?;

    let endpoints: Vec<_> = hub.ingest.iter().map(|i| i.stats()).collect();
    let publishing = endpoints
        .iter()
        .map(|s| {
            (
                vec![("endpoint", s.name.clone()), ("protocol", s.protocol.to_string())],
                f64::from(u8::from(s.publishing)),
            )
        })
        .collect();
    gauge(e, "mqtt_video_ingest_publishing", "1 while a publisher's media plays on the ingest endpoint", publishing)?;
    let received = endpoints.iter().filter_map(|s| Some((vec![("endpoint", s.name.clone())], s.bytes?))).collect();
    counter(e, "mqtt_video_ingest_received_bytes", "Bytes relayed from publishers (tcp and rtmp endpoints)", received)
}

fn encode_process(uptime: Option<Duration>, e: &mut DescriptorEncoder) -> fmt::Result {
    let (rss_kib, threads) = stats::memory_and_threads();
    if let Some(ticks) = stats::cpu_ticks() {
        let seconds = ticks as f64 / stats::TICKS_PER_SEC;
        let metric = e.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time of the process",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(seconds).encode(metric)?;
    }
    if let Some(kib) = rss_kib {
        gauge(
            e,
            "process_resident_memory_bytes",
            "Resident memory of the process",
            vec![(vec![], (kib * 1024) as f64)],
        )?;
    }
    if let Some(threads) = threads {
        gauge(e, "process_threads", "Threads of the process", vec![(vec![], threads as f64)])?;
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge(e, "process_open_fds", "Open file descriptors", vec![(vec![], fds.count() as f64)])?;
    }
    let started = uptime.and_then(|u| SystemTime::now().checked_sub(u)).and_then(|t| t.duration_since(UNIX_EPOCH).ok());
    if let Some(started) = started {
        gauge(
            e,
            "process_start_time_seconds",
            "When the server started, in seconds since the Unix epoch",
            vec![(vec![], started.as_secs_f64())],
        )?;
    }
    Ok(())
}
