//! The minimal guest kernel: built on this machine from Debian's `linux-source` package with
//! `make tinyconfig` plus smolvm's commented fragment (`kernel-config/minimal.config`). Every driver a
//! guest needs is built in, so it boots without an initramfs. The build makes both forms: the ELF
//! `vmlinux`, which Firecracker and QEMU boot (QEMU through PVH, with the i8259 off: see the QEMU argv),
//! and a bzImage, QEMU's fallback for a `vmlinux` that is missing.
//!
//! Building takes minutes (about 5 on 2 cores): the result is cached in the prepared-kernel cache keyed
//! by the source package version, the fragment and the compiler, and shared by every image.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::deb::{self, ResolvedPackage};
use super::error::ImageError;
use super::progress::Reporter;
use crate::host::{tools, ToolError};

/// The config fragment applied on top of `tinyconfig`.
pub(super) const FRAGMENT: &str = include_str!("kernel-config/minimal.config");
/// The Debian metapackage naming the current kernel source package (`linux-source-6.1` on bookworm).
pub(super) const SOURCE_PACKAGE: &str = "linux-source";

/// Programs the kernel build runs, with the package that has each.
const BUILD_TOOLS: &[(&str, &str)] = &[
    ("make", "make"),
    ("gcc", "gcc"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
    ("tar", "tar"),
    ("xz", "xz-utils"),
];

/// Bumped when what the build produces changes (2: a bzImage beside the vmlinux).
const BUILD_FORMAT: u32 = 2;

/// The identity of a minimal kernel built from `pkg`: source version, fragment and compiler.
pub(super) fn identity(pkg: &ResolvedPackage) -> String {
    let version = pkg.version.as_deref().unwrap_or("unpinned");
    let fragment = hex8(FRAGMENT.as_bytes());
    format!(
        "minimal:{}={version}:frag={fragment}:b{BUILD_FORMAT}:cc={}",
        pkg.package,
        hex8(compiler_version().as_bytes())
    )
}

/// What `gcc --version` says first (part of the identity: another compiler makes another kernel).
fn compiler_version() -> String {
    Command::new("gcc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "no gcc".to_string())
}

fn hex8(data: &[u8]) -> String {
    deb::hex(&Sha256::digest(data)[..8])
}

/// Checks that every program and header the build needs is installed, naming the packages otherwise.
pub(super) fn check_tools() -> Result<(), ImageError> {
    for (tool, package) in BUILD_TOOLS {
        tools::require(tool, package)?;
    }
    // objtool, which x86_64 kernels need, is built against libelf.
    if !Path::new("/usr/include/libelf.h").is_file() && !Path::new("/usr/include/gelf.h").is_file()
    {
        return Err(ToolError::Missing {
            program: "libelf.h".into(),
            package: "libelf-dev",
            hint: " (the kernel's objtool is built against libelf)",
        }
        .into());
    }
    Ok(())
}

/// What a build produced (inside its scratch directory).
pub(super) struct Built {
    /// The ELF kernel.
    pub vmlinux: PathBuf,
    /// The same kernel as a bzImage.
    pub bzimage: PathBuf,
    /// `make kernelrelease`.
    pub release: Option<String>,
}

/// Downloads the source of `pkg`, configures and compiles it in `work`. `work` is scratch space
/// (about 2 GB); the caller removes it.
pub(super) fn build(
    pkg: &ResolvedPackage,
    work: &Path,
    report: &Reporter,
) -> Result<Built, ImageError> {
    check_tools()?;
    report.step(format!("downloading {} (the kernel source)", pkg.package));
    let dl = work.join("download");
    mkdir(&dl)?;
    let deb_path = deb::download(pkg, &dl)?;
    report.step(format!("unpacking {}", pkg.package));
    let x = work.join("unpacked");
    deb::extract(&deb_path, &x)?;
    let _ = fs::remove_file(&deb_path);
    let tarball = find_tarball(&x.join("usr/src"), &deb_path)?;
    let src = work.join("src");
    mkdir(&src)?;
    tools::output(
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&src)
            .arg("--strip-components=1"),
        None,
    )?;
    let _ = fs::remove_dir_all(&x);

    report.step("configuring the kernel (tinyconfig + smolvm's fragment)");
    let out = work.join("out");
    mkdir(&out)?;
    let fragment = work.join("smolvm.config");
    fs::write(&fragment, FRAGMENT).map_err(|e| ImageError::io("write", &fragment, e))?;
    make(&src, &out, &["tinyconfig"])?;
    tools::output(
        Command::new("sh")
            .arg(src.join("scripts/kconfig/merge_config.sh"))
            .arg("-m")
            .arg("-O")
            .arg(&out)
            .arg(out.join(".config"))
            .arg(&fragment)
            .current_dir(&src),
        None,
    )?;
    make(&src, &out, &["olddefconfig"])?;
    let config_path = out.join(".config");
    let config =
        fs::read_to_string(&config_path).map_err(|e| ImageError::io("read", &config_path, e))?;
    let missing = unmet_options(FRAGMENT, &config);
    if !missing.is_empty() {
        return Err(ImageError::BadPackage {
            path: deb_path,
            reason: format!(
                "the kernel configuration dropped options of smolvm's fragment (renamed or with unmet \
                 dependencies in this kernel version): {}",
                missing.join(", ")
            ),
        });
    }

    compile(&src, &out, report)?;
    let release = make(&src, &out, &["-s", "kernelrelease"])
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|r| !r.is_empty());
    Ok(Built {
        vmlinux: out.join("vmlinux"),
        bzimage: out.join("arch/x86/boot/bzImage"),
        release,
    })
}

