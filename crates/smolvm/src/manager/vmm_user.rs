//! The manager's side of VMM users (see [`crate::vmm_user`]): which user a VM's VMM runs as, and the
//! VM's own files handed to it.

use std::path::Path;

use super::SmolVmManager;
use crate::config::DiskMode;
use crate::error::{Error, Result};
use crate::state::VmRecord;
use crate::vmm_user::{self, VmmUser};

impl SmolVmManager {
    /// The user the VM's VMM is to run as: its leased id when this process is root and the drop is on,
    /// else `None`. Gives the VM's own disk (`disk`, isolated mode) to that user; a shared image is
    /// never touched (QEMU opens it read-only before dropping root).
    pub(super) fn prepare_vmm_user(
        &self,
        rec: &VmRecord,
        mode: DiskMode,
        disk: &Path,
    ) -> Result<Option<VmmUser>> {
        if !self.vmm_user || !vmm_user::is_root() {
            return Ok(None);
        }
        let id = match rec.vmm_id {
            Some(id) => id,
            None => self.state()?.vmm_id(&rec.info.vm_id)?,
        };
        let user = VmmUser::from_id(id);
        if mode == DiskMode::Isolated && disk.exists() {
            vmm_user::give_file(disk, user)
                .map_err(|e| Error::io("give the disk to the VM's VMM user", disk, e))?;
        }
        Ok(Some(user))
    }

    /// The user `vm_id`'s VMM runs (or will run) as: its leased id when this manager drops root for
    /// VMMs (it runs as root with VMM users on), else `None` (the VMM runs as the caller). A VM from
    /// before VMM users were leased reports `None` until its next start.
    pub fn vmm_user(&self, vm_id: &str) -> Result<Option<VmmUser>> {
        let rec = self.record(vm_id)?;
        if !self.vmm_user || !vmm_user::is_root() {
            return Ok(None);
        }
        Ok(rec.vmm_id.map(VmmUser::from_id))
    }

    /// The user the running VMM of `rec` actually runs as, if not root: the one a snapshot directory
    /// is lent to while the VMM writes into it. Read from the process rather than the settings, so a
    /// VM started by a process with the drop switched off (or on) is handled as it runs.
    pub(super) fn running_vmm_user(&self, rec: &VmRecord) -> Option<VmmUser> {
        let p = rec.process.filter(|p| p.is_alive())?;
        vmm_user::of_process(p.pid).filter(|u| u.uid != 0)
    }
}
