//! Debian images: a Debian userland installed from the distribution's packages by `mmdebstrap` (to a
//! directory: no loop mount), made into ext4 with `mkfs.ext4 -d`, booted by the same kernel and
//! initramfs as the default image, with the smolvm agent as `/init` and Debian's `dropbear-bin` as the
//! SSH server (the agent starts `/usr/sbin/dropbear`; the host writes each VM's pinned host key into its
//! disk, as for the default image).
//!
//! ```no_run
//! use smolvm::{DebianOptions, ImageBuilder, Preset};
//! let builder = ImageBuilder::new(std::path::Path::new("/var/lib/smolvm"));
//! let image = builder.build_debian(&DebianOptions {
//!     preset: Some(Preset::Python),
//!     ..DebianOptions::default()
//! })?;
//! # Ok::<(), smolvm::Error>(())
//! ```

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use super::assemble;
use super::builder::{validate_name, ImageBuilder};
use super::cache::{self, Fingerprint};
use super::error::ImageError;
use super::progress::{Progress, Reporter};
use super::{agent, kcache, mirror, rootfs, userland};
use super::{GuestImage, ImageSource, ROOTFS_FILE, SSH_BOOT_ARGS};
use crate::host::{tools, ToolError};

/// Suite built when none is given.
pub const DEFAULT_SUITE: &str = "bookworm";
/// Packages every Debian image gets: the SSH server the agent starts.
pub(super) const BASE_PACKAGES: &[&str] = &["dropbear-bin"];
/// `mmdebstrap --variant`: the Essential packages plus apt, so `apt-get install` works in the guest.
const VARIANT: &str = "apt";
/// Bumped whenever the image layout or contents change for the same inputs.
const DEBIAN_FORMAT: u32 = 1;

/// Package sets that are one flag away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Python 3 with pip and venv, git, curl and CA certificates: what agent workloads reach for first.
    Python,
}

impl Preset {
    /// The packages of the preset.
    pub fn packages(self) -> &'static [&'static str] {
        match self {
            Preset::Python => &[
                "python3",
                "python3-pip",
                "python3-venv",
                "git",
                "curl",
                "ca-certificates",
            ],
        }
    }

    /// The preset's name (`python`).
    pub fn name(self) -> &'static str {
        match self {
            Preset::Python => "python",
        }
    }
}

impl std::str::FromStr for Preset {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "python" => Ok(Preset::Python),
            other => Err(ImageError::invalid(
                "preset",
                format!("unknown preset {other:?} (known: python)"),
            )),
        }
    }
}

/// What Debian image to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianOptions {
    /// Image name; default `debian-<suite>` or `debian-<suite>-<preset>`.
    pub name: Option<String>,
    /// Debian suite (`bookworm`).
    pub suite: String,
    /// Extra packages (Debian package names).
    pub packages: Vec<String>,
    /// A preset package set added to `packages`.
    pub preset: Option<Preset>,
    /// Mirror URL; default: the host's configured Debian mirror.
    pub mirror: Option<String>,
    /// Apparent rootfs size in MiB; default: the installed size plus room to grow (sparse).
    pub rootfs_size_mib: Option<u64>,
    /// Rebuild even if the cache holds an image with the same inputs.
    pub force: bool,
    /// Progress reporting.
    pub progress: Progress,
}

impl Default for DebianOptions {
    fn default() -> Self {
        DebianOptions {
            name: None,
            suite: DEFAULT_SUITE.to_string(),
            packages: Vec::new(),
            preset: None,
            mirror: None,
            rootfs_size_mib: None,
            force: false,
            progress: Progress::Auto,
        }
    }
}

impl DebianOptions {
    /// The image name: the given one, else `debian-<suite>[-<preset>]`.
    pub fn image_name(&self) -> String {
        match (&self.name, self.preset) {
            (Some(n), _) => n.clone(),
            (None, Some(p)) => format!("debian-{}-{}", self.suite, p.name()),
            (None, None) => format!("debian-{}", self.suite),
        }
    }

