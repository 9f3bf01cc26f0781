//! The guest's serial console, written to disk with a size cap.
//!
//! The guest controls its console: a guest that prints forever must not fill the host's disk. A VMM
//! writing straight into a file cannot be capped (QEMU's `file` chardev has no size limit, and
//! `RLIMIT_FSIZE` would also cap the VM's disk image), and no smolvm process lives as long as the VM to
//! trim the file. So the VMM writes into a pipe, and a small keeper process, forked from the caller when
//! the VMM starts, copies the pipe into `console.log`; before that file would grow beyond
//! [`CONSOLE_LOG_MAX`] bytes it becomes `console.log.1` (replacing the previous one) and a fresh
//! `console.log` starts. The console
//! therefore never takes more than twice the cap on disk and always keeps the newest output.
//!
//! The keeper lives exactly as long as the VMM: it exits at end-of-file, which comes when the VMM (the
//! only writer) exits or is killed. It keeps reading even when the disk is full (dropping what it cannot
//! write), so the VMM never blocks on a full pipe.
//!
//! Why a fork without exec: the library runs inside the CLI and inside Python, so there is no helper
//! binary it could rely on; the forked child only makes raw system calls (async-signal-safe, no
//! allocation), which is what POSIX allows in the child of a multi-threaded process.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Largest size of `console.log`: output that would grow it beyond this first moves it to
/// `console.log.1` (so the console takes at most twice this on disk).
pub const CONSOLE_LOG_MAX: u64 = 1024 * 1024;

/// The keeper's process name (`/proc/<pid>/comm`), NUL-terminated for `prctl`.
pub(crate) const KEEPER_NAME: &[u8] = b"smolvm-console\0";

/// Bytes copied per read; on the forked child's stack, so kept small.
const COPY_BUF: usize = 16 * 1024;

/// The rotated (previous) console log next to `log`: `console.log.1`.
pub fn rotated_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_os_string();
    name.push(".1");
    PathBuf::from(name)
}

/// Removes `log` and its rotated predecessor (missing files are fine).
pub(crate) fn remove_logs(log: &Path) {
    let _ = std::fs::remove_file(log);
    let _ = std::fs::remove_file(rotated_path(log));
}

/// A pipe from the VMM's console to a keeper process.
#[derive(Debug)]
pub(crate) struct ConsolePipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl ConsolePipe {
    /// A new pipe; both ends close on exec, so no other child inherits them.
    pub(crate) fn new() -> io::Result<ConsolePipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two fds into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(ConsolePipe { read, write })
    }

    /// The path the VMM opens for its console output: the pipe's write end, inherited by the VMM.
    pub(crate) fn vmm_path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/fd/{}", self.write.as_raw_fd()))
    }

    /// Lets the VMM started by `cmd` inherit the write end (only that child: it stays close-on-exec in
    /// this process).
    pub(crate) fn pass_to(&self, cmd: &mut Command) {
        inherit_fd(cmd, self.write.as_raw_fd());
    }

    /// Makes the write end the standard output of the VMM started by `cmd` (for a VMM that keeps no
    /// other inherited descriptor: Firecracker under its jailer). Runs after the command's own stdio
    /// setup, so it replaces whatever stdout that set.
    pub(crate) fn as_stdout(&self, cmd: &mut Command) {
        let fd = self.write.as_raw_fd();
        // SAFETY: dup2 is async-signal-safe and touches only the child's descriptors.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 1) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Forks the keeper that copies the pipe into `log` (capped at `cap` bytes per file) and closes this
    /// process' ends, so the keeper sees end-of-file once the VMM is gone. Call after the VMM was
    /// spawned. Returns the keeper's pid (a thread here reaps it).
    pub(crate) fn start_keeper(self, log: &Path, cap: u64) -> io::Result<u32> {
        // Everything the child needs is prepared here: it must not allocate.
        let current = crate::dirs::cpath(log)?;
        let rotated = crate::dirs::cpath(&rotated_path(log))?;
        let read = self.read.as_raw_fd();
        // SAFETY: the child only runs `keep`, which makes async-signal-safe system calls and exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: in the child of fork; never returns.
            unsafe { keep(read, &current, &rotated, cap) }
        }
        drop(self);
        std::thread::Builder::new()
            .name(format!("reap-console-{pid}"))
            .spawn(move || {
                let mut status = 0;
                // SAFETY: waits for our own child; status is a valid out pointer.
                unsafe { libc::waitpid(pid, &mut status, 0) };
            })?;
        Ok(pid as u32)
    }
}

