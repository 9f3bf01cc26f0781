//! Firecracker through its `jailer`: a chroot per VM, the VM's own user and group (the VMM user of
//! [`crate::vmm_user`]), a private mount namespace, then exec of Firecracker.
//!
//! Layout (the jailer's): `<chroot_base>/<firecracker file name>/<vm id>/root` is the VMM's `/`. smolvm
//! makes it before the jailer runs and hard-links the VM's files in under fixed names ([`KERNEL`],
//! [`INITRD`], [`DISK`]); the API requests name them as the jailed VMM sees them. Firecracker creates
//! its API socket ([`API_SOCKET`]) and the vsock socket ([`VSOCK_SOCKET`]) inside, and smolvm, as root,
//! reaches them through the host path. The VM's disk is its own file (given to its user already), so a
//! hard link shares it; kernel and initramfs are root's, readable by all, and linked as they are (a
//! copy where they live on another file system).
//!
//! The jailer closes every descriptor but the standard ones and clears the environment, so the console
//! pipe is Firecracker's stdout (its serial console writes there when no `/serial` is configured) and
//! the VMM carries no store marker. The jail goes when the VMM is gone ([`Jail::release`]).

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use super::FirecrackerError;
use crate::backend::{AgentEndpoint, LaunchSpec};
use crate::vmm_user::VmmUser;

/// Environment variable naming the jailer binary (else `jailer` next to Firecracker, else on `PATH`).
pub(crate) const JAILER_BIN_ENV: &str = "SMOLVM_JAILER_BIN";
/// The kernel inside the jail.
pub(crate) const KERNEL: &str = "vmlinux";
/// The initramfs inside the jail.
pub(crate) const INITRD: &str = "initrd";
/// The root disk inside the jail.
pub(crate) const DISK: &str = "rootfs";
/// The API socket inside the jail.
pub(crate) const API_SOCKET: &str = "api.sock";
/// The vsock device's socket inside the jail.
pub(crate) const VSOCK_SOCKET: &str = "vsock.sock";

/// Where a backend's jails live and which jailer makes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Jail {
    /// The `jailer` binary.
    pub jailer: PathBuf,
    /// `--chroot-base-dir`: `<data dir>/jail`.
    pub chroot_base: PathBuf,
}

/// The jailer to use for `firecracker`: [`JAILER_BIN_ENV`], else `jailer` in Firecracker's directory,
/// else on `PATH`.
pub(crate) fn find_jailer(firecracker: &Path) -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os(JAILER_BIN_ENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(bin));
    }
    let beside = firecracker.with_file_name("jailer");
    if beside.is_file() {
        return Some(beside);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("jailer"))
        .find(|p| p.is_file())
}

/// The jailer's own rule for ids: 1-64 ASCII alphanumerics and hyphens.
pub(crate) fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Jail {
    /// `<chroot_base>/<firecracker file name>/<vm_id>`: everything of one VM's jail.
    pub(crate) fn dir(&self, firecracker: &Path, vm_id: &str) -> PathBuf {
        let exec_name = firecracker
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("firecracker"));
        self.chroot_base.join(exec_name).join(vm_id)
    }

    /// The VMM's `/`.
    pub(crate) fn root(&self, firecracker: &Path, vm_id: &str) -> PathBuf {
        self.dir(firecracker, vm_id).join("root")
    }

    /// The complete jailer argv (program first) that runs `firecracker` for `spec` as `user`:
    /// `--id`, `--exec-file`, `--uid`, `--gid`, `--chroot-base-dir`, then Firecracker's own
    /// `--api-sock` (inside the jail; the jailer passes `--id` itself).
    pub(crate) fn argv(&self, firecracker: &Path, vm_id: &str, user: VmmUser) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![self.jailer.clone().into()];
        a.push("--id".into());
        a.push(vm_id.into());
        a.push("--exec-file".into());
        a.push(firecracker.into());
        a.push("--uid".into());
        a.push(user.uid.to_string().into());
        a.push("--gid".into());
        a.push(user.gid.to_string().into());
        a.push("--chroot-base-dir".into());
        a.push(self.chroot_base.clone().into());
        a.push("--".into());
        a.push("--api-sock".into());
        a.push(format!("/{API_SOCKET}").into());
        a
    }

    /// Makes the VM's jail afresh (a leftover of a killed VMM is removed first) with the VM's files
    /// linked in, and returns `spec` as the jailed VMM sees it (its files and vsock socket at their
    /// jail paths). On error nothing of the jail is left.
    pub(crate) fn prepare(
        &self,
        firecracker: &Path,
        spec: &LaunchSpec,
    ) -> Result<LaunchSpec, FirecrackerError> {
        if !valid_id(&spec.vm_id) {
            return Err(FirecrackerError::JailId {
                vm_id: spec.vm_id.clone(),
            });
        }
        self.release(firecracker, &spec.vm_id)
            .map_err(|source| FirecrackerError::File {
                action: "remove the old jail",
                path: self.dir(firecracker, &spec.vm_id),
                source,
            })?;
        let root = self.root(firecracker, &spec.vm_id);
        let result = (|| {
            std::fs::create_dir_all(&root).map_err(|source| FirecrackerError::File {
                action: "create the jail",
                path: root.clone(),
                source,
            })?;
            link_or_copy(&spec.kernel, &root.join(KERNEL))?;
            if let Some(initrd) = &spec.initrd {
                link_or_copy(initrd, &root.join(INITRD))?;
            }
            // The disk must be the VM's own file, never a copy: writes would be lost.
            std::fs::hard_link(&spec.disk, root.join(DISK)).map_err(|source| {
                FirecrackerError::File {
                    action: "link the disk into the jail (it must be on the data directory's file system)",
                    path: spec.disk.clone(),
                    source,
                }
            })?;
            let inside = |name: &str| PathBuf::from(format!("/{name}"));
            Ok(LaunchSpec {
                kernel: inside(KERNEL),
                initrd: spec.initrd.as_ref().map(|_| inside(INITRD)),
                disk: inside(DISK),
                agent: match &spec.agent {
                    AgentEndpoint::FirecrackerVsock { port, .. } => {
                        AgentEndpoint::FirecrackerVsock {
                            uds_path: inside(VSOCK_SOCKET),
                            port: *port,
                        }
                    }
                    other => other.clone(),
                },
                ..spec.clone()
            })
        })();
        if result.is_err() {
            let _ = self.release(firecracker, &spec.vm_id);
        }
        result
    }

    /// Removes the VM's jail (its links, the copied Firecracker binary, device nodes and sockets).
    /// Absent is fine. Call once the VMM is gone.
    pub(crate) fn release(&self, firecracker: &Path, vm_id: &str) -> io::Result<()> {
        if !valid_id(vm_id) {
            // No jail can exist for it, and the id must never become a path outside the base.
            return Ok(());
        }
        match std::fs::remove_dir_all(self.dir(firecracker, vm_id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Hard-links `src` to `dst`, copying where they are on different file systems.
fn link_or_copy(src: &Path, dst: &Path) -> Result<(), FirecrackerError> {
    let err = |source| FirecrackerError::File {
        action: "link into the jail",
        path: src.to_path_buf(),
        source,
    };
    match std::fs::hard_link(src, dst) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            std::fs::copy(src, dst).map(drop).map_err(err)
        }
        other => other.map_err(err),
    }
}
