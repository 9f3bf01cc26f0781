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
    /// VMM backend: auto, qemu or firecracker
    #[arg(long, global = true, env = "SMOLVM_BACKEND")]
    pub backend: Option<String>,
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
    let result = match &cli.command {
        Command::List(a) => cmd::list::list(&cli, a),
        Command::Info(a) => cmd::list::info(&cli, a),
        Command::Doctor(a) => cmd::doctor::run(&cli, a),
        Command::Image { cmd } => cmd::image::run(&cli, cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            output::print_error(&e);
            ExitCode::from(1)
        }
    }
}
