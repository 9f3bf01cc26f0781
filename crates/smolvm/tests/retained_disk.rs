//! Issue 21: a disk retained by `retain_disk_on_delete` is reused by the next isolated-mode create of
//! the same id (with or without the flag), never destroyed implicitly, and refused (with the way out)
//! when it cannot serve the new config. No VM boots here: the "guest's writes" are bytes this test
//! puts into the disk file, which is what reuse must keep. The booted version is in
//! `retained_disk_e2e.rs`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use smolvm::{BackendKind, DiskMode, Error, VmConfig};
use smolvm::{CreateOptions, NetworkMode, SmolVmManager};

/// Where this test writes the "guest's" bytes in the disk.
const MARK_AT: u64 = 1 << 20;

struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    data: PathBuf,
    kernel: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let kernel = dir.join("vmlinux");
        fs::write(&kernel, b"k").unwrap();
        Env {
            data: dir.join("data"),
            dir,
            kernel,
            _tmp: tmp,
        }
    }

    fn image(&self, name: &str, mib: u64) -> PathBuf {
        let p = self.dir.join(name);
        File::create(&p).unwrap().set_len(mib << 20).unwrap();
        p
    }

    fn manager(&self) -> SmolVmManager {
        SmolVmManager::new(
            Some(&self.data),
            Some(&self.dir.join("s")),
            Some(BackendKind::Qemu),
        )
        .unwrap()
    }

    fn config(&self, id: &str, rootfs: &Path, retain: bool) -> VmConfig {
        VmConfig::builder(&self.kernel, rootfs)
            .vm_id(id)
            .disk_mode(DiskMode::Isolated)
            .retain_disk_on_delete(retain)
            .build()
            .unwrap()
    }

    fn disk(&self, id: &str) -> PathBuf {
        self.data.join("disks").join(format!("{id}.ext4"))
    }
}

fn opts(discard: bool) -> CreateOptions {
    CreateOptions {
        network: NetworkMode::None,
        discard_retained_disk: discard,
    }
}

fn write_mark(disk: &Path, mark: &[u8]) {
    let mut f = OpenOptions::new().write(true).open(disk).unwrap();
    f.seek(SeekFrom::Start(MARK_AT)).unwrap();
    f.write_all(mark).unwrap();
}