    /// Preset and user packages, sorted and without duplicates (the base set is added at build time).
    pub fn requested_packages(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .preset
            .map(|p| p.packages().iter().map(|s| s.to_string()).collect())
            .unwrap_or_default();
        v.extend(self.packages.iter().map(|p| p.trim().to_string()));
        v.sort();
        v.dedup();
        v
    }

    /// Checks every option before any slow step.
    pub fn validate(&self) -> Result<(), ImageError> {
        validate_name(&self.image_name())?;
        let suite_ok = !self.suite.is_empty()
            && self.suite.len() <= 32
            && self.suite.as_bytes()[0].is_ascii_lowercase()
            && self
                .suite
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
        if !suite_ok {
            return Err(ImageError::invalid(
                "suite",
                format!("{:?}: expected a Debian suite such as bookworm", self.suite),
            ));
        }
        for p in self.requested_packages() {
            check_package(&p)?;
        }
        if let Some(m) = &self.mirror {
            check_mirror(m)?;
        }
        if let Some(size) = self.rootfs_size_mib {
            if !(rootfs::MIN_SIZE_MIB..=rootfs::MAX_SIZE_MIB).contains(&size) {
                return Err(ImageError::invalid(
                    "rootfs_size_mib",
                    format!(
                        "must be between {} and {}, got {size}",
                        rootfs::MIN_SIZE_MIB,
                        rootfs::MAX_SIZE_MIB
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A Debian package name (policy 5.6.1: lower case letters, digits, `+ - .`, at least two
/// characters, starting alphanumeric). Anything else could be read as an option by apt.
fn check_package(p: &str) -> Result<(), ImageError> {
    let ok = p.len() >= 2
        && p.as_bytes()[0].is_ascii_alphanumeric()
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ImageError::invalid(
            "packages",
            format!("{p:?} is not a Debian package name"),
        ))
    }
}

fn check_mirror(m: &str) -> Result<(), ImageError> {
    let scheme_ok = ["http://", "https://", "file:/"]
        .iter()
        .any(|s| m.starts_with(s));
    if scheme_ok && !m.contains(char::is_whitespace) {
        Ok(())
    } else {
        Err(ImageError::invalid(
            "mirror",
            format!("{m:?}: expected an http://, https:// or file:/ URL"),
        ))
    }
}

/// The `mmdebstrap` arguments installing `packages` (base set included) from `suite` of `mirror`
/// into the directory `target`.
pub(super) fn mmdebstrap_args(
    suite: &str,
    mirror: &str,
    packages: &[String],
    target: &Path,
) -> Vec<OsString> {
    let mut include: Vec<&str> = BASE_PACKAGES.to_vec();
    include.extend(packages.iter().map(String::as_str));
    let mut v: Vec<OsString> = vec![
        format!("--variant={VARIANT}").into(),
        "--mode=auto".into(),
        "--format=directory".into(),
        format!("--include={}", include.join(",")).into(),
        suite.into(),
    ];
    v.push(target.as_os_str().to_owned());
    v.push(mirror.into());
    v
}

impl ImageBuilder {
    /// Builds a Debian image (or returns the cached one when every input is unchanged): `mmdebstrap`
    /// installs the suite's Essential packages, apt, `dropbear-bin` and the requested packages from the
    /// mirror; the agent becomes `/init`; the tree becomes a sparse ext4 sized to fit.
    pub fn build_debian(&self, opts: &DebianOptions) -> Result<GuestImage, ImageError> {
        if std::env::consts::ARCH != "x86_64" {
            return Err(ImageError::UnsupportedArch(std::env::consts::ARCH));
        }
        opts.validate()?;
        let mmdebstrap = tools::require("mmdebstrap", "mmdebstrap")?;
        tools::require("mkfs.ext4", "e2fsprogs")?;
        let report = Reporter::new(opts.progress);
        let images_dir = self.images_dir().to_path_buf();
        std::fs::create_dir_all(&images_dir)
            .map_err(|e| ImageError::io("create directory", &images_dir, e))?;
        report.step("checking inputs");
        let kid = kcache::identify(self.kernel_source(), &images_dir.join(".cache"))?;
        let agent_path = agent::locate(self.agent_override(), &images_dir.join(".agent"))?;
        let name = opts.image_name();
        let mirror = opts.mirror.clone().unwrap_or_else(mirror::host_mirror);
        let packages = opts.requested_packages();

        let mut fp = Fingerprint::default();
        fp.add("format", &DEBIAN_FORMAT.to_le_bytes())
            .add("kernel", kid.identity.as_bytes())
            .add("agent", cache::file_sha256(&agent_path)?.as_bytes())
            .add("boot_args", SSH_BOOT_ARGS.as_bytes())
            .add("suite", opts.suite.as_bytes())
            .add("mirror", mirror.as_bytes())
            .add("variant", VARIANT.as_bytes())
            .add("base", BASE_PACKAGES.join(",").as_bytes())
            .add("packages", packages.join(",").as_bytes())
            .add(
                "size",
                &opts.rootfs_size_mib.unwrap_or_default().to_le_bytes(),
            );
        fp.add_file_identity("mmdebstrap", &mmdebstrap)?;
        let fingerprint = fp.finish();

        assemble::cached_or_build(
            self,
            &name,
            &fingerprint,
            opts.force,
            &kid,
            &report,
            |ctx| {
                report.step("writing the initramfs");
                assemble::write_boot_files(ctx.kernel, &agent_path, ctx.dir)?;
                let staging = ctx.dir.join("staging");
                let args = mmdebstrap_args(&opts.suite, &mirror, &packages, &staging);
                run_mmdebstrap(&mmdebstrap, &args, &opts.suite, &report)?;
                report.step("installing the smolvm agent");
                userland::adapt(&staging, &agent_path)?;
                let (bytes, inodes) = userland::usage(&staging)?;
                let needed = userland::ext4_size_mib(bytes, inodes);
                let size = match opts.rootfs_size_mib {
                    Some(s) if s < needed => {
                        return Err(ImageError::invalid(
                            "rootfs_size_mib",
                            format!(
                            "{s} MiB is too small for the installed packages (need about {needed})"
                        ),
                        ))
                    }
                    Some(s) => s,
                    None => needed,
                };
                report.step(format!("making the {size} MiB root filesystem"));
                rootfs::make_ext4(&staging, &ctx.dir.join(ROOTFS_FILE), size)?;
                std::fs::remove_dir_all(&staging)
                    .map_err(|e| ImageError::io("remove", &staging, e))?;
                Ok(GuestImage {
                    name: name.clone(),
                    dir: ctx.dir.to_path_buf(),
                    kernel: Default::default(),
                    kernel_elf: Default::default(),
                    initrd: Default::default(),
                    rootfs: Default::default(),
                    needs_initrd: !ctx.kernel.is_minimal(),
                    boot_args: ctx.kernel.boot_args().to_string(),
                    fingerprint: fingerprint.clone(),
                    has_agent: true,
                    kernel_package: ctx.kernel.meta.description.clone(),
                    kernel_release: ctx.kernel.meta.release.clone(),
                    ssh_server: "dropbear (Debian dropbear-bin)".to_string(),
                    ssh_password: false,
                    ssh_public_key: false,
                    rootfs_size_mib: size,
                    built_at: assemble::now_secs(),
                    cached: false,
                    source: ImageSource::Debian {
                        suite: opts.suite.clone(),
                        mirror: mirror.clone(),
                        packages: packages.clone(),
                    },
                    runtime: None,
                })
            },
        )
    }
}

/// Runs mmdebstrap, showing its `I:` progress lines as build steps and keeping the tail of its output
/// for the error message.
fn run_mmdebstrap(
    program: &Path,
    args: &[OsString],
    suite: &str,
    report: &Reporter,
) -> Result<(), ImageError> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    report.step(format!("debian {suite}: starting mmdebstrap"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ToolError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    let mut tail: VecDeque<String> = VecDeque::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(msg) = line.strip_prefix("I: ") {
                report.step(format!("debian {suite}: {msg}"));
            }
            if tail.len() == 8 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    let status = child.wait().map_err(|source| ToolError::Spawn {
        program: program.display().to_string(),
        source,
    })?;
    if status.success() {
        return Ok(());
    }
    let text = Vec::from(tail).join("\n");
    let err = ToolError::failed(&cmd, &status, &text);
    Err(if text.contains("Unable to locate package")
        || text.contains("has no installation candidate")
    {
        err.with_hint("check the package names (apt-cache policy NAME) and the suite")
    } else {
        err
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_packages_and_validation() {
        let o = DebianOptions {
            preset: Some(Preset::Python),
            packages: vec!["git".into(), "jq".into()],
            ..DebianOptions::default()
        };
        assert_eq!(o.image_name(), "debian-bookworm-python");
        assert_eq!(
            o.requested_packages(),
            [
                "ca-certificates",
                "curl",
                "git",
                "jq",
                "python3",
                "python3-pip",
                "python3-venv"
            ]
        );
        assert!(o.validate().is_ok());
        assert_eq!(DebianOptions::default().image_name(), "debian-bookworm");
        for bad in [
            DebianOptions {
                packages: vec!["--allow-unauthenticated".into()],
                ..DebianOptions::default()
            },
            DebianOptions {
                packages: vec!["Python3".into()],
                ..DebianOptions::default()
            },
            DebianOptions {
                suite: "bookworm main".into(),
                ..DebianOptions::default()
            },
            DebianOptions {
                mirror: Some("ftp://x".into()),
                ..DebianOptions::default()
            },
            DebianOptions {
                name: Some("../x".into()),
                ..DebianOptions::default()
            },
            DebianOptions {
                rootfs_size_mib: Some(1),
                ..DebianOptions::default()
            },
        ] {
            let e = bad.validate().unwrap_err();
            assert!(matches!(e, ImageError::InvalidOption { .. }), "{e}");
        }
        assert_eq!("python".parse::<Preset>().unwrap(), Preset::Python);
        assert!("ruby".parse::<Preset>().is_err());
    }

    #[test]
    fn mmdebstrap_argv_is_exact() {
        let args = mmdebstrap_args(
            "bookworm",
            "http://deb.debian.org/debian",
            &["git".into(), "python3".into()],
            Path::new("/c/.tmp-x/staging"),
        );
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--variant=apt",
                "--mode=auto",
                "--format=directory",
                "--include=dropbear-bin,git,python3",
                "bookworm",
                "/c/.tmp-x/staging",
                "http://deb.debian.org/debian",
            ]
        );
    }

    /// mmdebstrap's failure becomes an error with its last lines and a hint; `I:` lines are progress.
    #[test]
    fn mmdebstrap_failure_is_explained() {
        let sh = crate::host::tools::find_program("sh").unwrap();
        let args: Vec<OsString> = vec![
            "-c".into(),
            "echo 'I: running apt-get update...' >&2; echo 'E: Unable to locate package nope' >&2; exit 1"
                .into(),
        ];
        let e =
            run_mmdebstrap(&sh, &args, "bookworm", &Reporter::new(Progress::Quiet)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("Unable to locate package nope"), "{msg}");
        assert!(msg.contains("check the package names"), "{msg}");
        assert!(run_mmdebstrap(
            &sh,
            &["-c".into(), "true".into()],
            "x",
            &Reporter::new(Progress::Quiet)
        )
        .is_ok());
    }
}
