//! Tests of the `/proc` scan: argv recognition, store markers, ownership and a fake `/proc` tree.

use super::*;
use std::fs;

fn argv(words: &[&str]) -> Vec<OsString> {
    words.iter().map(OsString::from).collect()
}

#[test]
fn recognises_qemu_by_its_qmp_chardev() {
    let a = argv(&[
        "/usr/bin/qemu-system-x86_64",
        "-M",
        "microvm",
        "-chardev",
        "socket,id=agent,path=/run/s/vm-1.agent,server=on,wait=off",
        "-chardev",
        "socket,id=qmp,path=/run/s/vm-1.qmp,server=on,wait=off",
    ]);
    assert_eq!(
        parse_vmm_argv(&a),
        Some((BackendKind::Qemu, "/run/s/vm-1.qmp".into(), "vm-1".into()))
    );
    // Commas in the directory are doubled by smolvm's argv builder.
    let a = argv(&[
        "qemu-system-x86_64",
        "-chardev",
        "socket,id=qmp,path=/a,,b/x.qmp,server=on",
    ]);
    assert_eq!(parse_vmm_argv(&a).unwrap().1, PathBuf::from("/a,b/x.qmp"));
}

#[test]
fn recognises_firecracker_by_its_api_socket() {
    for a in [
        argv(&[
            "firecracker",
            "--api-sock",
            "/s/vm-2.fc.sock",
            "--id",
            "vm-2",
        ]),
        argv(&["/opt/bin/firecracker", "--api-sock=/s/vm-2.fc.sock"]),
    ] {
        assert_eq!(
            parse_vmm_argv(&a),
            Some((
                BackendKind::Firecracker,
                "/s/vm-2.fc.sock".into(),
                "vm-2".into()
            ))
        );
    }
}

#[test]
fn recognises_a_jailed_firecracker_by_the_jailers_id_and_its_api_socket() {
    let jailed = |words: &[&str]| jailed_firecracker_vm(&argv(words));
    // As the jailer execs it: `--id` first, its own options, then ours after `--`.
    assert_eq!(
        jailed(&["firecracker", "--id", "vm-3", "--api-sock", "/api.sock"]),
        Some("vm-3".into())
    );
    assert_eq!(
        jailed(&["/firecracker", "--api-sock=/api.sock", "--id=vm-3"]),
        Some("vm-3".into())
    );
    // Not jailed (a host path: the marker and socket dir decide), no id, a bad id, not Firecracker.
    assert_eq!(
        jailed(&[
            "firecracker",
            "--id",
            "vm-3",
            "--api-sock",
            "/s/vm-3.fc.sock"
        ]),
        None
    );
    assert_eq!(jailed(&["firecracker", "--api-sock", "/api.sock"]), None);
    assert_eq!(
        jailed(&["firecracker", "--id", "../x", "--api-sock", "/api.sock"]),
        None
    );
    assert_eq!(
        jailed(&["jailer", "--id", "vm-3", "--api-sock", "/api.sock"]),
        None
    );
    assert_eq!(
        parse_vmm_argv(&argv(&[
            "firecracker",
            "--id",
            "vm-3",
            "--api-sock",
            "/api.sock"
        ])),
        None
    );
}

#[test]
fn ignores_everything_else() {
    for a in [
        argv(&[]),
        argv(&["sleep", "100", "path=/s/vm.qmp"]),
        argv(&[
            "qemu-system-x86_64",
            "-chardev",
            "socket,id=mon,path=/s/monitor.sock",
        ]),
        argv(&[
            "qemu-system-x86_64",
            "-chardev",
            "socket,path=/s/Bad_Id.qmp",
        ]),
        argv(&["firecracker", "--api-sock"]),
        argv(&["firecracker", "--api-sock", "/s/api.socket"]),
        argv(&["not-qemu-system", "-chardev", "socket,path=/s/vm.qmp"]),
    ] {
        assert_eq!(parse_vmm_argv(&a), None, "{a:?}");
    }
}

#[test]
fn the_store_marker_is_read_from_the_environment() {
    assert_eq!(
        store_of_environ(b"A=1\0SMOLVM_STORE=/d/x y\0B=2\0"),
        Some(PathBuf::from("/d/x y"))
    );
    assert_eq!(store_of_environ(b"SMOLVM_STORE=\0"), None);
    assert_eq!(store_of_environ(b"XSMOLVM_STORE=/d\0"), None);
    assert_eq!(store_of_environ(b""), None);
}

