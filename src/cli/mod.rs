//! Subcommands of the binary.

pub mod probe;
