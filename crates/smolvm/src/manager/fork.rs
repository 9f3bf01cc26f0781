//! Start a new, independent VM from a snapshot, and fork a running VM into N. Each new VM gets its own
//! id, row, leases (IP, MAC, TAP, SSH port), network, sockets and disk (a qcow2 overlay on the
//! snapshot's disk under QEMU), and its VMM loads the snapshot's memory and device state.
//!
//! Right after the restore, before anything else talks to the guest, the host sends the agent the VM's
//! new identity over the agent channel (`smolvm_protocol::Identity`): fresh host entropy that the agent
//! mixes into the kernel's pool and reseeds the CRNG with (clones would otherwise share their random
//! state: QEMU's vmgenid is not visible to the default guest kernel), the host's wall-clock time, the
//! host name (the new id), the new MAC, address and route, and a new SSH host key (the agent restarts
//! the SSH server with it; the key is pinned for the new VM).
//!
//! Every failure rolls back what this call made (process, network, disk, row, leases) and is reported as
//! a [`SnapshotError`] naming the snapshot.

use std::fs;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use smolvm_protocol::{Identity, NetIdentity};

use super::cmdline::GuestNet;
use super::snapshot::mtime_ns;
use super::snapshot_disk;
use super::{NetworkMode, SmolVmManager};
use crate::backend::firecracker::snapshot as fc_snapshot;
use crate::backend::qemu::migrate;
use crate::config::BackendKind;
use crate::error::{Error, Result};
use crate::exec::AgentClient;
use crate::info::VmInfo;
use crate::process::ProcessIdentity;
use crate::snapshot::{SnapshotError, SnapshotRecord};
use crate::state::{RunningVmm, VmRecord};

/// Bytes of host entropy handed to each restored guest.
pub(super) const IDENTITY_ENTROPY_BYTES: usize = 64;
/// Most VMs one `fork` call makes.
pub(super) const MAX_FORKS: usize = 64;

impl SmolVmManager {
    /// Starts a new VM from snapshot `name` (spec extension: `create_from_snapshot`): id `vm_id` (or a
    /// generated `vm-<8 hex>`), running when this returns, with the guest's identity renewed. The
    /// machine shape (vCPUs, memory, kernel, boot arguments, network presence) is the snapshot's.
    pub fn create_from_snapshot(
        &self,
        name: &str,
        vm_id: Option<&str>,
        boot_timeout: Duration,
    ) -> Result<VmInfo> {
        self.restore_inner(name, vm_id, boot_timeout)
            .map(|(info, _)| info)
    }

