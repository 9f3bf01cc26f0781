//! Unit tests of the state store that need a real SQLite file (formerly integration tests; the store
//! is crate-private since the library surface was curated).

mod concurrency;
mod forwards;
mod network_mode;
mod snapshots;
mod store;
mod vmm_users;

use std::ops::RangeInclusive;
use std::path::PathBuf;

use crate::state::{StateStore, StoreOptions};
use crate::VmConfig;

/// A temporary directory with a kernel and a rootfs file (configs need both to exist) and the
/// store's database path.
struct Env {
    dir: tempfile::TempDir,
    kernel: PathBuf,
    rootfs: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        let rootfs = dir.path().join("rootfs.ext4");
        std::fs::write(&kernel, b"k").unwrap();
        std::fs::write(&rootfs, b"r").unwrap();
        Env {
            dir,
            kernel,
            rootfs,
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("smolvm.db")
    }

    fn config(&self, id: &str) -> VmConfig {
        VmConfig::builder(&self.kernel, &self.rootfs)
            .vm_id(id)
            .build()
            .unwrap()
    }

    /// A store without the host port probe, so results do not depend on what else runs here.
    fn store(&self) -> StateStore {
        self.store_with(42000..=42999, crate::vmm_user::DEFAULT_RANGE)
    }

    fn store_with(&self, ports: RangeInclusive<u16>, vmm_ids: RangeInclusive<u32>) -> StateStore {
        let opts = StoreOptions {
            ssh_port_range: ports,
            probe_host_ports: false,
            vmm_ids,
        };
        StateStore::open_with(&self.db(), opts).unwrap()
    }
}
