//! Push ingest endpoints at work: accept publishers, make each one prove itself within the endpoint's
//! handshake deadline (RTMP: a `publish` with the stream key, answered by our own RTMP server side; TCP: any
//! data at all) before it may take the endpoint's one publisher slot, and relay a verified publisher's media to
//! its stream's pipeline over a private Unix socket.
//!
//! Why not let libavformat listen on the public port: its RTMP server takes any stream key (and logs the right
//! one when it sees a wrong one), starts on `FCPublish` or bare media, and its listener takes one connection
//! and closes. A loopback TCP port between the relay and libavformat would be open to every local process; a
//! socket in a directory only this user can enter is not.

use super::stream::Phase;
use super::{lock, Hub};
use crate::config::ingest::{IngestEndpoint, IngestProtocol};
use mqtt_video_wire::rtmp::{PublishSession, RtmpError};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

/// How long a newcomer waits for a leaving publisher to free the endpoint before it is refused.
const SLOT_GRACE: Duration = Duration::from_millis(500);
/// How long the stream's pipeline may take to start listening for the relay.
const PIPELINE_LISTEN_WAIT: Duration = Duration::from_secs(5);
/// Connections still proving themselves, per endpoint: more are closed at once.
const MAX_PENDING: usize = 64;
/// The same from one address, so that one host cannot take them all.
const MAX_PENDING_PER_ADDRESS: usize = 4;
/// How long a refused publisher's last answer may take to go out.
const REFUSAL_SEND_LIMIT: Duration = Duration::from_millis(500);

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
    /// The private directory for the relay sockets could not be made.
    #[error("ingest: cannot make a private directory for the relay sockets in {}: {source}", dir.display())]
    SocketDir {
        /// Where it was tried.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Why a connection was turned away before it published.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("refused: {0}")]
    Rtmp(#[from] RtmpError),
    #[error("refused: sent no publish with the stream key within {0:?}")]
    RtmpTimeout(Duration),
    #[error("refused: sent nothing within {0:?}")]
    Silent(Duration),
    #[error("closed before publishing")]
    Closed,
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a publisher's session ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("refused: {0}")]
    Unavailable(String),
    #[error("the stream closed it: it could not use what the publisher sent, or heard nothing in time (see the stream's log)")]
    PipelineClosed,
    #[error("{0}")]
    Rtmp(#[from] RtmpError),
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
    /// Connections turned away so far: wrong key, nothing proven in time, too many at once, a second publisher.
    pub refused: u64,
}

/// One configured endpoint and its publisher, if any.
pub struct Endpoint {
    /// Its settings.
    pub config: IngestEndpoint,
    /// The Unix socket the stream's pipeline listens on for the relay.
    socket: PathBuf,
    /// The connected publisher's address and since when.
    publisher: Mutex<Option<(SocketAddr, Instant)>>,
    /// Bytes relayed from the current (or last) publisher.
    bytes: AtomicU64,
    /// Whether a publisher's media plays: the source is offered only then.
    live: AtomicBool,
    /// Connections still proving themselves, by address.
    pending: Mutex<HashMap<IpAddr, usize>>,
    refused: AtomicU64,
}

/// A connection counted among an endpoint's pending ones until it is dropped.
struct Pending {
    endpoint: Arc<Endpoint>,
    ip: IpAddr,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut pending = lock(&self.endpoint.pending);
        if let Some(n) = pending.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                pending.remove(&self.ip);
            }
        }
    }
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
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// What the stream's pipeline opens to receive the relayed publisher.
    pub fn internal_url(&self) -> String {
        self.config.internal_url(&self.socket)
    }

    /// Counts a new connection among the pending ones, unless the endpoint or its address has its fill.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Pending> {
        let mut pending = lock(&self.pending);
        let total: usize = pending.values().sum();
        let from_ip = pending.get(&ip).copied().unwrap_or(0);
        if total >= MAX_PENDING || from_ip >= MAX_PENDING_PER_ADDRESS {
            return None;
        }
        *pending.entry(ip).or_default() += 1;
        Some(Pending { endpoint: Arc::clone(self), ip })
    }

    fn refuse(&self, addr: SocketAddr, why: &dyn std::fmt::Display) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        tracing::info!(ingest = %self.config.name, publisher = %addr, "{why}");
    }
}

