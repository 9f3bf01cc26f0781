//! Growing a VM's root disk beyond its image: the (sparse) file is extended and its ext4 resized to
//! fill it with `resize2fs` on the host, before the guest ever mounts it (no online resize, no guest
//! tooling needed).

use std::fs::OpenOptions;
use std::path::Path;
use std::process::Command;

use super::error::ImageError;
use crate::host::tools;

/// Grows the ext4 image `disk` to `size_mib` and resizes its filesystem to fill it. Returns false (and
/// changes nothing) when the disk is already that large or larger: disks are never shrunk.
pub(crate) fn grow_rootfs(disk: &Path, size_mib: u64) -> Result<bool, ImageError> {
    let want = size_mib << 20;
    let f = OpenOptions::new()
        .write(true)
        .open(disk)
        .map_err(|e| ImageError::io("open disk", disk, e))?;
    let have = f
        .metadata()
        .map_err(|e| ImageError::io("inspect disk", disk, e))?
        .len();
    if want <= have {
        return Ok(false);
    }
    let resize2fs = tools::require("resize2fs", "e2fsprogs")?;
    f.set_len(want)
        .map_err(|e| ImageError::io("grow disk", disk, e))?;
    drop(f);
    // -f: the disk is a fresh copy of an image that was never mounted, so resize2fs's "run e2fsck
    // first" check (meant for filesystems used since their last check) only costs time here.
    let res = tools::output(Command::new(resize2fs).arg("-f").arg(disk), None);
    if let Err(e) = res {
        // Leave the disk as it was: a grown file with an old-sized filesystem would hide the failure.
        if let Ok(f) = OpenOptions::new().write(true).open(disk) {
            let _ = f.set_len(have);
        }
        return Err(e.into());
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_the_filesystem_and_never_shrinks() {
        if crate::host::tools::find_program("mkfs.ext4").is_none()
            || crate::host::tools::find_program("resize2fs").is_none()
        {
            eprintln!("e2fsprogs not installed: skipping");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let staging = t.path().join("s");
        std::fs::create_dir_all(staging.join("etc")).unwrap();
        let disk = t.path().join("d.ext4");
        super::super::rootfs::make_ext4(&staging, &disk, 64).unwrap();
        assert!(grow_rootfs(&disk, 256).unwrap());
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 256 << 20);
        let out = Command::new(crate::host::tools::find_program("dumpe2fs").unwrap())
            .arg("-h")
            .arg(&disk)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let blocks: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("Block count:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let bsize: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("Block size:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(blocks * bsize, 256 << 20, "filesystem fills the disk");
        assert!(!grow_rootfs(&disk, 128).unwrap());
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 256 << 20);
    }
}
