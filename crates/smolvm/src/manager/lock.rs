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
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long an operation waits for another caller's operation on the same VM before giving up with
/// "VM is busy": longer than a default boot (30 s) plus a graceful stop under heavy load, so only an
/// operation that is really stuck (or a snapshot of a large VM) makes a caller give up.
pub const LOCK_WAIT: Duration = Duration::from_secs(120);

/// How often a waiter tries the lock again.
const LOCK_POLL: Duration = Duration::from_millis(20);

/// Held lock on one VM; released on drop.
#[derive(Debug)]
pub struct VmLock {
    _file: File,
    path: PathBuf,
}

impl VmLock {
    /// Takes the lock of `vm_id` under `lock_dir`, waiting at most `wait` for its holder. When the
    /// holder keeps it longer, fails with [`Error::OperationTimeout`] saying "VM ... is busy (held by
    /// pid N)".
    pub fn acquire(lock_dir: &Path, vm_id: &str, wait: Duration) -> Result<VmLock> {
        let deadline = Instant::now() + wait;
        let path = lock_dir.join(format!("{vm_id}.lock"));
        loop {
            crate::dirs::ensure_dir(lock_dir)?;
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io("open lock file", &path, e))?;
            let held = file
                .metadata()
                .map_err(|e| Error::io("inspect lock file", &path, e))?;
            loop {
                // SAFETY: flock on a descriptor we own.
                let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
                if rc == 0 {
                    break;
                }
                let err = std::io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EWOULDBLOCK) if Instant::now() < deadline => {
                        std::thread::sleep(LOCK_POLL)
                    }
                    Some(libc::EWOULDBLOCK) => {
                        let holder = holder_pid(held.dev(), held.ino())
                            .map_or_else(|| "another process".to_string(), |p| format!("pid {p}"));
                        return Err(Error::OperationTimeout {
                            operation: format!(
                                "VM {vm_id:?} is busy (held by {holder}); waiting for it"
                            ),
                            limit: wait,
                        });
                    }
                    _ => return Err(Error::io("lock", &path, err)),
                }
            }
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

/// The pid holding an flock on the file `(dev, ino)`, from `/proc/locks` (`N: FLOCK ADVISORY WRITE
/// <pid> <major>:<minor>:<inode> ...`, device numbers in hex).
fn holder_pid(dev: u64, ino: u64) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    parse_lock_holder(&text, libc::major(dev), libc::minor(dev), ino)
}

fn parse_lock_holder(text: &str, major: u32, minor: u32, ino: u64) -> Option<u32> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // A waiter's line is marked `->` and has one field more; only the holder counts.
        if f.get(1) != Some(&"FLOCK") {
            return None;
        }
        let mut id = f.get(5)?.split(':');
        let maj = u32::from_str_radix(id.next()?, 16).ok()?;
        let min = u32::from_str_radix(id.next()?, 16).ok()?;
        let i: u64 = id.next()?.parse().ok()?;
        (maj == major && min == minor && i == ino)
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })
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
                        let _l = VmLock::acquire(&dir, "vm-a", LOCK_WAIT).unwrap();
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
        let held = VmLock::acquire(dir.path(), "vm-p", LOCK_WAIT).unwrap();
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
        // Held elsewhere: a bounded wait gives up and names the holder.
        let busy = VmLock::acquire(dir.path(), "vm-p", Duration::from_millis(100)).unwrap_err();
        let msg = busy.to_string();
        // (The kernel names the process that called flock: here flock(1), whose fd the shell keeps.)
        assert!(msg.contains("VM \"vm-p\" is busy (held by pid "), "{msg}");
        holder.kill().unwrap();
        holder.wait().unwrap();
        // Blocks (and the test hangs) unless the dead holder's lock was released.
        let _again = VmLock::acquire(dir.path(), "vm-p", LOCK_WAIT).unwrap();
    }

    #[test]
    fn a_bounded_wait_fails_naming_the_holder_and_a_released_lock_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let held = VmLock::acquire(dir.path(), "vm-a", LOCK_WAIT).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.path().to_path_buf();
        std::thread::spawn(move || {
            tx.send(VmLock::acquire(&d, "vm-a", Duration::from_millis(200)).map(drop))
                .unwrap()
        });
        let err = rx.recv().unwrap().unwrap_err();
        assert!(matches!(err, Error::OperationTimeout { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&format!(
                "VM \"vm-a\" is busy (held by pid {})",
                std::process::id()
            )),
            "{err}"
        );
        // A waiter whose holder lets go in time gets the lock.
        let d = dir.path().to_path_buf();
        let waiter = std::thread::spawn(move || VmLock::acquire(&d, "vm-a", LOCK_WAIT).map(drop));
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
        waiter.join().unwrap().unwrap();
    }

    #[test]
    fn proc_locks_lines_name_the_holder_not_the_waiters() {
        let text = "1: FLOCK  ADVISORY  WRITE 4242 00:2d:917 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 5151 00:2d:917 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 777 08:01:917 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE 31 fd:0a:918 0 EOF\n";
        assert_eq!(parse_lock_holder(text, 0, 0x2d, 917), Some(4242));
        assert_eq!(parse_lock_holder(text, 0xfd, 0x0a, 918), Some(31));
        assert_eq!(parse_lock_holder(text, 8, 1, 917), None);
        assert_eq!(parse_lock_holder(text, 0, 0x2d, 1), None);
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
                        let l = VmLock::acquire(&dir, "vm-a", LOCK_WAIT).unwrap();
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
        let l = VmLock::acquire(dir.path(), "vm-b", LOCK_WAIT).unwrap();
        let path = l.path().to_path_buf();
        l.remove();
        assert!(!path.exists());
        assert!(VmLock::acquire(dir.path(), "vm-b", LOCK_WAIT)
            .unwrap()
            .path()
            .exists());
    }
}
