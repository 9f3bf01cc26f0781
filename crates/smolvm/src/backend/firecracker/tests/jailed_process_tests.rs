//! The jailed launch path with a real process: a stand-in `jailer` (a shell script that makes the jail
//! root as the jailer would and then runs this test binary's fake Firecracker with its API socket
//! inside it) checks the jailer's argv, the requests as the jailed VMM sees them, the console on
//! stdout, and that the jail goes when the VMM is gone or the launch fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::configure_tests::base_spec;
use super::process_tests::stand_in;
use crate::backend::firecracker::backend::SOCKET_WAIT;
use crate::backend::firecracker::jail::Jail;
use crate::backend::firecracker::{FirecrackerBackend, FirecrackerError};
use crate::backend::{Backend, LaunchSpec};
use crate::process::ProcessIdentity;
use crate::vmm_user::VmmUser;

/// Parses the jailer's options, makes `<base>/<exec name>/<id>/root`, and runs the fake there.
const JAILER: &str = r#"#!/bin/sh
# Stand-in for the jailer in smolvm's tests.
dir=$(dirname "$0")
echo "$@" > "$dir/jailer-argv"
while [ $# -gt 0 ]; do
  case "$1" in
    --id) id=$2; shift 2;;
    --exec-file) exec_file=$2; shift 2;;
    --chroot-base-dir) base=$2; shift 2;;
    --) shift; break;;
    *) shift 2;;
  esac
done
root="$base/$(basename "$exec_file")/$id/root"
mkdir -p "$root"
echo "--api-sock $root/api.sock --id $id" > "$dir/argv"
FAKE_FC_API_SOCK="$root/api.sock" FAKE_FC_DIR="$dir" FAKE_FC_ROOT="$root" exec "$(cat "$dir/exe")" --ignored --exact "$(cat "$dir/test")" --nocapture --test-threads=1
"#;

struct Fixture {
    dir: tempfile::TempDir,
    backend: FirecrackerBackend,
    spec: LaunchSpec,
}

impl Fixture {
    fn new(mode: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let jailer = stand_in(dir.path(), "jailer", JAILER, mode);
        let jail = Jail {
            jailer,
            chroot_base: dir.path().join("jail"),
        };
        let backend = FirecrackerBackend::jailed("/usr/bin/firecracker", jail);
        let mut spec = base_spec(dir.path());
        fs::write(&spec.kernel, b"\x7fELF\x02\x01\x01\0not really a kernel").unwrap();
        fs::write(&spec.disk, vec![0u8; 4096]).unwrap();
        let sockets = dir.path().join("sock");
        spec.control_socket = backend.control_socket(&sockets, "vm-1");
        spec.agent = backend.agent_endpoint(&sockets, "vm-1");
        // SAFETY: getuid/getgid have no preconditions.
        spec.run_as = Some(unsafe {
            VmmUser {
                uid: libc::getuid(),
                gid: libc::getgid(),
            }
        });
        Fixture { dir, backend, spec }
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.dir.path().join("bin").join(name)
    }

    fn jail_dir(&self) -> PathBuf {
        self.dir.path().join("jail/firecracker/vm-1")
    }

    /// Launches, retrying while exec hits ETXTBSY (another test thread forked while a script was
    /// open for writing).
    fn launch(&self) -> Result<ProcessIdentity, FirecrackerError> {
        for _ in 0..100 {
            match self.backend.launch_with(&self.spec, SOCKET_WAIT) {
                Err(FirecrackerError::Spawn { source, .. })
                    if source.raw_os_error() == Some(libc::ETXTBSY) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
        panic!("the stand-in script stayed busy");
    }
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..500 {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn a_jailed_vmm_is_configured_with_jail_paths_and_its_jail_goes_with_it() {
    let f = Fixture::new("ok");
    let root = f.jail_dir().join("root");
    assert_eq!(f.spec.control_socket, root.join("api.sock"));
    let id = f.launch().unwrap();
    let (uid, gid) = (f.spec.run_as.unwrap().uid, f.spec.run_as.unwrap().gid);
    assert_eq!(
        fs::read_to_string(f.bin("jailer-argv")).unwrap().trim(),
        format!(
            "--id vm-1 --exec-file /usr/bin/firecracker --uid {uid} --gid {gid} \
             --chroot-base-dir {} -- --api-sock /api.sock",
            f.dir.path().join("jail").display()
        )
    );
    // The VM's files are in the jail; the API names them as the jailed VMM sees them.
    assert!(root.join("vmlinux").is_file() && root.join("rootfs").is_file());
    let log = fs::read_to_string(f.bin("requests.log")).unwrap();
    let paths: Vec<&str> = log
        .lines()
        .map(|l| l.splitn(3, ' ').take(2).collect::<Vec<_>>()[1])
        .collect();
    assert_eq!(
        paths,
        [
            "/machine-config",
            "/boot-source",
            "/drives/rootfs",
            "/vsock",
            "/actions"
        ],
        "no /serial: the console is the VMM's stdout"
    );
    assert!(log.contains(r#""kernel_image_path":"/vmlinux""#), "{log}");
    assert!(log.contains(r#""path_on_host":"/rootfs""#), "{log}");
    assert!(log.contains(r#""uds_path":"/vsock.sock""#), "{log}");
    assert!(f.spec.agent.path().starts_with(&root) && f.spec.agent.path().exists());

    f.backend.request_shutdown(&f.spec.control_socket).unwrap();
    assert!(id.wait_gone(Duration::from_secs(30)));
    // Its stdout went through the console keeper into the console log.
    wait_for("the console output", || {
        fs::read_to_string(&f.spec.console_log).is_ok_and(|c| c.contains("fake guest console"))
    });
    f.backend.release("vm-1").unwrap();
    assert!(!f.jail_dir().exists());
}

#[test]
fn a_failed_jailed_launch_removes_the_jail() {
    let f = Fixture::new("fail /actions");
    let err = f.launch().unwrap_err();
    assert!(matches!(err, FirecrackerError::Launch { .. }), "{err}");
    assert!(!f.jail_dir().exists(), "the jail outlived a failed launch");
    // The disk itself is untouched.
    assert_eq!(fs::read(&f.spec.disk).unwrap().len(), 4096);
}

#[test]
fn a_jailed_launch_needs_the_vm_user_and_creates_nothing_without_it() {
    let mut f = Fixture::new("ok");
    f.spec.run_as = None;
    let err = f.launch().unwrap_err();
    assert!(matches!(err, FirecrackerError::JailNeedsUser), "{err}");
    assert!(!Path::new(&f.dir.path().join("jail")).exists());
    assert!(!f.bin("jailer-argv").exists());
}
