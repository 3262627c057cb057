//! Push ingest endpoints at work: accept publishers (one at a time per endpoint), check RTMP stream keys,
//! and relay each publisher's bytes to its stream's libavformat listener on a loopback port of our own.
//!
//! Why a relay instead of letting libavformat listen on the public port: its listener takes one connection
//! and closes, so a second publisher would only meet a refused connection with nothing in our log; and its
//! RTMP server accepts any stream key.

use super::stream::Phase;
use super::{lock, Hub};
use crate::ingest::rtmp::{GateError, PublishGate};
use crate::ingest::{IngestEndpoint, IngestProtocol};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A pause after which bytes held back as a possible `publish` start go on (the publisher may be waiting).
const HELD_BYTES_PAUSE: Duration = Duration::from_millis(200);
/// How long a newcomer waits for a leaving publisher to free the endpoint before it is refused.
const SLOT_GRACE: Duration = Duration::from_millis(500);
/// How long the stream's pipeline may take to start listening for the relay.
const PIPELINE_LISTEN_WAIT: Duration = Duration::from_secs(5);

/// Why an endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The public port could not be bound.
    #[error("ingest {name:?}: cannot listen on {listen}: {source}")]
    Bind {
        /// Endpoint name.
        name: String,
        /// Address.
        listen: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Why a publisher's session ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("refused: {0}")]
    Refused(#[from] GateError),
    #[error("refused: sent no stream key within {0:?}")]
    NoKeyInTime(Duration),
    #[error("refused: {0}")]
    Unavailable(String),
    #[error("the stream closed it: it could not use what the publisher sent, or heard nothing in time (see the stream's log)")]
    PipelineClosed,
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// An endpoint in the stats message.
#[derive(Debug, serde::Serialize)]
pub struct EndpointStats {
    /// Endpoint name (`ingest://NAME`).
    pub name: String,
    /// `tcp`, `rtmp` or `srt`.
    pub protocol: &'static str,
    /// The address it listens on.
    pub listen: String,
    /// Whether a publisher's media plays (the source is offered).
    pub publishing: bool,
    /// The connected publisher's address (tcp and rtmp).
    pub publisher: Option<String>,
    /// Seconds since that publisher connected.
    pub publisher_secs: Option<u64>,
    /// Bytes relayed from the current or last publisher (tcp and rtmp).
    pub bytes: Option<u64>,
}

/// One configured endpoint and its publisher, if any.
pub struct Endpoint {
    /// Its settings.
    pub config: IngestEndpoint,
    /// The loopback port the stream's pipeline listens on for the relay.
    internal_port: u16,
    /// The connected publisher's address and since when.
    publisher: Mutex<Option<(SocketAddr, Instant)>>,
    /// Bytes relayed from the current (or last) publisher.
    bytes: AtomicU64,
    /// Whether a publisher's media plays: the source is offered only then.
    live: AtomicBool,
}

impl Endpoint {
    /// The URL pages play.
    pub fn url(&self) -> String {
        self.config.url()
    }

    /// Whether a publisher's media plays (the source is offered).
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// Offers the source or withdraws it: the sources list is published again when that changes.
    async fn set_live(&self, hub: &Hub, live: bool) {
        if self.live.swap(live, Ordering::SeqCst) != live {
            hub.publish_sources().await;
            tracing::info!(ingest = %self.config.name, "{}", if live { "publishing" } else { "publisher gone" });
        }
    }

    /// The endpoint for the stats message.
    pub fn stats(&self) -> EndpointStats {
        let publisher = *lock(&self.publisher);
        let relayed = self.config.protocol != IngestProtocol::Srt;
        EndpointStats {
            name: self.config.name.clone(),
            protocol: self.config.protocol.scheme(),
            listen: self.config.listen.to_string(),
            publishing: self.is_live(),
            publisher: publisher.map(|(addr, _)| addr.to_string()),
            publisher_secs: publisher.map(|(_, since)| since.elapsed().as_secs()),
            bytes: relayed.then(|| self.bytes.load(Ordering::Relaxed)),
        }
    }

    /// What the stream's pipeline opens to receive the relayed publisher.
    pub fn internal_url(&self) -> String {
        self.config.internal_url(self.internal_port)
    }
}

/// Binds an endpoint's public port and picks its loopback relay port. An SRT endpoint has no listener of
/// ours (libavformat listens on its address); its UDP port is checked free here so a clash stops the start.
pub async fn bind(config: IngestEndpoint) -> Result<(Arc<Endpoint>, Option<TcpListener>), IngestError> {
    let bind_error = |source| IngestError::Bind { name: config.name.clone(), listen: config.listen, source };
    let listener = match config.protocol {
        IngestProtocol::Srt => {
            drop(std::net::UdpSocket::bind(config.listen).map_err(bind_error)?);
            None
        }
        IngestProtocol::Tcp | IngestProtocol::Rtmp => Some(TcpListener::bind(config.listen).await.map_err(bind_error)?),
    };
    // A free loopback port for libavformat to listen on: the system picks it, we release it for FFmpeg.
    let internal_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(bind_error)?;
    let endpoint = Endpoint {
        config,
        internal_port,
        publisher: Mutex::new(None),
        bytes: AtomicU64::new(0),
        live: AtomicBool::new(false),
    };
    Ok((Arc::new(endpoint), listener))
}

/// An endpoint whose stream listens itself (SRT): keeps its stream running and offers the source while
/// media plays. libsrt checks the passphrase in its handshake; while one publisher is in, libavformat does
/// not listen, so a second one gets no answer (and nothing reaches this log).
pub async fn serve_listening(hub: Arc<Hub>, endpoint: Arc<Endpoint>) {
    let name = endpoint.config.name.clone();
    tracing::info!(ingest = %name, "push ingest listening on srt://{}", endpoint.config.listen);
    while !hub.is_closing() {
        let stream = match hub.ingest_stream(&endpoint) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(ingest = %name, error = %e, "cannot start the SRT listener; trying again");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        let mut phase = stream.phase();
        loop {
            let (ready, over) = {
                let now = phase.borrow_and_update();
                (matches!(*now, Phase::Ready(_)), matches!(*now, Phase::Failed { .. } | Phase::Ended))
            };
            endpoint.set_live(&hub, ready).await;
            if over || phase.changed().await.is_err() {
                break;
            }
        }
        // The stream ended (stopped, or failed for good): listen again unless the server is going away.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Accepts publishers forever: one at a time, a second one is refused with a log line.
pub async fn serve(hub: Arc<Hub>, endpoint: Arc<Endpoint>, listener: TcpListener) {
    let name = endpoint.config.name.clone();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(ingest = %name, "push ingest listening on {}://{addr}", endpoint.config.protocol.scheme());
    }
    loop {
        let (socket, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: keep listening.
                tracing::warn!(ingest = %name, error = %e, "accepting a publisher failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (hub, endpoint) = (Arc::clone(&hub), Arc::clone(&endpoint));
        tokio::spawn(async move {
            if let Err(current) = take_slot(&endpoint, addr).await {
                tracing::warn!(ingest = %endpoint.config.name, publisher = %addr, current = %current, "refused a second publisher: one is already publishing");
                return;
            }
            tracing::info!(ingest = %endpoint.config.name, publisher = %addr, "publisher connected");
            let started = Instant::now();
            let result = session(&hub, &endpoint, socket).await;
            endpoint.set_live(&hub, false).await;
            *lock(&endpoint.publisher) = None;
            let (secs, bytes) = (started.elapsed().as_secs_f64(), endpoint.bytes.load(Ordering::Relaxed));
            match result {
                Ok(()) => {
                    tracing::info!(ingest = %endpoint.config.name, publisher = %addr, bytes, "publisher disconnected after {secs:.1} s")
                }
                Err(e) => {
                    tracing::warn!(ingest = %endpoint.config.name, publisher = %addr, bytes, "publisher disconnected after {secs:.1} s: {e}")
                }
            }
        });
    }
}

/// Makes `addr` the endpoint's publisher, or returns the one in place. A publisher that just left frees
/// the slot a moment after its connection closes, and one reconnecting at once must not be taken for a
/// second publisher: a newcomer waits that moment out.
async fn take_slot(endpoint: &Endpoint, addr: SocketAddr) -> Result<(), SocketAddr> {
    let deadline = Instant::now() + SLOT_GRACE;
    loop {
        {
            let mut publisher = lock(&endpoint.publisher);
            match *publisher {
                None => {
                    *publisher = Some((addr, Instant::now()));
                    endpoint.bytes.store(0, Ordering::Relaxed);
                    return Ok(());
                }
                Some((current, _)) if Instant::now() >= deadline => return Err(current),
                Some(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One publisher: start (or wake) the stream, connect to its pipeline, relay until either side ends.
async fn session(hub: &Arc<Hub>, endpoint: &Arc<Endpoint>, publisher: TcpStream) -> Result<(), SessionEnd> {
    let _ = publisher.set_nodelay(true);
    let stream = hub.ingest_stream(endpoint).map_err(SessionEnd::Unavailable)?;
    // What the phase is now belongs to the previous publisher, if any: this one's media makes it Ready anew.
    let mut phase = stream.phase();
    phase.borrow_and_update();
    stream.publisher_arrived();
    let result = async {
        let internal = connect_to_pipeline(endpoint.internal_port).await?;
        let gate = match (endpoint.config.protocol, &endpoint.config.key) {
            (IngestProtocol::Rtmp, Some(key)) => Some(PublishGate::new(key)),
            _ => None,
        };
        let key_deadline = hub.config.pipeline_for(&endpoint.url()).source.connect_timeout();
        // Offered once the publisher's media plays (not on its first byte, which may be garbage).
        let announce = async {
            let mut ready = false;
            while !ready && phase.changed().await.is_ok() {
                ready = matches!(*phase.borrow_and_update(), Phase::Ready(_));
            }
            if ready {
                endpoint.set_live(hub, true).await;
            }
            // The relay decides when the session ends.
            std::future::pending::<Result<(), SessionEnd>>().await
        };
        tokio::select! {
            result = relay(publisher, internal, gate, key_deadline, &endpoint.bytes) => result,
            result = announce => result,
        }
    }
    .await;
    stream.publisher_left();
    result
}

/// Connects to the pipeline's listener, which opens a moment after the stream (re)starts.
async fn connect_to_pipeline(port: u16) -> Result<TcpStream, SessionEnd> {
    let deadline = Instant::now() + PIPELINE_LISTEN_WAIT;
    loop {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(SessionEnd::Unavailable(format!("the stream did not start listening: {e}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Relays both ways until either side closes; publisher bytes pass the key gate first and are counted in
/// `total`.
async fn relay(
    publisher: TcpStream,
    internal: TcpStream,
    mut gate: Option<PublishGate>,
    key_deadline: Duration,
    total: &AtomicU64,
) -> Result<(), SessionEnd> {
    let (mut from_publisher, mut to_publisher) = publisher.into_split();
    let (mut from_pipeline, mut to_pipeline) = internal.into_split();
    // libavformat's answers (the RTMP handshake and command results) go back as they are.
    let down = async {
        let copied = tokio::io::copy(&mut from_pipeline, &mut to_publisher).await;
        let _ = to_publisher.shutdown().await;
        copied
    };
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        let key_by = tokio::time::Instant::now() + key_deadline;
        loop {
            let gated = gate.as_ref().is_some_and(|g| !g.is_open());
            let n = if gated {
                let pause = (tokio::time::Instant::now() + HELD_BYTES_PAUSE).min(key_by);
                match tokio::time::timeout_at(pause, from_publisher.read(&mut buf)).await {
                    Ok(read) => read?,
                    Err(_) if tokio::time::Instant::now() >= key_by => {
                        return Err(SessionEnd::NoKeyInTime(key_deadline));
                    }
                    Err(_) => {
                        if let Some(g) = gate.as_mut() {
                            let held = g.flush_held();
                            to_pipeline.write_all(&held).await?;
                        }
                        continue;
                    }
                }
            } else {
                from_publisher.read(&mut buf).await?
            };
            if n == 0 {
                let _ = to_pipeline.shutdown().await;
                return Ok(());
            }
            total.fetch_add(n as u64, Ordering::Relaxed);
            match gate.as_mut() {
                Some(g) if gated => {
                    let pass = g.push(&buf[..n])?;
                    to_pipeline.write_all(&pass).await?;
                }
                _ => to_pipeline.write_all(&buf[..n]).await?,
            }
        }
    };
    // Whichever side ends first ends the session: the publisher leaving, or the pipeline giving up on it
    // (garbage, a stall, silence); dropping both halves closes both connections.
    tokio::select! {
        result = up => result,
        result = down => match result {
            Ok(_) => Err(SessionEnd::PipelineClosed),
            Err(e) => Err(SessionEnd::Io(e)),
        },
    }
}
