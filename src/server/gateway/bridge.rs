//! One browser's WebSocket bridged to its own TCP connection to the broker, byte for byte, until either side
//! closes, the browser stays silent past its deadline (see [`super::liveness`]), or it sends something other
//! than MQTT.

use super::addresses::Slot;
use super::liveness::{Liveness, Silence};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bytes read from the broker per WebSocket message at most; MQTT over WebSocket need not align packets.
const READ_CHUNK: usize = 256 * 1024;
/// Time allowed to reach the broker for a new browser connection.
const BROKER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What every bridged connection shares.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The broker's host and port.
    pub broker: (String, u16),
    /// Time from the upgrade to a whole MQTT CONNECT.
    pub connect_timeout: Duration,
    /// Longest silence from a connected browser.
    pub max_idle: Duration,
    /// Largest message (and CONNECT) a browser may send.
    pub max_message_bytes: usize,
}

/// Copies bytes both ways until either side closes or the browser misses its deadline; `slot` (its
/// address's count) and `permit` (the connection limit) are held until then.
pub async fn pump<P: Send>(config: &BridgeConfig, ws: WebSocket, slot: Option<Slot>, permit: P) {
    let connect = TcpStream::connect((config.broker.0.as_str(), config.broker.1));
    let tcp = match tokio::time::timeout(BROKER_CONNECT_TIMEOUT, connect).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return close(ws, 1013, &format!("broker unreachable: {e}")).await,
        Err(_) => return close(ws, 1013, "broker did not answer").await,
    };
    // Each MQTT packet is latency-sensitive media: never wait to coalesce.
    let _ = tcp.set_nodelay(true);
    let (mut from_broker, mut to_broker) = tcp.into_split();
    let (mut to_browser, mut from_browser) = ws.split();
    let mut liveness =
        Liveness::new(Instant::now().into_std(), config.connect_timeout, config.max_idle, config.max_message_bytes);
    let upstream = async {
        loop {
            let deadline = Instant::from_std(liveness.deadline());
            let message = match tokio::time::timeout_at(deadline, from_browser.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(_) => break,
                Err(_) => {
                    let why = match liveness.silence() {
                        Silence::NoConnect => "no MQTT CONNECT in time",
                        Silence::Idle => "silent for longer than its keep-alive allows",
                    };
                    tracing::debug!(why, "gateway: closing a browser connection");
                    break;
                }
            };
            let now = Instant::now().into_std();
            match message {
                Message::Binary(bytes) => {
                    if let Err(e) = liveness.on_bytes(&bytes, now) {
                        tracing::debug!(error = %e, "gateway: closing a browser connection that is not MQTT");
                        break;
                    }
                    if to_broker.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                // MQTT over WebSocket is binary only; text is a protocol error.
                Message::Text(_) | Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => liveness.on_control(now),
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
    drop((slot, permit));
}

/// Closes a browser connection with a WebSocket close code and reason.
pub async fn close(mut ws: WebSocket, code: u16, reason: &str) {
    tracing::warn!(reason, "gateway: closing a browser connection");
    let frame = CloseFrame { code, reason: reason.chars().take(100).collect::<String>().into() };
    let _ = ws.send(Message::Close(Some(frame))).await;
}
