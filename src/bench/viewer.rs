//! One benchmark viewer: its own MQTT connection, as a page has; describe, play, receive until a deadline,
//! stop. Every timestamp is taken when rumqttc hands the packet over.

use super::measure::{MediaCheck, Realtime, Received, SequenceMerge, Summary};
use super::report::ViewerReport;
use crate::media::timing::wallclock_us;
use crate::server::mqtt::MAX_PACKET_BYTES;
use mqtt_video_wire::fmp4;
use mqtt_video_wire::pieces::{Piece, Reassembler};
use mqtt_video_wire::protocol::status_topic;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a viewer repeats its play, well within the server's default 30 s viewer timeout.
const RENEW_EVERY: Duration = Duration::from_secs(10);

/// Fragments received within this long after the init segment are the joiner's GOP burst (up to a GOP old on
/// purpose), not live delivery: they count for everything but latency.
pub const JOIN_BURST: Duration = Duration::from_secs(2);

/// What a viewer is told to do.
#[derive(Debug, Clone)]
pub struct ViewerPlan {
    /// 0 for the first viewer.
    pub index: usize,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Control topic prefix.
    pub prefix: String,
    /// The source URL.
    pub url: String,
    /// Unique per run; the viewer's topics are `<base>/v<index>/...`.
    pub base: String,
    /// Describe before playing (a page does; in v1 the first viewer plays at once to time a cold start).
    pub describe: bool,
    /// The protocol: 2 (the stream topic after a join burst, the default) or 1 (all on the reply topic).
    pub protocol: u8,
    /// The rendition to play (protocol 2); `None`: the stream's own.
    pub rendition: Option<String>,
    /// How long to receive media after the first fragment.
    pub receive_for: Duration,
    /// Give up waiting for the describe reply, the init segment or the first fragment after this long.
    pub answer_timeout: Duration,
    /// The run's start, for the latency timeline.
    pub epoch: Instant,
}

/// Live counters all viewers add to, for the progress line.
#[derive(Debug, Default)]
pub struct Progress {
    /// Viewers that received their first fragment.
    pub playing: AtomicUsize,
    /// Viewers that finished (done or failed).
    pub finished: AtomicUsize,
    /// Fragments received by all viewers.
    pub fragments: AtomicU64,
    /// Latency of the newest live fragment any viewer received (µs).
    pub last_latency_us: AtomicU64,
}

/// What a viewer brings back: its report, its describe reply and its latency timeline.
#[derive(Debug)]
pub struct ViewerResult {
    /// Its figures.
    pub report: ViewerReport,
    /// The describe reply, if it described.
    pub described: Option<serde_json::Value>,
    /// `(seconds since the run's epoch, latency ms)` of each live fragment.
    pub timeline: Vec<(f64, f64)>,
}

/// Keeps the first error: later ones are consequences.
fn fail(report: &mut ViewerReport, why: String) {
    if report.error.is_none() {
        report.error = Some(why);
    }
}

#[derive(Debug, PartialEq)]
enum Phase {
    Connecting,
    Describing,
    Playing,
    Done,
}

