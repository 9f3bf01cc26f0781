//! VMM user leases: one id per VM, lowest free first, unique, released with the VM, exhaustion
//! refused without a trace.

use std::path::PathBuf;

use crate::state::{StateError, StateStore, StoreOptions};
use crate::{BackendKind, VmConfig};

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

    fn store(&self, ids: std::ops::RangeInclusive<u32>) -> StateStore {
        let opts = StoreOptions {
            ssh_port_range: 42000..=42999,
            probe_host_ports: false,
            vmm_ids: ids,
        };
        StateStore::open_with(&self.dir.path().join("smolvm.db"), opts).unwrap()
    }

    fn create(&self, s: &mut StateStore, id: &str) -> Result<Option<u32>, StateError> {
        let config = VmConfig::builder(&self.kernel, &self.rootfs)
            .vm_id(id)
            .build()
            .unwrap();
        s.create_vm(&config, BackendKind::Qemu, None)
            .map(|r| r.vmm_id)
    }
}

#[test]
fn every_vm_gets_its_own_id_and_a_freed_one_is_reused() {
    let env = Env::new();
    let mut s = env.store(0x7000_0000..=0x7000_FFFF);
    assert_eq!(env.create(&mut s, "a").unwrap(), Some(0x7000_0000));
    assert_eq!(env.create(&mut s, "b").unwrap(), Some(0x7000_0001));
    assert_eq!(env.create(&mut s, "c").unwrap(), Some(0x7000_0002));
    // The row carries it, and the on-demand lease returns the same id.
    assert_eq!(s.get_vm("b").unwrap().unwrap().vmm_id, Some(0x7000_0001));
    assert_eq!(s.vmm_id("b").unwrap(), 0x7000_0001);
    // Deleting a VM releases its id; the lowest free one goes to the next VM.
    assert!(s.delete_vm("b").unwrap());
    assert_eq!(env.create(&mut s, "d").unwrap(), Some(0x7000_0001));
    assert_eq!(env.create(&mut s, "e").unwrap(), Some(0x7000_0003));
}

#[test]
fn an_exhausted_range_refuses_the_vm_and_records_nothing() {
    let env = Env::new();
    let mut s = env.store(100..=101);
    env.create(&mut s, "a").unwrap();
    env.create(&mut s, "b").unwrap();
    let err = env.create(&mut s, "c").unwrap_err();
    assert!(
        matches!(&err, StateError::Exhausted { what } if what.contains("VMM user id")),
        "{err}"
    );
    assert!(s.get_vm("c").unwrap().is_none());
    assert!(matches!(
        s.vmm_id("nope"),
        Err(StateError::VmNotFound(id)) if id == "nope"
    ));
}

#[test]
fn two_stores_with_their_own_ranges_never_share_an_id() {
    let env = Env::new();
    let other = Env::new();
    let mut s1 = env.store(crate::vmm_user::range_for_store("00000001"));
    let mut s2 = other.store(crate::vmm_user::range_for_store("00000002"));
    let a = env.create(&mut s1, "a").unwrap().unwrap();
    let b = other.create(&mut s2, "a").unwrap().unwrap();
    assert_ne!(a, b);
}
