//! Every integration test in one binary: linked once instead of once per file, and its tests run side by side
//! whatever file they are in. Tests that measure CPU or timing run in their own pass, alone (`scripts/test.sh`
//! lists them in `SERIAL`); `cargo test --test it -- NAME` runs one as ever.

mod support;

mod bench;
mod brokers;
mod cli;
mod cluster;
mod deploy;
mod fanout;
mod gateway;
mod hardening;
mod hevc;
mod homeassistant;
mod ingest;
mod lifecycle;
mod live_ts;
mod metrics;
mod overload;
mod pipeline;
mod properties;
mod renditions;
mod rights;
mod rtmp;
mod rtsp_marker;
mod rtsp_udp;
mod server;
mod snapshot;
mod soak;
mod standalone;
mod talk;
mod tls;
