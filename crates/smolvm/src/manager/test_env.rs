//! A manager on fakes for unit tests (no QEMU, no root): [`Env`] holds it, its fake backend and its
//! recording `ip`/`nft` runner, and checks that a VM left nothing behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::fakes::FakeBackends;
use super::{CleanupOptions, CreateOptions, NetworkMode, SmolVmManager};
use crate::config::{BackendKind, DiskMode, VmConfig};
use crate::error::Error;
use crate::host::tools::{ToolInfo, Tools};
use crate::host::{kvm, Accelerator, HostCapabilities, Privileges};
use crate::network::{HostNetwork, RecordingCommands};

pub(crate) const BOOT: Duration = Duration::from_secs(20);
pub(crate) const STOP: Duration = Duration::from_secs(5);

/// A host with QEMU "installed" (at a path that does not exist: the fake backend never runs it).
pub(crate) fn fake_host() -> HostCapabilities {
    let tool = |p: &str| {
        Some(ToolInfo {
            path: PathBuf::from(p),
            version: None,
        })
    };
    HostCapabilities {
        kvm: kvm::assess(&kvm::KvmFacts {
            device_exists: false,
            api: Err("absent".into()),
            cpu_virt_flag: None,
            paravirtual_module: None,
            env_override: None,
        }),
        tools: Tools {
            qemu_system: tool("/fake/qemu-system-x86_64"),
            firecracker: None,
            nft: tool("/fake/nft"),
            ip: tool("/fake/ip"),
            ssh: tool("/fake/ssh"),
            ssh_keygen: None,
            mkfs_ext4: None,
            debugfs: None,
            apt_get: None,
            qemu_bin_env: None,
            firecracker_bin_env: None,
        },
        accelerator: Accelerator::Tcg,
        tsc_khz: None,
        privileges: Privileges {
            root: true,
            cap_net_admin: true,
        },
    }
}

/// A manager on fakes in a temporary directory, with a kernel and a 1 MiB "image".
pub(crate) struct Env {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub m: Arc<SmolVmManager>,
    pub vmm: FakeBackends,
    pub net: Arc<RecordingCommands>,
}

impl Env {
    pub(crate) fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::write(root.join("vmlinux"), b"kernel").unwrap();
        std::fs::write(root.join("rootfs.ext4"), vec![7u8; 1 << 20]).unwrap();
        let net = Arc::new(RecordingCommands::new());
        net.set_file("/proc/sys/net/ipv4/ip_forward", "1\n");
        let vmm = FakeBackends::new();
        let m = SmolVmManager::builder()
            .data_dir(root.join("data"))
            .socket_dir(root.join("sock"))
            .backend(BackendKind::Qemu)
            .host(fake_host())
            .backends(Arc::new(vmm.clone()))
            .network(HostNetwork::new(net.clone()))
            // Nothing here runs two operations on one VM at once, except on purpose.
            .lock_wait(Duration::from_millis(500))
            // The fakes' guest behaviour (hang, crash) is set per connection: talk to it directly.
            .channel_owner(false)
            .build()
            .unwrap();
        let m = Arc::new(m);
        Env {
            _dir: dir,
            root,
            m,
            vmm,
            net,
        }
    }

    /// A config booting the agent (`init=/init`), with `disk_mode`.
    pub(crate) fn config(&self, id: &str, disk_mode: DiskMode) -> VmConfig {
        VmConfig::builder(self.root.join("vmlinux"), self.root.join("rootfs.ext4"))
            .vm_id(id)
            .boot_args("console=ttyS0 init=/init")
            .disk_mode(disk_mode)
            .build()
            .unwrap()
    }

    pub(crate) fn create(
        &self,
        id: &str,
        disk_mode: DiskMode,
        network: NetworkMode,
    ) -> crate::Result<()> {
        let opts = CreateOptions {
            network,
            ..CreateOptions::default()
        };
        self.m
            .create_with(&self.config(id, disk_mode), &opts)
            .map(drop)
    }

    pub(crate) fn sockets(&self) -> Vec<String> {
        names(self.m.socket_dir())
    }

    /// Every file smolvm keeps for VMs: disks, VM directories, lock files, sockets.
    pub(crate) fn leftovers(&self) -> Vec<String> {
        let mut out = names(self.m.disk_dir());
        out.extend(names(&self.m.data_dir().join("vms")));
        out.extend(names(&self.m.data_dir().join("locks")));
        out.extend(self.sockets());
        out
    }

    /// `cleanup --all` (every VM that cannot run is deleted), which must succeed.
    pub(crate) fn cleanup_all(&self) -> super::CleanupReport {
        self.m
            .cleanup(&CleanupOptions {
                scope: super::CleanupScope::All,
                ..CleanupOptions::default()
            })
            .unwrap()
    }

    /// Asserts that the VM `id` is gone completely: row, files, VMM; and that `cleanup` finds nothing.
    pub(crate) fn assert_gone(&self, id: &str) {
        assert!(
            matches!(self.m.get(id), Err(Error::VmNotFound(_))),
            "row of {id} left"
        );
        assert_eq!(self.leftovers(), Vec::<String>::new());
        assert_eq!(self.vmm.live_vmms(), []);
        let report = self.m.cleanup(&CleanupOptions::default()).unwrap();
        assert!(report.is_empty(), "cleanup found leftovers: {report:?}");
    }

    pub(crate) fn tap_of(&self, id: &str) -> String {
        self.m.get(id).unwrap().network.unwrap().tap_device.unwrap()
    }
}

pub(crate) fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The error with its causes.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// Network VMs here use shared disks: an isolated one would get its SSH keys written into the image
/// with debugfs, which needs a real ext4 image.
/// SSH host and client keys are made with ssh-keygen for VMs with networking.
pub(crate) fn have_ssh_keygen(test: &str) -> bool {
    crate::test_tools::tool_or_skip(test, "ssh-keygen").is_some()
}
