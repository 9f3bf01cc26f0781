//! Default guest image: kernel from the distribution, generated initramfs, minimal SSH-ready rootfs
//! with the guest agent as init, and a cache that makes rebuilding with the same inputs instant.
//!
//! ```no_run
//! use smolvm::{ImageBuilder, ImageOptions};
//! let builder = ImageBuilder::new(std::path::Path::new("/var/lib/smolvm"));
//! let image = builder.build(&ImageOptions::default())?;
//! let config = image.vm_config(smolvm::BackendKind::Qemu).build()?;
//! # Ok::<(), smolvm::Error>(())
//! ```
//!
//! What is built (x86_64 hosts):
//! * kernel: Debian's `linux-image-cloud-amd64`, fetched with `apt-get download` (never installed); the
//!   bzImage for QEMU and the ELF vmlinux cut out of it for Firecracker;
//! * initramfs: the agent (its stage 1 loads the virtio/vsock modules the machine has, mounts
//!   `/dev/vda` and switches to it) plus those modules;
//! * rootfs: ext4 with static busybox, dropbear and the agent as `/init`.
//!
//! Layout: `data_dir/images/<name>/{vmlinuz,vmlinux,initrd.img,rootfs.ext4,image.json}`; prepared
//! kernels are shared in `data_dir/images/.kernels/`.

mod agent;
pub(crate) use agent::materialize_file;
mod ar;
mod assemble;
mod auto;
mod builder;
mod cache;
mod cpio;
mod deb;
mod debian;
mod elf;
mod error;
mod etc;
mod initramfs;
mod kcache;
mod kernel;
mod lz4;
mod manage;
mod minkernel;
mod mirror;
mod modules;
mod oci;
mod oci_config;
mod progress;
mod resize;
mod rootfs;
mod source;
mod userland;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use auto::{AutoKernel, AUTO_KERNEL_ENV, AUTO_MINIMAL_IMAGE_NAME};
pub use builder::{ImageBuilder, ImageOptions};
pub use deb::DEFAULT_KERNEL_PACKAGE;
pub use debian::{DebianOptions, Preset, DEFAULT_SUITE};
pub use error::ImageError;
pub use manage::runtime_of_rootfs;
pub(crate) use manage::uses_image;
pub use oci::{ImportOptions, ImportSource};
pub(crate) use oci_config::RuntimeConfig;
pub use progress::Progress;
pub(crate) use resize::grow_rootfs;
pub use rootfs::DEFAULT_SIZE_MIB;
pub use source::ImageSource;

use crate::config::{BackendKind, VmConfigSpec};

/// Kernel command line for images built by [`ImageBuilder`] (spec: `SSH_BOOT_ARGS`, "includes
/// `init=/init`"): serial console, reboot by keyboard controller (Firecracker exits on it), reboot one
/// second after a panic, no PCI probing (virtio-mmio only), and the agent as init. Two additions save
/// boot time, measured under QEMU TCG: `quiet` keeps the ~240-line boot log off the emulated serial
/// port (errors still print), and `cryptomgr.notests` skips the crypto self-tests that Debian's kernel
/// runs at boot (436 ms of `crypto_algapi_init` with `initcall_debug`; they check the kernel's own
/// cipher code, not anything the guest is given). The VMM adds its own parameters (e.g.
/// `tsc_early_khz=` under TCG) and smolvm's `smolvm.*` ones.
pub const SSH_BOOT_ARGS: &str =
    "console=ttyS0 reboot=k panic=1 pci=off quiet cryptomgr.notests init=/init";

/// Name of the image built when none is given.
pub const DEFAULT_IMAGE_NAME: &str = "default";

const KERNEL_FILE: &str = "vmlinuz";
const VMLINUX_FILE: &str = "vmlinux";
const INITRD_FILE: &str = "initrd.img";
const ROOTFS_FILE: &str = "rootfs.ext4";
const META_FILE: &str = "image.json";

