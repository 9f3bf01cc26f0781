//! Per-VM locks: two processes (or threads) operating on the same VM are serialised, never interleaved.
//!
//! An exclusive `flock(2)` on `data_dir/locks/<vm_id>.lock`. flock belongs to the open file description, so
//! two opens in one process also exclude each other, and the kernel drops the lock if the holder dies.
//!
//! Lock files are removed when their VM goes ([`VmLock::remove`], by `delete` and `cleanup`). That is
//! safe because a waiter that gets the lock checks that its file is still the one at the path; if the
//! holder unlinked it meanwhile, the lock guards nothing and the waiter starts over on the new file.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Held lock on one VM; released on drop.
#[derive(Debug)]
pub struct VmLock {
    _file: File,
    path: PathBuf,
}

impl VmLock {
    /// Blocks until the lock of `vm_id` under `lock_dir` is ours.
    pub fn acquire(lock_dir: &Path, vm_id: &str) -> Result<VmLock> {
        let path = lock_dir.join(format!("{vm_id}.lock"));
        loop {
            crate::dirs::ensure_dir(lock_dir)?;
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io("open lock file", &path, e))?;
            loop {
                // SAFETY: flock on a descriptor we own.
                let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
                if rc == 0 {
                    break;
                }
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(Error::io("lock", &path, err));
                }
            }
            let held = file
                .metadata()
                .map_err(|e| Error::io("inspect lock file", &path, e))?;
            match std::fs::metadata(&path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(VmLock { _file: file, path })
                }
                // Unlinked (or replaced) by the previous holder: this lock guards nothing.
                _ => continue,
            }
        }
    }

    /// Removes the lock file while still holding the lock, then releases it: the last step of an
    /// operation that made the VM go. Waiters on the old file notice and start over; a newcomer may
    /// create and lock a new file at once, which is why this consumes the lock (nothing may happen
    /// under it after the unlink).
    pub fn remove(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!(path = %self.path.display(), error = %e, "could not remove lock file");
            }
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn lock_excludes_concurrent_holders() {
        let dir = tempfile::tempdir().unwrap();
        let inside = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (dir, inside, max) = (dir.path().to_path_buf(), inside.clone(), max.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let _l = VmLock::acquire(&dir, "vm-a").unwrap();
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(n, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(max.load(Ordering::SeqCst), 1);
    }

    /// Across processes, checked with util-linux's `flock(1)` (another implementation of the same
    /// `flock(2)` lock): our lock keeps another process out until dropped, and a holder that dies
    /// releases it.
    #[test]
    fn lock_excludes_other_processes_and_dies_with_its_holder() {
        let Some(flock) = crate::test_tools::tool_or_skip("cross-process VM lock", "flock") else {
            return;
        };
        const CONFLICT: i32 = 75;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm-p.lock");
        let try_other = || {
            std::process::Command::new(&flock)
                .args(["-n", "-E", &CONFLICT.to_string()])
                .arg(&path)
                .arg("true")
                .status()
                .unwrap()
                .code()
        };
        let held = VmLock::acquire(dir.path(), "vm-p").unwrap();
        assert_eq!(held.path(), path);
        assert_eq!(try_other(), Some(CONFLICT), "another process got the lock");
        drop(held);
        assert_eq!(try_other(), Some(0));

        // One process holds it: the shell takes the lock on its fd 9 with flock(1), then becomes sleep.
        let script = format!(
            "exec 9>>'{}'; '{}' 9; exec sleep 1000",
            path.display(),
            flock.display()
        );
        let mut holder = std::process::Command::new("sh")
            .args(["-c", &script])
            .spawn()
            .unwrap();
        while try_other() != Some(CONFLICT) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        holder.kill().unwrap();
        holder.wait().unwrap();
        // Blocks (and the test hangs) unless the dead holder's lock was released.
        let _again = VmLock::acquire(dir.path(), "vm-p").unwrap();
    }

    /// Holders remove the file (as delete does) while others wait on it: still never two holders.
    #[test]
    fn removing_the_file_keeps_exclusion() {
        let dir = tempfile::tempdir().unwrap();
        let inside = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (dir, inside, max) = (dir.path().to_path_buf(), inside.clone(), max.clone());
                std::thread::spawn(move || {
                    for i in 0..40 {
                        let l = VmLock::acquire(&dir, "vm-a").unwrap();
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(n, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        if (t + i) % 2 == 0 {
                            l.remove();
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(max.load(Ordering::SeqCst), 1);
        // A removed file is made again by the next acquire.
        let l = VmLock::acquire(dir.path(), "vm-b").unwrap();
        let path = l.path().to_path_buf();
        l.remove();
        assert!(!path.exists());
        assert!(VmLock::acquire(dir.path(), "vm-b").unwrap().path().exists());
    }
}
