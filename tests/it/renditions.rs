//! Renditions from one real pipeline: encoded only while wanted, from the stream's own frames, with keyframes
//! where the stream has them, on its media timeline, with its audio; each decodes on its own.

use crate::support;

use mqtt_video::media::config::RenditionConfig;
use mqtt_video::media::encode::rendition::RenditionControl;
use mqtt_video::media::events::{Fragment, InitSegment, RenditionEvent, RenditionInfo};
use mqtt_video::media::pipeline::Start;
use mqtt_video::media::{Mode, Pipeline, PipelineConfig, PipelineEvent};
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// What one run gave, in the order it came.
#[derive(Default)]
struct Outputs {
    facts: Option<RenditionInfo>,
    facts_before_init: bool,
    main_init: Option<InitSegment>,
    main: Vec<Fragment>,
    inits: Vec<InitSegment>,
    low: Vec<Fragment>,
    failed: Vec<String>,
}

fn low(extra: &str) -> RenditionConfig {
    toml::from_str(&format!("name = \"low\"\nmax_height = 120\nbitrate_kbps = 150\n{extra}")).expect("rendition")
}

/// Runs `url` with a `low` rendition wanted while main's media time is within `wanted` (seconds).
fn run(url: &str, config: PipelineConfig, wanted: (f64, f64)) -> Outputs {
    run_with(url, config, low(""), wanted)
}

fn run_with(url: &str, mut config: PipelineConfig, rendition: RenditionConfig, wanted: (f64, f64)) -> Outputs {
    config.renditions = vec![rendition];
    // A short channel keeps the pipeline within a few frames of what this test has read.
    config.channel_capacity = 4;
    let control = Arc::new(RenditionControl::default());
    let start = Start { renditions: vec![Arc::clone(&control)], ..Start::default() };
    let mut pipeline = Pipeline::start_with(url, config, start).expect("pipeline starts");
    let mut out = Outputs::default();
    loop {
        let event = pipeline.events().recv_timeout(Duration::from_secs(30)).expect("an event within 30 s");
        match event {
            PipelineEvent::Init(init) => out.main_init = Some(init),
            PipelineEvent::Fragment(f) => {
                let t = f.media_time_us as f64 / 1e6;
                control.set_wanted(t >= wanted.0 && t < wanted.1);
                out.main.push(f);
            }
            PipelineEvent::Rendition(0, RenditionEvent::Facts(info)) => {
                out.facts_before_init = out.main_init.is_none();
                out.facts = Some(info);
            }
            PipelineEvent::Rendition(0, RenditionEvent::Init(init)) => out.inits.push(init),
            PipelineEvent::Rendition(0, RenditionEvent::Fragment(f)) => out.low.push(f),
            PipelineEvent::Rendition(0, RenditionEvent::Failed(why)) => out.failed.push(why),
            PipelineEvent::Rendition(i, _) => panic!("rendition {i} was never configured"),
            PipelineEvent::End(result) => {
                result.expect("the file plays to its end");
                break;
            }
            PipelineEvent::Source(_) => {}
        }
    }
    out
}