/// A built guest image: everything a VM needs to boot it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestImage {
    /// Image name (its directory under `data_dir/images`).
    pub name: String,
    /// The image directory.
    pub dir: PathBuf,
    /// Compressed kernel (bzImage) for QEMU.
    pub kernel: PathBuf,
    /// Uncompressed ELF kernel (vmlinux) for Firecracker.
    pub kernel_elf: PathBuf,
    /// Initramfs (newc cpio) loading the drivers and switching to the root disk (absent when
    /// [`needs_initrd`](Self::needs_initrd) is false).
    pub initrd: PathBuf,
    /// The kernel needs the initramfs: true for the distribution kernel (its drivers are modules),
    /// false for smolvm's minimal kernel, which boots straight from `/dev/vda`.
    #[serde(default = "default_true")]
    pub needs_initrd: bool,
    /// Root filesystem (ext4, sparse).
    pub rootfs: PathBuf,
    /// Kernel command line to boot it with ([`SSH_BOOT_ARGS`]).
    pub boot_args: String,
    /// SHA-256 over every build input; equal fingerprints mean identical images.
    pub fingerprint: String,
    /// The rootfs runs the smolvm agent as init (host channel and Ready message available).
    pub has_agent: bool,
    /// Where the kernel came from (`linux-image-6.1.0-56-cloud-amd64 6.1.192-2`).
    pub kernel_package: String,
    /// Kernel release (`6.1.0-56-cloud-amd64`), if known.
    pub kernel_release: Option<String>,
    /// The SSH server in the image.
    pub ssh_server: String,
    /// Root can log in with a password.
    pub ssh_password: bool,
    /// Root has authorised keys baked in.
    pub ssh_public_key: bool,
    /// Apparent size of the rootfs.
    pub rootfs_size_mib: u64,
    /// Build time, seconds since the Unix epoch.
    pub built_at: u64,
    /// True when [`ImageBuilder::build`] returned the cached image without building.
    #[serde(default)]
    pub cached: bool,
    /// Where the userland came from (images built before this field existed are `default`).
    #[serde(default)]
    pub source: ImageSource,
    /// Runtime defaults of an imported OCI/Docker image (`Env`, `WorkingDir`, `User`, `Entrypoint`,
    /// `Cmd`); `None` for built images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeConfig>,
}

impl GuestImage {
    /// The VM configuration that boots this image with `backend`: the kernel
    /// [`kernel_for`](Self::kernel_for) picks, the initrd and [`GuestImage::boot_args`]. Adjust the rest
    /// (vCPUs, memory, id) on the returned spec, then `.build()` it.
    pub fn vm_config(&self, backend: BackendKind) -> VmConfigSpec {
        let mut spec = VmConfigSpec::new(self.kernel_for(backend), &self.rootfs)
            .boot_args(self.boot_args.clone())
            .agent(self.has_agent)
            .backend(Some(backend));
        if self.needs_initrd {
            spec = spec.initrd_path(&self.initrd);
        }
        // An imported image's Env becomes the VM's environment (every command gets it: argv exec,
        // shell commands, SSH sessions); keys set later on the spec override it.
        if let Some(rc) = &self.runtime {
            spec.env_vars.extend(rc.env_pairs());
        }
        spec
    }

    /// The kernel file for `backend`. Firecracker always gets the uncompressed ELF `vmlinux`. QEMU gets
    /// the `vmlinux` too (entered through PVH: no real-mode setup, no decompression) when the image
    /// has smolvm's minimal kernel, and the bzImage otherwise. The minimal kernel boots through PVH
    /// reliably with the i8259 off (see the QEMU argv); the Debian kernel, tried the same way, failed
    /// under host load (ACPI not enabling, no disk found; README, Performance), so it keeps the
    /// bzImage, which is also the fallback for an image without a `vmlinux` file.
    pub fn kernel_for(&self, backend: BackendKind) -> &Path {
        match backend {
            BackendKind::Qemu if !self.needs_initrd && self.kernel_elf.is_file() => {
                &self.kernel_elf
            }
            BackendKind::Qemu => &self.kernel,
            BackendKind::Firecracker => &self.kernel_elf,
        }
    }

    /// Reads the image in `dir`; paths are rebuilt from `dir` so a moved data directory still works.
    pub fn load(dir: &Path) -> Result<GuestImage, ImageError> {
        let meta = dir.join(META_FILE);
        let bytes = std::fs::read(&meta).map_err(|e| ImageError::io("read", &meta, e))?;
        let mut img: GuestImage =
            serde_json::from_slice(&bytes).map_err(|source| ImageError::Metadata {
                path: meta.clone(),
                source,
            })?;
        img.set_dir(dir);
        img.cached = false;
        Ok(img)
    }

    pub(crate) fn set_dir(&mut self, dir: &Path) {
        self.dir = dir.to_path_buf();
        self.kernel = dir.join(KERNEL_FILE);
        self.kernel_elf = dir.join(VMLINUX_FILE);
        self.initrd = dir.join(INITRD_FILE);
        self.rootfs = dir.join(ROOTFS_FILE);
    }

