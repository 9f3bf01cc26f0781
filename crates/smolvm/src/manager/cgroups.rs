//! The manager's side of per-VM host limits: make the VM's cgroup before its VMM starts, remove it
//! once the VMM is gone, and find groups a crash left behind (see [`crate::cgroup`]).

use std::path::PathBuf;

use super::SmolVmManager;
use crate::cgroup::{CgroupLimits, VmGroups};
use crate::error::{Error, Result};
use crate::info::VmState;
use crate::state::VmRecord;

/// Whether this process may make cgroups without delegation.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl SmolVmManager {
    /// This store's VM groups on this host, if the host has a usable hierarchy.
    pub(crate) fn vm_groups(&self) -> Option<VmGroups> {
        VmGroups::detect(&crate::dirs::store_tag(&self.dirs.store))
    }

    /// Creates the VM's group with the limits of its config and returns the `cgroup.procs` files its
    /// VMM enters. Every VM started as root gets a group when the host has one; without root a group
    /// is made only when the config asks for limits (a delegated hierarchy). Asked-for limits that
    /// cannot be applied fail the start rather than running the VM unbounded.
    pub(super) fn prepare_cgroup(&self, rec: &VmRecord) -> Result<Vec<PathBuf>> {
        let config = &rec.info.config;
        let asked = config.host_limits().copied();
        if asked.is_none() && !is_root() {
            return Ok(Vec::new());
        }
        let Some(groups) = self.vm_groups() else {
            if asked.is_some() {
                return Err(Error::Prerequisites {
                    backend: rec.backend,
                    problems: vec!["host_limits were set but this host has no cgroup hierarchy with the cpu, memory and pids controllers".into()],
                });
            }
            tracing::warn!(vm = %rec.info.vm_id, "no usable cgroup hierarchy: the VMM runs without host limits");
            return Ok(Vec::new());
        };
        let l = asked.unwrap_or_default();
        let limits = CgroupLimits::for_guest(
            config.mem_size_mib(),
            l.memory_limit_mib,
            l.cpu_quota_percent,
            l.cpu_weight,
            l.pids_max,
        );
        Ok(groups.create(&rec.info.vm_id, &limits)?)
    }

    /// Removes the VM's group (call once its VMM is gone). Failures are logged: `cleanup` retries.
    pub(super) fn remove_cgroup(&self, vm_id: &str) {
        if let Some(groups) = self.vm_groups() {
            if let Err(e) = groups.remove(vm_id) {
                tracing::warn!(vm = %vm_id, error = %e, "could not remove the VM's cgroup; cleanup will retry");
            }
        }
    }

    /// Removes this store's groups whose VM has no row or (with `take_locks`) no live VMM; returns
    /// their ids. `dry_run` only lists them. With `take_locks` each VM's lock is held while it is
    /// judged, so a start that made its group but has not spawned yet is never undone; without
    /// (`reconcile`, which never waits for a boot) only groups of VMs without a row go. A group that
    /// still holds a process is never removed (the kernel refuses).
    pub(super) fn leaked_cgroups(&self, dry_run: bool, take_locks: bool) -> Result<Vec<String>> {
        let Some(groups) = self.vm_groups() else {
            return Ok(Vec::new());
        };
        let mut removed = Vec::new();
        for id in groups.list()? {
            let _lock = if take_locks {
                Some(self.lock(&id)?)
            } else {
                None
            };
            let live = match self.state()?.get_vm(&id)? {
                Some(_) if !take_locks => true,
                Some(r) => {
                    matches!(r.info.status, VmState::Running | VmState::Paused)
                        && r.process.is_some_and(|p| p.is_alive())
                }
                None => false,
            };
            if live {
                continue;
            }
            if !dry_run {
                groups.remove(&id)?;
            }
            removed.push(id);
        }
        // Parents left empty (by an older smolvm, or a remove that raced a create) go too.
        if !dry_run {
            groups.remove_empty_parents();
        }
        Ok(removed)
    }
}