fn read_mark(disk: &Path, len: usize) -> Vec<u8> {
    let mut f = File::open(disk).unwrap();
    f.seek(SeekFrom::Start(MARK_AT)).unwrap();
    let mut buf = vec![0; len];
    f.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn the_specs_two_config_example_reuses_the_disk() {
    let env = Env::new();
    let img = env.image("rootfs.ext4", 8);
    let m = env.manager();
    // config: retain_disk_on_delete=True
    let first = m
        .create_reporting(&env.config("r1", &img, true), &opts(false))
        .unwrap();
    assert_eq!(first.reused_disk, None);
    write_mark(&env.disk("r1"), b"kept");
    m.delete("r1").unwrap();
    assert!(env.disk("r1").is_file(), "the retained disk was removed");
    // config2: same id, no flag: the disk is reused, files and all, and the caller is told.
    let second = m
        .create_reporting(&env.config("r1", &img, false), &opts(false))
        .unwrap();
    assert_eq!(
        second.reused_disk.as_deref(),
        Some(env.disk("r1").as_path())
    );
    assert_eq!(read_mark(&env.disk("r1"), 4), b"kept");
    // The new VM's own flag (false) decides its own delete.
    m.delete("r1").unwrap();
    assert!(!env.disk("r1").exists());
    let leftovers: Vec<_> = fs::read_dir(env.data.join("disks"))
        .unwrap()
        .flatten()
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_disk_that_cannot_serve_the_config_is_refused_and_kept() {
    let env = Env::new();
    let img = env.image("rootfs.ext4", 8);
    let other = env.image("other.ext4", 8);
    let m = env.manager();
    m.create_with(&env.config("r2", &img, true), &opts(false))
        .unwrap();
    write_mark(&env.disk("r2"), b"kept");
    m.delete("r2").unwrap();

    // Another image family.
    let err = m
        .create_with(&env.config("r2", &other, false), &opts(false))
        .unwrap_err();
    assert!(matches!(err, Error::Validation(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("was made from the image") && msg.contains("other.ext4"),
        "{msg}"
    );
    assert!(msg.contains("smolvm cleanup --retained-disks r2"), "{msg}");
    assert!(msg.contains("--discard-retained-disk"), "{msg}");
    // Nothing was created, nothing destroyed.
    assert!(matches!(m.get("r2"), Err(Error::VmNotFound(_))));
    assert_eq!(read_mark(&env.disk("r2"), 4), b"kept");

    // The same image rebuilt with another size (disk_size_mib).
    File::create(&img).unwrap().set_len(4 << 20).unwrap();
    let msg = m
        .create_with(&env.config("r2", &img, true), &opts(false))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("is 8 MiB, but this config's image is smaller (4 MiB)"),
        "{msg}"
    );
    assert_eq!(read_mark(&env.disk("r2"), 4), b"kept");

    // Starting fresh is explicit.
    let fresh = m
        .create_reporting(&env.config("r2", &other, false), &opts(true))
        .unwrap();
    assert_eq!(fresh.reused_disk, None);
    assert_eq!(read_mark(&env.disk("r2"), 4), [0; 4]);
    m.delete("r2").unwrap();
}

#[test]
fn the_disk_of_an_existing_vm_is_not_touched_by_a_second_create() {
    let env = Env::new();
    let img = env.image("rootfs.ext4", 8);
    let m = env.manager();
    m.create_with(&env.config("r3", &img, false), &opts(false))
        .unwrap();
    write_mark(&env.disk("r3"), b"mine");
    for discard in [false, true] {
        let err = m
            .create_with(&env.config("r3", &img, false), &opts(discard))
            .unwrap_err();
        assert!(matches!(err, Error::VmAlreadyExists(_)), "{err:?}");
        assert_eq!(read_mark(&env.disk("r3"), 4), b"mine");
    }
    m.delete("r3").unwrap();
}

#[test]
fn shared_mode_leaves_a_retained_disk_alone() {
    let env = Env::new();
    let img = env.image("rootfs.ext4", 8);
    let m = env.manager();
    m.create_with(&env.config("r4", &img, true), &opts(false))
        .unwrap();
    m.delete("r4").unwrap();
    let shared = VmConfig::builder(&env.kernel, &img)
        .vm_id("r4")
        .disk_mode(DiskMode::Shared)
        .build()
        .unwrap();
    let c = m.create_reporting(&shared, &opts(false)).unwrap();
    assert_eq!(c.reused_disk, None);
    m.delete("r4").unwrap();
    assert!(env.disk("r4").is_file());
}

/// Issue 18.4: `delete` after an interrupted create removes the interrupted clone too.
#[test]
fn delete_removes_interrupted_disk_clones() {
    let env = Env::new();
    let img = env.image("rootfs.ext4", 8);
    let m = env.manager();
    m.create_with(&env.config("t1", &img, false), &opts(false))
        .unwrap();
    let disks = env.data.join("disks");
    // What a create killed half-way through its clone leaves (a sparse temp file named by pid), and
    // one of another VM whose id shares the prefix.
    fs::write(disks.join("t1.tmp-4242"), b"partial").unwrap();
    fs::write(disks.join("t1-b.tmp-4242"), b"other").unwrap();
    m.delete("t1").unwrap();
    let mut left: Vec<String> = fs::read_dir(&disks)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["t1-b.tmp-4242"]);
    // Issue 18.5: its lock file went with it.
    assert!(!env.data.join("locks/t1.lock").exists());
}
