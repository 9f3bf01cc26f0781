//! The `smolvm` command-line tool: parse, call the library, print. Errors are printed once, here, with
//! their whole cause chain.

mod cmd;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Disposable, hardware-isolated Linux microVMs.
#[derive(Debug, Parser)]
#[command(name = "smolvm", version, about, propagate_version = true)]
pub struct Cli {
    /// Directory for the state database, images and disks [env: SMOLVM_DATA_DIR]
    /// [default: ~/.local/state/smolvm, else /var/lib/smolvm]
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Directory for VM sockets [default: /tmp/smolvm-<uid>]
    #[arg(long, global = true)]
    pub socket_dir: Option<PathBuf>,
    /// VMM backend: auto, qemu or firecracker [default: auto]
    #[arg(long, global = true, env = "SMOLVM_BACKEND", value_name = "BACKEND")]
    pub backend: Option<cmd::common::BackendChoice>,
    /// Run VMMs as root instead of each as its VM's own unprivileged user (when smolvm runs as root;
    /// for debugging a VMM). Same as SMOLVM_VMM_USER=off
    #[arg(long, global = true)]
    pub vmm_as_root: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List VMs.
    List(cmd::list::ListArgs),
    /// Show one VM as the spec's VmInfo.
    Info(cmd::list::InfoArgs),
    /// Check prerequisites and what this host can do.
    Doctor(cmd::doctor::DoctorArgs),
    /// Build and list guest images.
    Image {
        #[command(subcommand)]
        cmd: cmd::image::ImageCommand,
    },
    /// Create a VM (default image unless --kernel/--rootfs); --start boots it too.
    Create(cmd::vm::CreateCmd),
    /// Start a created or stopped VM and wait until its guest is ready.
    Start(cmd::vm::IdTimeoutArgs),
    /// Stop a running VM (graceful power-off, then kill after --timeout).
    Stop(cmd::vm::IdTimeoutArgs),
    /// Pause a running VM (its vCPUs stop; memory and VMM process stay).
    Pause(cmd::snapshot::PauseArgs),
    /// Resume a paused VM.
    Resume(cmd::snapshot::PauseArgs),
    /// Create, list, inspect and delete snapshots (memory + device state + disk of a VM).
    Snapshot {
        #[command(subcommand)]
        cmd: cmd::snapshot::SnapshotCommand,
    },
    /// Fork a running VM into N new VMs (each with its own id, address, disk and fresh randomness).
    Fork(cmd::snapshot::ForkArgs),
    /// Delete VMs and everything they own (process, network, disk, row).
    Delete(cmd::vm::DeleteArgs),
    /// Print a VM's console (or VMM) log.
    Logs(cmd::vm::LogsArgs),
    /// Create a VM, run one command in it (output streamed), then delete it unless --keep.
    Run(cmd::run::RunArgs),
    /// Run a command in a running VM, streaming its output; exits with the command's status.
    Exec(cmd::exec::ExecArgs),
    /// Set, unset or list a VM's persisted environment variables.
    Env(cmd::env::EnvArgs),
    /// Set or show a VM's egress policy, or re-resolve its allow-listed domains.
    Policy(cmd::policy::PolicyCmd),
    /// Copy a file between this host and a VM: `smolvm cp SRC DST`, one side as ID:/guest/path.
    Cp(cmd::cp::CpArgs),
    /// Mark running VMs whose VMM died as error; restart channel owners that died.
    Reconcile(cmd::vm::ReconcileArgs),
    /// Open a shell in a running VM over SSH, or run one command (`smolvm ssh ID -- CMD...`).
    Ssh(cmd::ssh::SshArgs),
    /// Print ready-to-paste SSH commands for a VM.
    SshCommands(cmd::ssh::SshCommandsArgs),
    /// Find and remove what a crash left behind (processes, rows, sockets, disks, TAPs, rules).
    Cleanup(cmd::cleanup::CleanupArgs),
    /// Measure cold start, exec latency, lifecycle cost and memory against the raw VMM.
    Bench(cmd::bench::BenchArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SMOLVM_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if cli.vmm_as_root {
        // Before any thread starts: every manager this process opens (directly or through a VM
        // handle) reads the switch from the environment.
        std::env::set_var(smolvm::VMM_USER_ENV, "off");
    }
    let result = match &cli.command {
        Command::List(a) => cmd::list::list(&cli, a),
        Command::Info(a) => cmd::list::info(&cli, a),
        Command::Doctor(a) => cmd::doctor::run(&cli, a),
        Command::Image { cmd } => cmd::image::run(&cli, cmd),
        Command::Create(a) => cmd::vm::create(&cli, a),
        Command::Start(a) => cmd::vm::start(&cli, a),
        Command::Stop(a) => cmd::vm::stop(&cli, a),
        Command::Delete(a) => cmd::vm::delete(&cli, a),
        Command::Pause(a) => cmd::snapshot::pause(&cli, a),
        Command::Snapshot { cmd } => cmd::snapshot::snapshot(&cli, cmd),
        Command::Fork(a) => cmd::snapshot::fork(&cli, a),
        Command::Resume(a) => cmd::snapshot::resume(&cli, a),
        Command::Logs(a) => cmd::vm::logs(&cli, a),
        Command::Run(a) => cmd::run::run(&cli, a),
        Command::Exec(a) => cmd::exec::exec(&cli, a),
        Command::Env(a) => cmd::env::run(&cli, a),
        Command::Policy(a) => cmd::policy::run(&cli, a),
        Command::Cp(a) => cmd::cp::cp(&cli, a),
        Command::Reconcile(a) => cmd::vm::reconcile(&cli, a),
        Command::Ssh(a) => cmd::ssh::ssh(&cli, a),
        Command::SshCommands(a) => cmd::ssh::ssh_commands(&cli, a),
        Command::Cleanup(a) => cmd::cleanup::run(&cli, a),
        Command::Bench(a) => cmd::bench::run(&cli, a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            output::print_error(&e);
            ExitCode::from(1)
        }
    }
}
