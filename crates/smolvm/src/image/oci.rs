//! OCI/Docker images and root filesystem tarballs as smolvm images.
//!
//! Tools, not hand-written layer code: `skopeo` (Debian package) reads every source format (a
//! `docker save` archive, an OCI layout directory or archive, a registry with anonymous or token auth)
//! and writes one normalised OCI layout, verifying every blob's digest and choosing linux/amd64 from
//! multi-platform images; `umoci raw unpack` (Debian package) applies the layers in order with the OCI
//! rules: whiteouts (`.wh.`), opaque directories, hard links, symlinks, modes including setuid,
//! owners and xattrs. A plain rootfs tarball is unpacked by GNU tar (numeric owners, xattrs). The
//! tree then gets the agent as `/init` ([`super::userland`]) and becomes ext4 like a Debian image.
//! Any failure drops the build directory: no partial image is left in the cache.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::assemble;
use super::builder::{validate_name, ImageBuilder};
use super::cache::{self, Fingerprint};
use super::error::ImageError;
use super::oci_config::{self, RuntimeConfig};
use super::progress::{Progress, Reporter};
use super::{agent, kcache, rootfs, userland};
use super::{GuestImage, ImageSource, ROOTFS_FILE};
use crate::host::tools;

/// Bumped whenever the image layout or contents change for the same inputs.
const OCI_FORMAT: u32 = 1;
/// Tag of the normalised layout skopeo writes.
const WORK_TAG: &str = "smolvm";
/// Where the image's Env/WorkingDir profile goes (sorted before the VM's own `smolvm_env.sh`, so a
/// VM's env vars override the image's).
const PROFILE: &str = "etc/profile.d/smolvm-image.sh";

/// Where to import from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportSource {
    /// A `docker save` archive, an OCI layout directory or archive, or a rootfs tarball (detected).
    Path(PathBuf),
    /// A registry reference (`docker.io/library/alpine:3.20`, `localhost:5000/app:1`).
    Registry(String),
}

/// What to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// Image name.
    pub name: String,
    /// The source.
    pub source: ImportSource,
    /// Registry over plain HTTP or with an unverified certificate (a local test registry).
    pub insecure_registry: bool,
    /// `user:password` for the registry (token auth is negotiated by skopeo).
    pub registry_credentials: Option<String>,
    /// Progress reporting.
    pub progress: Progress,
}

/// The detected kind of a local source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Directory with an `oci-layout` file.
    OciLayout,
    /// Tar of an OCI layout.
    OciArchive,
    /// `docker save` output (top-level `manifest.json`).
    DockerArchive,
    /// Any other tar: a root filesystem.
    RootfsTar,
}

/// Classifies a tar by its top-level entries.
pub(super) fn classify_tar(entries: &str) -> Kind {
    let names: Vec<&str> = entries
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/'))
        .collect();
    if names.contains(&"oci-layout") {
        Kind::OciArchive
    } else if names.contains(&"manifest.json") {
        Kind::DockerArchive
    } else {
        Kind::RootfsTar
    }
}

fn detect(path: &Path) -> Result<Kind, ImageError> {
    let m = std::fs::metadata(path).map_err(|e| ImageError::io("open", path, e))?;
    if m.is_dir() {
        return if path.join("oci-layout").is_file() {
            Ok(Kind::OciLayout)
        } else {
            Err(import_err(
                path,
                "a directory must be an OCI image layout (no oci-layout file)",
            ))
        };
    }
    let tar = tools::require("tar", "tar")?;
    let out = tools::output(Command::new(tar).arg("-tf").arg(path), None)
        .map_err(|e| import_err(path, &format!("not a readable tar archive ({e})")))?;
    Ok(classify_tar(&String::from_utf8_lossy(&out.stdout)))
}

fn import_err(what: impl AsRef<Path>, reason: &str) -> ImageError {
    ImageError::Import {
        source_desc: what.as_ref().display().to_string(),
        reason: reason.to_string(),
    }
}

