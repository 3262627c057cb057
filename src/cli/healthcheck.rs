//! `mqtt-video healthcheck`: asks a running server's gateway for `/healthz`; exit status 0 when healthy.
//! For container health checks: the runtime image has no curl, and this needs nothing but the binary.

use anyhow::{bail, Context, Result};
use clap::Args;
use mqtt_video::server::gateway::HEALTH_PATH;
use mqtt_video::server::health::http_status;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `healthcheck`.
#[derive(Args)]
pub struct HealthcheckArgs {
    /// The gateway's address [default: gateway.listen of --config (0.0.0.0 asked on 127.0.0.1), else
    /// 127.0.0.1:8080].
    #[arg(long)]
    addr: Option<String>,
    /// The server's config file (with its environment overrides): ask where its gateway listens.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
}

/// Where to ask: `--addr`, else the config's gateway address (an unspecified address means this machine).
fn target(args: &HealthcheckArgs) -> Result<String> {
    if let Some(addr) = &args.addr {
        return Ok(addr.clone());
    }
    let Some(path) = &args.config else { return Ok("127.0.0.1:8080".into()) };
    let config = super::load_config(Some(path))?;
    if !config.gateway.enabled {
        bail!("{}: gateway.enabled is false, so there is no /healthz to ask", path.display());
    }
    Ok(local(config.gateway.listen_addr()?).to_string())
}

/// Where to reach a listener bound to `listen` from this machine: an unspecified address on loopback.
fn local(mut listen: SocketAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        listen.set_ip(if listen.is_ipv4() { Ipv4Addr::LOCALHOST.into() } else { Ipv6Addr::LOCALHOST.into() });
    }
    listen
}

/// Exits 0 when the server answers 200 on /healthz, else fails with what it saw.
pub fn run(args: HealthcheckArgs) -> Result<()> {
    let timeout = Duration::from_secs_f64(args.timeout.clamp(0.1, 60.0));
    let target = target(&args)?;
    let addr = target
        .to_socket_addrs()
        .with_context(|| format!("--addr {target}"))?
        .next()
        .with_context(|| format!("--addr {target} resolves to nothing"))?;
    let mut tcp = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connecting to {addr}"))?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    write!(tcp, "GET {HEALTH_PATH} HTTP/1.0\r\nHost: {target}\r\nConnection: close\r\n\r\n")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_asked_on_loopback() {
        let at = |s: &str| local(s.parse().unwrap()).to_string();
        assert_eq!(at("0.0.0.0:8080"), "127.0.0.1:8080");
        assert_eq!(at("[::]:9000"), "[::1]:9000");
        assert_eq!(at("192.0.2.7:8080"), "192.0.2.7:8080");
    }
}
