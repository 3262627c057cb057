//! Subcommands of the binary.

pub mod bench;
pub mod healthcheck;
pub mod probe;
pub mod serve;
