//! Per-VM disks. `isolated` clones the rootfs into `disk_dir/<vm_id>.ext4`: a reflink where the filesystem
//! can (instant, shares blocks), else a sparse copy that copies only the data extents (SEEK_DATA/SEEK_HOLE),
//! never the holes. `shared` boots the image itself, read-only (see [`shared_disk_read_only`]).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::error::{Error, Result, ValidationError};

/// How a disk was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneMethod {
    /// FICLONE: blocks shared copy-on-write.
    Reflink,
    /// Only data extents copied; holes stay holes.
    SparseCopy,
    /// A retained disk from an earlier VM with the same id was reused.
    Reused,
}

/// In `shared` mode several VMs boot the same image at once, so the guest root is attached read-only: a
/// writable shared ext4 would be corrupted by two kernels. The guest agent mounts tmpfs where it must write.
pub(crate) fn shared_disk_read_only() -> bool {
    true
}

/// The isolated disk path of a VM.
pub fn isolated_disk_path(disk_dir: &Path, vm_id: &str) -> PathBuf {
    disk_dir.join(format!("{vm_id}.ext4"))
}

/// The file next to an isolated disk that records which image it was cloned from (its canonical path),
/// so a later create can tell whether a retained disk fits its config.
pub(crate) fn origin_path(disk: &Path) -> PathBuf {
    disk.with_extension("origin")
}

/// Checks that the retained disk `disk` (it exists) can serve a VM booting the image `src`: made from
/// the same image (when its origin is recorded) and of the same size. The error says which and how to
/// start fresh; nothing is changed either way.
pub(crate) fn check_retained(vm_id: &str, src: &Path, disk: &Path) -> Result<()> {
    let discard = format!(
        "discard it with `smolvm cleanup --retained-disks {vm_id}` (or create with \
         --discard-retained-disk) to start from a fresh copy of the image"
    );
    let refuse = |why: String| {
        Err(ValidationError::new("retained disk", format!("{why}; {discard}")).into())
    };
    let src_canon = fs::canonicalize(src).map_err(|e| Error::io("resolve disk image", src, e))?;
    if let Ok(origin) = fs::read(origin_path(disk)) {
        let origin = PathBuf::from(std::ffi::OsString::from_vec(origin));
        if origin != src_canon {
            return refuse(format!(
                "the retained disk {} of VM {vm_id} was made from the image {}, but this config boots \
                 {}",
                disk.display(),
                origin.display(),
                src_canon.display()
            ));
        }
    }
    let len = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.len())
            .map_err(|e| Error::io("stat", p, e))
    };
    let (have, want) = (len(disk)?, len(src)?);
    if have != want {
        let relation = if want < have { "smaller" } else { "larger" };
        return refuse(format!(
            "the retained disk {} of VM {vm_id} is {} MiB, but this config's image is {relation} \
             ({} MiB)",
            disk.display(),
            have >> 20,
            want >> 20
        ));
    }
    Ok(())
}