fn check(out: &Outputs, name: &str, wanted: (f64, f64)) {
    let facts = out.facts.as_ref().expect("the rendition's facts");
    assert!(out.facts_before_init, "facts come before main's init segment, for the describe reply");
    assert_eq!((facts.name.as_str(), facts.width, facts.height), ("low", 160, 120), "{facts:?}");
    assert_eq!(facts.bitrate_kbps, Some(150));
    assert_eq!(out.inits.len(), 1, "one encoder start while wanted");
    let init = &out.inits[0];
    assert_eq!(init.info.mime_codec, facts.mime_codec, "the describe's codec string is the init segment's");
    assert!(init.info.has_audio, "the rendition carries the stream's audio");

    let low = &out.low;
    assert!(low.len() > 20, "{name}: only {} rendition fragments", low.len());
    assert!(low[0].keyframe, "{name}: a rendition starts at a keyframe");
    let seqs: Vec<u64> = low.iter().map(|f| f.sequence).collect();
    assert_eq!(seqs, (1..=low.len() as u64).collect::<Vec<_>>(), "{name}: numbered on its own from 1, no gap");
    // Keyframes at the stream's keyframes, on its timeline (within a tick or two: each track keeps its own
    // samples contiguous), and its frames at the stream's frames.
    let main_keys: Vec<i64> = out.main.iter().filter(|f| f.keyframe).map(|f| f.media_time_us).collect();
    let main_times: Vec<i64> = out.main.iter().map(|f| f.media_time_us).collect();
    let near = |t: i64, set: &[i64]| set.iter().any(|m| (m - t).abs() <= 1_000);
    for f in low.iter().filter(|f| f.keyframe) {
        assert!(near(f.media_time_us, &main_keys), "{name}: keyframe at {} µs", f.media_time_us);
    }
    for f in low {
        assert!(near(f.media_time_us, &main_times), "{name}: frame at {} µs", f.media_time_us);
    }
    // Encoded only while wanted: from the first keyframe after it was, up to a frame or two after it was not.
    let first = low[0].media_time_us as f64 / 1e6;
    let last = low.last().map_or(0, |f| f.media_time_us) as f64 / 1e6;
    let first_key_after = main_keys.iter().map(|&t| t as f64 / 1e6).find(|&t| t >= wanted.0).expect("a keyframe");
    assert!(
        (first - first_key_after).abs() < 0.2,
        "{name}: started at {first} s, the first keyframe wanted is at {first_key_after} s"
    );
    assert!(last < wanted.1 + 0.3, "{name}: still encoded at {last} s, unwanted from {} s", wanted.1);

    let mut bytes = init.bytes.to_vec();
    for f in low {
        bytes.extend_from_slice(&f.bytes);
    }
    let path = assert_bytes_decode(&bytes, &format!("rendition-{name}.mp4"));
    let streams = probe_streams(&path);
    let video = streams.iter().find(|s| s.codec_type == "video").expect("video");
    assert_eq!((video.width, video.height), (Some(160), Some(120)));
    assert!(streams.iter().any(|s| s.codec_type == "audio"), "{name}: no audio in the rendition");
    println!(
        "{name}: {} main fragments, {} rendition fragments from {first:.2} s to {last:.2} s, {} keyframes aligned",
        out.main.len(),
        low.len(),
        low.iter().filter(|f| f.keyframe).count()
    );
}

#[test]
fn a_copied_stream_s_rendition_is_decoded_for_it_alone_while_wanted_with_the_source_s_keyframes() {
    let wanted = (0.5, 2.5);
    let out = run(h264_aac_mp4().to_str().unwrap(), fast_config(), wanted);
    assert_eq!(out.main_init.as_ref().map(|i| i.info.video), Some(mqtt_video::media::plan::TrackMode::Copy));
    check(&out, "copy", wanted);
}

#[test]
fn a_transcoded_stream_s_rendition_takes_its_frames_and_its_keyframes() {
    let wanted = (1.2, 3.1);
    let config = PipelineConfig { mode: Mode::Transcode, ..fast_config() };
    let out = run(h264_aac_mp4().to_str().unwrap(), config, wanted);
    check(&out, "transcode", wanted);
}

#[test]
fn a_rendition_with_an_audio_bitrate_of_its_own_encodes_its_own_audio() {
    let wanted = (0.5, 2.5);
    let out = run_with(h264_aac_mp4().to_str().unwrap(), fast_config(), low("audio_bitrate_kbps = 32\n"), wanted);
    let main = out.main_init.as_ref().expect("main's init");
    assert_eq!(main.info.audio, Some(mqtt_video::media::plan::TrackMode::Copy), "the stream copies its AAC");
    assert_eq!(out.inits[0].info.audio, Some(mqtt_video::media::plan::TrackMode::Transcode), "the rendition encodes");
    check(&out, "own-audio", wanted);
}

