//! What `cleanup` does about one VM id, decided from facts alone (no I/O), so that every rule is unit
//! tested with made-up facts.

use std::path::PathBuf;

use super::procscan::VmmProcess;
use crate::info::VmState;
use crate::process::ProcessIdentity;

/// What the state store says about a VM, as far as cleanup cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RowFacts {
    /// Its status.
    pub status: VmState,
    /// The VMM process the row records (only while running).
    pub process: Option<ProcessIdentity>,
    /// Whether that process is alive.
    pub process_alive: bool,
    /// The VM has a disk of its own (isolated mode) and it is not there: a create whose rollback
    /// could not remove the row (a full or locked database), or files removed behind its back.
    pub disk_missing: bool,
}

/// Everything found for one VM id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct VmFacts {
    /// The row, if there is one.
    pub row: Option<RowFacts>,
    /// Live VMM processes of this store (marked with it, control socket in its socket directory)
    /// whose control socket names the id.
    pub processes: Vec<VmmProcess>,
    /// A live VMM that is not provably this store's (another store's, or unmarked) has its control
    /// socket for this id in this socket directory: the socket files are its, not stale.
    pub foreign_live: bool,
    /// Files in the socket directory named for the id.
    pub sockets: Vec<PathBuf>,
    /// `<disk_dir>/<id>.ext4`, if it exists.
    pub disk: Option<PathBuf>,
    /// `<disk_dir>/<id>.qcow2` (the overlay of a VM made from a snapshot or template), if it exists.
    pub overlay: Option<PathBuf>,
    /// Interrupted disk clones `<disk_dir>/<id>.tmp-*`.
    pub temp_files: Vec<PathBuf>,
    /// `<data_dir>/vms/<id>`, if it exists.
    pub vm_dir: Option<PathBuf>,
}

/// Why cleanup marked a running VM `error`.
pub(crate) const VMM_GONE: &str = "the VMM process is gone (found by cleanup)";
/// Why cleanup marked a VM without a VMM `error`.
pub(crate) const DISK_GONE: &str =
    "its disk is missing (found by cleanup): it cannot start; delete it";

/// One step of cleanup for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Kill a VMM process (by identity) that no row accounts for.
    Kill {
        /// The process.
        process: VmmProcess,
        /// Why it is an orphan.
        reason: &'static str,
    },
    /// The row says running but its VMM is gone, or a VM without a VMM lost its disk: set status
    /// `error` with this reason.
    MarkError(&'static str),
    /// Delete the VM completely (`SmolVmManager::delete`).
    Delete,
    /// Remove a stale socket file.
    RemoveSocket(PathBuf),
    /// Remove an interrupted disk clone.
    RemoveTempFile(PathBuf),
    /// A disk without a row: retained by `retain_disk_on_delete` (or left by a crash; the two look the
    /// same). Removed only when asked.
    RetainedDisk {
        /// The disk.
        path: PathBuf,
        /// Whether to remove it.
        remove: bool,
    },
    /// Remove the VM directory (logs, keys) of a VM without a row.
    RemoveVmDir(PathBuf),
    /// Remove the disk overlay of a VM without a row (never retained: VMs made from a snapshot or
    /// template do not keep their disk).
    RemoveOverlay(PathBuf),
}

