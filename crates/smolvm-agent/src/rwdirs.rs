//! Writable directories on a read-only root (the `shared` disk mode boots one image read-only in many
//! VMs): `/etc` (the SSH server's host keys, the persisted environment, host name, `resolv.conf`) and
//! `/root` (root's home with its authorised keys) each get a tmpfs holding a copy of what the image
//! has there. Changes live in the VM's memory and are gone when it stops; the image stays untouched.
//!
//! Why these and not an overlay over the whole root: overlayfs is not in the minimal kernel, and these
//! are exactly what the guest's own setup and smolvm write (network, host key pin, authorised key,
//! `env_vars`), so SSH, name resolution and environment variables work in `shared` mode as in
//! `isolated` mode. `/etc` is small (kilobytes in the default image), so the copy costs little.

use std::fs;
use std::io;
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::sys;

/// The directories made writable, if the image has them.
pub const DIRS: &[&str] = &["/etc", "/root"];

/// Where the copies are prepared before they are moved over their directory.
const STAGING: &str = "/run/smolvm-rw";

/// Gives every existing directory of [`DIRS`] a writable tmpfs copy. Failures are logged per
/// directory (that directory stays read-only).
pub fn make_writable() {
    for dir in DIRS {
        let target = Path::new(dir);
        if !target.is_dir() {
            continue;
        }
        if let Err(e) = writable_copy(target) {
            crate::log(&format!("make {dir} writable on the read-only root: {e}"));
        }
    }
}

/// Mounts a tmpfs in the staging area, copies `target` into it and moves it over `target`.
fn writable_copy(target: &Path) -> io::Result<()> {
    let name = target
        .to_string_lossy()
        .trim_start_matches('/')
        .replace('/', "_");
    let stage = Path::new(STAGING).join(name);
    fs::create_dir_all(&stage)?;
    let meta = fs::metadata(target)?;
    let mode = format!("mode={:o}", meta.permissions().mode() & 0o7777);
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    sys::mount("tmpfs", &stage, Some("tmpfs"), flags, Some(&mode))?;
    let done = copy_tree(target, &stage)
        .and_then(|()| lchown(&stage, Some(meta.uid()), Some(meta.gid())))
        .and_then(|()| sys::move_mount(&stage, target));
    if done.is_err() {
        let _ = sys::umount(&stage, libc::MNT_DETACH);
    }
    let _ = fs::remove_dir(&stage);
    done
}

/// Copies the contents of `from` into the existing directory `to`: directories, files and symbolic
/// links, with their permission bits and owners. Other kinds (sockets, devices) are skipped.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&src)?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else if kind.is_dir() {
            fs::create_dir(&dst)?;
            copy_tree(&src, &dst)?;
            fs::set_permissions(&dst, meta.permissions())?;
        } else if kind.is_file() {
            fs::copy(&src, &dst)?;
            fs::set_permissions(&dst, meta.permissions())?;
        } else {
            continue;
        }
        lchown(&dst, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_copied_with_modes_and_links() {
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("src"), d.path().join("dst"));
        fs::create_dir_all(src.join(".ssh")).unwrap();
        fs::set_permissions(src.join(".ssh"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(src.join(".ssh/authorized_keys"), "ssh-ed25519 AAAA k\n").unwrap();
        fs::set_permissions(
            src.join(".ssh/authorized_keys"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        fs::write(src.join(".profile"), "PS1='# '\n").unwrap();
        std::os::unix::fs::symlink(".profile", src.join(".bashrc")).unwrap();
        fs::create_dir(&dst).unwrap();
        copy_tree(&src, &dst).unwrap();
        let mode = |p: &str| fs::metadata(dst.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(".ssh"), 0o700);
        assert_eq!(mode(".ssh/authorized_keys"), 0o600);
        assert_eq!(
            fs::read_to_string(dst.join(".ssh/authorized_keys")).unwrap(),
            "ssh-ed25519 AAAA k\n"
        );
        assert_eq!(
            fs::read_link(dst.join(".bashrc")).unwrap(),
            Path::new(".profile")
        );
        assert_eq!(
            fs::read_to_string(dst.join(".bashrc")).unwrap(),
            "PS1='# '\n"
        );
    }
}