/// A registry reference: no whitespace, no option-looking start, no transport prefix.
fn check_reference(r: &str) -> Result<(), ImageError> {
    let ok = !r.is_empty()
        && r.len() <= 512
        && !r.starts_with('-')
        && !r.contains("://")
        && r.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(ImageError::invalid(
            "reference",
            format!(
                "{r:?}: expected NAME[:TAG] or NAME@DIGEST, e.g. docker.io/library/alpine:3.20"
            ),
        ))
    }
}

/// `skopeo copy` arguments normalising `src` (a skopeo transport reference) into `work` as one
/// linux/amd64 image tagged [`WORK_TAG`].
pub(super) fn skopeo_args(src: &str, work: &Path, opts: &ImportOptions) -> Vec<OsString> {
    // The default signature policy accepts anything too; --insecure-policy only stops skopeo from
    // failing on hosts without /etc/containers/policy.json.
    let mut v: Vec<OsString> = vec![
        "--insecure-policy".into(),
        "copy".into(),
        "--override-os".into(),
        "linux".into(),
        "--override-arch".into(),
        "amd64".into(),
    ];
    if opts.insecure_registry {
        v.push("--src-tls-verify=false".into());
    }
    if let Some(c) = &opts.registry_credentials {
        v.push("--src-creds".into());
        v.push(c.into());
    }
    v.push(src.into());
    let mut dst = OsString::from("oci:");
    dst.push(work.as_os_str());
    dst.push(format!(":{WORK_TAG}"));
    v.push(dst);
    v
}

