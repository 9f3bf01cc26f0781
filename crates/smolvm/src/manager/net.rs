//! The manager's network and SSH steps: which network mode a VM gets, its host network (TAP, NAT,
//! forward), its SSH keys and pinned known_hosts, and SSH access (`get_ssh_commands`, `wait_for_ssh`,
//! `ssh_target`).
//!
//! # When lifecycle calls what
//! * `create`: [`network_mode_for`](SmolVmManager::network_mode_for) before the row is written (its result
//!   goes to `StateStore::create_vm`); after the disk is ready, [`prepare_ssh`](SmolVmManager::prepare_ssh)
//!   (isolated: with the VM's disk, which must not be running) and then
//!   [`setup_network`](SmolVmManager::setup_network). On a failure of any step,
//!   [`teardown_network`](SmolVmManager::teardown_network) is part of the rollback.
//! * `start`: [`setup_network`](SmolVmManager::setup_network) again before launching the VMM (idempotent:
//!   repairs what a host reboot or `smolvm cleanup` removed; in user mode it checks that the SSH port is
//!   still free), [`net_attachment`] and the SSH key line of the kernel command line, and for a
//!   shared-disk VM [`pin_host_key_via_agent`](SmolVmManager::pin_host_key_via_agent) right after the
//!   agent said `Ready` (before anything connects over SSH).
//! * `stop`: [`teardown_network`](SmolVmManager::teardown_network) after the VMM is gone (the spec: stop
//!   "cleans up port forwarding rules"); a failure there is only logged, since the VM did stop and
//!   `start`, `delete` and `cleanup` all mend it. The leases stay, so the next `start` recreates the same
//!   TAP, address and SSH port.
//! * `delete`: [`teardown_network`](SmolVmManager::teardown_network) (idempotent) before the row goes.
//!
//! So the host network of a VM exists while it is created or running, never while it is stopped.
//!
//! # Host keys and disk modes
//! Every VM gets its own ed25519 host key, generated on the host in the VM directory and pinned in
//! `<vm_dir>/known_hosts`; smolvm connects with `StrictHostKeyChecking=yes` against that file only.
//! * `isolated`: the key and root's `authorized_keys` (smolvm's client key appended to what the image
//!   has) are written into the VM's own disk before its first boot, in the format of each SSH server the
//!   image carries (Dropbear and/or OpenSSH).
//! * `shared`: the image is shared and attached read-only, so nothing is written into it. The client key
//!   travels on the kernel command line (`smolvm.authorized_key=<base64>`, which the agent appends to
//!   root's `authorized_keys`; a public key is no secret). The host key must not go there (the command
//!   line is visible to every host user in `ps` and to every guest user in `/proc/cmdline`), so it is
//!   written through the agent channel after boot: the default image's Dropbear runs with `-R`, which
//!   reads a key that appears before the first connection. Until that write succeeded, SSH to the VM
//!   fails the host key check; it never falls back to trusting whatever key the guest shows.

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::SmolVmManager;
use crate::backend::NetAttachment;
use crate::config::{BackendKind, DiskMode};
use crate::error::{Error, Result};
use crate::exec::AgentClient;
use crate::info::{NetworkConfig, NetworkMode};
use crate::network::{choose_network_mode, HostNetwork, NetworkError};
use crate::ssh::{self, ClientKey, HostKey, HostKeyFormat, SshError, SshTarget};
use crate::state::VmRecord;

/// Root's `authorized_keys` in the guest.
const GUEST_AUTHORIZED_KEYS: &str = "/root/.ssh/authorized_keys";
/// Paths that show an image carries Dropbear.
const DROPBEAR_MARKERS: [&str; 2] = ["/usr/sbin/dropbear", "/etc/dropbear"];
/// Paths that show an image carries OpenSSH's server.
const OPENSSH_MARKERS: [&str; 2] = ["/usr/sbin/sshd", "/etc/ssh/sshd_config"];

