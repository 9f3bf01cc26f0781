//! A writer for `newc` cpio archives, the initramfs format the kernel unpacks.
//!
//! Each entry: the ASCII header `070701` + 13 eight-digit hex fields (ino, mode, uid, gid, nlink, mtime,
//! filesize, devmajor, devminor, rdevmajor, rdevminor, namesize incl. NUL, check), the name and a NUL,
//! padded to 4 bytes, then the data, padded to 4 bytes. The archive ends with `TRAILER!!!`. We write
//! owner root, mtime 0 and sequential inode numbers, so the same inputs give the same bytes, and device
//! nodes need no privileges (unlike `cpio -o` from a directory).

use std::io::{self, Write};

/// File type bits of `mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
#[cfg_attr(not(test), allow(dead_code))]
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Streams entries into a newc archive.
pub(super) struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive.
    pub(super) fn new(out: W) -> Self {
        CpioWriter {
            out,
            ino: 0,
            written: 0,
        }
    }

    /// A directory (`perm` like 0o755). Parents must be added before children.
    pub(super) fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | (perm & 0o7777), 2, (0, 0), &[])
    }

    /// A regular file.
    pub(super) fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | (perm & 0o7777), 1, (0, 0), data)
    }

    /// A symbolic link to `target`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node.
    pub(super) fn char_dev(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        self.entry(name, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the inner writer.
    pub(super) fn finish(mut self) -> io::Result<W> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        if name.is_empty() || name.contains('\0') || name.split('/').any(|c| c == "..") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad cpio entry name {name:?}"),
            ));
        }
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio entry over 4 GiB"))?;
        let ino = if name == "TRAILER!!!" {
            0
        } else {
            self.ino += 1;
            self.ino
        };
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("dev", 0o755).unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.dir("lib", 0o755).unwrap();
        w.file("init", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        w.file("lib/odd", 0o644, b"abc").unwrap();
        w.symlink("sbin", "lib").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn layout_is_aligned_and_deterministic() {
        let a = sample();
        assert_eq!(a, sample());
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
        // First header: ino 1, directory mode 040755, namesize 4 ("dev\0").
        let h = std::str::from_utf8(&a[..110]).unwrap();
        assert_eq!(&h[6..14], "00000001");
        assert_eq!(&h[14..22], "000041ed");
        assert_eq!(&h[94..102], "00000004");
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("../x", 0o644, b"").is_err());
        assert!(w.file("", 0o644, b"").is_err());
    }

    /// The system `cpio` must list and extract what we write.
    #[test]
    fn system_cpio_lists_and_extracts_it() {
        let Some(cpio) =
            crate::test_tools::tool_or_skip("system_cpio_lists_and_extracts_it", "cpio")
        else {
            return;
        };
        // Extraction (an archive without the device node, which only root could create).
        let mut w = CpioWriter::new(Vec::new());
        w.dir("lib", 0o755).unwrap();
        w.file("init", 0o750, b"#!/bin/sh\necho hi\n").unwrap();
        w.file("lib/odd", 0o604, b"abc").unwrap();
        w.symlink("sbin", "lib").unwrap();
        let archive = w.finish().unwrap();
        let t = tempfile::tempdir().unwrap();
        let mut child = Command::new(&cpio)
            .args(["-i", "-d", "--quiet", "--no-absolute-filenames", "-D"])
            .arg(t.path())
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        assert!(child.wait().unwrap().success());
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(t.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(
            std::fs::read(t.path().join("init")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(mode("init"), 0o750);
        assert_eq!(std::fs::read(t.path().join("lib/odd")).unwrap(), b"abc");
        assert_eq!(mode("lib/odd"), 0o604);
        assert_eq!(
            std::fs::read_link(t.path().join("sbin")).unwrap(),
            std::path::PathBuf::from("lib")
        );
        // Listing, with the device node.
        let mut child = Command::new(cpio)
            .args(["-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&sample()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let list = String::from_utf8_lossy(&out.stdout);
        for want in ["dev/console", "lib/odd", "sbin -> lib", "init"] {
            assert!(list.contains(want), "{want} missing in:\n{list}");
        }
        assert!(list
            .lines()
            .any(|l| l.starts_with("crw-------") && l.contains("5,")));
    }
}