#[test]
fn a_rendition_whose_encoder_does_not_open_fails_alone_and_the_stream_plays_on() {
    let config = PipelineConfig { mode: Mode::Transcode, ..fast_config() };
    let out = run_with(h264_aac_mp4().to_str().unwrap(), config, low("preset = \"no-such-preset\"\n"), (0.0, 9.0));
    assert!(out.facts.is_none(), "no facts for a rendition that cannot be encoded");
    assert_eq!(out.failed.len(), 1, "told once: {:?}", out.failed);
    assert!(out.failed[0].contains("rendition \"low\"") && out.failed[0].contains("libx264"), "{}", out.failed[0]);
    assert!(out.low.is_empty());
    assert!(out.main.len() >= 95, "the stream plays to its end: {} fragments", out.main.len());
}

#[test]
fn a_rendition_nobody_wants_is_never_encoded() {
    let out = run(h264_aac_mp4().to_str().unwrap(), fast_config(), (f64::MAX, f64::MAX));
    assert!(out.facts.is_some(), "its facts are told all the same");
    assert!(out.inits.is_empty() && out.low.is_empty(), "{} fragments of an unwatched rendition", out.low.len());
}

// --- Served: describe, play, switch and stop over a real broker ---

use mqtt_video_wire::fmp4::{self, TrackKind};
use serde_json::{json, Value};
use std::time::Instant;
use support::broker::Broker;
use support::page::{rand_suffix, server_config, Page, Server};

/// A fragment's video decode time (s) and whether it starts with a keyframe, read with its init segment.
fn video_time(init: &[u8], fragment: &[u8]) -> Option<(f64, bool)> {
    let tracks = fmp4::parse_init(init).ok()?;
    let video = tracks.iter().find(|t| t.kind == TrackKind::Video)?;
    let moof = fmp4::boxes(fragment).filter_map(Result::ok).find(|(h, _)| &h.kind == b"moof")?.1;
    let runs = fmp4::parse_moof(moof, &tracks).ok()?;
    let run = runs.iter().find(|r| r.track_id == video.track_id && r.sample_count > 0)?;
    Some((run.base_decode_time as f64 / f64::from(video.timescale), run.starts_with_sync))
}

/// Media messages on the topics of one rendition, as they came.
#[derive(Default)]
struct Seen {
    init: Option<Vec<u8>>,
    /// (arrival, decode time s, keyframe) of each fragment on the media topic.
    media: Vec<(Instant, f64, bool)>,
}

fn served_config(broker: u16) -> String {
    server_config(
        broker,
        &[],
        "[pipeline]\nmode = \"transcode\"\n\n[[pipeline.renditions]]\nname = \"low\"\nmax_height = 180\nbitrate_kbps = 200\n",
    )
}

#[test]
fn a_page_asking_for_a_rendition_that_failed_is_told_why_and_main_plays_on() {
    let broker = Broker::start();
    let extra = "[[pipeline.renditions]]\nname = \"low\"\nmax_height = 180\npreset = \"no-such-preset\"\n";
    let _server = Server::start(&server_config(broker.port, &[], extra));
    let url = "builtin://testsrc";
    let page = Page::connect(broker.port, &format!("page-{}", rand_suffix()), None);
    let reply = format!("pages/{}/m", rand_suffix());
    let described = page.describe(url, &format!("{reply}-info"));
    let names: Vec<&str> = described["renditions"]
        .as_array()
        .map_or(Vec::new(), |r| r.iter().filter_map(|r| r["name"].as_str()).collect());
    assert_eq!(names, ["main"], "a rendition that cannot be encoded is not offered: {described}");
    page.subscribe(&format!("{reply}/#"));
    page.subscribe(&reply);
    page.publish("video/play", &json!({"url": url, "reply_topic": reply, "version": 2, "rendition": "low"}));
    let status = page.next_on(&format!("{reply}/status"), Duration::from_secs(10)).expect("a status");
    let status: Value = serde_json::from_slice(&status.payload).unwrap();
    assert_eq!(
        (status["state"].as_str(), status["code"].as_str()),
        (Some("error"), Some("internal_error")),
        "{status}"
    );
    assert!(status["message"].as_str().is_some_and(|m| m.contains("libx264")), "{status}");
    page.publish("video/play", &json!({"url": url, "reply_topic": reply, "version": 2}));
    assert!(page.media_within(&reply, Duration::from_secs(10)), "main plays");
}

