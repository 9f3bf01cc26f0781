//! Templates: a snapshot of a freshly booted VM of one configuration, from which later VMs of the same
//! configuration start instead of booting a kernel. The template's name is `tpl-<16 hex>`, a hash of
//! everything the restored machine must match: backend, VMM version, accelerator, migration
//! capabilities, vCPUs, memory, kernel/initrd/rootfs (path, size and modification time, so a rebuilt
//! image gets a new template), boot arguments and whether the VM has a network interface. Any change
//! gives another name, so a stale template is never used; [`SmolVmManager::make_template`] removes the
//! unused templates of other keys.
//!
//! A VM created from a template is `created` like any other (its disk is an overlay on the template's
//! disk, its leases, host key and network are its own); its first `start` restores the template and
//! gives the guest its identity instead of booting, then injects the config's environment variables as
//! a cold start does. After a `stop` it boots from its own disk.

use std::fs;
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::fork::failed;
use super::{CreateOptions, SmolVmManager};
use crate::backend::qemu::migrate;
use crate::config::{BackendKind, DiskMode, VmConfig};
use crate::error::Result;
use crate::exec::AgentClient;
use crate::info::{NetworkMode, VmInfo, VmState};

use crate::state::VmRecord;

/// Prefix of template names.
pub(crate) const TEMPLATE_PREFIX: &str = "tpl-";
/// Environment variable that turns templates off (`off`, `0`, `false`, `no`).
pub(crate) const TEMPLATES_ENV: &str = "SMOLVM_TEMPLATES";

/// False when `SMOLVM_TEMPLATES` says off.
pub fn templates_enabled_by_env() -> bool {
    !matches!(
        std::env::var(TEMPLATES_ENV)
            .unwrap_or_default()
            .to_ascii_lowercase()
            .as_str(),
        "off" | "0" | "false" | "no"
    )
}

impl SmolVmManager {
    /// Creates `config` from its template when one exists, else normally. Also returns the template
    /// to make from this VM after its first start: none when a template was used, when the VM has
    /// environment variables (they would end up in every later VM), or when it reuses a retained disk
    /// (the spec reuses that disk, which a template restore would not).
    pub fn create_with_templates(
        &self,
        config: &VmConfig,
        opts: &CreateOptions,
    ) -> Result<(super::Created, Option<String>)> {
        let name = match self.has_retained_disk(config.vm_id()) {
            true => None,
            false => self.template_name(config, opts.network)?,
        };
        let Some(name) = name else {
            return Ok((self.create_reporting(config, opts)?, None));
        };
        if self.find_template(config, opts.network)?.is_some() {
            let info = self.create_from_template(&name, config, opts)?;
            return Ok((
                super::Created {
                    info,
                    reused_disk: None,
                },
                None,
            ));
        }
        let make = config.env_vars().is_empty().then_some(name);
        Ok((self.create_reporting(config, opts)?, make))
    }

    /// The template name for VMs of `config` with the network `choice`; `None` for configs that cannot
    /// use templates (shared disk, no smolvm agent, Firecracker without KVM, files that cannot be read).
    pub fn template_name(&self, config: &VmConfig, choice: NetworkMode) -> Result<Option<String>> {
        if config.disk_mode() != DiskMode::Isolated || !config.boots_agent() {
            return Ok(None);
        }
        let backend = self.resolve(config.backend())?;
        let version = self.backend_impl(backend)?.vmm_version()?;
        // Templates are snapshots, which use the mapped-ram migration of QEMU >= 9: on an older QEMU
        // every first start would try and fail (with a warning) to make one.
        if backend == BackendKind::Qemu && qemu_major(&version).is_some_and(|m| m < 9) {
            return Ok(None);
        }
        let mut h = Sha256::new();
        let mut inputs = Vec::new();
        let mut put = |s: &str| {
            h.update(s.as_bytes());
            h.update([0]);
            inputs.push(s.to_string());
        };
        put(backend.as_str());
        put(&version);
        put(&self.accel_name(backend));
        if backend == BackendKind::Qemu {
            put(&migrate::CAPABILITIES.join(","));
        }
        put(&config.vcpu_count().to_string());
        put(&config.mem_size_mib().to_string());
        put(config.boot_args());
        // The mode, not just whether there is a network: a TAP netdev and a user-mode one save
        // different device state, and QEMU refuses to load one into the other.
        put(match self.network_mode_for(choice, backend)? {
            None => "no-net",
            // Auto and None are requests: a configured network is TAP or user mode.
            Some(NetworkMode::Tap | NetworkMode::Auto | NetworkMode::None) => "net-tap",
            Some(NetworkMode::User) => "net-user",
        });
        let files = [
            Some(config.kernel_path()),
            config.initrd_path(),
            Some(config.rootfs_path()),
        ];
        for f in files.into_iter().flatten() {
            let Ok(m) = fs::metadata(f) else {
                return Ok(None);
            };
            put(&f.to_string_lossy());
            put(&m.len().to_string());
            put(&super::snapshot::mtime_ns(&m).to_string());
        }
        let digest = h.finalize();
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("{TEMPLATE_PREFIX}{hex}");
        tracing::debug!(template = %name, ?inputs, "template key");
        Ok(Some(name))
    }

