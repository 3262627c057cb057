//! `mqtt-video serve`: load the config, then run the MQTT server until SIGINT/SIGTERM.

use anyhow::Result;
use clap::Args;
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
    let mut config = super::load_config(args.config.as_deref())?;
    if let Some(broker) = &args.broker {
        (config.broker.host, config.broker.port) = super::parse_broker(broker)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(mqtt_video::server::run(config))?;
    Ok(())
}
