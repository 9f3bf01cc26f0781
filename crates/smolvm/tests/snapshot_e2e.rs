//! End-to-end pause/resume, snapshots, start-from-snapshot and fork against real QEMU (TCG here). Each
//! test runs inside a network namespace it creates and removes, with private directories, and checks
//! that nothing leaks. Run with `SMOLVM_E2E=1` as root; they skip otherwise.

mod netns_util;
mod scene_util;
mod vm_util;

use std::time::Duration;

use scene_util::{no_net, Scene};
use smolvm::internals::backend::qemu::{QemuAccel, QemuBackend};
use smolvm::SnapshotError;
use smolvm::{BackendKind, CleanupOptions, Error, VmState};
use smolvm::{CreateOptions, NetworkMode, SmolVmManager};
use vm_util::{processes_mentioning, spec, TestEnv};

const BOOT: Duration = Duration::from_secs(60);
const TOOLS: &[&str] = &["qemu-system-x86_64", "qemu-img", "mkfs.ext4", "ip"];

impl Scene {
    /// A second manager on the same directories: what another process sees.
    fn other_process(&self) -> SmolVmManager {
        SmolVmManager::new(
            Some(&self.env.data_dir()),
            Some(&self.env.socket_dir()),
            Some(BackendKind::Qemu),
        )
        .unwrap()
    }
}

fn qmp_status(m: &SmolVmManager, id: &str) -> String {
    let sock = m.get(id).unwrap().socket_path.unwrap();
    QemuBackend::new("qemu-system-x86_64", QemuAccel::tcg(None, None))
        .query_status(&sock)
        .unwrap()
        .status
}

#[test]
fn pause_resume_then_stop_and_delete_a_paused_vm() {
    let Some(scene) = Scene::enter("pause/resume", TOOLS) else {
        return;
    };
    let env = &scene.env;
    let m = &env.manager;
    m.create_with(&spec("pz-1").build().unwrap(), &no_net())
        .unwrap();
    let pid = m.start("pz-1", BOOT).unwrap().pid;

    // Pausing a VM that is not running is refused and names the state.
    let info = m.pause("pz-1").unwrap();
    assert_eq!(info.status, VmState::Paused);
    assert_eq!(info.pid, pid, "the VMM process stays");
    assert_eq!(qmp_status(m, "pz-1"), "paused");
    // Persisted: another process sees it paused, and pausing again is a no-op.
    let other = scene.other_process();
    assert_eq!(other.get("pz-1").unwrap().status, VmState::Paused);
    assert_eq!(other.pause("pz-1").unwrap().status, VmState::Paused);
    // Commands need a running VM.
    let vm = env.reconnect("pz-1");
    assert!(matches!(
        vm.run("true"),
        Err(Error::InvalidState {
            status: VmState::Paused,
            ..
        })
    ));
    vm.close();
    // start is not resume.
    assert!(matches!(
        m.start("pz-1", BOOT),
        Err(Error::InvalidState { .. })
    ));

    let info = other.resume("pz-1").unwrap();
    assert_eq!(info.status, VmState::Running);
    assert_eq!(qmp_status(m, "pz-1"), "running");
    let vm = env.reconnect("pz-1");
    assert_eq!(vm.run("echo alive").unwrap().output(), "alive");
    vm.close();
    assert_eq!(m.resume("pz-1").unwrap().status, VmState::Running);

    // stop of a paused VM: it is resumed, powered off, and stopped.
    m.pause("pz-1").unwrap();
    let info = m.stop("pz-1", Duration::from_secs(20)).unwrap();
    assert_eq!(info.status, VmState::Stopped);
    assert_eq!(info.pid, None);
    assert!(processes_mentioning(&env.socket_dir().join("pz-1")).is_empty());
    assert!(matches!(
        m.pause("pz-1"),
        Err(Error::InvalidState {
            status: VmState::Stopped,
            ..
        })
    ));
    assert!(matches!(m.resume("pz-1"), Err(Error::InvalidState { .. })));

    // delete of a paused VM leaves nothing behind.
    m.start("pz-1", BOOT).unwrap();
    m.pause("pz-1").unwrap();
    m.delete("pz-1").unwrap();
    env.assert_no_leaks("pz-1");
}

fn tap() -> CreateOptions {
    CreateOptions {
        network: NetworkMode::Tap,
        ..CreateOptions::default()
    }
}

