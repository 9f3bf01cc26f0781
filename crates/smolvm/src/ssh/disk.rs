//! Writing small files (the SSH host key, authorized_keys) into an ext4 disk image with `debugfs -w`:
//! no loop mount, no privileges beyond write access to the image. The image must not be in use by a
//! running VM (debugfs and the guest kernel would corrupt each other's view).
//!
//! debugfs exits 0 even when a request fails, so success is judged by reading the file back
//! (`cat` and `stat`) and comparing, not by the exit status.

use std::fs;
use std::path::Path;

use super::{io_err, path_str, run_tool, SshError};

/// Installs a host key file into the guest filesystem at `guest_path`, mode 0600, owned by root.
pub(crate) fn install_host_key_into_disk(
    disk_image: &Path,
    key_file: &Path,
    guest_path: &str,
) -> Result<(), SshError> {
    install_file_into_disk(disk_image, key_file, guest_path, 0o600)
}

/// Installs `src` into the ext4 image at `guest_path` (absolute; letters, digits, `.`, `_`, `-`),
/// owned by root with permission bits `mode`. Missing parent directories are created. An existing
/// file is replaced (removed, then written).
pub(crate) fn install_file_into_disk(
    disk_image: &Path,
    src: &Path,
    guest_path: &str,
    mode: u32,
) -> Result<(), SshError> {
    check_guest_path(guest_path)?;
    let content = fs::read(src).map_err(io_err("read", src))?;
    fs::metadata(disk_image).map_err(io_err("open disk image", disk_image))?;
    // debugfs splits requests on whitespace: the host file is named relative to its directory (set as
    // the working directory), and that name must be a plain word too.
    let (dir, name) = match (src.parent(), src.file_name().and_then(|n| n.to_str())) {
        (Some(d), Some(n)) if plain_word(n) => (d, n),
        _ => {
            return Err(SshError::Invalid {
                what: "source file name",
                value: src.display().to_string(),
                reason: "must be a plain name (letters, digits, '.', '_', '-')",
            })
        }
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let disk = path_str("disk image path", disk_image)?;
    let script = script(guest_path, name, mode);
    let out = run_tool(
        "debugfs",
        &["-w", "-f", "-", disk],
        Some(dir),
        Some(&script),
    );
    let log = match out {
        Ok(stdout) => String::from_utf8_lossy(&stdout).into_owned(),
        Err(e) => return Err(e),
    };
    verify(disk_image, disk, guest_path, &content, mode).map_err(|detail| SshError::DiskWrite {
        disk: disk_image.to_path_buf(),
        guest_path: guest_path.to_string(),
        detail: format!("{detail}; debugfs said: {}", log.trim()),
    })
}

/// Which of `guest_paths` exist in the ext4 image (one `debugfs` run; order kept). Used to see which SSH
/// server an image carries before installing host keys for it.
pub(crate) fn paths_in_disk(
    disk_image: &Path,
    guest_paths: &[&str],
) -> Result<Vec<bool>, SshError> {
    for p in guest_paths {
        check_guest_path(p)?;
    }
    fs::metadata(disk_image).map_err(io_err("open disk image", disk_image))?;
    let disk = path_str("disk image path", disk_image)?;
    let script: String = guest_paths.iter().map(|p| format!("stat {p}\n")).collect();
    let out = run_tool("debugfs", &["-f", "-", disk], None, Some(&script))?;
    Ok(parse_stat_sections(
        &String::from_utf8_lossy(&out),
        guest_paths.len(),
    ))
}

/// debugfs with `-f` echoes each request as `debugfs: <request>` on stdout, followed by its output;
/// a missing file prints only on stderr. A section with an `Inode:` line is a file that exists.
fn parse_stat_sections(stdout: &str, n: usize) -> Vec<bool> {
    let mut found = Vec::with_capacity(n);
    for line in stdout.lines() {
        if line.starts_with("debugfs: ") {
            found.push(false);
        } else if line.starts_with("Inode:") {
            if let Some(last) = found.last_mut() {
                *last = true;
            }
        }
    }
    found.resize(n, false);
    found
}

/// The content of `guest_path` in the ext4 image, `None` if it does not exist.
pub(crate) fn read_file_from_disk(
    disk_image: &Path,
    guest_path: &str,
) -> Result<Option<Vec<u8>>, SshError> {
    if !paths_in_disk(disk_image, &[guest_path])?[0] {
        return Ok(None);
    }
    let disk = path_str("disk image path", disk_image)?;
    let cat = format!("cat {guest_path}");
    run_tool("debugfs", &["-R", &cat, disk], None, None).map(Some)
}

/// The debugfs requests: parents, rm, write, then owner and mode (`sif` takes the full `i_mode`,
/// file type bits included).
fn script(guest_path: &str, src_name: &str, mode: u32) -> String {
    let mut s = String::new();
    let mut parent = String::new();
    let parts: Vec<&str> = guest_path.split('/').filter(|p| !p.is_empty()).collect();
    for p in &parts[..parts.len().saturating_sub(1)] {
        parent.push('/');
        parent.push_str(p);
        // Fails harmlessly ("already exists") when present.
        s.push_str(&format!("mkdir {parent}\n"));
    }
    s.push_str(&format!("rm {guest_path}\n"));
    s.push_str(&format!("write {src_name} {guest_path}\n"));
    s.push_str(&format!(
        "sif {guest_path} mode 0{:o}\n",
        0o100000 | (mode & 0o7777)
    ));
    s.push_str(&format!("sif {guest_path} uid 0\n"));
    s.push_str(&format!("sif {guest_path} gid 0\n"));
    s
}

fn verify(
    disk_image: &Path,
    disk: &str,
    guest_path: &str,
    content: &[u8],
    mode: u32,
) -> Result<(), String> {
    let cat = format!("cat {guest_path}");
    let got = run_tool("debugfs", &["-R", &cat, disk], None, None).map_err(|e| e.to_string())?;
    if got != content {
        return Err(format!(
            "read back {} bytes instead of {} from {}",
            got.len(),
            content.len(),
            disk_image.display()
        ));
    }
    let stat = format!("stat {guest_path}");
    let st = run_tool("debugfs", &["-R", &stat, disk], None, None).map_err(|e| e.to_string())?;
    let st = String::from_utf8_lossy(&st);
    let field = |name: &str| {
        let rest = st.split(name).nth(1)?;
        rest.split_whitespace().next().map(str::to_string)
    };
    let want = format!("{:04o}", mode & 0o7777);
    let ok = field("Mode:").as_deref() == Some(want.as_str())
        && field("User:").as_deref() == Some("0")
        && field("Group:").as_deref() == Some("0");
    if ok {
        Ok(())
    } else {
        Err(format!("mode/owner not set (want mode {want}, root:root)"))
    }
}

fn plain_word(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_guest_path(p: &str) -> Result<(), SshError> {
    let ok = p.starts_with('/')
        && p.len() > 1
        && p[1..]
            .split('/')
            .all(|c| plain_word(c) && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(SshError::Invalid {
            what: "guest path",
            value: p.to_string(),
            reason: "must be absolute, with components of letters, digits, '.', '_', '-'",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn script_is_exact() {
        assert_eq!(
            script("/etc/dropbear/dropbear_ed25519_host_key", "k", 0o600),
            "mkdir /etc\nmkdir /etc/dropbear\nrm /etc/dropbear/dropbear_ed25519_host_key\n\
             write k /etc/dropbear/dropbear_ed25519_host_key\n\
             sif /etc/dropbear/dropbear_ed25519_host_key mode 0100600\n\
             sif /etc/dropbear/dropbear_ed25519_host_key uid 0\n\
             sif /etc/dropbear/dropbear_ed25519_host_key gid 0\n"
        );
    }

    #[test]
    fn stat_sections_are_parsed_in_order() {
        let out = "debugfs: stat /a\nInode: 12   Type: regular\nUser: 0\n\
                   debugfs: stat /b\ndebugfs: stat /c\nInode: 2   Type: directory\n";
        assert_eq!(parse_stat_sections(out, 3), [true, false, true]);
        assert_eq!(parse_stat_sections("", 2), [false, false]);
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in ["etc/x", "/", "/a b", "/a/../b", "/a//b", "/a/-x", "/a/x\n"] {
            assert!(check_guest_path(bad).is_err(), "{bad:?}");
        }
        check_guest_path("/root/.ssh/authorized_keys").unwrap();
    }

    /// Real debugfs on a small image: writes, overwrites, creates parents, sets mode and owner.
    #[test]
    fn writes_and_overwrites_files_in_an_ext4_image() {
        let test = "writes_and_overwrites_files_in_an_ext4_image";
        let (Some(_), Some(mkfs)) = (
            crate::test_tools::tool_or_skip(test, "debugfs"),
            crate::test_tools::tool_or_skip(test, "mkfs.ext4"),
        ) else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        let img = tmp.path().join("disk image.ext4");
        fs::File::create(&img).unwrap().set_len(8 << 20).unwrap();
        let st = Command::new(mkfs)
            .args(["-q", "-F", "-d"])
            .arg(&root)
            .arg(&img)
            .status()
            .unwrap();
        assert!(st.success());
        let key = tmp.path().join("key");
        fs::write(&key, "first key\n").unwrap();
        let gp = "/etc/dropbear/dropbear_ed25519_host_key";
        install_host_key_into_disk(&img, &key, gp).unwrap();
        fs::write(&key, "second, longer key material\n").unwrap();
        install_host_key_into_disk(&img, &key, gp).unwrap();
        let out = run_tool(
            "debugfs",
            &["-R", &format!("cat {gp}"), img.to_str().unwrap()],
            None,
            None,
        )
        .unwrap();
        assert_eq!(out, b"second, longer key material\n");
        install_file_into_disk(&img, &key, "/root/.ssh/authorized_keys", 0o644).unwrap();
        assert_eq!(
            paths_in_disk(
                &img,
                &[gp, "/usr/sbin/sshd", "/etc", "/root/.ssh/authorized_keys"]
            )
            .unwrap(),
            [true, false, true, true]
        );
        assert_eq!(
            read_file_from_disk(&img, gp).unwrap().unwrap(),
            b"second, longer key material\n"
        );
        assert_eq!(read_file_from_disk(&img, "/etc/nope").unwrap(), None);

        let missing = install_host_key_into_disk(&tmp.path().join("nope.img"), &key, gp);
        assert!(matches!(missing, Err(SshError::Io { .. })), "{missing:?}");
        let not_ext4 = tmp.path().join("zero.img");
        fs::File::create(&not_ext4)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let e = install_host_key_into_disk(&not_ext4, &key, gp).unwrap_err();
        assert!(
            matches!(e, SshError::DiskWrite { .. } | SshError::Tool(_)),
            "{e:?}"
        );
    }
}
