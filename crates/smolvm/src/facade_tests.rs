//! What dropping, closing and deleting a `SmolVm` does, on a manager with fake collaborators (see
//! `manager/test_env.rs`): no QEMU, no root.

use std::time::Duration;

use super::SmolVm;
use crate::config::DiskMode;
use crate::error::Error;
use crate::info::NetworkMode;
use crate::info::VmState;
use crate::manager::fakes::Guest;
use crate::manager::test_env::{have_ssh_keygen, Env, BOOT};
use crate::manager::{CleanupOptions, CleanupScope};

fn owned(e: &Env, id: &str) -> SmolVm {
    SmolVm::builder()
        .manager(e.m.clone())
        .config(e.config(id, DiskMode::Isolated))
        .network(NetworkMode::None)
        .build()
        .unwrap()
}

#[test]
fn dropping_an_owned_running_vm_deletes_it() {
    let e = Env::new();
    let mut vm = owned(&e, "vm-a");
    vm.start_with_timeout(BOOT).unwrap();
    assert_eq!(vm.status(), VmState::Running);
    assert_eq!(e.vmm.live_vmms().len(), 1);
    drop(vm);
    e.assert_gone("vm-a");
}

#[test]
fn dropping_a_reconnected_vm_stops_it_and_keeps_it() {
    let e = Env::new();
    let mut vm = owned(&e, "vm-a");
    vm.start_with_timeout(BOOT).unwrap();
    vm.close();
    // Closed: the VM runs on for another process.
    assert_eq!(e.m.get("vm-a").unwrap().status, VmState::Running);
    assert_eq!(e.vmm.live_vmms().len(), 1);

    let again = SmolVm::reconnect(e.m.clone(), "vm-a").unwrap();
    assert_eq!(again.status(), VmState::Running);
    drop(again);
    assert_eq!(e.m.get("vm-a").unwrap().status, VmState::Stopped);
    assert_eq!(e.vmm.live_vmms(), []);
    e.m.delete("vm-a").unwrap();
    e.assert_gone("vm-a");
}

#[test]
fn delete_then_drop_does_nothing_more() {
    let e = Env::new();
    let mut vm = owned(&e, "vm-a");
    vm.start_with_timeout(BOOT).unwrap();
    vm.delete().unwrap();
    e.assert_gone("vm-a");
    // The id is reused by another VM before the first handle goes: dropping it must not touch that one.
    let other = owned(&e, "vm-a");
    drop(vm);
    assert_eq!(e.m.get("vm-a").unwrap().status, VmState::Created);
    drop(other);
    e.assert_gone("vm-a");
}

#[test]
fn a_launch_whose_boot_fails_leaves_nothing() {
    let e = Env::new();
    e.vmm.state().guest = Guest::Hangs;
    let mut vm = owned(&e, "vm-a");
    let err = vm
        .start_with_timeout(Duration::from_millis(800))
        .unwrap_err();
    assert!(matches!(err, Error::OperationTimeout { .. }), "{err:?}");
    assert_eq!(e.vmm.live_vmms(), []);
    drop(vm);
    e.assert_gone("vm-a");
}

#[test]
fn a_failing_delete_on_drop_leaves_an_error_vm_that_cleanup_removes() {
    if !have_ssh_keygen("a_failing_delete_on_drop_leaves_an_error_vm_that_cleanup_removes") {
        return;
    }
    let e = Env::new();
    let mut vm = SmolVm::builder()
        .manager(e.m.clone())
        .config(e.config("vm-a", DiskMode::Shared))
        .network(NetworkMode::Tap)
        .build()
        .unwrap();
    vm.start_with_timeout(BOOT).unwrap();
    e.net
        .fail_once(&["nft", "-j", "list"], "netlink: Operation not permitted");
    drop(vm); // logged, never a panic
    assert_eq!(e.m.get("vm-a").unwrap().status, VmState::Error);
    assert_eq!(e.vmm.live_vmms(), []);
    let report =
        e.m.cleanup(&CleanupOptions {
            scope: CleanupScope::All,
            ..CleanupOptions::default()
        })
        .unwrap();
    assert_eq!(report.deleted_vms, ["vm-a"]);
    e.assert_gone("vm-a");
}

#[test]
fn auto_config_refuses_bad_values_before_building_the_image() {
    let e = Env::new();
    let err = SmolVm::builder()
        .manager(e.m.clone())
        .vm_id("My_VM")
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Validation(v) if v.field == "vm_id"),
        "{err:?}"
    );
    assert!(
        !e.m.data_dir().join("images").exists(),
        "an image build started"
    );
}
