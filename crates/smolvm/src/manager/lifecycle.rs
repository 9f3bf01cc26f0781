//! create / start / stop / delete: the state transitions of the spec, each under the VM's lock, each
//! rolling back what it made when it fails.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::cmdline::{kernel_cmdline, GuestNet};
use super::disk;
use super::egress;
use super::{CreateOptions, Created, SmolVmManager};
use crate::backend::{remove_socket, LaunchSpec};
use crate::config::{DiskMode, VmConfig};
use crate::error::{Error, Result};
use crate::exec::{AgentClient, ExecError};
use crate::info::{VmInfo, VmState};
use crate::state::{RunningVmm, VmRecord};

/// The `last_error` of a VM while it is being deleted; it stays if the delete is interrupted.
pub(crate) const DELETE_INTERRUPTED: &str =
    "delete was interrupted: `delete` again or `cleanup --all` finishes it";
/// How long `stop` waits for the agent connection before falling back to the VMM's power button.
const AGENT_STOP_CONNECT: Duration = Duration::from_secs(1);

impl SmolVmManager {
    /// Creates a VM: allocates its leases, prepares its disk and network, persists it as `created`.
    /// Does not start it (spec: `create`).
    pub fn create(&self, config: &VmConfig) -> Result<VmInfo> {
        self.create_with(config, &CreateOptions::default())
    }

    /// [`create`](Self::create) with smolvm's extra options (network attachment, retained disk).
    pub fn create_with(&self, config: &VmConfig, opts: &CreateOptions) -> Result<VmInfo> {
        self.create_reporting(config, opts).map(|c| c.info)
    }

    /// [`create_with`](Self::create_with), also saying whether a retained disk was reused.
    ///
    /// In isolated mode a disk retained by an earlier VM with this id (`retain_disk_on_delete`) is
    /// reused, files and all, whatever the new config's own flag (which only decides what its own
    /// delete does), as the spec's "Persistent Isolated Disk" example shows. It is never destroyed
    /// implicitly: [`CreateOptions::discard_retained_disk`] starts fresh, and a disk that cannot serve
    /// the config (another image, another size) is refused with a [`crate::ValidationError`] that
    /// says so, before anything is created.
    pub fn create_reporting(&self, config: &VmConfig, opts: &CreateOptions) -> Result<Created> {
        let backend = self.resolve(config.backend())?;
        let vm_id = config.vm_id();
        let mode = self.network_mode_for(opts.network, backend)?;
        egress::check_mode_for(mode, config.network_policy())?;
        let lock = self.lock(vm_id)?;
        // Checked first: the disk of an existing VM is not a retained one and must not be touched.
        if self.state()?.get_vm(vm_id)?.is_some() {
            return Err(Error::VmAlreadyExists(vm_id.to_string()));
        }
        let reused_disk = self.retained_disk_for(config, opts.discard_retained_disk)?;
        let rec = self.state()?.create_vm(config, backend, mode)?;
        match self.provision(&rec) {
            Ok(()) => {
                if let Some(d) = &reused_disk {
                    tracing::info!(vm = %vm_id, disk = %d.display(), "reusing a retained disk");
                }
                Ok(Created {
                    info: self.get(vm_id)?,
                    reused_disk,
                })
            }
            Err(e) => {
                // Roll back: nothing of this VM may remain, except a retained disk it did not create.
                if let Err(undo) = self.teardown_network(&rec) {
                    tracing::warn!(vm = %vm_id, error = %undo, "rollback could not remove the network");
                }
                self.teardown(&rec, reused_disk.is_some());
                if self.state()?.delete_vm(vm_id).is_ok() {
                    lock.remove();
                }
                Err(e)
            }
        }
    }

    /// The retained disk an isolated-mode create of `config` will reuse: `None` if there is none (or
    /// `discard` removed it); an error if it cannot serve the config.
    fn retained_disk_for(&self, config: &VmConfig, discard: bool) -> Result<Option<PathBuf>> {
        let disk = disk::isolated_disk_path(self.disk_dir(), config.vm_id());
        if config.disk_mode() != DiskMode::Isolated || !disk.is_file() {
            return Ok(None);
        }
        if discard {
            tracing::info!(vm = %config.vm_id(), disk = %disk.display(), "discarding a retained disk");
            disk::remove_disk(&disk);
            return Ok(None);
        }
        disk::check_retained(config.vm_id(), config.rootfs_path(), &disk)?;
        Ok(Some(disk))
    }

