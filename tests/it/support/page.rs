//! A page as the server sees it: a real MQTT client (rumqttc) that describes, plays and stops, and the
//! server itself run as its real binary with a generated config.

use bytes::Bytes;
use rumqttc::{Client, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// A message the page received.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub at: Instant,
}

/// An MQTT client acting as a browser page.
pub struct Page {
    pub client: Client,
    pub inbox: Receiver<Message>,
    pub id: String,
    pub port: u16,
    closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Page {
    /// Connects to the broker on `port` (optionally with a last will) and waits for the connection.
    pub fn connect(port: u16, id: &str, will: Option<(String, Vec<u8>)>) -> Self {
        Self::connect_with(MqttOptions::new(id, "127.0.0.1", port), id, port, will)
    }

    /// Connects as broker user `username` (a page that logged in).
    pub fn connect_as(port: u16, id: &str, username: &str, password: &str) -> Self {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_credentials(username, password);
        Self::connect_with(options, id, port, None)
    }

    /// Connects over MQTT-over-WebSocket, as a browser does (`url` like `ws://127.0.0.1:8080/mqtt`).
    pub fn connect_ws(url: &str, port: u16, id: &str) -> Self {
        let mut options = MqttOptions::new(id, url, port);
        options.set_transport(rumqttc::Transport::Ws);
        Self::connect_with(options, id, port, None)
    }

    fn connect_with(mut options: MqttOptions, id: &str, port: u16, will: Option<(String, Vec<u8>)>) -> Self {
        options.set_max_packet_size(64 << 20, 64 << 20);
        options.set_keep_alive(Duration::from_secs(5));
        if let Some((topic, payload)) = will {
            options.set_last_will(LastWill::new(topic, payload, QoS::AtMostOnce, false));
        }
        let (client, mut connection) = Client::new(options, 1000);
        let (tx, rx) = channel();
        let (ready_tx, ready_rx) = channel();
        let closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let closing = std::sync::Arc::clone(&closed);
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Message { topic: p.topic, payload: p.payload, at: Instant::now() });
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => {
                        // A closed page stays closed; any other error is retried (a broker restart).
                        if closing.load(std::sync::atomic::Ordering::Relaxed) {
                            return;
                        }
                        if tx
                            .send(Message { topic: "$disconnected".into(), payload: Bytes::new(), at: Instant::now() })
                            .is_err()
                        {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("the page connects to the broker");
        Self { client, inbox: rx, id: id.to_string(), port, closed }
    }

    /// Disconnects for good (no reconnect).
    pub fn close(self) {
        self.closed.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.client.disconnect();
    }

    /// Subscribes and waits a moment so the subscription is in place before anything is published.
    pub fn subscribe(&self, filter: &str) {
        self.client.subscribe(filter, QoS::AtMostOnce).expect("subscribe");
        std::thread::sleep(Duration::from_millis(100));
    }

    /// Publishes a JSON value.
    pub fn publish(&self, topic: &str, value: &Value) {
        self.publish_raw(topic, serde_json::to_vec(value).unwrap());
    }

    /// Publishes raw bytes.
    pub fn publish_raw(&self, topic: &str, payload: Vec<u8>) {
        self.client.publish(topic, QoS::AtMostOnce, false, payload).expect("publish");
    }

    /// Waits for the next message on `topic`.
    pub fn next_on(&self, topic: &str, timeout: Duration) -> Option<Message> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.inbox.recv_timeout(left) {
                Ok(m) if m.topic == topic => return Some(m),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// Waits for the next message on a topic starting with `prefix`.
    pub fn next_on_prefix(&self, prefix: &str, timeout: Duration) -> Option<Message> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.inbox.recv_timeout(left) {
                Ok(m) if m.topic.starts_with(prefix) => return Some(m),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// Sends describe and returns the JSON reply.
    pub fn describe(&self, url: &str, reply_topic: &str) -> Value {
        self.subscribe(reply_topic);
        self.publish("video/describe", &serde_json::json!({"url": url, "reply_topic": reply_topic}));
        let reply = self.next_on(reply_topic, Duration::from_secs(20)).expect("a describe reply");
        serde_json::from_slice(&reply.payload).expect("JSON reply")
    }

    /// Subscribes to `<reply_topic>/#` and sends play.
    pub fn play(&self, url: &str, reply_topic: &str) {
        self.subscribe(&format!("{reply_topic}/#"));
        self.subscribe(reply_topic);
        self.publish("video/play", &serde_json::json!({"url": url, "reply_topic": reply_topic}));
    }

    /// Sends stop.
    pub fn stop(&self, reply_topic: &str) {
        self.publish("video/stop", &serde_json::json!({"reply_topic": reply_topic}));
    }

    /// Whether media arrives on `reply_topic` within `timeout` (a cold source on a busy machine takes a while).
    pub fn media_within(&self, reply_topic: &str, timeout: Duration) -> bool {
        self.next_on(reply_topic, timeout).is_some()
    }

    /// Collects media and status for `reply_topic` for `duration`.
    pub fn collect(&self, reply_topic: &str, duration: Duration) -> Received {
        let status_topic = format!("{reply_topic}/status");
        let mut received = Received::default();
        let deadline = Instant::now() + duration;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(m) = self.inbox.recv_timeout(left) else { break };
            if m.topic == reply_topic {
                received.media.push(m);
            } else if m.topic == status_topic {
                received.status.push(serde_json::from_slice(&m.payload).expect("status JSON"));
            }
        }
        received
    }

    /// Waits for a stats message (published every second) for which `ok` holds, and returns it.
    pub fn stats_where(&self, ok: impl Fn(&Value) -> bool) -> Value {
        let page = Page::connect(self.port, &format!("{}-stats-{}", self.id, rand_suffix()), None);
        page.subscribe("video/stats");
        let mut last = Value::Null;
        while let Some(m) = page.next_on("video/stats", Duration::from_secs(5)) {
            last = serde_json::from_slice(&m.payload).expect("stats JSON");
            if ok(&last) {
                return last;
            }
        }
        panic!("no stats message matched; the last was {last}");
    }
}

/// The retained sources list as a page connecting now gets it, if it arrives within `wait`.
pub fn sources_list(port: u16, wait: Duration) -> Option<Value> {
    let page = Page::connect(port, &format!("page_check{}", rand_suffix()), None);
    page.subscribe("video/sources");
    let m = page.next_on("video/sources", wait)?;
    Some(serde_json::from_slice(&m.payload).unwrap_or(Value::Null))
}

/// A short random-enough suffix for client ids and reply topics.
pub fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{:x}{}", nanos, N.fetch_add(1, Ordering::Relaxed))
}

/// What a page got on its reply topic and status topic.
#[derive(Debug, Default)]
pub struct Received {
    pub media: Vec<Message>,
    pub status: Vec<Value>,
}

impl Received {
    /// The states of the status messages, in order.
    pub fn states(&self) -> Vec<String> {
        self.status.iter().filter_map(|s| s["state"].as_str().map(String::from)).collect()
    }
}

/// `mqtt-video serve` as a child process, stopped with SIGTERM on drop.
pub struct Server {
    child: Child,
    pub log: PathBuf,
}

impl Server {
    /// Starts the real binary with `config` (TOML) and waits until it is subscribed.
    pub fn start(config: &str) -> Self {
        Self::start_logging(config, "error", "info")
    }

    /// Like [`Server::start`], with FFmpeg's log level and the server's own (`MQTT_VIDEO_LOG`).
    pub fn start_logging(config: &str, ffmpeg_log: &str, log_level: &str) -> Self {
        Self::start_with_env(config, ffmpeg_log, log_level, &[])
    }

    /// Like [`Server::start_logging`], with more environment variables.
    pub fn start_with_env(config: &str, ffmpeg_log: &str, log_level: &str, env: &[(&str, &str)]) -> Self {
        let dir = super::work_dir();
        let name = format!("server-{}", rand_suffix());
        let conf = dir.join(format!("{name}.toml"));
        std::fs::write(&conf, config).expect("writing the server config");
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_mqtt-video"))
            .args(["--ffmpeg-log", ffmpeg_log, "serve", "--config"])
            .arg(&conf)
            .env("MQTT_VIDEO_LOG", log_level)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("starting mqtt-video serve");
        let server = Self { child, log };
        server.wait_for_log("connected to the broker", Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(200));
        server
    }

    /// The process id, for /proc figures.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Threads of the server process.
    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid())).map(|d| d.count()).expect("server /proc")
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains(needle) {
                return;
            }
            assert!(Instant::now() < deadline, "server log never said {needle:?}:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the server has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The gateway's address as the server logged it (`127.0.0.1:PORT`).
    pub fn gateway_addr(&self) -> String {
        self.wait_for_log("the page is at http://", Duration::from_secs(10));
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.find("the page is at http://").expect("gateway line") + "the page is at http://".len();
        text[start..].split('/').next().expect("address").to_string()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server config for tests: the broker on `port`, the given allow prefixes, the gateway on a free port
/// serving the page built into the binary.
pub fn server_config(port: u16, prefixes: &[&str], extra: &str) -> String {
    let prefixes = prefixes.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ");
    format!(
        "[broker]\nport = {port}\nclient_id = \"mqtt-video-test-{}\"\nreconnect_min_ms = 100\nreconnect_max_ms = 500\n\n[gateway]\nlisten = \"127.0.0.1:0\"\n\n[stats]\ninterval_secs = 1\n\n[allow]\nprefixes = [{prefixes}]\n\n{extra}\n",
        rand_suffix(),
    )
}

/// A browser tab reduced to its MQTT connection: CONNECT with a last will over a raw socket, so that
/// dropping it cuts the connection without DISCONNECT (the broker then publishes the will).
pub fn raw_client_with_will(port: u16, client_id: &str, will_topic: &str, will: &[u8]) -> std::net::TcpStream {
    use std::io::{Read, Write};
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }
    let mut body = Vec::new();
    string(&mut body, b"MQTT");
    body.push(4); // MQTT 3.1.1
    body.push(0b0000_0110); // clean session + will flag, will QoS 0
    body.extend_from_slice(&30u16.to_be_bytes()); // keep-alive
    string(&mut body, client_id.as_bytes());
    string(&mut body, will_topic.as_bytes());
    string(&mut body, will);
    assert!(body.len() < 128, "one-byte remaining length");
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the broker");
    socket.write_all(&packet).expect("send CONNECT");
    let mut connack = [0u8; 4];
    socket.read_exact(&mut connack).expect("read CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "connection accepted");
    socket
}
