//! The root filesystem: a staging directory turned into ext4 by `mkfs.ext4 -d` (no loop mount, no
//! privileges), in a sparse file of the requested size.
//!
//! Contents: the agent as `/init`, static busybox with its applet links, dropbear with the shared
//! libraries `ldd` names, the `/etc` files of [`super::etc`], and empty mount points.
//!
//! SSH server choice, measured here (Debian 12 packages, QEMU TCG guest): dropbear is one 176 KiB binary
//! plus 6 libraries (~3.3 MiB with libc), needs no privilege-separation user, no PAM and no config file;
//! OpenSSH's sshd pulls 26 libraries (13 MiB) and wants PAM configuration, a privsep user and
//! `/run/sshd`; the dynamic loader alone makes its start slower under emulation. Dropbear it is.
//!
//! Host keys: none are made at build time (a shared image must not share keys). The host writes per-VM
//! keys into each VM's disk at `/etc/dropbear/dropbear_{ed25519,ecdsa,rsa}_host_key` (dropbear format,
//! `dropbearkey -t ed25519 -f FILE`); until then dropbear runs with `-R` and makes a key on the first
//! connection, not at boot.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::ImageError;
use crate::host::{tools, ToolError};

/// Where busybox comes from on the host (package `busybox-static`).
pub(super) const HOST_BUSYBOX: &str = "/bin/busybox";
/// Where dropbear comes from on the host (package `dropbear-bin`).
pub(super) const HOST_DROPBEAR: &str = "/usr/sbin/dropbear";
/// Dropbear's path in the guest (the agent starts it from there).
pub(super) const GUEST_DROPBEAR: &str = "usr/sbin/dropbear";
/// Default rootfs size.
pub const DEFAULT_SIZE_MIB: u64 = 512;
/// Smallest rootfs we build (contents are ~10 MiB, plus ext4 metadata and the journal).
pub(super) const MIN_SIZE_MIB: u64 = 64;
/// Largest rootfs we build (1 TiB; sparse, so only the apparent size).
pub(super) const MAX_SIZE_MIB: u64 = 1 << 20;

/// Applets not linked: busybox's own init would only confuse (the agent is init).
const SKIP_APPLETS: &[&str] = &["linuxrc", "sbin/init"];

/// Applets the agent binary (`/init`) serves instead of busybox: its `wget` front end handles `-T`,
/// which crashes Debian's busybox (see the agent's `wget` module).
pub(super) const AGENT_APPLETS: &[&str] = &["usr/bin/wget"];

/// Directories of the guest, with modes.
const DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("sbin", 0o755),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("usr/local", 0o755),
    ("usr/local/bin", 0o755),
    ("etc", 0o755),
    ("etc/profile.d", 0o755),
    ("etc/dropbear", 0o755),
    ("root", 0o700),
    ("root/.ssh", 0o700),
    ("home", 0o755),
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("mnt", 0o755),
    ("var", 0o755),
    ("var/log", 0o755),
    ("var/tmp", 0o1777),
    ("var/lib", 0o755),
];

/// Files the SSH server needs from the host: the binary and its shared libraries (guest path, host path).
pub(super) fn dropbear_files(dropbear: &Path) -> Result<Vec<(String, PathBuf)>, ImageError> {
    if !dropbear.is_file() {
        return Err(ToolError::Missing {
            program: "dropbear".into(),
            package: "dropbear-bin",
            hint: " (the guest's SSH server is copied from the host)",
        }
        .into());
    }
    let mut out = vec![(GUEST_DROPBEAR.to_string(), dropbear.to_path_buf())];
    let ldd = tools::require("ldd", "libc-bin")?;
    let o = tools::output(Command::new(ldd).arg(dropbear), None)?;
    for lib in parse_ldd(&String::from_utf8_lossy(&o.stdout)) {
        let guest = lib.to_string_lossy().trim_start_matches('/').to_string();
        out.push((guest, lib));
    }
    Ok(out)
}

