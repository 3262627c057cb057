//! The streams a hub runs: which URL may run, finding or starting its stream within the limits, and the
//! sweep that ends idle streams and timed-out viewers.

use super::admission::{Decision, ADMIT_WAIT};
use super::stream::{Phase, Stream};
use super::{ingest, intake, lock, supervise, Hub, SWEEP_EVERY};
use crate::config::ingest::IngestEndpoint;
use crate::media::config::VideoEncoderConfig;
use crate::media::pipeline::Gate;
use crate::media::plan::TrackMode;
use crate::media::SourceInfo;
use mqtt_video_wire::policy::redact;
use mqtt_video_wire::protocol::{ErrorCode, RequestKind};
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Hub {
    /// Which stream a requested URL names: an allowed URL as the policy maps it, or an ingest endpoint's.
    pub(super) fn allow(&self, url: &str) -> Result<String, String> {
        if let Some(name) = crate::config::ingest::name_of(url) {
            return self
                .config
                .ingest_endpoint(url)
                .map(IngestEndpoint::url)
                .ok_or_else(|| format!("URL ingest://{name} is not allowed: no ingest endpoint has that name"));
        }
        self.policy.check(url).map(|a| a.url).map_err(|e| e.to_string())
    }

    /// The stream for an allowed URL: running or started now for `requester` (`None`: for the server itself,
    /// a snapshot). A pushed source only while a publisher sends, or for a play, also while its viewers wait
    /// for the publisher to come back.
    pub(crate) fn stream_of(
        self: &Arc<Self>,
        url: &str,
        kind: RequestKind,
        requester: Option<&str>,
    ) -> Result<Arc<Stream>, (ErrorCode, String)> {
        if crate::config::ingest::name_of(url).is_some() {
            let running = lock(&self.streams).get(url).filter(|s| s.is_alive()).cloned();
            let usable = |s: &Arc<Stream>| s.has_publisher() || (kind == RequestKind::Play && s.viewer_count() > 0);
            return running
                .filter(usable)
                .ok_or_else(|| (ErrorCode::SourceUnreachable, format!("nobody is publishing to {url}")));
        }
        self.stream_for(url, requester).map_err(|m| (ErrorCode::Overloaded, m))
    }

    /// The stream of a pushed source, started for its publisher if it is not running.
    pub(crate) fn ingest_stream(self: &Arc<Self>, endpoint: &ingest::Endpoint) -> Result<Arc<Stream>, String> {
        let url = endpoint.url();
        let mut config = self.config.pipeline_for(&url).with_codec_repeat();
        config.source.listen = true;
        let srt = endpoint.config.protocol == crate::config::ingest::IngestProtocol::Srt;
        if srt {
            config.source.passphrase = endpoint.config.key.clone().map(crate::media::config::Secret);
        }
        let (client, qos, capacity) = (self.client.clone(), self.qos, self.config.limits.viewer_queue_fragments);
        let source_url = endpoint.internal_url();
        let gate = self.gate_for(&url, &config.video);
        self.start_stream(&url, None, || {
            Stream::new(url.clone(), self.stream_topics(&url), config, client, qos, capacity)
                .pushed(source_url, srt)
                .gated(gate)
                .pieces(self.pieces.clone())
        })
    }

    /// Finds the running stream for an allowed URL or starts it for `requester`.
    pub(super) fn stream_for(self: &Arc<Self>, url: &str, requester: Option<&str>) -> Result<Arc<Stream>, String> {
        let (config, client, qos) = (self.config.pipeline_for(url).with_codec_repeat(), self.client.clone(), self.qos);
        let capacity = self.config.limits.viewer_queue_fragments;
        let topics = self.stream_topics(url);
        let gate = self.gate_for(url, &config.video);
        self.start_stream(url, requester, || {
            Stream::new(url.to_string(), topics, config, client, qos, capacity).gated(gate).pieces(self.pieces.clone())
        })
    }

    /// What a pipeline of `url` asks once its source is probed: whether its work fits in the CPU budget.
    fn gate_for(self: &Arc<Self>, url: &str, video: &VideoEncoderConfig) -> Gate {
        let hub = Arc::downgrade(self);
        let (url, video) = (url.to_string(), video.clone());
        Arc::new(move |info: &SourceInfo, pipeline: u64| match hub.upgrade() {
            Some(hub) => hub.admit(&url, &video, info, pipeline),
            None => Err("the server is shutting down".into()),
        })
    }

    /// Admits the pipeline `pipeline` of the stream `url`, on its own thread: a copy at once, a transcode if
    /// the CPU budget has room by what the running ones are measured to use (waiting up to `ADMIT_WAIT` for
    /// a first measurement), else `Err` with why.
    fn admit(&self, url: &str, video: &VideoEncoderConfig, info: &SourceInfo, pipeline: u64) -> Result<(), String> {
        let transcode = info.video == TrackMode::Transcode;
        let pixel_rate = output_pixel_rate(info, video);
        let budget = self.config.limits.cpu_budget_percent;
        let deadline = Instant::now() + ADMIT_WAIT;
        loop {
            let now = Instant::now();
            let ticks = crate::media::load::threads::cpu_ticks_by_pipeline();
            let own = ticks.get(&pipeline).copied().unwrap_or(0);
            let decision = {
                let mut ledger = lock(&self.admission);
                ledger.sample(&ticks, now);
                ledger.request(url, pipeline, transcode, pixel_rate, budget, own, now, now < deadline)
            };
            match decision {
                Decision::Admit => {
                    if transcode {
                        let (running, used) = lock(&self.admission).transcodes();
                        tracing::info!(url = %redact(url), running, used_percent = used.round(), budget, "transcode admitted");
                    }
                    return Ok(());
                }
                Decision::Refuse(why) => {
                    tracing::warn!(url = %redact(url), %why, "transcode refused");
                    return Err(why);
                }
                Decision::Wait => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The topics of the stream of an allowed URL (protocol v2).
    pub(super) fn stream_topics(&self, url: &str) -> mqtt_video_wire::protocol::StreamTopics {
        mqtt_video_wire::protocol::StreamTopics::new(self.topics.prefix(), &self.ids.id_of(url))
    }

    /// The running stream for `url`, or a new one from `make`, within the stream limits: in all, and of the
    /// streams `starter` started that still run. The stream's task is watched: if it panics, its viewers get
    /// an error and the registry forgets it, so the next play starts afresh.
    pub(super) fn start_stream(
        self: &Arc<Self>,
        url: &str,
        starter: Option<&str>,
        make: impl FnOnce() -> Stream,
    ) -> Result<Arc<Stream>, String> {
        // Checked and added under one lock: two requests cannot both take the last place.
        let mut streams = lock(&self.streams);
        if let Some(s) = streams.get(url).filter(|s| s.is_alive()) {
            return Ok(Arc::clone(s));
        }
        let running = streams.values().filter(|s| s.is_alive()).map(|s| s.starter());
        intake::start(running, starter, &self.config.limits).map_err(|refusal| refusal.to_string())?;
        let stream = Arc::new(make().started_by(starter));
        streams.insert(url.to_string(), Arc::clone(&stream));
        drop(streams);
        self.announce();
        tracing::info!(url = %redact(url), "stream started");
        let (hub, retry) = (Arc::clone(self), self.config.retry.clone());
        let task_stream = Arc::clone(&stream);
        let task = tokio::spawn(async move { task_stream.run(retry).await });
        let watched = Arc::clone(&stream);
        tokio::spawn(async move {
            if let Err(e) = task.await {
                let why = supervise::panic_message(e);
                tracing::error!(url = %redact(&watched.url), why, "a stream's task panicked; its viewers are told, and the next play starts it afresh");
                watched.crashed();
            }
            hub.forget(&watched);
        });
        Ok(stream)
    }

    /// Drops a finished stream from the registry, with its viewers.
    pub(super) fn forget(&self, stream: &Arc<Stream>) {
        // A new stream for the same URL may already have taken over, with viewers of its own.
        let replaced = {
            let mut streams = lock(&self.streams);
            if streams.get(&stream.url).is_some_and(|s| Arc::ptr_eq(s, stream)) {
                streams.remove(&stream.url);
            }
            streams.contains_key(&stream.url)
        };
        if !replaced {
            lock(&self.viewers).retain(|_, url| *url != stream.url);
            lock(&self.admission).forget(&stream.url);
        }
        self.announce();
        tracing::info!(url = %redact(&stream.url), "stream stopped");
    }

    pub(super) async fn sweep_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tick.tick().await;
            self.sweep();
        }
    }

    /// Stops streams nobody watched for the linger time and ends viewers that did not renew in time.
    pub(super) fn sweep(&self) {
        let now = Instant::now();
        lock(&self.rate).forget_idle(now);
        let streams: Vec<Arc<Stream>> = lock(&self.streams).values().cloned().collect();
        if lock(&self.admission).sample_due(now) {
            let ticks = crate::media::load::threads::cpu_ticks_by_pipeline();
            let mut ledger = lock(&self.admission);
            ledger.sample(&ticks, now);
            for stream in &streams {
                ledger.set_load(&stream.url, stream.frame_share(), stream.lag_us());
            }
        }
        let linger = self.config.limits.linger();
        for stream in streams {
            if let Some(timeout) = self.config.limits.viewer_timeout() {
                let expired = stream.expire_viewers(timeout, now);
                if !expired.is_empty() {
                    // The stream knows its viewers by their delivery topics, the hub by their reply topics.
                    lock(&self.viewers).retain(|reply_topic, url| {
                        let gone = *url == stream.url && expired.contains(&self.delivery_topic(reply_topic, &stream));
                        if gone {
                            tracing::info!(reply_topic = %reply_topic, "viewer timed out");
                        }
                        !gone
                    });
                }
            }
            // A stream still opening its source has describes waiting on it; it fails by its own timeout.
            let starting = matches!(*stream.phase().borrow(), Phase::Starting);
            let unwatched = stream.viewer_count() == 0 && !stream.is_pinned();
            if !starting && unwatched && stream.idle_for(now).is_some_and(|idle| idle >= linger) {
                stream.stop();
            }
        }
    }
}

/// Output pixels a second of a transcode of this source: its size fitted in the encoder's limits, times its
/// frame rate (capped by `max_fps`).
fn output_pixel_rate(info: &SourceInfo, video: &VideoEncoderConfig) -> f64 {
    let Some(stream) = info.streams.get(info.video_stream) else { return 0.0 };
    let (w, h) = crate::media::encode::video::output_size(
        stream.width.unwrap_or(0),
        stream.height.unwrap_or(0),
        video.max_width,
        video.max_height,
    );
    let mut fps = stream.fps.unwrap_or(0.0);
    if video.max_fps > 0 {
        fps = fps.min(f64::from(video.max_fps));
    }
    f64::from(w) * f64::from(h) * fps
}
