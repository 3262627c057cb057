//! `mqtt-video serve`: the MQTT server. Control requests arrive on `<prefix>/{describe,play,stop}`; each
//! allowed source runs as one shared [`stream::Stream`]; media goes to every viewer's own reply topic.

pub mod assets;
pub mod cluster;
pub mod gateway;
pub mod health;
pub mod homeassistant;
pub mod ingest;
pub mod metrics;
pub mod mqtt;
pub mod ratelimit;
pub mod snapshots;
pub mod stats;
pub mod stream;
pub mod supervise;
pub mod viewer;

use crate::config::Config;
use crate::ingest::IngestEndpoint;
use crate::policy::{redact, Policy, PolicyError};
use crate::protocol::{
    parse_request, reply_topic_hint, status_topic, DescribeReply, DescribeRequest, EndReason, ErrorCode, ErrorReply,
    PlayRequest, ProtocolError, Request, RequestKind, RequestLimits, Status, StopRequest, TopicError, Topics,
};
use bytes::Bytes;
use rumqttc::{AsyncClient, QoS};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use stream::{Phase, Stream};
use tokio::sync::mpsc;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The topic prefix is not a valid topic.
    #[error("topics.prefix: {0}")]
    Topics(#[from] TopicError),
    /// The allow-list is invalid.
    #[error("allow-list: {0}")]
    Policy(#[from] PolicyError),
    /// The broker session could not be set up.
    #[error(transparent)]
    Mqtt(#[from] mqtt::MqttSetupError),
    /// The gateway could not start.
    #[error(transparent)]
    Gateway(#[from] gateway::GatewayError),
    /// An ingest endpoint could not start.
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    /// One of the server's own tasks ended or panicked: the server cannot go on without it.
    #[error("the server's {task} task {}", why.as_deref().map_or("ended".to_string(), |w| format!("panicked: {w}")))]
    TaskFailed {
        /// Which task.
        task: &'static str,
        /// Its panic's message, if it panicked.
        why: Option<String>,
    },
}

/// How often lingering streams and expired viewers are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Default, Serialize)]
struct RequestCounters {
    describe: AtomicU64,
    play: AtomicU64,
    stop: AtomicU64,
    rejected: AtomicU64,
    rate_limited: AtomicU64,
}

/// The server's shared state.
pub struct Hub {
    config: Config,
    policy: Policy,
    topics: Topics,
    limits: RequestLimits,
    qos: QoS,
    client: AsyncClient,
    streams: Mutex<HashMap<String, Arc<Stream>>>,
    /// Which stream each reply topic watches.
    viewers: Mutex<HashMap<String, String>>,
    requests: RequestCounters,
    started: Instant,
    cpu: Mutex<stats::CpuMeter>,
    rate: Mutex<ratelimit::RateLimiter>,
    /// The instances sharing the requests, with `[cluster] enabled`.
    members: Option<Mutex<cluster::Members>>,
    /// Push ingest endpoints.
    ingest: Vec<Arc<ingest::Endpoint>>,
    /// The streams' ids, which name their topics.
    ids: stream::ids::StreamIds,
    /// Fragments the gateway shed for browsers that could not keep up.
    pub(crate) gateway_shed: Arc<AtomicU64>,
    /// Set when shutting down: nothing new starts.
    closing: std::sync::atomic::AtomicBool,
}

/// The hub, for gateway routes bound before it exists (`/metrics`); set once it does.
pub(crate) type LateHub = Arc<std::sync::OnceLock<Arc<Hub>>>;

/// Locks a mutex whose data stays usable after a panic elsewhere (plain state, no invariants spanning a lock).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the server until SIGINT/SIGTERM.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let topics = Topics::new(&config.topics.prefix)?;
    let policy = config.policy()?;
    let cluster_on = config.cluster.enabled;
    // Read once: the hostname behind `{hostname}` is the instance's id in the cluster too.
    let client_id = config.broker.effective_client_id();
    let options = mqtt::options(&config.broker, &client_id, &topics, cluster_on)?;
    let health = Arc::new(health::Health::default());
    let mut tasks = supervise::Tasks::default();
    let gateway_shed = Arc::new(AtomicU64::new(0));
    let late_hub = LateHub::default();
    let snapshots = Arc::new(snapshots::Snapshots::new(config.snapshots.jpeg()));
    if config.gateway.enabled {
        let mut routes = metrics::router(Arc::clone(&late_hub), Arc::clone(&health));
        if config.snapshots.http {
            routes = routes.merge(snapshots::router(Arc::clone(&late_hub), Arc::clone(&snapshots)));
        }
        let (host, port) = (&config.broker.host, config.broker.port);
        let gateway = gateway::Gateway::bind(
            &config.gateway,
            host,
            port,
            Arc::clone(&health),
            routes,
            &config.topics.prefix,
            Arc::clone(&gateway_shed),
        )
        .await?;
        if let Ok(addr) = gateway.local_addr() {
            tracing::info!(
                "gateway: the page is at http://{addr}/, MQTT over WebSocket at ws://{addr}{}",
                config.gateway.path
            );
        }
        tasks.spawn("gateway", gateway.serve());
    }
    // Ingest ports are bound before anything else runs: a port in use is a start-up error, not a log line.
    let mut endpoints = Vec::new();
    for endpoint in &config.ingest {
        endpoints.push(ingest::bind(endpoint.clone()).await?);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 4096);
    mqtt::without_nagle(&mut eventloop);
    let qos = if config.broker.qos == 1 { QoS::AtLeastOnce } else { QoS::AtMostOnce };
    let hub = Arc::new(Hub {
        limits: config.request_limits(),
        policy,
        topics: topics.clone(),
        qos,
        client: client.clone(),
        streams: Mutex::default(),
        viewers: Mutex::default(),
        requests: RequestCounters::default(),
        started: Instant::now(),
        cpu: Mutex::default(),
        members: cluster_on.then(|| Mutex::new(cluster::Members::new(&client_id))),
        rate: Mutex::new(ratelimit::RateLimiter::new(
            config.limits.requests_per_minute,
            config.limits.requests_per_second,
            Instant::now(),
        )),
        ingest: endpoints.iter().map(|(e, _)| Arc::clone(e)).collect(),
        ids: stream::ids::StreamIds::new(&config.named_sources(), &config.ingest),
        gateway_shed,
        closing: Default::default(),
        config,
    });
    let _ = late_hub.set(Arc::clone(&hub));
    if hub.config.homeassistant.enabled {
        tasks.spawn("Home Assistant", homeassistant::run(Arc::clone(&hub), Arc::clone(&snapshots)));
    }
    for (endpoint, listener) in endpoints {
        match listener {
            Some(listener) => tasks.spawn("ingest listener", ingest::serve(Arc::clone(&hub), endpoint, listener)),
            None => tasks.spawn("SRT ingest", ingest::serve_listening(Arc::clone(&hub), endpoint)),
        }
    }
    let (tx, mut rx) = mpsc::channel(1024);
    tasks.spawn(
        "broker session",
        mqtt::drive(eventloop, client, topics, hub.config.broker.clone(), tx, health, cluster_on),
    );
    tasks.spawn("sweep", Arc::clone(&hub).sweep_forever());
    if let Some(every) = hub.config.stats.interval() {
        tasks.spawn("stats", Arc::clone(&hub).publish_stats_forever(every));
    }
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut failed = None;
    loop {
        tokio::select! {
            (task, why) = tasks.ended() => {
                tracing::error!(task, why = why.as_deref().unwrap_or("it returned"), "a server task ended: shutting down");
                failed = Some(ServerError::TaskFailed { task, why });
                break;
            }
            event = rx.recv() => match event {
                Some(mqtt::SessionEvent::Connected) => {
                    hub.publish_sources().await;
                    hub.announce();
                }
                Some(mqtt::SessionEvent::Instance(id, payload)) => hub.instance_event(&id, &payload),
                Some(mqtt::SessionEvent::Request(kind, payload)) => {
                    let hub = Arc::clone(&hub);
                    tokio::spawn(async move { hub.handle(kind, payload).await });
                }
                None => break,
            },
            _ = &mut shutdown => break,
        }
    }
    hub.shutdown().await;
    failed.map_or(Ok(()), Err)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            return;
        }
    }
    let _ = ctrl_c.await;
}

