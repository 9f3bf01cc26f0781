//! Rollback paths of create / start / stop / delete, driven with fakes for the VMM backend, the guest
//! agent and the host network commands (no QEMU, no root, no network namespace). Each failure must
//! leave exactly what the operation promises (nothing, or the previous state), and a crash between two
//! steps must leave what `cleanup` (or `delete`) removes.

use std::time::Duration;

use super::fakes::Guest;
use super::test_env::{chain, have_ssh_keygen, names, Env, BOOT, STOP};
use super::{CleanupOptions, NetworkMode};
use crate::config::{BackendKind, DiskMode};
use crate::error::Error;
use crate::info::VmState;

#[test]
fn the_happy_path_leaves_nothing_after_delete() {
    let e = Env::new();
    e.create("vm-a", DiskMode::Isolated, NetworkMode::None)
        .unwrap();
    assert_eq!(names(e.m.disk_dir()), ["vm-a.ext4", "vm-a.origin"]);
    let info = e.m.start("vm-a", BOOT).unwrap();
    assert_eq!(info.status, VmState::Running);
    assert_eq!(e.vmm.live_vmms().len(), 1);
    assert_eq!(e.sockets(), ["vm-a.agent", "vm-a.qmp"]);
    // The VMM got the VM's own disk, not the image.
    let spec = e.vmm.state().specs[0].clone();
    assert_eq!(spec.disk, e.m.disk_dir().join("vm-a.ext4"));
    assert!(!spec.disk_read_only);

    // Stop: the guest powers off through the agent; the power button is not needed.
    assert_eq!(e.m.stop("vm-a", STOP).unwrap().status, VmState::Stopped);
    assert_eq!(e.vmm.live_vmms(), []);
    assert_eq!(e.sockets(), Vec::<String>::new());
    assert_eq!(e.vmm.state().calls, ["launch vm-a"]);

    e.m.delete("vm-a").unwrap();
    e.assert_gone("vm-a");
}

#[test]
fn a_failing_disk_clone_leaves_nothing() {
    let e = Env::new();
    // The disk directory is a file: the clone cannot even create its temporary file.
    std::fs::remove_dir(e.m.disk_dir()).unwrap();
    std::fs::write(e.m.disk_dir(), b"").unwrap();
    let err = e
        .create("vm-a", DiskMode::Isolated, NetworkMode::None)
        .unwrap_err();
    assert!(err.to_string().contains("create disk"), "{err}");
    std::fs::remove_file(e.m.disk_dir()).unwrap();
    std::fs::create_dir(e.m.disk_dir()).unwrap();
    e.assert_gone("vm-a");
    // The id is free again.
    e.create("vm-a", DiskMode::Isolated, NetworkMode::None)
        .unwrap();
}

#[test]
fn a_failing_tap_rolls_create_back() {
    if !have_ssh_keygen("a_failing_tap_rolls_create_back") {
        return;
    }
    let e = Env::new();
    e.net.fail_once(
        &["ip", "tuntap"],
        "ioctl(TUNSETIFF): Device or resource busy",
    );
    let err = e
        .create("vm-a", DiskMode::Shared, NetworkMode::Tap)
        .unwrap_err();
    assert!(chain(&err).contains("TUNSETIFF"), "{err:?}");
    // No rule was ever written, and no TAP exists, so none is deleted.
    let lines = e.net.lines();
    assert!(!lines.iter().any(|l| l == "nft -f -"), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.starts_with("ip link del")),
        "{lines:?}"
    );
    e.assert_gone("vm-a");
}

#[test]
fn a_failing_nft_transaction_removes_the_tap_it_made() {
    if !have_ssh_keygen("a_failing_nft_transaction_removes_the_tap_it_made") {
        return;
    }
    let e = Env::new();
    e.net
        .fail_once(&["nft", "-f"], "Error: Could not process rule");
    let err = e
        .create("vm-a", DiskMode::Shared, NetworkMode::Tap)
        .unwrap_err();
    assert!(chain(&err).contains("Could not process rule"), "{err:?}");
    let lines = e.net.lines();
    let added = lines
        .iter()
        .position(|l| l.starts_with("ip tuntap add dev smv-"))
        .expect("a TAP was made");
    let tap = lines[added].split_whitespace().nth(4).unwrap().to_string();
    assert!(
        lines[added..].contains(&format!("ip link del dev {tap}")),
        "{lines:?}"
    );
    e.assert_gone("vm-a");
}

