//! One module per command group. Each exposes clap argument structs and functions
//! `fn(&Cli, &Args) -> anyhow::Result<ExitCode>`.

pub mod bench;
pub mod doctor;
pub mod list;
