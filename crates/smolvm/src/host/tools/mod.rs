//! Host programs smolvm runs: where they are, which version, and running them ([`run`], with the one
//! error type [`ToolError`]).
//!
//! Programs are looked up on `PATH` plus the sbin directories, which a non-root `PATH` often lacks
//! (`ip`, `nft`, `mkfs.ext4` live there). Version probes run the program once per path and process
//! (cached), with a time limit so a wedged binary cannot hang `detect`.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

mod run;

pub use run::ToolError;
pub(crate) use run::{filter, output, require, run};

/// Environment variable naming the Firecracker binary (a path, or a name looked up on `PATH`).
pub(crate) const FIRECRACKER_BIN_ENV: &str = "SMOLVM_FIRECRACKER_BIN";
/// Environment variable naming the QEMU binary (a path, or a name looked up on `PATH`).
pub(crate) const QEMU_BIN_ENV: &str = "SMOLVM_QEMU_BIN";
/// The QEMU system emulator smolvm drives.
pub(crate) const QEMU_SYSTEM: &str = "qemu-system-x86_64";

/// Directories searched after `PATH`.
const EXTRA_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];
/// How long a `--version` probe may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(3);

/// An installed program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolInfo {
    /// Absolute path of the executable.
    pub path: PathBuf,
    /// Version number as the program reports it (e.g. `7.2.22`), if it was probed and understood.
    pub version: Option<String>,
}

/// The programs smolvm uses; `None` = not found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tools {
    /// QEMU system emulator (QEMU backend).
    #[serde(rename = "qemu-system-x86_64")]
    pub qemu_system: Option<ToolInfo>,
    /// Firecracker VMM (Firecracker backend).
    pub firecracker: Option<ToolInfo>,
    /// nftables CLI (NAT and port forwarding).
    pub nft: Option<ToolInfo>,
    /// iproute2 (TAP devices, addresses).
    pub ip: Option<ToolInfo>,
    /// OpenSSH client.
    pub ssh: Option<ToolInfo>,
    /// Key generation for VM SSH access.
    #[serde(rename = "ssh-keygen")]
    pub ssh_keygen: Option<ToolInfo>,
    /// Builds ext4 root filesystems.
    #[serde(rename = "mkfs.ext4")]
    pub mkfs_ext4: Option<ToolInfo>,
    /// Edits ext4 images without mounting them.
    pub debugfs: Option<ToolInfo>,
    /// Fetches the guest kernel package.
    #[serde(rename = "apt-get")]
    pub apt_get: Option<ToolInfo>,
    /// The value of `SMOLVM_QEMU_BIN`, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qemu_bin_env: Option<String>,
    /// The value of `SMOLVM_FIRECRACKER_BIN`, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firecracker_bin_env: Option<String>,
}

impl Tools {
    /// Finds every program. Versions are probed for the VMMs always and for the other tools only when
    /// `all_versions` is set (each probe is a process start; `doctor` wants them, a `start` does not).
    pub fn detect(all_versions: bool) -> Tools {
        let qemu_bin_env = env_nonempty(QEMU_BIN_ENV);
        let firecracker_bin_env = env_nonempty(FIRECRACKER_BIN_ENV);
        let other = |name: &str, flag: Option<&str>| {
            find_program(name).map(|path| tool(path, if all_versions { flag } else { None }))
        };
        Tools {
            qemu_system: find_override_or(qemu_bin_env.as_deref(), QEMU_SYSTEM)
                .map(|p| tool(p, Some("--version"))),
            firecracker: find_override_or(firecracker_bin_env.as_deref(), "firecracker")
                .map(|p| tool(p, Some("--version"))),
            nft: other("nft", Some("--version")),
            ip: other("ip", Some("-V")),
            ssh: other("ssh", Some("-V")),
            // ssh-keygen has no version option; ssh's version is the one that matters.
            ssh_keygen: other("ssh-keygen", None),
            mkfs_ext4: other("mkfs.ext4", Some("-V")),
            debugfs: other("debugfs", Some("-V")),
            apt_get: other("apt-get", Some("--version")),
            qemu_bin_env,
            firecracker_bin_env,
        }
    }
}

fn env_nonempty(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

fn tool(path: PathBuf, version_flag: Option<&str>) -> ToolInfo {
    let version = version_flag.and_then(|flag| cached_version(&path, flag));
    ToolInfo { path, version }
}

/// An override (a path, or a bare name to look up) if given, else `default` looked up.
fn find_override_or(over: Option<&str>, default: &str) -> Option<PathBuf> {
    match over {
        Some(v) if v.contains('/') => {
            let p = PathBuf::from(v);
            is_executable(&p).then_some(p)
        }
        Some(name) => find_program(name),
        None => find_program(default),
    }
}

/// Finds the executable `name` on `PATH`, then in the sbin directories (a non-root `PATH` often lacks
/// them); a `name` with a `/` is taken as a path and only checked. The one program lookup of smolvm.
pub fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    find_program_in(&std::env::var_os("PATH").unwrap_or_default(), name)
}

/// [`find_program`] with the value of `PATH` given (relative entries are ignored).
fn find_program_in(path: &std::ffi::OsStr, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .filter(|d| d.is_absolute())
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The version of the program at `path` as printed by `path flag`, probed once per process.
pub(crate) fn cached_version(path: &Path, flag: &str) -> Option<String> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Option<String>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().ok()?.get(path) {
        return v.clone();
    }
    // Probe without holding the lock: a slow binary must not block lookups of other tools.
    let v = probe_output(path, flag).and_then(|out| parse_version(&out));
    cache.lock().ok()?.insert(path.to_path_buf(), v.clone());
    v
}

