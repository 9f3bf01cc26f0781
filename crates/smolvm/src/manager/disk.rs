//! Per-VM disks. `isolated` clones the rootfs into `disk_dir/<vm_id>.ext4`: a reflink where the filesystem
//! can (instant, shares blocks), else a sparse copy that copies only the data extents (SEEK_DATA/SEEK_HOLE),
//! never the holes. `shared` boots the image itself, read-only (see [`shared_disk_read_only`]).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

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
pub fn shared_disk_read_only() -> bool {
    true
}

/// The isolated disk path of a VM.
pub fn isolated_disk_path(disk_dir: &Path, vm_id: &str) -> PathBuf {
    disk_dir.join(format!("{vm_id}.ext4"))
}

/// Produces the isolated disk of a VM: reuses `dst` if it exists and `reuse` is set (a retained disk),
/// else clones `src` atomically (temp file + rename, so a crash never leaves a torn disk under the name).
pub fn prepare_isolated(src: &Path, dst: &Path, reuse: bool) -> Result<CloneMethod> {
    if reuse && dst.is_file() {
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
        let method = prepare_isolated(&src, &dst, false).unwrap();
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
        assert_eq!(
            prepare_isolated(&src, &dst, true).unwrap(),
            CloneMethod::Reused
        );
        assert_eq!(fs::read(&dst).unwrap(), b"changed");
        // No temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn missing_source_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("d.img");
        assert!(prepare_isolated(&dir.path().join("nope"), &dst, false).is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