impl Hub {
    async fn publish_json(&self, topic: String, value: &impl Serialize, retain: bool) {
        match serde_json::to_vec(value) {
            Ok(json) => {
                if let Err(e) = self.client.publish(topic, self.qos, retain, json).await {
                    tracing::warn!(error = %e, "could not queue a publish");
                }
            }
            Err(e) => tracing::error!(error = %e, "could not serialise a message"),
        }
    }

    /// Publishes the retained sources list: the named sources and the pushed ones with a publisher now.
    pub(crate) async fn publish_sources(&self) {
        #[derive(Serialize)]
        struct Sources {
            version: u32,
            sources: Vec<crate::policy::OfferedSource>,
        }
        let mut offered = self.policy.offered();
        offered.extend(self.ingest.iter().filter(|e| e.is_live()).map(|e| crate::policy::OfferedSource {
            name: e.config.name.clone(),
            url: e.url(),
            description: e.config.description.clone(),
        }));
        let sources = Sources { version: crate::protocol::PROTOCOL_VERSION, sources: offered };
        self.publish_json(self.topics.sources(), &sources, true).await;
    }

    /// Answers a request that went wrong: describe on its reply topic, play on its status topic.
    async fn answer_error(&self, kind: RequestKind, reply_topic: &str, code: ErrorCode, message: String) {
        self.requests.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::info!(kind = kind.as_str(), reply_topic, code = code.as_str(), %message, "request refused");
        match kind {
            RequestKind::Describe => {
                self.publish_json(reply_topic.to_string(), &ErrorReply::new(code, message), false).await;
            }
            RequestKind::Play => {
                self.publish_json(status_topic(reply_topic), &Status::error(code, message), false).await;
            }
            RequestKind::Stop => {}
        }
    }