impl ImageBuilder {
    /// Imports an OCI/Docker image (archive, layout or registry) or a rootfs tarball as image
    /// `opts.name`, replacing an image of that name. The image's `Env`, `WorkingDir`, `User`,
    /// `Entrypoint` and `Cmd` are recorded ([`GuestImage::runtime`]); `Env` and `WorkingDir` become
    /// the defaults of commands run in its VMs.
    pub fn import(&self, opts: &ImportOptions) -> Result<GuestImage, ImageError> {
        if std::env::consts::ARCH != "x86_64" {
            return Err(ImageError::UnsupportedArch(std::env::consts::ARCH));
        }
        validate_name(&opts.name)?;
        let kind = match &opts.source {
            ImportSource::Registry(r) => {
                check_reference(r)?;
                None
            }
            ImportSource::Path(p) => Some(detect(p)?),
        };
        let needs_oci = kind != Some(Kind::RootfsTar);
        let skopeo = needs_oci
            .then(|| tools::require("skopeo", "skopeo"))
            .transpose()?;
        let umoci = needs_oci
            .then(|| tools::require("umoci", "umoci"))
            .transpose()?;
        tools::require("mkfs.ext4", "e2fsprogs")?;
        let report = Reporter::new(opts.progress);
        let images_dir = self.images_dir().to_path_buf();
        std::fs::create_dir_all(&images_dir)
            .map_err(|e| ImageError::io("create directory", &images_dir, e))?;
        report.step("checking inputs");
        let kid = kcache::identify(self.kernel_source(), &images_dir.join(".cache"))?;
        let agent_path = agent::locate(self.agent_override(), &images_dir.join(".agent"))?;
        let (source, src_ref) = match (&opts.source, kind) {
            (ImportSource::Registry(r), _) => (
                ImageSource::Oci {
                    reference: r.clone(),
                },
                format!("docker://{r}"),
            ),
            (ImportSource::Path(p), Some(k)) => {
                let abs = std::path::absolute(p).map_err(|e| ImageError::io("resolve", p, e))?;
                let transport = match k {
                    Kind::OciLayout => "oci",
                    Kind::OciArchive => "oci-archive",
                    Kind::DockerArchive => "docker-archive",
                    Kind::RootfsTar => "rootfs-tar",
                };
                (
                    ImageSource::Archive {
                        path: abs.display().to_string(),
                    },
                    format!("{transport}:{}", abs.display()),
                )
            }
            (ImportSource::Path(_), None) => unreachable!("paths are always classified"),
        };
        let mut fp = Fingerprint::default();
        fp.add("format", &OCI_FORMAT.to_le_bytes())
            .add("kernel", kid.identity.as_bytes())
            .add("agent", cache::file_sha256(&agent_path)?.as_bytes())
            .add("source", src_ref.as_bytes());
        let fingerprint = fp.finish();
        let what = src_ref.clone();

        // An import always reads its source again: the archive or the tag may have changed.
        assemble::cached_or_build(self, &opts.name, &fingerprint, true, &kid, &report, |ctx| {
            report.step("writing the initramfs");
            assemble::write_boot_files(ctx.kernel, &agent_path, ctx.dir)?;
            let staging = ctx.dir.join("staging");
            let runtime = if let (Some(skopeo), Some(umoci)) = (&skopeo, &umoci) {
                let work = ctx.dir.join("oci");
                report.step(format!("reading {what}"));
                tools::output(
                    Command::new(skopeo).args(skopeo_args(&src_ref, &work, opts)),
                    None,
                )
                .map_err(|e| import_err(&what, &e.to_string()))?;
                let rc = oci_config::read(&work)?;
                report.step("applying the layers");
                let mut image_ref = work.as_os_str().to_owned();
                image_ref.push(format!(":{WORK_TAG}"));
                tools::output(
                    Command::new(umoci)
                        .args(["raw", "unpack", "--image"])
                        .arg(&image_ref)
                        .arg(&staging),
                    None,
                )
                .map_err(|e| import_err(&what, &e.to_string()))?;
                std::fs::remove_dir_all(&work).map_err(|e| ImageError::io("remove", &work, e))?;
                Some(rc)
            } else {
                let ImportSource::Path(p) = &opts.source else {
                    unreachable!("registry sources always use skopeo");
                };
                report.step("unpacking the root filesystem");
                unpack_rootfs_tar(p, &staging)?;
                None
            };
            report.step("installing the smolvm agent");
            userland::adapt(&staging, &agent_path)?;
            if let Some(rc) = &runtime {
                write_profile(&staging, rc)?;
            }
            let (bytes, inodes) = userland::usage(&staging)?;
            let size = userland::ext4_size_mib(bytes, inodes);
            report.step(format!("making the {size} MiB root filesystem"));
            rootfs::make_ext4(&staging, &ctx.dir.join(ROOTFS_FILE), size)?;
            std::fs::remove_dir_all(&staging).map_err(|e| ImageError::io("remove", &staging, e))?;
            Ok(GuestImage {
                name: opts.name.clone(),
                dir: ctx.dir.to_path_buf(),
                kernel: PathBuf::new(),
                kernel_elf: PathBuf::new(),
                initrd: PathBuf::new(),
                rootfs: PathBuf::new(),
                needs_initrd: !ctx.kernel.is_minimal(),
                boot_args: ctx.kernel.boot_args().to_string(),
                fingerprint: fingerprint.clone(),
                has_agent: true,
                kernel_package: ctx.kernel.meta.description.clone(),
                kernel_release: ctx.kernel.meta.release.clone(),
                ssh_server: if staging_had_dropbear(&ctx.dir.join(ROOTFS_FILE)) {
                    "dropbear (from the image)".into()
                } else {
                    "none (commands run through the agent)".into()
                },
                ssh_password: false,
                ssh_public_key: false,
                rootfs_size_mib: size,
                built_at: assemble::now_secs(),
                cached: false,
                source: source.clone(),
                runtime,
            })
        })
    }
}

/// True when the finished rootfs has `/usr/sbin/dropbear` (the agent starts it if present).
fn staging_had_dropbear(rootfs: &Path) -> bool {
    let Some(debugfs) = crate::host::tools::find_program("debugfs") else {
        return false;
    };
    tools::output(
        Command::new(debugfs)
            .args(["-R", "stat /usr/sbin/dropbear"])
            .arg(rootfs),
        None,
    )
    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Inode:"))
}

