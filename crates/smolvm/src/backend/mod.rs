//! Virtual machine monitors behind one small trait, so the manager never knows which one it drives and
//! unit tests can check the exact QEMU argv or Firecracker request sequence without a VM.

pub(crate) mod console_keeper;
pub(crate) mod firecracker;
pub(crate) mod qemu;

use std::path::{Path, PathBuf};

use crate::config::BackendKind;
use crate::process::ProcessIdentity;

/// Longest Unix socket path the kernel accepts (`sun_path` holds 108 bytes including the NUL).
pub(crate) const SUN_PATH_MAX: usize = 107;

/// A socket path that does not fit in `sun_path` (both VMMs bind their sockets by path).
#[derive(Debug, thiserror::Error)]
#[error(
    "socket path {} is {len} bytes, longer than the {SUN_PATH_MAX} bytes Unix sockets allow: use a \
     shorter socket directory",
    path.display()
)]
pub struct SocketPathTooLong {
    /// The path.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: usize,
}

/// Refuses socket paths longer than [`SUN_PATH_MAX`] bytes.
pub(crate) fn check_socket_path(path: &Path) -> Result<(), SocketPathTooLong> {
    let len = path.as_os_str().len();
    if len > SUN_PATH_MAX {
        return Err(SocketPathTooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    Ok(())
}

/// Why a VMM's socket file could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveSocketError {
    /// Something other than a socket sits where a socket must be: never removed.
    #[error("{} exists and is not a socket; refusing to remove it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The socket could not be removed.
    #[error("cannot remove stale socket {}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Removes the socket file a VMM left at `path` (VMMs do not always remove theirs, and never when
/// killed). Absent is fine; anything that is not a socket is left alone and refused. The one socket
/// removal of the backends and the manager.
pub(crate) fn remove_socket(path: &Path) -> Result<(), RemoveSocketError> {
    use std::os::unix::fs::FileTypeExt;
    let io = |source| RemoveSocketError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(e)),
        Ok(m) if !m.file_type().is_socket() => Err(RemoveSocketError::NotASocket {
            path: path.to_path_buf(),
        }),
        Ok(_) => match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
            _ => Ok(()),
        },
    }
}

/// Everything a backend needs to boot one VM. Paths are final (the disk is already cloned, the sockets'
/// directory exists); the backend only assembles its own configuration from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    /// VM id (used for names and logs).
    pub vm_id: String,
    /// Virtual CPUs.
    pub vcpu_count: u32,
    /// Guest memory in MiB.
    pub mem_size_mib: u32,
    /// Kernel: a bzImage for QEMU, an uncompressed ELF vmlinux for Firecracker.
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initrd: Option<PathBuf>,
    /// The complete kernel command line (config boot args plus smolvm's own parameters).
    pub kernel_cmdline: String,
    /// Root disk image.
    pub disk: PathBuf,
    /// Attach the root disk read-only.
    pub disk_read_only: bool,
    /// Network interface, if the VM has networking.
    pub net: Option<NetAttachment>,
    /// The VMM's control socket: QMP for QEMU, the API socket for Firecracker.
    pub control_socket: PathBuf,
    /// Host side of the agent channel.
    pub agent: AgentEndpoint,
    /// Guest serial console output.
    pub console_log: PathBuf,
    /// VMM stdout/stderr.
    pub vmm_log: PathBuf,
    /// The store (canonical data directory) that owns this VMM, set in its environment as
    /// [`crate::dirs::STORE_ENV`] so `cleanup` can prove ownership from `/proc` alone. `None`: no marker.
    pub store: Option<PathBuf>,
    /// `cgroup.procs` files of the VM's host cgroup(s) (see [`crate::cgroup`]) that the VMM enters
    /// before it execs, so it never runs guest code unbounded. Empty: no group.
    pub cgroup_procs: Vec<PathBuf>,
    /// The unprivileged user the VMM switches to once it has opened its files and devices, before
    /// the guest runs (see [`crate::vmm_user`]). `None`: it runs as the caller.
    pub run_as: Option<crate::vmm_user::VmmUser>,
}

