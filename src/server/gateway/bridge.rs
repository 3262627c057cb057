//! One browser's WebSocket bridged to its own TCP connection to the broker until either side closes, the
//! browser stays silent past its deadline (see [`super::liveness`]), or it sends something other than MQTT.
//! Browser to broker, bytes go as they come. Broker to browser, whole MQTT packets wait in the connection's
//! [`Shedder`], which sheds the stream topics' media for a browser whose link cannot carry it.

use super::addresses::Slot;
use super::liveness::{Liveness, Silence};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use mqtt_video_wire::backlog::{Kind, Limits, Shedder};
use mqtt_video_wire::mqtt_frames::{read_publish, Framer, Packet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Bytes read from the broker at a time.
const READ_CHUNK: usize = 256 * 1024;
/// Largest packet from the broker: a keyframe of a 4K stream is a few MB.
const MAX_DOWN_PACKET: usize = 64 << 20;
/// A browser this far behind (its oldest queued packet's wait and the path's queueing) loses the media of the
/// stream topics up to a keyframe that finds it short again: it stays within about a second of live on any
/// link. 600 ms lets a GOP that a link carries at 60 % of the stream's rate finish before the next is shed
/// (at 400 ms it was cut at three quarters, and the next shed too: 35-44 % of the frames shown, against 50 %).
const LIMITS: Limits =
    Limits { shed_after: Duration::from_millis(600), resume_under: Duration::from_millis(150), max_bytes: 32 << 20 };
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
    /// `<prefix>/live/`: the stream topics, whose media may be shed.
    pub live_prefix: String,
    /// Fragments shed for browsers that could not keep up, all connections together.
    pub shed: Arc<AtomicU64>,
}

impl BridgeConfig {
    /// What a packet from the broker is to the browser: media of a stream topic (QoS 0, not an init
    /// segment) may be shed; everything else must arrive.
    fn kind(&self, packet: &Packet, level: u8) -> Kind {
        match read_publish(packet, level) {
            Some((topic, 0, payload))
                if topic.starts_with(&self.live_prefix)
                    && topic.ends_with("/media")
                    && payload.get(4..8) != Some(b"ftyp") =>
            {
                Kind::Media { keyframe: mqtt_video_wire::fmp4::starts_with_keyframe(payload) }
            }
            _ => Kind::Keep,
        }
    }
}

/// The browser's socket, to size its send buffer by what the path delivers (`PathDelay::send_budget`).
#[derive(Clone)]
pub struct SendBuffer(pub Arc<socket2::Socket>);

impl SendBuffer {
    /// Sets the buffer to `bytes` unless the last size set is within a fifth of it (each change costs a
    /// system call, and the rate it comes from is noisy).
    fn resize(&self, bytes: usize, last: &mut Option<usize>) {
        if last.is_some_and(|l| l.abs_diff(bytes) * 5 < l) {
            return;
        }
        if let Err(e) = self.0.set_send_buffer_size(bytes) {
            tracing::debug!(error = %e, bytes, "gateway: cannot size a browser's send buffer");
        }
        *last = Some(bytes);
    }
}

/// Copies bytes both ways until either side closes or the browser misses its deadline; `slot` (its
/// address's count) and `permit` (the connection limit) are held until then. `send_buffer`: a second handle
/// on the connection's socket (none if it could not be made), sized as the path delivers.
pub async fn pump<P: Send>(
    config: &BridgeConfig,
    ws: WebSocket,
    slot: Option<Slot>,
    permit: P,
    send_buffer: Option<SendBuffer>,
) {
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
    // Shared by the three halves below, which run in this one task (the lock is never held across a wait).
    let level = AtomicU8::new(4);
    let queue = Mutex::new(Shedder::new(LIMITS));
    let lock = || queue.lock().unwrap_or_else(PoisonError::into_inner);
    let (more, broker_done) = (Notify::new(), AtomicBool::new(false));
    let upstream = async {
        let mut sized = None;
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
                    level.store(liveness.level(), Ordering::Relaxed);
                    if to_broker.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                // MQTT over WebSocket is binary only; text is a protocol error.
                Message::Text(_) | Message::Close(_) => break,
                Message::Ping(_) => liveness.on_control(now),
                // Answers to the gateway's own pings, which any WebSocket stack sends by itself: they time the
                // path, but say nothing of a page that stopped speaking MQTT.
                // Each answer may change what the path delivers, so the send buffer is sized here.
                Message::Pong(payload) => {
                    let budget = {
                        let mut q = lock();
                        q.path.pong(&payload, now);
                        q.path.send_budget()
                    };
                    if let (Some(budget), Some(buffer)) = (budget, &send_buffer) {
                        buffer.resize(budget, &mut sized);
                    }
                }
            }
        }
        let _ = to_broker.shutdown().await;
    };
    let from_broker_side = async {
        let mut framer = Framer::new(MAX_DOWN_PACKET);
        let mut buf = vec![0u8; READ_CHUNK];
        let mut packets = Vec::new();
        loop {
            let n = match from_broker.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if framer.push(&buf[..n], &mut packets).is_err() {
                break;
            }
            let now = Instant::now().into_std();
            let mut q = lock();
            let shed_before = q.shed;
            for p in packets.drain(..) {
                let kind = config.kind(&p, level.load(Ordering::Relaxed));
                if let Err(e) = q.push(kind, Bytes::from(p.bytes), now) {
                    tracing::debug!(error = %e, "gateway: closing a browser connection that reads nothing");
                    return;
                }
            }
            config.shed.fetch_add(q.shed - shed_before, Ordering::Relaxed);
            drop(q);
            more.notify_one();
        }
        broker_done.store(true, Ordering::Relaxed);
        more.notify_one();
        // The browser side sends what is left, then the close.
        std::future::pending::<()>().await;
    };
    let to_browser_side = async {
        loop {
            // A ping behind what the socket took: its answer times the path beyond it (`PathDelay`).
            let ping = lock().path.ping(Instant::now().into_std());
            if let Some(payload) = ping {
                if to_browser.send(Message::Ping(Bytes::copy_from_slice(&payload))).await.is_err() {
                    return;
                }
            }
            let next = lock().pop();
            match next {
                Some(packet) => {
                    let length = packet.len();
                    if to_browser.send(Message::Binary(packet)).await.is_err() {
                        return;
                    }
                    lock().path.wrote(length);
                }
                None if broker_done.load(Ordering::Relaxed) => break,
                None => {
                    let due = lock().path.next_ping();
                    match due {
                        Some(due) => tokio::select! {
                            () = more.notified() => {}
                            () = tokio::time::sleep_until(Instant::from_std(due)) => {}
                        },
                        None => more.notified().await,
                    }
                }
            }
        }
        let _ = to_browser.send(Message::Close(None)).await;
    };
    tokio::select! {
        () = upstream => {}
        () = from_broker_side => {}
        () = to_browser_side => {}
    }
    let shed = lock().shed;
    if shed > 0 {
        tracing::info!(shed, "gateway: a browser left; fragments shed for its link while it was connected");
    }
    drop((slot, permit));
}

/// Closes a browser connection with a WebSocket close code and reason.
pub async fn close(mut ws: WebSocket, code: u16, reason: &str) {
    tracing::warn!(reason, "gateway: closing a browser connection");
    let frame = CloseFrame { code, reason: reason.chars().take(100).collect::<String>().into() };
    let _ = ws.send(Message::Close(Some(frame))).await;
}