    async fn handle(self: Arc<Self>, kind: RequestKind, payload: Bytes) {
        let parsed = parse_request(kind, &payload, &self.limits);
        // Where an answer would go, read once: the request's reply topic, or for a request that failed its
        // checks the valid reply topic its payload names, if any.
        let reply_topic = match &parsed {
            Ok(r) => Some(r.reply_topic().to_string()),
            Err(_) => reply_topic_hint(&payload, &self.limits),
        };
        if !self.is_mine(kind, &payload, &parsed, reply_topic.as_deref()) {
            return;
        }
        if !self.within_rate(kind, reply_topic.as_deref()).await {
            return;
        }
        let request = match parsed {
            Ok(r) => r,
            Err(e) => return self.refuse(kind, reply_topic.as_deref(), e).await,
        };
        match request {
            Request::Describe(d) => self.describe(d).await,
            Request::Play(p) => self.play(p).await,
            Request::Stop(s) => self.stop(s),
        }
    }

    /// In a cluster, whether this instance handles the request: the owner of its URL (as the allow-list
    /// maps it), or for a request without a usable URL the owner of its reply topic. Every instance handles
    /// stops (only the one with the viewer acts), and renewals of its own viewers.
    fn is_mine(
        &self,
        kind: RequestKind,
        payload: &[u8],
        parsed: &Result<Request, ProtocolError>,
        reply_topic: Option<&str>,
    ) -> bool {
        let Some(members) = &self.members else { return true };
        if kind == RequestKind::Stop {
            return true;
        }
        let request = parsed.as_ref().ok();
        if request.is_some_and(|r| lock(&self.viewers).contains_key(r.reply_topic())) {
            return true;
        }
        let key = match request.and_then(Request::url).map(|u| self.allow(u)) {
            Some(Ok(url)) => cluster::url_key(&url),
            _ => cluster::fnv1a64(reply_topic.map_or(payload, str::as_bytes)),
        };
        lock(members).is_mine(key)
    }

