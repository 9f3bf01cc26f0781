//! `cleanup` on a manager with fake collaborators: what it removes, what it keeps, and that a dry run
//! changes nothing.

use super::test_env::{have_ssh_keygen, names, Env, BOOT};
use super::{CleanupOptions, CleanupScope, NetworkMode};
use crate::config::DiskMode;
use crate::info::VmState;

/// `ip -j -d link show` listing TAPs tagged for these VM ids.
fn taps(tagged: &[(&str, &str)]) -> String {
    let links: Vec<String> = tagged
        .iter()
        .map(|(tap, vm)| {
            format!(
                r#"{{"ifname":"{tap}","linkinfo":{{"info_kind":"tun"}},"ifalias":"smolvm:{vm}"}}"#
            )
        })
        .collect();
    format!(r#"[{{"ifname":"lo"}},{}]"#, links.join(","))
}

#[test]
fn the_tap_of_a_vm_without_a_row_goes_and_that_of_a_known_vm_stays() {
    if !have_ssh_keygen("the_tap_of_a_vm_without_a_row_goes") {
        return;
    }
    let e = Env::new();
    e.create("vm-a", DiskMode::Shared, NetworkMode::Tap)
        .unwrap();
    let tap = e.tap_of("vm-a");
    e.net.respond(
        &["ip", "-j", "-d", "link"],
        &taps(&[(&tap, "vm-a"), ("smv-77", "vm-gone")]),
    );
    e.net.clear_calls();
    let report = e.m.cleanup(&CleanupOptions::default()).unwrap();
    let net = report.network.expect("the network step ran");
    assert_eq!(
        net.taps.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["smv-77"]
    );
    let deleted: Vec<String> = e
        .net
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("ip link del"))
        .collect();
    assert_eq!(deleted, ["ip link del dev smv-77"]);
    assert_eq!(e.m.get("vm-a").unwrap().status, VmState::Created);
}

#[test]
fn a_dry_run_reports_and_changes_nothing() {
    let e = Env::new();
    e.create("vm-a", DiskMode::Isolated, NetworkMode::None)
        .unwrap();
    e.m.start("vm-a", BOOT).unwrap();
    // A crash's leftovers: a half-made clone of another VM, a VMM that died.
    std::fs::write(e.m.disk_dir().join("vm-b.tmp-1"), b"x").unwrap();
    for p in e.vmm.live_vmms() {
        p.kill();
    }
    let before = e.leftovers();
    let report =
        e.m.cleanup(&CleanupOptions {
            dry_run: true,
            scope: CleanupScope::All,
            ..CleanupOptions::default()
        })
        .unwrap();
    assert!(report.dry_run);
    assert_eq!(report.deleted_vms, ["vm-a"]);
    assert_eq!(report.temp_files, [e.m.disk_dir().join("vm-b.tmp-1")]);
    assert_eq!(e.leftovers(), before);
    assert!(names(e.m.disk_dir()).contains(&"vm-b.tmp-1".to_string()));
    // The row is untouched too (a dry run does not even mark it `error`).
    let rec = e.m.state().unwrap().get_vm("vm-a").unwrap().unwrap();
    assert_eq!(rec.info.status, VmState::Running);
    // The real run then removes what the dry run only listed (the host cgroup included).
    e.cleanup_all();
    e.assert_gone("vm-a");
}

#[test]
fn overlays_of_vms_without_a_row_go_and_those_of_known_vms_stay() {
    let e = Env::new();
    e.create("vm-a", DiskMode::Isolated, NetworkMode::None)
        .unwrap();
    // A VM made from a snapshot whose create (or delete) was killed: its overlay, no row. And one
    // with a name that is not a VM id (never smolvm's): left alone.
    let ghost = e.m.disk_dir().join("vm-ghost.qcow2");
    std::fs::write(&ghost, b"QFI\xfb").unwrap();
    std::fs::write(e.m.disk_dir().join("vm-a.qcow2"), b"QFI\xfb").unwrap();
    std::fs::write(e.m.disk_dir().join("not.an.id.qcow2"), b"x").unwrap();
    let dry =
        e.m.cleanup(&CleanupOptions {
            dry_run: true,
            ..CleanupOptions::default()
        })
        .unwrap();
    assert_eq!(dry.overlays, std::slice::from_ref(&ghost));
    assert!(ghost.exists());
    let report = e.m.cleanup(&CleanupOptions::default()).unwrap();
    assert_eq!(report.overlays, std::slice::from_ref(&ghost));
    assert!(!ghost.exists());
    assert!(e.m.disk_dir().join("vm-a.qcow2").exists(), "vm-a has a row");
    // Its delete takes the overlay with it, even one it never recorded (killed before that).
    e.m.delete("vm-a").unwrap();
    assert!(!e.m.disk_dir().join("vm-a.qcow2").exists());
    std::fs::remove_file(e.m.disk_dir().join("not.an.id.qcow2")).unwrap();
    e.assert_gone("vm-a");
}

