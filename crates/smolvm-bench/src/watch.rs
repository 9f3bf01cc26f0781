//! Timestamps of socket creation in a directory, via inotify, on the benchmark's clock.
//!
//! The manager's `start` returns only when the guest is ready; to split it into "VMM launched" and "guest
//! booted" without touching the manager, the benchmark notes when QEMU binds its QMP socket (QEMU creates
//! its chardev sockets while starting up, before it loads the kernel). inotify costs nothing while
//! waiting, unlike polling, which would steal CPU from the TCG guest being timed.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// Size of the fixed part of `struct inotify_event` (wd, mask, cookie, len).
const EVENT_HEADER: usize = 16;
/// How often the watching thread checks whether it was told to stop.
const STOP_POLL_MS: i32 = 20;

/// Watches a directory for the creation of some names; see the module docs.
#[derive(Debug)]
pub struct CreationWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<HashMap<String, Instant>>,
}

impl CreationWatch {
    /// Starts watching `dir` for the creation of any of `names`. Events are recorded from this call on.
    pub fn start(dir: &Path, names: Vec<String>) -> std::io::Result<CreationWatch> {
        // SAFETY: inotify_init1 has no preconditions; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let c = CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: valid descriptor and NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                c.as_ptr(),
                libc::IN_CREATE | libc::IN_MOVED_TO,
            )
        };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("bench-watch".into())
            .spawn(move || watch_loop(&fd, &names, &stop2))?;
        Ok(CreationWatch { stop, thread })
    }

    /// Stops watching and returns when each name was first created (names never seen are absent).
    pub fn finish(self) -> HashMap<String, Instant> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

fn watch_loop(fd: &OwnedFd, names: &[String], stop: &AtomicBool) -> HashMap<String, Instant> {
    let mut seen = HashMap::new();
    let mut buf = vec![0u8; 4096];
    while !stop.load(Ordering::Relaxed) && seen.len() < names.len() {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, STOP_POLL_MS) };
        if n <= 0 {
            continue;
        }
        let now = Instant::now();
        // SAFETY: reading into a buffer we own, bounded by its length.
        let got = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if got <= 0 {
            continue;
        }
        for name in event_names(&buf[..got as usize]) {
            if names.contains(&name) {
                seen.entry(name).or_insert(now);
            }
        }
    }
    seen
}

/// The file names of the inotify events in `buf` (a sequence of `struct inotify_event`).
pub fn event_names(buf: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + EVENT_HEADER <= buf.len() {
        let len_bytes = [buf[off + 12], buf[off + 13], buf[off + 14], buf[off + 15]];
        let len = u32::from_ne_bytes(len_bytes) as usize;
        let start = off + EVENT_HEADER;
        let Some(name) = buf.get(start..start + len) else {
            break;
        };
        // The name is NUL-padded to an alignment boundary.
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        if end > 0 {
            out.push(String::from_utf8_lossy(&name[..end]).into_owned());
        }
        off = start + len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn event(name: &str, pad_to: usize) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&1i32.to_ne_bytes());
        v.extend_from_slice(&libc::IN_CREATE.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(&(pad_to as u32).to_ne_bytes());
        let mut n = name.as_bytes().to_vec();
        n.resize(pad_to, 0);
        v.extend_from_slice(&n);
        v
    }

    #[test]
    fn parses_events() {
        let mut buf = event("a.qmp", 16);
        buf.extend(event("vm-1.agent", 16));
        buf.extend(event("", 0));
        assert_eq!(event_names(&buf), vec!["a.qmp", "vm-1.agent"]);
        // A truncated tail is ignored, never read past.
        buf.extend_from_slice(&event("cut", 16)[..20]);
        assert_eq!(event_names(&buf).len(), 2);
    }

    #[test]
    fn sees_creation() {
        let dir = tempfile::tempdir().unwrap();
        let w = CreationWatch::start(dir.path(), vec!["x.sock".into(), "never".into()]).unwrap();
        let before = Instant::now();
        std::thread::sleep(Duration::from_millis(30));
        let _l = std::os::unix::net::UnixListener::bind(dir.path().join("x.sock")).unwrap();
        std::fs::write(dir.path().join("other"), b"").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let seen = w.finish();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(seen["x.sock"] > before);
    }
}