    fn provision(&self, rec: &VmRecord) -> Result<()> {
        let config = &rec.info.config;
        let vm_dir = self.vm_dir(&rec.info.vm_id);
        fs::create_dir_all(&vm_dir).map_err(|e| Error::io("create VM directory", &vm_dir, e))?;
        if config.disk_mode() == DiskMode::Isolated {
            let dst = disk::isolated_disk_path(self.disk_dir(), &rec.info.vm_id);
            let method = disk::prepare_isolated(config.rootfs_path(), &dst)?;
            tracing::debug!(vm = %rec.info.vm_id, ?method, "isolated disk ready");
            if let (Some(mib), false) =
                (config.disk_size_mib(), method == disk::CloneMethod::Reused)
            {
                if let Err(e) = crate::image::grow_rootfs(&dst, mib) {
                    let _ = fs::remove_file(&dst);
                    return Err(e.into());
                }
            }
            self.state()?.set_disk_path(&rec.info.vm_id, Some(&dst))?;
            self.prepare_ssh(rec, Some(&dst))?;
        } else {
            self.prepare_ssh(rec, None)?;
        }
        self.setup_network(rec)?;
        Ok(())
    }

    /// Starts a created, stopped or `error` VM and waits until its guest is ready (agent `Ready`), at
    /// most `boot_timeout`. A running VM is left as it is. On timeout the VMM is killed and the VM keeps
    /// its previous state (spec: `start`; restarting an `error` VM from its disk is smolvm's addition).
    pub fn start(&self, vm_id: &str, boot_timeout: Duration) -> Result<VmInfo> {
        self.start_inner(vm_id, boot_timeout).map(|(info, _)| info)
    }

    /// Start, returning the agent connection that saw the guest become ready (reused by the facade
    /// and the `smolvm-bench` crate; not a stable API).
    #[doc(hidden)]
    pub fn start_inner(
        &self,
        vm_id: &str,
        boot_timeout: Duration,
    ) -> Result<(VmInfo, Option<AgentClient>)> {
        let deadline = Instant::now() + boot_timeout;
        let _lock = self.lock(vm_id)?;
        let rec = self.record(vm_id)?;
        match rec.info.status {
            VmState::Running if rec.process.is_some_and(|p| p.is_alive()) => {
                return Ok((rec.info, None))
            }
            // An `error` VM (its VMM died, or an operation failed half-way) boots again from its disk
            // and leases, which are intact: what a user expects, and what its error message offers.
            VmState::Created | VmState::Stopped | VmState::Error => {}
            VmState::Paused => {
                return Err(Error::InvalidState {
                    vm_id: vm_id.into(),
                    status: VmState::Paused,
                    operation: "start (it is paused: `smolvm resume` it)",
                })
            }
            // `record` turned a running VM with a dead VMM into `error`, so this is not reached.
            VmState::Running => {
                return Err(Error::InvalidState {
                    vm_id: vm_id.into(),
                    status: VmState::Running,
                    operation: "start (its VMM state is unknown; run `smolvm reconcile`)",
                })
            }
        }
        // A VMM a crash left behind for this VM would hold its disk and sockets.
        self.kill_stray_vmms(vm_id, None);
        let template = match rec.info.status {
            VmState::Created => self.state()?.snapshot_of(vm_id)?,
            _ => None,
        };
        if let Some(t) = &template {
            // `None`: unusable; it boots cold from the template's disk (identity given after boot).
            if let Some(started) = self.start_from_template(&rec, t, deadline)? {
                return Ok(started);
            }
        }
        let backend = self.backend_impl(rec.backend)?;
        self.check_socket_unclaimed(&backend.control_socket(self.socket_dir(), vm_id))?;
        // Idempotent: remakes what stop removed (and what a host reboot lost).
        self.setup_network(&rec)?;
        let booted = self.boot(&rec, backend.as_ref(), deadline, boot_timeout);
        if booted.is_err() && rec.info.status != VmState::Created {
            // The VM keeps its previous state, and a stopped (or failed) VM has no host network.
            if let Err(e) = self.teardown_network(&rec) {
                tracing::warn!(vm = %vm_id, error = %e, "failed start could not remove the host network; start or delete will");
            }
        }
        let client = booted?;
        if let (Some(_), Some(c)) = (&template, &client) {
            self.give_identity(&rec, c);
        }
        Ok((self.get(vm_id)?, client))
    }

