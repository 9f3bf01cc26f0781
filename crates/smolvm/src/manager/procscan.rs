//! Finding VMM processes by their command line, for `cleanup`: every QEMU smolvm starts names its QMP
//! socket `<socket_dir>/<vm_id>.qmp` in a `-chardev ...,path=` option, and every Firecracker its API
//! socket `<socket_dir>/<vm_id>.fc.sock` after `--api-sock`. That names the VM and the socket directory
//! without any state, which is what a crash leaves us with. The store that owns a VMM is named by the
//! [`STORE_ENV`] variable in its environment (`/proc/<pid>/environ`); the socket directory alone proves
//! nothing, since several stores may share one.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::config::{validate_vm_id, BackendKind};
use crate::dirs::STORE_ENV;
use crate::process::{parse_proc_stat, ProcessIdentity};

/// Control socket suffix of QEMU VMs.
pub(crate) const QMP_SUFFIX: &str = ".qmp";
/// Control socket suffix of Firecracker VMs.
pub(crate) const FC_SUFFIX: &str = ".fc.sock";

/// A VMM process found in `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VmmProcess {
    /// The process (pid and start time, for a kill that never hits a reused pid).
    pub identity: ProcessIdentity,
    /// Which VMM.
    pub backend: BackendKind,
    /// The VM its control socket names.
    pub vm_id: String,
    /// The control socket on its command line.
    pub control_socket: PathBuf,
    /// The store (canonical data directory) its environment names; `None` if unmarked or unreadable.
    pub store: Option<PathBuf>,
}

impl VmmProcess {
    /// True if this VMM provably belongs to the store `store` with sockets in `socket_dir`: its
    /// environment names the store and its control socket lies in the directory.
    pub(crate) fn belongs_to(&self, store: &Path, socket_dir: &Path) -> bool {
        self.store.as_deref() == Some(store) && self.control_socket.parent() == Some(socket_dir)
    }
}

/// All live (non-zombie) smolvm VMM processes under `proc_root` (`/proc`, or a fake tree in tests).
/// Processes that vanish or cannot be read while scanning are skipped.
pub(crate) fn scan_vmm_processes(proc_root: &Path) -> Vec<VmmProcess> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let Some((backend, control_socket, vm_id)) = parse_vmm_argv(&split_cmdline(&cmdline))
        else {
            continue;
        };
        let stat = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|t| parse_proc_stat(&t));
        match stat {
            Some(s) if s.state != 'Z' && s.state != 'X' => out.push(VmmProcess {
                identity: ProcessIdentity {
                    pid,
                    start_time: s.start_time,
                },
                backend,
                vm_id,
                control_socket,
                store: std::fs::read(dir.join("environ"))
                    .ok()
                    .and_then(|env| store_of_environ(&env)),
            }),
            _ => {}
        }
    }
    out.sort_by_key(|p| p.identity.pid);
    out
}

/// `/proc/<pid>/cmdline`: arguments separated (and ended) by NUL.
pub(crate) fn split_cmdline(bytes: &[u8]) -> Vec<OsString> {
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect()
}

/// The [`STORE_ENV`] value of a `/proc/<pid>/environ` (NUL-separated `KEY=VALUE`), if set.
pub(crate) fn store_of_environ(bytes: &[u8]) -> Option<PathBuf> {
    let prefix = format!("{STORE_ENV}=");
    split_cmdline(bytes).into_iter().find_map(|kv| {
        let value = kv.as_bytes().strip_prefix(prefix.as_bytes())?;
        (!value.is_empty()).then(|| PathBuf::from(OsString::from_vec(value.to_vec())))
    })
}

/// If `argv` is a smolvm VMM's, its backend, control socket and VM id. The program is recognised by
/// the base name of `argv[0]` (`qemu-system-*`, `firecracker`).
pub(crate) fn parse_vmm_argv(argv: &[OsString]) -> Option<(BackendKind, PathBuf, String)> {
    let program = Path::new(argv.first()?).file_name()?.as_bytes();
    if program.starts_with(b"qemu-system") {
        argv[1..]
            .iter()
            .flat_map(|a| qemu_opts(a.as_bytes()))
            .filter_map(|o| o.strip_prefix(b"path=").map(<[u8]>::to_vec))
            .find_map(|p| socket_vm(PathBuf::from(OsString::from_vec(p)), QMP_SUFFIX))
            .map(|(path, id)| (BackendKind::Qemu, path, id))
    } else if program == b"firecracker" {
        let mut args = argv[1..].iter();
        while let Some(a) = args.next() {
            let value = match a.as_bytes().strip_prefix(b"--api-sock") {
                Some(b"") => args.next().map(|v| v.as_bytes().to_vec()),
                Some(rest) => rest.strip_prefix(b"=").map(<[u8]>::to_vec),
                None => None,
            };
            if let Some(v) = value {
                let path = PathBuf::from(OsString::from_vec(v));
                return socket_vm(path, FC_SUFFIX).map(|(p, id)| (BackendKind::Firecracker, p, id));
            }
        }
        None
    } else {
        None
    }
}

/// The VM id of a control socket path `<dir>/<vm_id><suffix>`, if it is one.
fn socket_vm(path: PathBuf, suffix: &str) -> Option<(PathBuf, String)> {
    let name = path.file_name()?.to_str()?;
    let id = name.strip_suffix(suffix)?.to_string();
    validate_vm_id(&id).ok()?;
    Some((path, id))
}

/// Splits a QEMU option string on `,`; QEMU writes a literal comma as `,,`.
fn qemu_opts(arg: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = arg.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        if b != b',' {
            cur.push(b);
        } else if bytes.peek() == Some(&b',') {
            bytes.next();
            cur.push(b',');
        } else {
            out.push(std::mem::take(&mut cur));
        }
    }
    out.push(cur);
    out
}

/// The VM id of a socket-directory entry smolvm creates (`<id>.qmp`, `<id>.agent`, `<id>.fc.sock`,
/// `<id>.vsock` and Firecracker's per-port `<id>.vsock_<port>`), if `name` is one.
pub(crate) fn socket_file_vm(name: &OsStr) -> Option<&str> {
    let name = name.to_str()?;
    let id = [
        QMP_SUFFIX,
        ".agent",
        crate::channel::SOCKET_SUFFIX,
        FC_SUFFIX,
        ".vsock",
    ]
    .iter()
    .find_map(|s| name.strip_suffix(s))
    .or_else(|| {
        let (stem, port) = name.rsplit_once(".vsock_")?;
        port.bytes().all(|b| b.is_ascii_digit()).then_some(stem)
    })?;
    validate_vm_id(id).ok().map(|_| id)
}

#[cfg(test)]
mod tests {
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

    /// A fake /proc: one QEMU, one zombie QEMU, one Firecracker, one unrelated process, one
    /// unreadable entry and a non-pid directory.
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
                },
            ]
        );
        assert!(scan_vmm_processes(&root.path().join("missing")).is_empty());
    }
}
