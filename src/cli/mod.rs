//! Subcommands of the binary.

pub mod bench;
pub mod healthcheck;
pub mod probe;
pub mod serve;

use anyhow::{bail, Context, Result};
use mqtt_video::config::{Config, ConfigError};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The configuration (file and environment), with a hint when the file exists but this process may not read
/// it: in the docker image the server runs as uid 10001, and a mounted file of mode 600 is a common slip.
pub fn load_config(path: Option<&Path>) -> Result<Config> {
    match Config::load_with_env(path) {
        Ok(config) => Ok(config),
        Err(ConfigError::Read { path, source }) if source.kind() == std::io::ErrorKind::PermissionDenied => {
            let owner = std::fs::metadata(&path)
                .map(|m| format!("owned by uid {} with mode {:o}", m.uid(), m.mode() & 0o777))
                .unwrap_or_else(|_| "in a folder it may not enter".into());
            let uid = process_uid().map_or_else(|| "?".into(), |u| u.to_string());
            let file = path.display();
            bail!(
                "cannot read {file}: permission denied: this server runs as uid {uid} and the file is {owner}; \
                 make it readable by that user (chmod a+r {file}, or chown {uid} {file})"
            )
        }
        Err(e) => Err(e.into()),
    }
}

/// This process's real uid, from /proc.
fn process_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

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