#[test]
fn ownership_needs_the_marker_and_the_socket_dir() {
    let p = |store: Option<&str>, sock: &str| VmmProcess {
        identity: ProcessIdentity {
            pid: 1,
            start_time: 1,
        },
        backend: BackendKind::Qemu,
        vm_id: "x".into(),
        control_socket: sock.into(),
        store: store.map(PathBuf::from),
        jailed_uid: None,
    };
    let (store, dir) = (Path::new("/data/a"), Path::new("/s"));
    assert!(p(Some("/data/a"), "/s/x.qmp").belongs_to(store, dir));
    // Another store's VMM with its socket in the same directory (the shared default of old).
    assert!(!p(Some("/data/b"), "/s/x.qmp").belongs_to(store, dir));
    // No marker: unprovable, so never ours.
    assert!(!p(None, "/s/x.qmp").belongs_to(store, dir));
    assert!(!p(Some("/data/a"), "/t/x.qmp").belongs_to(store, dir));
}

#[test]
fn cmdline_bytes_split_on_nul() {
    assert_eq!(
        split_cmdline(b"a\0b c\0\0d\0"),
        argv(&["a", "b c", "", "d"])
    );
    assert!(split_cmdline(b"").is_empty());
}

#[test]
fn socket_files_name_their_vm() {
    for (name, id) in [
        ("vm-1.qmp", Some("vm-1")),
        ("vm-1.agent", Some("vm-1")),
        ("vm-1.chan", Some("vm-1")),
        ("vm-1.fc.sock", Some("vm-1")),
        ("vm-1.vsock", Some("vm-1")),
        ("vm-1.vsock_1024", Some("vm-1")),
        ("vm-1.vsock_x", None),
        ("notes.txt", None),
        ("BAD.qmp", None),
        (".qmp", None),
    ] {
        assert_eq!(socket_file_vm(OsStr::new(name)), id, "{name}");
    }
}

/// A fake /proc: one QEMU, one zombie QEMU, one Firecracker, one jailed Firecracker, one unrelated
/// process, one unreadable entry and a non-pid directory.
#[test]
fn scans_a_proc_tree() {
    let root = tempfile::tempdir().unwrap();
    let stat = |state: char, start: u64| {
        format!("1 (x y) {state} 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0")
    };
    let add = |pid: &str, cmd: &[u8], st: Option<String>| {
        let d = root.path().join(pid);
        fs::create_dir(&d).unwrap();
        fs::write(d.join("cmdline"), cmd).unwrap();
        if pid == "10" {
            fs::write(d.join("environ"), b"PATH=/bin\0SMOLVM_STORE=/data/a\0").unwrap();
        }
        if let Some(s) = st {
            fs::write(d.join("stat"), s).unwrap();
        }
    };
    add(
        "10",
        b"qemu-system-x86_64\0-chardev\0socket,id=qmp,path=/s/a.qmp\0",
        Some(stat('S', 500)),
    );
    add(
        "11",
        b"qemu-system-x86_64\0-chardev\0socket,path=/s/z.qmp\0",
        Some(stat('Z', 501)),
    );
    add(
        "12",
        b"firecracker\0--api-sock\0/t/b.fc.sock\0",
        Some(stat('R', 502)),
    );
    add("13", b"bash\0-c\0true\0", Some(stat('S', 503)));
    add(
        "14",
        b"qemu-system-x86_64\0-chardev\0socket,path=/s/gone.qmp\0",
        None,
    );
    add(
        "15",
        b"firecracker\0--id\0j\0--start-time-us\0x123\0--api-sock\0/api.sock\0",
        Some(stat('S', 504)),
    );
    fs::write(
        root.path().join("15/status"),
        "Name:\tfirecracker\nUid:\t1879048199\t1879048199\t1879048199\t1879048199\nGid:\t1879048199\t1879048199\t1879048199\t1879048199\n",
    )
    .unwrap();
    fs::create_dir(root.path().join("self-not-a-pid")).unwrap();
    let found = scan_vmm_processes(root.path());
    assert_eq!(
        found,
        [
            VmmProcess {
                identity: ProcessIdentity {
                    pid: 10,
                    start_time: 500
                },
                backend: BackendKind::Qemu,
                vm_id: "a".into(),
                control_socket: "/s/a.qmp".into(),
                store: Some("/data/a".into()),
                jailed_uid: None,
            },
            VmmProcess {
                identity: ProcessIdentity {
                    pid: 12,
                    start_time: 502
                },
                backend: BackendKind::Firecracker,
                vm_id: "b".into(),
                control_socket: "/t/b.fc.sock".into(),
                store: None,
                jailed_uid: None,
            },
            VmmProcess {
                identity: ProcessIdentity {
                    pid: 15,
                    start_time: 504
                },
                backend: BackendKind::Firecracker,
                vm_id: "j".into(),
                control_socket: "/api.sock".into(),
                store: None,
                jailed_uid: Some(1879048199),
            },
        ]
    );
    assert!(scan_vmm_processes(&root.path().join("missing")).is_empty());
}
