//! `mqtt-video serve`: the MQTT server. Control requests arrive on `<prefix>/{describe,play,stop}`; each
//! allowed source runs as one shared [`stream::Stream`]; media goes to every viewer's own reply topic.

pub mod admission;
pub mod assets;
pub mod broker_client;
pub mod cluster;
pub mod embedded_broker;
pub mod gateway;
mod guarded;
pub mod health;
pub mod homeassistant;
pub mod ingest;
mod intake;
pub mod metrics;
pub mod mqtt;
mod ownership;
mod registry;
mod requests;
pub mod snapshots;
pub mod stats;
pub mod stream;
pub mod supervise;
mod talk;
pub mod viewer;

use crate::config::BrokerProtocol;
use crate::config::Config;
use mqtt_video_wire::policy::{redact, Policy, PolicyError};
use mqtt_video_wire::protocol::{source_entry_topic, RequestLimits, TopicError, Topics};
use rumqttc::{AsyncClient, QoS};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use stream::Stream;
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
    /// `broker.embedded` is set and the broker could not start.
    #[error(transparent)]
    EmbeddedBroker(#[from] embedded_broker::EmbeddedBrokerError),
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
    client: broker_client::Client,
    streams: Mutex<HashMap<String, Arc<Stream>>>,
    /// Which stream each reply topic watches.
    viewers: Mutex<HashMap<String, String>>,
    requests: RequestCounters,
    started: Instant,
    cpu: Mutex<stats::CpuMeter>,
    /// The pipelines' measured CPU, for admission against the CPU budget.
    admission: Mutex<admission::Ledger>,
    rate: Mutex<mqtt_video_wire::ratelimit::RateLimiter>,
    /// The instances sharing the requests, with `[cluster] enabled`.
    members: Option<Mutex<cluster::Members>>,
    /// Push ingest endpoints.
    ingest: Vec<Arc<ingest::Endpoint>>,
    /// The streams' ids, which name their topics.
    ids: stream::ids::StreamIds,
    /// Fragments the gateway shed for browsers that could not keep up.
    pub(crate) gateway_shed: Arc<AtomicU64>,
    /// How media fits the broker's packet limit.
    pieces: viewer::Pieces,
    /// Set when shutting down: nothing new starts.
    closing: std::sync::atomic::AtomicBool,
    /// The cameras someone talks to.
    talk: talk::Talk,
}

/// The hub, for gateway routes bound before it exists (`/metrics`); set once it does.
pub(crate) type LateHub = Arc<std::sync::OnceLock<Arc<Hub>>>;

