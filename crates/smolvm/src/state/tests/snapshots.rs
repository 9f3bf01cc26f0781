//! The state store's `paused` state and snapshot rows: persistence, unique names, the in-use rule.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::process::ProcessIdentity;
use crate::snapshot::{MachineShape, SnapshotRecord};
use crate::state::{RunningVmm, StateStore};
use crate::{BackendKind, VmConfig, VmState};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), b"k").unwrap();
        std::fs::write(dir.path().join("r"), b"r").unwrap();
        Env { dir }
    }
    fn store(&self) -> StateStore {
        StateStore::open(&self.dir.path().join("smolvm.db")).unwrap()
    }
    fn config(&self, id: &str) -> VmConfig {
        VmConfig::builder(self.dir.path().join("k"), self.dir.path().join("r"))
            .vm_id(id)
            .build()
            .unwrap()
    }
    fn snapshot(&self, name: &str) -> SnapshotRecord {
        SnapshotRecord {
            name: name.into(),
            source_vm: "src".into(),
            backend: BackendKind::Qemu,
            config: self.config("src"),
            machine: MachineShape {
                vcpu_count: 1,
                mem_size_mib: 256,
                vmm_version: "QEMU emulator version 10.0.2".into(),
                accel: "tcg".into(),
                capabilities: vec!["mapped-ram".into()],
                disk_size: 1 << 20,
                disk_mtime_ns: 1_700_000_000_000_000_000,
                network: false,
            },
            dir: PathBuf::from(format!("/data/snapshots/{name}")),
            size_bytes: 12345,
            created_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        }
    }
}

#[test]
fn paused_is_persisted_and_keeps_the_vmm() {
    let env = Env::new();
    let mut s = env.store();
    s.create_vm(&env.config("p1"), BackendKind::Qemu, None)
        .unwrap();
    let vmm = RunningVmm {
        process: ProcessIdentity {
            pid: 4242,
            start_time: 99,
        },
        socket_path: "/s/p1.qmp".into(),
        agent_socket: Some("/s/p1.agent".into()),
    };
    s.set_running("p1", &vmm).unwrap();
    s.set_status("p1", VmState::Paused, None).unwrap();
    drop(s);
    let s = env.store();
    let rec = s.get_vm("p1").unwrap().unwrap();
    assert_eq!(rec.info.status, VmState::Paused);
    assert_eq!(rec.process, Some(vmm.process), "a paused VM keeps its VMM");
    assert_eq!(
        rec.info.socket_path.as_deref(),
        Some(vmm.socket_path.as_path())
    );
    assert_eq!(s.list_vms(Some(VmState::Paused)).unwrap().len(), 1);
    let json = serde_json::to_value(&rec.info).unwrap();
    assert_eq!(json["status"], "paused");
    let mut s = s;
    s.set_status("p1", VmState::Stopped, None).unwrap();
    assert_eq!(s.get_vm("p1").unwrap().unwrap().process, None);
}

#[test]
fn snapshots_round_trip_and_names_are_unique() {
    let env = Env::new();
    let mut s = env.store();
    let snap = env.snapshot("s1");
    assert!(s.insert_snapshot(&snap).unwrap());
    assert!(!s.insert_snapshot(&snap).unwrap(), "name taken");
    s.insert_snapshot(&env.snapshot("s2")).unwrap();
    let again = env.store().get_snapshot("s1").unwrap().unwrap();
    assert_eq!(again, snap);
    let names: Vec<String> = s
        .list_snapshots()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["s1", "s2"]);
    assert_eq!(s.get_snapshot("nope").unwrap(), None);
    let info = again.info(vec![]);
    assert_eq!(info.created_at, 1_700_000_000.123);
    assert!(
        info.created_at
            < SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
    );
}

#[test]
fn a_snapshot_in_use_cannot_be_deleted_until_its_vms_are() {
    let env = Env::new();
    let mut s = env.store();
    s.insert_snapshot(&env.snapshot("base")).unwrap();
    for id in ["f1", "f2"] {
        s.create_vm(&env.config(id), BackendKind::Qemu, None)
            .unwrap();
        s.link_snapshot_user(id, "base").unwrap();
    }
    // Linking to a snapshot that does not exist is refused by the foreign key.
    s.create_vm(&env.config("f3"), BackendKind::Qemu, None)
        .unwrap();
    assert!(s.link_snapshot_user("f3", "ghost").is_err());
    assert_eq!(s.snapshot_of("f1").unwrap().as_deref(), Some("base"));
    assert_eq!(s.snapshot_of("f3").unwrap(), None);
    assert_eq!(
        s.delete_snapshot("base").unwrap(),
        Err(vec!["f1".to_string(), "f2".to_string()])
    );
    assert!(s.get_snapshot("base").unwrap().is_some());
    s.delete_vm("f1").unwrap();
    s.delete_vm("f2").unwrap();
    assert!(s.snapshot_users("base").unwrap().is_empty());
    assert_eq!(s.delete_snapshot("base").unwrap(), Ok(true));
    assert_eq!(s.delete_snapshot("base").unwrap(), Ok(false));
}