#[test]
fn snapshot_directories_without_a_row_and_interrupted_captures_go() {
    use crate::snapshot::{MachineShape, SnapshotRecord};
    let e = Env::new();
    let root = e.m.snapshots_dir();
    for d in ["kept", "ghost", ".kept2.tmp-4242-0000abcd"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
        std::fs::write(root.join(d).join("disk.img"), b"x").unwrap();
    }
    let config = e.config("src", DiskMode::Isolated);
    let record = SnapshotRecord {
        name: "kept".into(),
        source_vm: "src".into(),
        backend: crate::config::BackendKind::Qemu,
        config,
        machine: MachineShape {
            vcpu_count: 1,
            mem_size_mib: 128,
            vmm_version: "fake".into(),
            accel: "tcg".into(),
            capabilities: Vec::new(),
            disk_size: 1,
            disk_mtime_ns: 0,
            network: false,
        },
        dir: root.join("kept"),
        size_bytes: 1,
        created_at: std::time::SystemTime::now(),
    };
    assert!(e.m.state().unwrap().insert_snapshot(&record).unwrap());
    // A VM-scoped cleanup leaves the store's snapshots alone.
    let scoped =
        e.m.cleanup(&CleanupOptions {
            scope: CleanupScope::Vm("vm-x".into()),
            ..CleanupOptions::default()
        })
        .unwrap();
    assert!(scoped.snapshot_dirs.is_empty());
    let report = e.m.cleanup(&CleanupOptions::default()).unwrap();
    assert_eq!(
        report.snapshot_dirs,
        [root.join(".kept2.tmp-4242-0000abcd"), root.join("ghost")]
    );
    assert_eq!(names(&root), ["kept"]);
    e.m.delete_snapshot("kept").unwrap();
    assert!(e.m.cleanup(&CleanupOptions::default()).unwrap().is_empty());
}

#[test]
fn a_created_vm_whose_disk_is_gone_is_marked_error_and_deleted_by_cleanup_all() {
    let e = Env::new();
    e.create("vm-a", DiskMode::Isolated, NetworkMode::None)
        .unwrap();
    // What a create leaves whose rollback removed the disk but could not delete the row (the
    // database was full too).
    let disk = e.m.disk_dir().join("vm-a.ext4");
    std::fs::remove_file(&disk).unwrap();
    let report = e.m.cleanup(&CleanupOptions::default()).unwrap();
    assert_eq!(report.marked_error, ["vm-a"]);
    assert_eq!(e.m.get("vm-a").unwrap().status, VmState::Error);
    let why = e.m.last_error("vm-a").unwrap().unwrap();
    assert!(why.contains("disk is missing"), "{why}");
    let report = e.cleanup_all();
    assert_eq!(report.deleted_vms, ["vm-a"]);
    e.assert_gone("vm-a");
}

#[test]
fn a_jail_without_a_live_vmm_goes_and_that_of_a_running_vm_stays() {
    let e = Env::new();
    e.create("vm-a", DiskMode::Isolated, NetworkMode::None)
        .unwrap();
    e.m.start("vm-a", BOOT).unwrap();
    e.create("vm-b", DiskMode::Isolated, NetworkMode::None)
        .unwrap();
    let base = e.m.jail_base().join("firecracker");
    for id in ["vm-a", "vm-b", "vm-gone"] {
        std::fs::create_dir_all(base.join(id).join("root")).unwrap();
        std::fs::write(base.join(id).join("root/rootfs"), b"x").unwrap();
    }
    // A dry run lists and keeps.
    let dry =
        e.m.cleanup(&CleanupOptions {
            dry_run: true,
            ..CleanupOptions::default()
        })
        .unwrap();
    assert_eq!(dry.jails, [base.join("vm-b"), base.join("vm-gone")]);
    assert!(base.join("vm-gone").exists());
    let report = e.m.cleanup(&CleanupOptions::default()).unwrap();
    assert_eq!(report.jails, [base.join("vm-b"), base.join("vm-gone")]);
    assert_eq!(names(&base), ["vm-a"]);
    e.m.delete("vm-a").unwrap();
    e.m.delete("vm-b").unwrap();
}

/// A process whose command line is a jailed Firecracker's (`firecracker ... --id <vm> ... --api-sock
/// /api.sock`, no store marker: the jailer clears the environment), running as `uid`.
fn jailed_stand_in(vm_id: &str, uid: u32) -> crate::process::ProcessIdentity {
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new("sh")
        .arg0("firecracker")
        .args([
            "-c",
            "sleep 60",
            "sh",
            "--id",
            vm_id,
            "--api-sock",
            "/api.sock",
        ])
        .env_clear()
        .uid(uid)
        .gid(uid)
        .spawn()
        .unwrap();
    let pid = child.id();
    for _ in 0..500 {
        if std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.starts_with(b"firecracker"))
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    std::thread::spawn(move || child.wait());
    crate::process::ProcessIdentity::of(pid).unwrap()
}

#[test]
fn a_jailed_firecracker_left_by_a_crash_is_killed_only_with_the_vms_leased_uid() {
    if !crate::vmm_user::is_root() {
        eprintln!("skipped: needs root (per-VM VMM users and a process of another uid)");
        return;
    }
    let e = Env::new();
    e.create("vm-j", DiskMode::Isolated, NetworkMode::None)
        .unwrap();
    let user = e.m.vmm_user("vm-j").unwrap().expect("a VMM user as root");
    // A start killed after the jailer ran but before the VMM was recorded leaves this behind; a jailed
    // VMM with the same id but another uid (another store's) is not provably ours.
    let ours = jailed_stand_in("vm-j", user.uid);
    let foreign = jailed_stand_in("vm-j", user.uid + 1);
    let report = e.m.cleanup(&CleanupOptions::default()).unwrap();
    let killed: Vec<u32> = report.processes.iter().map(|p| p.pid).collect();
    assert_eq!(killed, [ours.pid]);
    assert!(!ours.is_alive());
    assert!(foreign.is_alive());
    assert_eq!(e.m.get("vm-j").unwrap().status, VmState::Created);
    foreign.kill();
}