/// Lets the child started by `cmd` inherit `fd` under the same number (only that child: the
/// descriptor stays close-on-exec in this process). `fd` must stay open until the child is spawned.
pub(crate) fn inherit_fd(cmd: &mut Command, fd: RawFd) {
    // SAFETY: fcntl is async-signal-safe and touches only the child's copy of the fd.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The keeper's body, in the forked child: only raw system calls, then `_exit`.
///
/// # Safety
/// Must only be called in a freshly forked child; it never returns.
unsafe fn keep(read: RawFd, current: &CString, rotated: &CString, cap: u64) -> ! {
    // SAFETY (whole body): plain system calls on fds and NUL-terminated paths this function owns.
    unsafe {
        // Own session, default signal mask: a Ctrl-C to the caller's terminal does not cut the console.
        libc::setsid();
        // Its own name in `ps` and /proc/<pid>/comm (the command line stays the caller's).
        libc::prctl(libc::PR_SET_NAME, KEEPER_NAME.as_ptr());
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        // Keep only the pipe's read end (as fd 0). Every other inherited fd goes: a copy of the pipe's
        // write end would keep end-of-file from ever coming, and a copy of a locked file (the state
        // database, a VM lock) would keep its lock alive as long as the VM.
        if libc::dup2(read, 0) < 0 {
            libc::_exit(1);
        }
        if libc::syscall(libc::SYS_close_range, 1u32, u32::MAX, 0u32) != 0 {
            for fd in 1..65536 {
                libc::close(fd);
            }
        }
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC;
        let mut out = libc::open(current.as_ptr(), flags, 0o640);
        let mut size: u64 = 0;
        let mut st: libc::stat = std::mem::zeroed();
        if out >= 0 && libc::fstat(out, &mut st) == 0 {
            size = st.st_size as u64;
        }
        let mut buf = [0u8; COPY_BUF];
        loop {
            let n = libc::read(0, buf.as_mut_ptr().cast(), buf.len());
            if n == 0 {
                break;
            }
            if n < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                break;
            }
            let n = n as usize;
            // Rotate before a write that would cross the cap, so that no file exceeds it (unless one
            // read alone does) and the newest output is always in the current file.
            if size > 0 && size + n as u64 > cap {
                libc::rename(current.as_ptr(), rotated.as_ptr());
                if out >= 0 {
                    libc::close(out);
                }
                out = libc::open(current.as_ptr(), flags | libc::O_TRUNC, 0o640);
                size = 0;
            }
            let mut done = 0;
            // A failed write (disk full, file removed) drops this chunk; reading goes on regardless.
            while out >= 0 && done < n {
                let w = libc::write(out, buf.as_ptr().add(done).cast(), n - done);
                if w <= 0 {
                    break;
                }
                done += w as usize;
            }
            size += done as u64;
        }
        libc::_exit(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_all(fd: &OwnedFd, data: &[u8]) {
        let mut f = std::fs::File::from(fd.try_clone().unwrap());
        f.write_all(data).unwrap();
    }

    fn wait_exit(pid: u32) {
        for _ in 0..500 {
            if crate::process::proc_stat(pid).is_none_or(|s| s.state == 'Z') {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("keeper {pid} did not exit at end-of-file");
    }

    #[test]
    fn rotated_path_appends_suffix() {
        assert_eq!(
            rotated_path(Path::new("/d/vms/v/console.log")),
            PathBuf::from("/d/vms/v/console.log.1")
        );
    }

    #[test]
    fn keeper_copies_rotates_at_the_cap_and_exits_at_eof() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let pipe = ConsolePipe::new().unwrap();
        // Stand-in for the VMM: a second handle on the write end, kept by this test.
        let writer = pipe.write.try_clone().unwrap();
        let cap = 2 * COPY_BUF as u64;
        let pid = pipe.start_keeper(&log, cap).unwrap();
        // 200 KB through a 32 KiB cap: several rotations, newest output kept.
        for i in 0..200u8 {
            write_all(&writer, &[b'a' + i % 26; 1000]);
        }
        write_all(&writer, b"the end\n");
        drop(writer);
        wait_exit(pid);
        let current = std::fs::read(&log).unwrap();
        let previous = std::fs::read(rotated_path(&log)).unwrap();
        assert!(current.ends_with(b"the end\n"), "{current:?}");
        assert!(current.len() as u64 <= cap, "{}", current.len());
        assert!(previous.len() as u64 <= cap && !previous.is_empty());
        remove_logs(&log);
        assert!(!log.exists() && !rotated_path(&log).exists());
    }

    #[test]
    fn keeper_appends_to_an_existing_log_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, vec![b'x'; 900]).unwrap();
        let pipe = ConsolePipe::new().unwrap();
        let writer = pipe.write.try_clone().unwrap();
        let pid = pipe.start_keeper(&log, 1000).unwrap();
        write_all(&writer, &[b'y'; 200]);
        drop(writer);
        wait_exit(pid);
        // 900 + 200 would cross the cap: the old content moved to .1, the new bytes start a new file.
        assert_eq!(std::fs::read(rotated_path(&log)).unwrap(), vec![b'x'; 900]);
        assert_eq!(std::fs::read(&log).unwrap(), vec![b'y'; 200]);
    }

    #[test]
    fn keeper_does_not_hold_other_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        // A descriptor open in this process must not be inherited by the keeper.
        let marker = std::fs::File::create(dir.path().join("locked")).unwrap();
        let pipe = ConsolePipe::new().unwrap();
        let writer = pipe.write.try_clone().unwrap();
        let pid = pipe.start_keeper(&log, 1000).unwrap();
        // Once a byte reached the log, the keeper is in its copy loop (its fds are final).
        write_all(&writer, b"x");
        for _ in 0..500 {
            if std::fs::metadata(&log).is_ok_and(|m| m.len() == 1) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let fds: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let comm = std::fs::read(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(
            comm,
            [&KEEPER_NAME[..KEEPER_NAME.len() - 1], b"\n"].concat()
        );
        // fd 0 (the pipe) and at most the log it opened.
        assert!(fds.len() <= 2, "keeper holds {fds:?}");
        drop(marker);
        drop(writer);
        wait_exit(pid);
    }
}
