//! The gateway: serves the page over HTTPS and plain HTTP on one port, and bridges MQTT-over-WebSocket to
//! the broker's TCP port, byte for byte. Browsers speak real MQTT through it (the broker's auth and ACLs apply); it only ever connects
//! to the configured broker, so it is no open proxy. mosquitto's own WebSocket listener moves about 40 KB/s
//! (docs/design.md, section 4), far too little for video; this bridge adds about a millisecond.

mod addresses;
mod bridge;
mod certificate;
mod liveness;
pub mod probe;
pub mod tls;

use super::health::Health;
use crate::config::{ConfigError, GatewayConfig, PlainHttp};
use addresses::{Addresses, Slot};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use bridge::BridgeConfig;
use hyper_util::rt::{TokioIo, TokioTimer};
use mqtt_video_wire::plain_http;
use std::sync::Arc;
use std::time::Duration;
use tls::Tls;
use tokio::io::{AsyncRead, AsyncWrite};
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
    /// HTTPS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
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
    addresses: Arc<Addresses>,
}

/// How a request reached the gateway, for the handlers that care.
#[derive(Debug, Clone, Copy)]
struct Connection {
    /// Over TLS.
    secure: bool,
    /// From a trusted proxy or loopback.
    trusted_peer: bool,
}

/// A bound gateway, ready to serve.
pub struct Gateway {
    listener: TcpListener,
    router: Router,
    addresses: Arc<Addresses>,
    request_timeout: Duration,
    tls: Option<Tls>,
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
        let redirect = config.tls.enabled && config.tls.http == PlainHttp::Redirect;
        let page = super::assets::page_router(config.client_dir.as_deref())?
            .layer(axum::middleware::from_fn_with_state(redirect, redirect_plain));
        let listener =
            TcpListener::bind(addr).await.map_err(|error| GatewayError::Bind { addr: config.listen.clone(), error })?;
        let tls = if config.tls.enabled { Some(Tls::setup(&config.tls, addr.ip())?) } else { None };
        let addresses = Addresses::new(config.max_connections_per_address, config.trusted_proxies()?);
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
            addresses: Arc::clone(&addresses),
        });
        let router = Router::new()
            .route(&config.path, get(upgrade))
            .with_state(bridge)
            .route(TLS_INFO_PATH, get(tls_info).with_state(tls.clone()))
            .route(HEALTH_PATH, get(move || healthz(Arc::clone(&health))))
            .route(probe::PROBE_PATH, get(probe::probe))
            .merge(routes)
            .merge(page);
        Ok(Self { listener, router, addresses, request_timeout: Duration::from_secs(config.request_timeout_secs), tls })
    }

    /// The SHA-256 fingerprint of the certificate served now, with HTTPS on.
    pub fn fingerprint(&self) -> Option<String> {
        self.tls.as_ref().map(Tls::fingerprint)
    }

    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the task is dropped. Each connection counts against its address until it closes (a
    /// WebSocket included), and has `request_timeout` for its first byte, its TLS handshake and each
    /// request's headers, the first one and every one after an idle keep-alive alike: a socket that sends
    /// nothing is closed then. A connection whose first byte opens a TLS handshake is served HTTPS.
    pub async fn serve(self) {
        if let Some(tls) = &self.tls {
            tokio::spawn(tls.clone().watch());
        }
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
            // A second handle on the socket, for the bridge to size its send buffer as the path delivers
            // (what is in flight stays within that, so a path with a deep queue cannot hide seconds in it).
            let send_buffer = std::os::fd::AsFd::as_fd(&tcp)
                .try_clone_to_owned()
                .ok()
                .map(|fd| bridge::SendBuffer(Arc::new(socket2::Socket::from(fd))));
            let router = self.router.clone();
            let timeout = self.request_timeout;
            let tls = self.tls.clone();
            let trusted_peer = self.addresses.is_trusted(peer.ip());
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                let opens_tls = match tokio::time::timeout(timeout, tcp.peek(&mut first)).await {
                    Ok(Ok(1)) => first[0] == plain_http::TLS_HANDSHAKE,
                    _ => return, // closed, failed or silent: nothing to serve
                };
                let http = |secure| Http {
                    router,
                    slot,
                    timeout,
                    connection: Connection { secure, trusted_peer },
                    send_buffer,
                };
                match tls {
                    Some(tls) if opens_tls => match tokio::time::timeout(timeout, tls.acceptor().accept(tcp)).await {
                        Ok(Ok(stream)) => http(true).serve(stream, peer).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "gateway: TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "gateway: TLS handshake timed out"),
                    },
                    _ => http(false).serve(tcp, peer).await,
                }
            });
        }
    }
}

