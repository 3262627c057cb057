//! A loopback relay between libavformat and an RTSP camera over TCP that ends each H.264 access unit on its
//! RTP marker ([`MarkerSplice`]): libavformat opens `rtsp://127.0.0.1:PORT/...`, the relay holds the
//! connection to the camera. libavformat still runs the whole session (authentication, keep-alives,
//! depacketizing, timestamps); the relay only adds a delimiter after each frame's last packet.

use ffmpeg_next as ffmpeg;
use mqtt_video_wire::marker_splice::{MarkerSplice, SpliceCounts};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often the relay looks for libavformat's connection.
const ACCEPT_POLL: Duration = Duration::from_millis(5);

/// Where a relayed RTSP URL points: the camera's address and the URL libavformat opens instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    /// `host:port` of the camera (554 when the URL names none).
    pub camera: String,
    /// The URL with the camera's host and port replaced by `{local}`.
    pub template: String,
}

/// Splits an `rtsp://` URL into the camera's address and a URL whose authority is the relay's, keeping the
/// credentials, path and query; `None` for anything else (`rtsps://` included: the relay does not speak TLS).
pub fn relayed(url: &str) -> Option<Relayed> {
    let scheme_end = url.find("://")?;
    if !url[..scheme_end].eq_ignore_ascii_case("rtsp") {
        return None;
    }
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, host_port) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let has_port = match host_port.rfind(':') {
        Some(colon) => !host_port[colon..].contains(']'),
        None => false,
    };
    if host_port.is_empty() || host_port.starts_with(':') {
        return None;
    }
    let camera = if has_port { host_port.to_string() } else { format!("{host_port}:554") };
    Some(Relayed { camera, template: format!("rtsp://{userinfo}{{local}}{tail}") })
}

/// A running relay; the threads end when either side closes (or, if libavformat never connects, at the
/// deadline given to [`start`]).
#[derive(Debug)]
pub struct RtspRelay {
    url: String,
    counts: Arc<Mutex<SpliceCounts>>,
    closed: Arc<AtomicBool>,
}

impl RtspRelay {
    /// The URL for libavformat to open.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What the splice has done so far.
    pub fn counts(&self) -> SpliceCounts {
        *self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for RtspRelay {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

/// Connects to the camera within `timeout` and starts the relay. A failure to connect comes back as the
/// error libavformat would have given, so the reasons people see stay the same.
pub fn start(target: &Relayed, timeout: Duration) -> Result<RtspRelay, ffmpeg::Error> {
    let camera = connect(&target.camera, timeout)?;
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(io_error)?;
    let local = listener.local_addr().map_err(io_error)?;
    listener.set_nonblocking(true).map_err(io_error)?;
    let relay = RtspRelay {
        url: target.template.replace("{local}", &local.to_string()),
        counts: Arc::default(),
        closed: Arc::default(),
    };
    let (counts, closed) = (relay.counts.clone(), relay.closed.clone());
    let deadline = Instant::now() + timeout;
    std::thread::Builder::new()
        .name("rtsp-relay".into())
        .spawn(move || {
            let Some(client) = accept(&listener, deadline, &closed) else { return };
            drop(listener);
            if let Err(e) = relay_session(client, camera, &counts) {
                tracing::debug!(error = %e, "the RTSP relay ended");
            }
        })
        .map_err(io_error)?;
    Ok(relay)
}

fn connect(camera: &str, timeout: Duration) -> Result<TcpStream, ffmpeg::Error> {
    let addrs: Vec<SocketAddr> =
        camera.to_socket_addrs().map_err(|_| ffmpeg::Error::Other { errno: libc::EIO })?.collect();
    let mut last = ffmpeg::Error::Other { errno: libc::EIO };
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = io_error(e),
        }
    }
    Err(last)
}

fn io_error(e: std::io::Error) -> ffmpeg::Error {
    let errno = match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => libc::ETIMEDOUT,
        _ => e.raw_os_error().unwrap_or(libc::EIO),
    };
    ffmpeg::Error::Other { errno }
}

fn accept(listener: &TcpListener, deadline: Instant, closed: &AtomicBool) -> Option<TcpStream> {
    while Instant::now() < deadline && !closed.load(Ordering::Relaxed) {
        match listener.accept() {
            // Bound to loopback, so only this machine can connect; the first connection is libavformat's,
            // which connects right after the relay starts.
            Ok((stream, _)) => return stream.set_nonblocking(false).ok().map(|()| stream),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(_) => return None,
        }
    }
    None
}