    /// Forks a running (or paused) VM into `n` new VMs: takes a snapshot named
    /// `<vm_id>-fork-<8 hex>` (listed with the others; it can be deleted once its forks are) and starts
    /// `n` VMs from it, in parallel. If one fork fails, the other forks and the snapshot are removed.
    pub fn fork(&self, vm_id: &str, n: usize, boot_timeout: Duration) -> Result<Vec<VmInfo>> {
        if !(1..=MAX_FORKS).contains(&n) {
            return Err(crate::ValidationError::new(
                "n",
                format!("{n} is outside 1..={MAX_FORKS}"),
            )
            .into());
        }
        let prefix: String = vm_id.chars().take(45).collect();
        let name = format!(
            "{}-fork-{:08x}",
            prefix.trim_end_matches('-'),
            rand::random::<u32>()
        );
        self.snapshot(vm_id, &name)?;
        // The restores run in parallel: each waits mostly on its own QEMU loading memory.
        let results: Vec<Result<VmInfo>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|_| s.spawn(|| self.create_from_snapshot(&name, None, boot_timeout)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(crate::ValidationError::new("fork", "a restore thread panicked").into())
                    })
                })
                .collect()
        });
        let (made, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_ok());
        let made: Vec<VmInfo> = made.into_iter().filter_map(|r| r.ok()).collect();
        if let Some(Err(e)) = failed.into_iter().next() {
            for vm in &made {
                let _ = self.delete(&vm.vm_id);
            }
            let _ = self.delete_snapshot(&name);
            return Err(e);
        }
        Ok(made)
    }

    /// The restore, returning the agent connection that applied the identity (reused by the facade
    /// and the `smolvm-bench` crate; not a stable API).
    #[doc(hidden)]
    pub fn restore_inner(
        &self,
        name: &str,
        vm_id: Option<&str>,
        boot_timeout: Duration,
    ) -> Result<(VmInfo, Option<AgentClient>)> {
        let deadline = Instant::now() + boot_timeout;
        let snap = self.snapshot_record(name)?;
        let fail = |action: &'static str| move |e: Error| failed(name, action, e);
        let config = snap
            .config
            .with(|s| {
                s.vm_id = vm_id.map(str::to_string);
                s.retain_disk_on_delete = false;
            })
            .map_err(|e| fail("configure the new VM")(e.into()))?;
        let kind = self
            .resolve(Some(snap.backend))
            .map_err(fail("find the snapshot's VMM"))?;
        self.check_restorable(&snap, kind)?;
        let mode = if snap.machine.network {
            self.network_mode_for(NetworkMode::Auto, kind)?
        } else {
            None
        };
        let new_id = config.vm_id().to_string();
        let _lock = self.lock(&new_id)?;
        let rec = self.state()?.create_vm(&config, kind, mode)?;
        let result = self
            .state()
            .and_then(|mut s| Ok(s.link_snapshot_user(&new_id, name)?))
            .map_err(|e| (fail("record the new VM's use of the snapshot")(e), None))
            .and_then(|()| self.restore_into(&snap, &rec, deadline));
        match result {
            Ok(client) => Ok((self.get(&new_id)?, Some(client))),
            Err((e, process)) => {
                self.undo_restored(&rec, process);
                Err(e)
            }
        }
    }

    /// Disk, SSH pin, network, VMM, identity for the freshly recorded VM `rec`. On error also returns
    /// the VMM process (if one was started) for the caller's rollback.
    fn restore_into(
        &self,
        snap: &SnapshotRecord,
        rec: &VmRecord,
        deadline: Instant,
    ) -> std::result::Result<AgentClient, (Error, Option<ProcessIdentity>)> {
        self.prepare_restored(snap, rec).map_err(|e| (e, None))?;
        let rec = self.record(&rec.info.vm_id).map_err(|e| (e, None))?;
        self.boot_restored(snap, &rec, deadline)
    }

    /// What a VM made from `snap` needs before its VMM starts: its disk (an overlay on the snapshot's
    /// disk under QEMU), its own SSH host key (pinned) and its host network.
    pub(super) fn prepare_restored(&self, snap: &SnapshotRecord, rec: &VmRecord) -> Result<()> {
        let fail = |action: &'static str| move |e: Error| failed(&snap.name, action, e);
        let id = &rec.info.vm_id;
        let vm_dir = self.vm_dir(id);
        fs::create_dir_all(&vm_dir).map_err(|e| Error::io("create VM directory", &vm_dir, e))?;
        fs::create_dir_all(self.disk_dir())
            .map_err(|e| Error::io("create directory", self.disk_dir(), e))?;
        let disk = match snap.backend {
            BackendKind::Qemu => {
                let d = snapshot_disk::overlay_path(self.disk_dir(), id);
                snapshot_disk::overlay(&snap.disk(), &d).map_err(fail("make the disk overlay"))?;
                d
            }
            BackendKind::Firecracker => {
                let d = super::disk::isolated_disk_path(self.disk_dir(), id);
                super::disk::prepare_isolated(&snap.disk(), &d).map_err(fail("copy the disk"))?;
                d
            }
        };
        self.state()?.set_disk_path(id, Some(&disk))?;
        self.new_host_key(rec)
            .map_err(fail("make the new VM's SSH host key"))?;
        self.setup_network(rec)?;
        Ok(())
    }

    /// Starts the VMM of a prepared VM from `snap`, records it running, connects to the agent and gives
    /// the guest its identity. On error also returns the VMM process (if one was started).
    pub(super) fn boot_restored(
        &self,
        snap: &SnapshotRecord,
        rec: &VmRecord,
        deadline: Instant,
    ) -> std::result::Result<AgentClient, (Error, Option<ProcessIdentity>)> {
        let fail = |action: &'static str| move |e: Error| failed(&snap.name, action, e);
        let id = &rec.info.vm_id;
        let t0 = Instant::now();
        let step = |what: &str| tracing::debug!(vm = %id, ms = t0.elapsed().as_millis() as u64, "restore: {what}");
        let no_proc = |e: Error| (e, None);
        // Idempotent: the key made by `prepare_restored` is reused; its bytes go to the guest.
        let host_key = self
            .new_host_key(rec)
            .map_err(|e| no_proc(fail("read the new VM's SSH host key")(e)))?;
        self.setup_network(rec).map_err(no_proc)?;
        let backend = self.backend_impl(rec.backend).map_err(no_proc)?;
        let spec = self.launch_spec(rec, backend.as_ref()).map_err(no_proc)?;
        crate::backend::console_keeper::remove_logs(&spec.console_log);
        let process = backend
            .restore(&spec, &snap.dir)
            .map_err(|e| no_proc(fail("restore the VM state")(e.into())))?;
        step("VMM restored");
        let with_proc = |e: Error| (e, Some(process));
        let left = deadline.saturating_duration_since(Instant::now());
        let endpoint = self
            .open_channel(rec, &spec, process, left)
            .map_err(with_proc)?;
        let running = RunningVmm {
            process,
            socket_path: spec.control_socket.clone(),
            agent_socket: Some(endpoint.path().to_path_buf()),
        };
        self.state()
            .and_then(|mut s| Ok(s.set_running(id, &running)?))
            .map_err(with_proc)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let client = AgentClient::connect(&endpoint, left)
            .map_err(|e| with_proc(fail("reach the restored guest's agent")(e.into())))?;
        step("agent connected");
        client
            .set_identity(&identity(rec, host_key))
            .map_err(|e| with_proc(fail("give the guest its new identity")(e.into())))?;
        step("identity applied");
        Ok(client)
    }

    /// Refuses a snapshot this host cannot restore, or whose files are missing or changed.
    pub(super) fn check_restorable(&self, snap: &SnapshotRecord, kind: BackendKind) -> Result<()> {
        let name = &snap.name;
        let backend = self.backend_impl(kind)?;
        let version = backend.vmm_version()?;
        let incompatible = |reason: String| -> Error {
            SnapshotError::Incompatible {
                name: name.clone(),
                reason,
            }
            .into()
        };
        if version != snap.machine.vmm_version {
            return Err(incompatible(format!(
                "it was written by {:?}, this host runs {version:?}",
                snap.machine.vmm_version
            )));
        }
        let accel = self.accel_name(kind);
        if accel != snap.machine.accel {
            return Err(incompatible(format!(
                "it was taken under {}, this host would restore under {accel}",
                snap.machine.accel
            )));
        }
        if kind == BackendKind::Qemu {
            let caps: Vec<String> = migrate::CAPABILITIES
                .iter()
                .map(|c| c.to_string())
                .collect();
            if caps != snap.machine.capabilities {
                return Err(incompatible(format!(
                    "it was saved with migration capabilities {:?}, this smolvm uses {caps:?}",
                    snap.machine.capabilities
                )));
            }
        }
        let mut files = vec![snap.disk()];
        match kind {
            BackendKind::Qemu => files.push(migrate::migration_file(&snap.dir)),
            BackendKind::Firecracker => files.extend(fc_snapshot::files(&snap.dir)),
        }
        for f in &files {
            if !f.is_file() {
                return Err(SnapshotError::MissingFile {
                    name: name.clone(),
                    path: f.clone(),
                }
                .into());
            }
        }
        let disk = snap.disk();
        let meta = fs::metadata(&disk).map_err(|e| Error::io("stat", &disk, e))?;
        let changed = |reason: String| -> Error {
            SnapshotError::DiskChanged {
                name: name.clone(),
                path: disk.clone(),
                reason,
            }
            .into()
        };
        if meta.len() != snap.machine.disk_size {
            return Err(changed(format!(
                "size {} bytes, recorded {}",
                meta.len(),
                snap.machine.disk_size
            )));
        }
        if mtime_ns(&meta) != snap.machine.disk_mtime_ns {
            return Err(changed("modified after the snapshot was taken".into()));
        }
        Ok(())
    }

    /// Gives the running guest of `rec` its own identity (host name, network, clock, entropy, its own
    /// pinned SSH host key) through `client`: for a VM that booted cold from a template's disk. A
    /// failure is logged: the VM runs and its agent works, only SSH refuses the template's host key.
    pub(super) fn give_identity(&self, rec: &VmRecord, client: &AgentClient) {
        let given = self
            .new_host_key(rec)
            .and_then(|key| Ok(client.set_identity(&identity(rec, key))?));
        if let Err(e) = given {
            tracing::warn!(vm = %rec.info.vm_id, error = %e, "could not give the VM its own identity after a cold boot from its template's disk");
        }
    }

    /// A new SSH host key for the new VM (VMs with a network only), pinned in its known_hosts; the
    /// Dropbear-format private key is handed to the guest with its identity.
    fn new_host_key(&self, rec: &VmRecord) -> Result<Option<Vec<u8>>> {
        let Some(net) = &rec.info.network else {
            return Ok(None);
        };
        let key = crate::ssh::ensure_host_key(
            &self.vm_dir(&rec.info.vm_id),
            &rec.info.vm_id,
            crate::ssh::HostKeyFormat::Dropbear,
        )?;
        crate::ssh::write_known_hosts(
            &self.known_hosts_path(&rec.info.vm_id),
            &crate::ssh::known_hosts_patterns(net),
            &key.public_key_line,
        )?;
        let bytes = fs::read(&key.guest_key_file)
            .map_err(|e| Error::io("read host key", &key.guest_key_file, e))?;
        Ok(Some(bytes))
    }
}

pub(super) fn failed(name: &str, action: &'static str, e: Error) -> Error {
    SnapshotError::Failed {
        name: name.into(),
        action,
        source: Box::new(e),
    }
    .into()
}

/// The identity of the VM `rec`: its id as host name, its network, the host's time, fresh entropy, its
/// own SSH host key.
fn identity(rec: &VmRecord, ssh_host_key: Option<Vec<u8>>) -> Identity {
    let mut entropy = vec![0u8; IDENTITY_ENTROPY_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut entropy);
    let net = rec.info.network.as_ref().map(|n| {
        let g = GuestNet::from_network(n);
        NetIdentity {
            ip: g.ip,
            prefix: g.prefix,
            gateway: Some(g.gateway),
            mac: n.guest_mac.clone(),
            dns: g.dns.into_iter().collect(),
        }
    });
    Identity {
        hostname: rec.info.vm_id.clone(),
        net,
        unix_time_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        entropy,
        ssh_host_key,
    }
}