/// One connection's HTTP/1.1, over TCP or TLS.
struct Http {
    router: Router,
    slot: Slot,
    timeout: Duration,
    connection: Connection,
    send_buffer: Option<bridge::SendBuffer>,
}

impl Http {
    async fn serve<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(self, io: I, peer: std::net::SocketAddr) {
        let Self { router, slot, timeout, connection, send_buffer } = self;
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(slot.clone());
            request.extensions_mut().insert(connection);
            if let Some(buffer) = &send_buffer {
                request.extensions_mut().insert(buffer.clone());
            }
            router.clone().oneshot(request)
        });
        let served = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeout)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        if let Err(e) = served.await {
            tracing::debug!(%peer, error = %e, "gateway: connection ended");
        }
    }
}

/// Where the page learns whether the gateway serves HTTPS too (to offer it from a plain-HTTP origin).
pub const TLS_INFO_PATH: &str = "/tls.json";

async fn tls_info(
    State(tls): State<Option<Tls>>,
    connection: Option<Extension<Connection>>,
    headers: HeaderMap,
) -> Response {
    // Through a proxy speaking plain HTTP to the gateway, the browser's port is the proxy's: whether the
    // proxy serves HTTPS, and where, is its own business.
    let proxied = connection.is_some_and(|Extension(c)| c.trusted_peer && !c.secure);
    let body = match tls {
        Some(tls) if !proxied => {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            serde_json::json!({ "https": true, "port": plain_http::host_port(host), "fingerprint": tls.fingerprint() })
        }
        _ => serde_json::json!({ "https": false }),
    };
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// Sends a plain-HTTP page request from another machine to the same URL over HTTPS, where WebCodecs works
/// (`redirect` is off with `gateway.tls.http = "serve"` or without HTTPS). Loopback and trusted proxies are
/// served as they are: the first is a secure context already, the second decides the scheme itself.
async fn redirect_plain(State(redirect): State<bool>, request: Request, next: Next) -> Response {
    let plain_from_afar = request.extensions().get::<Connection>().is_some_and(|c| !c.secure && !c.trusted_peer);
    if redirect && plain_from_afar {
        let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok());
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Some(location) = plain_http::https_location(host, path) {
            // Temporary: a browser must not remember it past a configuration without HTTPS.
            return (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response();
        }
    }
    next.run(request).await
}

/// Where orchestrators (docker's HEALTHCHECK, Kubernetes probes) ask whether the server can serve.
pub const HEALTH_PATH: &str = "/healthz";

async fn healthz(health: Arc<Health>) -> Response {
    let status = if health.is_healthy() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(health.to_json())).into_response()
}

async fn upgrade(
    State(bridge): State<Arc<Bridge>>,
    slot: Option<Extension<Slot>>,
    connection: Option<Extension<Connection>>,
    send_buffer: Option<Extension<bridge::SendBuffer>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // Behind a trusted proxy every browser comes from the proxy's address: its WebSocket counts against the
    // client address the proxy forwards, so one client still cannot take the connection limit.
    let forwarded = connection
        .filter(|Extension(c)| c.trusted_peer)
        .and_then(|_| headers.get("x-forwarded-for")?.to_str().ok().map(str::to_owned))
        .and_then(|value| bridge.addresses.forwarded_client(&value));
    let forwarded_slot = match forwarded {
        Some(client) => match bridge.addresses.admit(client) {
            Some(slot) => Some(slot),
            None => {
                tracing::debug!(%client, "gateway: WebSocket refused, the forwarded address has its fill of connections");
                return (StatusCode::TOO_MANY_REQUESTS, "too many connections from your address").into_response();
            }
        },
        None => None,
    };
    let Ok(permit) = Arc::clone(&bridge.connections).try_acquire_owned() else {
        tracing::warn!("gateway: connection refused, the connection limit is reached");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    let max = bridge.config.max_message_bytes;
    let slot = forwarded_slot.or(slot.map(|Extension(slot)| slot));
    let send_buffer = send_buffer.map(|Extension(b)| b);
    ws.protocols(["mqtt"])
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move { bridge::pump(&bridge.config, socket, slot, permit, send_buffer).await })
}
