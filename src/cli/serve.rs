//! `mqtt-video serve`: load the config, then run the MQTT server until SIGINT/SIGTERM.

use anyhow::{bail, Context, Result};
use clap::Args;
use mqtt_video::config::Config;
use std::path::PathBuf;

/// Arguments of `serve`. A few settings can also come from the environment (`MQTT_VIDEO_BROKER_HOST`, ...;
/// see docs/CONFIG.md), over the file's values; `--broker` wins over both.
#[derive(Args)]
pub struct ServeArgs {
    /// TOML config file (see config.example.toml); every key has a default, so this is optional.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Broker address, overriding the config: HOST:PORT.
    #[arg(long)]
    broker: Option<String>,
}

/// Runs the server.
pub fn run(args: ServeArgs) -> Result<()> {
    let mut config = Config::load_with_env(args.config.as_deref())?;
    if let Some(broker) = &args.broker {
        let (host, port) = broker.rsplit_once(':').context("--broker must be HOST:PORT")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().with_context(|| format!("--broker port '{port}' is not a number"))?;
        if host.is_empty() || port == 0 {
            bail!("--broker must be HOST:PORT with a host and a port from 1 to 65535");
        }
        config.broker.host = host.to_string();
        config.broker.port = port;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(mqtt_video::server::run(config))?;
    Ok(())
}
