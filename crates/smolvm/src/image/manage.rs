//! Using and removing cached images: which image a VM boots, how much disk an image takes, and
//! removal (refused while a VM uses the image; the caller, who knows the VMs, says which do).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::auto::AutoKernel;
use super::builder::{validate_name, ImageBuilder, ImageOptions};
use super::cache;
use super::error::ImageError;
use super::kcache;
use super::{GuestImage, ImageSource, DEFAULT_IMAGE_NAME};

impl ImageBuilder {
    /// The image a new VM boots when it names `name`; `None` is auto-configuration's choice
    /// ([`ImageBuilder::auto_image`] as `SMOLVM_AUTO_KERNEL` says: the minimal kernel once compiled,
    /// else the default image). The default kind is built or refreshed as [`ImageBuilder::build`] does
    /// (it is cheap and follows agent and kernel updates); a cached image of another kind (Debian, OCI,
    /// archive) is used as it is; a missing name that is not the default one is an error saying how
    /// to make it.
    pub fn image_for_vm(&self, name: Option<&str>) -> Result<GuestImage, ImageError> {
        let Some(name) = name else {
            return self.auto_image(AutoKernel::from_env()?);
        };
        validate_name(name)?;
        let existing = self.get(name);
        match existing {
            Ok(img) if img.source != ImageSource::Default => {
                if img.is_complete() {
                    Ok(img)
                } else {
                    Err(ImageError::NotFound(name.to_string()))
                }
            }
            // Refreshed with the kernel it was built with: `smolvm create --image minimal` must not
            // turn the minimal-kernel image into a Debian-kernel one.
            Ok(img) => self.refresh_builder(&img).build(&ImageOptions {
                name: name.to_string(),
                ..ImageOptions::default()
            }),
            Err(ImageError::NotFound(_)) if name == DEFAULT_IMAGE_NAME => {
                self.build(&ImageOptions::default())
            }
            Err(e) => Err(e),
        }
    }

    /// The builder that refreshes the default-kind image `img`: this one, switched to the minimal kernel
    /// when `img` was built with it and this builder's kernel is the default package (an explicitly
    /// chosen kernel, `SMOLVM_KERNEL`, still wins, as in [`ImageBuilder::auto_image`]).
    fn refresh_builder(&self, img: &GuestImage) -> ImageBuilder {
        let minimal = img.kernel_key().is_some_and(|k| kcache::is_minimal_key(&k));
        if minimal && self.has_default_kernel() {
            self.clone().with_minimal_kernel()
        } else {
            self.clone()
        }
    }

