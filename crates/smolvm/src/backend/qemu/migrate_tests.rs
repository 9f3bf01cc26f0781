//! Pause, resume, save and load against a fake QMP server: the exact command sequence and arguments.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value};

use super::*;
use crate::backend::qemu::{QemuAccel, QMP_TIMEOUT};
use crate::backend::Backend;

const GREETING: &str =
    r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}}, "capabilities": []}}"#;

/// A fake QMP server: answers every command through `answer` (command, arguments, call number) and
/// records `(command, arguments)`; serves any number of connections one after the other.
struct Fake {
    _dir: tempfile::TempDir,
    path: PathBuf,
    log: Arc<Mutex<Vec<(String, Value)>>>,
    _h: JoinHandle<()>,
}

fn fake(answer: impl Fn(&str, &Value, usize) -> Value + Send + 'static) -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = Arc::clone(&log);
    let h = std::thread::spawn(move || {
        let mut n = 0;
        for s in listener.incoming() {
            let s: UnixStream = s.unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            writeln!(w, "{GREETING}").unwrap();
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                let v: Value = serde_json::from_str(&line).unwrap();
                line.clear();
                let cmd = v["execute"].as_str().unwrap().to_string();
                let args = v.get("arguments").cloned().unwrap_or(Value::Null);
                let reply = if cmd == "qmp_capabilities" {
                    json!({"return": {}})
                } else {
                    log2.lock().unwrap().push((cmd.clone(), args.clone()));
                    n += 1;
                    answer(&cmd, &args, n)
                };
                let mut reply = reply;
                reply["id"] = v["id"].clone();
                writeln!(w, "{reply}").unwrap();
            }
        }
    });
    Fake {
        _dir: dir,
        path,
        log,
        _h: h,
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn ok() -> Value {
    json!({"return": {}})
}

fn commands(f: &Fake) -> Vec<String> {
    f.log
        .lock()
        .unwrap()
        .iter()
        .map(|(c, _)| c.clone())
        .collect()
}

fn backend() -> QemuBackend {
    QemuBackend::new("/usr/bin/qemu-system-x86_64", QemuAccel::tcg(None, None))
}

#[test]
fn pause_is_stop_and_resume_is_cont() {
    let f = fake(|_, _, _| ok());
    backend().pause(&f.path).unwrap();
    backend().resume(&f.path).unwrap();
    assert_eq!(commands(&f), ["stop", "cont"]);
}

#[test]
fn save_sets_capabilities_migrates_to_the_file_and_polls() {
    let f = fake(|cmd, _, _| match cmd {
        "query-migrate" => json!({"return": {"status": "completed"}}),
        _ => ok(),
    });
    let dir = tempfile::tempdir().unwrap();
    backend().save_state(&f.path, dir.path()).unwrap();
    let log = f.log.lock().unwrap().clone();
    assert_eq!(log[0].0, "migrate-set-capabilities");
    assert_eq!(log[0].1, capability_args_for_test());
    // The stream file is made by smolvm (root's, 0600) and handed over as a descriptor.
    assert_eq!(log[1], ("add-fd".to_string(), json!({"fdset-id": 2})));
    assert_eq!(log[2].0, "migrate");
    assert_eq!(log[2].1, json!({"uri": "file:/dev/fdset/2"}));
    assert_eq!(log[3].0, "query-migrate");
    assert_eq!(log[4], ("remove-fd".to_string(), json!({"fdset-id": 2})));
    assert_eq!(log.len(), 5);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("vm.migration"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

fn capability_args_for_test() -> Value {
    json!({"capabilities": [{"capability": "mapped-ram", "state": true}]})
}

#[test]
fn a_failed_migration_reports_qemus_reason() {
    let f = fake(|cmd, _, n| match (cmd, n) {
        ("query-migrate", 4) => json!({"return": {"status": "active"}}),
        ("query-migrate", _) => {
            json!({"return": {"status": "failed", "error-desc": "No space left on device"}})
        }
        _ => ok(),
    });
    let dir = tempfile::tempdir().unwrap();
    let err = backend().save_state(&f.path, dir.path()).unwrap_err();
    let chain = chain(&err);
    assert!(chain.contains("No space left on device"), "{chain}");
    assert_eq!(
        commands(&f),
        [
            "migrate-set-capabilities",
            "add-fd",
            "migrate",
            "query-migrate",
            "query-migrate",
            "remove-fd"
        ]
    );
}

#[test]
fn load_sets_capabilities_loads_and_continues_a_paused_guest() {
    let f = fake(|cmd, _, _| match cmd {
        "query-migrate" => json!({"return": {"status": "completed"}}),
        "query-status" => json!({"return": {"status": "paused", "running": false}}),
        _ => ok(),
    });
    let mut q = QmpClient::connect(&f.path, QMP_TIMEOUT).unwrap();
    super::load(&mut q, &super::fdset_uri(), Duration::from_secs(5)).unwrap();
    let log = f.log.lock().unwrap().clone();
    let cmds: Vec<&str> = log.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        cmds,
        [
            "migrate-set-capabilities",
            "migrate-incoming",
            "query-migrate",
            "query-status",
            "cont"
        ]
    );
    assert_eq!(log[1].1, json!({"uri": "file:/dev/fdset/1"}));
}

#[test]
fn restore_argv_is_the_boot_argv_plus_the_stream_fd_and_incoming_defer() {
    let dir = tempfile::tempdir().unwrap();
    let spec = crate::backend::LaunchSpec {
        store: None,
        cgroup_procs: Vec::new(),
        run_as: None,
        vm_id: "f1".into(),
        vcpu_count: 2,
        mem_size_mib: 512,
        kernel: dir.path().join("k"),
        initrd: None,
        kernel_cmdline: "console=ttyS0".into(),
        disk: dir.path().join("d.qcow2"),
        disk_read_only: false,
        net: None,
        control_socket: dir.path().join("f1.qmp"),
        agent: crate::backend::AgentEndpoint::UnixSocket(dir.path().join("f1.agent")),
        console_log: dir.path().join("c.log"),
        vmm_log: dir.path().join("v.log"),
    };
    let b = backend();
    let boot = b.argv(&spec);
    let restore = super::restore_argv(&b, &spec, 9, None);
    assert_eq!(&restore[..boot.len()], &boot[..]);
    assert_eq!(
        &restore[boot.len()..],
        ["-add-fd", "fd=9,set=1", "-incoming", "defer"]
    );
}

#[test]
fn a_qcow2_overlay_is_attached_as_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = crate::backend::LaunchSpec {
        store: None,
        cgroup_procs: Vec::new(),
        run_as: None,
        vm_id: "f1".into(),
        vcpu_count: 1,
        mem_size_mib: 256,
        kernel: dir.path().join("k"),
        initrd: None,
        kernel_cmdline: String::new(),
        disk: dir.path().join("f1.qcow2"),
        disk_read_only: false,
        net: None,
        control_socket: dir.path().join("f1.qmp"),
        agent: crate::backend::AgentEndpoint::UnixSocket(dir.path().join("f1.agent")),
        console_log: dir.path().join("c.log"),
        vmm_log: dir.path().join("v.log"),
    };
    let drive = |spec: &crate::backend::LaunchSpec| {
        let argv = backend().argv(spec);
        let i = argv.iter().position(|a| a == "-drive").unwrap();
        argv[i + 1].to_string_lossy().into_owned()
    };
    assert!(drive(&spec).starts_with("id=root,format=qcow2,if=none,file="));
    spec.disk = dir.path().join("f1.ext4");
    assert!(drive(&spec).starts_with("id=root,format=raw,if=none,file="));
}
