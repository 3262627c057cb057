//! Overload on purpose, with real transcodes on this 2-core machine (issue 19). Six looping 720p files asked
//! for at once: the server admits what its CPU budget carries, by what the running transcodes are measured
//! to use, refuses the rest with `overloaded` within 2 s, and what it admitted keeps real time. With no
//! budget, the overloaded streams shed frames and skip ahead instead of falling behind. And one pipeline
//! too slow for real time on its own: fewer frames, keyframes on time, skips, output that still decodes.

use crate::support;

use mqtt_video::bench::measure::{MediaCheck, Realtime, Received as Got};
use mqtt_video::media::config::Mode;
use mqtt_video::media::PipelineConfig;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::broker::Broker;
use support::page::{rand_suffix, server_config, Page, Server};

/// The tests here overload the machine on purpose, one at a time: together they would measure each other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// 10 s of 1280x720 at 25 fps with AAC: a camera-like source that must be transcoded in transcode mode.
fn clip_720p() -> PathBuf {
    support::fixture(
        "overload_720p.mp4",
        &["testsrc2=size=1280x720:rate=25:duration=10", "sine=frequency=440:sample_rate=48000:duration=10"],
        &["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest"],
    )
}

/// `n` sources: copies of the clip under their own names, so that each is a stream of its own.
fn sources(n: usize) -> Vec<String> {
    let clip = clip_720p();
    (0..n)
        .map(|i| {
            let path = support::work_dir().join(format!("overload_720p_{i}.mp4"));
            if !path.exists() {
                std::fs::copy(&clip, &path).expect("copying the clip");
            }
            format!("file://{}", path.display())
        })
        .collect()
}

/// What one viewer saw.
#[derive(Default)]
struct Watched {
    asked: Option<Instant>,
    statuses: Vec<(Instant, Value)>,
    check: MediaCheck,
    /// `(receipt, end of the video received)` of every fragment.
    timeline: Vec<(Instant, f64)>,
}

impl Watched {
    fn states(&self) -> Vec<&str> {
        self.statuses.iter().filter_map(|(_, s)| s["state"].as_str()).collect()
    }

    fn error(&self) -> Option<(Duration, &Value)> {
        let (at, s) = self.statuses.iter().find(|(_, s)| s["state"] == "error")?;
        Some((at.duration_since(self.asked?), s))
    }

    /// Media seconds received per wall second from 2 s after the first fragment (the join burst comes at
    /// once) to the last, as `mqtt-video bench` measures it (the slope over every fragment), and the wall
    /// seconds that covers.
    fn realtime(&self) -> Option<(f64, f64)> {
        let first = self.timeline.first()?.0;
        let live: Vec<_> =
            self.timeline.iter().filter(|(at, _)| at.duration_since(first) >= Duration::from_secs(2)).collect();
        let mut r = Realtime::default();
        for (at, media) in &live {
            r.push(at.duration_since(first).as_secs_f64(), *media);
        }
        let wall = live.last()?.0.duration_since(live.first()?.0).as_secs_f64();
        Some((r.ratio()?, wall))
    }
}

/// Plays every URL at once, each from its own requester (reply topic parent), and watches for `secs`; also
/// returns the stats messages of that time.
fn play_all(port: u16, urls: &[String], secs: u64) -> (Vec<Watched>, Vec<Value>) {
    let page = Page::connect(port, &format!("overload-{}", rand_suffix()), None);
    page.subscribe("video/stats");
    let mut stats = Vec::new();
    let topics: Vec<String> = (0..urls.len()).map(|i| format!("pages/ov{i}-{}/m", rand_suffix())).collect();
    for t in &topics {
        page.subscribe(&format!("{t}/#"));
        page.subscribe(t);
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut watched: Vec<Watched> = topics.iter().map(|_| Watched::default()).collect();
    for ((url, topic), w) in urls.iter().zip(&topics).zip(&mut watched) {
        page.publish("video/play", &serde_json::json!({"url": url, "reply_topic": topic}));
        w.asked = Some(Instant::now());
    }
    let index: HashMap<&str, usize> = topics.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(m) = page.inbox.recv_timeout(left) else { break };
        if let Some(&i) = index.get(m.topic.as_str()) {
            let w = &mut watched[i];
            if let Ok(Got::Fragment { .. }) = w.check.push(&m.payload, 0) {
                if let Some(end) = w.check.video_end_secs {
                    w.timeline.push((m.at, end));
                }
            }
        } else if m.topic == "video/stats" {
            stats.push(serde_json::from_slice(&m.payload).expect("stats JSON"));
        } else if let Some(i) = m.topic.strip_suffix("/status").and_then(|t| index.get(t)) {
            watched[*i].statuses.push((m.at, serde_json::from_slice(&m.payload).expect("status JSON")));
        }
    }
    for t in &topics {
        page.stop(t);
    }
    (watched, stats)
}

