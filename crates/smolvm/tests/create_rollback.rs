//! Found by the chaos soak (`scripts/soak.sh`): a create that fails after the disk was copied (here:
//! the SSH host key cannot be written into the disk, as when the data directory's disk is full) must
//! remove that disk. It used to stay behind, where `cleanup` takes it for a retained disk. No VM boots.

use std::fs;

use smolvm::{BackendKind, DiskMode, VmConfig};
use smolvm::{CreateOptions, NetworkMode, SmolVmManager};

#[test]
fn a_create_failing_after_the_disk_copy_leaves_no_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let kernel = dir.join("vmlinux");
    fs::write(&kernel, b"k").unwrap();
    // Not an ext4 file system: installing the guest's SSH host key into the copy fails.
    let rootfs = dir.join("rootfs.ext4");
    fs::File::create(&rootfs).unwrap().set_len(8 << 20).unwrap();
    let m = SmolVmManager::new(
        Some(&dir.join("data")),
        Some(&dir.join("s")),
        Some(BackendKind::Qemu),
    )
    .unwrap();
    let config = VmConfig::builder(&kernel, &rootfs)
        .vm_id("rollback-1")
        .disk_mode(DiskMode::Isolated)
        .build()
        .unwrap();
    // User-mode networking: the SSH key is prepared, no TAP or nft rule is made.
    let opts = CreateOptions {
        network: NetworkMode::User,
        ..CreateOptions::default()
    };
    let err = m.create_with(&config, &opts).unwrap_err();
    eprintln!("create failed as intended: {err}");
    assert!(m.get("rollback-1").is_err(), "row left");
    let left: Vec<_> = fs::read_dir(m.disk_dir())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "disk files left: {left:?}");
    assert!(!m.vm_dir("rollback-1").exists());
}
