//! The launch path with a real process: a stand-in `firecracker` (a static shell script that re-runs
//! this test binary's [`fake_firecracker_process`] "test" as an API server) exercises spawning, waiting
//! for the socket, configuring, shutdown, and the kill-and-clean-up path on every kind of failure.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::configure_tests::base_spec;
use super::fake_server::{FakeServer, Reply};
use crate::backend::firecracker::backend::{remove_sockets, SOCKET_WAIT};
use crate::backend::firecracker::{FirecrackerBackend, FirecrackerError};
use crate::backend::{Backend, BackendError, LaunchSpec, NetAttachment};
use crate::process::ProcessIdentity;

const FAKE_TEST: &str = "backend::firecracker::tests::process_tests::fake_firecracker_process";

/// Writes the executable stand-in `name` (`script`) into `<dir>/bin`, with what it needs beside it: this
/// test binary, the fake's test name and the fake's `mode`. Returns the stand-in's path.
pub(super) fn stand_in(dir: &Path, name: &str, script: &str, mode: &str) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir(&bin).unwrap();
    let path = bin.join(name);
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    let exe = std::env::current_exe().unwrap();
    fs::write(bin.join("exe"), exe.to_str().unwrap()).unwrap();
    fs::write(bin.join("test"), FAKE_TEST).unwrap();
    fs::write(bin.join("mode"), mode).unwrap();
    path
}

/// argv is `--api-sock <path> --id <id>`; the test binary, the test name and the mode sit beside it.
const SCRIPT: &str = r#"#!/bin/sh
# Stand-in for firecracker in smolvm's tests.
dir=$(dirname "$0")
echo "$@" > "$dir/argv"
FAKE_FC_API_SOCK="$2" FAKE_FC_DIR="$dir" exec "$(cat "$dir/exe")" --ignored --exact "$(cat "$dir/test")" --nocapture --test-threads=1
"#;

/// Not a real test: when this binary is started by the stand-in script, it serves a fake API until
/// killed (or until `SendCtrlAltDel`, like a guest that powers off). Otherwise it returns at once.
#[test]
#[ignore = "helper process, not a test: started with --ignored by the stand-in firecracker script"]
fn fake_firecracker_process() {
    let (Some(sock), Some(dir)) = (
        std::env::var_os("FAKE_FC_API_SOCK"),
        std::env::var_os("FAKE_FC_DIR"),
    ) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let jail_root = std::env::var_os("FAKE_FC_ROOT").map(PathBuf::from);
    let jailed = jail_root.is_some();
    let mode = fs::read_to_string(dir.join("mode")).unwrap_or_default();
    let mode = mode.trim().to_string();
    fs::write(dir.join("pid"), std::process::id().to_string()).unwrap();
    println!("fake firecracker: pid {} mode {mode:?}", std::process::id());
    // A test that fails half-way does not kill its stand-in: it exits by itself after a while.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(120));
        std::process::exit(2);
    });
    match mode.as_str() {
        "exit" => std::process::exit(3),
        "no-socket" => loop {
            std::thread::sleep(Duration::from_secs(1));
        },
        _ => {}
    }
    let fail_path = mode.strip_prefix("fail ").map(str::to_string);
    let log = Mutex::new(dir.join("requests.log"));
    let vsock_listeners = Mutex::new(Vec::new());
    let started = std::sync::atomic::AtomicBool::new(false);
    let argv = fs::read_to_string(dir.join("argv")).unwrap_or_default();
    let id = argv
        .split_whitespace()
        .skip_while(|a| *a != "--id")
        .nth(1)
        .unwrap_or("anonymous-instance")
        .to_string();
    let _server = FakeServer::start_at(Path::new(&sock), move |r| {
        let line = format!(
            "{} {} {}\n",
            r.method,
            r.path,
            String::from_utf8_lossy(&r.body)
        );
        let log = log.lock().unwrap();
        let old = fs::read_to_string(&*log).unwrap_or_default();
        fs::write(&*log, old + &line).unwrap();
        if fail_path.as_deref() == Some(r.path.as_str()) {
            println!("fake firecracker: rejecting {}", r.path);
            return Reply::fault(400, &format!("fake fault for {}", r.path));
        }
        if r.method == "GET" && r.path == "/" {
            let state = if started.load(std::sync::atomic::Ordering::SeqCst) {
                "Running"
            } else {
                "Not started"
            };
            let info = serde_json::json!({
                "app_name": "Firecracker", "id": id, "state": state, "vmm_version": "0.0.0-fake"
            });
            return Reply::json(200, &info);
        }
        let body = r.json();
        if r.path == "/serial" && mode == "flood" {
            // A guest printing 2.5 MiB to its console, newest line last.
            use std::io::Write;
            let path = body["serial_out_path"].as_str().unwrap();
            let mut out = fs::OpenOptions::new().append(true).open(path).unwrap();
            for i in 0..2560 {
                out.write_all(format!("{i:>1023}\n").as_bytes()).unwrap();
            }
            out.write_all(b"the end\n").unwrap();
        }
        if r.path == "/actions" && body["action_type"] == "InstanceStart" {
            started.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if r.path == "/actions" && body["action_type"] == "InstanceStart" && jailed {
            // A jailed VMM's serial console is its stdout.
            println!("fake guest console: booted");
        }
        if r.path == "/vsock" {
            // Like Firecracker, create the vsock's host socket (inside its jail when jailed).
            let uds = body["uds_path"].as_str().unwrap();
            let uds = match &jail_root {
                Some(root) => format!("{}{uds}", root.to_string_lossy()),
                None => uds.to_string(),
            };
            let uds = uds.as_str();
            vsock_listeners
                .lock()
                .unwrap()
                .push(UnixListener::bind(uds).unwrap());
        }
        if r.path == "/actions" && body["action_type"] == "SendCtrlAltDel" {
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                std::process::exit(0);
            });
        }
        Reply::no_content()
    });
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    backend: FirecrackerBackend,
    spec: LaunchSpec,
}

