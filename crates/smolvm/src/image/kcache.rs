//! The prepared-kernel cache (`images/.kernels/<package_version>/`): bzImage, vmlinux, the selected
//! modules and their load list, made once per kernel version and shared by every image.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cache::{self, BuildDir, Fingerprint};
use super::deb::{self, ResolvedPackage};
use super::error::ImageError;
use super::progress::Reporter;
use super::{kernel, minkernel, modules};

/// Bumped when the prepared layout or the module selection changes.
const KERNEL_FORMAT: u32 = 1;
/// Metadata file of a prepared kernel.
const META: &str = "kernel.json";

/// Where the kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// A distribution package fetched with `apt-get download` (never installed).
    Package(String),
    /// smolvm's minimal kernel, compiled on this machine from this Debian source package (see
    /// [`minkernel`](super::minkernel)): an ELF vmlinux with every driver built in, no initramfs needed.
    Minimal(String),
    /// Files on this machine: a bzImage and, unless every driver is built in, its modules directory
    /// (`lib/modules/<release>`).
    Local {
        /// The bzImage.
        bzimage: PathBuf,
        /// The modules directory.
        modules_dir: Option<PathBuf>,
    },
}

/// A kernel identified but maybe not prepared yet.
#[derive(Debug, Clone)]
pub(super) struct KernelId {
    /// Stable identity, part of image fingerprints.
    pub identity: String,
    /// Human description (`linux-image-6.1.0-56-cloud-amd64 6.1.192-2`).
    pub description: String,
    /// Cache directory name.
    pub key: String,
    resolved: Option<ResolvedPackage>,
}

/// Metadata of a prepared kernel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct KernelMeta {
    /// [`KernelId::identity`].
    pub identity: String,
    /// [`KernelId::description`].
    pub description: String,
    /// Kernel release, if known.
    pub release: Option<String>,
    /// Module files in load order.
    pub modules: Vec<String>,
    /// Optional drivers the kernel lacks.
    pub warnings: Vec<String>,
}

/// A prepared kernel in the cache.
#[derive(Debug, Clone)]
pub(super) struct PreparedKernel {
    /// Its directory.
    pub dir: PathBuf,
    /// Its metadata.
    pub meta: KernelMeta,
}

