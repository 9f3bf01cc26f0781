//! Cache mechanics: an exclusive lock per image name, building into a temporary directory next to the
//! final one, and an atomic swap into place, so a reader or a concurrent builder never sees a torn image
//! and a failed build leaves the previous one untouched.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::ImageError;

/// An exclusive `flock` held until dropped.
#[derive(Debug)]
pub(super) struct Lock {
    _file: File,
}

/// Takes the exclusive lock on `path` (created if missing), waiting for other holders.
pub(super) fn lock(path: &Path) -> Result<Lock, ImageError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| ImageError::io("open lock file", path, e))?;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(Lock { _file: file });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(ImageError::io("lock", path, e));
        }
    }
}

/// A build directory removed on drop unless committed.
#[derive(Debug)]
pub(super) struct BuildDir {
    path: PathBuf,
    keep: bool,
}

/// Prefix of build directories (`.tmp-<name>-<pid>-<random>`).
const TMP_PREFIX: &str = ".tmp-";

impl BuildDir {
    /// Creates `<parent>/.tmp-<name>-<pid>-<random>`.
    pub(super) fn create(parent: &Path, name: &str) -> Result<BuildDir, ImageError> {
        let path = parent.join(format!(
            "{TMP_PREFIX}{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir_all(&path).map_err(|e| ImageError::io("create directory", &path, e))?;
        Ok(BuildDir { path, keep: false })
    }

    /// The directory.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the directory to `dest` atomically, replacing what is there. With `renameat2(RENAME_EXCHANGE)`
    /// the old and new contents swap in one step; without it (old kernels, some filesystems) the old
    /// directory is moved aside first, leaving a moment without an image but never a torn one.
    pub(super) fn commit(mut self, dest: &Path) -> Result<(), ImageError> {
        if dest.exists() {
            if exchange(&self.path, dest).is_ok() {
                // self.path now holds the old image: drop removes it.
                return Ok(());
            }
            let aside = self.path.with_extension("old");
            fs::rename(dest, &aside).map_err(|e| ImageError::io("move aside", dest, e))?;
            let res = fs::rename(&self.path, dest);
            if let Err(e) = res {
                let _ = fs::rename(&aside, dest);
                return Err(ImageError::io("move into place", dest, e));
            }
            let _ = fs::remove_dir_all(&aside);
            self.keep = true;
            return Ok(());
        }
        fs::rename(&self.path, dest).map_err(|e| ImageError::io("move into place", dest, e))?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let a = crate::dirs::cpath(a)?;
    let b = crate::dirs::cpath(b)?;
    // SAFETY: valid NUL-terminated paths relative to the current directory (absolute in practice).
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Removes build directories of `name` left by a crashed build. Call with the name's lock held (then no
/// live build of that name can own one).
pub(super) fn remove_stale(parent: &Path, name: &str) {
    let prefix = format!("{TMP_PREFIX}{name}-");
    if let Ok(rd) = fs::read_dir(parent) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Accumulates build inputs into a fingerprint (SHA-256, hex). Every input is labelled and
/// length-prefixed, so two different input lists can never produce the same byte stream.
#[derive(Debug, Clone, Default)]
pub(super) struct Fingerprint(Sha256);

impl Fingerprint {
    /// Adds a labelled value.
    pub(super) fn add(&mut self, label: &str, value: &[u8]) -> &mut Self {
        for part in [label.as_bytes(), value] {
            self.0.update((part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
        self
    }

    /// Adds a file's identity without reading it: path, size and modification time (package
    /// upgrades change them).
    pub(super) fn add_file_identity(
        &mut self,
        label: &str,
        path: &Path,
    ) -> Result<&mut Self, ImageError> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(path).map_err(|e| ImageError::io("inspect", path, e))?;
        let id = format!(
            "{}:{}:{}.{}",
            path.display(),
            m.len(),
            m.mtime(),
            m.mtime_nsec()
        );
        Ok(self.add(label, id.as_bytes()))
    }

    /// The hex digest.
    pub(super) fn finish(&self) -> String {
        super::deb::hex(&self.0.clone().finalize())
    }
}

/// SHA-256 of a file's contents, hex.
pub(super) fn file_sha256(path: &Path) -> Result<String, ImageError> {
    let mut f = File::open(path).map_err(|e| ImageError::io("open", path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| ImageError::io("read", path, e))?;
    Ok(super::deb::hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn failed_build_leaves_nothing_and_commit_swaps() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("img");
        {
            let b = BuildDir::create(t.path(), "img").unwrap();
            fs::write(b.path().join("f"), "partial").unwrap();
            // dropped without commit: a failed build
        }
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
        let b = BuildDir::create(t.path(), "img").unwrap();
        fs::write(b.path().join("f"), "one").unwrap();
        b.commit(&dest).unwrap();
        let b = BuildDir::create(t.path(), "img").unwrap();
        fs::write(b.path().join("f"), "two").unwrap();
        b.commit(&dest).unwrap();
        assert_eq!(fs::read_to_string(dest.join("f")).unwrap(), "two");
        let names: Vec<_> = fs::read_dir(t.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("img")]);
    }

    /// Concurrent builders of one name under the lock: each sees either nothing or a complete image,
    /// never a mix, and the directory ends complete.
    #[test]
    fn concurrent_builders_never_see_a_torn_image() {
        let t = Arc::new(tempfile::tempdir().unwrap());
        let barrier = Arc::new(Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let t = Arc::clone(&t);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    let _l = lock(&t.path().join("img.lock")).unwrap();
                    let dest = t.path().join("img");
                    if let (Ok(a), Ok(b)) = (
                        fs::read_to_string(dest.join("a")),
                        fs::read_to_string(dest.join("b")),
                    ) {
                        assert_eq!(a, b, "torn image");
                        return false; // cached
                    }
                    let b = BuildDir::create(t.path(), "img").unwrap();
                    fs::write(b.path().join("a"), i.to_string()).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    fs::write(b.path().join("b"), i.to_string()).unwrap();
                    b.commit(&dest).unwrap();
                    true
                })
            })
            .collect();
        let built = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|b| *b)
            .count();
        assert_eq!(built, 1, "exactly one builder builds, the others reuse");
    }

    #[test]
    fn fingerprints_are_unambiguous() {
        let a = Fingerprint::default()
            .add("x", b"ab")
            .add("y", b"c")
            .finish();
        let b = Fingerprint::default()
            .add("x", b"a")
            .add("y", b"bc")
            .finish();
        assert_ne!(a, b);
        assert_eq!(
            a,
            Fingerprint::default()
                .add("x", b"ab")
                .add("y", b"c")
                .finish()
        );
        assert_eq!(a.len(), 64);
    }
}
