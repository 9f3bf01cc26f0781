//! Whether a VM that the store says is running really is: every read of a VM (`get`, `list_vms`, and
//! the start/stop/delete/exec paths) checks the recorded VMM (pid and start time) and marks the VM
//! `error` at once when it is gone, with the tail of its console log as the reason. This needs no VM
//! lock (a compare-and-set on the recorded process, see [`StateStore::mark_vmm_gone`]), so `list` and
//! `reconcile` never wait behind a long operation on another VM.
//!
//! [`StateStore::mark_vmm_gone`]: crate::state::StateStore::mark_vmm_gone

use std::path::Path;

use super::procscan::scan_vmm_processes;
use super::SmolVmManager;
use crate::error::Result;
use crate::process::ProcessIdentity;
use crate::state::VmRecord;

/// Lines of the console log quoted when a VMM is found dead.
const TAIL_LINES: usize = 5;

impl SmolVmManager {
    /// `rec` as it really is: if it says running but its VMM is gone, the VM is marked `error` (with
    /// why) and the updated record returned. The flag says whether this call marked it.
    pub(crate) fn observe(&self, rec: VmRecord) -> Result<(VmRecord, bool)> {
        if !rec.info.status.has_vmm() || rec.process.is_some_and(|p| p.is_alive()) {
            return Ok((rec, false));
        }
        let reason = vmm_gone_reason(
            &rec.info.vm_id,
            rec.process,
            &self.console_log(&rec.info.vm_id),
        );
        tracing::info!(vm = %rec.info.vm_id, %reason, "VMM gone; VM marked error");
        let marked = self
            .state()?
            .mark_vmm_gone(&rec.info.vm_id, rec.process, &reason)?;
        match marked {
            Some(updated) => Ok((updated, true)),
            // The row moved on meanwhile (started again, stopped, deleted): report what it is now.
            None => match self.state()?.get_vm(&rec.info.vm_id)? {
                Some(now) => Ok((now, false)),
                None => Err(crate::Error::VmNotFound(rec.info.vm_id)),
            },
        }
    }

    /// Whether an isolated disk retained by an earlier, deleted VM `vm_id` is waiting to be reused.
    pub fn has_retained_disk(&self, vm_id: &str) -> bool {
        self.disk_dir().join(format!("{vm_id}.ext4")).is_file()
            && self
                .state()
                .and_then(|s| Ok(s.get_vm(vm_id)?))
                .is_ok_and(|r| r.is_none())
    }

    /// Refuses to start a VMM on `control_socket` while a live VMM of another store (or an unmarked
    /// one) uses that path: two stores sharing an explicit socket dir would otherwise remove and take
    /// over each other's sockets for a VM id they both have.
    pub(crate) fn check_socket_unclaimed(&self, control_socket: &Path) -> Result<()> {
        let all = scan_vmm_processes(Path::new("/proc"));
        let foreign = all.iter().find(|p| {
            p.control_socket == control_socket && !p.belongs_to(&self.dirs.store, self.socket_dir())
        });
        match foreign {
            None => Ok(()),
            Some(p) => Err(crate::ValidationError::new(
                "socket_dir",
                format!(
                    "the control socket {} is in use by VMM pid {} of another store ({}); give each \
                     data dir its own socket dir",
                    control_socket.display(),
                    p.identity.pid,
                    p.store
                        .as_deref()
                        .map_or_else(|| "unmarked".to_string(), |s| s.display().to_string())
                ),
            )
            .into()),
        }
    }

    /// Kills VMM processes of this store for `vm_id` other than `keep` (a VMM a crash left behind,
    /// for example after a `start` killed between launch and recording it). Returns the pids killed.
    pub(crate) fn kill_stray_vmms(&self, vm_id: &str, keep: Option<ProcessIdentity>) -> Vec<u32> {
        let all = scan_vmm_processes(Path::new("/proc"));
        let mut killed = Vec::new();
        for p in self.own_vmms(&all).filter(|p| p.vm_id == vm_id) {
            if Some(p.identity) != keep && p.identity.kill() {
                tracing::info!(vm = %vm_id, pid = p.identity.pid, "killed a stray VMM of this VM");
                killed.push(p.identity.pid);
            }
        }
        killed
    }
}

/// The recorded reason of a VM whose VMM is gone.
pub(crate) fn vmm_gone_reason(
    vm_id: &str,
    process: Option<ProcessIdentity>,
    console_log: &Path,
) -> String {
    let who = match process {
        Some(p) => format!("the VMM of VM {vm_id} (pid {})", p.pid),
        None => format!("the VMM of VM {vm_id}"),
    };
    match console_tail(console_log) {
        Some(tail) => format!("{who} exited; its console log ends with: {tail}"),
        None => format!(
            "{who} exited; its console log {} is empty",
            console_log.display()
        ),
    }
}

/// The last non-empty lines of a console log, joined with " | " so the reason stays one line. A log
/// that was just rotated (see [`crate::backend::console_keeper`]) is read on from its predecessor.
pub(crate) fn console_tail(path: &Path) -> Option<String> {
    let mut lines = crate::process::log_tail(path, 0, TAIL_LINES);
    if lines.len() < TAIL_LINES {
        let rotated = crate::backend::console_keeper::rotated_path(path);
        let mut older = crate::process::log_tail(&rotated, 0, TAIL_LINES - lines.len());
        older.append(&mut lines);
        lines = older;
    }
    (!lines.is_empty()).then(|| lines.join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_tail_reads_on_into_the_rotated_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        assert_eq!(console_tail(&log), None);
        let rotated = crate::backend::console_keeper::rotated_path(&log);
        std::fs::write(&rotated, "old\nKernel panic - not syncing\n").unwrap();
        std::fs::write(&log, "reboot\n").unwrap();
        assert_eq!(
            console_tail(&log).unwrap(),
            "old | Kernel panic - not syncing | reboot"
        );
        // A long current log is enough on its own.
        std::fs::write(&log, "x\n".repeat(3000)).unwrap();
        assert!(!console_tail(&log).unwrap().contains("panic"));
    }
}
