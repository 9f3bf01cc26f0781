//! `SmolVm` methods for pause/resume, snapshots and forks (see [`crate::manager`]'s `pause`, `snapshot`
//! and `fork` modules for the rules). VMs made from a snapshot or by a fork are owned by the value
//! returned: dropping it deletes the VM, like any VM this process created.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{SmolVm, SmolVmBuilder, DEFAULT_SSH_USER};
use crate::error::Result;
use crate::manager::{SmolVmManager, DEFAULT_BOOT_TIMEOUT_SECS};
use crate::snapshot::SnapshotInfo;

impl SmolVm {
    /// Pauses the running VM (its vCPUs stop; the VMM process and memory stay). Chainable.
    pub fn pause(&mut self) -> Result<&mut SmolVm> {
        self.info = self.manager.pause(&self.vm_id)?;
        Ok(self)
    }

    /// Resumes the paused VM. Chainable.
    pub fn resume(&mut self) -> Result<&mut SmolVm> {
        self.info = self.manager.resume(&self.vm_id)?;
        Ok(self)
    }

    /// Takes a snapshot named `name` of this running or paused VM (memory, device state, disk).
    pub fn snapshot(&mut self, name: &str) -> Result<SnapshotInfo> {
        let info = self.manager.snapshot(&self.vm_id, name)?;
        self.refresh()?;
        Ok(info)
    }

    /// Forks this VM into `n` new running VMs, each with its own identity (see
    /// [`SmolVmManager::fork`]). The returned VMs are owned (deleted on drop).
    pub fn fork(&mut self, n: usize) -> Result<Vec<SmolVm>> {
        let boot = Duration::from_secs_f64(DEFAULT_BOOT_TIMEOUT_SECS);
        let infos = self.manager.fork(&self.vm_id, n, boot)?;
        self.refresh()?;
        Ok(infos
            .into_iter()
            .map(|info| owned(Arc::clone(&self.manager), info, None))
            .collect())
    }

    /// A new running VM started from snapshot `name` (id `vm_id`, or generated), with default
    /// directories. Owned. Use [`SmolVmBuilder::from_snapshot`] for other directories.
    pub fn from_snapshot(name: &str, vm_id: Option<&str>) -> Result<SmolVm> {
        let mut b = SmolVm::builder();
        if let Some(id) = vm_id {
            b = b.vm_id(id);
        }
        b.from_snapshot(name)
    }
}

impl SmolVmBuilder {
    /// Use a template snapshot when one exists for this configuration (and make one at the first
    /// start when none does). Default: on for auto-configuration unless `SMOLVM_TEMPLATES=off`, off for
    /// an explicit config.
    pub fn templates(mut self, on: bool) -> Self {
        self.templates = Some(on);
        self
    }

    /// Starts a new VM from snapshot `name` with this builder's directories, backend and `vm_id` (the
    /// sizes come from the snapshot; other settings are ignored). Owned, running.
    pub fn from_snapshot(self, name: &str) -> Result<SmolVm> {
        let manager = Arc::new(SmolVmManager::new(
            self.data_dir.as_deref(),
            self.socket_dir.as_deref(),
            self.backend,
        )?);
        let boot = Duration::from_secs_f64(DEFAULT_BOOT_TIMEOUT_SECS);
        let (info, client) = manager.restore_inner(name, self.vm_id.as_deref(), boot)?;
        Ok(owned(manager, info, client))
    }
}

impl SmolVm {
    /// After the first cold start of a VM that found no template: make it now, before anything ran in
    /// the guest (best effort: a failure only costs later VMs their fast start).
    pub(super) fn make_pending_template(&mut self) {
        let Some(name) = self.make_template.take() else {
            return;
        };
        match self.manager.make_template(&self.vm_id, &name) {
            Ok(()) => tracing::debug!(vm = %self.vm_id, template = %name, "template made"),
            Err(e) => {
                tracing::warn!(vm = %self.vm_id, template = %name, error = %e, "could not make a template")
            }
        }
        if let Ok(info) = self.manager.get(&self.vm_id) {
            self.info = info;
        }
    }
}

fn owned(
    manager: Arc<SmolVmManager>,
    info: crate::VmInfo,
    client: Option<crate::exec::AgentClient>,
) -> SmolVm {
    SmolVm {
        make_template: None,
        ssh_ready: Default::default(),
        manager,
        vm_id: info.vm_id.clone(),
        info,
        owned: true,
        released: false,
        agent: Mutex::new(client.map(Arc::new)),
        ssh_user: DEFAULT_SSH_USER.to_string(),
        ssh_key_path: None,
    }
}