fn out(vm: &smolvm::SmolVm, cmd: &str) -> String {
    let r = vm.run(cmd).unwrap();
    if r.exit_code != 0 {
        let d = vm.run("dmesg | tail -20").unwrap();
        eprintln!(
            "guest kernel log after {cmd} failed:\n{}{}",
            d.stdout, d.stderr
        );
    }
    assert_eq!(r.exit_code, 0, "{cmd}: {}", r.stderr);
    r.stdout.trim().to_string()
}

fn snapshot_error(e: &Error) -> &SnapshotError {
    match e {
        Error::Snapshot(inner) => inner,
        other => panic!("expected a snapshot error, got {other:?}"),
    }
}

/// Nothing of a failed restore remains: no row but the listed ones, no disk, no process, no socket.
fn assert_only_vms(env: &TestEnv, ids: &[&str]) {
    let mut vms: Vec<String> = env
        .manager
        .list_vms(None)
        .unwrap()
        .into_iter()
        .map(|v| v.vm_id)
        .collect();
    vms.sort();
    assert_eq!(vms, ids);
    let disks: Vec<String> = std::fs::read_dir(env.manager.disk_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for d in &disks {
        assert!(
            ids.iter().any(|id| d.starts_with(&format!("{id}."))),
            "disk {d} left behind"
        );
    }
}

#[test]
fn two_forks_of_one_snapshot_are_independent_machines() {
    let Some(scene) = Scene::enter("snapshot forks", TOOLS) else {
        return;
    };
    let env = &scene.env;
    let m = &env.manager;
    m.create_with(&spec("src").build().unwrap(), &tap())
        .unwrap();
    m.start("src", BOOT).unwrap();
    let src = env.reconnect("src");
    out(&src, "echo before > /root/common");

    let snap = m.snapshot("src", "base").unwrap();
    assert_eq!(snap.name, "base");
    assert_eq!(snap.source_vm, "src");
    assert!(snap.size_bytes > 0);
    assert!(snap.vmm_version.starts_with("QEMU"), "{}", snap.vmm_version);
    assert_eq!(m.get("src").unwrap().status, VmState::Running, "resumed");
    // The source goes on working after the snapshot.
    assert_eq!(out(&src, "cat /root/common"), "before");

    let fa = m.create_from_snapshot("base", Some("fa"), BOOT).unwrap();
    let fb = m.create_from_snapshot("base", Some("fb"), BOOT).unwrap();
    assert_eq!(fa.status, VmState::Running);
    assert_eq!(fb.status, VmState::Running);
    let (ip_a, ip_b) = (fa.guest_ip().unwrap(), fb.guest_ip().unwrap());
    let ip_src = m.get("src").unwrap().guest_ip().unwrap();
    assert!(ip_a != ip_b && ip_a != ip_src && ip_b != ip_src);
    assert_eq!(
        m.get_snapshot("base").unwrap().used_by,
        ["fa".to_string(), "fb".to_string()]
    );

    let a = env.reconnect("fa");
    let b = env.reconnect("fb");
    // The snapshot's disk content is there.
    assert_eq!(out(&a, "cat /root/common"), "before");
    assert_eq!(out(&b, "cat /root/common"), "before");
    // Fresh randomness in each clone (the restored kernels had identical random state).
    let uuid = |vm: &smolvm::SmolVm| out(vm, "cat /proc/sys/kernel/random/uuid");
    let urandom = |vm: &smolvm::SmolVm| out(vm, "head -c16 /dev/urandom | od -x");
    assert_ne!(uuid(&a), uuid(&b));
    assert_ne!(urandom(&a), urandom(&b));
    assert_ne!(uuid(&a), uuid(&src));
    // New identity: host name, address, MAC, clock.
    assert_eq!(out(&a, "hostname"), "fa");
    assert_eq!(out(&b, "hostname"), "fb");
    assert!(out(&a, "ip -4 addr show eth0").contains(&format!("inet {ip_a}/")));
    assert!(out(&b, "ip -4 addr show eth0").contains(&format!("inet {ip_b}/")));
    assert_eq!(
        out(&a, "cat /sys/class/net/eth0/address"),
        fa.network.as_ref().unwrap().guest_mac
    );
    let guest_now: i64 = out(&a, "date +%s").parse().unwrap();
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (guest_now - host_now).abs() < 120,
        "guest clock {guest_now} vs host {host_now}"
    );
    // Each fork has its own SSH host key, pinned for it, and is reachable at its own address over SSH.
    let key = |vm: &smolvm::SmolVm| out(vm, "md5sum /etc/dropbear/dropbear_ed25519_host_key");
    assert_ne!(key(&a), key(&b));
    assert_ne!(key(&a), key(&src));
    let pinned = |id: &str| std::fs::read_to_string(m.known_hosts_path(id)).unwrap();
    let key_of = |id: &str| pinned(id).split_whitespace().last().unwrap().to_string();
    assert_ne!(key_of("fa"), key_of("fb"));
    assert_eq!(
        a.run_over_ssh("hostname", Some(Duration::from_secs(30)))
            .unwrap()
            .output(),
        "fa"
    );
    assert_eq!(
        b.run_over_ssh("hostname", Some(Duration::from_secs(30)))
            .unwrap()
            .output(),
        "fb"
    );

    // Disks are separate: a file written in one fork is seen neither in the other nor in the source.
    out(&a, "echo only-a > /root/mine && sync");
    assert_eq!(out(&a, "cat /root/mine"), "only-a");
    assert_eq!(b.run("test -e /root/mine").unwrap().exit_code, 1);
    assert_eq!(src.run("test -e /root/mine").unwrap().exit_code, 1);
    let fa_disk = m.disk_dir().join("fa.qcow2");
    assert!(fa_disk.exists(), "fork disk is a qcow2 overlay");

    // A VM made from a snapshot can itself be snapshotted (its overlay is flattened) and restored.
    let snap2 = m.snapshot("fa", "from-fa").unwrap();
    assert_eq!(snap2.source_vm, "fa");
    let fc = m.create_from_snapshot("from-fa", Some("fc"), BOOT).unwrap();
    let c = env.reconnect("fc");
    assert_eq!(out(&c, "cat /root/mine"), "only-a");
    assert_eq!(out(&c, "hostname"), "fc");
    c.close();
    assert_ne!(fc.guest_ip(), fa.guest_ip());
    m.delete("fc").unwrap();
    m.delete_snapshot("from-fa").unwrap();

    // A VM made from a snapshot stops and cold-boots from its own disk like any other.
    m.stop("fb", Duration::from_secs(20)).unwrap();
    m.start("fb", BOOT).unwrap();
    let b = env.reconnect("fb");
    assert_eq!(out(&b, "hostname"), "fb");
    assert_eq!(out(&b, "cat /root/common"), "before");
    assert!(out(&b, "ip -4 addr show eth0").contains(&format!("inet {ip_b}/")));

    // The snapshot cannot be deleted while forks use it.
    let err = m.delete_snapshot("base").unwrap_err();
    assert!(
        matches!(snapshot_error(&err), SnapshotError::InUse { name, vms } if name == "base" && vms.len() == 2),
        "{err:?}"
    );
    a.close();
    b.close();
    src.close();
    m.delete("fa").unwrap();
    m.delete("fb").unwrap();
    env.assert_no_leaks("fa");
    env.assert_no_leaks("fb");
    assert!(!fa_disk.exists());
    m.delete_snapshot("base").unwrap();
    assert!(!m.snapshots_dir().join("base").exists());
    assert!(m.list_snapshots().unwrap().is_empty());

    // fork: the running source into two more, then everything goes.
    let forks = m.fork("src", 2, BOOT).unwrap();
    assert_eq!(forks.len(), 2);
    let snaps = m.list_snapshots().unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].used_by.len(), 2);
    for f in &forks {
        let vm = env.reconnect(&f.vm_id);
        assert_eq!(out(&vm, "hostname"), f.vm_id);
        vm.close();
        m.delete(&f.vm_id).unwrap();
        env.assert_no_leaks(&f.vm_id);
    }
    m.delete_snapshot(&snaps[0].name).unwrap();
    m.delete("src").unwrap();
    env.assert_no_leaks("src");
}