/// Decides what to do about one VM. `delete_dead`: delete VMs whose VMM died or that are in `error`
/// (cleanup `--all` or with this VM's id) instead of only marking them. `remove_retained`: remove a
/// disk without a row.
///
/// Order matters and is kept by the caller: kills first (a killed VMM's sockets become stale), then
/// the row, then files.
pub(crate) fn decide(facts: &VmFacts, delete_dead: bool, remove_retained: bool) -> Vec<Action> {
    let mut actions = Vec::new();
    let recorded = facts.row.as_ref().and_then(|r| r.process);
    for p in &facts.processes {
        if recorded == Some(p.identity) {
            continue;
        }
        let reason = match &facts.row {
            None => "no VM with this id exists in the state store",
            Some(r) if r.status.has_vmm() => "the VM's row records another process",
            Some(_) => "the VM's row says it is not running",
        };
        actions.push(Action::Kill {
            process: p.clone(),
            reason,
        });
    }
    // After the kills above, the only VMM that may remain is the one the row records.
    let live = facts
        .row
        .as_ref()
        .is_some_and(|r| r.status.has_vmm() && r.process_alive);
    if let Some(row) = &facts.row {
        let died = row.status.has_vmm() && !row.process_alive;
        // Such a VM can never start again; only its row is left to remove.
        let broken = !row.status.has_vmm() && row.disk_missing;
        if delete_dead && (died || broken || row.status == VmState::Error) {
            actions.push(Action::Delete);
        } else if died {
            actions.push(Action::MarkError(VMM_GONE));
        } else if broken && row.status != VmState::Error {
            actions.push(Action::MarkError(DISK_GONE));
        }
    }
    if !live && !facts.foreign_live {
        actions.extend(facts.sockets.iter().cloned().map(Action::RemoveSocket));
    }
    // A clone in progress holds the VM's lock, which the caller holds now: any temp file is a leftover.
    actions.extend(facts.temp_files.iter().cloned().map(Action::RemoveTempFile));
    if facts.row.is_none() {
        if let Some(d) = &facts.disk {
            actions.push(Action::RetainedDisk {
                path: d.clone(),
                remove: remove_retained,
            });
        }
        if let Some(d) = &facts.overlay {
            actions.push(Action::RemoveOverlay(d.clone()));
        }
        if let Some(d) = &facts.vm_dir {
            actions.push(Action::RemoveVmDir(d.clone()));
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendKind;

    fn proc(pid: u32) -> VmmProcess {
        VmmProcess {
            identity: ProcessIdentity {
                pid,
                start_time: 1000 + u64::from(pid),
            },
            backend: BackendKind::Qemu,
            vm_id: "vm".into(),
            control_socket: "/s/vm.qmp".into(),
            store: Some("/data".into()),
            jailed_uid: None,
        }
    }

    fn row(status: VmState, process: Option<u32>, alive: bool) -> Option<RowFacts> {
        Some(RowFacts {
            status,
            process: process.map(|p| proc(p).identity),
            process_alive: alive,
            disk_missing: false,
        })
    }

    fn files() -> VmFacts {
        VmFacts {
            sockets: vec!["/s/vm.qmp".into(), "/s/vm.agent".into()],
            disk: Some("/d/vm.ext4".into()),
            overlay: Some("/d/vm.qcow2".into()),
            temp_files: vec!["/d/vm.tmp-77".into()],
            vm_dir: Some("/data/vms/vm".into()),
            ..VmFacts::default()
        }
    }

    fn kills(a: &[Action]) -> Vec<u32> {
        a.iter()
            .filter_map(|x| match x {
                Action::Kill { process, .. } => Some(process.identity.pid),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_healthy_running_vm_is_left_alone() {
        let facts = VmFacts {
            row: row(VmState::Running, Some(5), true),
            processes: vec![proc(5)],
            ..files()
        };
        for delete in [false, true] {
            assert_eq!(
                decide(&facts, delete, true),
                [Action::RemoveTempFile("/d/vm.tmp-77".into())]
            );
        }
    }

    #[test]
    fn a_vmm_without_a_row_is_killed_and_its_files_go() {
        let facts = VmFacts {
            processes: vec![proc(7)],
            ..files()
        };
        let a = decide(&facts, false, false);
        assert_eq!(kills(&a), [7]);
        assert!(a.contains(&Action::RemoveSocket("/s/vm.qmp".into())));
        assert!(a.contains(&Action::RemoveVmDir("/data/vms/vm".into())));
        // An overlay is never a retained disk: it goes even without `remove_retained`.
        assert!(a.contains(&Action::RemoveOverlay("/d/vm.qcow2".into())));
        assert!(a.contains(&Action::RetainedDisk {
            path: "/d/vm.ext4".into(),
            remove: false
        }));
        assert!(!a.contains(&Action::Delete) && !a.contains(&Action::MarkError(VMM_GONE)));
        let a = decide(&facts, false, true);
        assert!(a.contains(&Action::RetainedDisk {
            path: "/d/vm.ext4".into(),
            remove: true
        }));
    }

    #[test]
    fn a_second_vmm_for_a_running_vm_is_killed_but_the_recorded_one_stays() {
        let facts = VmFacts {
            row: row(VmState::Running, Some(5), true),
            processes: vec![proc(5), proc(6)],
            ..files()
        };
        let a = decide(&facts, true, true);
        assert_eq!(kills(&a), [6]);
        assert!(!a.iter().any(|x| matches!(x, Action::RemoveSocket(_))));
        assert!(!a.iter().any(|x| matches!(x, Action::RetainedDisk { .. })));
    }

    #[test]
    fn a_dead_running_vm_is_marked_or_deleted() {
        let facts = VmFacts {
            row: row(VmState::Running, Some(5), false),
            ..files()
        };
        let a = decide(&facts, false, false);
        assert_eq!(a[0], Action::MarkError(VMM_GONE));
        assert!(a.contains(&Action::RemoveSocket("/s/vm.agent".into())));
        // The disk and VM directory belong to the row: never touched here.
        assert!(!a.iter().any(|x| matches!(
            x,
            Action::RetainedDisk { .. } | Action::RemoveVmDir(_) | Action::RemoveOverlay(_)
        )));
        let a = decide(&facts, true, false);
        assert_eq!(a[0], Action::Delete);
        assert!(!a.contains(&Action::MarkError(VMM_GONE)));
    }

    #[test]
    fn a_vmm_left_behind_by_a_stopped_or_errored_vm_is_killed() {
        for status in [VmState::Stopped, VmState::Created, VmState::Error] {
            let facts = VmFacts {
                row: row(status, None, false),
                processes: vec![proc(9)],
                ..VmFacts::default()
            };
            let a = decide(&facts, false, false);
            assert_eq!(kills(&a), [9], "{status}");
            assert!(
                !a.contains(&Action::Delete),
                "only with delete_dead: {status}"
            );
            let a = decide(&facts, true, false);
            assert_eq!(
                a.contains(&Action::Delete),
                status == VmState::Error,
                "{status}"
            );
        }
    }

    #[test]
    fn stopped_and_created_vms_keep_everything_but_stale_sockets() {
        for status in [VmState::Stopped, VmState::Created] {
            let facts = VmFacts {
                row: row(status, None, false),
                ..files()
            };
            assert_eq!(
                decide(&facts, true, true),
                [
                    Action::RemoveSocket("/s/vm.qmp".into()),
                    Action::RemoveSocket("/s/vm.agent".into()),
                    Action::RemoveTempFile("/d/vm.tmp-77".into()),
                ]
            );
        }
    }

    #[test]
    fn sockets_of_another_stores_live_vmm_are_left_alone() {
        // Store B shares the socket directory with store A, whose VM `vm` runs: B has no row and no VMM
        // of its own for `vm`, so it must neither kill A's VMM nor remove its sockets.
        let facts = VmFacts {
            foreign_live: true,
            ..files()
        };
        let a = decide(&facts, true, false);
        assert!(kills(&a).is_empty());
        assert!(
            !a.iter().any(|x| matches!(x, Action::RemoveSocket(_))),
            "{a:?}"
        );
    }

    #[test]
    fn a_vm_without_a_vmm_whose_disk_is_gone_is_marked_or_deleted() {
        // Found by the soak: a create whose disk copy failed on a full disk could not remove its row
        // either (the database was full too): a `created` row without disk that no start can use.
        for status in [VmState::Created, VmState::Stopped] {
            let facts = VmFacts {
                row: row(status, None, false).map(|r| RowFacts {
                    disk_missing: true,
                    ..r
                }),
                ..VmFacts::default()
            };
            assert_eq!(decide(&facts, false, false), [Action::MarkError(DISK_GONE)]);
            assert_eq!(decide(&facts, true, false), [Action::Delete]);
        }
        // A running VM's VMM holds its disk open; its row is judged by its VMM alone.
        let facts = VmFacts {
            row: row(VmState::Running, Some(5), true).map(|r| RowFacts {
                disk_missing: true,
                ..r
            }),
            processes: vec![proc(5)],
            ..VmFacts::default()
        };
        assert!(decide(&facts, true, false).is_empty());
    }

    #[test]
    fn nothing_found_means_nothing_to_do() {
        assert!(decide(&VmFacts::default(), true, true).is_empty());
    }
}
