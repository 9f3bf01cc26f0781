//! Shared helpers for the tests that boot real VMs: one default-image build per test run (cached under
//! `CARGO_TARGET_TMPDIR`, keyed by the image fingerprint, so later runs reuse it in milliseconds), private
//! data and socket directories per test, and leak checks.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use smolvm::SmolVmManager;
use smolvm::{BackendKind, VmConfigSpec};
use smolvm::{GuestImage, ImageBuilder, ImageOptions};

/// The default image, built once per test process.
pub fn image() -> &'static GuestImage {
    static IMAGE: OnceLock<GuestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("smolvm-images");
        ImageBuilder::new(&cache)
            .with_cache_dir(&cache)
            .build(&ImageOptions::default())
            .expect("build the default guest image (run scripts/build-agent.sh first)")
    })
}

/// A config spec booting the default image with QEMU.
pub fn spec(id: &str) -> VmConfigSpec {
    image()
        .vm_config(BackendKind::Qemu)
        .vm_id(id)
        .mem_size_mib(256)
        .vcpu_count(1)
}

/// A manager over private temporary directories.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub manager: SmolVmManager,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("smv")
            .tempdir_in("/tmp")
            .unwrap();
        let manager = SmolVmManager::new(
            Some(&dir.path().join("data")),
            Some(&dir.path().join("s")),
            Some(BackendKind::Qemu),
        )
        .unwrap();
        TestEnv { dir, manager }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("s")
    }

    /// Reconnects to a VM of this environment (not owned: call `close()` to keep it running).
    pub fn reconnect(&self, vm_id: &str) -> smolvm::SmolVm {
        smolvm::SmolVm::from_id(
            vm_id,
            Some(&self.data_dir()),
            Some(&self.socket_dir()),
            None,
        )
        .unwrap()
    }

    /// Asserts nothing of `vm_id` remains: no row, no sockets, no disk, no VM directory, and no process
    /// whose command line mentions this test's socket directory.
    pub fn assert_no_leaks(&self, vm_id: &str) {
        assert!(
            self.manager.get(vm_id).is_err(),
            "{vm_id}: row still present"
        );
        let socks: Vec<_> = std::fs::read_dir(self.socket_dir())
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            !socks.iter().any(|n| n.to_string_lossy().starts_with(vm_id)),
            "{vm_id}: sockets left: {socks:?}"
        );
        assert!(
            !self
                .manager
                .disk_dir()
                .join(format!("{vm_id}.ext4"))
                .exists(),
            "{vm_id}: disk left"
        );
        assert!(!self.manager.vm_dir(vm_id).exists(), "{vm_id}: VM dir left");
        let pids = processes_mentioning(&self.socket_dir().join(vm_id));
        assert!(pids.is_empty(), "{vm_id}: processes left: {pids:?}");
    }
}

impl Drop for TestEnv {
    /// A test that fails half-way must not leave its VMs running: delete whatever is still in the store.
    fn drop(&mut self) {
        for vm in self.manager.list_vms(None).unwrap_or_default() {
            let _ = self.manager.delete(&vm.vm_id);
        }
    }
}

/// Pids of live (non-zombie) processes whose command line contains `needle`.
pub fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let alive = smolvm::internals::process::proc_stat(pid).is_some_and(|s| s.state != 'Z');
        if alive && String::from_utf8_lossy(&cmd).contains(&needle) {
            out.push(pid);
        }
    }
    out
}