#[test]
fn bad_snapshots_are_refused_by_name_and_leave_nothing_behind() {
    let Some(scene) = Scene::enter("snapshot errors", TOOLS) else {
        return;
    };
    let env = &scene.env;
    let m = &env.manager;
    m.create_with(&spec("e-src").build().unwrap(), &no_net())
        .unwrap();
    // Wrong state: a created VM has no memory to save.
    let err = m.snapshot("e-src", "s1").unwrap_err();
    assert!(
        matches!(snapshot_error(&err), SnapshotError::WrongState { name, status: VmState::Created, .. } if name == "s1"),
        "{err:?}"
    );
    assert!(err.to_string().contains("snapshot") || format!("{err:#}").contains("s1"));
    assert!(matches!(
        m.snapshot("e-src", "Bad/Name"),
        Err(Error::Validation(_))
    ));
    let err = m.create_from_snapshot("missing", None, BOOT).unwrap_err();
    assert!(matches!(snapshot_error(&err), SnapshotError::NotFound(n) if n == "missing"));

    m.start("e-src", BOOT).unwrap();
    m.pause("e-src").unwrap();
    m.snapshot("e-src", "s1").unwrap();
    assert_eq!(
        m.get("e-src").unwrap().status,
        VmState::Paused,
        "stays paused"
    );
    let err = m.snapshot("e-src", "s1").unwrap_err();
    assert!(matches!(snapshot_error(&err), SnapshotError::AlreadyExists(n) if n == "s1"));
    m.resume("e-src").unwrap();
    let dir = m.snapshots_dir().join("s1");
    let mig = dir.join("vm.migration");
    let disk = dir.join("disk.img");

    // A corrupt memory file: QEMU refuses it, the error names the snapshot, nothing remains.
    let saved = std::fs::read(&mig).unwrap();
    std::fs::write(&mig, b"QEVM garbage").unwrap();
    let err = m.create_from_snapshot("s1", Some("e-c"), BOOT).unwrap_err();
    assert!(
        matches!(snapshot_error(&err), SnapshotError::Failed { name, .. } if name == "s1"),
        "{err:?}"
    );
    assert_only_vms(env, &["e-src"]);
    assert!(processes_mentioning(&env.socket_dir().join("e-c")).is_empty());
    // Not even the host cgroup the failed VMM was started in (cleanup would find and list it).
    let dry = CleanupOptions {
        dry_run: true,
        ..CleanupOptions::default()
    };
    assert_eq!(m.cleanup(&dry).unwrap().cgroups, Vec::<String>::new());
    std::fs::write(&mig, &saved).unwrap();

    // A missing file.
    std::fs::rename(&mig, dir.join("moved")).unwrap();
    let err = m.create_from_snapshot("s1", Some("e-m"), BOOT).unwrap_err();
    assert!(
        matches!(snapshot_error(&err), SnapshotError::MissingFile { name, .. } if name == "s1")
    );
    std::fs::rename(dir.join("moved"), &mig).unwrap();
    assert_only_vms(env, &["e-src"]);

    // Another QEMU version or machine shape: the recorded one differs from this host's.
    let db = rusqlite::Connection::open(env.data_dir().join("smolvm.db")).unwrap();
    let machine: String = db
        .query_row("SELECT machine FROM snapshots WHERE name = 's1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let edit = |m: &str| {
        db.execute("UPDATE snapshots SET machine = ?1 WHERE name = 's1'", [m])
            .unwrap();
    };
    let mut v: serde_json::Value = serde_json::from_str(&machine).unwrap();
    v["vmm_version"] = "QEMU emulator version 9.2.0".into();
    edit(&v.to_string());
    let err = m.create_from_snapshot("s1", Some("e-v"), BOOT).unwrap_err();
    assert!(
        matches!(snapshot_error(&err), SnapshotError::Incompatible { name, reason } if name == "s1" && reason.contains("9.2.0"))
    );
    let mut v: serde_json::Value = serde_json::from_str(&machine).unwrap();
    v["accel"] = "kvm".into();
    edit(&v.to_string());
    let err = m.create_from_snapshot("s1", Some("e-a"), BOOT).unwrap_err();
    assert!(matches!(
        snapshot_error(&err),
        SnapshotError::Incompatible { .. }
    ));
    edit(&machine);
    assert_only_vms(env, &["e-src"]);

    // A disk changed since the snapshot.
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&disk)
        .unwrap();
    f.set_len(std::fs::metadata(&disk).unwrap().len() + 4096)
        .unwrap();
    drop(f);
    let err = m.create_from_snapshot("s1", Some("e-d"), BOOT).unwrap_err();
    assert!(
        matches!(snapshot_error(&err), SnapshotError::DiskChanged { name, .. } if name == "s1")
    );
    assert_only_vms(env, &["e-src"]);
    let msg = format!("{}", snapshot_error(&err));
    assert!(msg.contains("\"s1\""), "{msg}");

    m.delete_snapshot("s1").unwrap();
    m.delete("e-src").unwrap();
    env.assert_no_leaks("e-src");
}
