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

/// What the binary prints for an error: `error: MESSAGE`, then each cause that the message does not already
/// say (thiserror messages often embed their source), one per line.
pub fn report(error: &anyhow::Error) -> String {
    let mut out = format!("error: {error}");
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str("\n  caused by: ");
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        let e = anyhow::Error::new(io).context("reading /etc/x.toml").context("loading the config");
        assert_eq!(
            report(&e),
            "error: loading the config\n  caused by: reading /etc/x.toml\n  caused by: permission denied"
        );
        let e = anyhow::anyhow!("cannot read x: permission denied").context("serve");
        assert_eq!(report(&e), "error: serve\n  caused by: cannot read x: permission denied");
        let io = std::io::Error::other("boom");
        let e = anyhow::Error::new(io).context("it went boom");
        assert_eq!(report(&e), "error: it went boom", "a cause the message already says is not repeated");
    }
}
