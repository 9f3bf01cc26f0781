//! pause / resume: the VMM keeps running with the guest's vCPUs stopped. `paused` is a persisted state,
//! so any process sees it; `stop` and `delete` of a paused VM resume it first (a frozen guest cannot
//! power itself off) or kill it.

use super::SmolVmManager;
use crate::error::{Error, Result};
use crate::info::{VmInfo, VmState};
use crate::state::VmRecord;

impl SmolVmManager {
    /// Pauses a running VM (spec extension: `pause`). Pausing a paused VM is a no-op; any other state
    /// is an [`Error::InvalidState`].
    pub fn pause(&self, vm_id: &str) -> Result<VmInfo> {
        let _lock = self.lock(vm_id)?;
        let rec = self.record(vm_id)?;
        match rec.info.status {
            VmState::Paused => return Ok(rec.info),
            VmState::Running => {}
            status => {
                return Err(Error::InvalidState {
                    vm_id: vm_id.into(),
                    status,
                    operation: "pause (only running VMs can be paused)",
                })
            }
        }
        let socket = self.live_control_socket(&rec, "pause")?;
        self.backend_impl(rec.backend)?.pause(&socket)?;
        self.state()?.set_status(vm_id, VmState::Paused, None)?;
        self.get(vm_id)
    }

    /// Resumes a paused VM (spec extension: `resume`). Resuming a running VM is a no-op; any other state
    /// is an [`Error::InvalidState`].
    pub fn resume(&self, vm_id: &str) -> Result<VmInfo> {
        let _lock = self.lock(vm_id)?;
        let rec = self.record(vm_id)?;
        match rec.info.status {
            VmState::Running => return Ok(rec.info),
            VmState::Paused => {}
            status => {
                return Err(Error::InvalidState {
                    vm_id: vm_id.into(),
                    status,
                    operation: "resume (only paused VMs can be resumed)",
                })
            }
        }
        let socket = self.live_control_socket(&rec, "resume")?;
        self.backend_impl(rec.backend)?.resume(&socket)?;
        self.state()?.set_status(vm_id, VmState::Running, None)?;
        self.get(vm_id)
    }

    /// The control socket of a VM whose VMM process is alive; a dead VMM marks the row `error`.
    pub(crate) fn live_control_socket(
        &self,
        rec: &VmRecord,
        operation: &'static str,
    ) -> Result<std::path::PathBuf> {
        let alive = rec.process.is_some_and(|p| p.is_alive());
        match (&rec.info.socket_path, alive) {
            (Some(s), true) => Ok(s.clone()),
            _ => {
                let rec = self.state()?.set_status(
                    &rec.info.vm_id,
                    VmState::Error,
                    Some("the VMM process is gone"),
                )?;
                Err(Error::InvalidState {
                    vm_id: rec.info.vm_id,
                    status: rec.info.status,
                    operation,
                })
            }
        }
    }

    /// Before a graceful halt: a paused guest cannot react to a power-off request, so let it run again
    /// (best effort: if this fails, the halt ends with a kill anyway).
    pub(crate) fn unpause_for_halt(&self, rec: &VmRecord) {
        if rec.info.status != VmState::Paused {
            return;
        }
        let (Some(sock), Ok(backend)) = (&rec.info.socket_path, self.backend_impl(rec.backend))
        else {
            return;
        };
        if let Err(e) = backend.resume(sock) {
            tracing::debug!(vm = %rec.info.vm_id, error = %e, "could not resume a paused VM before halting it");
        }
    }
}
