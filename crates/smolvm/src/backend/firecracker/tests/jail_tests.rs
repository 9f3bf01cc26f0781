//! The jail without the jailer: its exact argv, the files linked in, the spec as the jailed VMM sees
//! it, and removal (including after a failure half-way).

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::configure_tests::base_spec;
use crate::backend::firecracker::jail::{valid_id, Jail};
use crate::backend::firecracker::FirecrackerError;
use crate::backend::AgentEndpoint;
use crate::vmm_user::VmmUser;

fn jail(dir: &Path) -> Jail {
    Jail {
        jailer: PathBuf::from("/opt/fc/jailer"),
        chroot_base: dir.join("data/jail"),
    }
}

fn strings(argv: Vec<OsString>) -> Vec<String> {
    argv.into_iter().map(|a| a.into_string().unwrap()).collect()
}

#[test]
fn the_jailer_argv_is_exact() {
    let j = Jail {
        jailer: PathBuf::from("/opt/fc/jailer"),
        chroot_base: PathBuf::from("/var/lib/smolvm/jail"),
    };
    let user = VmmUser {
        uid: 1879048200,
        gid: 1879048200,
    };
    assert_eq!(
        strings(j.argv(
            Path::new("/opt/fc/firecracker-v1.16.1"),
            "vm-1234abcd",
            user
        )),
        [
            "/opt/fc/jailer",
            "--id",
            "vm-1234abcd",
            "--exec-file",
            "/opt/fc/firecracker-v1.16.1",
            "--uid",
            "1879048200",
            "--gid",
            "1879048200",
            "--chroot-base-dir",
            "/var/lib/smolvm/jail",
            "--",
            "--api-sock",
            "/api.sock",
        ]
    );
    // The jail is named after the binary's file name, as the jailer names it.
    assert_eq!(
        j.root(Path::new("/opt/fc/firecracker-v1.16.1"), "vm-1"),
        Path::new("/var/lib/smolvm/jail/firecracker-v1.16.1/vm-1/root")
    );
}

#[test]
fn ids_follow_the_jailer_rule() {
    assert!(valid_id("vm-1234abcd"));
    assert!(valid_id(&"a".repeat(64)));
    for bad in ["", "a_b", "a.b", "../x", "a/b", &"a".repeat(65)] {
        assert!(!valid_id(bad), "{bad}");
    }
}

#[test]
fn prepare_links_the_vm_files_in_and_release_removes_the_jail() {
    let d = tempfile::tempdir().unwrap();
    let j = jail(d.path());
    let fc = Path::new("/usr/bin/firecracker");
    let mut spec = base_spec(d.path());
    fs::write(&spec.kernel, b"\x7fELF kernel").unwrap();
    fs::write(&spec.disk, b"disk").unwrap();
    let initrd = d.path().join("initrd.img");
    fs::write(&initrd, b"initrd").unwrap();
    spec.initrd = Some(initrd.clone());
    // A leftover of a killed VMM is replaced.
    let root = j.root(fc, "vm-1");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("stale"), b"x").unwrap();

    let inside = j.prepare(fc, &spec).unwrap();
    assert!(!root.join("stale").exists());
    let ino = |p: &Path| fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&root.join("vmlinux")), ino(&spec.kernel));
    assert_eq!(ino(&root.join("initrd")), ino(&initrd));
    assert_eq!(
        ino(&root.join("rootfs")),
        ino(&spec.disk),
        "the disk itself, never a copy"
    );
    // The API sees the jail's paths; everything else is unchanged.
    assert_eq!(inside.kernel, Path::new("/vmlinux"));
    assert_eq!(inside.initrd.as_deref(), Some(Path::new("/initrd")));
    assert_eq!(inside.disk, Path::new("/rootfs"));
    assert_eq!(
        inside.agent,
        AgentEndpoint::FirecrackerVsock {
            uds_path: PathBuf::from("/vsock.sock"),
            port: 52
        }
    );
    assert_eq!(inside.kernel_cmdline, spec.kernel_cmdline);
    assert_eq!(inside.console_log, spec.console_log);

    j.release(fc, "vm-1").unwrap();
    assert!(!j.dir(fc, "vm-1").exists());
    // The VM's files stay where they were.
    assert_eq!(fs::read(&spec.disk).unwrap(), b"disk");
    assert_eq!(fs::read(&spec.kernel).unwrap(), b"\x7fELF kernel");
    // Absent is fine.
    j.release(fc, "vm-1").unwrap();
}

#[test]
fn a_failing_prepare_leaves_no_jail_and_a_bad_id_touches_nothing() {
    let d = tempfile::tempdir().unwrap();
    let j = jail(d.path());
    let fc = Path::new("/usr/bin/firecracker");
    let spec = base_spec(d.path());
    fs::write(&spec.kernel, b"\x7fELF kernel").unwrap();
    // No disk: linking it fails after the kernel was linked in.
    let err = j.prepare(fc, &spec).unwrap_err();
    assert!(matches!(err, FirecrackerError::File { .. }), "{err}");
    assert!(!j.dir(fc, "vm-1").exists());

    let bad = crate::backend::LaunchSpec {
        vm_id: "../../etc".into(),
        ..spec
    };
    assert!(matches!(
        j.prepare(fc, &bad),
        Err(FirecrackerError::JailId { .. })
    ));
    j.release(fc, "../../etc").unwrap();
    let made: Vec<_> = fs::read_dir(j.chroot_base.join("firecracker"))
        .unwrap()
        .collect();
    assert!(made.is_empty(), "{made:?}");
    assert!(!d.path().join("data/etc").exists());
}
