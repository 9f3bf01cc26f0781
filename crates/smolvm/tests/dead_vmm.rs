//! A VM whose VMM died: every read shows `error` at once, with the console log's last lines as the
//! reason, and `reconcile` finds dead VMs without waiting for locks held by long operations. No VM is
//! booted: rows record a process identity that is not alive (this test's own pid with a wrong start
//! time), which is exactly what a killed VMM leaves behind.

use std::fs;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use smolvm::internals::process::ProcessIdentity;
use smolvm::internals::state::{RunningVmm, StateStore};
use smolvm::internals::VmLock;
use smolvm::SmolVmManager;
use smolvm::{BackendKind, Error, SmolVm, VmConfig, VmState};

struct Env {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    sockets: PathBuf,
    kernel: PathBuf,
    rootfs: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let sockets = tmp.path().join("sock");
        for d in [&data, &sockets] {
            fs::create_dir_all(d).unwrap();
        }
        let kernel = tmp.path().join("vmlinux");
        let rootfs = tmp.path().join("rootfs.ext4");
        fs::write(&kernel, b"k").unwrap();
        fs::write(&rootfs, b"r").unwrap();
        Env {
            _tmp: tmp,
            data,
            sockets,
            kernel,
            rootfs,
        }
    }

    fn manager(&self) -> SmolVmManager {
        SmolVmManager::new(
            Some(&self.data),
            Some(&self.sockets),
            Some(BackendKind::Qemu),
        )
        .unwrap()
    }

    /// A row that says running with a VMM that is gone, and a console log.
    fn dead_running_vm(&self, id: &str, console: &str) -> ProcessIdentity {
        let gone = ProcessIdentity {
            pid: std::process::id(),
            start_time: u64::MAX,
        };
        let config = VmConfig::builder(&self.kernel, &self.rootfs)
            .vm_id(id)
            .boot_args("console=ttyS0 init=/init")
            .build()
            .unwrap();
        let mut s = StateStore::open(&self.data.join("smolvm.db")).unwrap();
        s.create_vm(&config, BackendKind::Qemu, None).unwrap();
        s.set_running(
            id,
            &RunningVmm {
                process: gone,
                socket_path: self.sockets.join(format!("{id}.qmp")),
                agent_socket: Some(self.sockets.join(format!("{id}.agent"))),
            },
        )
        .unwrap();
        let dir = self.data.join("vms").join(id);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("console.log"), console).unwrap();
        gone
    }
}

#[test]
fn a_dead_vmm_shows_as_error_with_the_console_tail() {
    let env = Env::new();
    let gone = env.dead_running_vm(
        "c0",
        "booting\n\nline 2\nKernel panic - not syncing: boom\n",
    );
    let m = env.manager();
    let info = m.get("c0").unwrap();
    assert_eq!(info.status, VmState::Error);
    assert_eq!(info.pid, None);
    let why = m.last_error("c0").unwrap().expect("a reason is recorded");
    assert_eq!(
        why,
        format!(
            "the VMM of VM c0 (pid {}) exited; its console log ends with: booting | line 2 | \
             Kernel panic - not syncing: boom",
            gone.pid
        )
    );
    // Stored, so every other reader sees it too.
    let list = m.list_vms(None).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].status, VmState::Error);
    assert!(m.list_vms(Some(VmState::Running)).unwrap().is_empty());
    // Already marked: reconcile has nothing left to do.
    assert!(m.reconcile().unwrap().is_empty());
}

#[test]
fn list_shows_the_truth_without_reconcile() {
    let env = Env::new();
    env.dead_running_vm("l1", "");
    let m = env.manager();
    let running = m.list_vms(Some(VmState::Running)).unwrap();
    assert!(running.is_empty(), "{running:?}");
    let errors = m.list_vms(Some(VmState::Error)).unwrap();
    assert_eq!(errors.len(), 1);
    let why = m.last_error("l1").unwrap().unwrap();
    assert!(why.ends_with("/vms/l1/console.log is empty"), "{why}");
}

#[test]
fn exec_on_a_dead_vm_fails_at_once_saying_what_happened_and_what_to_do() {
    let env = Env::new();
    env.dead_running_vm("x1", "last words\n");
    let vm = SmolVm::from_id("x1", Some(&env.data), Some(&env.sockets), None).unwrap();
    let err = vm.run("true").unwrap_err();
    assert!(matches!(err, Error::VmFailed { .. }), "{err:?}");
    assert_eq!(err.kind(), "invalid_state");
    let msg = err.to_string();
    assert!(msg.contains("the VMM of VM x1 (pid"), "{msg}");
    assert!(
        msg.contains("its console log ends with: last words"),
        "{msg}"
    );
    assert!(
        msg.ends_with("`smolvm start x1` restarts it from its disk, `smolvm delete x1` removes it"),
        "{msg}"
    );
    // stop leaves an error VM as it is (it is not running).
    let m = env.manager();
    assert_eq!(
        m.stop("x1", Duration::from_secs(1)).unwrap().status,
        VmState::Error
    );
}

#[test]
fn reconcile_does_not_wait_for_a_vm_lock() {
    let env = Env::new();
    env.dead_running_vm("busy", "");
    // Another operation (say, a slow boot) holds the VM's lock for as long as it likes.
    let _held = VmLock::acquire(&env.data.join("locks"), "busy").unwrap();
    let m = env.manager();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(m.reconcile().map_err(|e| e.to_string())));
    // Not a timing assertion: a reconcile that waited for the lock would never return.
    let stale = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("reconcile blocked behind the VM lock")
        .unwrap();
    assert_eq!(stale, ["busy"]);
}

#[test]
fn a_row_that_moved_on_is_not_overwritten() {
    let env = Env::new();
    let gone = env.dead_running_vm("r1", "");
    let mut s = StateStore::open(&env.data.join("smolvm.db")).unwrap();
    // A stop finished between the liveness check and the update: the compare-and-set must miss.
    s.set_status("r1", VmState::Stopped, None).unwrap();
    assert!(s.mark_vmm_gone("r1", Some(gone), "late").unwrap().is_none());
    assert_eq!(
        s.get_vm("r1").unwrap().unwrap().info.status,
        VmState::Stopped
    );
    // A restart recorded a new process: also not overwritten.
    let new = ProcessIdentity {
        pid: std::process::id(),
        start_time: 1,
    };
    s.set_running(
        "r1",
        &RunningVmm {
            process: new,
            socket_path: "/s/r1.qmp".into(),
            agent_socket: None,
        },
    )
    .unwrap();
    assert!(s.mark_vmm_gone("r1", Some(gone), "late").unwrap().is_none());
    assert!(s.mark_vmm_gone("r1", Some(new), "dead").unwrap().is_some());
    let rec = s.get_vm("r1").unwrap().unwrap();
    assert_eq!(rec.info.status, VmState::Error);
    assert_eq!(rec.last_error.as_deref(), Some("dead"));
}
