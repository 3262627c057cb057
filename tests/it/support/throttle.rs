//! A slow link for tests: a TCP proxy that passes what the client sends at once and paces what comes back to
//! a rate the test sets (and changes) while it runs, with a small receive buffer of its own so that the
//! backlog stays upstream, where a slow browser's would be: in the gateway's queue.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The proxy's own receive buffer (the kernel doubles it).
const RECEIVE_BUFFER: usize = 8 * 1024;
/// What the link may send at once after being idle.
const BURST_BYTES: f64 = 8.0 * 1024.0;

/// A listening proxy to `upstream`.
pub struct Throttle {
    /// Where clients connect.
    pub addr: SocketAddr,
    bits_per_second: Arc<AtomicU64>,
}

impl Throttle {
    /// Starts a proxy to `upstream`, unthrottled until `set_rate`.
    pub fn start(upstream: SocketAddr) -> Self {
        Self::start_with_queue(upstream, 0)
    }

    /// The same with a queue of `queue_bytes` in front of the paced link, filled as fast as the gateway
    /// sends, as a phone's cellular link or a Wi-Fi router holds one: the gateway's socket never sees it.
    pub fn start_with_queue(upstream: SocketAddr, queue_bytes: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the throttle");
        let addr = listener.local_addr().expect("its address");
        let bits_per_second = Arc::new(AtomicU64::new(0));
        let rate = Arc::clone(&bits_per_second);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = connect(upstream) else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (Ok(client_w), Ok(server_w)) = (client.try_clone(), server.try_clone()) else { continue };
                std::thread::spawn(move || copy(client, server_w, None));
                let rate = Arc::clone(&rate);
                if queue_bytes == 0 {
                    std::thread::spawn(move || copy(server, client_w, Some(rate)));
                } else {
                    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(queue_bytes / CHUNK);
                    std::thread::spawn(move || fill(server, tx));
                    std::thread::spawn(move || drain(rx, client_w, rate));
                }
            }
        });
        Self { addr, bits_per_second }
    }

    /// Paces the downstream direction to `bits_per_second` (0: no limit), for every connection at once.
    pub fn set_rate(&self, bits_per_second: u64) {
        self.bits_per_second.store(bits_per_second, Ordering::Relaxed);
    }
}

/// A connection with a small receive buffer and an Ethernet-sized MSS: on loopback (MTU 64 KiB) a window
/// smaller than one segment stalls on the persist timer, which no real link does.
fn connect(upstream: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(upstream), socket2::Type::STREAM, None)?;
    socket.set_tcp_mss(1448)?;
    socket.set_recv_buffer_size(RECEIVE_BUFFER)?;
    socket.connect(&upstream.into())?;
    Ok(socket.into())
}

/// Bytes read into the deep queue at a time.
const CHUNK: usize = 4096;

/// Reads `from` as fast as it sends into the queue, until it closes or the queue's reader is gone.
fn fill(mut from: TcpStream, queue: std::sync::mpsc::SyncSender<Vec<u8>>) {
    let mut buf = [0u8; CHUNK];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || queue.send(buf[..n].to_vec()).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
}

/// Writes what the queue holds to `to`, paced to `rate`.
fn drain(queue: std::sync::mpsc::Receiver<Vec<u8>>, mut to: TcpStream, rate: Arc<AtomicU64>) {
    let mut tokens = BURST_BYTES;
    let mut last = Instant::now();
    while let Ok(chunk) = queue.recv() {
        let bps = rate.load(Ordering::Relaxed);
        if bps > 0 {
            let per_second = bps as f64 / 8.0;
            let now = Instant::now();
            tokens = (tokens + now.duration_since(last).as_secs_f64() * per_second).min(BURST_BYTES);
            last = now;
            tokens -= chunk.len() as f64;
            if tokens < 0.0 {
                std::thread::sleep(Duration::from_secs_f64(-tokens / per_second));
            }
        } else {
            tokens = BURST_BYTES;
            last = Instant::now();
        }
        if to.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

/// Copies `from` to `to` until either end closes; `rate` paces it with a token bucket.
fn copy(mut from: TcpStream, mut to: TcpStream, rate: Option<Arc<AtomicU64>>) {
    let mut buf = [0u8; 4096];
    let mut tokens = BURST_BYTES;
    let mut last = Instant::now();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(bps) = rate.as_ref().map(|r| r.load(Ordering::Relaxed)).filter(|b| *b > 0) {
            let per_second = bps as f64 / 8.0;
            let now = Instant::now();
            tokens = (tokens + now.duration_since(last).as_secs_f64() * per_second).min(BURST_BYTES);
            last = now;
            tokens -= n as f64;
            if tokens < 0.0 {
                std::thread::sleep(Duration::from_secs_f64(-tokens / per_second));
            }
        } else {
            tokens = BURST_BYTES;
            last = Instant::now();
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
