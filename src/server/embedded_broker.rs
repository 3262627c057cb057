//! `broker.embedded`: a broker inside the process, so that a first start needs nothing installed (rumqttd,
//! MQTT 3.1.1 on `broker.embedded_listen`, for the server's own client, the gateway's browsers and any other
//! MQTT client). It has no TLS, no logins and no ACL: `topics.guarded` and a cluster need a real broker.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Largest packet the embedded broker takes from a client: a keyframe of a 4K stream is a few MB.
const MAX_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;
/// Each subscription's log of recent messages is kept to this many segments of `SEGMENT_BYTES`: a viewer that
/// falls further behind loses the oldest (it is live video), and memory stays bounded per topic.
const SEGMENT_BYTES: usize = 4 * 1024 * 1024;
const SEGMENTS: usize = 3;
/// How long the broker may take to accept connections after it is started.
const READY_WITHIN: Duration = Duration::from_secs(5);

/// Why the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedBrokerError {
    /// The listen address is taken (another broker, or another server) or not this machine's.
    #[error("broker.embedded_listen {addr}: {error} (is another broker running there? set broker.embedded = false to use it)")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// What binding said.
        error: std::io::Error,
    },
    /// The broker's thread could not be started.
    #[error("the embedded broker's thread: {0}")]
    Thread(std::io::Error),
    /// rumqttd did not take connections in time.
    #[error("the embedded broker did not take connections on {0} within 5 s")]
    NotReady(SocketAddr),
}

/// Starts the broker on `listen` and returns once it takes connections, with the address to connect to
/// (loopback when it listens on every address).
pub fn start(listen: SocketAddr) -> Result<SocketAddr, EmbeddedBrokerError> {
    // rumqttd only logs a failed bind: try it here first, so that a port in use is a start-up error.
    drop(TcpListener::bind(listen).map_err(|error| EmbeddedBrokerError::Bind { addr: listen, error })?);
    let config = config(listen);
    std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(error) = broker.start() {
                tracing::error!(%error, "the embedded broker stopped");
            }
        })
        .map_err(EmbeddedBrokerError::Thread)?;
    let connect = connect_address(listen);
    let deadline = Instant::now() + READY_WITHIN;
    while TcpStream::connect_timeout(&connect, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            return Err(EmbeddedBrokerError::NotReady(listen));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!(%listen, "embedded broker: MQTT 3.1.1 on {listen}, no logins and no ACL (use mosquitto for those)");
    Ok(connect)
}

/// Where to connect to a broker listening on `listen`: loopback for an unspecified address.
pub fn connect_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

fn config(listen: SocketAddr) -> rumqttd::Config {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: MAX_PAYLOAD_BYTES,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server =
        rumqttd::ServerSettings { name: "mqtt".into(), listen, tls: None, next_connection_delay_ms: 0, connections };
    let router = rumqttd::RouterConfig {
        max_connections: 10_000,
        max_outgoing_packet_count: 200,
        max_segment_size: SEGMENT_BYTES,
        max_segment_count: SEGMENTS,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    rumqttd::Config {
        id: 0,
        router,
        v4: Some([("mqtt".to_string(), server)].into_iter().collect()),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_address_is_reached_through_loopback() {
        let at = |s: &str| s.parse::<SocketAddr>().expect("an address");
        assert_eq!(connect_address(at("0.0.0.0:1883")), at("127.0.0.1:1883"));
        assert_eq!(connect_address(at("[::]:1883")), at("[::1]:1883"));
        assert_eq!(connect_address(at("192.0.2.7:1884")), at("192.0.2.7:1884"));
    }
}
