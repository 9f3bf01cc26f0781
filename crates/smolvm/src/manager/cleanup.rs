//! `cleanup`: finds and removes what a crash left behind, for this manager's data and socket
//! directories.
//!
//! Per VM id (from rows, VMM processes, socket files, disks and VM directories), under the VM's lock so
//! that a concurrent create/start/delete is never disturbed half-way:
//! * VMM processes (`qemu-system-*`, `firecracker`) that provably belong to this store (their
//!   environment names it, see [`crate::dirs::STORE_ENV`]) and whose command line names a control
//!   socket `<socket_dir>/<id>.qmp` / `.fc.sock`, and that no row records as the VM's running VMM:
//!   killed, by identity (pid and start time), so a reused pid is never hit. A VMM of another store, or
//!   an unmarked one, is never touched, nor are its socket files, even in a shared socket directory;
//! * rows that say running while their VMM is gone: marked `error` (like `reconcile`); with
//!   [`CleanupScope::All`] or [`CleanupScope::Vm`], these and VMs already in `error` are deleted
//!   completely (`delete`: network, disk unless retained, files, row);
//! * socket files of VMs with no live VMM; interrupted disk clones `<disk_dir>/<id>.tmp-*`; VM
//!   directories without a row;
//! * lock files `data_dir/locks/<id>.lock` of ids without a row (removed safely, see
//!   [`super::lock`]);
//! * disks `<disk_dir>/<id>.ext4` without a row: these are retained disks (`retain_disk_on_delete`) and
//!   are only listed, unless [`CleanupOptions::remove_retained_disks`];
//! * disk overlays `<disk_dir>/<id>.qcow2` without a row (a VM made from a snapshot or template whose
//!   create or delete was killed): never retained, removed.
//!
//! Then, store-wide, snapshot directories `data_dir/snapshots/<name>` without a row and interrupted
//! snapshot captures `.<name>.tmp-*` (see [`super::cleanup_snapshots`]), while no snapshot is being
//! taken.
//!
//! Then host networking: TAPs and nft rules tagged for VMs that neither have a row here nor a live VMM
//! process anywhere on the host ([`HostNetwork::cleanup_orphans`]). Tags do not name the data
//! directory, so a stopped VM of another data directory loses its TAP too; its next `start` makes it
//! again. With [`CleanupScope::Vm`] only that VM's tagged TAP and rules are considered. Without the
//! privilege for TAP networking this step is skipped and the report says why.
//!
//! A step that fails is recorded in [`CleanupReport::failures`] and the rest still runs.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use super::cleanup_plan::{decide, Action, RowFacts, VmFacts};
use super::cleanup_report::{
    CleanupOptions, CleanupReport, CleanupScope, OrphanProcess, RetainedDisk,
};
use super::procscan::{scan_vmm_processes, socket_file_vm, VmmProcess};
use super::SmolVmManager;
use crate::config::{validate_vm_id, DiskMode};
use crate::error::Result;
use crate::info::VmState;

/// Files found in the manager's directories, by VM id.
#[derive(Debug, Default)]
struct Files {
    sockets: BTreeMap<String, Vec<PathBuf>>,
    disks: BTreeMap<String, PathBuf>,
    overlays: BTreeMap<String, PathBuf>,
    temp_files: BTreeMap<String, Vec<PathBuf>>,
    vm_dirs: BTreeMap<String, PathBuf>,
    /// Ids with a lock file (left by an older smolvm, or by a crash during delete).
    locks: BTreeSet<String>,
}