    /// Launches the VMM and waits for the guest (see [`start`](Self::start)). On failure the VMM is
    /// killed, its sockets removed and the VM's previous status restored (with the reason recorded).
    fn boot(
        &self,
        rec: &VmRecord,
        backend: &dyn crate::backend::Backend,
        deadline: Instant,
        boot_timeout: Duration,
    ) -> Result<Option<AgentClient>> {
        let vm_id = rec.info.vm_id.as_str();
        let spec = self.launch_spec(rec, backend)?;
        crate::backend::console_keeper::remove_logs(&spec.console_log);
        let process = backend
            .launch(&spec)
            .inspect_err(|_| self.remove_cgroup(vm_id))?;
        let left = deadline.saturating_duration_since(Instant::now());
        // Clients (this one included) reach the agent through the VM's channel owner, if it has one.
        let endpoint = match self.open_channel(rec, &spec, process, left) {
            Ok(e) => e,
            Err(e) => {
                process.kill();
                remove_sockets(&spec);
                release_backend(backend, vm_id);
                self.remove_cgroup(vm_id);
                return Err(e);
            }
        };
        let running = RunningVmm {
            process,
            socket_path: spec.control_socket.clone(),
            agent_socket: Some(endpoint.path().to_path_buf()),
        };
        if let Err(e) = self.state()?.set_running(vm_id, &running) {
            process.kill();
            self.close_channel(rec);
            remove_sockets(&spec);
            release_backend(backend, vm_id);
            self.remove_cgroup(vm_id);
            return Err(e.into());
        }
        let client = if rec.info.config.boots_agent() {
            let left = deadline.saturating_duration_since(Instant::now());
            match AgentClient::connect(&endpoint, left) {
                Ok(c) => Some(c),
                Err(e) => {
                    // When the time is up, the owner's socket not there yet, or the owner giving up
                    // on the agent at the same moment, is a slow boot too.
                    let e = match e {
                        ExecError::Connect { .. } | ExecError::AgentDisconnected { .. }
                            if Instant::now() >= deadline =>
                        {
                            ExecError::Timeout {
                                operation: "connecting to the guest agent".into(),
                                after: boot_timeout,
                            }
                        }
                        e => e,
                    };
                    process.kill();
                    self.close_channel(rec);
                    remove_sockets(&spec);
                    release_backend(backend, vm_id);
                    self.remove_cgroup(vm_id);
                    let why = format!("boot did not complete: {e}");
                    self.state()?
                        .set_status(vm_id, rec.info.status, Some(&why))?;
                    let err: Error = e.into();
                    return Err(match err {
                        Error::OperationTimeout { .. } => Error::OperationTimeout {
                            operation: format!("boot of VM {vm_id}"),
                            limit: boot_timeout,
                        },
                        other => other,
                    });
                }
            }
        } else {
            None
        };
        if let Some(c) = &client {
            if let Err(e) = self.pin_host_key_via_agent(rec, c) {
                tracing::warn!(vm = %vm_id, error = %e, "could not pin the SSH host key; SSH will refuse the guest");
            }
            if !rec.info.config.env_vars().is_empty() {
                c.set_env_vars(rec.info.config.env_vars())?;
            }
        }
        Ok(client)
    }