fn rendition_stats(page: &Page, name: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let find = |v: &Value| -> Option<Value> {
        let stream = v["streams"].as_array()?.iter().find(|s| s["url"] == "builtin://testsrc")?;
        stream["renditions"].as_array()?.iter().find(|r| r["name"] == name).cloned()
    };
    let stats = page.stats_where(|v| find(v).is_some_and(|r| ok(&r)));
    find(&stats).unwrap_or(Value::Null)
}

#[test]
fn a_page_describes_the_renditions_moves_to_one_and_back_at_keyframes_and_nobody_s_is_not_encoded() {
    let broker = Broker::start();
    let _server = Server::start(&served_config(broker.port));
    let url = "builtin://testsrc";
    let page = Page::connect(broker.port, &format!("page-{}", rand_suffix()), None);
    let reply = format!("pages/{}/m", rand_suffix());
    let described = page.describe(url, &format!("{reply}-info"));
    let renditions = described["renditions"].as_array().unwrap_or_else(|| panic!("no renditions: {described}"));
    let names: Vec<&str> = renditions.iter().map(|r| r["name"].as_str().unwrap_or("?")).collect();
    assert_eq!(names, ["main", "low"], "{described}");
    let (main, low) = (&renditions[0], &renditions[1]);
    assert_eq!(main["stream"], described["stream"], "main's topics are the stream's own");
    assert_eq!(low["stream"]["media"], "video/live/test-pattern/low/media");
    assert_eq!(
        (low["width"].as_u64(), low["height"].as_u64(), low["bitrate_kbps"].as_u64()),
        (Some(320), Some(180), Some(200))
    );
    assert!(low["mimeCodec"].as_str().is_some_and(|m| m.starts_with("video/mp4; codecs=\"avc1.")), "{low}");
    let main_media = main["stream"]["media"].as_str().unwrap().to_string();
    let low_media = low["stream"]["media"].as_str().unwrap().to_string();

    // Watching main only: low is never encoded.
    page.subscribe(&main_media);
    page.subscribe(&low_media);
    page.subscribe(&format!("{reply}/#"));
    page.subscribe(&reply);
    page.publish("video/play", &json!({"url": url, "reply_topic": reply, "version": 2}));
    let quiet = rendition_stats(&page, "low", |r| r["viewers"] == 0);
    assert_eq!(quiet["encoding"], false, "{quiet}");
    let mut on = std::collections::HashMap::<String, Seen>::new();
    let mut statuses = Vec::new();
    // Each rendition's retained init topic says how to read its media topic.
    page.subscribe("video/live/test-pattern/#");
    let inits = std::cell::RefCell::new(std::collections::HashMap::<String, Vec<u8>>::new());
    let take = |page: &Page, secs: f64, on: &mut std::collections::HashMap<String, Seen>, statuses: &mut Vec<Value>| {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(m) = page.inbox.recv_timeout(left) else { break };
            if m.topic == format!("{reply}/status") {
                statuses.push(serde_json::from_slice::<Value>(&m.payload).unwrap());
            } else if m.topic.ends_with("/init") {
                inits.borrow_mut().insert(m.topic.replace("/init", "/media"), m.payload.to_vec());
            } else if m.topic == reply {
                // The join burst: its init says which rendition the page was moved to.
                if m.payload.get(4..8) == Some(b"ftyp") {
                    on.entry("burst".into()).or_default().init = Some(m.payload.to_vec());
                }
            } else if m.topic.ends_with("/media") && m.payload.get(4..8) != Some(b"ftyp") {
                let init = inits.borrow().get(&m.topic).cloned().unwrap_or_default();
                if let Some((t, key)) = video_time(&init, &m.payload) {
                    on.entry(m.topic.clone()).or_default().media.push((Instant::now(), t, key));
                }
            }
        }
    };
    take(&page, 3.0, &mut on, &mut statuses);
    let main_init = on.get("burst").and_then(|s| s.init.clone()).expect("main's join burst");
    assert!(on.get(&low_media).is_none_or(|s| s.media.is_empty()), "low published while nobody watched it");
    assert!(on.get(&main_media).is_some_and(|s| s.media.len() > 30), "main plays");

    // Move to low: its status names it, its burst brings its init, main goes on for the hand-over.
    on.clear();
    page.publish("video/play", &json!({"url": url, "reply_topic": reply, "version": 2, "rendition": "low"}));
    let moved = Instant::now();
    take(&page, 6.0, &mut on, &mut statuses);
    let playing = statuses.iter().rev().find(|s| s["state"] == "playing").expect("a playing status");
    assert_eq!(playing["rendition"], "low", "{playing}");
    assert_eq!(playing["stream"]["media"], low_media.as_str());
    let low_init = on.get("burst").and_then(|s| s.init.clone()).expect("low's init in its join burst");
    assert_ne!(low_init, main_init);
    let low_seen = on.get(&low_media).map(|s| s.media.clone()).unwrap_or_default();
    let main_seen = on.get(&main_media).map(|s| s.media.clone()).unwrap_or_default();
    let first_low_key = low_seen.iter().find(|(_, _, k)| *k).copied().expect("a keyframe of low");
    assert!(
        first_low_key.0 - moved < Duration::from_millis(2500),
        "low's first keyframe came after {:?}",
        first_low_key.0 - moved
    );
    // The hand-over: main's fragments go on past low's first keyframe, and one of main's frames is at its time.
    assert!(
        main_seen.iter().any(|(_, t, _)| (t - first_low_key.1).abs() < 0.001),
        "main has a frame at low's keyframe {:.3} s",
        first_low_key.1
    );
    assert!(
        main_seen.iter().any(|(_, t, _)| *t > first_low_key.1 + 0.5),
        "main stopped before the hand-over could happen"
    );
    // ... and then stops: nobody is on it.
    let last_main = main_seen.last().map(|m| m.0).expect("main during the hand-over");
    assert!(
        last_main - moved < Duration::from_millis(5500),
        "main still published {:?} after the move",
        last_main - moved
    );
    let encoding = rendition_stats(&page, "low", |r| r["viewers"] == 1);
    assert_eq!(encoding["encoding"], true, "{encoding}");

    // An unknown rendition is refused; the viewer keeps what it has.
    statuses.clear();
    on.clear();
    page.publish("video/play", &json!({"url": url, "reply_topic": reply, "version": 2, "rendition": "tiny"}));
    take(&page, 1.5, &mut on, &mut statuses);
    let refused = statuses.iter().find(|s| s["state"] == "error").expect("an error status");
    assert_eq!(refused["code"], "bad_request", "{refused}");
    assert!(refused["message"].as_str().unwrap_or("").contains("main, low"), "{refused}");
    assert!(on.get(&low_media).is_some_and(|s| s.media.len() > 20), "low goes on");

    // Back to main at one of its keyframes; once the hand-over is over, low is not encoded any more.
    page.publish("video/play", &json!({"url": url, "reply_topic": reply, "version": 2}));
    on.clear();
    take(&page, 6.0, &mut on, &mut statuses);
    let main_back = on.get(&main_media).map(|s| s.media.clone()).unwrap_or_default();
    let low_after = on.get(&low_media).map(|s| s.media.clone()).unwrap_or_default();
    let key = main_back.iter().find(|(_, _, k)| *k).expect("main's keyframe");
    assert!(low_after.iter().any(|(_, t, _)| (t - key.1).abs() < 0.001), "low has a frame at main's keyframe");
    let idle = rendition_stats(&page, "low", |r| r["viewers"] == 0 && r["encoding"] == false);
    assert_eq!(idle["encoding"], false);
    println!(
        "low: first keyframe {:?} after the move; main published for {:?} after it",
        first_low_key.0 - moved,
        last_main - moved
    );
}
