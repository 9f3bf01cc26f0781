//! `pause`, `resume`, `snapshot create|list|info|delete`, `fork`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use smolvm::SnapshotInfo;

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

/// `smolvm snapshot ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a running or paused VM: memory, device state and disk (a running VM is paused for it).
    Create {
        /// The VM id.
        id: String,
        /// The snapshot's name (same rule as a VM id).
        name: String,
        /// Print the snapshot as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List snapshots.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one snapshot.
    Info {
        /// The snapshot's name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete snapshots (refused while VMs made from one exist).
    Delete {
        /// The snapshots' names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Arguments of `smolvm fork`.
#[derive(Debug, Args)]
pub struct ForkArgs {
    /// The running (or paused) VM to fork.
    pub id: String,
    /// How many new VMs.
    #[arg(short = 'n', long = "count", default_value_t = 1)]
    pub n: usize,
    /// Seconds each new VM may take to become ready.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Print the new VMs' VmInfo as a JSON array.
    #[arg(long)]
    pub json: bool,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn print_one(s: &SnapshotInfo) {
    println!("name:        {}", s.name);
    println!("source VM:   {}", s.source_vm);
    println!("backend:     {} ({})", s.backend, s.vmm_version);
    println!("machine:     {} vCPU, {} MiB", s.vcpu_count, s.mem_size_mib);
    println!("size:        {} allocated", mib(s.size_bytes));
    println!("created:     {:.3} (Unix time)", s.created_at);
    println!("path:        {}", s.path.display());
    let users = if s.used_by.is_empty() {
        "-".to_string()
    } else {
        s.used_by.join(", ")
    };
    println!("used by:     {users}");
}

/// `smolvm snapshot ...`.
pub fn snapshot(cli: &Cli, cmd: &SnapshotCommand) -> anyhow::Result<ExitCode> {
    let m = manager(cli)?;
    match cmd {
        SnapshotCommand::Create { id, name, json } => {
            let s = m.snapshot(id, name)?;
            if *json {
                print_json(&s)?;
            } else {
                println!(
                    "snapshot {} of {} ({})",
                    s.name,
                    s.source_vm,
                    mib(s.size_bytes)
                );
            }
        }
        SnapshotCommand::List { json } => {
            let all = m.list_snapshots()?;
            if *json {
                print_json(&all)?;
            } else {
                println!(
                    "{:<24} {:<20} {:>12} {:>6} {:>8}  USED BY",
                    "NAME", "SOURCE", "SIZE", "VCPUS", "MEM MIB"
                );
                for s in &all {
                    println!(
                        "{:<24} {:<20} {:>12} {:>6} {:>8}  {}",
                        s.name,
                        s.source_vm,
                        mib(s.size_bytes),
                        s.vcpu_count,
                        s.mem_size_mib,
                        s.used_by.join(",")
                    );
                }
            }
        }
        SnapshotCommand::Info { name, json } => {
            let s = m.get_snapshot(name)?;
            if *json {
                print_json(&s)?;
            } else {
                print_one(&s);
            }
        }
        SnapshotCommand::Delete { names } => {
            let mut failed = false;
            for n in names {
                match m.delete_snapshot(n) {
                    Ok(()) => println!("deleted snapshot {n}"),
                    Err(e) => {
                        failed = true;
                        crate::output::print_error(
                            &anyhow::Error::new(e).context(format!("delete snapshot {n}")),
                        );
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `smolvm fork ID -n N`.
pub fn fork(cli: &Cli, a: &ForkArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::try_from_secs_f64(a.timeout)
        .map_err(|_| anyhow::anyhow!("invalid timeout {}: seconds >= 0", a.timeout))?;
    let vms = manager(cli)?.fork(&a.id, a.n, timeout)?;
    if a.json {
        print_json(&vms)?;
    } else {
        for v in &vms {
            let ip = v
                .guest_ip()
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "-".into());
            println!("forked {} -> {} ({ip})", a.id, v.vm_id);
        }
    }
    Ok(ExitCode::SUCCESS)
}