fn transcode_config(port: u16, extra: &str) -> String {
    let prefix = format!("file://{}/", support::work_dir().display());
    // x264's `medium` costs several times `veryfast`: six of them overload two cores however quiet the machine
    // (six `veryfast` ones took 150 % of 200 on a quiet one: all were admitted and nothing needed shedding).
    let pipeline = "[pipeline]\nmode = \"transcode\"\n\n[pipeline.source]\nlooping = true\n\n\
                    [pipeline.video]\npreset = \"medium\"\n";
    server_config(port, &[&prefix], &format!("{pipeline}\n{extra}"))
}

/// The stream stats of `url` in a stats message.
fn stream<'a>(stats: &'a Value, url: &str) -> Option<&'a Value> {
    stats["streams"].as_array()?.iter().find(|s| s["url"] == url)
}

#[test]
fn six_720p_transcodes_at_once_admit_what_keeps_real_time_and_refuse_the_rest() {
    let _serial = one_at_a_time();
    let broker = Broker::start();
    let urls = sources(6);
    // The default budget: three quarters of the cores.
    let server = Server::start(&transcode_config(broker.port, ""));
    let (watched, _) = play_all(broker.port, &urls, 24);

    let (mut admitted, mut refused) = (Vec::new(), 0);
    for (url, w) in urls.iter().zip(&watched) {
        match w.error() {
            Some((after, status)) => {
                assert_eq!(status["code"], "overloaded", "{url}: {status}");
                let message = status["message"].as_str().unwrap_or_default();
                assert!(message.contains("limits.cpu_budget_percent") && message.contains("measured"), "{message}");
                // A request waits up to 3 s for a first measurement (ADMIT_WAIT).
                assert!(after <= Duration::from_secs(4), "{url}: refused after {after:?}");
                assert!(w.timeline.is_empty(), "{url}: media before the refusal");
                println!("refused after {after:?}: {message}");
                refused += 1;
            }
            None => {
                let (ratio, wall) = w.realtime().unwrap_or_else(|| panic!("{url}: no media ({:?})", w.states()));
                println!("admitted: {ratio:.3} media s per wall s over {wall:.1} s, statuses {:?}", w.states());
                assert!(wall >= 18.0, "{url}: media for only {wall:.1} s");
                assert!(ratio >= 0.95, "{url}: {ratio:.3} of real time");
                admitted.push(url);
            }
        }
    }
    // How many fit depends on the machine (one x264 `medium` 720p transcode took 59 % of a core here and
    // 75 % on CI, where a second one would have gone over 150 %): at least one, and the checks on the
    // stats below say that those admitted fit and that the refusals were for want of room.
    assert!(!admitted.is_empty(), "none admitted");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores <= 2 {
        assert!(refused >= 1, "six 720p transcodes all admitted on {cores} cores");
    }

    // The stats say what was admitted, what it costs, and how far behind it is.
    let stats = Page::connect(broker.port, &format!("ov-stats-{}", rand_suffix()), None)
        .stats_where(|s| s["admission"]["transcodes"].as_u64() == Some(admitted.len() as u64));
    let admission = &stats["admission"];
    println!("admission: {admission}");
    assert_eq!(admission["cpu_budget_percent"].as_u64(), Some(cores as u64 * 75));
    assert!(admission["refused"].as_u64().unwrap_or(0) >= refused);
    let used = admission["transcodes_cpu_percent"].as_f64().expect("transcodes' CPU");
    assert!(used > 20.0 * admitted.len() as f64, "the admitted transcodes use {used}% in all");
    let budget = (cores * 75) as f64;
    let one_more = used / admitted.len() as f64;
    // Measured some 20 s after the decisions, so with a margin for the noise of a busy machine.
    assert!(used <= budget * 1.15, "{} admitted use {used:.0}%, over the {budget}% budget", admitted.len());
    if refused > 0 {
        assert!(
            used + one_more > budget * 0.85,
            "{refused} refused while {} admitted use {used:.0}% of {budget}% and one more would need {one_more:.0}%",
            admitted.len()
        );
    }
    for url in &admitted {
        let s = stream(&stats, url).unwrap_or_else(|| panic!("{url} in the stats: {stats}"));
        println!(
            "{url}: cpu {}%, lag {} ms, share {}, skips {}",
            s["cpu_percent"], s["lag_ms"], s["frame_share"], s["skips"]
        );
        assert_eq!(s["state"], "playing");
        assert!(s["cpu_percent"].as_f64().is_some_and(|c| c > 10.0), "{s}");
        assert!(s["lag_ms"].as_u64().is_some_and(|l| l < 1000), "{s}");
        assert_eq!(s["degraded"], false, "{s}");
    }
    drop(server);
}