#[test]
fn a_failing_vmm_launch_keeps_the_previous_state_and_removes_the_network_of_a_stopped_vm() {
    if !have_ssh_keygen("a_failing_vmm_launch_keeps_the_previous_state") {
        return;
    }
    let e = Env::new();
    e.create("vm-a", DiskMode::Shared, NetworkMode::Tap)
        .unwrap();
    let tap = e.tap_of("vm-a");
    e.vmm.state().fail_launch = true;
    assert!(e.m.start("vm-a", BOOT).is_err());
    assert_eq!(e.m.get("vm-a").unwrap().status, VmState::Created);
    assert_eq!(e.sockets(), Vec::<String>::new());
    assert_eq!(e.vmm.live_vmms(), []);

    // A stopped VM has no host network; a start that fails must not leave one behind.
    e.m.start("vm-a", BOOT).unwrap();
    // (A shared disk gets its SSH host key through the agent, not on the command line.)
    let spec = e.vmm.state().specs.last().unwrap().clone();
    assert!(spec.kernel_cmdline.contains("smolvm.authorized_key="));
    assert!(e
        .vmm
        .state()
        .guest_files
        .contains_key("/etc/dropbear/dropbear_ed25519_host_key"));
    e.m.stop("vm-a", STOP).unwrap();
    e.net.clear_calls();
    e.vmm.state().fail_launch = true;
    assert!(e.m.start("vm-a", BOOT).is_err());
    assert_eq!(e.m.get("vm-a").unwrap().status, VmState::Stopped);
    let lines = e.net.lines();
    let made = lines
        .iter()
        .position(|l| l.starts_with(&format!("ip tuntap add dev {tap}")))
        .expect("start made the TAP");
    assert!(
        lines[made..].iter().any(|l| l == "nft -j list ruleset"),
        "the network was not torn down again: {lines:?}"
    );
    e.m.delete("vm-a").unwrap();
    e.assert_gone("vm-a");
}

#[test]
fn a_boot_timeout_kills_the_vmm_and_keeps_the_previous_state() {
    let e = Env::new();
    e.create("vm-a", DiskMode::Isolated, NetworkMode::None)
        .unwrap();
    e.vmm.state().guest = Guest::Hangs;
    let err = e.m.start("vm-a", Duration::from_millis(800)).unwrap_err();
    assert!(
        matches!(err, Error::OperationTimeout { .. }),
        "expected a boot timeout, got {err:?}"
    );
    let info = e.m.get("vm-a").unwrap();
    assert_eq!(info.status, VmState::Created);
    assert!(e
        .m
        .last_error("vm-a")
        .unwrap()
        .unwrap()
        .contains("boot did not complete"));
    assert_eq!(e.vmm.live_vmms(), []);
    assert_eq!(e.sockets(), Vec::<String>::new());
    // Nothing is left that a second start would trip over.
    e.vmm.state().guest = Guest::Ready;
    assert_eq!(e.m.start("vm-a", BOOT).unwrap().status, VmState::Running);
    e.m.delete("vm-a").unwrap();
    e.assert_gone("vm-a");
}

#[test]
fn stop_presses_the_power_button_when_the_agent_does_not_answer() {
    let e = Env::new();
    e.create("vm-a", DiskMode::Isolated, NetworkMode::None)
        .unwrap();
    e.m.start("vm-a", BOOT).unwrap();
    e.vmm.state().guest = Guest::Hangs;
    assert_eq!(e.m.stop("vm-a", STOP).unwrap().status, VmState::Stopped);
    assert_eq!(e.vmm.state().calls, ["launch vm-a", "shutdown vm-a.qmp"]);
    assert_eq!(e.vmm.live_vmms(), []);
    assert_eq!(e.sockets(), Vec::<String>::new());
}

#[test]
fn a_failed_delete_marks_error_and_a_retry_finishes() {
    if !have_ssh_keygen("a_failed_delete_marks_error_and_a_retry_finishes") {
        return;
    }
    let e = Env::new();
    e.create("vm-a", DiskMode::Shared, NetworkMode::Tap)
        .unwrap();
    e.m.start("vm-a", BOOT).unwrap();
    e.net
        .fail_once(&["nft", "-j", "list"], "netlink: Operation not permitted");
    assert!(e.m.delete("vm-a").is_err());
    // The VMM is gone already, the row stays for a retry.
    assert_eq!(e.vmm.live_vmms(), []);
    assert_eq!(e.m.get("vm-a").unwrap().status, VmState::Error);
    assert!(e
        .m
        .last_error("vm-a")
        .unwrap()
        .unwrap()
        .contains("delete failed"));
    e.m.delete("vm-a").unwrap();
    e.assert_gone("vm-a");
}

