//! `smolvm cleanup`: finds and removes what a crash left behind (VMM processes without rows, VMs whose
//! VMM died, stale sockets, interrupted disk clones, orphaned TAPs and firewall rules). See
//! `SmolVmManager::cleanup` for the exact rules.
//!
//! Exit status 1 when a step failed (the report names it); the other steps still ran.

use std::process::ExitCode;

use clap::Args;
use smolvm::{CleanupOptions, CleanupReport, CleanupScope};

use super::common::manager;
use crate::output::print_json;
use crate::Cli;

/// Arguments of `smolvm cleanup`.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Only VMs with this id: its leftovers, and delete it if its VMM died or it is in error.
    #[arg(value_name = "ID", conflicts_with = "all")]
    pub vm_id: Option<String>,
    /// Also delete every VM whose VMM died or that is in error (default: only mark them error).
    #[arg(long)]
    pub all: bool,
    /// Show what would be done without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Also remove disks without a VM (kept by `retain_disk_on_delete`); otherwise they are listed.
    #[arg(long)]
    pub retained_disks: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl CleanupArgs {
    /// The library options these arguments ask for.
    pub fn options(&self) -> CleanupOptions {
        CleanupOptions {
            dry_run: self.dry_run,
            scope: match (&self.vm_id, self.all) {
                (Some(id), _) => CleanupScope::Vm(id.clone()),
                (None, true) => CleanupScope::All,
                (None, false) => CleanupScope::Orphans,
            },
            remove_retained_disks: self.retained_disks,
        }
    }
}

/// Runs `smolvm cleanup`.
pub fn run(cli: &Cli, args: &CleanupArgs) -> anyhow::Result<ExitCode> {
    let report = manager(cli)?.cleanup(&args.options())?;
    if args.json {
        print_json(&report)?;
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The human-readable report: one line per item, verbs in the conditional for a dry run.
fn render(r: &CleanupReport) -> String {
    let (kill, mark, delete, remove) = if r.dry_run {
        (
            "would kill",
            "would mark error",
            "would delete",
            "would remove",
        )
    } else {
        ("killed", "marked error", "deleted", "removed")
    };
    let mut out = Vec::new();
    for p in &r.processes {
        out.push(format!(
            "{kill} {} process {} of VM {} ({})",
            p.backend, p.pid, p.vm_id, p.reason
        ));
    }
    out.extend(
        r.marked_error
            .iter()
            .map(|id| format!("{mark}: VM {id} (its VMM is gone)")),
    );
    out.extend(r.deleted_vms.iter().map(|id| format!("{delete} VM {id}")));
    for (what, paths) in [
        ("socket", &r.sockets),
        ("interrupted disk clone", &r.temp_files),
        ("VM directory", &r.vm_dirs),
        ("disk overlay", &r.overlays),
        ("snapshot directory", &r.snapshot_dirs),
        ("Firecracker jail", &r.jails),
    ] {
        out.extend(
            paths
                .iter()
                .map(|p| format!("{remove} {what} {}", p.display())),
        );
    }
    out.extend(
        r.cgroups
            .iter()
            .map(|id| format!("{remove} cgroup of VM {id} (no live VMM)")),
    );
    for d in &r.retained_disks {
        if d.removed {
            out.push(format!(
                "{remove} retained disk {} (VM {})",
                d.path.display(),
                d.vm_id
            ));
        } else {
            out.push(format!(
                "kept retained disk {} (VM {}; --retained-disks removes it)",
                d.path.display(),
                d.vm_id
            ));
        }
    }
    if let Some(n) = &r.network {
        for t in &n.taps {
            let owner = t.vm_id.as_deref().unwrap_or("untagged");
            out.push(format!("{remove} TAP {} ({owner})", t.name));
        }
        for rule in &n.rules {
            out.push(format!(
                "{remove} nft rule {} in chain {} (VM {})",
                rule.handle, rule.chain, rule.vm_id
            ));
        }
    }
    if let Some(why) = &r.network_skipped {
        out.push(format!("network not checked: {why}"));
    }
    for f in &r.failures {
        out.push(format!("FAILED to {}: {}", f.item, f.error));
    }
    if r.is_empty() && r.network_skipped.is_none() && r.retained_disks.is_empty() {
        out.push("nothing to clean up".to_string());
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use smolvm::RetainedDisk;

    #[test]
    fn dry_run_report_reads_conditionally() {
        let r = CleanupReport {
            dry_run: true,
            marked_error: vec!["a".into()],
            sockets: vec!["/s/a.qmp".into()],
            retained_disks: vec![RetainedDisk {
                vm_id: "b".into(),
                path: "/d/b.ext4".into(),
                removed: false,
            }],
            ..CleanupReport::default()
        };
        assert_eq!(
            render(&r),
            "would mark error: VM a (its VMM is gone)\n\
             would remove socket /s/a.qmp\n\
             kept retained disk /d/b.ext4 (VM b; --retained-disks removes it)\n"
        );
        assert_eq!(render(&CleanupReport::default()), "nothing to clean up\n");
    }
}