impl LaunchSpec {
    /// Marks `cmd` (the VMM's command) with the owning store, if any, and makes it enter the VM's
    /// cgroups between fork and exec. A group that cannot be opened fails the spawn with that error.
    pub fn mark_owner(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        if let Some(store) = &self.store {
            cmd.env(crate::dirs::STORE_ENV, store);
        }
        if self.cgroup_procs.is_empty() {
            return;
        }
        let files = crate::cgroup::open_procs(&self.cgroup_procs).map_err(|e| e.raw_os_error());
        // SAFETY: the closure only calls write(2) (or builds an error from an errno): async-signal-safe.
        unsafe {
            cmd.pre_exec(move || match &files {
                Ok(f) => crate::cgroup::enter_in_child(f),
                Err(code) => Err(std::io::Error::from_raw_os_error(code.unwrap_or(libc::EIO))),
            });
        }
    }
}

/// How the guest's network interface is attached on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetAttachment {
    /// A TAP device created by smolvm's network layer.
    Tap {
        /// TAP device name.
        tap: String,
        /// Guest MAC address.
        mac: String,
    },
    /// QEMU user-mode networking (no privileges needed); SSH forwarded from 127.0.0.1.
    User {
        /// Guest MAC address.
        mac: String,
        /// Guest address inside the user-mode network.
        guest_ip: std::net::Ipv4Addr,
        /// Host port on 127.0.0.1 forwarded to the guest's port 22.
        ssh_host_port: Option<u16>,
    },
}

/// The host side of the host<->agent channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEndpoint {
    /// A Unix socket that QEMU listens on and that is wired to a virtio-serial port in the guest:
    /// connect and talk.
    UnixSocket(PathBuf),
    /// Firecracker's vsock device: connect to `uds_path`, send `CONNECT <port>\n`, read `OK <n>\n`.
    FirecrackerVsock {
        /// The vsock device's Unix socket.
        uds_path: PathBuf,
        /// The guest port the agent listens on.
        port: u32,
    },
}

impl AgentEndpoint {
    /// The Unix socket path on the host.
    pub fn path(&self) -> &Path {
        match self {
            AgentEndpoint::UnixSocket(p) => p,
            AgentEndpoint::FirecrackerVsock { uds_path, .. } => uds_path,
        }
    }
}

/// A VMM behind smolvm.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// Starts the VMM detached and boots the guest as `spec` says. Returns once the VMM runs (not when
    /// the guest is ready: the caller waits for the agent). On error nothing is left running.
    fn launch(&self, spec: &LaunchSpec) -> Result<ProcessIdentity, BackendError>;

    /// Asks the guest to power off (ACPI power button for QEMU, Ctrl+Alt+Del for Firecracker). Returns
    /// without waiting; the caller kills the process after its timeout.
    fn request_shutdown(&self, control_socket: &Path) -> Result<(), BackendError>;

    /// Stops the guest's vCPUs; the VMM process stays (QMP `stop`, Firecracker `PATCH /vm` Paused).
    fn pause(&self, control_socket: &Path) -> Result<(), BackendError>;

    /// Runs the vCPUs of a paused guest again (QMP `cont`, Firecracker `PATCH /vm` Resumed).
    fn resume(&self, control_socket: &Path) -> Result<(), BackendError>;

    /// Writes the memory and device state of a **paused** VM into the existing directory `dir` (QEMU:
    /// migration to a file; Firecracker: a full snapshot). The VM stays paused.
    fn save_state(&self, control_socket: &Path, dir: &Path) -> Result<(), BackendError>;

    /// Starts a new VMM for `spec` (same machine shape as the saved VM; own sockets, disk and network)
    /// from the state [`save_state`](Self::save_state) wrote into `dir`, and lets the guest run. On error
    /// nothing is left running.
    fn restore(&self, spec: &LaunchSpec, dir: &Path) -> Result<ProcessIdentity, BackendError>;

    /// The VMM's version line (`QEMU emulator version ...`, `Firecracker v...`): a snapshot is only
    /// restored by the version that wrote it.
    fn vmm_version(&self) -> Result<String, BackendError>;

    /// The agent endpoint for a VM whose sockets live in `socket_dir` under the prefix `vm_id`.
    fn agent_endpoint(&self, socket_dir: &Path, vm_id: &str) -> AgentEndpoint;

    /// The control socket path for a VM.
    fn control_socket(&self, socket_dir: &Path, vm_id: &str) -> PathBuf;

    /// Removes what the backend keeps for `vm_id` beyond its VMM process and sockets (Firecracker's
    /// jail). Call once the VMM is gone; absent is fine.
    fn release(&self, vm_id: &str) -> Result<(), BackendError> {
        let _ = vm_id;
        Ok(())
    }
}