/// Library paths from `ldd` output (`libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)` and the
/// loader line `/lib64/ld-linux-x86-64.so.2 (0x...)`); the vDSO has no file and is skipped.
pub(super) fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Applet paths of a busybox binary (`busybox --list-full`: `bin/sh`, `usr/bin/awk`, ...).
pub(super) fn busybox_applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let o = tools::output(Command::new(busybox).arg("--list-full"), None)?;
    Ok(String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("..") && !SKIP_APPLETS.contains(l))
        .map(str::to_string)
        .collect())
}

/// Everything the staging step needs.
#[derive(Debug)]
pub(super) struct Contents<'a> {
    /// The agent binary.
    pub agent: &'a Path,
    /// The static busybox.
    pub busybox: &'a Path,
    /// Busybox applet paths.
    pub applets: &'a [String],
    /// SSH server files (guest path, host path).
    pub ssh_files: &'a [(String, PathBuf)],
    /// Generated files (guest path, mode, contents).
    pub etc_files: &'a [(&'static str, u32, String)],
}

/// Fills the staging directory.
pub(super) fn stage(root: &Path, c: &Contents<'_>) -> Result<(), ImageError> {
    let io = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |e| ImageError::io(action, p, e)
    };
    for (d, mode) in DIRS {
        let p = root.join(d);
        fs::create_dir_all(&p).map_err(io("create directory", &p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).map_err(io("chmod", &p))?;
    }
    symlink("../run", root.join("var/run")).map_err(io("symlink", &root.join("var/run")))?;
    copy(c.agent, &root.join("init"), 0o755)?;
    copy(c.busybox, &root.join("bin/busybox"), 0o755)?;
    for applet in AGENT_APPLETS {
        let link = root.join(applet);
        symlink("/init", &link).map_err(io("symlink", &link))?;
    }
    for applet in c.applets {
        let link = root.join(applet);
        if link.exists() || link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).map_err(io("create directory", parent))?;
        }
        symlink("/bin/busybox", &link).map_err(io("symlink", &link))?;
    }
    for (guest, host) in c.ssh_files {
        let dest = root.join(guest);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io("create directory", parent))?;
        }
        copy(host, &dest, 0o755)?;
    }
    for (path, mode, text) in c.etc_files {
        let dest = root.join(path);
        fs::write(&dest, text).map_err(io("write", &dest))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(*mode))
            .map_err(io("chmod", &dest))?;
    }
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<(), ImageError> {
    fs::copy(from, to).map_err(|e| ImageError::io("copy", from, e))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .map_err(|e| ImageError::io("chmod", to, e))
}

/// Makes the ext4 image `dest` of `size_mib` from `staging`. The file is sparse: only what is written
/// takes space. Without root, file owners are rewritten to root afterwards with `debugfs`.
pub(super) fn make_ext4(staging: &Path, dest: &Path, size_mib: u64) -> Result<(), ImageError> {
    let mkfs = tools::require("mkfs.ext4", "e2fsprogs")?;
    let f = fs::File::create(dest).map_err(|e| ImageError::io("create", dest, e))?;
    f.set_len(size_mib << 20)
        .map_err(|e| ImageError::io("size", dest, e))?;
    drop(f);
    tools::output(
        Command::new(mkfs)
            .args(["-q", "-F", "-L", "smolvm-root", "-m", "0"])
            // Inode tables are initialised now (sparse writes, instant) rather than lazily by every
            // guest's kernel after boot; the journal is left unwritten because the fresh sparse file
            // reads as zeros already (saves 16 MiB of real disk per image and per VM copy).
            .args([
                "-E",
                "lazy_itable_init=0,lazy_journal_init=1,root_owner=0:0",
            ])
            .arg("-d")
            .arg(staging)
            .arg(dest),
        None,
    )?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        chown_to_root(staging, dest)?;
    }
    Ok(())
}

