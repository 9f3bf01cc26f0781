//! What `cleanup` is asked to do and what it reports (see [`super::cleanup`] for what it does).

use std::path::PathBuf;

use serde::Serialize;

use crate::config::BackendKind;
use crate::network::CleanupReport as NetworkCleanup;

/// Which VMs `cleanup` may act on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CleanupScope {
    /// Orphans only: kill VMMs without rows, mark dead VMs `error`, remove stale files and network
    /// leftovers. Rows are never deleted.
    #[default]
    Orphans,
    /// Orphans, and delete every VM whose VMM died or that is in `error` (`--all`).
    All,
    /// Only this VM id: its orphans, and delete it if its VMM died or it is in `error`.
    Vm(String),
}

/// Options of [`SmolVmManager::cleanup`](super::SmolVmManager::cleanup).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupOptions {
    /// Only report what would be done.
    pub dry_run: bool,
    /// Which VMs.
    pub scope: CleanupScope,
    /// Also remove disks without a row (retained disks), which are otherwise only listed.
    pub remove_retained_disks: bool,
}

/// A VMM process cleanup killed (or would kill).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrphanProcess {
    /// The VM its control socket names.
    pub vm_id: String,
    /// Its pid.
    pub pid: u32,
    /// Which VMM.
    pub backend: BackendKind,
    /// Its control socket.
    pub control_socket: PathBuf,
    /// Why it is an orphan.
    pub reason: String,
}

/// A disk without a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetainedDisk {
    /// The VM id its name carries (a later create with this id and `retain_disk_on_delete` reuses it).
    pub vm_id: String,
    /// The disk.
    pub path: PathBuf,
    /// Whether it was (or, in a dry run, would be) removed.
    pub removed: bool,
}

/// A step that failed; the others still ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CleanupFailure {
    /// What was being cleaned up.
    pub item: String,
    /// The error with its causes.
    pub error: String,
}

/// What [`SmolVmManager::cleanup`](super::SmolVmManager::cleanup) found and did (in a dry run: would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// VMM processes killed.
    pub processes: Vec<OrphanProcess>,
    /// VMs marked `error` because their VMM died.
    pub marked_error: Vec<String>,
    /// VMs deleted completely.
    pub deleted_vms: Vec<String>,
    /// Stale socket files removed.
    pub sockets: Vec<PathBuf>,
    /// Interrupted disk clones removed.
    pub temp_files: Vec<PathBuf>,
    /// VM directories without a row removed.
    pub vm_dirs: Vec<PathBuf>,
    /// Disk overlays (`<id>.qcow2`) of VMs without a row removed.
    pub overlays: Vec<PathBuf>,
    /// Snapshot directories without a row, and interrupted snapshot captures, removed.
    pub snapshot_dirs: Vec<PathBuf>,
    /// Disks without a row (listed; removed only when asked).
    pub retained_disks: Vec<RetainedDisk>,
    /// VM cgroups removed (their VM has no row or no live VMM).
    pub cgroups: Vec<String>,
    /// Firecracker jails removed (their VM has no row or no live VMM).
    pub jails: Vec<PathBuf>,
    /// Orphaned TAPs and nft rules, when the network step ran.
    pub network: Option<NetworkCleanup>,
    /// Why the network step did not run.
    pub network_skipped: Option<String>,
    /// Steps that failed.
    pub failures: Vec<CleanupFailure>,
}

impl CleanupReport {
    /// True if nothing was found (retained disks that were only listed count as nothing to do).
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
            && self.cgroups.is_empty()
            && self.jails.is_empty()
            && self.marked_error.is_empty()
            && self.deleted_vms.is_empty()
            && self.sockets.is_empty()
            && self.temp_files.is_empty()
            && self.vm_dirs.is_empty()
            && self.overlays.is_empty()
            && self.snapshot_dirs.is_empty()
            && self.retained_disks.iter().all(|d| !d.removed)
            && self.network.as_ref().is_none_or(NetworkCleanup::is_empty)
            && self.failures.is_empty()
    }
}

impl CleanupReport {
    pub(super) fn fail(&mut self, item: String, e: &dyn std::error::Error) {
        let mut error = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            error.push_str(": ");
            error.push_str(&c.to_string());
            cause = c.source();
        }
        self.failures.push(CleanupFailure { item, error });
    }
}
