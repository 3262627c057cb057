//! Subcommands of the binary.

pub mod bench;
pub mod healthcheck;
pub mod probe;
pub mod serve;

use anyhow::{bail, Context, Result};

/// `--broker HOST:PORT` (an IPv6 host may be bracketed), split at its last `:`.
pub fn parse_broker(s: &str) -> Result<(String, u16)> {
    let (host, port) = s.rsplit_once(':').context("--broker must be HOST:PORT")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().with_context(|| format!("--broker port '{port}' is not a number"))?;
    if host.is_empty() || port == 0 {
        bail!("--broker must be HOST:PORT with a host and a port from 1 to 65535");
    }
    Ok((host.to_string(), port))
}