    /// The usable template for `config`, if one was made (and this host can restore it).
    pub fn find_template(&self, config: &VmConfig, choice: NetworkMode) -> Result<Option<String>> {
        let Some(name) = self.template_name(config, choice)? else {
            return Ok(None);
        };
        let Some(snap) = self.state()?.get_snapshot(&name)? else {
            return Ok(None);
        };
        match self.check_restorable(&snap, snap.backend) {
            Ok(()) => Ok(Some(name)),
            Err(e) => {
                tracing::warn!(template = %name, error = %e, "template unusable; booting cold");
                Ok(None)
            }
        }
    }

    /// Creates VM `config` (state `created`) whose first start restores `template` instead of booting.
    pub fn create_from_template(
        &self,
        template: &str,
        config: &VmConfig,
        opts: &CreateOptions,
    ) -> Result<VmInfo> {
        let snap = self.snapshot_record(template)?;
        let kind = self.resolve(Some(snap.backend))?;
        let mode = if snap.machine.network {
            self.network_mode_for(opts.network, kind)?
        } else {
            None
        };
        let config = config.with(|s| s.retain_disk_on_delete = false)?;
        let vm_id = config.vm_id().to_string();
        let _lock = self.lock(&vm_id)?;
        let rec = self.state()?.create_vm(&config, kind, mode)?;
        let made = self
            .state()
            .and_then(|mut s| Ok(s.link_snapshot_user(&vm_id, template)?))
            .map_err(|e| failed(template, "record the new VM's use of the template", e))
            .and_then(|()| self.prepare_restored(&snap, &rec));
        match made {
            Ok(()) => self.get(&vm_id),
            Err(e) => {
                self.undo_restored(&rec, None);
                Err(e)
            }
        }
    }

    /// The first start of a VM created from `template` (called by `start` under the VM's lock): restore,
    /// identity, environment variables. `Ok(None)` when the template can no
    /// longer be restored here (removed, another VMM version): it then boots cold from its own disk,
    /// which holds the template's disk as captured. On a failed restore the VM stays `created` with the
    /// error recorded.
    pub(super) fn start_from_template(
        &self,
        rec: &VmRecord,
        template: &str,
        deadline: Instant,
    ) -> Result<Option<(VmInfo, Option<AgentClient>)>> {
        let usable = self
            .snapshot_record(template)
            .and_then(|snap| self.check_restorable(&snap, rec.backend).map(|()| snap));
        let snap = match usable {
            Ok(snap) => snap,
            Err(e) => {
                tracing::warn!(vm = %rec.info.vm_id, template = %template, error = %e, "template unusable; booting cold from the VM's disk");
                return Ok(None);
            }
        };
        let id = &rec.info.vm_id;
        let client = match self.boot_restored(&snap, rec, deadline) {
            Ok(c) => c,
            Err((e, process)) => {
                if let Some(p) = process {
                    p.kill();
                }
                self.close_channel(rec);
                // The launch spec made the VM's cgroup before the VMM started.
                self.remove_cgroup(id);
                if let Ok(b) = self.backend_impl(rec.backend) {
                    let _ = crate::backend::remove_socket(&b.control_socket(self.socket_dir(), id));
                    let _ = crate::backend::remove_socket(
                        b.agent_endpoint(self.socket_dir(), id).path(),
                    );
                }
                let why = format!("start from template {template} failed: {e}");
                self.state()?.set_status(id, VmState::Created, Some(&why))?;
                return Err(e);
            }
        };
        if !rec.info.config.env_vars().is_empty() {
            client.set_env_vars(rec.info.config.env_vars())?;
        }
        Ok(Some((self.get(id)?, Some(client))))
    }