    /// Publishes this instance's announcement (retained) with the streams it runs.
    fn announce(&self) {
        let Some(members) = &self.members else { return };
        let keys = lock(&self.streams).values().filter(|s| s.is_alive()).map(|s| cluster::url_key(&s.url)).collect();
        let (topic, announcement) = {
            let mut m = lock(members);
            (self.topics.instance(m.me()), m.set_mine(keys))
        };
        match serde_json::to_vec(&announcement) {
            Ok(json) => {
                if let Err(e) = self.client.try_publish(topic, QoS::AtLeastOnce, true, json) {
                    tracing::warn!(error = %e, "could not queue the cluster announcement");
                }
            }
            Err(e) => tracing::error!(error = %e, "could not serialise the cluster announcement"),
        }
    }

    /// Another instance announced itself (or left).
    fn instance_event(&self, id: &str, payload: &[u8]) {
        let Some(members) = &self.members else { return };
        let mut m = lock(members);
        if m.update(id, payload) {
            tracing::info!(
                instance = id,
                instances = m.count(),
                joined = !payload.is_empty(),
                "cluster membership changed"
            );
        }
    }

    /// The retained stats topic: per instance in a cluster, or they would overwrite each other.
    fn stats_topic(&self) -> String {
        match &self.members {
            Some(m) => format!("{}/{}", self.topics.stats(), lock(m).me()),
            None => self.topics.stats(),
        }
    }

    /// Applies the rate limits; false when the request must go no further (it was refused or dropped).
    /// Stops count toward the total only: dropping one would leave a viewer playing to nobody.
    async fn within_rate(&self, kind: RequestKind, reply_topic: Option<&str>) -> bool {
        let key = reply_topic.filter(|_| kind != RequestKind::Stop);
        let verdict = lock(&self.rate).check(key, Instant::now());
        match (verdict, key) {
            (ratelimit::Verdict::Allow, _) => true,
            (ratelimit::Verdict::RefuseOnce, Some(topic)) => {
                self.requests.rate_limited.fetch_add(1, Ordering::Relaxed);
                let message = format!(
                    "more than {} requests a minute from {}; wait before asking again",
                    self.config.limits.requests_per_minute,
                    ratelimit::requester(topic)
                );
                self.answer_error(kind, topic, ErrorCode::RateLimited, message).await;
                false
            }
            _ => {
                self.requests.rate_limited.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(kind = kind.as_str(), "request dropped by the rate limits");
                false
            }
        }
    }

    async fn refuse(&self, kind: RequestKind, reply_topic: Option<&str>, error: ProtocolError) {
        match reply_topic {
            Some(topic) => self.answer_error(kind, topic, error.code(), error.to_string()).await,
            None => {
                // No valid reply topic: there is nowhere safe to answer.
                self.requests.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::info!(kind = kind.as_str(), code = error.code().as_str(), %error, "request refused, no reply topic to answer on");
            }
        }
    }