/// The directory of this process's relay sockets: made once, readable by this user only, never reused.
fn socket_dir() -> Result<&'static Path, IngestError> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    if let Some(dir) = DIR.get() {
        return Ok(dir);
    }
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    let mut last = None;
    for attempt in 0..16u32 {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!("mqtt-video-{}-{nanos:x}{attempt}", std::process::id()));
        // `create` fails on anything already there, so nobody else's directory or link is ever used.
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(DIR.get_or_init(|| dir)),
            Err(e) => last = Some(e),
        }
    }
    Err(IngestError::SocketDir { dir: base, source: last.unwrap_or_else(|| std::io::ErrorKind::Other.into()) })
}

/// Removes the relay sockets' directory (at shutdown).
pub fn remove_socket_dir() {
    if let Ok(dir) = socket_dir() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Binds an endpoint's public port. An SRT endpoint has no listener of ours (libavformat listens on its
/// address); its UDP port is checked free here so a clash stops the start.
pub async fn bind(config: IngestEndpoint) -> Result<(Arc<Endpoint>, Option<TcpListener>), IngestError> {
    let bind_error = |source| IngestError::Bind { name: config.name.clone(), listen: config.listen, source };
    let listener = match config.protocol {
        IngestProtocol::Srt => {
            drop(std::net::UdpSocket::bind(config.listen).map_err(bind_error)?);
            None
        }
        IngestProtocol::Tcp | IngestProtocol::Rtmp => Some(TcpListener::bind(config.listen).await.map_err(bind_error)?),
    };
    let socket = socket_dir()?.join(format!("{}.sock", config.name));
    let endpoint = Endpoint {
        config,
        socket,
        publisher: Mutex::new(None),
        bytes: AtomicU64::new(0),
        live: AtomicBool::new(false),
        pending: Mutex::default(),
        refused: AtomicU64::new(0),
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

/// Accepts connections forever; each proves itself, then takes the endpoint if nobody else has it.
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
        let Some(pending) = endpoint.admit(addr.ip()) else {
            // Dropping the socket closes it: whoever holds the pending places waits no longer than the deadline.
            endpoint.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(ingest = %name, publisher = %addr, "refused: too many connections proving themselves");
            continue;
        };
        let (hub, endpoint) = (Arc::clone(&hub), Arc::clone(&endpoint));
        tokio::spawn(async move { connection(hub, endpoint, socket, addr, pending).await });
    }
}

/// What a connection proved: the bytes it sent so far (TCP), or its RTMP session waiting for an answer.
enum Proof {
    Data(Vec<u8>),
    Rtmp(Box<PublishSession>),
}

/// One connection: proof within the deadline, the slot, then the session.
async fn connection(hub: Arc<Hub>, endpoint: Arc<Endpoint>, mut socket: TcpStream, addr: SocketAddr, pending: Pending) {
    let _ = socket.set_nodelay(true);
    let limit = endpoint.config.handshake_timeout;
    let proof = match tokio::time::timeout(limit, prove(&endpoint, &mut socket)).await {
        Ok(Ok(proof)) => proof,
        Ok(Err(Refusal::Closed)) => return,
        Ok(Err(e)) => return endpoint.refuse(addr, &e),
        Err(_) => {
            let e = match endpoint.config.protocol {
                IngestProtocol::Rtmp => Refusal::RtmpTimeout(limit),
                _ => Refusal::Silent(limit),
            };
            return endpoint.refuse(addr, &e);
        }
    };
    drop(pending);
    if let Err(current) = take_slot(&endpoint, addr).await {
        endpoint.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(ingest = %endpoint.config.name, publisher = %addr, current = %current, "refused a second publisher: one is already publishing");
        if let Proof::Rtmp(mut session) = proof {
            send_refusal(&mut socket, &session.refuse("another publisher is publishing to this endpoint")).await;
        }
        return;
    }
    tracing::info!(ingest = %endpoint.config.name, publisher = %addr, "publisher connected");
    let started = Instant::now();
    let result = session(&hub, &endpoint, socket, proof).await;
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
}

/// Reads until the connection has proved itself: for RTMP a `publish` with the key, answered as far as the
/// session goes; for TCP its first bytes.
async fn prove(endpoint: &Endpoint, socket: &mut TcpStream) -> Result<Proof, Refusal> {
    let mut buf = vec![0u8; 16 * 1024];
    if endpoint.config.protocol != IngestProtocol::Rtmp {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Err(Refusal::Closed);
        }
        buf.truncate(n);
        return Ok(Proof::Data(buf));
    }
    let mut session = Box::new(PublishSession::new(endpoint.config.key.as_deref()));
    loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Err(Refusal::Closed);
        }
        match session.push(&buf[..n]) {
            Ok(out) => {
                socket.write_all(&out.reply).await?;
                if out.publish {
                    return Ok(Proof::Rtmp(session));
                }
                if out.ended {
                    return Err(Refusal::Closed);
                }
            }
            Err(e) => {
                send_refusal(socket, &session.refuse(&e.to_string())).await;
                return Err(Refusal::Rtmp(e));
            }
        }
    }
}