/// Runs one viewer to the end; failures land in `report.error`, never in a panic.
pub async fn run(plan: ViewerPlan, progress: Arc<Progress>) -> ViewerResult {
    let base = format!("{}/v{}", plan.base, plan.index);
    let info_topic = format!("{base}/info");
    let media_topic = format!("{base}/media");
    let media_status = status_topic(&media_topic);
    let stop_payload = serde_json::json!({ "reply_topic": media_topic }).to_string();
    let stop_topic = format!("{}/stop", plan.prefix);

    let client_id = format!("{}-v{}", plan.base.replace('/', "-"), plan.index);
    let mut options = MqttOptions::new(client_id, plan.host.clone(), plan.port);
    options.set_keep_alive(Duration::from_secs(20));
    options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    options.set_clean_session(true);
    options.set_last_will(LastWill::new(&stop_topic, stop_payload.clone(), QoS::AtMostOnce, false));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    crate::server::mqtt::without_nagle(&mut eventloop);

    let mut report = ViewerReport { index: plan.index, ..Default::default() };
    let mut described = None;
    let mut timeline = Vec::new();
    let mut check = MediaCheck::default();
    let mut realtime = Realtime::default();
    let mut merge = SequenceMerge::default();
    let mut pieces: HashMap<String, Reassembler> = HashMap::new();
    // v2: the stream's media topic, from the describe reply (a v2 viewer always describes first).
    let mut stream_topic: Option<String> = None;
    let mut phase = Phase::Connecting;
    let started = Instant::now();
    let mut waiting_since = started;
    let mut asked_at = started;
    let mut init_at: Option<Instant> = None;
    let mut first_at: Option<Instant> = None;
    let mut bytes_live = 0u64;
    let mut played_at = started;

    let publish = |client: &AsyncClient, topic: &str, payload: String| {
        client.try_publish(topic, QoS::AtMostOnce, false, payload.into_bytes()).map_err(|e| e.to_string())
    };
    let play = |client: &AsyncClient| {
        let mut request = serde_json::json!({ "url": plan.url, "reply_topic": media_topic });
        if plan.protocol == 2 {
            request["version"] = 2.into();
        }
        if let Some(name) = &plan.rendition {
            request["rendition"] = name.as_str().into();
        }
        publish(client, &format!("{}/play", plan.prefix), request.to_string())
    };

    'receive: while phase != Phase::Done {
        let now = Instant::now();
        // Deadlines.
        match phase {
            Phase::Connecting if now - waiting_since > plan.answer_timeout => {
                fail(&mut report, format!("no connection to the broker within {:?}", plan.answer_timeout));
                break;
            }
            Phase::Describing if now - waiting_since > plan.answer_timeout => {
                fail(
                    &mut report,
                    format!(
                        "no answer to describe within {:?}: is `mqtt-video serve` connected to this broker with topic prefix '{}'?",
                        plan.answer_timeout, plan.prefix
                    ),
                );
                break;
            }
            Phase::Playing if first_at.is_none() && now - waiting_since > plan.answer_timeout => {
                let what = if init_at.is_none() { "init segment" } else { "fragment" };
                fail(&mut report, format!("no {what} within {:?} of play", plan.answer_timeout));
                break;
            }
            Phase::Playing if first_at.is_some_and(|t| now - t >= plan.receive_for) => break,
            // As a page does: the server ends viewers that do not renew within `limits.viewer_timeout_secs`.
            Phase::Playing if now - played_at >= RENEW_EVERY => {
                played_at = now;
                if let Err(e) = play(&client) {
                    fail(&mut report, format!("publish: {e}"));
                    break;
                }
            }
            _ => {}
        }
        let event = match tokio::time::timeout(Duration::from_millis(100), eventloop.poll()).await {
            Err(_) => continue,
            Ok(Err(e)) => {
                fail(&mut report, format!("broker {}:{}: {e}", plan.host, plan.port));
                break;
            }
            Ok(Ok(event)) => event,
        };
        let Event::Incoming(packet) = event else { continue };
        match packet {
            Packet::ConnAck(_) => {
                if let Err(e) = client.try_subscribe(format!("{base}/#"), QoS::AtMostOnce) {
                    fail(&mut report, format!("subscribe: {e}"));
                    break;
                }
            }
            // Only the first: the v2 stream topic's SUBACK comes later, and must not ask again.
            Packet::SubAck(_) if phase == Phase::Connecting => {
                asked_at = Instant::now();
                waiting_since = asked_at;
                let sent = if plan.describe || plan.protocol == 2 {
                    phase = Phase::Describing;
                    publish(
                        &client,
                        &format!("{}/describe", plan.prefix),
                        serde_json::json!({ "url": plan.url, "reply_topic": info_topic }).to_string(),
                    )
                } else {
                    phase = Phase::Playing;
                    played_at = Instant::now();
                    play(&client)
                };
                if let Err(e) = sent {
                    fail(&mut report, format!("publish: {e}"));
                    break;
                }
            }
            Packet::Publish(p) if p.topic == info_topic => {
                let at = Instant::now();
                let reply: serde_json::Value = match serde_json::from_slice(&p.payload) {
                    Ok(v) => v,
                    Err(e) => {
                        fail(&mut report, format!("describe reply is not JSON: {e}"));
                        break;
                    }
                };
                if let Some(err) = reply.get("error") {
                    fail(&mut report, format!("describe refused: {}: {}", err["code"], err["message"]));
                    break;
                }
                report.describe_ms = Some((at - asked_at).as_secs_f64() * 1000.0);
                if plan.protocol == 2 {
                    let stream = match &plan.rendition {
                        Some(name) => reply["renditions"]
                            .as_array()
                            .and_then(|all| all.iter().find(|r| r["name"] == name.as_str()))
                            .map_or(serde_json::Value::Null, |r| r["stream"].clone()),
                        None => reply["stream"].clone(),
                    };
                    if stream.is_null() {
                        let name = plan.rendition.as_deref().unwrap_or("main");
                        fail(&mut report, format!("the describe reply lists no rendition {name:?}"));
                        break;
                    }
                    let Some(topic) = stream["media"].as_str().map(str::to_string) else {
                        fail(
                            &mut report,
                            "the describe reply names no stream topic: is the server older than v2? (--protocol 1)"
                                .into(),
                        );
                        break;
                    };
                    // Subscribed before the play goes out: the broker takes them in order.
                    if let Err(e) = client.try_subscribe(topic.as_str(), QoS::AtMostOnce) {
                        fail(&mut report, format!("subscribe: {e}"));
                        break;
                    }
                    stream_topic = Some(topic);
                }
                described = Some(reply);
                asked_at = Instant::now();
                waiting_since = asked_at;
                phase = Phase::Playing;
                played_at = Instant::now();
                if let Err(e) = play(&client) {
                    fail(&mut report, format!("publish: {e}"));
                    break;
                }
            }
            Packet::Publish(p) if p.topic == media_status => {
                let status: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                let state = status["state"].as_str().unwrap_or("?").to_string();
                report.statuses.push(state.clone());
                match state.as_str() {
                    "error" => {
                        fail(&mut report, format!("play refused: {}: {}", status["code"], status["message"]));
                        break;
                    }
                    "ended" => {
                        fail(&mut report, format!("play ended early: {}", status["reason"]));
                        break;
                    }
                    _ => {}
                }
            }
            Packet::Publish(p) if p.topic == media_topic || Some(&p.topic) == stream_topic.as_ref() => {
                let at = Instant::now();
                let received_us = wallclock_us();
                // A segment sent in pieces for the broker's packet limit counts once whole; a lost piece
                // shows as the fragment missing from the sequence.
                let Ok(Piece::Segment(payload)) = pieces.entry(p.topic.clone()).or_default().push(&p.payload) else {
                    continue;
                };
                let ready = if plan.protocol == 2 {
                    let key = fmp4::starts_with_keyframe(&payload);
                    merge.push(payload, key)
                } else {
                    vec![payload]
                };
                for payload in ready {
                    match check.push(&payload, received_us) {
                        Ok(Received::Init) => {
                            if init_at.is_none() {
                                init_at = Some(at);
                                report.init_ms = Some((at - asked_at).as_secs_f64() * 1000.0);
                            }
                        }
                        Ok(Received::BeforeInit) => report.before_init += 1,
                        Ok(Received::Fragment { latency_ms, .. }) => {
                            if first_at.is_none() {
                                first_at = Some(at);
                                report.first_fragment_ms = Some((at - asked_at).as_secs_f64() * 1000.0);
                                progress.playing.fetch_add(1, Ordering::Relaxed);
                            }
                            progress.fragments.fetch_add(1, Ordering::Relaxed);
                            bytes_live += payload.len() as u64;
                            let live = init_at.is_some_and(|t| at - t >= JOIN_BURST);
                            if let (true, Some(end)) = (live, check.video_end_secs) {
                                realtime.push((at - plan.epoch).as_secs_f64(), end);
                            }
                            if let (true, Some(l)) = (live, latency_ms) {
                                timeline.push(((at - plan.epoch).as_secs_f64(), l));
                                progress.last_latency_us.store((l.max(0.0) * 1000.0) as u64, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            fail(&mut report, format!("media: {e}"));
                            break 'receive;
                        }
                    }
                }
            }
            _ => {}
        }
    }

    let receive_end = Instant::now();
    // Stop the play (the last will would too, but only after the broker notices the connection is gone).
    if phase == Phase::Playing {
        let _ = publish(&client, &stop_topic, stop_payload);
    }
    let _ = client.try_disconnect();
    // Let the event loop send the stop and the DISCONNECT.
    let flush_until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < flush_until {
        match tokio::time::timeout(Duration::from_millis(100), eventloop.poll()).await {
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) => break,
            _ => {}
        }
    }

    if let Some(first) = first_at {
        let secs = (receive_end - first).as_secs_f64();
        if secs > 0.5 {
            report.bitrate_kbps = Some(bytes_live as f64 * 8.0 / 1000.0 / secs);
        }
    }
    report.latency = Summary::of(&timeline.iter().map(|p| p.1).collect::<Vec<_>>());
    report.fragments = check.fragments;
    report.gaps = check.gaps;
    report.missing_ms = check.missing_ms;
    report.out_of_order = check.out_of_order;
    report.realtime_ratio = realtime.ratio();
    progress.finished.fetch_add(1, Ordering::Relaxed);
    ViewerResult { report, described, timeline }
}
