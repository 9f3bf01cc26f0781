//! One module per command group. Each exposes clap argument structs and functions
//! `fn(&Cli, &Args) -> anyhow::Result<ExitCode>`.

pub mod bench;
pub mod cleanup;
pub mod common;
pub mod cp;
pub mod doctor;
pub mod env;
pub mod exec;
pub mod image;
pub mod list;
pub mod policy;
pub mod run;
pub mod snapshot;
pub mod ssh;
pub mod vm;
