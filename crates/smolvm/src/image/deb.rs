//! Distribution packages: resolving and downloading the kernel package with apt (never installing it),
//! and unpacking a `.deb`.
//!
//! Unpacking prefers `dpkg-deb -x` (the system tool, present wherever apt is). Without it, our own `ar`
//! reader takes `data.tar.*` out of the package and the system `tar` unpacks it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::ImageError;
use crate::host::{tools, ToolError};

/// The default kernel package: a metapackage depending on the current `linux-image-<abi>-cloud-amd64`.
pub const DEFAULT_KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";

/// A resolved kernel package: the real (versioned) package and its candidate version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ResolvedPackage {
    /// What was asked for (often a metapackage).
    pub requested: String,
    /// The package that holds the kernel.
    pub package: String,
    /// Its version, or `None` when apt did not pin one (taken from the download then).
    pub version: Option<String>,
}

/// Parses `apt-cache show --no-all-versions <pkg>`: a metapackage's first `linux-image-*` (or, for
/// `linux-source`, `linux-source-*`) dependency is
/// the real package (with its `(= version)` if given); otherwise the package itself is.
pub(super) fn parse_show(requested: &str, text: &str) -> Option<ResolvedPackage> {
    let mut version = None;
    let mut depends = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("Version:") {
            version.get_or_insert_with(|| v.trim().to_string());
        } else if let Some(d) = line.strip_prefix("Depends:") {
            depends.get_or_insert_with(|| d.trim().to_string());
        }
    }
    let version = version?;
    let dep = depends.as_deref().and_then(|d| {
        d.split(',')
            .map(|alt| alt.split('|').next().unwrap_or("").trim())
            .find(|dep| dep.starts_with("linux-image-") || dep.starts_with("linux-source-"))
            .map(str::to_string)
    });
    Some(match dep {
        Some(dep) => {
            let (name, pinned) = match dep.split_once('(') {
                Some((n, rest)) => {
                    let rest = rest.trim_end_matches(')').trim();
                    let pinned = rest.strip_prefix('=').map(|v| v.trim().to_string());
                    (n.trim().to_string(), pinned)
                }
                None => (dep, None),
            };
            ResolvedPackage {
                requested: requested.to_string(),
                package: name,
                version: pinned,
            }
        }
        None => ResolvedPackage {
            requested: requested.to_string(),
            package: requested.to_string(),
            version: Some(version),
        },
    })
}

