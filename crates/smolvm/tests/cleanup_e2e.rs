//! `SmolVmManager::cleanup` against real processes, files and (inside a network namespace the test
//! creates) real TAPs and nft rules. The "VMMs" are `bash` processes this test starts with `argv[0]`
//! set to `qemu-system-x86_64` and a QMP chardev option naming the test's socket directory: exactly
//! what cleanup recognises, without booting anything. Only processes this test started are killed.
//! Run with `SMOLVM_E2E=1` as root; skips otherwise.

mod netns_util;

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use netns_util::{e2e, sh, ChildGuard, Netns};
use smolvm::internals::network::HostNetwork;
use smolvm::internals::process::ProcessIdentity;
use smolvm::internals::state::{RunningVmm, StateStore};
use smolvm::NetworkMode;
use smolvm::STORE_ENV;
use smolvm::{BackendKind, NetworkConfig, VmConfig, VmState};
use smolvm::{CleanupOptions, CleanupScope, SmolVmManager};

/// A process that looks like the QEMU of `vm_id` under `socket_dir` (it waits on its stdin), marked as
/// belonging to the store `store` the way smolvm marks its VMMs (`None`: unmarked).
fn fake_qemu(
    socket_dir: &Path,
    store: Option<&Path>,
    vm_id: &str,
) -> (ChildGuard, ProcessIdentity) {
    let chardev = format!(
        "socket,id=qmp,path={}/{vm_id}.qmp,server=on,wait=off",
        socket_dir.display()
    );
    let mut cmd = Command::new("bash");
    cmd.arg0("qemu-system-x86_64")
        .args(["-c", "read -r _", "fake-qemu", "-chardev", &chardev])
        .env_remove(STORE_ENV)
        .stdin(Stdio::piped());
    if let Some(store) = store {
        cmd.env(STORE_ENV, store);
    }
    let child = cmd.spawn().expect("spawn fake qemu");
    let id = ProcessIdentity::of(child.id()).expect("fake qemu runs");
    (ChildGuard(child), id)
}

fn tap_net(n: u8) -> NetworkConfig {
    NetworkConfig {
        guest_ip: Ipv4Addr::new(172, 16, 0, n),
        gateway_ip: Ipv4Addr::new(172, 16, 0, 1),
        netmask: Ipv4Addr::new(255, 255, 0, 0),
        tap_device: Some(format!("smv-{n}")),
        guest_mac: format!("02:00:ac:10:00:{n:02x}"),
        ssh_host_port: None,
        mode: NetworkMode::Tap,
    }
}

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
        for d in [&data, &sockets, &data.join("disks")] {
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

    /// The store identity smolvm marks this data directory's VMMs with.
    fn store_id(&self) -> PathBuf {
        fs::canonicalize(&self.data).unwrap()
    }

    fn store(&self) -> StateStore {
        StateStore::open(&self.data.join("smolvm.db")).unwrap()
    }

    /// A row in state `running` that records `process`.
    fn running_row(&self, id: &str, process: ProcessIdentity) {
        let config = VmConfig::builder(&self.kernel, &self.rootfs)
            .vm_id(id)
            .build()
            .unwrap();
        let mut s = self.store();
        s.create_vm(&config, BackendKind::Qemu, None).unwrap();
        s.set_running(
            id,
            &RunningVmm {
                process,
                socket_path: self.sockets.join(format!("{id}.qmp")),
                agent_socket: Some(self.sockets.join(format!("{id}.agent"))),
            },
        )
        .unwrap();
    }

    fn status(&self, id: &str) -> Option<VmState> {
        self.store().get_vm(id).unwrap().map(|r| r.info.status)
    }
}