/// Unpacks a rootfs tarball with its owners (numeric), modes and xattrs.
fn unpack_rootfs_tar(tarball: &Path, staging: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(staging).map_err(|e| ImageError::io("create directory", staging, e))?;
    let tar = tools::require("tar", "tar")?;
    tools::output(
        Command::new(tar)
            .args([
                "--numeric-owner",
                "--same-permissions",
                "--xattrs",
                "--xattrs-include=*",
                "-xf",
            ])
            .arg(tarball)
            .arg("-C")
            .arg(staging),
        None,
    )
    .map_err(|e| import_err(tarball, &e.to_string()))
    .map(drop)
}

/// Writes the Env/WorkingDir profile, and an `/etc/profile` that reads `/etc/profile.d` when the
/// image has none (busybox-style images), so login shells (the agent's `sh -lc`) apply it.
fn write_profile(root: &Path, rc: &RuntimeConfig) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let p = root.join(PROFILE);
    std::fs::write(&p, oci_config::profile_script(rc))
        .map_err(|e| ImageError::io("write", &p, e))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| ImageError::io("chmod", &p, e))?;
    // Docker creates a missing WorkingDir; commands start there, so it must exist. (A path with `..`
    // or one that is a symlink in the image is left alone: it could point out of the tree.)
    if let Some(w) = &rc.working_dir {
        let rel = Path::new(w.trim_start_matches('/'));
        let plain = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if plain && root.join(rel).symlink_metadata().is_err() {
            let d = root.join(rel);
            std::fs::create_dir_all(&d).map_err(|e| ImageError::io("create directory", &d, e))?;
        }
    }
    let profile = root.join("etc/profile");
    if profile.symlink_metadata().is_err() {
        std::fs::write(
            &profile,
            "for f in /etc/profile.d/*.sh; do [ -r \"$f\" ] && . \"$f\"; done\nunset f\n",
        )
        .map_err(|e| ImageError::io("write", &profile, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tars_are_classified_by_their_top_level_entries() {
        assert_eq!(
            classify_tar("blobs/\nblobs/sha256/ab\nindex.json\noci-layout\n"),
            Kind::OciArchive
        );
        assert_eq!(
            classify_tar("abc/layer.tar\nmanifest.json\nrepositories\n"),
            Kind::DockerArchive
        );
        assert_eq!(classify_tar("./\n./bin/\n./etc/passwd\n"), Kind::RootfsTar);
        assert_eq!(classify_tar("./etc/manifest.json\n"), Kind::RootfsTar);
    }

    #[test]
    fn skopeo_argv_and_reference_checks() {
        let opts = ImportOptions {
            name: "x".into(),
            source: ImportSource::Registry("localhost:5000/app:1".into()),
            insecure_registry: true,
            registry_credentials: Some("u:p".into()),
            progress: Progress::Quiet,
        };
        let args: Vec<String> =
            skopeo_args("docker://localhost:5000/app:1", Path::new("/b/oci"), &opts)
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
        assert_eq!(
            args,
            [
                "--insecure-policy",
                "copy",
                "--override-os",
                "linux",
                "--override-arch",
                "amd64",
                "--src-tls-verify=false",
                "--src-creds",
                "u:p",
                "docker://localhost:5000/app:1",
                "oci:/b/oci:smolvm",
            ]
        );
        assert!(check_reference("docker.io/library/alpine:3.20").is_ok());
        for bad in ["", "-x", "docker://a", "a b"] {
            assert!(check_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_corrupt_archive_or_plain_directory_is_refused_up_front() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("bad.tar");
        std::fs::write(&f, b"this is not a tar archive at all, just text").unwrap();
        let e = detect(&f).unwrap_err();
        assert!(e.to_string().contains("not a readable tar archive"), "{e}");
        let e = detect(t.path()).unwrap_err();
        assert!(e.to_string().contains("OCI image layout"), "{e}");
    }
}
