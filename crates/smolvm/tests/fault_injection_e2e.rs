//! A bounded fault-injection run against real QEMU (the chaos soak's first catch, issue 18): cycles of
//! create / start / exec / delete, each with one fault from a fixed rotation, then `cleanup --all`, after
//! which nothing of any cycle may remain. Every fault is one the issue found mishandled:
//!
//! * the VMM killed: `exec` fails at once saying so, `list` shows `error` (18.2);
//! * the VMM killed, then `start` again from the disk (18.3);
//! * an interrupted disk clone left next to the VM's disk: `delete` removes it (18.4);
//! * the database held locked by another connection while `delete` runs: it waits and succeeds;
//! * another store sharing the socket directory runs `cleanup --all` while this store's VM runs: the
//!   VM survives (18.1).
//!
//! After the run: no rows, disks, temp files, lock files (18.5), sockets or processes. `SMOLVM_FAULT_CYCLES`
//! sets the number of cycles (default: one per fault). Runs in a network namespace it creates, with
//! private directories; `SMOLVM_E2E=1` as root.

mod netns_util;
mod vm_util;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use netns_util::{e2e, Netns};
use smolvm::internals::process::ProcessIdentity;
use smolvm::{BackendKind, Error, VmState};
use smolvm::{CleanupOptions, CleanupScope, CreateOptions, NetworkMode, SmolVmManager};
use vm_util::{processes_mentioning, spec, TestEnv};

const BOOT: Duration = Duration::from_secs(90);
const FAULTS: [Fault; 5] = [
    Fault::ForeignCleanup,
    Fault::KillVmm,
    Fault::KillVmmThenRestart,
    Fault::InterruptedClone,
    Fault::DatabaseLocked,
];

#[derive(Debug, Clone, Copy)]
enum Fault {
    ForeignCleanup,
    KillVmm,
    KillVmmThenRestart,
    InterruptedClone,
    DatabaseLocked,
}

fn no_net() -> CreateOptions {
    CreateOptions {
        network: NetworkMode::None,
        ..CreateOptions::default()
    }
}

fn kill_vmm(pid: u32) {
    let id = ProcessIdentity::of(pid).expect("the VMM runs");
    assert!(id.kill(), "the VMM outlived SIGKILL");
    let until = Instant::now() + Duration::from_secs(30);
    while id.is_alive() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// One cycle with `fault`; the VM is deleted at the end unless the fault leaves that to cleanup.
fn cycle(env: &TestEnv, foreign: &SmolVmManager, id: &str, fault: Fault) {
    let m = &env.manager;
    m.create_with(&spec(id).build().unwrap(), &no_net())
        .unwrap();
    if let Fault::InterruptedClone = fault {
        // What a create killed during its clone leaves behind.
        fs::write(m.disk_dir().join(format!("{id}.tmp-999999")), b"partial").unwrap();
    }
    let pid = m.start(id, BOOT).unwrap().pid.unwrap();
    let vm = env.reconnect(id);
    assert_eq!(vm.run("echo up").unwrap().output(), "up");
    match fault {
        Fault::ForeignCleanup => {
            let r = foreign
                .cleanup(&CleanupOptions {
                    scope: CleanupScope::All,
                    remove_retained_disks: true,
                    ..CleanupOptions::default()
                })
                .unwrap();
            assert!(r.processes.is_empty() && r.sockets.is_empty(), "{r:#?}");
            assert_eq!(vm.run("echo alive").unwrap().output(), "alive");
            vm.close();
            m.delete(id).unwrap();
        }
        Fault::KillVmm => {
            kill_vmm(pid);
            let err = vm.run("true").unwrap_err();
            assert!(matches!(err, Error::VmFailed { .. }), "{err:?}");
            vm.close();
            assert_eq!(m.list_vms(Some(VmState::Error)).unwrap().len(), 1);
            // Left for the final cleanup --all.
        }
        Fault::KillVmmThenRestart => {
            vm.close();
            kill_vmm(pid);
            assert_eq!(m.start(id, BOOT).unwrap().status, VmState::Running);
            let vm = env.reconnect(id);
            assert_eq!(vm.run("echo back").unwrap().output(), "back");
            vm.close();
            m.delete(id).unwrap();
        }
        Fault::InterruptedClone => {
            vm.close();
            m.delete(id).unwrap();
            assert!(!m.disk_dir().join(format!("{id}.tmp-999999")).exists());
        }
        Fault::DatabaseLocked => {
            vm.close();
            let db = env.data_dir().join("smolvm.db");
            let (tx, rx) = std::sync::mpsc::channel();
            let holder = std::thread::spawn(move || {
                let conn = rusqlite::Connection::open(db).unwrap();
                conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                tx.send(()).unwrap();
                std::thread::sleep(Duration::from_secs(2));
                conn.execute_batch("COMMIT").unwrap();
            });
            rx.recv().unwrap();
            m.delete(id).unwrap();
            holder.join().unwrap();
        }
    }
}

#[test]
fn fault_injection_run_leaves_nothing_behind() {
    if !e2e(
        "fault injection",
        &["qemu-system-x86_64", "mkfs.ext4", "ip"],
    ) {
        return;
    }
    vm_util::image();
    let ns = Netns::new();
    let _inside = ns.enter();
    let env = TestEnv::new();
    // Another store whose socket directory is this store's (as the shared default once was).
    let other = tempfile::tempdir().unwrap();
    let foreign = SmolVmManager::new(
        Some(&other.path().join("data")),
        Some(&env.socket_dir()),
        Some(BackendKind::Qemu),
    )
    .unwrap();
    let cycles: usize = std::env::var("SMOLVM_FAULT_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(FAULTS.len());
    for i in 0..cycles {
        let fault = FAULTS[i % FAULTS.len()];
        eprintln!("cycle {i}: {fault:?}");
        cycle(&env, &foreign, &format!("f{i}"), fault);
    }
    let m = &env.manager;
    let r = m
        .cleanup(&CleanupOptions {
            scope: CleanupScope::All,
            ..CleanupOptions::default()
        })
        .unwrap();
    assert!(r.failures.is_empty(), "{r:#?}");
    assert!(m.list_vms(None).unwrap().is_empty());
    assert_eq!(names(m.disk_dir()), Vec::<String>::new());
    assert_eq!(names(&env.data_dir().join("locks")), Vec::<String>::new());
    assert_eq!(names(&env.data_dir().join("vms")), Vec::<String>::new());
    assert_eq!(names(&env.socket_dir()), Vec::<String>::new());
    let pids = processes_mentioning(&env.socket_dir());
    assert!(pids.is_empty(), "processes left: {pids:?}");
}
