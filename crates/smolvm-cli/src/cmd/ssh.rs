//! `smolvm ssh` (a shell or one command in the guest over SSH) and `smolvm ssh-commands` (commands to
//! paste into a shell).
//!
//! `smolvm ssh` replaces itself with the system `ssh` client (`exec`), so the terminal, signals and
//! stdin go straight to the session and the exit status is the remote command's (255 when ssh itself
//! fails). It logs in with the data directory's client key and accepts only the VM's pinned host key.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};
use clap::Args;
use smolvm::VmState;

use super::common::manager;
use crate::output::print_json;
use crate::Cli;

/// Arguments of `smolvm ssh`.
#[derive(Debug, Args)]
pub struct SshArgs {
    /// The VM id.
    pub vm_id: String,
    /// Login user.
    #[arg(long, short = 'u', default_value = "root")]
    pub user: String,
    /// Command to run instead of an interactive shell (after `--`). Each word reaches the guest as one
    /// argument; use `-- sh -c '...'` for shell syntax.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Arguments of `smolvm ssh-commands`.
#[derive(Debug, Args)]
pub struct SshCommandsArgs {
    /// The VM id.
    pub vm_id: String,
    /// Login user.
    #[arg(long, short = 'u', default_value = "root")]
    pub user: String,
    /// Private key the commands log in with [default: smolvm's client key of the data directory].
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Also print a `public` command that reaches the VM through this host as an SSH jump host
    /// (`[user@]host[:port]`).
    #[arg(long)]
    pub public_host: Option<String>,
    /// Print JSON (`{"localhost_port": ..., "private_ip": ..., "public": ...}`).
    #[arg(long)]
    pub json: bool,
}

/// Runs `smolvm ssh`: on success it does not return (the process becomes `ssh`).
pub fn ssh(cli: &Cli, args: &SshArgs) -> anyhow::Result<ExitCode> {
    let m = manager(cli)?;
    let info = m.get(&args.vm_id)?;
    if info.status != VmState::Running {
        bail!(
            "VM {} is {}; start it first (smolvm start {})",
            args.vm_id,
            info.status,
            args.vm_id
        );
    }
    let target = m.ssh_target(&args.vm_id, &args.user)?;
    let command = (!args.command.is_empty()).then_some(args.command.as_slice());
    let argv = smolvm::ssh_argv(&target, command)?;
    let program = smolvm::internals::network::find_program(&argv[0])
        .context("`ssh` not found: install the openssh-client package")?;
    drop(m);
    let err = Command::new(&program).args(&argv[1..]).exec();
    Err(err).with_context(|| format!("cannot run {}", program.display()))
}

/// Runs `smolvm ssh-commands`.
pub fn ssh_commands(cli: &Cli, args: &SshCommandsArgs) -> anyhow::Result<ExitCode> {
    let m = manager(cli)?;
    let commands = m.get_ssh_commands(
        &args.vm_id,
        &args.user,
        args.key.as_deref(),
        args.public_host.as_deref(),
    )?;
    if args.json {
        print_json(&commands)?;
    } else {
        let width = commands.keys().map(String::len).max().unwrap_or(0);
        for (name, command) in &commands {
            println!("{name:<width$}  {command}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