    /// True if every file of the image exists.
    pub fn is_complete(&self) -> bool {
        [&self.kernel, &self.kernel_elf, &self.rootfs]
            .iter()
            .all(|p| p.is_file())
            && (!self.needs_initrd || self.initrd.is_file())
    }
}

fn default_true() -> bool {
    true
}

/// Kernel command line of images with smolvm's minimal kernel: [`SSH_BOOT_ARGS`] plus the root disk,
/// which the kernel mounts itself (no initramfs).
pub(crate) const MINIMAL_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off quiet \
     cryptomgr.notests init=/init root=/dev/vda rootfstype=ext4";

/// The initrd that belongs with `kernel` when the kernel is one of a built image's files (for callers
/// that, as in the specification's examples, pass only a kernel and a rootfs: the default image's
/// kernel cannot boot without its initramfs).
pub(crate) fn initrd_for_kernel(kernel: &Path) -> Option<PathBuf> {
    let dir = kernel.parent()?;
    let name = kernel.file_name()?;
    if name != KERNEL_FILE && name != VMLINUX_FILE {
        return None;
    }
    let initrd = dir.join(INITRD_FILE);
    (dir.join(META_FILE).is_file() && initrd.is_file()).then_some(initrd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> GuestImage {
        let mut g = GuestImage {
            name: "default".into(),
            dir: PathBuf::new(),
            kernel: PathBuf::new(),
            kernel_elf: PathBuf::new(),
            initrd: PathBuf::new(),
            needs_initrd: true,
            rootfs: PathBuf::new(),
            boot_args: SSH_BOOT_ARGS.into(),
            fingerprint: "f".into(),
            has_agent: true,
            kernel_package: "k".into(),
            kernel_release: None,
            ssh_server: "dropbear".into(),
            ssh_password: false,
            ssh_public_key: true,
            rootfs_size_mib: 512,
            built_at: 0,
            cached: false,
            source: ImageSource::Default,
            runtime: None,
        };
        g.set_dir(dir);
        g
    }

    #[test]
    fn vm_config_picks_the_kernel_per_backend() {
        let g = sample(Path::new("/d"));
        let q = g.vm_config(BackendKind::Qemu);
        assert_eq!(q.kernel_path, Path::new("/d/vmlinuz"));
        assert_eq!(q.initrd_path.as_deref(), Some(Path::new("/d/initrd.img")));
        assert_eq!(q.rootfs_path, Path::new("/d/rootfs.ext4"));
        assert_eq!(q.boot_args, SSH_BOOT_ARGS);
        let f = g.vm_config(BackendKind::Firecracker);
        assert_eq!(f.kernel_path, Path::new("/d/vmlinux"));
        assert_eq!(f.backend, Some(BackendKind::Firecracker));
        assert!(SSH_BOOT_ARGS.contains("init=/init"));
    }

    #[test]
    fn qemu_boots_the_minimal_kernels_vmlinux_and_falls_back_to_the_bzimage() {
        let t = tempfile::tempdir().unwrap();
        let mut g = sample(t.path());
        g.needs_initrd = false;
        // No vmlinux file: the bzImage.
        assert_eq!(g.kernel_for(BackendKind::Qemu), t.path().join(KERNEL_FILE));
        std::fs::write(t.path().join(VMLINUX_FILE), b"\x7fELF").unwrap();
        let q = g.vm_config(BackendKind::Qemu);
        assert_eq!(q.kernel_path, t.path().join(VMLINUX_FILE));
        assert_eq!(q.initrd_path, None);
        // The Debian kernel (needs its initramfs) keeps the bzImage even with a vmlinux beside it.
        g.needs_initrd = true;
        assert_eq!(g.kernel_for(BackendKind::Qemu), t.path().join(KERNEL_FILE));
    }

    #[test]
    fn load_rebuilds_paths_and_finds_the_initrd() {
        let t = tempfile::tempdir().unwrap();
        let g = sample(Path::new("/elsewhere"));
        std::fs::write(t.path().join(META_FILE), serde_json::to_vec(&g).unwrap()).unwrap();
        let l = GuestImage::load(t.path()).unwrap();
        assert_eq!(l.kernel, t.path().join(KERNEL_FILE));
        assert!(!l.is_complete());
        std::fs::write(t.path().join(INITRD_FILE), b"").unwrap();
        assert_eq!(
            initrd_for_kernel(&t.path().join(KERNEL_FILE)),
            Some(t.path().join(INITRD_FILE))
        );
        assert_eq!(initrd_for_kernel(&t.path().join("other")), None);
    }
}