impl Fixture {
    fn new(mode: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let script = stand_in(dir.path(), "firecracker", SCRIPT, mode);
        let sockets = dir.path().join("sock");
        fs::create_dir(&sockets).unwrap();

        let backend = FirecrackerBackend::new(script);
        let mut spec = base_spec(dir.path());
        fs::write(&spec.kernel, b"\x7fELF\x02\x01\x01\0not really a kernel").unwrap();
        fs::write(&spec.disk, vec![0u8; 4096]).unwrap();
        spec.control_socket = backend.control_socket(&sockets, "vm-1");
        spec.agent = backend.agent_endpoint(&sockets, "vm-1");
        Fixture { dir, backend, spec }
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.dir.path().join("bin").join(name)
    }

    fn socket_dir_entries(&self) -> Vec<PathBuf> {
        fs::read_dir(self.dir.path().join("sock"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    /// Launches, retrying when exec hits ETXTBSY: another test thread may have forked while the script
    /// was open for writing, and the child holds that descriptor until it execs.
    fn launch(&self, wait: Duration) -> Result<ProcessIdentity, FirecrackerError> {
        for _ in 0..100 {
            match self.backend.launch_with(&self.spec, wait) {
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

    /// The fake's process is gone (it wrote its pid when it started).
    fn assert_fake_gone(&self) {
        let pid: u32 = fs::read_to_string(self.bin("pid"))
            .unwrap()
            .parse()
            .unwrap();
        assert!(!matches!(ProcessIdentity::of(pid), Some(p) if p.is_alive()));
    }
}

#[test]
fn launch_configures_and_starts_then_shutdown_and_cleanup_leave_nothing() {
    let f = Fixture::new("ok");
    // Stale sockets from a crashed run must not stop the launch (a regular file at a socket path is
    // refused instead, as under QEMU: see `backend::remove_socket`).
    drop(std::os::unix::net::UnixListener::bind(&f.spec.control_socket).unwrap());
    drop(std::os::unix::net::UnixListener::bind(f.spec.agent.path()).unwrap());

    let id = f.launch(SOCKET_WAIT).unwrap();
    assert!(id.is_alive());
    let argv = fs::read_to_string(f.bin("argv")).unwrap();
    assert_eq!(
        argv.trim(),
        format!("--api-sock {} --id vm-1", f.spec.control_socket.display())
    );
    let requests: Vec<String> = fs::read_to_string(f.bin("requests.log"))
        .unwrap()
        .lines()
        .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        requests,
        [
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /drives/rootfs",
            "PUT /vsock",
            "PUT /serial",
            "PUT /actions"
        ]
    );
    assert!(f.spec.agent.path().exists());
    // Firecracker writes its console into the keeper's pipe, not into a file by path.
    let serial = fs::read_to_string(f.bin("requests.log")).unwrap();
    let serial = serial
        .lines()
        .find(|l| l.starts_with("PUT /serial"))
        .unwrap();
    assert!(
        serial.contains("\"serial_out_path\":\"/dev/fd/"),
        "{serial}"
    );

    f.backend.request_shutdown(&f.spec.control_socket).unwrap();
    assert!(id.wait_gone(Duration::from_secs(30)));
    remove_sockets(&f.spec.control_socket, &f.spec.agent).unwrap();
    assert_eq!(f.socket_dir_entries(), Vec::<PathBuf>::new());
}

#[test]
fn an_api_fault_kills_the_process_removes_sockets_and_reports_fault_and_log() {
    let f = Fixture::new("fail /actions");
    let err = f.launch(SOCKET_WAIT).unwrap_err();
    let FirecrackerError::Launch {
        vm_id,
        log_tail,
        source,
        ..
    } = &err
    else {
        panic!("unexpected {err:?}");
    };
    assert_eq!(vm_id, "vm-1");
    assert!(log_tail.contains("rejecting /actions"), "{log_tail}");
    assert!(
        matches!(&**source, FirecrackerError::Api { status: 400, fault_message, .. } if fault_message == "fake fault for /actions"),
        "{source:?}"
    );
    f.assert_fake_gone();
    // The vsock socket existed (PUT /vsock succeeded) and is gone too.
    assert_eq!(f.socket_dir_entries(), Vec::<PathBuf>::new());
    // Through the trait the error keeps its chain.
    let backend_err = BackendError::from(err);
    let chain = std::error::Error::source(&backend_err).map(|e| e.to_string());
    assert!(chain.unwrap().contains("fake fault for /actions"));
}

#[test]
fn a_process_that_exits_early_is_reported_with_its_log() {
    let f = Fixture::new("exit");
    let err = f.launch(SOCKET_WAIT).unwrap_err();
    let FirecrackerError::Launch {
        log_tail, source, ..
    } = &err
    else {
        panic!("unexpected {err:?}");
    };
    assert!(matches!(**source, FirecrackerError::Exited), "{source:?}");
    assert!(log_tail.contains("fake firecracker: pid"), "{log_tail}");
    assert_eq!(f.socket_dir_entries(), Vec::<PathBuf>::new());
}

#[test]
fn a_socket_that_never_appears_times_out_and_the_process_is_killed() {
    let f = Fixture::new("no-socket");
    let err = f.launch(Duration::from_millis(500)).unwrap_err();
    let FirecrackerError::Launch { source, .. } = &err else {
        panic!("unexpected {err:?}");
    };
    assert!(
        matches!(**source, FirecrackerError::SocketNotReady { .. }),
        "{source:?}"
    );
    f.assert_fake_gone();
}

#[test]
fn a_missing_binary_is_a_spawn_error() {
    let mut f = Fixture::new("ok");
    f.backend = FirecrackerBackend::new(f.dir.path().join("no-such-firecracker"));
    let err = f.launch(SOCKET_WAIT).unwrap_err();
    assert!(matches!(err, FirecrackerError::Spawn { .. }), "{err:?}");
    assert_eq!(f.socket_dir_entries(), Vec::<PathBuf>::new());
}

/// Which error a case expects.
type Expect = fn(&FirecrackerError) -> bool;

#[test]
fn preflight_failures_start_nothing() {
    let mut cases: Vec<(Fixture, Expect)> = Vec::new();

    let mut f = Fixture::new("ok");
    f.spec.net = Some(NetAttachment::User {
        mac: "06:00:ac:10:00:02".into(),
        guest_ip: "10.0.2.15".parse().unwrap(),
        ssh_host_port: None,
    });
    cases.push((f, |e| matches!(e, FirecrackerError::UnsupportedNetwork)));

    let f = Fixture::new("ok");
    fs::write(&f.spec.kernel, b"MZ\0\0 a bzImage").unwrap();
    cases.push((f, |e| matches!(e, FirecrackerError::KernelNotElf { .. })));

    let f = Fixture::new("ok");
    fs::remove_file(&f.spec.kernel).unwrap();
    cases.push((f, |e| matches!(e, FirecrackerError::File { .. })));

    let mut f = Fixture::new("ok");
    let long = f.dir.path().join("s".repeat(100));
    f.spec.control_socket = f.backend.control_socket(&long, "vm-1");
    cases.push((f, |e| {
        matches!(e, FirecrackerError::SocketPathTooLong { .. })
    }));

    for (f, expected) in cases {
        let err = f.launch(SOCKET_WAIT).unwrap_err();
        assert!(expected(&err), "{err:?}");
        assert!(!f.bin("argv").exists(), "nothing may be started");
        assert!(!f.spec.console_log.exists(), "nothing may be created");
    }
}

#[test]
fn the_console_goes_through_the_keeper_and_is_capped() {
    use crate::backend::console_keeper::{rotated_path, CONSOLE_LOG_MAX};
    let f = Fixture::new("flood");
    fs::write(&f.spec.console_log, b"an earlier boot\n").unwrap();
    let id = f.launch(SOCKET_WAIT).unwrap();
    f.backend.request_shutdown(&f.spec.control_socket).unwrap();
    assert!(id.wait_gone(Duration::from_secs(30)));
    // The keeper exits once the VMM (the pipe's only writer) is gone; wait for its last write.
    let log = &f.spec.console_log;
    let mut current = Vec::new();
    for _ in 0..500 {
        current = fs::read(log).unwrap_or_default();
        if current.ends_with(b"the end\n") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(current.ends_with(b"the end\n"), "newest output kept");
    assert!(current.len() as u64 <= CONSOLE_LOG_MAX, "{}", current.len());
    let previous = fs::read(rotated_path(log)).unwrap();
    assert!(!previous.is_empty() && previous.len() as u64 <= CONSOLE_LOG_MAX);
    // 2.5 MiB went in; at most twice the cap is on disk.
    assert!((current.len() + previous.len()) as u64 <= 2 * CONSOLE_LOG_MAX);
    remove_sockets(&f.spec.control_socket, &f.spec.agent).unwrap();
}
