//! Disks of snapshots and of VMs made from them. Capture: the VM's disk copied while the VM is paused
//! (reflink where the filesystem can, else a sparse copy of the data extents; a qcow2 overlay of a VM
//! that was itself made from a snapshot is flattened into a raw image with `qemu-img convert`). A VM
//! made from a snapshot gets a qcow2 overlay whose backing file is the snapshot's disk (QEMU): instant,
//! and only the blocks the new VM writes take space. Firecracker takes raw files only: a clone.

use std::path::{Path, PathBuf};

use super::disk;
use crate::error::{Error, Result};

/// True if `path` is a qcow2 overlay made by [`overlay`].
pub(super) fn is_overlay(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "qcow2")
}

/// The overlay disk path of a VM made from a snapshot.
pub(super) fn overlay_path(disk_dir: &Path, vm_id: &str) -> PathBuf {
    disk_dir.join(format!("{vm_id}.qcow2"))
}

/// Copies the disk `src` (raw, or a qcow2 overlay) to the raw image `dst`.
pub(super) fn capture(src: &Path, dst: &Path) -> Result<()> {
    if is_overlay(src) {
        // -U: QEMU holds the image open (paused); reading it while it is flushed and still is safe.
        let args = [
            "convert",
            "-U",
            "-f",
            "qcow2",
            "-O",
            "raw",
            utf8(src)?,
            utf8(dst)?,
        ];
        crate::host::tools::run("qemu-img", &args, None, None).map_err(tool_err)?;
    } else {
        disk::clone_file(src, dst)?;
    }
    Ok(())
}

/// Makes `dst` a qcow2 overlay on the raw image `backing` (which must stay in place while `dst` is
/// used).
pub(super) fn overlay(backing: &Path, dst: &Path) -> Result<()> {
    let args = [
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        utf8(backing)?,
        utf8(dst)?,
    ];
    crate::host::tools::run("qemu-img", &args, None, None).map_err(tool_err)?;
    Ok(())
}

fn utf8(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| {
        Error::io(
            "use disk path",
            p,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path is not UTF-8"),
        )
    })
}

fn tool_err(e: crate::host::ToolError) -> Error {
    Error::Io {
        action: "run qemu-img on",
        path: PathBuf::from("qemu-img"),
        source: std::io::Error::other(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_shares_the_backing_file_and_capture_flattens_it() {
        if crate::host::tools::find_program("qemu-img").is_none() {
            eprintln!("qemu-img not installed: skipping");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base.img");
        let mut content = vec![0u8; 4 << 20];
        content[1 << 20..(1 << 20) + 5].copy_from_slice(b"hello");
        std::fs::write(&base, &content).unwrap();
        let ov = overlay_path(d.path(), "f1");
        overlay(&base, &ov).unwrap();
        assert!(is_overlay(&ov));
        assert!(
            std::fs::metadata(&ov).unwrap().len() < 1 << 20,
            "overlay is small"
        );
        let flat = d.path().join("flat.img");
        capture(&ov, &flat).unwrap();
        assert_eq!(std::fs::read(&flat).unwrap(), content);
        let raw_copy = d.path().join("copy.img");
        capture(&base, &raw_copy).unwrap();
        assert_eq!(std::fs::read(&raw_copy).unwrap(), content);
    }
}
