//! Real RabbitMQ nodes (Debian's rabbitmq-server, its MQTT plugin) for the broker matrix: each with its own
//! node name, ports, data and config under the test folder, run as the test's user (not the packaged
//! service), stopped on drop; two of them join as a cluster.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::broker::free_port;

const BIN: &str = "/usr/lib/rabbitmq/bin";

/// A running RabbitMQ node with the MQTT plugin.
pub struct RabbitNode {
    child: Child,
    /// Its Erlang node name (`mvtestN@localhost`).
    pub name: String,
    /// Its MQTT port on 127.0.0.1.
    pub mqtt_port: u16,
    dir: PathBuf,
}

impl RabbitNode {
    /// Starts node `name` and waits (up to 60 s) until its MQTT listener takes connections.
    pub fn start(name: &str) -> Self {
        Self::start_with(name, None)
    }

    /// Starts node `name` with `definitions` (users, permissions, topic permissions) loaded at boot and no
    /// anonymous clients, or open to anonymous clients without.
    pub fn start_with(name: &str, definitions: Option<&serde_json::Value>) -> Self {
        assert!(
            std::path::Path::new(BIN).join("rabbitmq-server").exists(),
            "RabbitMQ is not installed: apt-get install rabbitmq-server (scripts/setup.sh does)"
        );
        let node = format!("{name}{}@localhost", std::process::id());
        let dir = super::work_dir().join(&node);
        std::fs::create_dir_all(&dir).expect("the node's folder");
        let (amqp_port, mqtt_port) = (free_port(), free_port());
        let access = match definitions {
            None => "mqtt.allow_anonymous = true\n".to_string(),
            Some(definitions) => {
                let file = dir.join("definitions.json");
                std::fs::write(&file, definitions.to_string()).expect("definitions.json");
                format!(
                    "mqtt.allow_anonymous = false\ndefinitions.import_backend = local_filesystem\n\
                     definitions.local.path = {}\n",
                    file.display()
                )
            }
        };
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = {amqp_port}\nmqtt.listeners.tcp.default = {mqtt_port}\n\
                 loopback_users = none\n{access}"
            ),
        )
        .expect("rabbitmq.conf");
        std::fs::write(dir.join("enabled_plugins"), "[rabbitmq_mqtt].\n").expect("enabled_plugins");
        let log = std::fs::File::create(dir.join("server.log")).expect("the node's log");
        let child = Command::new(format!("{BIN}/rabbitmq-server"))
            .envs(env(&node, &dir, amqp_port))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting rabbitmq-server");
        let mut rabbit = Self { child, name: node, mqtt_port, dir };
        rabbit.wait_for_mqtt();
        rabbit
    }

    fn wait_for_mqtt(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.mqtt_port)).is_err() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            assert!(self.child.try_wait().expect("rabbitmq").is_none(), "{} exited:\n{log}", self.name);
            assert!(
                Instant::now() < deadline,
                "{} did not take MQTT on {} within 60 s:\n{log}",
                self.name,
                self.mqtt_port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Joins this node to `other`'s cluster (stop_app, join_cluster, start_app) and waits for MQTT again.
    pub fn join(&mut self, other: &RabbitNode) {
        for args in [vec!["stop_app"], vec!["join_cluster", other.name.as_str()], vec!["start_app"]] {
            super::run(Command::new(format!("{BIN}/rabbitmqctl")).arg("-n").arg(&self.name).args(&args));
        }
        self.wait_for_mqtt();
    }
}

fn env(node: &str, dir: &std::path::Path, amqp_port: u16) -> Vec<(String, String)> {
    let at = |f: &str| dir.join(f).display().to_string();
    vec![
        ("RABBITMQ_NODENAME".into(), node.into()),
        ("RABBITMQ_NODE_PORT".into(), amqp_port.to_string()),
        ("RABBITMQ_DIST_PORT".into(), free_port().to_string()),
        ("RABBITMQ_MNESIA_BASE".into(), at("mnesia")),
        ("RABBITMQ_LOG_BASE".into(), at("log")),
        ("RABBITMQ_CONFIG_FILE".into(), at("rabbitmq.conf")),
        ("RABBITMQ_ENABLED_PLUGINS_FILE".into(), at("enabled_plugins")),
        ("RABBITMQ_FEATURE_FLAGS_FILE".into(), at("feature_flags")),
        ("RABBITMQ_PLUGINS_EXPAND_DIR".into(), at("plugins-expand")),
    ]
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = Command::new(format!("{BIN}/rabbitmqctl"))
            .args(["-n", &self.name, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