    /// Which stream a requested URL names: an allowed URL as the policy maps it, or an ingest endpoint's.
    fn allow(&self, url: &str) -> Result<String, String> {
        if let Some(name) = crate::ingest::name_of(url) {
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
        if crate::ingest::name_of(url).is_some() {
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
        let mut config = self.config.pipeline_for(&url);
        config.source.listen = true;
        let srt = endpoint.config.protocol == crate::ingest::IngestProtocol::Srt;
        if srt {
            config.source.passphrase = endpoint.config.key.clone().map(crate::media::config::Secret);
        }
        let (client, qos, capacity) = (self.client.clone(), self.qos, self.config.limits.viewer_queue_fragments);
        let source_url = endpoint.internal_url();
        self.start_stream(&url, None, || {
            Stream::new(url.clone(), self.stream_topics(&url), config, client, qos, capacity).pushed(source_url, srt)
        })
    }

    /// Finds the running stream for an allowed URL or starts it for `requester`.
    fn stream_for(self: &Arc<Self>, url: &str, requester: Option<&str>) -> Result<Arc<Stream>, String> {
        let (config, client, qos) = (self.config.pipeline_for(url), self.client.clone(), self.qos);
        let capacity = self.config.limits.viewer_queue_fragments;
        let topics = self.stream_topics(url);
        self.start_stream(url, requester, || Stream::new(url.to_string(), topics, config, client, qos, capacity))
    }

    /// The topics of the stream of an allowed URL (protocol v2).
    fn stream_topics(&self, url: &str) -> crate::protocol::StreamTopics {
        crate::protocol::StreamTopics::new(self.topics.prefix(), &self.ids.id_of(url))
    }

    /// The running stream for `url`, or a new one from `make`, within the stream limits: in all, and of the
    /// streams `starter` started that still run. The stream's task is watched: if it panics, its viewers get
    /// an error and the registry forgets it, so the next play starts afresh.
    fn start_stream(
        self: &Arc<Self>,
        url: &str,
        starter: Option<&str>,
        make: impl FnOnce() -> Stream,
    ) -> Result<Arc<Stream>, String> {
        let limits = &self.config.limits;
        let mut streams = lock(&self.streams);
        if let Some(s) = streams.get(url).filter(|s| s.is_alive()) {
            return Ok(Arc::clone(s));
        }
        let running = streams.values().filter(|s| s.is_alive()).count();
        if running >= limits.max_streams {
            return Err(format!("the server already runs its maximum of {running} streams"));
        }
        if let Some(who) = starter {
            let theirs = streams.values().filter(|s| s.is_alive() && s.starter() == Some(who)).count();
            if theirs >= limits.max_streams_per_requester {
                return Err(format!(
                    "{who} already started {theirs} streams that still run, the most one page may; wait for them \
                     to stop ({} s after their last viewer)",
                    limits.linger_secs
                ));
            }
        }
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
    fn forget(&self, stream: &Arc<Stream>) {
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
        }
        self.announce();
        tracing::info!(url = %redact(&stream.url), "stream stopped");
    }

    async fn describe(self: Arc<Self>, request: DescribeRequest) {
        self.requests.describe.fetch_add(1, Ordering::Relaxed);
        let kind = RequestKind::Describe;
        // A JSON reply on a viewer's media topic (or inside it) would corrupt that viewer's stream.
        let taken = lock(&self.viewers).contains_key(&request.reply_topic);
        if taken || self.nesting_conflict(&request.reply_topic).is_some() {
            self.requests.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(reply_topic = %request.reply_topic, "describe refused, not answered: its reply topic belongs to a viewer");
            return;
        }
        let url = match self.allow(&request.url) {
            Ok(url) => url,
            Err(m) => return self.answer_error(kind, &request.reply_topic, ErrorCode::ForbiddenUrl, m).await,
        };
        let stream = match self.stream_of(&url, kind, Some(ratelimit::requester(&request.reply_topic))) {
            Ok(s) => s,
            Err((code, m)) => return self.answer_error(kind, &request.reply_topic, code, m).await,
        };
        stream.touch();
        let limit = self.config.pipeline_for(&url).source.connect_timeout() + Duration::from_secs(5);
        let mut phase = stream.phase();
        let outcome = tokio::time::timeout(limit, async {
            loop {
                match phase.borrow_and_update().clone() {
                    Phase::Ready(info) => return Ok(info),
                    Phase::Failed { code, message } => return Err((code, message)),
                    Phase::Ended => return Err((ErrorCode::SourceEnded, "the stream ended".to_string())),
                    Phase::Starting | Phase::Reconnecting { .. } => {}
                }
                if phase.changed().await.is_err() {
                    return Err((ErrorCode::InternalError, "the stream vanished".to_string()));
                }
            }
        })
        .await;
        match outcome {
            Ok(Ok(info)) => {
                stream.touch();
                let reply = DescribeReply::new(&request.url, &info, &stream.topics());
                self.publish_json(request.reply_topic, &reply, false).await;
            }
            Ok(Err((code, message))) => self.answer_error(kind, &request.reply_topic, code, message).await,
            Err(_) => {
                let message = format!("no picture from the source within {} s", limit.as_secs());
                self.answer_error(kind, &request.reply_topic, ErrorCode::SourceTimeout, message).await;
            }
        }
    }

    async fn play(self: Arc<Self>, request: PlayRequest) {
        self.requests.play.fetch_add(1, Ordering::Relaxed);
        let kind = RequestKind::Play;
        let shared = request.shared();
        let topic = request.reply_topic;
        let url = match self.allow(&request.url) {
            Ok(url) => url,
            Err(m) => return self.answer_error(kind, &topic, ErrorCode::ForbiddenUrl, m).await,
        };
        if let Some(message) = self.nesting_conflict(&topic) {
            // Its status topic lies inside another viewer's subscription: refuse without answering there.
            self.requests.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::info!(kind = kind.as_str(), reply_topic = %topic, %message, "request refused, not answered");
            return;
        }
        let requester = ratelimit::requester(&topic);
        // A new viewer (not a renewal) must fit in its requester's share.
        let (known, theirs) = {
            let viewers = lock(&self.viewers);
            (viewers.contains_key(&topic), viewers.keys().filter(|t| ratelimit::requester(t) == requester).count())
        };
        let most = self.config.limits.max_viewers_per_requester;
        if !known && theirs >= most {
            let message = format!("{requester} already plays {theirs} streams, the most one page may; stop one first");
            return self.answer_error(kind, &topic, ErrorCode::Overloaded, message).await;
        }
        let stream = match self.stream_of(&url, kind, Some(requester)) {
            Ok(s) => s,
            Err((code, m)) => return self.answer_error(kind, &topic, code, m).await,
        };
        let previous = lock(&self.viewers).insert(topic.clone(), url.clone());
        match previous {
            // Playing again what it already plays renews the viewer; delivery goes on undisturbed.
            Some(old) if old == url && stream.has_viewer(&topic) => {
                stream.renew_viewer(&topic);
                return;
            }
            Some(old) if old != url => {
                // The topic moves to the new stream: the old delivery ends silently, or its last fragments
                // and an `ended` could land after the new init segment.
                if let Some(old_stream) = lock(&self.streams).get(&old) {
                    old_stream.remove_viewer(&topic, None);
                }
            }
            _ => {}
        }
        let delivery = if shared { stream::core::Delivery::Shared } else { stream::core::Delivery::Direct };
        if !stream.add_viewer(&topic, delivery, self.config.limits.max_viewers_per_stream) {
            lock(&self.viewers).remove(&topic);
            let message =
                format!("the stream already has its maximum of {} viewers", self.config.limits.max_viewers_per_stream);
            return self.answer_error(kind, &topic, ErrorCode::Overloaded, message).await;
        }
        tracing::info!(url = %redact(&url), reply_topic = %topic, viewers = stream.viewer_count(), "viewer joined");
    }

    /// A reply topic nested in another viewer's (or the other way round) would receive that viewer's media too.
    fn nesting_conflict(&self, topic: &str) -> Option<String> {
        let viewers = lock(&self.viewers);
        viewers.keys().find(|other| {
            *other != topic && (topic.starts_with(&format!("{other}/")) || other.starts_with(&format!("{topic}/")))
        })?;
        Some("the reply topic is nested in another viewer's reply topic (or contains one)".to_string())
    }

    fn stop(&self, request: StopRequest) {
        self.requests.stop.fetch_add(1, Ordering::Relaxed);
        let Some(url) = lock(&self.viewers).remove(&request.reply_topic) else { return };
        if let Some(stream) = lock(&self.streams).get(&url) {
            stream.remove_viewer(&request.reply_topic, Some(EndReason::Stopped));
            tracing::info!(reply_topic = %request.reply_topic, viewers = stream.viewer_count(), "viewer left");
        }
    }

    async fn sweep_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tick.tick().await;
            self.sweep();
        }
    }

