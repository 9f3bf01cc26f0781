//! VMM processes: started detached, identified by (pid, start time) so that a reused pid never makes a
//! dead VM look alive, and stopped by signal only when the identity still matches.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Identity of a running process: its pid plus its start time in clock ticks since boot
/// (`/proc/<pid>/stat` field 22), which together are unique across pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks after boot.
    pub start_time: u64,
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// One-letter state (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Start time in clock ticks after boot.
    pub start_time: u64,
}

/// Reads `/proc/<pid>/stat`; `None` if the process does not exist.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat(&text)
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses,
/// so fields are counted from the last `)`.
pub(crate) fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: field 3 (state) is index 0, field 22 (starttime) is index 19.
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

impl ProcessIdentity {
    /// The identity of the live process `pid`, if it exists.
    pub fn of(pid: u32) -> Option<ProcessIdentity> {
        proc_stat(pid).map(|s| ProcessIdentity {
            pid,
            start_time: s.start_time,
        })
    }

    /// True while this very process (same pid and start time) exists and is not a zombie.
    pub fn is_alive(&self) -> bool {
        matches!(proc_stat(self.pid), Some(s) if s.start_time == self.start_time && s.state != 'Z' && s.state != 'X')
    }

    /// Sends `signal` if the process is still this one. Returns false if it is already gone.
    pub fn signal(&self, signal: i32) -> bool {
        if !self.is_alive() {
            return false;
        }
        // SAFETY: kill(2) with a pid we just verified; a race with exit only yields ESRCH.
        unsafe { libc::kill(self.pid as libc::pid_t, signal) == 0 }
    }

    /// Waits until the process is gone or `timeout` passes. Returns true if it is gone.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_alive() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, then wait up to 5 s for the kernel to tear the process down.
    pub fn kill(&self) -> bool {
        self.signal(libc::SIGKILL);
        self.wait_gone(Duration::from_secs(5))
    }
}

/// Starts `cmd` detached: its own session (no controlling terminal, not killed with our process
/// group), stdin from /dev/null, stdout and stderr appended to `log`. A thread reaps it when it exits so
/// that no zombie is left while this process lives; if this process exits first, init adopts it.
pub fn spawn_detached(mut cmd: Command, log: &Path) -> std::io::Result<ProcessIdentity> {
    let out = File::options().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setsid, sigemptyset and pthread_sigmask are async-signal-safe and touch only the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The caller may block signals (the CLI does, to clean up on Ctrl-C); the VMM must not
            // inherit that, or it would ignore SIGTERM.
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let identity = ProcessIdentity::of(pid).ok_or_else(|| {
        std::io::Error::other(format!("process {pid} exited immediately after spawn"))
    })?;
    std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || {
            let _ = child.wait();
        })?;
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_comm() {
        let line =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let s = parse_proc_stat(line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.start_time, 987654);
        assert_eq!(parse_proc_stat("garbage"), None);
    }

    #[test]
    fn detached_process_is_tracked_and_killed() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let id = spawn_detached(cmd, &dir.path().join("log")).unwrap();
        assert!(id.is_alive());
        // A different start time is a different process, even with the same pid.
        let imposter = ProcessIdentity {
            pid: id.pid,
            start_time: id.start_time + 1,
        };
        assert!(!imposter.is_alive());
        assert!(!imposter.signal(libc::SIGKILL));
        assert!(id.is_alive());
        assert!(id.kill());
        assert!(!id.is_alive());
    }
}
