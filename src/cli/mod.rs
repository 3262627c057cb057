//! Subcommands of the binary.

pub mod probe;
pub mod serve;
