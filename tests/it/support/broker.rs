//! A real mosquitto broker for tests: its own config file on a free loopback port, restartable in place.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running mosquitto, stopped on drop.
pub struct Broker {
    child: Option<Child>,
    /// The TCP port it listens on (127.0.0.1).
    pub port: u16,
    conf: PathBuf,
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests on one machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl Broker {
    /// Starts mosquitto on a free port.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Starts mosquitto on a free port with more config lines (e.g. another listener).
    pub fn start_with(extra: &str) -> Self {
        Self::start_with_config(|port| {
            format!(
                "per_listener_settings false\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\nlog_dest stderr\nlog_type error\nlog_type warning\nlistener {port} 127.0.0.1\n{extra}"
            )
        })
    }

    /// Starts mosquitto with the whole config `config(port)` makes for a free port.
    pub fn start_with_config(config: impl FnOnce(u16) -> String) -> Self {
        let port = free_port();
        let conf = super::work_dir().join(format!("mosquitto-{port}.conf"));
        std::fs::write(&conf, config(port)).expect("writing mosquitto.conf");
        let mut broker = Self { child: None, port, conf };
        broker.restart();
        broker
    }

    /// Starts it again (after `kill`) on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting mosquitto (is it installed?)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