    /// Stops streams nobody watched for the linger time and ends viewers that did not renew in time.
    fn sweep(&self) {
        lock(&self.rate).forget_idle(Instant::now());
        let streams: Vec<Arc<Stream>> = lock(&self.streams).values().cloned().collect();
        let linger = self.config.limits.linger();
        for stream in streams {
            if let Some(timeout) = self.config.limits.viewer_timeout() {
                for topic in stream.expire_viewers(timeout) {
                    lock(&self.viewers).remove(&topic);
                    tracing::info!(reply_topic = %topic, "viewer timed out");
                }
            }
            // A stream still opening its source has describes waiting on it; it fails by its own timeout.
            let starting = matches!(*stream.phase().borrow(), Phase::Starting);
            let unwatched = stream.viewer_count() == 0 && !stream.is_pinned();
            if !starting && unwatched && stream.idle_for().is_some_and(|idle| idle >= linger) {
                stream.stop();
            }
        }
    }

    async fn publish_stats_forever(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let stats = self.stats();
            self.publish_json(self.stats_topic(), &stats, true).await;
        }
    }

    /// The stats message: streams, viewers, drops, latency, process CPU and memory.
    pub fn stats(&self) -> serde_json::Value {
        let streams: Vec<_> = lock(&self.streams).values().map(|s| s.stats(redact(&s.url))).collect();
        let (rss_kib, threads) = stats::memory_and_threads();
        let cpu = lock(&self.cpu).sample();
        serde_json::json!({
            "version": crate::protocol::PROTOCOL_VERSION,
            "uptime_secs": self.started.elapsed().as_secs(),
            "streams": streams,
            "viewers": streams.iter().map(|s| s.viewers).sum::<usize>(),
            "requests": &self.requests,
            "process": {
                "cpu_percent": cpu,
                "rss_kib": rss_kib,
                "threads": threads,
                "bytes_written": stats::bytes_written(None),
            },
            "gateway": { "shed_fragments": self.gateway_shed.load(Ordering::Relaxed) },
            "ingest": self.ingest.iter().map(|e| e.stats()).collect::<Vec<_>>(),
        })
    }

    /// Whether the server is shutting down.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    async fn shutdown(&self) {
        tracing::info!("shutting down");
        self.closing.store(true, Ordering::SeqCst);
        let streams: Vec<Arc<Stream>> = lock(&self.streams).values().cloned().collect();
        for stream in &streams {
            stream.shutdown();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lock(&self.streams).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Clear the retained lists: nobody serves them any more (in a cluster, unless other instances do).
        let alone = match &self.members {
            Some(m) => {
                let id = lock(m).me().to_string();
                let _ = self.client.publish(self.topics.instance(&id), QoS::AtLeastOnce, true, Vec::new()).await;
                lock(m).count() == 1
            }
            None => true,
        };
        if alone {
            let _ = self.client.publish(self.topics.sources(), QoS::AtLeastOnce, true, Vec::new()).await;
        }
        let _ = self.client.publish(self.stats_topic(), QoS::AtLeastOnce, true, Vec::new()).await;
        let _ = self.client.disconnect().await;
        if !self.ingest.is_empty() {
            ingest::remove_socket_dir();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
