//! Against a real `firecracker` binary, when one is available (`SMOLVM_FIRECRACKER_BIN`, else `PATH`):
//! the binary must accept the whole configuration and `InstanceStart`, and stop plus cleanup must leave
//! no process and no socket behind. A guest need not boot.
//!
//! Without a binary the test is skipped, even under `SMOLVM_E2E=1` (it runs only where Firecracker is
//! installed). With a binary it also needs `/dev/kvm` and an ELF vmlinux in
//! `SMOLVM_FIRECRACKER_KERNEL`; under `SMOLVM_E2E=1` their absence is a failure.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use super::configure_tests::base_spec;
use crate::backend::firecracker::api::InstanceInfo;
use crate::backend::firecracker::backend::remove_sockets;
use crate::backend::firecracker::{ApiClient, FirecrackerBackend};
use crate::backend::Backend;

fn firecracker_binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("SMOLVM_FIRECRACKER_BIN").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(bin));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("firecracker"))
        .find(|p| p.is_file())
}

/// Skips (or fails under `SMOLVM_E2E=1`) for a missing prerequisite other than the binary.
fn missing(what: &str) {
    if std::env::var("SMOLVM_E2E").as_deref() == Ok("1") {
        panic!("SMOLVM_E2E=1 and firecracker is available, but {what}");
    }
    eprintln!("skipping the real Firecracker test: {what}");
}

/// The error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

#[test]
fn real_firecracker_accepts_the_configuration_and_instance_start() {
    let Some(binary) = firecracker_binary() else {
        eprintln!(
            "skipping the real Firecracker test: no firecracker binary \
             (set SMOLVM_FIRECRACKER_BIN or put it on PATH)"
        );
        return;
    };
    if fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return missing("/dev/kvm cannot be opened");
    }
    let Some(kernel) = std::env::var_os("SMOLVM_FIRECRACKER_KERNEL").map(PathBuf::from) else {
        return missing("SMOLVM_FIRECRACKER_KERNEL (an ELF vmlinux) is not set");
    };

    let dir = tempfile::tempdir().unwrap();
    let sockets = dir.path().join("sock");
    fs::create_dir(&sockets).unwrap();
    let backend = FirecrackerBackend::new(binary);
    let mut spec = base_spec(dir.path());
    spec.kernel = kernel;
    spec.control_socket = backend.control_socket(&sockets, "vm-1");
    spec.agent = backend.agent_endpoint(&sockets, "vm-1");
    spec.disk_read_only = true;
    // A blank disk is enough: the guest does not have to get anywhere.
    fs::File::create(&spec.disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();

    let id = backend
        .launch(&spec)
        .unwrap_or_else(|e| panic!("launch failed: {}", chain(&e)));
    let info: InstanceInfo = ApiClient::new(&spec.control_socket)
        .get_json("/")
        .unwrap_or_else(|e| panic!("GET / failed: {}", chain(&e)));
    assert_eq!(info.state, "Running");
    assert_eq!(info.id, "vm-1");
    assert!(spec.agent.path().exists(), "the vsock socket was created");

    backend
        .request_shutdown(&spec.control_socket)
        .unwrap_or_else(|e| panic!("SendCtrlAltDel failed: {}", chain(&e)));
    // The guest may ignore Ctrl+Alt+Del (it may not even have booted): kill after a grace period,
    // as the manager does.
    if !id.wait_gone(Duration::from_secs(3)) {
        assert!(id.kill(), "firecracker survived SIGKILL");
    }
    remove_sockets(&spec.control_socket, &spec.agent).unwrap();
    assert!(!id.is_alive());
    let left: Vec<PathBuf> = fs::read_dir(&sockets)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left, Vec::<PathBuf>::new(), "nothing may be left behind");
}

/// The same through a real `jailer` (found as the manager finds it: `SMOLVM_JAILER_BIN`, beside
/// `firecracker`, or on `PATH`), as root with an unprivileged VMM user: configuration and
/// `InstanceStart` accepted by the jailed VMM, the VMM running as that user, and after stop and
/// release no process, socket or jail left. Skipped with its reason where there is no binary (no
/// Firecracker backend is a prerequisite here, so even under `SMOLVM_E2E=1` that is a reported skip).
#[test]
fn real_jailer_runs_firecracker_jailed_and_everything_is_cleaned_up() {
    let Some(binary) = firecracker_binary() else {
        eprintln!(
            "skipping the real jailer test: no firecracker binary \
             (set SMOLVM_FIRECRACKER_BIN or put it on PATH)"
        );
        return;
    };
    let Some(jailer) = crate::backend::firecracker::jail::find_jailer(&binary) else {
        eprintln!(
            "skipping the real jailer test: no jailer binary \
             (set SMOLVM_JAILER_BIN, or put it beside firecracker or on PATH)"
        );
        return;
    };
    if !crate::vmm_user::is_root() {
        return missing("the jailer needs root");
    }
    if fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return missing("/dev/kvm cannot be opened");
    }
    let Some(kernel) = std::env::var_os("SMOLVM_FIRECRACKER_KERNEL").map(PathBuf::from) else {
        return missing("SMOLVM_FIRECRACKER_KERNEL (an ELF vmlinux) is not set");
    };

    let dir = tempfile::tempdir().unwrap();
    let jail = crate::backend::firecracker::jail::Jail {
        jailer,
        chroot_base: dir.path().join("jail"),
    };
    let backend = FirecrackerBackend::jailed(&binary, jail.clone());
    let user = crate::vmm_user::VmmUser::from_id(0x7000_fff0);
    let mut spec = base_spec(dir.path());
    fs::copy(&kernel, &spec.kernel).unwrap();
    spec.control_socket = backend.control_socket(dir.path(), "vm-1");
    spec.agent = backend.agent_endpoint(dir.path(), "vm-1");
    spec.disk_read_only = true;
    spec.run_as = Some(user);
    fs::File::create(&spec.disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    crate::vmm_user::give_file(&spec.disk, user).unwrap();

    let id = backend
        .launch(&spec)
        .unwrap_or_else(|e| panic!("jailed launch failed: {}", chain(&e)));
    let info: InstanceInfo = ApiClient::new(&spec.control_socket)
        .get_json("/")
        .unwrap_or_else(|e| panic!("GET / failed: {}", chain(&e)));
    assert_eq!(info.state, "Running");
    assert_eq!(
        crate::vmm_user::of_process(id.pid),
        Some(user),
        "the jailed VMM runs as the VM's user"
    );
    if !id.wait_gone(Duration::from_secs(1)) {
        assert!(id.kill(), "firecracker survived SIGKILL");
    }
    assert!(id.wait_gone(Duration::from_secs(10)));
    backend.release("vm-1").unwrap();
    assert!(!jail.dir(&binary, "vm-1").exists(), "the jail was removed");
    assert!(!spec.control_socket.exists() && !spec.agent.path().exists());
}