/// Locks a mutex whose data stays usable after a panic elsewhere (plain state, no invariants spanning a lock).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the server until SIGINT/SIGTERM.
pub async fn run(mut config: Config) -> Result<(), ServerError> {
    if config.broker.embedded {
        // The server, its gateway and everyone else then use this broker as they would an external one.
        let at = embedded_broker::start(config.broker.embedded_listen)?;
        config.broker.host = at.ip().to_string();
        config.broker.port = at.port();
    }
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
        if config.snapshots.http && config.topics.guarded {
            // A plain HTTP GET knows no broker user: it would show any camera to anyone.
            tracing::warn!("snapshots.http is off because topics.guarded is on");
        } else if config.snapshots.http {
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
            let path = &config.gateway.path;
            // Tests and scripts read the address from the first URL of this line.
            match gateway.fingerprint() {
                Some(fingerprint) => tracing::info!(
                    "gateway: the page is at http://{addr}/ and https://{addr}/ (one port), MQTT over WebSocket at \
                     ws://{addr}{path} and wss://{addr}{path}; certificate SHA-256 {fingerprint}"
                ),
                None => {
                    tracing::info!("gateway: the page is at http://{addr}/, MQTT over WebSocket at ws://{addr}{path}")
                }
            }
        }
        tasks.spawn("gateway", gateway.serve());
    }
    // Ingest ports are bound before anything else runs: a port in use is a start-up error, not a log line.
    let mut endpoints = Vec::new();
    for endpoint in &config.ingest {
        endpoints.push(ingest::bind(endpoint.clone()).await?);
    }
    let (v4, eventloop4) = AsyncClient::new(options.0, 4096);
    let (v5, eventloop5) = rumqttc::v5::AsyncClient::new(options.1, 4096);
    let five = Arc::new(std::sync::atomic::AtomicBool::new(config.broker.protocol != BrokerProtocol::V311));
    let client = broker_client::Client::new(v4, v5, Arc::clone(&five));
    let loops = mqtt::EventLoops::new(eventloop4, eventloop5);
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
        admission: Mutex::default(),
        members: cluster_on.then(|| Mutex::new(cluster::Members::new(&client_id))),
        rate: Mutex::new(mqtt_video_wire::ratelimit::RateLimiter::new(
            config.limits.requests_per_minute,
            config.limits.requests_per_second,
            Instant::now(),
        )),
        ingest: endpoints.iter().map(|(e, _)| Arc::clone(e)).collect(),
        ids: stream::ids::StreamIds::new(&config.named_sources(), &config.ingest)
            .with_requester_secret(config.broker.password.as_deref()),
        gateway_shed,
        closing: Default::default(),
        talk: Default::default(),
        pieces: viewer::Pieces {
            max_packet: config.broker.max_packet_bytes,
            broker_limit: Arc::default(),
            log: Arc::default(),
        },
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
        mqtt::drive(
            loops,
            client,
            mqtt::Session {
                topics,
                broker: hub.config.broker.clone(),
                tx,
                health,
                cluster: cluster_on,
                talk: hub.config.sources.iter().any(|e| e.talk),
                publishes: Arc::clone(&hub.pieces.log),
                broker_limit: Arc::clone(&hub.pieces.broker_limit),
                five,
            },
        ),
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
                Some(mqtt::SessionEvent::Talk(id, payload)) => hub.talk_frame(&id, &payload),
                Some(mqtt::SessionEvent::Request(kind, payload)) => {
                    // Decided and applied here, one at a time in the broker's order, so that a page's
                    // requests take effect in the order it sent them (a stop after the play before it).
                    // Only what waits runs on, in a task of its own: publishing the answer, and a
                    // describe's wait for its source, which can take seconds and must hold up nobody.
                    // Deciding never waits (no await, short locks) and takes microseconds, so one line
                    // of decisions is no bottleneck; a worker per requester would order a page's
                    // requests no better, and would need a queue, a task and a refusal of its own for
                    // each page, where the rate limits already refuse a flooding page (`rate_limited`)
                    // and the total cap and this channel's bound drop the rest (docs/design.md).
                    if let Some(followup) = hub.decide(kind, &payload, Instant::now()) {
                        tokio::spawn(Arc::clone(&hub).follow_up(followup));
                    }
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
    /// Guarded, the list names none: each source is an entry of its own under its stream's topics
    /// (`<prefix>/live/<id>/source`), so that the broker gives each login the entries of what it may watch.
    pub(crate) async fn publish_sources(&self) {
        #[derive(Serialize)]
        struct Sources {
            version: u32,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            guarded: bool,
            sources: Vec<mqtt_video_wire::policy::OfferedSource>,
        }
        let mut offered = self.policy.offered();
        offered.extend(self.ingest.iter().filter(|e| e.is_live()).map(|e| mqtt_video_wire::policy::OfferedSource {
            name: e.config.name.clone(),
            url: e.url(),
            description: e.config.description.clone(),
        }));
        let guarded = self.guarded();
        if guarded {
            for (topic, entry) in self.source_entries(&offered) {
                match entry {
                    Some(source) => self.publish_json(topic, source, true).await,
                    None => self.clear_retained(topic).await,
                }
            }
            offered.clear();
        }
        let sources = Sources { version: mqtt_video_wire::protocol::PROTOCOL_VERSION, guarded, sources: offered };
        self.publish_json(self.topics.sources(), &sources, true).await;
    }

    /// Guarded: each source's own retained entry topic and what goes there (`None`: an ingest endpoint
    /// without a publisher, whose entry is cleared).
    fn source_entries<'a>(
        &self,
        offered: &'a [mqtt_video_wire::policy::OfferedSource],
    ) -> Vec<(String, Option<&'a mqtt_video_wire::policy::OfferedSource>)> {
        let topic = |url: &str| source_entry_topic(self.topics.prefix(), &self.ids.id_of(url));
        let mut entries: Vec<_> =
            offered.iter().filter_map(|s| self.allow(&s.url).ok().map(|url| (topic(&url), Some(s)))).collect();
        entries.extend(self.ingest.iter().filter(|e| !e.is_live()).map(|e| (topic(&e.url()), None)));
        entries
    }

    async fn clear_retained(&self, topic: String) {
        if let Err(e) = self.client.publish(topic, QoS::AtLeastOnce, true, Vec::new()).await {
            tracing::warn!(error = %e, "could not queue a publish");
        }
    }

    /// The retained stats topic: per instance in a cluster, or they would overwrite each other.
    fn stats_topic(&self) -> String {
        match &self.members {
            Some(m) => format!("{}/{}", self.topics.stats(), lock(m).me()),
            None => self.topics.stats(),
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
        let streams: Vec<_> = self.stream_stats(|s| redact(&s.url));
        let (transcodes, transcode_cpu, refused) = self.admission_figures();
        let (rss_kib, threads) = stats::memory_and_threads();
        let cpu = lock(&self.cpu).sample();
        serde_json::json!({
            "version": mqtt_video_wire::protocol::PROTOCOL_VERSION,
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
            "admission": {
                "cpu_budget_percent": self.config.limits.cpu_budget_percent,
                "transcodes": transcodes,
                "transcodes_cpu_percent": transcode_cpu,
                "refused": refused,
            },
            "ingest": self.ingest.iter().map(|e| e.stats()).collect::<Vec<_>>(),
        })
    }

    /// Every stream's figures, its CPU included; `shown` gives the URL they show.
    pub(crate) fn stream_stats(&self, shown: impl Fn(&Stream) -> String) -> Vec<stream::StreamStats> {
        let streams: Vec<Arc<Stream>> = lock(&self.streams).values().cloned().collect();
        let ledger = lock(&self.admission);
        streams
            .iter()
            .map(|s| {
                let mut st = s.stats(shown(s));
                st.cpu_percent = ledger.cost_of(&s.url);
                st
            })
            .collect()
    }

    /// The CPU the stream of `url` is measured to use, percent of one core.
    pub(crate) fn stream_cpu(&self, url: &str) -> Option<f64> {
        lock(&self.admission).cost_of(url)
    }

    /// The running transcodes, what they use (percent of one core) and how many were refused.
    pub(crate) fn admission_figures(&self) -> (usize, f64, u64) {
        let ledger = lock(&self.admission);
        let (n, used) = ledger.transcodes();
        (n, used, ledger.refused)
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
            if self.guarded() {
                let urls = self.policy.offered().into_iter().filter_map(|s| self.allow(&s.url).ok());
                let urls: Vec<String> = urls.chain(self.ingest.iter().map(|e| e.url())).collect();
                for url in urls {
                    self.clear_retained(source_entry_topic(self.topics.prefix(), &self.ids.id_of(&url))).await;
                }
            }
        }
        let _ = self.client.publish(self.stats_topic(), QoS::AtLeastOnce, true, Vec::new()).await;
        let _ = self.client.disconnect().await;
        if !self.ingest.is_empty() {
            ingest::remove_socket_dir();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