impl SmolVmManager {
    /// Finds and removes what a crash left behind (see the module docs); `opts.dry_run` only reports.
    pub fn cleanup(&self, opts: &CleanupOptions) -> Result<CleanupReport> {
        if let CleanupScope::Vm(id) = &opts.scope {
            validate_vm_id(id)?;
        }
        let mut report = CleanupReport {
            dry_run: opts.dry_run,
            ..CleanupReport::default()
        };
        let rows: BTreeSet<String> = self
            .state()?
            .list_vms(None)?
            .into_iter()
            .map(|r| r.info.vm_id)
            .collect();
        let all_vmms = scan_vmm_processes(Path::new("/proc"));
        let files = self.find_files();
        let mut ids: BTreeSet<String> = rows.clone();
        ids.extend(self.own_vmms(&all_vmms).map(|p| p.vm_id.clone()));
        ids.extend(files.sockets.keys().cloned());
        ids.extend(files.disks.keys().cloned());
        ids.extend(files.overlays.keys().cloned());
        ids.extend(files.temp_files.keys().cloned());
        ids.extend(files.vm_dirs.keys().cloned());
        ids.extend(files.locks.iter().cloned());
        if let CleanupScope::Vm(only) = &opts.scope {
            ids.retain(|id| id == only);
        }
        let delete_dead = opts.scope != CleanupScope::Orphans;
        let mut to_delete = Vec::new();
        for id in &ids {
            let lock = self.lock(id)?;
            // Facts are read under the lock: a create/start/delete that was running has finished.
            let facts = self.facts(id, &all_vmms, &files)?;
            let has_row = facts.row.is_some();
            let live = facts
                .row
                .as_ref()
                .is_some_and(|r| r.status.has_vmm() && r.process_alive);
            if !live && !facts.foreign_live && !opts.dry_run {
                // A channel owner outlives its VMM by a moment at most; make sure of it before its
                // socket and PID file (in the VM directory) are removed below.
                crate::channel::stop(
                    &crate::channel::pid_file(&self.vm_dir(id)),
                    &crate::channel::socket_path(self.socket_dir(), id),
                );
            }
            for action in decide(&facts, delete_dead, opts.remove_retained_disks) {
                if action == Action::Delete {
                    to_delete.push(id.clone());
                } else {
                    self.apply(id, action, opts.dry_run, &mut report);
                }
            }
            // The lock file of an id without a VM guards nothing (delete removes its own). A dry run
            // removes only the one it made itself by locking.
            if !has_row && (!opts.dry_run || !files.locks.contains(id)) {
                lock.remove();
            }
        }
        // `delete` takes the VM's lock itself, so it runs after ours was released.
        for id in to_delete {
            if !opts.dry_run {
                if let Err(e) = self.delete(&id) {
                    report.fail(format!("delete VM {id}"), &e);
                    continue;
                }
            }
            report.deleted_vms.push(id);
        }
        // Snapshots belong to the store, not to one VM.
        if !matches!(opts.scope, CleanupScope::Vm(_)) {
            self.cleanup_snapshot_dirs(opts.dry_run, &mut report);
        }
        self.cleanup_network(opts, &all_vmms, &mut report);
        match self.leaked_cgroups(opts.dry_run, true) {
            Ok(ids) => report.cgroups = ids,
            Err(e) => report.fail("remove leaked cgroups".into(), &e),
        }
        match self.leaked_jails(opts.dry_run) {
            Ok(paths) => report.jails = paths,
            Err(e) => report.fail("remove leaked jails".into(), &e),
        }
        Ok(report)
    }