/// `debugfs` script setting uid and gid 0 on every path of the staging tree (what `mkfs.ext4 -d` copied
/// from an unprivileged user's files).
pub(super) fn chown_script(staging: &Path) -> Result<String, ImageError> {
    let mut script = String::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = staging.join(&rel);
        let rd = fs::read_dir(&dir).map_err(|e| ImageError::io("read directory", &dir, e))?;
        for e in rd.flatten() {
            let r = rel.join(e.file_name());
            let guest = format!("/{}", r.display());
            if guest.contains(['"', '\n']) {
                continue; // never produced by us; refuse to quote it
            }
            script.push_str(&format!("sif \"{guest}\" uid 0\nsif \"{guest}\" gid 0\n"));
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(r);
            }
        }
    }
    Ok(script)
}

fn chown_to_root(staging: &Path, dest: &Path) -> Result<(), ImageError> {
    let debugfs = tools::require("debugfs", "e2fsprogs")?;
    let script = chown_script(staging)?;
    let script_path = dest.with_extension("debugfs");
    fs::write(&script_path, script).map_err(|e| ImageError::io("write", &script_path, e))?;
    let res = tools::output(
        Command::new(debugfs)
            .arg("-w")
            .arg("-f")
            .arg(&script_path)
            .arg(dest),
        None,
    );
    let _ = fs::remove_file(&script_path);
    res?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f94)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f94)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f94)\n\
                    \tlibmissing.so => not found\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn wget_is_the_agent_and_other_applets_are_busybox() {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("bin");
        fs::create_dir(&bin).unwrap();
        fs::write(bin.join("agent"), "agent").unwrap();
        fs::write(bin.join("busybox"), "busybox").unwrap();
        let root = t.path().join("root");
        let applets = ["bin/sh".to_string(), "usr/bin/wget".to_string()];
        stage(
            &root,
            &Contents {
                agent: &bin.join("agent"),
                busybox: &bin.join("busybox"),
                applets: &applets,
                ssh_files: &[],
                etc_files: &[],
            },
        )
        .unwrap();
        let target = |p: &str| fs::read_link(root.join(p)).unwrap();
        assert_eq!(target("usr/bin/wget"), PathBuf::from("/init"));
        assert_eq!(target("bin/sh"), PathBuf::from("/bin/busybox"));
        assert_eq!(fs::read_to_string(root.join("init")).unwrap(), "agent");
    }

    #[test]
    fn chown_script_covers_every_path() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("etc/dropbear")).unwrap();
        fs::write(t.path().join("etc/passwd"), "x").unwrap();
        symlink("/bin/busybox", t.path().join("sh")).unwrap();
        let s = chown_script(t.path()).unwrap();
        for p in ["/etc", "/etc/dropbear", "/etc/passwd", "/sh"] {
            assert!(s.contains(&format!("sif \"{p}\" uid 0\n")), "{p}: {s}");
        }
    }

    /// A real (small) ext4 from a staging tree, checked with e2fsck and debugfs.
    #[test]
    fn makes_a_sparse_ext4() {
        if crate::test_tools::tool_or_skip("makes_a_sparse_ext4", "mkfs.ext4").is_none() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let staging = t.path().join("s");
        fs::create_dir_all(staging.join("etc")).unwrap();
        fs::write(staging.join("etc/hostname"), "smolvm\n").unwrap();
        let img = t.path().join("r.ext4");
        make_ext4(&staging, &img, 64).unwrap();
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(&img).unwrap();
        assert_eq!(m.len(), 64 << 20);
        assert!(
            m.blocks() * 512 < m.len() / 2,
            "not sparse: {} blocks",
            m.blocks()
        );
        let test = "makes_a_sparse_ext4";
        let Some(e2fsck) = crate::test_tools::tool_or_skip(test, "e2fsck") else {
            return;
        };
        let fsck = Command::new(e2fsck).arg("-fn").arg(&img).output().unwrap();
        assert!(fsck.status.success(), "e2fsck: {fsck:?}");
        let Some(debugfs) = crate::test_tools::tool_or_skip(test, "debugfs") else {
            return;
        };
        let out = Command::new(debugfs)
            .args(["-R", "cat /etc/hostname"])
            .arg(&img)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "smolvm\n");
    }
}
