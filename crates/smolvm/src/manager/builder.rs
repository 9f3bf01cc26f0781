//! [`ManagerBuilder`]: opens a [`SmolVmManager`] with its collaborators (host probe, VMM backends, host
//! network tools) chosen by the caller. The defaults are the real ones; unit tests put fakes in, so every
//! lifecycle rollback path can be driven without QEMU, root or a network namespace.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::lock::LOCK_WAIT;
use super::SmolVmManager;
use crate::backend::firecracker::jail::{find_jailer, Jail};
use crate::backend::firecracker::FirecrackerBackend;
use crate::backend::qemu::QemuBackend;
use crate::backend::{Backend, BackendError};
use crate::config::BackendKind;
use crate::dirs::Dirs;
use crate::error::Result;
use crate::host::HostCapabilities;
use crate::network::HostNetwork;
use crate::state::StateStore;

/// Makes the VMM backend a VM runs on. The manager asks for one per operation (backends are cheap and
/// stateless: a binary path and an accelerator).
pub trait BackendFactory: Send + Sync + std::fmt::Debug {
    /// The backend implementation of `kind` on a host with `host`'s capabilities.
    fn make(&self, kind: BackendKind, host: &HostCapabilities) -> Result<Box<dyn Backend>>;
}

/// The real backends: QEMU from the probed binary and accelerator, Firecracker from its binary (through
/// its jailer where [`with_jails`](Self::with_jails) allows it).
#[derive(Debug, Default, Clone)]
pub struct SystemBackends {
    jail_base: Option<PathBuf>,
}

impl SystemBackends {
    /// Real backends whose Firecracker VMMs run through the jailer, with their jails under
    /// `chroot_base`, whenever this process is root and a `jailer` binary is found
    /// (`SMOLVM_JAILER_BIN`, beside `firecracker`, or on `PATH`).
    pub fn with_jails(chroot_base: impl Into<PathBuf>) -> Self {
        SystemBackends {
            jail_base: Some(chroot_base.into()),
        }
    }

    /// The jail for Firecracker VMMs run by `firecracker`, if they get one here.
    fn jail(&self, firecracker: &std::path::Path) -> Option<Jail> {
        let base = self.jail_base.as_ref()?;
        if !crate::vmm_user::is_root() {
            return None;
        }
        Some(Jail {
            jailer: find_jailer(firecracker)?,
            chroot_base: base.clone(),
        })
    }
}

impl BackendFactory for SystemBackends {
    fn make(&self, kind: BackendKind, host: &HostCapabilities) -> Result<Box<dyn Backend>> {
        Ok(match kind {
            BackendKind::Qemu => Box::new(QemuBackend::from_host(host)?),
            BackendKind::Firecracker => {
                let bin =
                    host.tools
                        .firecracker
                        .as_ref()
                        .ok_or_else(|| BackendError::Unavailable {
                            backend: kind,
                            reason:
                                "the firecracker binary was not found (set SMOLVM_FIRECRACKER_BIN \
                                 or put it on PATH)"
                                    .into(),
                        })?;
                match self.jail(&bin.path) {
                    Some(jail) => Box::new(FirecrackerBackend::jailed(&bin.path, jail)),
                    None => Box::new(FirecrackerBackend::new(&bin.path)),
                }
            }
        })
    }
}

/// Builds a [`SmolVmManager`]; [`SmolVmManager::builder`]. Every collaborator left unset is the real
/// one, so `SmolVmManager::builder().build()` equals `SmolVmManager::new(None, None, None)`.
#[derive(Debug, Default)]
pub struct ManagerBuilder {
    data_dir: Option<PathBuf>,
    socket_dir: Option<PathBuf>,
    backend: Option<BackendKind>,
    host: Option<HostCapabilities>,
    backends: Option<Arc<dyn BackendFactory>>,
    network: Option<HostNetwork>,
    lock_wait: Option<Duration>,
    channel_owner: Option<bool>,
    vmm_user: Option<bool>,
}

impl ManagerBuilder {
    /// Data directory (state database, disks, VM files); default as the spec resolves it.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Socket directory; default as the spec resolves it.
    pub fn socket_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.socket_dir = Some(dir.into());
        self
    }

    /// The manager-wide backend choice (default: auto).
    pub fn backend(mut self, kind: BackendKind) -> Self {
        self.backend = Some(kind);
        self
    }

    /// What the host can do, instead of probing it ([`HostCapabilities::detect`]).
    pub fn host(mut self, host: HostCapabilities) -> Self {
        self.host = Some(host);
        self
    }

    /// Where VMM backends come from (default: [`SystemBackends`]).
    pub fn backends(mut self, factory: Arc<dyn BackendFactory>) -> Self {
        self.backends = Some(factory);
        self
    }

    /// The host network layer, and through it the commands (`ip`, `nft`) it runs (default:
    /// [`HostNetwork::system`]).
    pub fn network(mut self, network: HostNetwork) -> Self {
        self.network = Some(network);
        self
    }

    /// How long an operation waits for another one on the same VM before failing with "VM is busy"
    /// (default [`LOCK_WAIT`]).
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = Some(wait);
        self
    }

    /// Whether QEMU VMs get a channel owner (default: yes, unless `SMOLVM_CHANNEL_OWNER=0`). Tests of
    /// the lifecycle against a fake VMM turn it off to talk to the fake agent directly.
    pub fn channel_owner(mut self, enabled: bool) -> Self {
        self.channel_owner = Some(enabled);
        self
    }

    /// Whether the VMM of each VM drops root for the VM's own user when smolvm runs as root (default:
    /// yes, unless `SMOLVM_VMM_USER=off`; see [`crate::vmm_user`]). Off runs VMMs as root, e.g. to
    /// debug one.
    pub fn vmm_user(mut self, enabled: bool) -> Self {
        self.vmm_user = Some(enabled);
        self
    }

    /// Resolves the directories, opens the state store and probes the host (unless given).
    pub fn build(self) -> Result<SmolVmManager> {
        let dirs = Dirs::resolve(self.data_dir.as_deref(), self.socket_dir.as_deref())?;
        // Each store leases VMM user ids from its own slot of the reserved range.
        let opts = crate::state::StoreOptions {
            vmm_ids: crate::vmm_user::range_for_store(&crate::dirs::store_tag(&dirs.store)),
            ..Default::default()
        };
        let state = StateStore::open_with(&dirs.db_path(), opts)?;
        let vmm_user = self
            .vmm_user
            .unwrap_or_else(crate::vmm_user::enabled_by_env);
        let jail_base = dirs.data_dir.join("jail");
        Ok(SmolVmManager {
            dirs,
            backend_choice: self.backend,
            state: Mutex::new(state),
            host: self.host.unwrap_or_else(HostCapabilities::detect),
            // Jails only where VMMs drop root at all (the jailer needs the VM's user).
            backends: self.backends.unwrap_or_else(|| {
                Arc::new(if vmm_user {
                    SystemBackends::with_jails(jail_base)
                } else {
                    SystemBackends::default()
                })
            }),
            network: self.network.unwrap_or_else(HostNetwork::system),
            lock_wait: self.lock_wait.unwrap_or(LOCK_WAIT),
            channel_owner: self
                .channel_owner
                .unwrap_or_else(crate::channel::owner_enabled),
            vmm_user: self
                .vmm_user
                .unwrap_or_else(crate::vmm_user::enabled_by_env),
        })
    }
}