/// The NIC a backend attaches for `net` (the launch spec's `net` field).
pub(crate) fn net_attachment(net: &NetworkConfig) -> NetAttachment {
    match net.mode {
        // Auto and None are requests: a configured network is TAP or user mode.
        NetworkMode::Tap | NetworkMode::Auto | NetworkMode::None => NetAttachment::Tap {
            tap: net.tap_name().to_string(),
            mac: net.guest_mac.clone(),
        },
        NetworkMode::User => NetAttachment::User {
            mac: net.guest_mac.clone(),
            guest_ip: net.guest_ip,
            ssh_host_port: net.ssh_host_port,
        },
    }
}

impl SmolVmManager {
    /// The network mode of a new VM (call before `StateStore::create_vm`, pass the result to it):
    /// `None` for [`NetworkMode::None`]; `Auto` gives TAP when this process may create TAP devices
    /// and `nft`/`ip` exist, else QEMU user-mode networking (an error for Firecracker, which has none);
    /// an explicit `Tap` or `User` is honoured or refused with the reason and the fix.
    pub(crate) fn network_mode_for(
        &self,
        choice: NetworkMode,
        backend: BackendKind,
    ) -> Result<Option<NetworkMode>> {
        let caps = self.host_network().capabilities();
        Ok(choose_network_mode(choice, backend, &caps)?)
    }

    /// The host network layer (the real system tools unless the builder was given others).
    pub(crate) fn host_network(&self) -> HostNetwork {
        self.network.clone()
    }