#[test]
fn a_delete_killed_half_way_leaves_an_error_row_that_cleanup_all_finishes() {
    if !have_ssh_keygen("a_delete_killed_half_way_leaves_an_error_row") {
        return;
    }
    // Found by the soak: a `delete` SIGKILLed after it had begun tearing a stopped VM down left a row
    // that still said `stopped`, which neither start (its files were gone) nor `cleanup --all` (a
    // stopped VM is healthy) could mend.
    let e = Env::new();
    e.create("vm-a", DiskMode::Shared, NetworkMode::Tap)
        .unwrap();
    e.m.start("vm-a", BOOT).unwrap();
    e.m.stop("vm-a", STOP).unwrap();
    // It dies while removing the VM's firewall rules (its VMM already gone).
    e.net.die_once(&["nft", "-j", "list"]);
    let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| e.m.delete("vm-a")));
    assert!(died.is_err(), "the delete was to die at `nft -j list`");
    assert_eq!(e.m.get("vm-a").unwrap().status, VmState::Error);
    let why = e.m.last_error("vm-a").unwrap().unwrap();
    assert!(why.contains("delete was interrupted"), "{why}");
    let report = e.cleanup_all();
    assert_eq!(report.deleted_vms, ["vm-a"]);
    e.assert_gone("vm-a");
}

#[test]
fn a_create_killed_during_the_disk_clone_is_mended_by_cleanup() {
    let e = Env::new();
    // What a create killed half-way through the clone leaves: a temporary clone, the VM directory and
    // the lock file, no row.
    std::fs::write(e.m.disk_dir().join("vm-a.tmp-4242"), b"half").unwrap();
    std::fs::create_dir_all(e.m.vm_dir("vm-a")).unwrap();
    drop(e.m.lock("vm-a").unwrap());
    let report = e.m.cleanup(&CleanupOptions::default()).unwrap();
    assert_eq!(report.temp_files, [e.m.disk_dir().join("vm-a.tmp-4242")]);
    assert_eq!(report.vm_dirs, [e.m.vm_dir("vm-a")]);
    e.assert_gone("vm-a");
}

#[test]
fn a_start_killed_between_launch_and_record_is_mended_by_cleanup_and_start() {
    let e = Env::new();
    e.create("vm-a", DiskMode::Isolated, NetworkMode::None)
        .unwrap();
    // What a start killed right after the launch leaves: a VMM the row does not know.
    let rec = e.m.record("vm-a").unwrap();
    let backend = e.m.backend_impl(BackendKind::Qemu).unwrap();
    let spec = e.m.launch_spec(&rec, backend.as_ref()).unwrap();
    let stray = backend.launch(&spec).unwrap();
    let report = e.m.cleanup(&CleanupOptions::default()).unwrap();
    assert_eq!(
        report.processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
        [stray.pid]
    );
    assert!(!stray.is_alive());
    assert_eq!(e.sockets(), Vec::<String>::new());
    assert_eq!(e.m.get("vm-a").unwrap().status, VmState::Created);
    // A start after such a crash kills a stray VMM itself too. (A fresh spec: cleanup removed the
    // VM's host cgroup, which the spec names.)
    let spec = e.m.launch_spec(&rec, backend.as_ref()).unwrap();
    let stray = backend.launch(&spec).unwrap();
    e.m.start("vm-a", BOOT).unwrap();
    assert!(!stray.is_alive());
    assert_eq!(e.vmm.live_vmms().len(), 1);
    e.m.delete("vm-a").unwrap();
    e.assert_gone("vm-a");
}

#[test]
fn a_vmm_that_died_is_marked_error_and_deleted_by_cleanup_all() {
    let e = Env::new();
    e.create("vm-a", DiskMode::Isolated, NetworkMode::None)
        .unwrap();
    e.m.start("vm-a", BOOT).unwrap();
    for p in e.vmm.live_vmms() {
        p.kill();
    }
    let report = e.m.cleanup(&CleanupOptions::default()).unwrap();
    assert_eq!(report.marked_error, ["vm-a"]);
    assert_eq!(e.m.get("vm-a").unwrap().status, VmState::Error);
    let report = e.cleanup_all();
    assert_eq!(report.deleted_vms, ["vm-a"]);
    e.assert_gone("vm-a");
}

