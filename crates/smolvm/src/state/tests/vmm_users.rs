//! VMM user leases: one id per VM, lowest free first, unique, released with the VM, exhaustion
//! refused without a trace.

use super::Env;
use crate::state::{StateError, StateStore};
use crate::BackendKind;

#[test]
fn every_vm_gets_its_own_id_and_a_freed_one_is_reused() {
    let env = Env::new();
    let mut s = env.store_with(42000..=42999, 0x7000_0000..=0x7000_FFFF);
    assert_eq!(create(&env, &mut s, "a").unwrap(), Some(0x7000_0000));
    assert_eq!(create(&env, &mut s, "b").unwrap(), Some(0x7000_0001));
    assert_eq!(create(&env, &mut s, "c").unwrap(), Some(0x7000_0002));
    // The row carries it, and the on-demand lease returns the same id.
    assert_eq!(s.get_vm("b").unwrap().unwrap().vmm_id, Some(0x7000_0001));
    assert_eq!(s.vmm_id("b").unwrap(), 0x7000_0001);
    // Deleting a VM releases its id; the lowest free one goes to the next VM.
    assert!(s.delete_vm("b").unwrap());
    assert_eq!(create(&env, &mut s, "d").unwrap(), Some(0x7000_0001));
    assert_eq!(create(&env, &mut s, "e").unwrap(), Some(0x7000_0003));
}

#[test]
fn an_exhausted_range_refuses_the_vm_and_records_nothing() {
    let env = Env::new();
    let mut s = env.store_with(42000..=42999, 100..=101);
    create(&env, &mut s, "a").unwrap();
    create(&env, &mut s, "b").unwrap();
    let err = create(&env, &mut s, "c").unwrap_err();
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
    let mut s1 = env.store_with(42000..=42999, crate::vmm_user::range_for_store("00000001"));
    let mut s2 = other.store_with(42000..=42999, crate::vmm_user::range_for_store("00000002"));
    let a = create(&env, &mut s1, "a").unwrap().unwrap();
    let b = create(&other, &mut s2, "a").unwrap().unwrap();
    assert_ne!(a, b);
}

fn create(env: &Env, s: &mut StateStore, id: &str) -> Result<Option<u32>, StateError> {
    s.create_vm(&env.config(id), BackendKind::Qemu, None)
        .map(|r| r.vmm_id)
}
