//! [`ImageBuilder`]: builds (or returns from the cache) a guest image.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use super::cache::{self, BuildDir, Fingerprint};
use super::error::ImageError;
use super::kcache::{self, KernelSource, PreparedKernel};
use super::progress::{Progress, Reporter};
use super::SSH_BOOT_ARGS;
use super::{agent, assemble, deb, etc, rootfs, GuestImage};
use super::{INITRD_FILE, KERNEL_FILE, META_FILE, ROOTFS_FILE, VMLINUX_FILE};
use crate::host::ToolError;

/// Environment variable: use this bzImage instead of the distribution kernel.
pub(crate) const KERNEL_ENV: &str = "SMOLVM_KERNEL";
/// Environment variable: the modules directory (`lib/modules/<release>`) of [`KERNEL_ENV`]'s kernel.
pub(crate) const KERNEL_MODULES_ENV: &str = "SMOLVM_KERNEL_MODULES";
/// Bumped whenever the image layout or contents change for the same inputs.
const IMAGE_FORMAT: u32 = 2; // 2: `/usr/bin/wget` is the agent's front end

/// What to build.
#[derive(Clone, PartialEq, Eq)]
pub struct ImageOptions {
    /// Image name (`[A-Za-z0-9][A-Za-z0-9._-]*`, at most 64 characters).
    pub name: String,
    /// Root's SSH password (none: key login only).
    pub ssh_password: Option<String>,
    /// `authorized_keys` content for root (one or more public key lines).
    pub ssh_public_key: Option<String>,
    /// Apparent size of the rootfs in MiB (sparse).
    pub rootfs_size_mib: u64,
    /// Rebuild even if the cache holds an image with the same inputs.
    pub force: bool,
    /// Progress reporting.
    pub progress: Progress,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            name: super::DEFAULT_IMAGE_NAME.to_string(),
            ssh_password: None,
            ssh_public_key: None,
            rootfs_size_mib: rootfs::DEFAULT_SIZE_MIB,
            force: false,
            progress: Progress::Auto,
        }
    }
}

// Manual Debug: never print the password.
impl fmt::Debug for ImageOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageOptions")
            .field("name", &self.name)
            .field(
                "ssh_password",
                &self.ssh_password.as_ref().map(|_| "<redacted>"),
            )
            .field("ssh_public_key", &self.ssh_public_key)
            .field("rootfs_size_mib", &self.rootfs_size_mib)
            .field("force", &self.force)
            .field("progress", &self.progress)
            .finish()
    }
}

impl ImageOptions {
    fn validate(&self) -> Result<(), ImageError> {
        validate_name(&self.name)?;
        if let Some(pw) = &self.ssh_password {
            etc::check_password(pw)?;
        }
        if let Some(k) = &self.ssh_public_key {
            etc::check_public_key(k)?;
        }
        if !(rootfs::MIN_SIZE_MIB..=rootfs::MAX_SIZE_MIB).contains(&self.rootfs_size_mib) {
            return Err(ImageError::invalid(
                "rootfs_size_mib",
                format!(
                    "must be between {} and {}, got {}",
                    rootfs::MIN_SIZE_MIB,
                    rootfs::MAX_SIZE_MIB,
                    self.rootfs_size_mib
                ),
            ));
        }
        Ok(())
    }
}

/// Checks an image name: it becomes a directory name.
pub(super) fn validate_name(name: &str) -> Result<(), ImageError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ImageError::invalid(
            "name",
            format!("{name:?}: use 1-64 of [A-Za-z0-9._-], starting with a letter or digit"),
        ))
    }
}

/// Builds guest images into `data_dir/images` and lists them.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    images_dir: PathBuf,
    kernel: KernelSource,
    agent: Option<PathBuf>,
    busybox: PathBuf,
    dropbear: PathBuf,
}