#[test]
fn a_row_without_its_disk_is_deleted_cleanly() {
    let e = Env::new();
    // A create killed after inserting the row, before the disk existed.
    let config = e.config("vm-a", DiskMode::Isolated);
    e.m.state()
        .unwrap()
        .create_vm(&config, BackendKind::Qemu, None)
        .unwrap();
    e.m.delete("vm-a").unwrap();
    e.assert_gone("vm-a");
}

#[test]
fn an_operation_behind_a_stuck_one_gives_up_naming_the_holder() {
    let e = Env::new();
    e.create("vm-a", DiskMode::Isolated, NetworkMode::None)
        .unwrap();
    e.m.start("vm-a", BOOT).unwrap();
    let stuck = e.m.lock("vm-a").unwrap();
    let err = e.m.stop("vm-a", STOP).unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "VM \"vm-a\" is busy (held by pid {})",
            std::process::id()
        )),
        "{err}"
    );
    // Nothing happened to the VM.
    assert_eq!(e.m.get("vm-a").unwrap().status, VmState::Running);
    assert_eq!(e.vmm.live_vmms().len(), 1);
    drop(stuck);
    e.m.delete("vm-a").unwrap();
    e.assert_gone("vm-a");
}

#[test]
fn the_backend_releases_its_per_vm_state_whenever_the_vmm_is_gone() {
    let e = Env::new();
    let released = || e.vmm.state().released.clone();
    e.create("vm-a", DiskMode::Isolated, NetworkMode::None)
        .unwrap();
    e.m.start("vm-a", BOOT).unwrap();
    assert_eq!(released(), Vec::<String>::new(), "nothing while it runs");
    e.m.stop("vm-a", STOP).unwrap();
    assert_eq!(released(), ["vm-a"], "a stop releases it");
    e.m.start("vm-a", BOOT).unwrap();
    e.m.delete("vm-a").unwrap();
    assert_eq!(released().last().map(String::as_str), Some("vm-a"));
    let after_delete = released().len();
    assert!(after_delete >= 2, "{:?}", released());

    // A boot that fails after the VMM started (the agent never answers) releases it too.
    e.create("vm-b", DiskMode::Isolated, NetworkMode::None)
        .unwrap();
    e.vmm.state().guest = Guest::Hangs;
    e.m.start("vm-b", Duration::from_millis(800)).unwrap_err();
    assert_eq!(released()[after_delete..], ["vm-b"]);
    e.vmm.state().guest = Guest::Ready;
    e.m.delete("vm-b").unwrap();
    e.assert_gone("vm-b");
}

#[test]
fn as_root_each_vmm_gets_its_vms_own_user_and_disk() {
    use std::os::unix::fs::MetadataExt;
    let e = Env::new();
    for id in ["vm-a", "vm-b"] {
        e.create(id, DiskMode::Isolated, NetworkMode::None).unwrap();
        e.m.start(id, BOOT).unwrap();
    }
    let specs = e.vmm.state().specs.clone();
    if !crate::vmm_user::is_root() || !crate::vmm_user::enabled_by_env() {
        // Without root (or with the switch off) the VMM runs as the caller.
        assert!(specs.iter().all(|s| s.run_as.is_none()));
        assert_eq!(e.m.vmm_user("vm-a").unwrap(), None);
        return;
    }
    let ua = e.m.vmm_user("vm-a").unwrap().expect("a user as root");
    let ub = e.m.vmm_user("vm-b").unwrap().expect("a user as root");
    assert_ne!(ua, ub);
    assert_eq!((specs[0].run_as, specs[1].run_as), (Some(ua), Some(ub)));
    let disk = std::fs::metadata(e.m.disk_dir().join("vm-a.ext4")).unwrap();
    assert_eq!(
        (disk.uid(), disk.gid(), disk.mode() & 0o777),
        (ua.uid, ua.gid, 0o600)
    );
    // A restart keeps the user.
    e.m.stop("vm-a", STOP).unwrap();
    e.m.start("vm-a", BOOT).unwrap();
    assert_eq!(e.vmm.state().specs.last().unwrap().run_as, Some(ua));
    e.m.delete("vm-a").unwrap();
    e.m.delete("vm-b").unwrap();
    e.assert_gone("vm-a");
    e.assert_gone("vm-b");
}
