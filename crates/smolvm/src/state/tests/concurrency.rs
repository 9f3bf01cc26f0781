//! Many writers at once: threads with their own connections, and separate OS processes (this test
//! binary re-run in a child mode), all creating and deleting VMs on one fresh database. Every lease must
//! stay distinct, and none may be lost.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::state::leases::Lease;
use crate::state::{StateStore, StoreOptions};
use crate::NetworkMode;
use crate::{BackendKind, VmConfig};

/// Set in a child process: the database to write to.
const CHILD_DB: &str = "SMOLVM_STATE_TEST_CHILD_DB";
/// Set in a child process: prefix of the VM ids it creates.
const CHILD_TAG: &str = "SMOLVM_STATE_TEST_CHILD_TAG";
/// Set in a child process: the file whose appearance starts all children at once.
const CHILD_GO: &str = "SMOLVM_STATE_TEST_CHILD_GO";

const PER_WORKER: usize = 12;

fn options() -> StoreOptions {
    StoreOptions {
        ssh_port_range: 42000..=42999,
        probe_host_ports: false,
        vmm_ids: crate::vmm_user::DEFAULT_RANGE,
    }
}

/// What one worker does: open its own connection, create VMs with networking, delete every third one
/// again (so released leases are reused while others allocate), and return the ids it kept.
fn work(db: &Path, files: &Path, tag: &str) -> Vec<String> {
    let kernel = files.join("vmlinux");
    let rootfs = files.join("rootfs.ext4");
    let mut store = StateStore::open_with(db, options()).unwrap();
    let mut kept = Vec::new();
    for i in 0..PER_WORKER {
        let id = format!("{tag}-{i}");
        let config = VmConfig::builder(&kernel, &rootfs)
            .vm_id(&id)
            .build()
            .unwrap();
        store
            .create_vm(&config, BackendKind::Qemu, Some(NetworkMode::Tap))
            .unwrap();
        if i % 3 == 1 {
            assert!(store.delete_vm(&id).unwrap());
        } else {
            kept.push(id);
        }
    }
    kept
}

fn fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vmlinux"), b"k").unwrap();
    std::fs::write(dir.path().join("rootfs.ext4"), b"r").unwrap();
    let db = dir.path().join("smolvm.db");
    (dir, db)
}

fn assert_distinct(leases: &[Lease]) {
    let ips: HashSet<_> = leases.iter().map(|l| l.network.guest_ip).collect();
    let taps: HashSet<_> = leases.iter().map(|l| &l.network.tap_device).collect();
    let macs: HashSet<_> = leases.iter().map(|l| &l.network.guest_mac).collect();
    let ports: HashSet<_> = leases.iter().map(|l| l.network.ssh_host_port).collect();
    let n = leases.len();
    assert_eq!(
        (ips.len(), taps.len(), macs.len(), ports.len()),
        (n, n, n, n),
        "duplicate leases: {leases:#?}"
    );
    assert!(ports.iter().all(|p| p.is_some()));
}

#[test]
fn sixteen_threads_never_share_a_lease() {
    let (dir, db) = fixture();
    let workers: Vec<_> = (0..16)
        .map(|t| {
            let (db, files) = (db.clone(), dir.path().to_path_buf());
            std::thread::spawn(move || work(&db, &files, &format!("t{t}")))
        })
        .collect();
    let mut kept: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let store = StateStore::open_with(&db, options()).unwrap();
    let leases = store.list_leases().unwrap();
    assert_distinct(&leases);
    let mut leased: Vec<String> = leases.into_iter().map(|l| l.vm_id).collect();
    kept.sort();
    leased.sort();
    assert_eq!(leased, kept, "every kept VM has exactly one lease");
    assert_eq!(
        store.list_vms(None).unwrap().len(),
        16 * (PER_WORKER - PER_WORKER / 3)
    );
}

#[test]
fn several_processes_never_share_a_lease() {
    const CHILDREN: usize = 4;
    let (dir, db) = fixture();
    let go = dir.path().join("go");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..CHILDREN)
        .map(|c| {
            Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "state::tests::concurrency::multiprocess_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_DB, &db)
                .env(CHILD_TAG, format!("p{c}"))
                .env(CHILD_GO, &go)
                // The child's own harness chatter; failures still reach stderr.
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // All children are up and polling: release them together.
    std::fs::write(&go, b"").unwrap();
    for mut child in children {
        let status = child.wait().unwrap();
        assert!(status.success(), "child failed: {status}");
    }
    let store = StateStore::open_with(&db, options()).unwrap();
    let leases = store.list_leases().unwrap();
    assert_distinct(&leases);
    // Each child runs two workers.
    let per_child = 2 * (PER_WORKER - PER_WORKER / 3);
    assert_eq!(leases.len(), CHILDREN * per_child);
    for c in 0..CHILDREN {
        let tag = format!("p{c}t");
        let n = leases.iter().filter(|l| l.vm_id.starts_with(&tag)).count();
        assert_eq!(n, per_child, "child {c}");
    }
}

/// The child mode of `several_processes_never_share_a_lease`; ignored in a normal test run.
#[test]
#[ignore = "helper process, not a test: started with --ignored by several_processes_never_share_a_lease"]
fn multiprocess_child() {
    let (Some(db), Some(tag), Some(go)) = (
        std::env::var_os(CHILD_DB),
        std::env::var(CHILD_TAG).ok(),
        std::env::var_os(CHILD_GO),
    ) else {
        return;
    };
    let db = PathBuf::from(db);
    let go = PathBuf::from(go);
    // Not a timing assertion: only keeps an orphaned child from polling forever if the parent died.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !go.exists() {
        assert!(
            Instant::now() < deadline,
            "parent never released the children"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let files = db.parent().unwrap().to_path_buf();
    // Two threads per process, so cross-process and in-process contention mix.
    let handles: Vec<_> = (0..2)
        .map(|t| {
            let (db, files, tag) = (db.clone(), files.clone(), format!("{tag}t{t}"));
            std::thread::spawn(move || work(&db, &files, &tag))
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
