//! Turning a distribution's root filesystem (a Debian tree from `mmdebstrap`, later an unpacked OCI
//! image) into a smolvm guest: the agent as `/init` (PID 1, so every `smolvm.*` boot parameter reaches
//! it), the mount points it needs, a host name, and an `/etc/resolv.conf` the agent can rewrite at boot.
//! Then the tree's size decides the ext4 size.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::error::ImageError;

/// Host name written into the image (the agent replaces it from `smolvm.hostname=` at boot).
const HOSTNAME: &str = "smolvm";

/// Directories the agent mounts on or writes to, with their modes. Existing ones keep theirs.
const DIRS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("etc", 0o755),
    ("etc/profile.d", 0o755),
    ("etc/dropbear", 0o755),
    ("root", 0o700),
    ("root/.ssh", 0o700),
    ("var/tmp", 0o1777),
];

/// Makes the tree at `root` boot as a smolvm guest with `agent` as init.
pub(super) fn adapt(root: &Path, agent: &Path) -> Result<(), ImageError> {
    for (d, mode) in DIRS {
        let p = root.join(d);
        if p.symlink_metadata().is_err() {
            fs::create_dir_all(&p).map_err(|e| ImageError::io("create directory", &p, e))?;
            fs::set_permissions(&p, fs::Permissions::from_mode(*mode))
                .map_err(|e| ImageError::io("chmod", &p, e))?;
        }
    }
    let init = root.join("init");
    remove_if_present(&init)?;
    fs::copy(agent, &init).map_err(|e| ImageError::io("copy the agent to", &init, e))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))
        .map_err(|e| ImageError::io("chmod", &init, e))?;
    write(root, "etc/hostname", &format!("{HOSTNAME}\n"))?;
    write(
        root,
        "etc/hosts",
        &format!("127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
    )?;
    // The build host's resolver (copied in by mmdebstrap, or a symlink into /run in OCI images) is
    // wrong in the guest; an empty regular file lets the agent write the VM's resolver at boot.
    write(root, "etc/resolv.conf", "")?;
    if root.join("etc/os-release").symlink_metadata().is_err()
        && root.join("usr/lib/os-release").symlink_metadata().is_err()
    {
        write(
            root,
            "etc/os-release",
            "NAME=\"smolvm guest\"\nID=smolvm\nPRETTY_NAME=\"smolvm guest\"\n",
        )?;
    }
    Ok(())
}

/// Replaces `rel` under `root` by a regular file (0644) holding `text` (a symlink is removed, never
/// followed: it could point out of the tree).
fn write(root: &Path, rel: &str, text: &str) -> Result<(), ImageError> {
    let p = root.join(rel);
    remove_if_present(&p)?;
    fs::write(&p, text).map_err(|e| ImageError::io("write", &p, e))?;
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644))
        .map_err(|e| ImageError::io("chmod", &p, e))
}

fn remove_if_present(p: &Path) -> Result<(), ImageError> {
    match p.symlink_metadata() {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).map_err(|e| ImageError::io("remove", p, e)),
        Ok(_) => fs::remove_file(p).map_err(|e| ImageError::io("remove", p, e)),
        Err(_) => Ok(()),
    }
}

/// Space the tree takes: allocated bytes (hard links counted once) and the number of inodes.
pub(super) fn usage(root: &Path) -> Result<(u64, u64), ImageError> {
    let mut seen = std::collections::HashSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = fs::read_dir(&dir).map_err(|e| ImageError::io("read directory", &dir, e))?;
        for e in rd {
            let e = e.map_err(|err| ImageError::io("read directory", &dir, err))?;
            let m = e
                .path()
                .symlink_metadata()
                .map_err(|err| ImageError::io("inspect", e.path(), err))?;
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            inodes += 1;
            bytes += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok((bytes, inodes))
}

/// The ext4 size for a tree of `bytes` in `inodes` files: the contents, 256 bytes of inode table per
/// file (mke2fs makes one inode per 16 KiB, so small-file trees need room for inodes too), a quarter
/// more for ext4's own metadata and a little growth, plus 256 MiB for the journal and the user's first
/// files; rounded up to 64 MiB. The file is sparse, so the slack costs no disk until used.
pub(super) fn ext4_size_mib(bytes: u64, inodes: u64) -> u64 {
    let need = bytes + inodes * 16 * 1024 / 4;
    let mib = need.div_ceil(1 << 20) * 5 / 4 + 256;
    mib.div_ceil(64) * 64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn adapt_installs_init_and_replaces_host_files() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/resolv.conf.host"), "nameserver 10.9.9.9\n").unwrap();
        symlink("resolv.conf.host", root.join("etc/resolv.conf")).unwrap();
        fs::write(root.join("etc/hostname"), "buildhost\n").unwrap();
        let agent = t.path().join("agent");
        fs::write(&agent, b"\x7fELF").unwrap();
        adapt(&root, &agent).unwrap();
        let m = fs::symlink_metadata(root.join("etc/resolv.conf")).unwrap();
        assert!(
            m.is_file() && m.len() == 0,
            "resolv.conf must be an empty regular file"
        );
        assert_eq!(
            fs::read_to_string(root.join("etc/resolv.conf.host")).unwrap(),
            "nameserver 10.9.9.9\n",
            "the symlink target is untouched"
        );
        assert_eq!(
            fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "smolvm\n"
        );
        assert_eq!(fs::read(root.join("init")).unwrap(), b"\x7fELF");
        let mode = |p: &str| fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("init"), 0o755);
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(mode("root/.ssh"), 0o700);
        assert!(fs::read_to_string(root.join("etc/os-release"))
            .unwrap()
            .contains("ID=smolvm"));
    }

    #[test]
    fn usage_counts_hard_links_once_and_sizes_round_up() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("a"), vec![1u8; 8192]).unwrap();
        fs::hard_link(t.path().join("a"), t.path().join("b")).unwrap();
        fs::create_dir(t.path().join("d")).unwrap();
        let (bytes, inodes) = usage(t.path()).unwrap();
        assert_eq!(inodes, 2, "a/b once, d once");
        assert!((8192..=8192 + 4096 * 2).contains(&bytes), "{bytes}");
        assert_eq!(ext4_size_mib(0, 0), 256);
        assert_eq!(ext4_size_mib(300 << 20, 0), 640);
        assert_eq!(ext4_size_mib(300 << 20, 20_000) % 64, 0);
    }
}
