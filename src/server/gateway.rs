//! The gateway: serves the page over HTTP and bridges MQTT-over-WebSocket to the broker's TCP port, byte
//! for byte. Browsers speak real MQTT through it (the broker's auth and ACLs apply); it only ever connects
//! to the configured broker, so it is no open proxy. mosquitto's own WebSocket listener moves about 40 KB/s
//! (docs/design.md, section 4), far too little for video; this bridge adds about a millisecond.

use super::health::Health;
use crate::config::{ConfigError, GatewayConfig};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Bytes read from the broker per WebSocket message at most; MQTT over WebSocket need not align packets.
const READ_CHUNK: usize = 256 * 1024;
/// Time allowed to reach the broker for a new browser connection.
const BROKER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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

struct Bridge {
    broker: (String, u16),
    connections: Arc<Semaphore>,
    max_message_bytes: usize,
}

/// A bound gateway, ready to serve.
pub struct Gateway {
    listener: TcpListener,
    router: Router,
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
    ) -> Result<Self, GatewayError> {
        let addr = config.listen_addr()?;
        let page = super::assets::page_router(config.client_dir.as_deref())?;
        let listener =
            TcpListener::bind(addr).await.map_err(|error| GatewayError::Bind { addr: config.listen.clone(), error })?;
        let bridge = Arc::new(Bridge {
            broker: (broker_host.to_string(), broker_port),
            connections: Arc::new(Semaphore::new(config.max_connections)),
            max_message_bytes: config.max_message_bytes,
        });
        let router = Router::new()
            .route(&config.path, get(upgrade))
            .with_state(bridge)
            .route(HEALTH_PATH, get(move || healthz(Arc::clone(&health))))
            .merge(routes)
            .merge(page);
        Ok(Self { listener, router })
    }

    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the task is dropped.
    pub async fn serve(self) {
        // Each WebSocket frame is a piece of live media: Nagle would hold small ones back.
        let listener = self.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        if let Err(e) = axum::serve(listener, self.router).await {
            tracing::error!(error = %e, "gateway stopped");
        }
    }
}

/// Where orchestrators (docker's HEALTHCHECK, Kubernetes probes) ask whether the server can serve.
pub const HEALTH_PATH: &str = "/healthz";

async fn healthz(health: Arc<Health>) -> Response {
    let status = if health.is_healthy() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(health.to_json())).into_response()
}

async fn upgrade(State(bridge): State<Arc<Bridge>>, ws: WebSocketUpgrade) -> Response {
    let Ok(permit) = Arc::clone(&bridge.connections).try_acquire_owned() else {
        tracing::warn!("gateway: connection refused, the connection limit is reached");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    ws.protocols(["mqtt"])
        .max_message_size(bridge.max_message_bytes)
        .max_frame_size(bridge.max_message_bytes)
        .on_upgrade(move |socket| async move {
            bridge.pump(socket).await;
            drop(permit);
        })
}

impl Bridge {
    /// Copies bytes both ways until either side closes, then closes the other.
    async fn pump(&self, ws: WebSocket) {
        let connect = TcpStream::connect((self.broker.0.as_str(), self.broker.1));
        let tcp = match tokio::time::timeout(BROKER_CONNECT_TIMEOUT, connect).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return close_unavailable(ws, &format!("broker unreachable: {e}")).await,
            Err(_) => return close_unavailable(ws, "broker did not answer").await,
        };
        // Each MQTT packet is latency-sensitive media: never wait to coalesce.
        let _ = tcp.set_nodelay(true);
        let (mut from_broker, mut to_broker) = tcp.into_split();
        let (mut to_browser, mut from_browser) = ws.split();
        let upstream = async {
            while let Some(Ok(message)) = from_browser.next().await {
                match message {
                    Message::Binary(bytes) => {
                        if to_broker.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                    // MQTT over WebSocket is binary only; text is a protocol error.
                    Message::Text(_) | Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
            let _ = to_broker.shutdown().await;
        };
        let downstream = async {
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                match from_broker.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to_browser.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = to_browser.send(Message::Close(None)).await;
        };
        tokio::select! {
            () = upstream => {}
            () = downstream => {}
        }
    }
}

async fn close_unavailable(mut ws: WebSocket, reason: &str) {
    tracing::warn!(reason, "gateway: closing a browser connection");
    let frame =
        axum::extract::ws::CloseFrame { code: 1013, reason: reason.chars().take(100).collect::<String>().into() };
    let _ = ws.send(Message::Close(Some(frame))).await;
}
