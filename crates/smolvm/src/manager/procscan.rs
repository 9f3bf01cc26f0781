//! Finding VMM processes by their command line, for `cleanup`: every QEMU smolvm starts names its QMP
//! socket `<socket_dir>/<vm_id>.qmp` in a `-chardev ...,path=` option, and every Firecracker its API
//! socket `<socket_dir>/<vm_id>.fc.sock` after `--api-sock`. That names the VM and the socket directory
//! without any state, which is what a crash leaves us with. The store that owns a VMM is named by the
//! [`STORE_ENV`] variable in its environment (`/proc/<pid>/environ`); the socket directory alone proves
//! nothing, since several stores may share one.
//!
//! A Firecracker started through its jailer is the exception: the jailer clears the environment and
//! the VMM sees only its chroot, so its command line is `firecracker --id <vm_id> ... --api-sock
//! /api.sock`. It is recognised by that, and its real uid (the VM's own VMM user) is kept so that a
//! store can prove it is its own: the uid leased to that VM id in its state (see
//! `SmolVmManager::own_vmms`).

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
    /// For a jailed Firecracker (control socket `/api.sock` inside its chroot): the uid it runs as.
    pub jailed_uid: Option<u32>,
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
        let argv = split_cmdline(&cmdline);
        let (backend, control_socket, vm_id, jailed) = match parse_vmm_argv(&argv) {
            Some((backend, socket, id)) => (backend, socket, id, false),
            None => match jailed_firecracker_vm(&argv) {
                Some(id) => (BackendKind::Firecracker, jailed_api_socket(), id, true),
                None => continue,
            },
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
                jailed_uid: jailed
                    .then(|| std::fs::read_to_string(dir.join("status")).ok())
                    .flatten()
                    .and_then(|st| crate::vmm_user::of_status(&st))
                    .map(|u| u.uid),
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
        let path = PathBuf::from(option_value(argv, "--api-sock")?);
        socket_vm(path, FC_SUFFIX).map(|(p, id)| (BackendKind::Firecracker, p, id))
    } else {
        None
    }
}

/// The API socket of a jailed Firecracker as it sees it (inside its chroot).
fn jailed_api_socket() -> PathBuf {
    Path::new("/").join(crate::backend::firecracker::jail::API_SOCKET)
}

/// If `argv` is a jailed Firecracker's (`--api-sock /api.sock` and the jailer's `--id`), its VM id.
pub(crate) fn jailed_firecracker_vm(argv: &[OsString]) -> Option<String> {
    if Path::new(argv.first()?).file_name()?.as_bytes() != b"firecracker" {
        return None;
    }
    if Path::new(&option_value(argv, "--api-sock")?) != jailed_api_socket() {
        return None;
    }
    let id = option_value(argv, "--id")?.into_string().ok()?;
    validate_vm_id(&id).ok()?;
    Some(id)
}

/// The value of the first `--name VALUE` or `--name=VALUE` in `argv` after the program.
fn option_value(argv: &[OsString], name: &str) -> Option<OsString> {
    let mut args = argv.get(1..)?.iter();
    while let Some(a) = args.next() {
        match a.as_bytes().strip_prefix(name.as_bytes()) {
            Some(b"") => return args.next().cloned(),
            Some(rest) if rest.starts_with(b"=") => {
                return Some(OsString::from_vec(rest[1..].to_vec()))
            }
            _ => {}
        }
    }
    None
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
#[path = "procscan_tests.rs"]
mod tests;