    pub(super) fn launch_spec(
        &self,
        rec: &VmRecord,
        backend: &dyn crate::backend::Backend,
    ) -> Result<LaunchSpec> {
        let config = &rec.info.config;
        let id = &rec.info.vm_id;
        let sockets = self.socket_dir();
        let net = rec.info.network.as_ref();
        let guest_net = net.map(GuestNet::from_network);
        let (disk, read_only) = match config.disk_mode() {
            DiskMode::Isolated => (
                rec.disk_path
                    .clone()
                    .unwrap_or_else(|| disk::isolated_disk_path(self.disk_dir(), id)),
                false,
            ),
            DiskMode::Shared => (
                config.rootfs_path().to_path_buf(),
                disk::shared_disk_read_only(),
            ),
        };
        let run_as = self.prepare_vmm_user(rec, config.disk_mode(), &disk)?;
        Ok(LaunchSpec {
            vm_id: id.clone(),
            vcpu_count: config.vcpu_count(),
            mem_size_mib: config.mem_size_mib(),
            kernel: config.kernel_path().to_path_buf(),
            // A config naming only a built image's kernel and rootfs (the spec's examples) boots that
            // image's initramfs: its kernel cannot mount the root disk without it.
            initrd: config
                .initrd_path()
                .map(|p| p.to_path_buf())
                .or_else(|| crate::image::initrd_for_kernel(config.kernel_path())),
            kernel_cmdline: {
                let mut boot_args = config.boot_args().to_string();
                // A read-only disk must be mounted read-only, or the guest's first mount fails.
                if read_only && !smolvm_protocol::BootParams::parse(&boot_args).read_only {
                    boot_args.push_str(" ro");
                }
                let key = self.boot_authorized_key(rec)?;
                kernel_cmdline(&boot_args, id, guest_net.as_ref(), key.as_deref())?
            },
            disk,
            disk_read_only: read_only,
            net: net.map(super::net_attachment),
            control_socket: backend.control_socket(sockets, id),
            agent: backend.agent_endpoint(sockets, id),
            console_log: self.console_log(id),
            vmm_log: self.vmm_log(id),
            store: Some(self.dirs.store.clone()),
            run_as,
            cgroup_procs: self.prepare_cgroup(rec)?,
        })
    }

    /// Stops a running VM: asks the guest to power off (agent, else the VMM's power button), waits up to
    /// `timeout`, then kills the VMM. A VM that is not running is returned unchanged (spec: `stop`).
    pub fn stop(&self, vm_id: &str, timeout: Duration) -> Result<VmInfo> {
        let _lock = self.lock(vm_id)?;
        let rec = self.record(vm_id)?;
        if !matches!(rec.info.status, VmState::Running | VmState::Paused) {
            return Ok(rec.info);
        }
        self.halt(&rec, timeout)?;
        if let Err(e) = self.teardown_network(&rec) {
            tracing::warn!(vm = %vm_id, error = %e, "stop could not remove the host network; start or delete will");
        }
        self.state()?.set_status(vm_id, VmState::Stopped, None)?;
        self.get(vm_id)
    }

