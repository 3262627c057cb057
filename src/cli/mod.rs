//! Subcommands of the binary.

pub mod bench;
pub mod probe;
pub mod serve;
