//! `smolvm list` and `smolvm info` (filled in when the state store lands).

use std::process::ExitCode;

use clap::Args;

use crate::Cli;

/// Arguments of `smolvm list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only VMs in this state (created, running, stopped, error).
    #[arg(long)]
    pub status: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `smolvm info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The VM id.
    pub id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `smolvm list`.
pub fn list(_cli: &Cli, _args: &ListArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("list: the state store is not wired yet")
}

/// Runs `smolvm info`.
pub fn info(_cli: &Cli, _args: &InfoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("info: the state store is not wired yet")
}