    /// Makes template `name` from the running VM `vm_id`, which must have been booted from its image
    /// and have run nothing yet (its memory and disk become every later VM's starting point), and
    /// removes the unused templates of other keys. A template that exists already is kept.
    pub fn make_template(&self, vm_id: &str, name: &str) -> Result<()> {
        if self.state()?.get_snapshot(name)?.is_none() {
            self.snapshot(vm_id, name)?;
        }
        // Bound first: a guard living through the loop would deadlock the calls inside it.
        let all = self.state()?.list_snapshots()?;
        for s in all {
            if s.name != name
                && s.name.starts_with(TEMPLATE_PREFIX)
                && self.state()?.snapshot_users(&s.name)?.is_empty()
            {
                if let Err(e) = self.delete_snapshot(&s.name) {
                    tracing::debug!(template = %s.name, error = %e, "could not remove an old template");
                }
            }
        }
        Ok(())
    }

    /// Makes the template for VMs of `config` with the network `choice` now (`smolvm image build
    /// --template`): boots a VM of that configuration, snapshots it, deletes it. Returns the template's
    /// name (an existing usable template is kept), or `None` if the configuration cannot have one.
    pub fn build_template(
        &self,
        config: &VmConfig,
        choice: NetworkMode,
        boot_timeout: std::time::Duration,
    ) -> Result<Option<String>> {
        let Some(name) = self.template_name(config, choice)? else {
            return Ok(None);
        };
        if self.find_template(config, choice)?.is_some() {
            return Ok(Some(name));
        }
        let maker = config.with(|s| {
            s.vm_id = Some(format!("tpl-build-{:08x}", rand::random::<u32>()));
            s.env_vars.clear();
        })?;
        let id = maker.vm_id().to_string();
        let made = self
            .create_with(
                &maker,
                &CreateOptions {
                    network: choice,
                    ..CreateOptions::default()
                },
            )
            .and_then(|_| self.start(&id, boot_timeout))
            .and_then(|_| self.make_template(&id, &name));
        let deleted = self.delete(&id);
        made?;
        if let Err(e) = deleted {
            tracing::warn!(vm = %id, error = %e, "could not delete the VM a template was made from");
        }
        Ok(Some(name))
    }

    /// Removes what a failed restore made for `rec`: process, network, disk, files, sockets, row.
    pub(super) fn undo_restored(
        &self,
        rec: &VmRecord,
        process: Option<crate::process::ProcessIdentity>,
    ) {
        let id = &rec.info.vm_id;
        if let Some(p) = process {
            p.kill();
        }
        self.close_channel(rec);
        self.remove_cgroup(id);
        if let Err(undo) = self.teardown_network(rec) {
            tracing::warn!(vm = %id, error = %undo, "rollback could not remove the network");
        }
        if let Ok(r) = self.record(id) {
            if let Some(d) = &r.disk_path {
                let _ = fs::remove_file(d);
            }
        }
        let _ = fs::remove_dir_all(self.vm_dir(id));
        if let Ok(b) = self.backend_impl(rec.backend) {
            let _ = crate::backend::remove_socket(&b.control_socket(self.socket_dir(), id));
            let _ = crate::backend::remove_socket(b.agent_endpoint(self.socket_dir(), id).path());
        }
        if let Ok(mut s) = self.state() {
            let _ = s.delete_vm(id);
        }
    }
}

/// The major version in `QEMU emulator version 7.2.22 (...)`.
fn qemu_major(version: &str) -> Option<u32> {
    let rest = version.split("version ").nth(1)?;
    rest.split('.').next()?.trim().parse().ok()
}

#[cfg(test)]
mod version_tests {
    use super::qemu_major;

    #[test]
    fn qemu_major_version_is_read_from_its_banner() {
        assert_eq!(
            qemu_major("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"),
            Some(7)
        );
        assert_eq!(qemu_major("QEMU emulator version 10.0.2"), Some(10));
        assert_eq!(qemu_major("something else"), None);
    }
}
