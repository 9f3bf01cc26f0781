//! End-to-end checks of the fault-injection findings (issues 18 and 21) against real QEMU: a VM whose
//! VMM is killed reads `error` at once and restarts from its disk; a retained disk is reused by the
//! next create of its id, exactly as the spec's "Persistent Isolated Disk" example. Each test runs in a
//! network namespace it creates, with private directories. Run with `SMOLVM_E2E=1` as root.

mod netns_util;
mod scene_util;
mod vm_util;

use std::time::{Duration, Instant};

use scene_util::{no_net, Scene};
use smolvm::internals::process::ProcessIdentity;
use smolvm::{DiskMode, Error, VmState};
use vm_util::spec;

const BOOT: Duration = Duration::from_secs(90);
const TOOLS: &[&str] = &["qemu-system-x86_64", "mkfs.ext4", "ip"];

/// Kills the VMM this test's VM runs on (a process this test started through the manager).
fn kill_vmm(pid: u32) {
    let id = ProcessIdentity::of(pid).expect("the VMM runs");
    assert!(id.kill(), "the VMM outlived SIGKILL");
    // The manager's reaper thread collects it; wait until /proc agrees (not a timing assertion).
    let until = Instant::now() + Duration::from_secs(30);
    while id.is_alive() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_vmm_reads_error_at_once_and_the_vm_restarts_from_its_disk() {
    let Some(scene) = Scene::enter("dead VMM", TOOLS) else {
        return;
    };
    let env = &scene.env;
    let m = &env.manager;
    m.create_with(&spec("c0").build().unwrap(), &no_net())
        .unwrap();
    let pid = m.start("c0", BOOT).unwrap().pid.unwrap();
    let vm = env.reconnect("c0");
    vm.run("echo before > /root/k; sync").unwrap();

    kill_vmm(pid);
    // The connection made before the kill reports the dead VMM, not a socket error.
    let err = vm.run("true").unwrap_err();
    assert!(matches!(err, Error::VmFailed { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "the VMM of VM c0 (pid {pid}) exited; its console log ends with: "
        )),
        "{msg}"
    );
    assert!(
        msg.contains("`smolvm start c0`") && msg.contains("`smolvm delete c0`"),
        "{msg}"
    );
    vm.close();
    // list and info show the truth, without reconcile.
    assert_eq!(m.list_vms(None).unwrap()[0].status, VmState::Error);
    assert_eq!(m.get("c0").unwrap().pid, None);
    // A fresh connection fails at once with the same news.
    let again = env.reconnect("c0").run("true").unwrap_err();
    assert!(matches!(again, Error::VmFailed { .. }), "{again:?}");
    // stop has nothing to stop; start brings it back from its disk.
    assert_eq!(
        m.stop("c0", Duration::from_secs(5)).unwrap().status,
        VmState::Error
    );
    let info = m.start("c0", BOOT).unwrap();
    assert_eq!(info.status, VmState::Running);
    assert_eq!(m.last_error("c0").unwrap(), None);
    let vm = env.reconnect("c0");
    assert_eq!(vm.run("cat /root/k").unwrap().output(), "before");
    vm.close();
    m.delete("c0").unwrap();
    env.assert_no_leaks("c0");
    assert!(!env.data_dir().join("locks/c0.lock").exists());
}

/// The spec's two-config example, booted: a file written before delete is read after the second create
/// (which does not set `retain_disk_on_delete`).
#[test]
fn a_retained_disk_is_reused_by_the_next_create() {
    let Some(scene) = Scene::enter("retained disk", TOOLS) else {
        return;
    };
    let env = &scene.env;
    let m = &env.manager;
    let config = spec("stateful-vm")
        .disk_mode(DiskMode::Isolated)
        .retain_disk_on_delete(true)
        .build()
        .unwrap();
    m.create_with(&config, &no_net()).unwrap();
    m.start("stateful-vm", BOOT).unwrap();
    let vm = env.reconnect("stateful-vm");
    vm.run("echo kept > /root/k; sync").unwrap();
    vm.close();
    m.delete("stateful-vm").unwrap();

    let config2 = spec("stateful-vm")
        .disk_mode(DiskMode::Isolated)
        .build()
        .unwrap();
    let created = m.create_reporting(&config2, &no_net()).unwrap();
    assert!(created.reused_disk.is_some());
    m.start("stateful-vm", BOOT).unwrap();
    let vm = env.reconnect("stateful-vm");
    assert_eq!(vm.run("cat /root/k").unwrap().output(), "kept");
    vm.close();
    // config2 does not retain: its delete removes the disk.
    m.delete("stateful-vm").unwrap();
    env.assert_no_leaks("stateful-vm");
}