impl ImageBuilder {
    /// A builder caching under `data_dir/images`. The kernel is Debian's `linux-image-cloud-amd64`,
    /// unless `SMOLVM_KERNEL` (a bzImage) and `SMOLVM_KERNEL_MODULES` (its `lib/modules/<release>`) name
    /// another; the agent is found as [`agent`](super::agent) describes (this path, `SMOLVM_AGENT_BIN`, else the
    /// agent embedded at build time).
    pub fn new(data_dir: &Path) -> ImageBuilder {
        let kernel = match std::env::var_os(KERNEL_ENV).filter(|v| !v.is_empty()) {
            Some(bz) => KernelSource::Local {
                bzimage: PathBuf::from(bz),
                modules_dir: std::env::var_os(KERNEL_MODULES_ENV)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from),
            },
            None => KernelSource::Package(deb::DEFAULT_KERNEL_PACKAGE.to_string()),
        };
        ImageBuilder {
            images_dir: data_dir.join("images"),
            kernel,
            agent: None,
            busybox: PathBuf::from(rootfs::HOST_BUSYBOX),
            dropbear: PathBuf::from(rootfs::HOST_DROPBEAR),
        }
    }

    /// Uses `dir` as the image cache instead of `data_dir/images`.
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.images_dir = dir.into();
        self
    }

    /// Uses a kernel on this machine: a bzImage and its modules directory (`lib/modules/<release>`;
    /// `None` if every needed driver is built in). For hosts without apt.
    pub fn with_kernel(
        mut self,
        bzimage: impl Into<PathBuf>,
        modules_dir: Option<PathBuf>,
    ) -> Self {
        self.kernel = KernelSource::Local {
            bzimage: bzimage.into(),
            modules_dir,
        };
        self
    }

    /// Fetches this Debian kernel package (or metapackage) instead of `linux-image-cloud-amd64`.
    pub fn with_kernel_package(mut self, package: impl Into<String>) -> Self {
        self.kernel = KernelSource::Package(package.into());
        self
    }

    /// Uses smolvm's minimal kernel, compiled on this machine from Debian's `linux-source` (minutes,
    /// once; cached): an ELF vmlinux that boots without an initramfs, about twice as fast as the
    /// distribution kernel under TCG (README, Performance).
    pub fn with_minimal_kernel(mut self) -> Self {
        self.kernel = KernelSource::Minimal(super::minkernel::SOURCE_PACKAGE.to_string());
        self
    }

    /// Uses this agent binary (must be static).
    pub fn with_agent(mut self, path: impl Into<PathBuf>) -> Self {
        self.agent = Some(path.into());
        self
    }

    /// The agent binary given with [`ImageBuilder::with_agent`], if any.
    pub(super) fn agent_override(&self) -> Option<&Path> {
        self.agent.as_deref()
    }

    /// The image cache directory.
    pub fn images_dir(&self) -> &Path {
        &self.images_dir
    }

    /// The kernel source in use.
    pub fn kernel_source(&self) -> &KernelSource {
        &self.kernel
    }

    /// Builds the Debian-kernel + busybox + dropbear image, or returns it from the cache when every
    /// input is unchanged.
    pub fn build_debian_ssh(
        &self,
        name: &str,
        ssh_password: Option<&str>,
        rootfs_size_mib: u64,
    ) -> Result<GuestImage, ImageError> {
        self.build(&ImageOptions {
            name: name.to_string(),
            ssh_password: ssh_password.map(str::to_string),
            rootfs_size_mib,
            ..ImageOptions::default()
        })
    }

    /// Spec entry point. **Alpine packages cannot be fetched on these hosts**, so this builds the same
    /// image as [`ImageBuilder::build_debian_ssh`]: Debian's cloud kernel, busybox userland, dropbear SSH
    /// server, the smolvm agent as init; root logs in with `ssh_password` (and by key if the host
    /// injects one at boot).
    pub fn build_alpine_ssh(
        &self,
        name: &str,
        ssh_password: Option<&str>,
        rootfs_size_mb: u64,
    ) -> Result<GuestImage, ImageError> {
        self.build_debian_ssh(name, ssh_password, rootfs_size_mb)
    }

    /// Spec entry point. **Alpine packages cannot be fetched on these hosts**, so this builds the
    /// Debian-kernel + busybox + dropbear image of [`ImageBuilder::build_debian_ssh`] with
    /// `public_key` as root's `authorized_keys` (no password login).
    pub fn build_alpine_ssh_key(
        &self,
        public_key: &str,
        name: &str,
        rootfs_size_mb: u64,
    ) -> Result<GuestImage, ImageError> {
        self.build(&ImageOptions {
            name: name.to_string(),
            ssh_public_key: Some(public_key.to_string()),
            rootfs_size_mib: rootfs_size_mb,
            ..ImageOptions::default()
        })
    }

    /// Every complete image in the cache, by name. Unreadable entries are skipped with a warning.
    pub fn list(&self) -> Result<Vec<GuestImage>, ImageError> {
        let rd = match fs::read_dir(&self.images_dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ImageError::io("read directory", &self.images_dir, e)),
        };
        let mut out: Vec<GuestImage> = rd
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter(|e| e.path().join(META_FILE).is_file())
            .filter_map(|e| match GuestImage::load(&e.path()) {
                Ok(img) => Some(img),
                Err(err) => {
                    tracing::warn!("skipping image {}: {err}", e.path().display());
                    None
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The cached image called `name`.
    pub fn get(&self, name: &str) -> Result<GuestImage, ImageError> {
        validate_name(name)?;
        let dir = self.images_dir.join(name);
        if !dir.join(META_FILE).is_file() {
            return Err(ImageError::NotFound(name.to_string()));
        }
        GuestImage::load(&dir)
    }

    /// Builds the image `opts` describes, or returns the cached one when its fingerprint matches.
    /// Concurrent builds of one name serialise on a lock; a failed build removes its partial output and
    /// leaves the cache as it was.
    pub fn build(&self, opts: &ImageOptions) -> Result<GuestImage, ImageError> {
        if std::env::consts::ARCH != "x86_64" {
            return Err(ImageError::UnsupportedArch(std::env::consts::ARCH));
        }
        opts.validate()?;
        let report = Reporter::new(opts.progress);
        fs::create_dir_all(&self.images_dir)
            .map_err(|e| ImageError::io("create directory", &self.images_dir, e))?;
        let memo_dir = self.images_dir.join(".cache");
        report.step("checking inputs");
        let kid = kcache::identify(&self.kernel, &memo_dir)?;
        let agent_path = agent::locate(self.agent.as_deref(), &self.images_dir.join(".agent"))?;
        let inputs = Inputs::gather(self, opts, &agent_path, &kid.identity)?;

        let _lock = cache::lock(&self.images_dir.join(format!(".{}.lock", opts.name)))?;
        let dest = self.images_dir.join(&opts.name);
        if !opts.force {
            if let Ok(img) = GuestImage::load(&dest) {
                if img.fingerprint == inputs.fingerprint && img.is_complete() {
                    return Ok(GuestImage {
                        cached: true,
                        ..img
                    });
                }
            }
        }
        cache::remove_stale(&self.images_dir, &opts.name);
        let kernels_dir = self.images_dir.join(".kernels");
        let kernel = kcache::prepare(&kid, &self.kernel, &kernels_dir, &report)?;
        let img = self.build_into(opts, &inputs, &kernel, &agent_path, &dest, &report)?;
        assemble::prune_kernels(self, &kid.key);
        Ok(img)
    }

    fn build_into(
        &self,
        opts: &ImageOptions,
        inputs: &Inputs,
        kernel: &PreparedKernel,
        agent_path: &Path,
        dest: &Path,
        report: &Reporter,
    ) -> Result<GuestImage, ImageError> {
        let build = BuildDir::create(&self.images_dir, &opts.name)?;
        let tmp = build.path();
        report.step(if kernel.is_minimal() {
            "linking the kernel"
        } else {
            "writing the initramfs"
        });
        assemble::write_boot_files(kernel, agent_path, tmp)?;

        report.step("building the root filesystem");
        let staging = tmp.join("staging");
        let hash = opts
            .ssh_password
            .as_deref()
            .map(etc::hash_password)
            .transpose()?;
        let etc_files = etc::files(hash.as_deref(), opts.ssh_public_key.as_deref());
        rootfs::stage(
            &staging,
            &rootfs::Contents {
                agent: agent_path,
                busybox: &self.busybox,
                applets: &inputs.applets,
                ssh_files: &inputs.ssh_files,
                etc_files: &etc_files,
            },
        )?;
        rootfs::make_ext4(&staging, &tmp.join(ROOTFS_FILE), opts.rootfs_size_mib)?;
        fs::remove_dir_all(&staging).map_err(|e| ImageError::io("remove", &staging, e))?;

        let img = GuestImage {
            name: opts.name.clone(),
            dir: dest.to_path_buf(),
            kernel: dest.join(KERNEL_FILE),
            kernel_elf: dest.join(VMLINUX_FILE),
            initrd: dest.join(INITRD_FILE),
            needs_initrd: !kernel.is_minimal(),
            rootfs: dest.join(ROOTFS_FILE),
            boot_args: kernel.boot_args().to_string(),
            fingerprint: inputs.fingerprint.clone(),
            has_agent: true,
            kernel_package: kernel.meta.description.clone(),
            kernel_release: kernel.meta.release.clone(),
            ssh_server: "dropbear".to_string(),
            ssh_password: opts.ssh_password.is_some(),
            ssh_public_key: opts.ssh_public_key.is_some(),
            rootfs_size_mib: opts.rootfs_size_mib,
            built_at: assemble::now_secs(),
            cached: false,
            source: super::ImageSource::Default,
            runtime: None,
        };
        assemble::write_meta(tmp, &img, kernel)?;
        report.step("installing the image");
        build.commit(dest)?;
        Ok(img)
    }
}

/// Everything the fingerprint covers, gathered cheaply (no apt, no big reads but the agent).
struct Inputs {
    fingerprint: String,
    applets: Vec<String>,
    ssh_files: Vec<(String, PathBuf)>,
}

impl Inputs {
    fn gather(
        b: &ImageBuilder,
        opts: &ImageOptions,
        agent_path: &Path,
        kernel_identity: &str,
    ) -> Result<Inputs, ImageError> {
        if !b.busybox.is_file() {
            return Err(ToolError::Missing {
                program: "busybox".into(),
                package: "busybox-static",
                hint: " (the guest's userland is copied from the host's /bin/busybox)",
            }
            .into());
        }
        let applets = rootfs::busybox_applets(&b.busybox)?;
        let ssh_files = rootfs::dropbear_files(&b.dropbear)?;
        let mut fp = Fingerprint::default();
        fp.add("format", &IMAGE_FORMAT.to_le_bytes())
            .add("kernel", kernel_identity.as_bytes())
            .add("agent", cache::file_sha256(agent_path)?.as_bytes())
            .add("boot_args", SSH_BOOT_ARGS.as_bytes());
        fp.add_file_identity("busybox", &b.busybox)?;
        for (guest, host) in &ssh_files {
            fp.add_file_identity(guest, host)?;
        }
        // The password enters as a hash of its own, not as the salted shadow entry (random salt).
        if let Some(pw) = &opts.ssh_password {
            fp.add("password", pw.as_bytes());
        }
        if let Some(k) = &opts.ssh_public_key {
            fp.add("key", k.as_bytes());
        }
        fp.add("size", &opts.rootfs_size_mib.to_le_bytes());
        Ok(Inputs {
            fingerprint: fp.finish(),
            applets,
            ssh_files,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_validated() {
        let ok = ImageOptions::default();
        assert!(ok.validate().is_ok());
        for bad in [
            ImageOptions {
                name: "".into(),
                ..ImageOptions::default()
            },
            ImageOptions {
                name: ".hidden".into(),
                ..ImageOptions::default()
            },
            ImageOptions {
                name: "a/b".into(),
                ..ImageOptions::default()
            },
            ImageOptions {
                rootfs_size_mib: 10,
                ..ImageOptions::default()
            },
            ImageOptions {
                ssh_password: Some("".into()),
                ..ImageOptions::default()
            },
            ImageOptions {
                ssh_public_key: Some("nope".into()),
                ..ImageOptions::default()
            },
        ] {
            let e = bad.validate().unwrap_err();
            assert!(matches!(e, ImageError::InvalidOption { .. }), "{e}");
            assert!(matches!(crate::Error::from(e), crate::Error::Validation(_)));
        }
        let dbg = format!(
            "{:?}",
            ImageOptions {
                ssh_password: Some("hunter2".into()),
                ..ImageOptions::default()
            }
        );
        assert!(!dbg.contains("hunter2"));
    }

    #[test]
    fn list_of_an_empty_cache_is_empty_and_get_says_how_to_build() {
        let t = tempfile::tempdir().unwrap();
        let b = ImageBuilder::new(t.path());
        assert!(b.list().unwrap().is_empty());
        let e = b.get("nope").unwrap_err();
        assert!(
            e.to_string().contains("smolvm image build --name nope"),
            "{e}"
        );
    }
}
