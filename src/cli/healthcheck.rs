//! `mqtt-video healthcheck`: asks a running server's gateway for `/healthz`; exit status 0 when healthy.
//! For container health checks: the runtime image has no curl, and this needs nothing but the binary.

use anyhow::{bail, Context, Result};
use clap::Args;
use mqtt_video::server::gateway::HEALTH_PATH;
use mqtt_video::server::health::http_status;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Arguments of `healthcheck`.
#[derive(Args)]
pub struct HealthcheckArgs {
    /// The gateway's address (gateway.listen).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
}

/// Exits 0 when the server answers 200 on /healthz, else fails with what it saw.
pub fn run(args: HealthcheckArgs) -> Result<()> {
    let timeout = Duration::from_secs_f64(args.timeout.clamp(0.1, 60.0));
    let addr = args
        .addr
        .to_socket_addrs()
        .with_context(|| format!("--addr {}", args.addr))?
        .next()
        .with_context(|| format!("--addr {} resolves to nothing", args.addr))?;
    let mut tcp = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connecting to {addr}"))?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    write!(tcp, "GET {HEALTH_PATH} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n", args.addr)?;
    let mut response = Vec::new();
    // A healthy answer is a few dozen bytes; never read an unbounded body.
    tcp.take(64 * 1024).read_to_end(&mut response).with_context(|| format!("reading from {addr}"))?;
    let text = String::from_utf8_lossy(&response);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    match http_status(&text) {
        Some(200) => {
            println!("healthy: {body}");
            Ok(())
        }
        Some(code) => bail!("unhealthy (HTTP {code}): {body}"),
        None => bail!("{addr} did not answer HTTP"),
    }
}