#[test]
fn with_no_budget_overloaded_transcodes_shed_frames_and_skip_but_keep_real_time() {
    let _serial = one_at_a_time();
    let broker = Broker::start();
    let urls = sources(6);
    let server = Server::start(&transcode_config(broker.port, "[limits]\ncpu_budget_percent = 0\n"));
    let (watched, stats) = play_all(broker.port, &urls, 24);
    let all = |s: &&Value| s["streams"].as_array().is_some_and(|v| v.len() == urls.len());
    let last = stats.iter().rev().find(all).unwrap_or_else(|| panic!("no stats with every stream: {stats:?}"));
    let (mut shed, mut skipped) = (0, 0);
    for (url, w) in urls.iter().zip(&watched) {
        assert!(w.error().is_none(), "{url}: {:?}", w.states());
        let (ratio, wall) = w.realtime().unwrap_or_else(|| panic!("{url}: no media ({:?})", w.states()));
        let s = stream(last, url).unwrap_or_else(|| panic!("{url} in the stats: {last}"));
        let lags: Vec<u64> = stats.iter().filter_map(|m| stream(m, url)?["lag_ms"].as_u64()).collect();
        let most = lags.iter().copied().max().unwrap_or(0);
        println!(
            "{ratio:.3} media s per wall s over {wall:.1} s; lag at most {most} ms, share {}, frames shed {}, \
             skips {} ({} ms), cpu {:.0}%, statuses {:?}",
            s["frame_share"],
            s["frames_shed"],
            s["skips"],
            s["skipped_ms"],
            s["cpu_percent"].as_f64().unwrap_or(0.0),
            w.states()
        );
        // Never an ever-growing lag: at most the skip threshold (1.5 s) and a GOP behind at any time, so over
        // 20 s at least 0.9 of real time (a stream that kept up entirely is at 1.0).
        assert!(most < 2600, "{url}: {most} ms behind real time ({lags:?})");
        assert!(ratio >= 0.9, "{url}: {ratio:.3} of real time: the stream fell behind");
        shed += s["frames_shed"].as_u64().unwrap_or(0);
        let skips = s["skips"].as_u64().unwrap_or(0);
        skipped += skips;
        if skips > 0 {
            assert!(w.states().contains(&"degraded"), "{url} skipped, its viewer was not told: {:?}", w.states());
        }
    }
    assert!(shed + skipped > 0, "six 720p transcodes on this machine and nothing was shed: {last}");
    drop(server);
}

