//! Thin, safe wrappers over the few Linux system calls PID 1 needs. Each returns `io::Result` so callers
//! can say what failed; none panics on runtime input.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Converts a path to a C string (fails on interior NUL bytes).
pub fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Converts a string to a C string (fails on interior NUL bytes).
pub fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "string contains a NUL byte"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `mount(2)`.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = cstr(source)?;
    let target = cpath(target)?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.map(cstr).transpose()?;
    // SAFETY: every pointer is a valid NUL-terminated string or null, alive for the call.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    })
}

/// Moves the mount at `from` to `to` (`MS_MOVE`).
pub fn move_mount(from: &Path, to: &Path) -> io::Result<()> {
    let from = from.to_str().ok_or(io::ErrorKind::InvalidInput)?;
    mount(from, to, None, libc::MS_MOVE, None)
}

/// `umount2(2)`.
pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let target = cpath(target)?;
    // SAFETY: valid NUL-terminated string.
    check(unsafe { libc::umount2(target.as_ptr(), flags) })
}

/// The filesystem magic number of the filesystem holding `path` (`statfs(2)` `f_type`).
pub fn fs_type(path: &Path) -> io::Result<i64> {
    let p = cpath(path)?;
    // SAFETY: statfs is plain old data; zeroed is a valid value and the kernel fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and a valid out pointer.
    check(unsafe { libc::statfs(p.as_ptr(), &mut st) })?;
    Ok(st.f_type as i64)
}

/// True if `path` is the root of a mount other than the one holding its parent (cheap "is mounted" test:
/// a mount point has a different device than its parent directory).
pub fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Loads a kernel module from an open file (`finit_module(2)`). An already loaded module is success.
pub fn finit_module(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path)?;
    let params = c"";
    // SAFETY: a valid fd, a valid empty parameter string, no flags.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EEXIST) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// Microseconds since boot, counting suspend (`CLOCK_BOOTTIME`): the clock the kernel's own boot
/// timestamps use, so stages line up with `dmesg`.
pub fn boottime_micros() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer; CLOCK_BOOTTIME always exists on Linux >= 2.6.39.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// `sethostname(2)`.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe a live byte slice.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

/// `reboot(2)` with one of the `RB_*` / `LINUX_REBOOT_CMD_*` commands.
pub fn reboot(cmd: libc::c_int) -> io::Result<()> {
    // SAFETY: reboot takes a plain integer.
    check(unsafe { libc::reboot(cmd) })
}

/// `chroot(2)`.
pub fn chroot(path: &Path) -> io::Result<()> {
    let p = cpath(path)?;
    // SAFETY: valid NUL-terminated string.
    check(unsafe { libc::chroot(p.as_ptr()) })
}

/// A signal set holding `signals`.
pub fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: valid pointer and a valid signal number.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

/// Blocks or unblocks `signals` for the calling thread (`how` = `SIG_BLOCK` / `SIG_UNBLOCK`).
pub fn sigmask(how: libc::c_int, signals: &[libc::c_int]) -> io::Result<()> {
    let set = sigset(signals);
    // SAFETY: valid set pointer; old set not requested.
    let rc = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// `fork(2)`. Only call while the process is single-threaded.
pub fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: callers fork while single-threaded, so the child inherits consistent state.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// Sends `sig` to `pid` (`kill(2)`).
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain integers.
    check(unsafe { libc::kill(pid, sig) })
}

/// Reaps one exited child without blocking: `Some(pid)` if one was reaped, `None` if children exist but
/// none has exited, `Err(ECHILD)` if there are no children.
pub fn reap_one() -> io::Result<Option<libc::pid_t>> {
    let mut status = 0;
    // SAFETY: valid out pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    match pid {
        p if p < 0 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        p => Ok(Some(p)),
    }
}
