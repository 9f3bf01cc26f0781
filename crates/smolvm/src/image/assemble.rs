//! Steps every image kind shares: the boot files (kernel, vmlinux, initramfs with the agent and the
//! kernel's modules), `image.json`, and the cache protocol around a build (lock, fingerprint check,
//! build directory, atomic install, pruning of unused prepared kernels).

use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::builder::ImageBuilder;
use super::cache::{self, BuildDir};
use super::error::ImageError;
use super::initramfs::{self, ModuleRef};
use super::kcache::{self, KernelId, PreparedKernel};
use super::progress::Reporter;
use super::{GuestImage, INITRD_FILE, KERNEL_FILE, META_FILE, VMLINUX_FILE};

/// Links the prepared kernel's bzImage and vmlinux into `dir` and writes the initramfs (the agent as
/// stage 1 plus the kernel's virtio/vsock modules); the minimal kernel needs none (every driver is built
/// in and it mounts the root disk itself).
pub(super) fn write_boot_files(
    kernel: &PreparedKernel,
    agent_path: &Path,
    dir: &Path,
) -> Result<(), ImageError> {
    link_or_copy(&kernel.bzimage(), &dir.join(KERNEL_FILE))?;
    link_or_copy(&kernel.vmlinux(), &dir.join(VMLINUX_FILE))?;
    if kernel.is_minimal() {
        return Ok(());
    }
    let agent_bytes =
        fs::read(agent_path).map_err(|e| ImageError::io("read agent", agent_path, e))?;
    let mdir = kernel.modules_dir();
    let mut module_data = Vec::new();
    for m in &kernel.meta.modules {
        let p = mdir.join(m);
        module_data.push((
            m.clone(),
            fs::read(&p).map_err(|e| ImageError::io("read", &p, e))?,
        ));
    }
    let refs: Vec<ModuleRef<'_>> = module_data
        .iter()
        .map(|(n, d)| ModuleRef {
            file_name: n,
            data: d,
        })
        .collect();
    let list_path = mdir.join("load.list");
    let list = fs::read_to_string(&list_path).map_err(|e| ImageError::io("read", &list_path, e))?;
    initramfs::write(&dir.join(INITRD_FILE), &agent_bytes, &refs, &list)
}

/// `image.json`: the image plus the prepared kernel it came from (for pruning).
#[derive(serde::Serialize)]
struct ImageMeta<'a> {
    #[serde(flatten)]
    image: &'a GuestImage,
    kernel_key: Option<String>,
}

/// Writes `dir/image.json` for `img`, built from `kernel`.
pub(super) fn write_meta(
    dir: &Path,
    img: &GuestImage,
    kernel: &PreparedKernel,
) -> Result<(), ImageError> {
    let meta_path = dir.join(META_FILE);
    let bytes = serde_json::to_vec_pretty(&ImageMeta {
        image: img,
        kernel_key: kernel
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned()),
    })
    .map_err(|source| ImageError::Metadata {
        path: meta_path.clone(),
        source,
    })?;
    fs::write(&meta_path, bytes).map_err(|e| ImageError::io("write", &meta_path, e))
}

impl GuestImage {
    pub(super) fn kernel_key(&self) -> Option<String> {
        let b = fs::read(self.dir.join(META_FILE)).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
        v.get("kernel_key")?.as_str().map(str::to_string)
    }
}

/// Seconds since the Unix epoch.
pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Hard-links `from` to `to` (same filesystem: no copy, no space), else copies.
pub(super) fn link_or_copy(from: &Path, to: &Path) -> Result<(), ImageError> {
    if fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    fs::copy(from, to)
        .map(drop)
        .map_err(|e| ImageError::io("copy", from, e))
}

/// What a build closure gets: the build directory (removed unless the build succeeds) and the
/// prepared kernel.
pub(super) struct BuildCtx<'a> {
    /// The temporary build directory; the image's files go here.
    pub dir: &'a Path,
    /// The prepared kernel.
    pub kernel: &'a PreparedKernel,
}

/// The cache protocol around a build of image `name` with `fingerprint`: under the name's lock, return
/// the cached image when it matches (unless `force`), else prepare the kernel, run `build` in a fresh
/// build directory, install the result atomically and prune prepared kernels no image uses. A failed
/// build leaves the cache as it was.
pub(super) fn cached_or_build(
    b: &ImageBuilder,
    name: &str,
    fingerprint: &str,
    force: bool,
    kid: &KernelId,
    report: &Reporter,
    build: impl FnOnce(&BuildCtx<'_>) -> Result<GuestImage, ImageError>,
) -> Result<GuestImage, ImageError> {
    let images_dir = b.images_dir();
    let _lock = cache::lock(&images_dir.join(format!(".{name}.lock")))?;
    let dest = images_dir.join(name);
    if !force {
        if let Ok(img) = GuestImage::load(&dest) {
            if img.fingerprint == fingerprint && img.is_complete() {
                return Ok(GuestImage {
                    cached: true,
                    ..img
                });
            }
        }
    }
    cache::remove_stale(images_dir, name);
    let kernels_dir = images_dir.join(".kernels");
    let kernel = kcache::prepare(kid, b.kernel_source(), &kernels_dir, report)?;
    let dir = BuildDir::create(images_dir, name)?;
    let mut img = build(&BuildCtx {
        dir: dir.path(),
        kernel: &kernel,
    })?;
    img.set_dir(&dest);
    write_meta(dir.path(), &img, &kernel)?;
    report.step("installing the image");
    dir.commit(&dest)?;
    prune_kernels(b, &kid.key);
    Ok(img)
}

/// Removes prepared kernels no image uses any more (they only take space).
pub(super) fn prune_kernels(b: &ImageBuilder, current_key: &str) {
    let keep: Vec<String> = b
        .list()
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i.kernel_key())
        .chain([current_key.to_string()])
        .collect();
    kcache::prune(&b.images_dir().join(".kernels"), &keep);
}
