//! `pause`, `resume`: stop and continue a VM's vCPUs.

use std::process::ExitCode;

use clap::Args;

use super::common::manager;
use crate::output::print_json;
use crate::Cli;

/// Arguments of `smolvm pause` and `smolvm resume`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// The VM id.
    pub id: String,
    /// Print the VmInfo as JSON.
    #[arg(long)]
    pub json: bool,
}

fn show(info: &smolvm::VmInfo, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        print_json(info)?;
    } else {
        println!("{} is {}", info.vm_id, info.status);
    }
    Ok(ExitCode::SUCCESS)
}

/// `smolvm pause ID`.
pub fn pause(cli: &Cli, a: &PauseArgs) -> anyhow::Result<ExitCode> {
    show(&manager(cli)?.pause(&a.id)?, a.json)
}

/// `smolvm resume ID`.
pub fn resume(cli: &Cli, a: &PauseArgs) -> anyhow::Result<ExitCode> {
    show(&manager(cli)?.resume(&a.id)?, a.json)
}