impl PreparedKernel {
    /// A minimal kernel (no modules, boots without an initramfs).
    pub(super) fn is_minimal(&self) -> bool {
        self.meta.identity.starts_with("minimal:")
    }
    /// The kernel command line images with this kernel boot with.
    pub(super) fn boot_args(&self) -> &'static str {
        if self.is_minimal() {
            super::MINIMAL_BOOT_ARGS
        } else {
            super::SSH_BOOT_ARGS
        }
    }
    /// The bzImage.
    pub(super) fn bzimage(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    /// The ELF vmlinux.
    pub(super) fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    /// The module directory (modules + `load.list`).
    pub(super) fn modules_dir(&self) -> PathBuf {
        self.dir.join("modules")
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct AptMemo {
    state_key: String,
    resolved: ResolvedPackage,
}

/// How the prepared-kernel key of smolvm's minimal kernel starts (`minimal_<version>_<hash>`).
const MINIMAL_KEY_PREFIX: &str = "minimal_";

/// True if `key` (an image's `kernel_key`) names a prepared minimal kernel.
pub(super) fn is_minimal_key(key: &str) -> bool {
    key.starts_with(MINIMAL_KEY_PREFIX)
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Resolves `requested` with apt once per change of apt's lists (remembered in `memo_dir`), and the
/// version to key caches by.
fn resolve_memo(requested: &str, memo_dir: &Path) -> Result<(ResolvedPackage, String), ImageError> {
    let state_key = deb::apt_state_key();
    let memo_path = memo_dir.join(format!("apt-{}.json", sanitize(requested)));
    let memo: Option<AptMemo> = fs::read(&memo_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|m: &AptMemo| m.state_key == state_key && m.resolved.requested == *requested);
    let resolved = match memo {
        Some(m) => m.resolved,
        None => {
            let r = deb::resolve(requested)?;
            let memo = AptMemo {
                state_key: state_key.clone(),
                resolved: r.clone(),
            };
            // The memo only saves time; failing to write it is not an error.
            if fs::create_dir_all(memo_dir).is_ok() {
                if let Ok(b) = serde_json::to_vec(&memo) {
                    let _ = fs::write(&memo_path, b);
                }
            }
            r
        }
    };
    let version = resolved
        .version
        .clone()
        .unwrap_or_else(|| format!("unpinned-{}", &state_key[..16]));
    Ok((resolved, version))
}

/// Identifies the kernel without preparing it. For a package this asks apt once per change of apt's
/// lists (remembered in `memo_dir`), so cached builds do not pay for `apt-cache`.
pub(super) fn identify(source: &KernelSource, memo_dir: &Path) -> Result<KernelId, ImageError> {
    match source {
        KernelSource::Package(requested) => {
            let (resolved, version) = resolve_memo(requested, memo_dir)?;
            Ok(KernelId {
                identity: format!("deb:{}={version}:f{KERNEL_FORMAT}", resolved.package),
                description: format!("{} {version}", resolved.package),
                key: sanitize(&format!("{}_{version}", resolved.package)),
                resolved: Some(resolved),
            })
        }
        KernelSource::Minimal(requested) => {
            let (resolved, version) = resolve_memo(requested, memo_dir)?;
            let identity = format!("{}:f{KERNEL_FORMAT}", minkernel::identity(&resolved));
            let short = &Fingerprint::default()
                .add("identity", identity.as_bytes())
                .finish()[..12];
            Ok(KernelId {
                description: format!("smolvm minimal kernel from {} {version}", resolved.package),
                key: sanitize(&format!("{MINIMAL_KEY_PREFIX}{version}_{short}")),
                identity,
                resolved: Some(resolved),
            })
        }
        KernelSource::Local {
            bzimage,
            modules_dir,
        } => {
            let mut fp = Fingerprint::default();
            fp.add_file_identity("bzimage", bzimage)?;
            if let Some(m) = modules_dir {
                fp.add_file_identity("modules", m)?;
                let builtin = m.join("modules.builtin");
                if builtin.exists() {
                    fp.add_file_identity("builtin", &builtin)?;
                }
            }
            fp.add("format", &KERNEL_FORMAT.to_le_bytes());
            let h = fp.finish();
            Ok(KernelId {
                identity: format!("local:{h}"),
                description: format!("local kernel {}", bzimage.display()),
                key: format!("local-{}", &h[..16]),
                resolved: None,
            })
        }
    }
}

/// True if the kernel `id` is already prepared in `kernels_dir` (no download or compile needed).
pub(crate) fn is_prepared(id: &KernelId, kernels_dir: &Path) -> bool {
    load(&kernels_dir.join(&id.key)).is_some_and(|k| k.meta.identity == id.identity)
}

/// Returns the prepared kernel, preparing it if needed (download, unpack, vmlinux, modules).
pub(super) fn prepare(
    id: &KernelId,
    source: &KernelSource,
    kernels_dir: &Path,
    report: &Reporter,
) -> Result<PreparedKernel, ImageError> {
    fs::create_dir_all(kernels_dir)
        .map_err(|e| ImageError::io("create directory", kernels_dir, e))?;
    let _lock = cache::lock(&kernels_dir.join(".lock"))?;
    let dir = kernels_dir.join(&id.key);
    if let Some(k) = load(&dir).filter(|k| k.meta.identity == id.identity) {
        return Ok(k);
    }
    cache::remove_stale(kernels_dir, &id.key);
    let build = BuildDir::create(kernels_dir, &id.key)?;
    let tmp = build.path();
    if let (KernelSource::Minimal(_), Some(pkg)) = (source, &id.resolved) {
        let work = tmp.join("work");
        let built = minkernel::build(pkg, &work, report);
        let result = built.and_then(|b| {
            for (from, to) in [(&b.vmlinux, "vmlinux"), (&b.bzimage, "vmlinuz")] {
                fs::copy(from, tmp.join(to)).map_err(|e| ImageError::io("copy", from, e))?;
            }
            Ok(b.release)
        });
        // The source tree and objects take about 2 GB: never keep them, also not after a failure.
        let _ = fs::remove_dir_all(&work);
        let release = result?;
        let mdir = tmp.join("modules");
        fs::create_dir_all(&mdir).map_err(|e| ImageError::io("create directory", &mdir, e))?;
        let list = mdir.join("load.list");
        fs::write(&list, "").map_err(|e| ImageError::io("write", &list, e))?;
        let meta = KernelMeta {
            identity: id.identity.clone(),
            description: id.description.clone(),
            release,
            modules: Vec::new(),
            warnings: Vec::new(),
        };
        write_meta(&tmp.join(META), &meta)?;
        build.commit(&dir)?;
        return Ok(PreparedKernel { dir, meta });
    }
    let (bzimage, modules_dir, description) = match (source, &id.resolved) {
        (KernelSource::Package(_), Some(pkg)) => {
            report.step(format!("downloading {}", id.description));
            let dl = tmp.join("download");
            fs::create_dir_all(&dl).map_err(|e| ImageError::io("create directory", &dl, e))?;
            let deb_path = deb::download(pkg, &dl)?;
            let description = match &pkg.version {
                Some(_) => id.description.clone(),
                None => format!(
                    "{} {}",
                    pkg.package,
                    deb::control_field(&deb_path, "Version")?
                ),
            };
            report.step(format!("unpacking {}", pkg.package));
            let x = tmp.join("unpacked");
            deb::extract(&deb_path, &x)?;
            let (bz, mods) = find_kernel_files(&x, &deb_path)?;
            (bz, Some(mods), description)
        }
        (
            KernelSource::Local {
                bzimage,
                modules_dir,
            },
            _,
        ) => (bzimage.clone(), modules_dir.clone(), id.description.clone()),
        (KernelSource::Package(p) | KernelSource::Minimal(p), _) => {
            return Err(ImageError::BadPackage {
                path: PathBuf::from(p),
                reason: "package was not resolved".into(),
            })
        }
    };
    report.step("extracting vmlinux from the kernel image");
    fs::copy(&bzimage, tmp.join("vmlinuz")).map_err(|e| ImageError::io("copy", &bzimage, e))?;
    let release = kernel::write_vmlinux(&bzimage, &tmp.join("vmlinux"))?;
    report.step("selecting kernel modules");
    let sel = match &modules_dir {
        Some(m) => modules::select(m, release.as_deref())?,
        None => modules::Selection::default(),
    };
    for w in &sel.warnings {
        report.warn(w);
    }
    let mdir = tmp.join("modules");
    fs::create_dir_all(&mdir).map_err(|e| ImageError::io("create directory", &mdir, e))?;
    for m in &sel.modules {
        let p = mdir.join(&m.file_name);
        fs::write(&p, &m.data).map_err(|e| ImageError::io("write", &p, e))?;
    }
    let list = mdir.join("load.list");
    fs::write(&list, sel.load_list()).map_err(|e| ImageError::io("write", &list, e))?;
    for scratch in ["download", "unpacked"] {
        let _ = fs::remove_dir_all(tmp.join(scratch));
    }
    let meta = KernelMeta {
        identity: id.identity.clone(),
        description,
        release,
        modules: sel.modules.iter().map(|m| m.file_name.clone()).collect(),
        warnings: sel.warnings.clone(),
    };
    write_meta(&tmp.join(META), &meta)?;
    build.commit(&dir)?;
    Ok(PreparedKernel { dir, meta })
}

fn write_meta(path: &Path, meta: &KernelMeta) -> Result<(), ImageError> {
    let b = serde_json::to_vec_pretty(meta).map_err(|source| ImageError::Metadata {
        path: path.to_path_buf(),
        source,
    })?;
    fs::write(path, b).map_err(|e| ImageError::io("write", path, e))
}

/// Loads a prepared kernel if complete.
fn load(dir: &Path) -> Option<PreparedKernel> {
    let meta: KernelMeta = serde_json::from_slice(&fs::read(dir.join(META)).ok()?).ok()?;
    let k = PreparedKernel {
        dir: dir.to_path_buf(),
        meta,
    };
    (k.bzimage().is_file() && k.vmlinux().is_file() && k.modules_dir().join("load.list").is_file())
        .then_some(k)
}

/// Finds `boot/vmlinuz-<release>` and its `lib/modules/<release>` (or `usr/lib/modules/...`) in an
/// unpacked kernel package.
fn find_kernel_files(root: &Path, deb_path: &Path) -> Result<(PathBuf, PathBuf), ImageError> {
    let bad = |reason: String| ImageError::BadPackage {
        path: deb_path.to_path_buf(),
        reason,
    };
    let boot = root.join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .map_err(|_| bad("no /boot in the package: not a kernel image package".into()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| bad("no /boot/vmlinuz-* in the package".into()))?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string();
    let mods = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d).join(&release))
        .find(|p| p.is_dir())
        .ok_or_else(|| bad(format!("no lib/modules/{release} in the package")))?;
    Ok((vmlinuz, mods))
}

/// Removes prepared kernels whose key is not in `keep`.
pub(super) fn prune(kernels_dir: &Path, keep: &[String]) {
    let Ok(_lock) = cache::lock(&kernels_dir.join(".lock")) else {
        return;
    };
    if let Ok(rd) = fs::read_dir(kernels_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && !keep.contains(&name) && e.path().join(META).exists() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_identity_follows_the_files() {
        let t = tempfile::tempdir().unwrap();
        let bz = t.path().join("bzImage");
        fs::write(&bz, b"one").unwrap();
        let src = KernelSource::Local {
            bzimage: bz.clone(),
            modules_dir: None,
        };
        let a = identify(&src, t.path()).unwrap();
        assert!(a.key.starts_with("local-"));
        assert_eq!(a.identity, identify(&src, t.path()).unwrap().identity);
        fs::write(&bz, b"longer").unwrap();
        assert_ne!(a.identity, identify(&src, t.path()).unwrap().identity);
        let missing = KernelSource::Local {
            bzimage: t.path().join("nope"),
            modules_dir: None,
        };
        assert!(identify(&missing, t.path()).is_err());
    }

    #[test]
    fn finds_files_in_an_unpacked_package() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("boot")).unwrap();
        fs::write(t.path().join("boot/vmlinuz-6.1.0-9-cloud-amd64"), b"k").unwrap();
        fs::write(t.path().join("boot/config-6.1.0-9-cloud-amd64"), b"c").unwrap();
        let e = find_kernel_files(t.path(), Path::new("x.deb")).unwrap_err();
        assert!(
            e.to_string().contains("lib/modules/6.1.0-9-cloud-amd64"),
            "{e}"
        );
        fs::create_dir_all(t.path().join("usr/lib/modules/6.1.0-9-cloud-amd64")).unwrap();
        let (bz, m) = find_kernel_files(t.path(), Path::new("x.deb")).unwrap();
        assert!(bz.ends_with("boot/vmlinuz-6.1.0-9-cloud-amd64"));
        assert!(m.ends_with("usr/lib/modules/6.1.0-9-cloud-amd64"));
        assert_eq!(sanitize("a b/c:d"), "a_b_c_d");
    }
}
