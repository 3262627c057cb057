//! A live MPEG-TS source over UDP, as IPTV gateways, encoders and multicast cameras send it: the ffmpeg CLI
//! encoding a test pattern (H.264 + AAC, 30 fps) to a forwarder on loopback that drops a given fraction of
//! the datagrams (chosen by a fixed pseudo-random sequence, so that runs compare) before they reach the
//! address the server reads.

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The sender and its lossy forwarder, stopped on drop.
pub struct UdpSource {
    child: Child,
    stop: Arc<AtomicBool>,
    /// The URL to read: `udp://127.0.0.1:PORT`.
    pub url: String,
    /// Datagrams forwarded and dropped so far.
    pub forwarded: Arc<AtomicU64>,
    pub dropped: Arc<AtomicU64>,
}

impl UdpSource {
    /// Starts sending at once: keyframes every `gop` frames, `loss` (0 to 1) of the datagrams dropped.
    pub fn start(gop: u32, loss: f64) -> Self {
        Self::start_encoded(gop, loss, &["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency"])
    }

    /// The same with HEVC video (libx265, no B-frames), as an HEVC camera's TS.
    pub fn start_hevc(gop: u32, loss: f64) -> Self {
        let x265 =
            ["-c:v", "libx265", "-preset", "ultrafast", "-tune", "zerolatency", "-x265-params", "log-level=error"];
        Self::start_encoded(gop, loss, &x265)
    }

    fn start_encoded(gop: u32, loss: f64, video_codec: &[&str]) -> Self {
        let inlet = UdpSocket::bind("127.0.0.1:0").expect("a UDP port for the forwarder");
        let inlet_port = inlet.local_addr().expect("address").port();
        let outlet = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket to forward from");
        // A port nobody uses now, for the server to bind when it opens the URL.
        let target = UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a free UDP port");
        inlet.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let (forwarded, dropped) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (s, f, d) = (Arc::clone(&stop), Arc::clone(&forwarded), Arc::clone(&dropped));
        let threshold = (loss.clamp(0.0, 1.0) * f64::from(u32::MAX)) as u32;
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            let mut seed = 0x2545_f491u32;
            while !s.load(Ordering::Relaxed) {
                let Ok(n) = inlet.recv(&mut buf) else { continue };
                // xorshift32
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                if seed < threshold {
                    d.fetch_add(1, Ordering::Relaxed);
                } else {
                    // Nobody may listen yet (the server opens the URL later): that is a lost datagram too.
                    let _ = outlet.send_to(&buf[..n], target);
                    f.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let child = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
            .args(video_codec)
            .args(["-pix_fmt", "yuv420p"])
            .args(["-g", &gop.to_string(), "-c:a", "aac", "-f", "mpegts"])
            .arg(format!("udp://127.0.0.1:{inlet_port}?pkt_size=1316"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting ffmpeg");
        Self { child, stop, url: format!("udp://127.0.0.1:{}", target.port()), forwarded, dropped }
    }
}

impl Drop for UdpSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