/// Runs `path flag` with a time limit and returns stdout followed by stderr (some tools print their
/// version on stderr).
fn probe_output(path: &Path, flag: &str) -> Option<String> {
    let mut child = Command::new(path)
        .arg(flag)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + VERSION_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                // Our own child, killed through its handle: no pid reuse possible before wait().
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    // Version banners are far smaller than a pipe buffer, so the child never blocked on writing.
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut text);
    }
    if let Some(mut err) = child.stderr.take() {
        text.push('\n');
        let _ = err.read_to_string(&mut text);
    }
    Some(text)
}

/// Extracts a version number from a `--version` banner: the first token that looks like `1.2` or
/// `1.2.3`, after stripping prefixes such as `v`, `iproute2-` or `OpenSSH_`. Returns the first
/// non-empty line if no token qualifies, `None` for empty output.
pub(crate) fn parse_version(banner: &str) -> Option<String> {
    fn numeric(tok: &str) -> Option<&str> {
        let tok = tok.trim_matches(|c: char| matches!(c, ',' | '(' | ')' | ';' | ':'));
        let candidates = [
            tok,
            tok.strip_prefix('v').unwrap_or(""),
            tok.rsplit_once(['-', '_']).map_or("", |(_, r)| r),
        ];
        candidates.into_iter().find(|c| {
            c.starts_with(|ch: char| ch.is_ascii_digit())
                && c.contains('.')
                && c.split('.')
                    .next()
                    .is_some_and(|m| m.chars().all(|ch| ch.is_ascii_digit()))
        })
    }
    let first_line = banner.lines().map(str::trim).find(|l| !l.is_empty())?;
    banner
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(2)
        .flat_map(str::split_whitespace)
        .find_map(numeric)
        .or(Some(first_line))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_real_banners() {
        let cases = [
            (
                "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003",
                "7.2.22",
            ),
            ("Firecracker v1.10.1\n\nSupported snapshot data format versions: v1.0.0", "1.10.1"),
            ("nftables v1.0.6 (Lester Gooch #5)", "1.0.6"),
            ("ip utility, iproute2-6.1.0, libbpf 1.1.0", "6.1.0"),
            ("\nOpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL 3.0.15 3 Sep 2024", "9.2p1"),
            ("mke2fs 1.47.0 (5-Feb-2023)\n\tUsing EXT2FS Library version 1.47.0", "1.47.0"),
            ("debugfs 1.47.0 (5-Feb-2023)", "1.47.0"),
            ("apt 2.6.1 (amd64)\nSupported modules:", "2.6.1"),
        ];
        for (banner, want) in cases {
            assert_eq!(parse_version(banner).as_deref(), Some(want), "{banner}");
        }
        assert_eq!(parse_version("  \n"), None);
        assert_eq!(parse_version("weird tool\n").as_deref(), Some("weird tool"));
    }

    /// An executable script in `dir` printing `banner` and appending a line to `dir/runs`.
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\necho run >> '{}'\n{body}\n",
                dir.join("runs").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn finds_programs_in_sbin_even_without_path() {
        // Some executable of the sbin directories (every Debian system has them).
        let name = EXTRA_DIRS
            .iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .map(|e| e.path())
            .find(|p| is_executable(p))
            .map(|p| p.file_name().unwrap().to_owned())
            .expect("no executable in any sbin directory");
        let name = name.to_str().unwrap();
        let empty = std::ffi::OsStr::new("");
        let found = find_program_in(empty, name).expect("not found without PATH");
        assert!(found.starts_with("/") && is_executable(&found), "{found:?}");
        assert!(EXTRA_DIRS
            .iter()
            .any(|d| found.parent() == Some(Path::new(d))));
        // A program only on PATH is found through PATH, not without it; relative entries are ignored.
        let t = tempfile::tempdir().unwrap();
        let own = script(t.path(), "smolvm-test-only-here", "true");
        assert_eq!(
            find_program_in(t.path().as_os_str(), "smolvm-test-only-here"),
            Some(own)
        );
        assert_eq!(find_program_in(empty, "smolvm-test-only-here"), None);
        assert_eq!(
            find_program_in(
                std::ffi::OsStr::new("relative/dir"),
                "smolvm-test-only-here"
            ),
            None
        );
        assert!(find_program("smolvm-no-such-program").is_none());
        assert!(find_override_or(Some("/nonexistent/firecracker"), "x").is_none());
        assert_eq!(
            find_override_or(Some("/bin/sh"), "x"),
            Some(PathBuf::from("/bin/sh"))
        );
    }

    #[test]
    fn version_probe_is_cached_and_bounded() {
        let t = tempfile::tempdir().unwrap();
        let runs = || {
            std::fs::read_to_string(t.path().join("runs"))
                .unwrap_or_default()
                .lines()
                .count()
        };
        // Cached: the second call does not run the program again.
        let tool = script(t.path(), "tool", "echo \"tool version 1.2.3\"");
        assert_eq!(cached_version(&tool, "--version").as_deref(), Some("1.2.3"));
        assert_eq!(cached_version(&tool, "--version").as_deref(), Some("1.2.3"));
        assert_eq!(runs(), 1);
        // Bounded: a program that never answers is killed after the limit and gives no version.
        let pidfile = t.path().join("pid");
        let hang = script(
            t.path(),
            "hang",
            &format!("echo $$ > '{}'; exec sleep 1000", pidfile.display()),
        );
        assert_eq!(cached_version(&hang, "--version"), None);
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        assert!(
            !Path::new(&format!("/proc/{}", pid.trim())).exists(),
            "the hanging probe {pid} is still there"
        );
    }
}