    /// Powers the guest off gracefully, then kills the VMM if it outlives `timeout`; removes its sockets.
    fn halt(&self, rec: &VmRecord, timeout: Duration) -> Result<()> {
        let Some(process) = rec.process.filter(|p| p.is_alive()) else {
            self.close_channel(rec);
            self.remove_vm_sockets(rec);
            self.remove_cgroup(&rec.info.vm_id);
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        if !timeout.is_zero() {
            self.unpause_for_halt(rec);
        }
        let backend = self.backend_impl(rec.backend)?;
        // Through the channel owner (it holds QEMU's only agent connection), wherever it was recorded.
        let agent = self.agent_endpoint_of(rec)?;
        let asked = !timeout.is_zero()
            && AgentClient::connect(&agent, AGENT_STOP_CONNECT.min(timeout))
                .and_then(|c| c.power_off())
                .is_ok();
        if !asked && !timeout.is_zero() {
            if let Some(sock) = &rec.info.socket_path {
                if let Err(e) = backend.request_shutdown(sock) {
                    tracing::debug!(vm = %rec.info.vm_id, error = %e, "graceful shutdown request failed");
                }
            }
        }
        if !process.wait_gone(deadline.saturating_duration_since(Instant::now())) {
            tracing::info!(vm = %rec.info.vm_id, "graceful stop timed out, killing the VMM");
            process.kill();
        }
        self.close_channel(rec);
        self.remove_vm_sockets(rec);
        self.remove_cgroup(&rec.info.vm_id);
        Ok(())
    }

    /// Removes the VM's sockets and what else its backend keeps beyond the VMM (Firecracker's jail).
    /// Call once the VMM is gone.
    fn remove_vm_sockets(&self, rec: &VmRecord) {
        if let Ok(backend) = self.backend_impl(rec.backend) {
            release_backend(backend.as_ref(), &rec.info.vm_id);
            let control = backend.control_socket(self.socket_dir(), &rec.info.vm_id);
            // In a socket dir shared with another store, these may be its live VM's sockets.
            if self.check_socket_unclaimed(&control).is_err() {
                return;
            }
            let _ = remove_socket(&control);
            let _ = remove_socket(
                backend
                    .agent_endpoint(self.socket_dir(), &rec.info.vm_id)
                    .path(),
            );
        }
    }

    /// Deletes a VM and everything it owns: VMM process, sockets, network, disk (unless retained), logs,
    /// row and leases (spec: `delete`). If a step fails the row stays, marked `error`, so a retry can
    /// finish the job.
    pub fn delete(&self, vm_id: &str) -> Result<()> {
        let lock = self.lock(vm_id)?;
        let rec = self.record(vm_id)?;
        // Marked first: a delete killed half-way (its disk or network already gone) must not leave a
        // row that looks like a healthy stopped VM. An `error` row is finished by `delete` again or
        // `cleanup --all`. `rec` keeps the VMM's identity for the halt below.
        self.state()?
            .set_status(vm_id, VmState::Error, Some(DELETE_INTERRUPTED))?;
        // A retained disk must be consistent: let the guest flush it. Otherwise a kill is enough.
        let grace = if rec.info.config.retain_disk_on_delete() {
            Duration::from_secs(3)
        } else {
            Duration::ZERO
        };
        let result = self
            .halt(&rec, grace)
            .and_then(|()| self.teardown_network(&rec))
            .map(|()| {
                // Whatever a crash left for this id goes too (what `cleanup` would remove for it).
                self.kill_stray_vmms(vm_id, None);
                self.teardown(&rec, rec.info.config.retain_disk_on_delete())
            });
        match result {
            Ok(()) => {
                self.state()?.delete_vm(vm_id)?;
                lock.remove();
                Ok(())
            }
            Err(e) => {
                let _ = self.state()?.set_status(
                    vm_id,
                    VmState::Error,
                    Some(&format!("delete failed: {e}")),
                );
                Err(e)
            }
        }
    }

    /// Removes the VM's files: its isolated disk unless `keep_disk`, interrupted disk clones
    /// (`<id>.tmp-*`, left by a create that was killed), the VM directory and sockets.
    fn teardown(&self, rec: &VmRecord, keep_disk: bool) {
        let config = &rec.info.config;
        if config.disk_mode() == DiskMode::Isolated && !keep_disk {
            // A record read before its disk path was stored (a create rolling back, or killed between
            // the copy and storing the path) still owns the disk under its usual name.
            let disk = rec
                .disk_path
                .clone()
                .unwrap_or_else(|| disk::isolated_disk_path(self.disk_dir(), &rec.info.vm_id));
            disk::remove_disk(&disk);
            // A VM made from a snapshot killed between making its overlay and recording it.
            let _ = fs::remove_file(super::snapshot_disk::overlay_path(
                self.disk_dir(),
                &rec.info.vm_id,
            ));
        } else if config.disk_mode() == DiskMode::Isolated && crate::vmm_user::is_root() {
            // A retained disk outlives the VM's VMM user, whose id the next VM may get: it goes back
            // to root, and the VM that reuses it gets it handed over again at start.
            if let Some(disk) = &rec.disk_path {
                if let Err(e) = crate::vmm_user::take_back_file(disk) {
                    tracing::warn!(vm = %rec.info.vm_id, error = %e, "could not give the retained disk back to root");
                }
            }
        }
        for tmp in disk::temp_clones(self.disk_dir(), &rec.info.vm_id) {
            let _ = fs::remove_file(tmp);
        }
        // Before the VM directory goes: the owner's PID file is in it.
        self.close_channel(rec);
        let _ = fs::remove_dir_all(self.vm_dir(&rec.info.vm_id));
        self.remove_vm_sockets(rec);
        self.remove_cgroup(&rec.info.vm_id);
    }
}

/// [`Backend::release`](crate::backend::Backend::release), logged on failure (`cleanup` retries).
fn release_backend(backend: &dyn crate::backend::Backend, vm_id: &str) {
    if let Err(e) = backend.release(vm_id) {
        tracing::warn!(vm = %vm_id, error = %e, "could not remove what the backend keeps for the VM (its jail)");
    }
}

fn remove_sockets(spec: &LaunchSpec) {
    let _ = remove_socket(&spec.control_socket);
    let _ = remove_socket(spec.agent.path());
}
