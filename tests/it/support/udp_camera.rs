//! A camera that serves RTP over UDP only: Debian's rtsp-server-perl (it answers a SETUP for TCP with
//! `400 Bad Request`), fed by the ffmpeg CLI publishing a live test pattern to it over RTSP/UDP.

use super::broker::free_port;
use std::net::{TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// rtsp-server-perl with a publisher, both stopped on drop.
pub struct UdpOnlyCamera {
    server: Child,
    publisher: Child,
    /// Where clients read it.
    pub url: String,
}

/// An even UDP port with the next `count` ports free (rtsp-server-perl hands out RTP/RTCP pairs from it).
fn free_udp_range(count: u16) -> u16 {
    for _ in 0..200 {
        let base = (free_port() & !1).max(20_000);
        let Some(end) = base.checked_add(count) else { continue };
        if (base..end).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no free UDP port range");
}

impl UdpOnlyCamera {
    /// Starts the server and the publisher (320x240 at 25 fps, H.264 with AAC) and waits until the stream
    /// can be read over UDP.
    pub fn start() -> Self {
        let (client_port, source_port, rtp_base) = (free_port(), free_port(), free_udp_range(16));
        let server = Command::new("rtsp-server-perl")
            .args(["--client_listen_address", "127.0.0.1", "--source_listen_address", "127.0.0.1"])
            .args(["--clientport", &client_port.to_string(), "--serverport", &source_port.to_string()])
            .args(["--rtp_start_port", &rtp_base.to_string(), "--loglevel", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting rtsp-server-perl (apt-get install rtsp-server-perl)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", source_port)).is_err() {
            assert!(Instant::now() < deadline, "rtsp-server-perl did not listen on {source_port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let publisher = Command::new("ffmpeg")
            .args(["-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"])
            .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
                "-g",
                "25",
                "-pix_fmt",
                "yuv420p",
            ])
            .args(["-c:a", "aac", "-f", "rtsp", "-rtsp_transport", "udp"])
            .arg(format!("rtsp://127.0.0.1:{source_port}/cam"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the ffmpeg publisher");
        let camera = Self { server, publisher, url: format!("rtsp://127.0.0.1:{client_port}/cam") };
        camera.wait_readable();
        camera
    }

    /// Waits until ffprobe reads the stream over UDP (the publisher has announced it).
    fn wait_readable(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ok = Command::new("ffprobe")
                .args(["-v", "error", "-rtsp_transport", "udp", "-show_entries", "stream=codec_name", "-of", "csv"])
                .arg(&self.url)
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("h264"));
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the UDP-only camera never served {}", self.url);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for UdpOnlyCamera {
    fn drop(&mut self) {
        for child in [&mut self.publisher, &mut self.server] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