/// Errors of the VMM backends.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// QEMU failed.
    #[error(transparent)]
    Qemu(#[from] qemu::QemuError),
    /// Firecracker failed.
    #[error(transparent)]
    Firecracker(#[from] firecracker::FirecrackerError),
    /// The VM's host cgroup (its CPU, memory and process limits) could not be set up.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// The backend cannot run on this host.
    #[error("the {backend} backend cannot run on this host: {reason}")]
    Unavailable {
        /// Which backend.
        backend: BackendKind,
        /// Why not, and what to do.
        reason: String,
    },
}

/// The first line `binary --version` prints (both VMMs support the flag). Cached per binary path and
/// modification time: snapshots, restores and template lookups ask often, and running the binary costs
/// tens of milliseconds.
pub(crate) fn version_line(binary: &Path) -> std::io::Result<String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Key = (PathBuf, Option<std::time::SystemTime>);
    static CACHE: OnceLock<Mutex<HashMap<Key, String>>> = OnceLock::new();
    let key = (
        binary.to_path_buf(),
        std::fs::metadata(binary).and_then(|m| m.modified()).ok(),
    );
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(v) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(v.clone());
    }
    let v = run_version(binary)?;
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, v.clone());
    Ok(v)
}

fn run_version(binary: &Path) -> std::io::Result<String> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "{} --version failed with {}",
            binary.display(),
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

impl From<BackendError> for crate::Error {
    fn from(e: BackendError) -> Self {
        crate::Error::Backend(Box::new(e))
    }
}

#[cfg(test)]
mod owner_tests {
    use super::*;

    #[test]
    fn the_owning_store_is_put_in_the_vmm_environment() {
        let spec = LaunchSpec {
            vm_id: "vm".into(),
            vcpu_count: 1,
            mem_size_mib: 128,
            kernel: "/k".into(),
            initrd: None,
            kernel_cmdline: String::new(),
            disk: "/d".into(),
            disk_read_only: false,
            net: None,
            control_socket: "/s/vm.qmp".into(),
            agent: AgentEndpoint::UnixSocket("/s/vm.agent".into()),
            console_log: "/c".into(),
            vmm_log: "/v".into(),
            store: Some("/data/a".into()),
            cgroup_procs: Vec::new(),
            run_as: None,
        };
        let mut cmd = std::process::Command::new("qemu-system-x86_64");
        spec.mark_owner(&mut cmd);
        let envs: Vec<_> = cmd.get_envs().collect();
        assert_eq!(
            envs,
            [(
                std::ffi::OsStr::new(crate::dirs::STORE_ENV),
                Some(std::ffi::OsStr::new("/data/a"))
            )]
        );
        let unmarked = LaunchSpec {
            store: None,
            ..spec
        };
        let mut cmd = std::process::Command::new("qemu-system-x86_64");
        unmarked.mark_owner(&mut cmd);
        assert_eq!(cmd.get_envs().count(), 0);
    }
}