    /// Makes the host side of the VM's network. TAP mode: TAP device, gateway address, route, NAT and
    /// the loopback SSH forward ([`HostNetwork::setup_vm`], idempotent; on failure it removes what it
    /// made). User mode: QEMU makes everything; this only checks that the SSH port is still free on
    /// 127.0.0.1, so that a taken port is reported by name instead of as a QEMU start failure. No
    /// network: nothing. Call at create (after the disk is ready) and at start (before the launch).
    pub(crate) fn setup_network(&self, rec: &VmRecord) -> Result<()> {
        let Some(net) = &rec.info.network else {
            return Ok(());
        };
        match net.mode {
            // Auto and None are requests: a configured network is TAP or user mode.
            NetworkMode::Tap | NetworkMode::Auto | NetworkMode::None => {
                let vm_id = &rec.info.vm_id;
                let plan = self.egress_plan(vm_id, rec.info.config.network_policy());
                self.host_network().setup_vm_with(vm_id, net, &plan)?
            }
            NetworkMode::User => {
                if let Some(port) = net.ssh_host_port {
                    if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
                        return Err(NetworkError::PortTaken {
                            port,
                            holder: "a process on this host is bound to it".into(),
                        }
                        .into());
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes the host side of the VM's network (TAP mode: its nft rules and TAP; user mode and no
    /// network: nothing). Idempotent; call at stop, at delete and in create's rollback.
    pub(crate) fn teardown_network(&self, rec: &VmRecord) -> Result<()> {
        match &rec.info.network {
            Some(net) if net.mode == NetworkMode::Tap => {
                Ok(self.host_network().teardown_vm(&rec.info.vm_id, net)?)
            }
            _ => Ok(()),
        }
    }

    /// The data directory's SSH client key (`<data_dir>/ssh/id_ed25519`), generated on first use.
    pub fn client_key(&self) -> Result<ClientKey> {
        Ok(ssh::ensure_client_key(self.data_dir())?)
    }

    /// The VM's pinned known_hosts file (`<vm_dir>/known_hosts`).
    pub fn known_hosts_path(&self, vm_id: &str) -> PathBuf {
        self.vm_dir(vm_id).join("known_hosts")
    }

    /// Prepares SSH access to a VM with networking (nothing for a VM without): the client key, the
    /// VM's host key and its known_hosts file. `disk`: the VM's own disk (isolated mode; the VM must
    /// not be running), into which the host key and root's `authorized_keys` are written; `None` for
    /// shared mode (see the module docs). Call at create, after the disk is ready. Idempotent.
    pub(crate) fn prepare_ssh(&self, rec: &VmRecord, disk: Option<&Path>) -> Result<()> {
        let Some(net) = &rec.info.network else {
            return Ok(());
        };
        let id = &rec.info.vm_id;
        let client = self.client_key()?;
        let vm_dir = self.vm_dir(id);
        let dropbear = ssh::ensure_host_key(&vm_dir, id, HostKeyFormat::Dropbear)?;
        if let Some(disk) = disk {
            let [has_dropbear, dropbear_dir, has_sshd, sshd_config] =
                <[bool; 4]>::try_from(ssh::paths_in_disk(
                    disk,
                    &[
                        DROPBEAR_MARKERS[0],
                        DROPBEAR_MARKERS[1],
                        OPENSSH_MARKERS[0],
                        OPENSSH_MARKERS[1],
                    ],
                )?)
                .unwrap_or([false; 4]);
            let openssh = has_sshd || sshd_config;
            // Dropbear is smolvm's default image's server; an image with no known server gets its key
            // too, since the agent starts /usr/sbin/dropbear when present.
            if has_dropbear || dropbear_dir || !openssh {
                install_host_key(disk, &dropbear)?;
            }
            if openssh {
                install_host_key(
                    disk,
                    &ssh::ensure_host_key(&vm_dir, id, HostKeyFormat::OpenSsh)?,
                )?;
            }
            self.authorize_client_key(disk, &vm_dir, &client)?;
        }
        ssh::write_known_hosts(
            &self.known_hosts_path(id),
            &ssh::known_hosts_patterns(net),
            &dropbear.public_key_line,
        )?;
        Ok(())
    }

    /// Appends the client key to root's `authorized_keys` in the disk, keeping what the image has.
    fn authorize_client_key(&self, disk: &Path, vm_dir: &Path, client: &ClientKey) -> Result<()> {
        let line = client.public_key_line()?;
        let existing = ssh::read_file_from_disk(disk, GUEST_AUTHORIZED_KEYS)?.unwrap_or_default();
        let existing = String::from_utf8_lossy(&existing).into_owned();
        if existing.lines().any(|l| same_key(l, &line)) {
            return Ok(());
        }
        let mut content = existing;
        if !content.is_empty() && !content.ends_with('\n') {
            content.push('\n');
        }
        content.push_str(line.trim_end());
        content.push('\n');
        let staged = vm_dir.join("authorized_keys");
        fs::write(&staged, content).map_err(|e| Error::io("write", &staged, e))?;
        let result = ssh::install_file_into_disk(disk, &staged, GUEST_AUTHORIZED_KEYS, 0o600);
        let _ = fs::remove_file(&staged);
        Ok(result?)
    }

    /// The SSH client key line passed on the kernel command line (`smolvm.authorized_key`): for a
    /// shared-disk VM with networking, the client public key line; `None` otherwise (an isolated disk
    /// already holds the key).
    pub(crate) fn boot_authorized_key(&self, rec: &VmRecord) -> Result<Option<String>> {
        if rec.info.network.is_none() || rec.info.config.disk_mode() != DiskMode::Shared {
            return Ok(None);
        }
        let line = self.client_key()?.public_key_line()?;
        Ok(Some(line.trim_end().to_string()))
    }

    /// Shared-disk VMs: writes the VM's Dropbear host key into the running guest through the agent
    /// (`/etc/dropbear/dropbear_ed25519_host_key`, 0600), so that the key pinned in known_hosts is the
    /// one the guest presents. Call in `start` right after the agent is ready and before anything
    /// connects over SSH. Needs a writable `/etc/dropbear` in the guest. Nothing to do for isolated
    /// disks or VMs without networking.
    pub(crate) fn pin_host_key_via_agent(&self, rec: &VmRecord, agent: &AgentClient) -> Result<()> {
        if rec.info.network.is_none() || rec.info.config.disk_mode() != DiskMode::Shared {
            return Ok(());
        }
        let key = ssh::ensure_host_key(
            &self.vm_dir(&rec.info.vm_id),
            &rec.info.vm_id,
            HostKeyFormat::Dropbear,
        )?;
        let bytes = fs::read(&key.guest_key_file)
            .map_err(|e| Error::io("read host key", &key.guest_key_file, e))?;
        agent.write_file(HostKeyFormat::Dropbear.guest_path(), &bytes, 0o600)?;
        Ok(())
    }

    /// Ready-to-paste SSH commands for a VM (spec: `get_ssh_commands`): `private_ip` (TAP mode only),
    /// `localhost_port` and, with `public_host`, `public` (see [`ssh::get_ssh_commands`]). They log in
    /// with `key_path`, by default the data directory's client key, and pin the VM's host key. An error
    /// for a VM without networking.
    pub fn get_ssh_commands(
        &self,
        vm_id: &str,
        ssh_user: &str,
        key_path: Option<&Path>,
        public_host: Option<&str>,
    ) -> Result<BTreeMap<String, String>> {
        let rec = self.record(vm_id)?;
        let net = network_of(&rec)?;
        let key = match key_path {
            Some(k) => k.to_path_buf(),
            None => self.client_key()?.private_key,
        };
        let known = self.known_hosts_path(vm_id);
        Ok(ssh::get_ssh_commands(
            net,
            ssh_user,
            Some(&key),
            known.exists().then_some(known.as_path()),
            public_host,
        ))
    }

    /// Where smolvm itself connects over SSH (`run` over SSH, `smolvm ssh`, `wait_for_ssh`): the guest
    /// IP, port 22, in TAP mode (no forward in between); `127.0.0.1:<ssh_host_port>` in user mode. With
    /// the client key and the pinned known_hosts file.
    pub fn ssh_target(&self, vm_id: &str, ssh_user: &str) -> Result<SshTarget> {
        let rec = self.record(vm_id)?;
        let net = network_of(&rec)?;
        let key = self.client_key()?.private_key;
        let known = self.known_hosts_path(vm_id);
        let target = match net.mode {
            // Auto and None are requests: a configured network is TAP or user mode.
            NetworkMode::Tap | NetworkMode::Auto | NetworkMode::None => {
                Some(SshTarget::private_ip(net, ssh_user, &key, &known))
            }
            NetworkMode::User => SshTarget::localhost(net, ssh_user, &key, &known),
        };
        target.ok_or_else(|| no_ssh(vm_id, "it has no forwarded SSH port"))
    }

    /// Waits until the VM's SSH server lets smolvm in as root, at most `timeout` (spec:
    /// `wait_for_ssh`); the timeout error carries the last failure seen.
    pub fn wait_for_ssh(&self, vm_id: &str, timeout: Duration) -> Result<()> {
        let target = self.ssh_target(vm_id, "root")?;
        Ok(ssh::wait_for_ssh(&target, timeout)?)
    }
}

fn install_host_key(disk: &Path, key: &HostKey) -> Result<(), SshError> {
    ssh::install_host_key_into_disk(disk, &key.guest_key_file, key.format.guest_path())
}

fn network_of(rec: &VmRecord) -> Result<&NetworkConfig> {
    rec.info
        .network
        .as_ref()
        .ok_or_else(|| no_ssh(&rec.info.vm_id, "it was created without networking"))
}

fn no_ssh(vm_id: &str, why: &str) -> Error {
    crate::error::ValidationError::new(
        "vm_id",
        format!("VM {vm_id:?} cannot be reached over SSH: {why}"),
    )
    .into()
}

/// Two authorized_keys lines name the same key when type and base64 agree (options and comments
/// aside: a line with options has them first, so compare the last two-field match).
fn same_key(line: &str, wanted: &str) -> bool {
    let fields = |l: &str| -> Option<(String, String)> {
        let words: Vec<&str> = l.split_whitespace().collect();
        words
            .windows(2)
            .find(|w| {
                w[0].starts_with("ssh-") || w[0].starts_with("ecdsa-") || w[0].starts_with("sk-")
            })
            .map(|w| (w[0].to_string(), w[1].to_string()))
    };
    matches!((fields(line), fields(wanted)), (Some(a), Some(b)) if a == b)
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
