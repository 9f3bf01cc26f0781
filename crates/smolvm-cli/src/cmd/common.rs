//! Helpers shared by the commands: opening the manager from the global options, parsing choices.

use anyhow::Context;
use smolvm::BackendKind;
use smolvm::SmolVmManager;

use crate::Cli;

/// The manager-wide backend choice from `--backend` / `SMOLVM_BACKEND` (`None` = auto).
pub fn backend_choice(cli: &Cli) -> anyhow::Result<Option<BackendKind>> {
    match cli.backend.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => Ok(BackendKind::parse_choice(s)?),
    }
}

/// Opens the manager with the global directory and backend options.
pub fn manager(cli: &Cli) -> anyhow::Result<SmolVmManager> {
    SmolVmManager::new(
        cli.data_dir.as_deref(),
        cli.socket_dir.as_deref(),
        backend_choice(cli)?,
    )
    .context("cannot open the smolvm state")
}