/// `make -C src O=out <args>`.
fn make(src: &Path, out: &Path, args: &[&str]) -> Result<std::process::Output, ImageError> {
    Ok(tools::output(
        Command::new("make")
            .arg("-C")
            .arg(src)
            .arg(format!("O={}", out.display()))
            .args(args),
        None,
    )?)
}

/// `make bzImage` (which makes `vmlinux` first) on every core, reporting how many files are compiled.
fn compile(src: &Path, out: &Path, report: &Reporter) -> Result<(), ImageError> {
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    report.step(format!(
        "compiling the kernel with {jobs} jobs (takes minutes)"
    ));
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(src)
        .arg(format!("O={}", out.display()))
        .arg(format!("-j{jobs}"))
        .arg("bzImage")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| ToolError::Spawn {
        program: "make".into(),
        source,
    })?;
    // stderr on a thread (warnings can be plentiful); its tail goes into the error.
    let stderr = child.stderr.take().map(|e| {
        std::thread::spawn(move || {
            let mut tail = std::collections::VecDeque::new();
            for line in BufReader::new(e).lines().map_while(Result::ok) {
                if tail.len() == 40 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            Vec::from(tail).join("\n")
        })
    });
    let mut compiled = 0u32;
    if let Some(o) = child.stdout.take() {
        for line in BufReader::new(o).lines().map_while(Result::ok) {
            if line.trim_start().starts_with("CC ") {
                compiled += 1;
                if compiled.is_multiple_of(25) {
                    report.step(format!("compiling the kernel: {compiled} files"));
                }
            }
        }
    }
    let status = child.wait().map_err(|source| ToolError::Spawn {
        program: "make".into(),
        source,
    })?;
    let tail = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if !status.success() {
        return Err(ToolError::failed(&cmd, &status, &tail).into());
    }
    Ok(())
}

/// The options of `fragment` that `config` does not have as the fragment says (`=y`/values present,
/// `is not set` absent).
fn unmet_options(fragment: &str, config: &str) -> Vec<String> {
    let have: std::collections::HashSet<&str> = config.lines().map(str::trim).collect();
    let enabled = |name: &str| {
        config
            .lines()
            .any(|l| l.starts_with(name) && l[name.len()..].starts_with('='))
    };
    let mut out = Vec::new();
    for line in fragment.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("# ") {
            if let Some(name) = rest.strip_suffix(" is not set") {
                if enabled(name) {
                    out.push(format!("{name} (should be off)"));
                }
            }
        } else if line.starts_with("CONFIG_") && !have.contains(line) {
            out.push(line.to_string());
        }
    }
    out
}

/// The `linux-source-*.tar.*` in the package's `usr/src`.
fn find_tarball(dir: &Path, deb_path: &Path) -> Result<PathBuf, ImageError> {
    fs::read_dir(dir)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-source-") && n.contains(".tar"))
        })
        .ok_or_else(|| ImageError::BadPackage {
            path: deb_path.to_path_buf(),
            reason: "no usr/src/linux-source-*.tar.* in the package: not a kernel source package"
                .into(),
        })
}

fn mkdir(p: &Path) -> Result<(), ImageError> {
    fs::create_dir_all(p).map_err(|e| ImageError::io("create directory", p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_options_are_checked_both_ways() {
        let fragment =
            "# comment\nCONFIG_A=y\nCONFIG_N=32\n# CONFIG_B is not set\n# CONFIG_C is not set\n";
        let ok = "CONFIG_A=y\nCONFIG_N=32\n# CONFIG_B is not set\n";
        assert_eq!(unmet_options(fragment, ok), Vec::<String>::new());
        let bad = "CONFIG_N=16\nCONFIG_B=y\nCONFIG_BB=y\n";
        assert_eq!(
            unmet_options(fragment, bad),
            ["CONFIG_A=y", "CONFIG_N=32", "CONFIG_B (should be off)"]
        );
    }

    #[test]
    fn the_fragment_builds_in_what_a_guest_needs() {
        for needed in [
            "CONFIG_PVH=y",
            "CONFIG_VIRTIO_MMIO=y",
            "CONFIG_VIRTIO_BLK=y",
            "CONFIG_VIRTIO_NET=y",
            "CONFIG_VIRTIO_CONSOLE=y",
            "CONFIG_VIRTIO_VSOCKETS=y",
            "CONFIG_EXT4_FS=y",
            "CONFIG_HIGH_RES_TIMERS=y",
            "CONFIG_NO_HZ_IDLE=y",
            "# CONFIG_MODULES is not set",
        ] {
            assert!(FRAGMENT.lines().any(|l| l == needed), "{needed}");
        }
    }

    #[test]
    fn identity_changes_with_the_source_version() {
        let p = |v: &str| ResolvedPackage {
            requested: SOURCE_PACKAGE.into(),
            package: "linux-source-6.1".into(),
            version: Some(v.into()),
        };
        assert_ne!(identity(&p("6.1.1")), identity(&p("6.1.2")));
        assert!(identity(&p("6.1.1")).starts_with("minimal:linux-source-6.1=6.1.1:frag="));
    }
}