#[test]
fn cleanup_finds_and_removes_what_a_crash_left() {
    if !e2e("cleanup", &["ip", "nft", "bash", "qemu-system-x86_64"]) {
        return;
    }
    let ns = Netns::new();
    let _in = ns.enter();
    let env = Env::new();
    let disks = env.data.join("disks");

    // "alive": a running VM with its recorded VMM, plus a stray second VMM for it.
    let (_alive, alive_id) = fake_qemu(&env.sockets, Some(&env.store_id()), "alive");
    env.running_row("alive", alive_id);
    let (_stray, stray_id) = fake_qemu(&env.sockets, Some(&env.store_id()), "alive");
    fs::write(env.sockets.join("alive.qmp"), b"").unwrap();
    // "orphan": a VMM without a row, with its sockets.
    let (_orphan, orphan_id) = fake_qemu(&env.sockets, Some(&env.store_id()), "orphan");
    fs::write(env.sockets.join("orphan.qmp"), b"").unwrap();
    // "dead": a running row whose VMM is gone, its sockets and an interrupted disk clone.
    let (mut gone, gone_id) = fake_qemu(&env.sockets, Some(&env.store_id()), "dead");
    gone.0.kill().unwrap();
    gone.0.wait().unwrap();
    env.running_row("dead", gone_id);
    for f in ["dead.qmp", "dead.agent"] {
        fs::write(env.sockets.join(f), b"").unwrap();
    }
    fs::write(disks.join("dead.tmp-4242"), b"partial").unwrap();
    // "kept": a retained disk; "ghost": a VM directory without a row.
    fs::write(disks.join("kept.ext4"), b"disk").unwrap();
    fs::create_dir_all(env.data.join("vms/ghost")).unwrap();
    // A lock file of a VM long gone (older smolvm versions never removed them).
    fs::create_dir_all(env.data.join("locks")).unwrap();
    fs::write(env.data.join("locks/old.lock"), b"").unwrap();
    fs::write(env.data.join("vms/ghost/console.log"), b"log").unwrap();
    // Network: TAP + rules of a VM without a row, and of the known VM "alive".
    let hn = HostNetwork::system();
    hn.setup_vm("netghost", &tap_net(77)).unwrap();
    hn.setup_vm("alive", &tap_net(78)).unwrap();

    let m = env.manager();
    let dry = m
        .cleanup(&CleanupOptions {
            dry_run: true,
            ..CleanupOptions::default()
        })
        .unwrap();
    assert!(dry.dry_run && dry.failures.is_empty(), "{dry:#?}");
    let mut pids: Vec<u32> = dry.processes.iter().map(|p| p.pid).collect();
    pids.sort();
    let mut want = vec![stray_id.pid, orphan_id.pid];
    want.sort();
    assert_eq!(pids, want, "{dry:#?}");
    assert_eq!(dry.marked_error, ["dead"]);
    assert!(dry.deleted_vms.is_empty());
    let names = |v: &[PathBuf]| -> Vec<String> {
        v.iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        names(&dry.sockets),
        ["dead.agent", "dead.qmp", "orphan.qmp"]
    );
    assert_eq!(names(&dry.temp_files), ["dead.tmp-4242"]);
    assert_eq!(names(&dry.vm_dirs), ["ghost"]);
    assert_eq!(dry.retained_disks.len(), 1);
    assert_eq!(dry.retained_disks[0].vm_id, "kept");
    assert!(!dry.retained_disks[0].removed);
    let net = dry.network.as_ref().expect("network step ran");
    assert_eq!(net.taps.len(), 1, "{net:?}");
    assert_eq!(net.taps[0].name, "smv-77");
    assert!(!net.rules.is_empty() && net.rules.iter().all(|r| r.vm_id == "netghost"));
    // Nothing changed.
    assert!(stray_id.is_alive() && orphan_id.is_alive());
    assert_eq!(env.status("dead"), Some(VmState::Running));
    assert!(env.sockets.join("orphan.qmp").exists());
    assert!(sh(&["ip", "link", "show"]).contains("smv-77"));

    let done = m.cleanup(&CleanupOptions::default()).unwrap();
    assert!(!done.dry_run && done.failures.is_empty(), "{done:#?}");
    assert_eq!(done.processes, dry.processes);
    assert!(!stray_id.is_alive() && !orphan_id.is_alive());
    assert!(alive_id.is_alive(), "the recorded VMM was killed");
    assert_eq!(env.status("alive"), Some(VmState::Running));
    assert_eq!(env.status("dead"), Some(VmState::Error));
    assert!(env.sockets.join("alive.qmp").exists());
    for gone in ["orphan.qmp", "dead.qmp", "dead.agent"] {
        assert!(!env.sockets.join(gone).exists(), "{gone}");
    }
    assert!(!disks.join("dead.tmp-4242").exists());
    assert!(disks.join("kept.ext4").exists());
    assert!(!env.data.join("vms/ghost").exists());
    // Only VMs with a row keep a lock file.
    let mut locks: Vec<String> = fs::read_dir(env.data.join("locks"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    locks.sort();
    assert_eq!(locks, ["alive.lock", "dead.lock"]);
    let links = sh(&["ip", "link", "show"]);
    assert!(
        !links.contains("smv-77") && links.contains("smv-78"),
        "{links}"
    );
    let rules = sh(&["nft", "list", "ruleset"]);
    assert!(
        !rules.contains("smolvm:netghost") && rules.contains("smolvm:alive"),
        "{rules}"
    );

    // A second run finds nothing new; only the retained disk is listed again.
    let again = m.cleanup(&CleanupOptions::default()).unwrap();
    assert!(again.is_empty(), "{again:#?}");

    // One VM id: only it. "alive" is healthy, so nothing happens to it.
    let one = m
        .cleanup(&CleanupOptions {
            scope: CleanupScope::Vm("alive".into()),
            remove_retained_disks: true,
            ..CleanupOptions::default()
        })
        .unwrap();
    assert!(one.is_empty() && one.retained_disks.is_empty(), "{one:#?}");
    assert!(disks.join("kept.ext4").exists());

    // --all deletes the errored VM; --retained-disks removes the disk without a row.
    let all = m
        .cleanup(&CleanupOptions {
            scope: CleanupScope::All,
            remove_retained_disks: true,
            ..CleanupOptions::default()
        })
        .unwrap();
    assert!(all.failures.is_empty(), "{all:#?}");
    assert_eq!(all.deleted_vms, ["dead"]);
    assert_eq!(env.status("dead"), None);
    assert!(all.retained_disks[0].removed);
    assert!(!disks.join("kept.ext4").exists());
    assert_eq!(env.status("alive"), Some(VmState::Running));
    assert!(alive_id.is_alive());

    hn.teardown_vm("alive", &tap_net(78)).unwrap();
    hn.remove_all().unwrap();
}

#[test]
fn cleanup_of_one_vm_id_kills_only_its_processes() {
    if !e2e("cleanup one id", &["ip", "nft", "bash"]) {
        return;
    }
    let ns = Netns::new();
    let _in = ns.enter();
    let env = Env::new();
    let (_a, a) = fake_qemu(&env.sockets, Some(&env.store_id()), "one-a");
    let (_b, b) = fake_qemu(&env.sockets, Some(&env.store_id()), "one-b");
    // Another manager's VMM (other socket directory) with the same id is never touched.
    let other = tempfile::tempdir().unwrap();
    let (_c, c) = fake_qemu(other.path(), Some(&env.store_id()), "one-a");
    let m = env.manager();
    let r = m
        .cleanup(&CleanupOptions {
            scope: CleanupScope::Vm("one-a".into()),
            ..CleanupOptions::default()
        })
        .unwrap();
    assert_eq!(r.processes.len(), 1, "{r:#?}");
    assert_eq!(r.processes[0].pid, a.pid);
    assert!(!a.is_alive() && b.is_alive() && c.is_alive());
    assert!(m
        .cleanup(&CleanupOptions {
            scope: CleanupScope::Vm("Bad Id".into()),
            ..CleanupOptions::default()
        })
        .is_err());
}

/// Two stores sharing one socket directory (as every store shared `/tmp/smolvm-<uid>` before sockets
/// were scoped per store): cleanup of one never kills the other's VMM nor removes its sockets, and an
/// unmarked VMM (an older smolvm's) is left alone too. Only the owner's cleanup collects its orphan.
#[test]
fn cleanup_never_touches_another_stores_vmms() {
    if !e2e("cleanup of another store", &["ip", "nft", "bash"]) {
        return;
    }
    let ns = Netns::new();
    let _in = ns.enter();
    let a = Env::new();
    let b = Env {
        sockets: a.sockets.clone(),
        ..Env::new()
    };
    let (_keep, keep) = fake_qemu(&a.sockets, Some(&a.store_id()), "keepme");
    let (_legacy, legacy) = fake_qemu(&a.sockets, None, "legacy");
    for f in ["keepme.qmp", "keepme.agent", "legacy.qmp"] {
        fs::write(a.sockets.join(f), b"").unwrap();
    }
    for dry_run in [true, false] {
        let r = b
            .manager()
            .cleanup(&CleanupOptions {
                dry_run,
                scope: CleanupScope::All,
                remove_retained_disks: true,
            })
            .unwrap();
        assert!(r.processes.is_empty() && r.sockets.is_empty(), "{r:#?}");
    }
    let r = b
        .manager()
        .cleanup(&CleanupOptions {
            scope: CleanupScope::Vm("keepme".into()),
            ..CleanupOptions::default()
        })
        .unwrap();
    assert!(r.processes.is_empty() && r.sockets.is_empty(), "{r:#?}");
    assert!(keep.is_alive() && legacy.is_alive());
    for f in ["keepme.qmp", "keepme.agent", "legacy.qmp"] {
        assert!(a.sockets.join(f).exists(), "{f}");
    }
    // The owner (no row for keepme there either) does collect it; the unmarked one stays.
    let r = a.manager().cleanup(&CleanupOptions::default()).unwrap();
    assert_eq!(
        r.processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
        [keep.pid],
        "{r:#?}"
    );
    assert!(!keep.is_alive() && legacy.is_alive());
    assert!(a.sockets.join("legacy.qmp").exists());
}

/// Two stores sharing an explicit socket directory, both with a VM `x`: the second cannot start its
/// `x` while the first's VMM uses `<socket_dir>/x.qmp` (it would remove and take over that socket), and
/// the refusal says why. No VM boots: the first store's VMM is a stand-in.
#[test]
fn start_refuses_a_control_socket_held_by_another_store() {
    if !e2e("shared socket dir", &["bash", "qemu-system-x86_64"]) {
        return;
    }
    let a = Env::new();
    let b = Env {
        sockets: a.sockets.clone(),
        ..Env::new()
    };
    let (_x, x) = fake_qemu(&a.sockets, Some(&a.store_id()), "x");
    fs::write(a.sockets.join("x.qmp"), b"").unwrap();
    let m = b.manager();
    let config = VmConfig::builder(&b.kernel, &b.rootfs)
        .vm_id("x")
        .disk_mode(smolvm::DiskMode::Shared)
        .build()
        .unwrap();
    m.create_with(
        &config,
        &smolvm::CreateOptions {
            network: smolvm::NetworkMode::None,
            ..Default::default()
        },
    )
    .unwrap();
    let err = m
        .start("x", std::time::Duration::from_secs(5))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("is in use by VMM pid {} of another store", x.pid)),
        "{err}"
    );
    assert!(x.is_alive());
    assert_eq!(m.get("x").unwrap().status, VmState::Created);
    m.delete("x").unwrap();
    assert!(x.is_alive(), "delete of B's x killed A's VMM");
    assert!(
        a.sockets.join("x.qmp").exists(),
        "delete of B's x removed A's socket"
    );
}
