//! The gateway: serves the page over HTTP and bridges MQTT-over-WebSocket to the broker's TCP port, byte
//! for byte. Browsers speak real MQTT through it (the broker's auth and ACLs apply); it only ever connects
//! to the configured broker, so it is no open proxy. mosquitto's own WebSocket listener moves about 40 KB/s
//! (docs/design.md, section 4), far too little for video; this bridge adds about a millisecond.

mod addresses;
mod bridge;
mod liveness;
pub mod mqtt_frames;
pub mod shedding;

use super::health::Health;
use crate::config::{ConfigError, GatewayConfig};
use addresses::{Addresses, Slot};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use bridge::BridgeConfig;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Unsent bytes the kernel may hold for a browser (TCP_NOTSENT_LOWAT): about 60 ms of a 2 Mbit/s link.
const UNSENT_LIMIT: u32 = 16 * 1024;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The page folder configured cannot be served.
    #[error(transparent)]
    Page(#[from] super::assets::AssetsError),
    /// The listen address could not be bound.
    #[error("gateway: cannot listen on {addr}: {error}")]
    Bind {
        /// The configured address.
        addr: String,
        /// What the OS said.
        error: std::io::Error,
    },
}

/// What the WebSocket endpoint shares.
struct Bridge {
    config: BridgeConfig,
    connections: Arc<Semaphore>,
}

/// A bound gateway, ready to serve.
pub struct Gateway {
    listener: TcpListener,
    router: Router,
    addresses: Arc<Addresses>,
    request_timeout: Duration,
}

impl Gateway {
    /// Binds the listen address now, so that a taken port fails the server's start, not a later task.
    /// `routes` are served beside the bridge and the page (`/metrics`, `/snapshot/...`).
    pub async fn bind(
        config: &GatewayConfig,
        broker_host: &str,
        broker_port: u16,
        health: Arc<Health>,
        routes: Router,
        topics_prefix: &str,
        shed: Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<Self, GatewayError> {
        let addr = config.listen_addr()?;
        let page = super::assets::page_router(config.client_dir.as_deref())?;
        let listener =
            TcpListener::bind(addr).await.map_err(|error| GatewayError::Bind { addr: config.listen.clone(), error })?;
        let bridge = Arc::new(Bridge {
            config: BridgeConfig {
                broker: (broker_host.to_string(), broker_port),
                connect_timeout: Duration::from_secs(config.connect_timeout_secs),
                max_idle: Duration::from_secs(config.max_idle_secs),
                max_message_bytes: config.max_message_bytes,
                live_prefix: format!("{topics_prefix}/live/"),
                shed,
            },
            connections: Arc::new(Semaphore::new(config.max_connections)),
        });
        let router = Router::new()
            .route(&config.path, get(upgrade))
            .with_state(bridge)
            .route(HEALTH_PATH, get(move || healthz(Arc::clone(&health))))
            .merge(routes)
            .merge(page);
        Ok(Self {
            listener,
            router,
            addresses: Addresses::new(config.max_connections_per_address, config.trusted_proxies()?),
            request_timeout: Duration::from_secs(config.request_timeout_secs),
        })
    }

    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the task is dropped. Each connection counts against its address until it closes (a
    /// WebSocket included), and has `request_timeout` for each request's headers, the first one and every
    /// one after an idle keep-alive alike: a socket that sends nothing is closed then.
    pub async fn serve(self) {
        loop {
            let (tcp, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: keep listening.
                    tracing::warn!(error = %e, "gateway: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = self.addresses.admit(peer.ip()) else {
                tracing::debug!(%peer, "gateway: connection refused, its address has its fill of connections");
                continue;
            };
            // Each WebSocket frame is a piece of live media: Nagle would hold small ones back. Little unsent
            // data in the kernel keeps a slow browser's backlog in the gateway's queue, where it is seen and
            // shed, rather than in a send buffer of a few MB that would hide seconds of delay; unlike a small
            // SO_SNDBUF it leaves room for what is in flight, so a distant browser is not held to sndbuf / RTT.
            let _ = tcp.set_nodelay(true);
            let _ = socket2::SockRef::from(&tcp).set_tcp_notsent_lowat(UNSENT_LIMIT);
            let router = self.router.clone();
            let timeout = self.request_timeout;
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(slot.clone());
                    router.clone().oneshot(request)
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(timeout)
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades();
                if let Err(e) = connection.await {
                    tracing::debug!(%peer, error = %e, "gateway: connection ended");
                }
            });
        }
    }
}

/// Where orchestrators (docker's HEALTHCHECK, Kubernetes probes) ask whether the server can serve.
pub const HEALTH_PATH: &str = "/healthz";

async fn healthz(health: Arc<Health>) -> Response {
    let status = if health.is_healthy() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(health.to_json())).into_response()
}

async fn upgrade(State(bridge): State<Arc<Bridge>>, slot: Option<Extension<Slot>>, ws: WebSocketUpgrade) -> Response {
    let Ok(permit) = Arc::clone(&bridge.connections).try_acquire_owned() else {
        tracing::warn!("gateway: connection refused, the connection limit is reached");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    let max = bridge.config.max_message_bytes;
    let slot = slot.map(|Extension(slot)| slot);
    ws.protocols(["mqtt"])
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move { bridge::pump(&bridge.config, socket, slot, permit).await })
}