/// Copies libavformat's requests to the camera on a second thread and the camera's bytes, spliced, back.
fn relay_session(client: TcpStream, camera: TcpStream, counts: &Mutex<SpliceCounts>) -> std::io::Result<()> {
    // Each frame's last packet and its delimiter leave at once rather than after Nagle's delay.
    client.set_nodelay(true)?;
    camera.set_nodelay(true)?;
    let (mut requests_in, mut requests_out) = (client.try_clone()?, camera.try_clone()?);
    std::thread::Builder::new().name("rtsp-relay-up".into()).spawn(move || {
        let _ = std::io::copy(&mut requests_in, &mut requests_out);
        let _ = requests_out.shutdown(Shutdown::Both);
        let _ = requests_in.shutdown(Shutdown::Both);
    })?;
    let (mut from_camera, mut to_client) = (camera, client);
    let mut splice = MarkerSplice::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(buf.len() + 1024);
    let result = loop {
        let n = match from_camera.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        };
        out.clear();
        if let Err(e) = splice.feed(&buf[..n], &mut out) {
            tracing::warn!(error = %e, "RTSP relay: passing the camera's stream on unchanged");
        }
        if let Err(e) = to_client.write_all(&out) {
            break Err(e);
        }
        *counts.lock().unwrap_or_else(PoisonError::into_inner) = splice.counts();
    };
    let _ = to_client.shutdown(Shutdown::Both);
    let _ = from_camera.shutdown(Shutdown::Both);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_everything_but_the_address() {
        let r = relayed("rtsp://user:p%40ss@cam.local/Streaming/101?tcp").unwrap();
        assert_eq!(r.camera, "cam.local:554");
        assert_eq!(r.template, "rtsp://user:p%40ss@{local}/Streaming/101?tcp");
        let r = relayed("RTSP://[fe80::1]:8554").unwrap();
        assert_eq!((r.camera.as_str(), r.template.as_str()), ("[fe80::1]:8554", "rtsp://{local}"));
        assert_eq!(relayed("rtsp://[::1]/x").unwrap().camera, "[::1]:554");
        assert_eq!(relayed("rtsp://a@b@cam:10/x").unwrap().camera, "cam:10");
        for url in ["rtsps://cam/x", "http://cam/x", "rtsp:///x", "rtsp://user@:554/x", "cam/x"] {
            assert_eq!(relayed(url), None, "{url}");
        }
    }

    #[test]
    fn a_failed_connect_reads_as_libavformat_would_say_it() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let target = relayed(&format!("rtsp://127.0.0.1:{port}/x")).unwrap();
        let e = start(&target, Duration::from_secs(1)).unwrap_err();
        assert_eq!(e, ffmpeg::Error::Other { errno: libc::ECONNREFUSED });
        let e = start(&relayed("rtsp://no-such-host.invalid/x").unwrap(), Duration::from_secs(1)).unwrap_err();
        assert_eq!(e, ffmpeg::Error::Other { errno: libc::EIO });
    }

    #[test]
    fn bytes_cross_both_ways_and_a_close_ends_both() {
        let camera = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = relayed(&format!("rtsp://{}/live", camera.local_addr().unwrap())).unwrap();
        let relay = start(&target, Duration::from_secs(5)).unwrap();
        let (mut cam, _) = camera.accept().unwrap();
        let local = relay.url().strip_prefix("rtsp://").unwrap().strip_suffix("/live").unwrap().to_string();
        let mut client = TcpStream::connect(local).unwrap();
        let request = b"OPTIONS rtsp://x/live RTSP/1.0\r\nCSeq: 1\r\n\r\n";
        client.write_all(request).unwrap();
        let mut got = [0u8; 43];
        cam.read_exact(&mut got).unwrap();
        assert_eq!(&got, request);
        cam.write_all(b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n").unwrap();
        let mut reply = [0u8; 28];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n");
        drop(client);
        cam.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(cam.read(&mut got).unwrap(), 0, "the camera's side is closed when libavformat's is");
        assert_eq!(relay.counts(), SpliceCounts::default());
    }
}