    /// Bytes the image's files take on disk (allocated blocks: sparse holes and hard links to the
    /// shared prepared kernel count as they are stored).
    pub fn disk_usage(img: &GuestImage) -> u64 {
        fs::read_dir(&img.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.blocks() * 512)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Removes the cached image `name`. `users` are the VMs that boot from it (their kernel, initrd or
    /// rootfs lies in the image's directory): any user makes this fail with [`ImageError::InUse`].
    /// Holds the name's build lock, so a concurrent build of the same name cannot interleave, and
    /// moves the directory away before deleting it, so the image vanishes at once.
    pub fn remove(&self, name: &str, users: &[String]) -> Result<(), ImageError> {
        validate_name(name)?;
        let dir = self.images_dir().join(name);
        if !dir.join(super::META_FILE).is_file() {
            return Err(ImageError::NotFound(name.to_string()));
        }
        if !users.is_empty() {
            return Err(ImageError::InUse {
                name: name.to_string(),
                vms: users.to_vec(),
            });
        }
        let _lock = cache::lock(&self.images_dir().join(format!(".{name}.lock")))?;
        let doomed = cache::BuildDir::create(self.images_dir(), name)?;
        fs::remove_dir(doomed.path()).map_err(|e| ImageError::io("remove", doomed.path(), e))?;
        fs::rename(&dir, doomed.path()).map_err(|e| ImageError::io("remove", &dir, e))?;
        drop(doomed); // removes the moved directory
                      // The lock file stays: removing it while a waiter holds it open would let two builders in.
        Ok(())
    }
}

/// The runtime defaults (OCI `Env`, `WorkingDir`, ...) of the image whose rootfs is `rootfs`, if it is
/// an imported image's `rootfs.ext4`. Used to give commands in a VM the image's working directory.
pub fn runtime_of_rootfs(rootfs: &Path) -> Option<super::RuntimeConfig> {
    if rootfs.file_name()? != super::ROOTFS_FILE {
        return None;
    }
    GuestImage::load(rootfs.parent()?).ok()?.runtime
}

/// True if `path` lies inside the image's directory.
pub(crate) fn uses_image(img: &GuestImage, path: &Path) -> bool {
    path.starts_with(&img.dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::kcache::KernelSource;

    fn fake_image(b: &ImageBuilder, name: &str, source: ImageSource) {
        let dir = b.images_dir().join(name);
        fs::create_dir_all(&dir).unwrap();
        let mut img: GuestImage = serde_json::from_value(serde_json::json!({
            "name": name, "dir": "", "kernel": "", "kernel_elf": "", "initrd": "", "rootfs": "",
            "boot_args": "init=/init", "fingerprint": "f", "has_agent": true, "kernel_package": "k",
            "kernel_release": null, "ssh_server": "dropbear", "ssh_password": false,
            "ssh_public_key": false, "rootfs_size_mib": 64, "built_at": 1,
        }))
        .unwrap();
        img.source = source;
        fs::write(dir.join("image.json"), serde_json::to_vec(&img).unwrap()).unwrap();
        for f in ["vmlinuz", "vmlinux", "initrd.img", "rootfs.ext4"] {
            fs::write(dir.join(f), vec![0u8; 5000]).unwrap();
        }
    }

    #[test]
    fn remove_refuses_while_used_and_then_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let b = ImageBuilder::new(t.path());
        let deb = ImageSource::Debian {
            suite: "bookworm".into(),
            mirror: "m".into(),
            packages: vec![],
        };
        fake_image(&b, "deb", deb.clone());
        let img = b.get("deb").unwrap();
        assert!(uses_image(&img, &img.rootfs));
        assert!(!uses_image(&img, Path::new("/elsewhere/rootfs.ext4")));
        assert!(ImageBuilder::disk_usage(&img) >= 4 * 5000);
        let e = b.remove("deb", &["vm-1".into()]).unwrap_err();
        assert!(e.to_string().contains("vm-1"), "{e}");
        assert!(b.get("deb").is_ok());
        b.remove("deb", &[]).unwrap();
        assert!(matches!(b.get("deb"), Err(ImageError::NotFound(_))));
        let left: Vec<_> = fs::read_dir(b.images_dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(matches!(b.remove("deb", &[]), Err(ImageError::NotFound(_))));
    }

    #[test]
    fn a_cached_non_default_image_is_used_as_it_is() {
        let t = tempfile::tempdir().unwrap();
        let b = ImageBuilder::new(t.path());
        fake_image(
            &b,
            "py",
            ImageSource::Archive {
                path: "/x.tar".into(),
            },
        );
        let img = b.image_for_vm(Some("py")).unwrap();
        assert_eq!(img.name, "py");
        assert_eq!(runtime_of_rootfs(&img.rootfs), None);
        let mut with_rc = img.clone();
        with_rc.runtime = Some(super::super::RuntimeConfig {
            working_dir: Some("/srv".into()),
            ..Default::default()
        });
        fs::write(
            img.dir.join("image.json"),
            serde_json::to_vec(&with_rc).unwrap(),
        )
        .unwrap();
        assert_eq!(
            runtime_of_rootfs(&img.rootfs)
                .and_then(|r| r.working_dir)
                .as_deref(),
            Some("/srv")
        );
        assert_eq!(runtime_of_rootfs(Path::new("/x/other.ext4")), None);
        assert!(matches!(
            b.image_for_vm(Some("../x")),
            Err(ImageError::InvalidOption { .. })
        ));
    }

    #[test]
    fn a_minimal_kernel_image_is_refreshed_with_the_minimal_kernel() {
        let t = tempfile::tempdir().unwrap();
        let b = ImageBuilder::new(t.path());
        fake_image(&b, "minimal", ImageSource::Default);
        fake_image(&b, "plain", ImageSource::Default);
        // image.json names the prepared kernel it was made from.
        let meta = b.images_dir().join("minimal").join("image.json");
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap();
        v["kernel_key"] = "minimal_6.1.192-3_e72f83e754a5".into();
        fs::write(&meta, serde_json::to_vec(&v).unwrap()).unwrap();

        let minimal = b.get("minimal").unwrap();
        assert!(matches!(
            b.refresh_builder(&minimal).kernel_source(),
            KernelSource::Minimal(_)
        ));
        let plain = b.get("plain").unwrap();
        assert_eq!(b.refresh_builder(&plain).kernel_source(), b.kernel_source());
        // A kernel chosen explicitly wins over the image's.
        let local = ImageBuilder::new(t.path()).with_kernel("/boot/vmlinuz-x", None);
        assert_eq!(
            local.refresh_builder(&minimal).kernel_source(),
            local.kernel_source()
        );
    }
}