/// Asks apt which package and version `requested` means now (reads local lists; no network).
pub(super) fn resolve(requested: &str) -> Result<ResolvedPackage, ImageError> {
    let apt_cache =
        crate::host::tools::find_program("apt-cache").ok_or(ImageError::NoPackageManager)?;
    let out = tools::output(
        Command::new(apt_cache).args(["show", "--no-all-versions", requested]),
        None,
    )
    .map_err(|e| e.with_hint("run `apt-get update` (as root) so apt knows the package"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_show(requested, &text).ok_or_else(|| {
        ToolError::Failed {
            program: "apt-cache".into(),
            args: vec!["show".into(), "--no-all-versions".into(), requested.into()],
            status: "no Version field".into(),
            stderr: "apt returned no usable package record".into(),
            hint: "; run `apt-get update` (as root)".into(),
        }
        .into()
    })
}

/// Downloads the package into `dir` with `apt-get download` and returns the `.deb`.
pub(super) fn download(pkg: &ResolvedPackage, dir: &Path) -> Result<PathBuf, ImageError> {
    let apt_get =
        crate::host::tools::find_program("apt-get").ok_or(ImageError::NoPackageManager)?;
    let spec = match &pkg.version {
        Some(v) => format!("{}={v}", pkg.package),
        None => pkg.package.clone(),
    };
    tools::output(
        Command::new(apt_get)
            .args(["download", "-q", &spec])
            .current_dir(dir),
        None,
    )
    .map_err(|e| {
        e.with_hint("check that the Debian mirror is reachable and run `apt-get update` (as root)")
    })?;
    let prefix = format!("{}_", pkg.package);
    let entries = std::fs::read_dir(dir).map_err(|e| ImageError::io("read directory", dir, e))?;
    entries
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .ok_or_else(|| ImageError::BadPackage {
            path: dir.to_path_buf(),
            reason: format!("apt-get download left no {prefix}*.deb"),
        })
}

/// Reads a field of the package's control file (`dpkg-deb -f`), e.g. `Version`.
pub(super) fn control_field(deb: &Path, field: &str) -> Result<String, ImageError> {
    let dpkg = tools::require("dpkg-deb", "dpkg")?;
    let out = tools::output(Command::new(dpkg).arg("-f").arg(deb).arg(field), None)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A fingerprint of apt's state (lists, sources, pins): when it has not changed, a previous resolution
/// still holds, which spares the second-long `apt-cache` run on cached builds.
pub(super) fn apt_state_key() -> String {
    let mut h = Sha256::new();
    for dir in [
        "/var/lib/apt/lists",
        "/etc/apt/sources.list.d",
        "/etc/apt/preferences.d",
    ] {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        for p in names {
            stat_into(&mut h, &p);
        }
    }
    for f in ["/etc/apt/sources.list", "/etc/apt/preferences"] {
        stat_into(&mut h, Path::new(f));
    }
    hex(&h.finalize())
}

fn stat_into(h: &mut Sha256, p: &Path) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(m) = std::fs::metadata(p) {
        h.update(p.to_string_lossy().as_bytes());
        h.update(m.len().to_le_bytes());
        h.update(m.mtime().to_le_bytes());
        h.update(m.mtime_nsec().to_le_bytes());
    }
}

/// Lowercase hex of bytes.
pub(super) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Unpacks the files of a `.deb` into `dest` (created if missing).
pub(super) fn extract(deb: &Path, dest: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(dest).map_err(|e| ImageError::io("create directory", dest, e))?;
    match crate::host::tools::find_program("dpkg-deb") {
        Some(dpkg) => {
            tools::output(Command::new(dpkg).arg("-x").arg(deb).arg(dest), None)?;
            Ok(())
        }
        None => extract_with_tar(deb, dest),
    }
}

/// Unpacks `data.tar.*` with our `ar` reader and the system `tar` (for hosts without dpkg).
pub(super) fn extract_with_tar(deb: &Path, dest: &Path) -> Result<(), ImageError> {
    let bad = |reason: String| ImageError::BadPackage {
        path: deb.to_path_buf(),
        reason,
    };
    let mut f = File::open(deb).map_err(|e| ImageError::io("open", deb, e))?;
    let members = super::ar::members(&mut f).map_err(|e| bad(e.to_string()))?;
    let data = members
        .iter()
        .find(|m| m.name.starts_with("data.tar"))
        .ok_or_else(|| bad("no data.tar.* member".into()))?;
    let flag = match data.name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("tar") => None,
        Some("gz") => Some("-z"),
        Some("xz") => Some("-J"),
        Some("zst") => Some("--zstd"),
        Some("bz2") => Some("-j"),
        _ => return Err(bad(format!("unsupported member {}", data.name))),
    };
    let tar = tools::require("tar", "tar")?;
    let mut cmd = Command::new(tar);
    cmd.arg("-x")
        .args(flag)
        .arg("--no-same-owner")
        .arg("-f")
        .arg("-")
        .arg("-C")
        .arg(dest);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ToolError::Spawn {
            program: "tar".into(),
            source,
        })?;
    let copied = match child.stdin.take() {
        Some(mut stdin) => {
            super::ar::copy_member(&mut f, data, &mut stdin).and_then(|_| stdin.flush())
        }
        None => Ok(()),
    };
    let out = child
        .wait_with_output()
        .map_err(|source| ToolError::Spawn {
            program: "tar".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(
            ToolError::failed(&cmd, &out.status, &String::from_utf8_lossy(&out.stderr)).into(),
        );
    }
    copied.map_err(|e| ImageError::io("unpack", deb, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_metapackage_dependency() {
        let show = "Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\n\
                    Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\n";
        let r = parse_show("linux-image-cloud-amd64", show).unwrap();
        assert_eq!(r.package, "linux-image-6.1.0-56-cloud-amd64");
        assert_eq!(r.version.as_deref(), Some("6.1.192-2"));
        // Unpinned dependency (Ubuntu style) and alternatives.
        let show = "Version: 1\nDepends: linux-image-6.8.0-1-generic | linux-image-unsigned-6.8.0-1-generic, linux-firmware\n";
        let r = parse_show("linux-image-generic", show).unwrap();
        assert_eq!(r.package, "linux-image-6.8.0-1-generic");
        assert_eq!(r.version, None);
        // A real kernel package resolves to itself.
        let show = "Version: 6.1.192-2\nDepends: kmod, linux-base (>= 4.3~)\n";
        let r = parse_show("linux-image-6.1.0-56-cloud-amd64", show).unwrap();
        assert_eq!(r.package, "linux-image-6.1.0-56-cloud-amd64");
        assert_eq!(r.version.as_deref(), Some("6.1.192-2"));
        assert_eq!(parse_show("x", "Package: x\n"), None);
    }

    /// Makes a small .deb with our ar writer and the system tar, then unpacks it both ways.
    #[test]
    fn extracts_a_deb_with_and_without_dpkg() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("pkgroot");
        std::fs::create_dir_all(root.join("boot")).unwrap();
        std::fs::write(root.join("boot/vmlinuz-test"), b"kernel bytes").unwrap();
        let data = t.path().join("data.tar.gz");
        let st = Command::new("tar")
            .args(["-czf"])
            .arg(&data)
            .arg("-C")
            .arg(&root)
            .arg("./boot")
            .status()
            .unwrap();
        assert!(st.success());
        let control = t.path().join("control.tar.gz");
        std::fs::write(root.join("control"), "Package: test\nVersion: 1.2-3\nArchitecture: amd64\nMaintainer: x <x@y>\nDescription: t\n").unwrap();
        let st = Command::new("tar")
            .args(["-czf"])
            .arg(&control)
            .arg("-C")
            .arg(&root)
            .arg("./control")
            .status()
            .unwrap();
        assert!(st.success());
        let deb = t.path().join("test_1.2-3_amd64.deb");
        let mut f = File::create(&deb).unwrap();
        super::super::ar::write(
            &mut f,
            &[
                ("debian-binary", b"2.0\n"),
                ("control.tar.gz", &std::fs::read(&control).unwrap()),
                ("data.tar.gz", &std::fs::read(&data).unwrap()),
            ],
        )
        .unwrap();
        drop(f);

        let out1 = t.path().join("out-tar");
        std::fs::create_dir_all(&out1).unwrap();
        extract_with_tar(&deb, &out1).unwrap();
        assert_eq!(
            std::fs::read(out1.join("boot/vmlinuz-test")).unwrap(),
            b"kernel bytes"
        );

        if crate::test_tools::tool_or_skip("dpkg-deb cross-check", "dpkg-deb").is_some() {
            let out2 = t.path().join("out-dpkg");
            extract(&deb, &out2).unwrap();
            assert_eq!(
                std::fs::read(out2.join("boot/vmlinuz-test")).unwrap(),
                b"kernel bytes"
            );
            assert_eq!(control_field(&deb, "Version").unwrap(), "1.2-3");
        }

        // Not a package at all.
        let junk = t.path().join("junk.deb");
        std::fs::write(&junk, b"junk").unwrap();
        assert!(matches!(
            extract_with_tar(&junk, &out1),
            Err(ImageError::BadPackage { .. })
        ));
    }
}