/// Interrupted clones of `vm_id`'s disk in `disk_dir` (`<vm_id>.tmp-<pid>`). Ids have no dots, so
/// the prefix names exactly this VM.
pub(crate) fn temp_clones(disk_dir: &Path, vm_id: &str) -> Vec<PathBuf> {
    let prefix = format!("{vm_id}.tmp-");
    let Ok(entries) = fs::read_dir(disk_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .map(|e| e.path())
        .collect()
}

/// Removes a disk and its origin record (the record first: a disk without one is still usable).
pub(crate) fn remove_disk(disk: &Path) {
    let _ = fs::remove_file(origin_path(disk));
    let _ = fs::remove_file(disk);
}

/// Produces the isolated disk of a VM: reuses `dst` if it exists (a retained disk; the caller checked
/// it with [`check_retained`] or removed it), else clones `src` atomically (temp file + rename, so a
/// crash never leaves a torn disk under the name) and records its origin.
pub(crate) fn prepare_isolated(src: &Path, dst: &Path) -> Result<CloneMethod> {
    if dst.is_file() {
        return Ok(CloneMethod::Reused);
    }
    let tmp = dst.with_extension(format!("tmp-{}", std::process::id()));
    let result = clone_file(src, &tmp);
    match result {
        Ok(method) => {
            fs::rename(&tmp, dst).map_err(|e| {
                let _ = fs::remove_file(&tmp);
                Error::io("rename disk into place", dst, e)
            })?;
            // Best effort: without the record a later reuse checks the size only.
            if let Ok(origin) = fs::canonicalize(src) {
                let _ = fs::write(origin_path(dst), origin.as_os_str().as_bytes());
            }
            Ok(method)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Copies `src` to a new file `dst` by reflink, else sparsely.
pub fn clone_file(src: &Path, dst: &Path) -> Result<CloneMethod> {
    let input = File::open(src).map_err(|e| Error::io("open disk image", src, e))?;
    let output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(|e| Error::io("create disk", dst, e))?;
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors are open.
    let rc = unsafe { libc::ioctl(output.as_raw_fd(), libc::FICLONE, input.as_raw_fd()) };
    if rc == 0 {
        return Ok(CloneMethod::Reflink);
    }
    sparse_copy(input, output, dst)?;
    Ok(CloneMethod::SparseCopy)
}

fn sparse_copy(mut input: File, mut output: File, dst: &Path) -> Result<()> {
    let len = input
        .metadata()
        .map_err(|e| Error::io("stat disk image", dst, e))?
        .len();
    let io_err = |e| Error::io("copy disk", dst, e);
    output.set_len(len).map_err(io_err)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        // SAFETY: lseek on an open descriptor; ENXIO means no data after pos.
        let data = unsafe { libc::lseek(input.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(io_err(err));
        }
        // SAFETY: as above; there is always a hole at end of file.
        let hole = unsafe { libc::lseek(input.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io_err(std::io::Error::last_os_error()));
        }
        input.seek(SeekFrom::Start(data as u64)).map_err(io_err)?;
        output.seek(SeekFrom::Start(data as u64)).map_err(io_err)?;
        let mut remaining = (hole - data) as usize;
        while remaining > 0 {
            let n = remaining.min(buf.len());
            input.read_exact(&mut buf[..n]).map_err(io_err)?;
            // Blocks of zeros inside a data extent stay holes in the copy too.
            if buf[..n].iter().any(|&b| b != 0) {
                output.write_all(&buf[..n]).map_err(io_err)?;
            } else {
                output.seek(SeekFrom::Current(n as i64)).map_err(io_err)?;
            }
            remaining -= n;
        }
        pos = hole;
    }
    output.sync_all().map_err(io_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_copy_keeps_holes_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let mut f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(10 << 20)).unwrap();
        f.write_all(b"hello").unwrap();
        f.seek(SeekFrom::Start((64 << 20) - 3)).unwrap();
        f.write_all(b"end").unwrap();
        drop(f);
        let dst = dir.path().join("dst.img");
        let method = prepare_isolated(&src, &dst).unwrap();
        assert_eq!(fs::read(&src).unwrap(), fs::read(&dst).unwrap());
        let m = fs::metadata(&dst).unwrap();
        assert_eq!(m.len(), 64 << 20);
        // Whichever method the filesystem allowed, the holes were not filled.
        assert!(
            m.blocks() * 512 < 4 << 20,
            "{method:?} allocated {} bytes",
            m.blocks() * 512
        );
        // A retained disk is reused, not overwritten.
        fs::write(&dst, b"changed").unwrap();
        assert_eq!(prepare_isolated(&src, &dst).unwrap(), CloneMethod::Reused);
        assert_eq!(fs::read(&dst).unwrap(), b"changed");
        // No temp files left behind; the origin is recorded.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
        assert_eq!(
            fs::read(origin_path(&dst)).unwrap(),
            fs::canonicalize(&src).unwrap().as_os_str().as_bytes()
        );
    }

    #[test]
    fn a_retained_disk_is_checked_against_the_new_image() {
        let dir = tempfile::tempdir().unwrap();
        let img = |name: &str, len: u64| {
            let p = dir.path().join(name);
            File::create(&p).unwrap().set_len(len).unwrap();
            p
        };
        let (a, b, small) = (
            img("a.ext4", 8 << 20),
            img("b.ext4", 8 << 20),
            img("s.ext4", 4 << 20),
        );
        let disk = dir.path().join("r1.ext4");
        prepare_isolated(&a, &disk).unwrap();
        check_retained("r1", &a, &disk).unwrap();
        // Another image family.
        let e = check_retained("r1", &b, &disk).unwrap_err().to_string();
        assert!(
            e.contains("was made from the image") && e.contains("b.ext4"),
            "{e}"
        );
        assert!(e.contains("smolvm cleanup --retained-disks r1"), "{e}");
        // Same family, another size (the image was rebuilt smaller).
        fs::write(
            origin_path(&disk),
            fs::canonicalize(&small).unwrap().as_os_str().as_bytes(),
        )
        .unwrap();
        let e = check_retained("r1", &small, &disk).unwrap_err().to_string();
        assert!(
            e.contains("is 8 MiB, but this config's image is smaller (4 MiB)"),
            "{e}"
        );
        // A disk without an origin record (an older smolvm's) is judged by size only.
        fs::remove_file(origin_path(&disk)).unwrap();
        check_retained("r1", &b, &disk).unwrap();
        // Nothing was changed by the checks.
        assert_eq!(fs::metadata(&disk).unwrap().len(), 8 << 20);
        remove_disk(&disk);
        assert!(!disk.exists() && !origin_path(&disk).exists());
    }

    #[test]
    fn temp_clones_are_found_by_exact_id() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["a.tmp-1", "a.tmp-22", "a-b.tmp-3", "a.ext4", "ab.tmp-4"] {
            fs::write(dir.path().join(n), b"").unwrap();
        }
        let mut found: Vec<_> = temp_clones(dir.path(), "a")
            .into_iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        found.sort();
        assert_eq!(found, ["a.tmp-1", "a.tmp-22"]);
    }

    #[test]
    fn missing_source_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("d.img");
        assert!(prepare_isolated(&dir.path().join("nope"), &dst).is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