    /// VMM processes that provably belong to this store: marker and socket directory, or, for a jailed
    /// Firecracker (no marker survives the jailer), the uid this store leased to its VM. A jailed VMM
    /// whose VM has no row any more cannot be proven ours and is left alone.
    pub(crate) fn own_vmms<'a>(
        &'a self,
        all: &'a [VmmProcess],
    ) -> impl Iterator<Item = &'a VmmProcess> {
        all.iter().filter(|p| {
            p.belongs_to(&self.dirs.store, self.socket_dir())
                || p.jailed_uid.is_some_and(|uid| {
                    let leased = self
                        .state()
                        .and_then(|s| Ok(s.get_vm(&p.vm_id)?))
                        .ok()
                        .flatten()
                        .and_then(|r| r.vmm_id);
                    leased == Some(uid)
                })
        })
    }

    fn facts(&self, id: &str, all_vmms: &[VmmProcess], files: &Files) -> Result<VmFacts> {
        let row = self.state()?.get_vm(id)?.map(|r| RowFacts {
            status: r.info.status,
            process: r.process,
            process_alive: r.process.is_some_and(|p| p.is_alive()),
            disk_missing: r.info.config.disk_mode() == DiskMode::Isolated
                && !r
                    .disk_path
                    .clone()
                    .unwrap_or_else(|| super::disk::isolated_disk_path(self.disk_dir(), id))
                    .exists(),
        });
        Ok(VmFacts {
            row,
            processes: self
                .own_vmms(all_vmms)
                .filter(|p| p.vm_id == id && p.identity.is_alive())
                .cloned()
                .collect(),
            foreign_live: all_vmms.iter().any(|p| {
                p.vm_id == id
                    && p.control_socket.parent() == Some(self.socket_dir())
                    && !p.belongs_to(&self.dirs.store, self.socket_dir())
                    && p.identity.is_alive()
            }),
            sockets: existing(files.sockets.get(id).cloned().unwrap_or_default()),
            disk: files.disks.get(id).filter(|p| p.exists()).cloned(),
            overlay: files.overlays.get(id).filter(|p| p.exists()).cloned(),
            temp_files: existing(files.temp_files.get(id).cloned().unwrap_or_default()),
            vm_dir: files.vm_dirs.get(id).filter(|p| p.exists()).cloned(),
        })
    }

    fn apply(&self, id: &str, action: Action, dry_run: bool, report: &mut CleanupReport) {
        match action {
            Action::Kill { process, reason } => {
                if !dry_run && !process.identity.kill() {
                    let e = std::io::Error::other("still alive 5 s after SIGKILL");
                    report.fail(format!("kill VMM pid {}", process.identity.pid), &e);
                    return;
                }
                report.processes.push(OrphanProcess {
                    vm_id: id.to_string(),
                    pid: process.identity.pid,
                    backend: process.backend,
                    control_socket: process.control_socket,
                    reason: reason.to_string(),
                });
            }
            Action::MarkError(why) => {
                if !dry_run {
                    let marked = self
                        .state()
                        .and_then(|mut s| Ok(s.set_status(id, VmState::Error, Some(why))?));
                    if let Err(e) = marked {
                        report.fail(format!("mark VM {id} as error"), &e);
                        return;
                    }
                }
                report.marked_error.push(id.to_string());
            }
            Action::Delete => {}
            Action::RemoveSocket(p) => {
                if remove(&p, dry_run, false, report) {
                    report.sockets.push(p);
                }
            }
            Action::RemoveTempFile(p) => {
                if remove(&p, dry_run, false, report) {
                    report.temp_files.push(p);
                }
            }
            Action::RemoveVmDir(p) => {
                if remove(&p, dry_run, true, report) {
                    report.vm_dirs.push(p);
                }
            }
            Action::RemoveOverlay(p) => {
                if remove(&p, dry_run, false, report) {
                    report.overlays.push(p);
                }
            }
            Action::RetainedDisk { path, remove: rm } => {
                if rm && !dry_run {
                    // Its origin record first: a disk without one is still usable, the reverse is not.
                    let _ = fs::remove_file(super::disk::origin_path(&path));
                }
                if rm && !remove(&path, dry_run, false, report) {
                    return;
                }
                report.retained_disks.push(RetainedDisk {
                    vm_id: id.to_string(),
                    path,
                    removed: rm,
                });
            }
        }
    }

    fn cleanup_network(
        &self,
        opts: &CleanupOptions,
        all_vmms: &[VmmProcess],
        report: &mut CleanupReport,
    ) {
        let net = self.host_network();
        if let Err(e) = net.capabilities().check_tap() {
            report.network_skipped = Some(e.to_string());
            return;
        }
        let result = match &opts.scope {
            CleanupScope::Vm(id) => match self.state().and_then(|s| Ok(s.get_vm(id)?)) {
                // A VM that still has a row keeps its network (delete removes it).
                Ok(Some(_)) => return,
                Ok(None) => net.cleanup_vm(id, opts.dry_run),
                Err(e) => {
                    report.fail("read the state store".to_string(), &e);
                    return;
                }
            },
            _ => {
                let rows = match self.state().and_then(|s| Ok(s.list_vms(None)?)) {
                    Ok(rows) => rows,
                    Err(e) => {
                        report.fail("read the state store".to_string(), &e);
                        return;
                    }
                };
                // Live VMMs of any data directory keep their network.
                let known: BTreeSet<String> = rows
                    .into_iter()
                    .map(|r| r.info.vm_id)
                    .chain(all_vmms.iter().map(|p| p.vm_id.clone()))
                    .collect();
                net.cleanup_orphans(&known, opts.dry_run)
            }
        };
        match result {
            Ok(r) => report.network = Some(r),
            Err(e) => report.fail("clean up host networking".to_string(), &e),
        }
    }

    /// Lists the files smolvm makes per VM in the socket, disk and VM directories.
    fn find_files(&self) -> Files {
        let mut f = Files::default();
        for (name, path) in list_dir(self.socket_dir()) {
            if let Some(id) = socket_file_vm(&name) {
                f.sockets.entry(id.to_string()).or_default().push(path);
            }
        }
        for (name, path) in list_dir(self.disk_dir()) {
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name
                .strip_suffix(".ext4")
                .filter(|i| validate_vm_id(i).is_ok())
            {
                f.disks.insert(id.to_string(), path);
            } else if let Some(id) = name
                .strip_suffix(".qcow2")
                .filter(|i| validate_vm_id(i).is_ok())
            {
                f.overlays.insert(id.to_string(), path);
            } else if let Some((id, _)) = name.split_once(".tmp-") {
                // Ids have no dots, so the first one ends the id; a name without a valid id is still
                // an interrupted clone, handled under the lock of the (invalid) id, which nothing uses.
                f.temp_files.entry(id.to_string()).or_default().push(path);
            }
        }
        for (name, _) in list_dir(&self.data_dir().join("locks")) {
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".lock"))
                .filter(|i| validate_vm_id(i).is_ok())
            {
                f.locks.insert(id.to_string());
            }
        }
        for (name, path) in list_dir(&self.data_dir().join("vms")) {
            if let Some(id) = name.to_str().filter(|i| validate_vm_id(i).is_ok()) {
                if path.is_dir() {
                    f.vm_dirs.insert(id.to_string(), path);
                }
            }
        }
        f
    }
}

fn list_dir(dir: &Path) -> Vec<(OsString, PathBuf)> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (e.file_name(), e.path()))
        .collect();
    out.sort();
    out
}

fn existing(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths
        .into_iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .collect()
}

/// Removes a file (or a directory tree); a path that vanished meanwhile counts as removed. Returns
/// false (after recording the failure) if it could not be removed.
pub(super) fn remove(path: &Path, dry_run: bool, dir: bool, report: &mut CleanupReport) -> bool {
    if dry_run {
        return true;
    }
    let result = if dir {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            report.fail(format!("remove {}", path.display()), &e);
            false
        }
    }
}
