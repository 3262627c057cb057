//! The `mqtt-video` command line.

mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// Live video over MQTT: in-process FFmpeg to fragmented MP4 for browsers.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// FFmpeg's own log level: quiet, error, warning, info, debug.
    #[arg(long, global = true, default_value = "error")]
    ffmpeg_log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open a source, run the pipeline for a while and report what a browser would get.
    Probe(cli::probe::ProbeArgs),
    /// Run the MQTT server: answer describe/play/stop and stream allowed sources to viewers.
    Serve(cli::serve::ServeArgs),
    /// Act as N viewers against a server and measure time to media, latency, bitrate, gaps and server cost.
    Bench(cli::bench::BenchArgs),
    /// Ask a running server's gateway whether it is healthy (exit status 0 when it is).
    Healthcheck(cli::healthcheck::HealthcheckArgs),
}

/// Errors end here: the message and its causes on stderr, never a backtrace (even with `RUST_BACKTRACE` set,
/// which developers often have: an unreachable camera is not a bug in this program), and exit status 1.
fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", cli::report(&e));
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    // One TLS stack: rustls with ring (which rumqttc's webpki needs anyway), chosen here for the whole process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    mqtt_video::media::init_process();
    let filter = std::env::var("MQTT_VIDEO_LOG").ok().filter(|f| !f.trim().is_empty()).unwrap_or_else(|| "info".into());
    // rustls warns at every handshake of a client that sends an IP address as its server name (WebKit does,
    // for https://192.168.1.5:8080/): the connection is fine, so its warnings are kept out of the log unless
    // the filter names rustls itself.
    let filter = if filter.contains("rustls") { filter } else { format!("{filter},rustls=error") };
    // The embedded broker (rumqttd) logs every connection and subscription at info, and a client that goes
    // away without a DISCONNECT (a closed browser tab) as an error: warnings of its own are kept.
    let filter =
        if filter.contains("rumqttd") { filter } else { format!("{filter},rumqttd=warn,rumqttd::server::broker=off") };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info,rustls=error,rumqttd=warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald, `docker logs` and log files get plain text.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
    let args = Args::parse();
    mqtt_video::media::set_ffmpeg_log_level(&args.ffmpeg_log)?;
    match args.command {
        Command::Probe(args) => cli::probe::run(args),
        Command::Serve(args) => cli::serve::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Healthcheck(args) => cli::healthcheck::run(args),
    }
}