/// Sends a last answer to a refused publisher, if it takes it quickly; the connection closes after.
async fn send_refusal(socket: &mut TcpStream, bytes: &[u8]) {
    if !bytes.is_empty() {
        let _ = tokio::time::timeout(REFUSAL_SEND_LIMIT, socket.write_all(bytes)).await;
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
async fn session(
    hub: &Arc<Hub>,
    endpoint: &Arc<Endpoint>,
    publisher: TcpStream,
    proof: Proof,
) -> Result<(), SessionEnd> {
    let stream = hub.ingest_stream(endpoint).map_err(SessionEnd::Unavailable)?;
    // What the phase is now belongs to the previous publisher, if any: this one's media makes it Ready anew.
    let mut phase = stream.phase();
    phase.borrow_and_update();
    stream.publisher_arrived();
    let result = async {
        let internal = connect_to_pipeline(&endpoint.socket).await?;
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
            result = relay(publisher, internal, proof, &endpoint.bytes) => result,
            result = announce => result,
        }
    }
    .await;
    stream.publisher_left();
    result
}

/// Connects to the pipeline's listener, which opens a moment after the stream (re)starts.
async fn connect_to_pipeline(socket: &Path) -> Result<UnixStream, SessionEnd> {
    let deadline = Instant::now() + PIPELINE_LISTEN_WAIT;
    loop {
        match UnixStream::connect(socket).await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(SessionEnd::Unavailable(format!("the stream did not start listening: {e}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Relays the publisher's media to the pipeline until either side closes: TCP bytes as they are, RTMP
/// through the session (answers back to the publisher, FLV on to the pipeline). Bytes read from the
/// publisher are counted in `total`.
async fn relay(publisher: TcpStream, internal: UnixStream, proof: Proof, total: &AtomicU64) -> Result<(), SessionEnd> {
    let (mut from_publisher, mut to_publisher) = publisher.into_split();
    let (from_pipeline, mut to_pipeline) = internal.into_split();
    let up = async {
        let mut session = match proof {
            Proof::Data(first) => {
                total.fetch_add(first.len() as u64, Ordering::Relaxed);
                to_pipeline.write_all(&first).await?;
                None
            }
            Proof::Rtmp(mut session) => {
                let out = session.accept()?;
                to_publisher.write_all(&out.reply).await?;
                to_pipeline.write_all(&out.media).await?;
                Some(session)
            }
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from_publisher.read(&mut buf).await?;
            if n == 0 {
                let _ = to_pipeline.shutdown().await;
                return Ok(());
            }
            total.fetch_add(n as u64, Ordering::Relaxed);
            match session.as_mut() {
                None => to_pipeline.write_all(&buf[..n]).await?,
                Some(s) => {
                    let out = s.push(&buf[..n])?;
                    to_publisher.write_all(&out.reply).await?;
                    to_pipeline.write_all(&out.media).await?;
                    if out.ended {
                        let _ = to_pipeline.shutdown().await;
                        return Ok(());
                    }
                }
            }
        }
    };
    // Whichever side ends first ends the session: the publisher leaving, or the pipeline giving up on it
    // (garbage, a stall, silence); dropping both halves closes both connections.
    tokio::select! {
        result = up => result,
        () = closed(from_pipeline) => Err(SessionEnd::PipelineClosed),
    }
}

/// Resolves when the pipeline closes its end (it never sends anything).
async fn closed(mut reader: impl AsyncRead + Unpin) {
    let mut buf = [0u8; 64];
    while matches!(reader.read(&mut buf).await, Ok(n) if n > 0) {}
}