#[test]
fn a_transcode_too_slow_for_real_time_sheds_frames_keeps_keyframes_on_time_and_still_decodes() {
    let _serial = one_at_a_time();
    let mut config = PipelineConfig { mode: Mode::Transcode, ..Default::default() };
    config.source.looping = true;
    // x264's slower preset on one thread keeps up with a fraction of a 25 fps 720p source on this machine.
    // (tune stays zerolatency: a lookahead holds frames by count, and fewer frames would mean more delay.)
    config.video.preset = "slower".into();
    config.video.threads = 1;
    let url = sources(1).remove(0);
    let run = support::collect(&url, config, 60.0, Duration::from_secs(16));
    assert!(run.end.is_none(), "the pipeline ended: {:?}", run.end);
    let f = &run.fragments;
    assert!(f.len() > 20, "{} fragments", f.len());
    // Real time kept: the media timeline advances with the wall clock (after the first 3 s).
    let start = f.iter().position(|x| x.produced_wallclock_us >= f[0].produced_wallclock_us + 3_000_000).expect("3 s");
    let (a, b) = (&f[start], &f[f.len() - 1]);
    let media = (b.media_time_us + b.duration_us - a.media_time_us) as f64 / 1e6;
    let wall = (b.produced_wallclock_us - a.produced_wallclock_us) as f64 / 1e6;
    let frames: u32 = f[start..].iter().map(|x| x.video_samples).sum();
    println!("{media:.1} s of media in {wall:.1} s, {frames} frames ({:.1} fps)", f64::from(frames) / wall);
    assert!(media / wall >= 0.95, "{media:.1} s of media in {wall:.1} s");
    // Fewer frames than the source's 25 a second: some were shed. (How many depends on how fast x264 runs
    // here: 17-20 a second in most runs, 20.3 in one, which the old bound of 20 failed.)
    assert!(f64::from(frames) / wall < 0.92 * 25.0, "no frames shed: {frames} in {wall:.1} s");
    // Keyframes every second of media still, whatever the frame rate (a skip may leave a longer gap).
    let keys: Vec<i64> = f.iter().filter(|x| x.keyframe).map(|x| x.media_time_us).collect();
    let spacing: Vec<i64> = keys.windows(2).map(|w| w[1] - w[0]).collect();
    let regular = spacing.iter().filter(|&&d| (900_000..=1_100_000).contains(&d)).count();
    println!("keyframe spacing (ms): {:?}", spacing.iter().map(|d| d / 1000).collect::<Vec<_>>());
    assert!(regular * 2 >= spacing.len(), "keyframes not once a second: {spacing:?}");
    support::assert_decodes(&run, "overload_slow_transcode.mp4");
}

#[test]
fn a_copy_that_falls_behind_skips_ahead_to_a_keyframe_and_says_it_is_degraded() {
    let _serial = one_at_a_time();
    use mqtt_video::media::config::Backpressure;
    use mqtt_video::media::{Pipeline, PipelineEvent};
    use std::sync::atomic::Ordering;
    // A consumer that takes 60 ms per fragment of a 25 fps copy, and the pipeline waits for it: a copy at
    // two thirds of real time, as a starved server would run it.
    let mut config = PipelineConfig { mode: Mode::Copy, backpressure: Backpressure::Block, ..Default::default() };
    config.source.looping = true;
    config.channel_capacity = 4;
    let mut pipeline = Pipeline::start(&support::h264_aac_mp4().display().to_string(), config).expect("starts");
    let started = Instant::now();
    let mut run =
        support::Run { source: None, init: None, fragments: Vec::new(), end: None, time_to_first_fragment: None };
    let mut degraded_seen = false;
    while started.elapsed() < Duration::from_secs(12) {
        match pipeline.events().recv_timeout(Duration::from_secs(5)) {
            Ok(PipelineEvent::Init(i)) => run.init = Some(i),
            Ok(PipelineEvent::Fragment(f)) => {
                if f.video_samples > 0 {
                    std::thread::sleep(Duration::from_millis(60));
                }
                run.fragments.push(f);
            }
            Ok(PipelineEvent::End(r)) => panic!("ended: {r:?}"),
            Ok(PipelineEvent::Source(_)) | Ok(PipelineEvent::Rendition(..)) => {}
            Err(e) => panic!("no event: {e}"),
        }
        degraded_seen |= pipeline.stats().degraded.load(Ordering::Relaxed);
    }
    let stats = pipeline.stats().snapshot();
    let (skips, skipped_us) =
        (pipeline.stats().skips.load(Ordering::Relaxed), pipeline.stats().skipped_us.load(Ordering::Relaxed));
    let lag_ms = pipeline.stats().lag_us.load(Ordering::Relaxed) / 1000;
    pipeline.join();
    let f = &run.fragments;
    let (a, b) = (&f[0], &f[f.len() - 1]);
    let media = (b.media_time_us + b.duration_us - a.media_time_us) as f64 / 1e6;
    let wall = (b.produced_wallclock_us - a.produced_wallclock_us) as f64 / 1e6;
    println!(
        "{media:.1} s of media in {wall:.1} s; {skips} skips left out {:.1} s; lag now {lag_ms} ms; {} packets in",
        skipped_us as f64 / 1e6,
        stats.packets_in
    );
    assert!(skips >= 1 && degraded_seen, "the copy never skipped ahead");
    assert!(media / wall >= 0.9, "{media:.1} s of media in {wall:.1} s: it fell behind");
    assert!(lag_ms < 2600, "{lag_ms} ms behind");
    // Each skip ends at a keyframe, and the output still decodes from end to end.
    support::assert_decodes(&run, "overload_copy_skips.mp4");
}
