//! `smolvm doctor` (filled in when host checks land).

use std::process::ExitCode;

use clap::Args;

use crate::Cli;

/// Arguments of `smolvm doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `smolvm doctor`.
pub fn run(_cli: &Cli, _args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("doctor: host checks are not wired yet")
}
