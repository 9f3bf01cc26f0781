//! The shell warm-up: one `<shell> -lc true` that PID 1 starts during boot and waits for before the
//! agent answers `Ready`.
//!
//! Why: measured under TCG with the minimal kernel, the first `run()` after `Ready` took 100-250 ms
//! against 15-25 ms for the next ones. The difference is first-use cost in the guest: the shell binary
//! and `/etc/profile` read from the disk into the page cache, and (under TCG) their code translated for
//! the first time. A login shell run once during boot pays that while PID 1 waits for the SSH server to
//! listen anyway, so the user's first command starts warm. `Ready` waits for it (bounded by
//! [`WARMUP_LIMIT`]), so a benchmark's raw-VMM floor, which waits for the same `Ready`, pays it too.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::sys;

/// Longest wait for the warm-up before `Ready` (a profile that hangs must not delay the agent).
pub const WARMUP_LIMIT: Duration = Duration::from_secs(3);

/// Starts `<shell> -lc true` in its own session with no input or output; `None` if the image has no
/// such shell or it cannot start (then nothing is warmed, and nothing else changes).
pub fn start(shell: &Path) -> Option<libc::pid_t> {
    if !shell.exists() {
        return None;
    }
    let mut cmd = Command::new(shell);
    cmd.args(["-lc", "true"])
        .env("PATH", crate::server::DEFAULT_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    crate::setup::reset_signals(&mut cmd);
    // SAFETY: setsid is async-signal-safe; its own session lets a warm-up that overstays be killed
    // with everything it started.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(child) => Some(child.id() as libc::pid_t),
        Err(e) => {
            crate::log(&format!("shell warm-up: start {}: {e}", shell.display()));
            None
        }
    }
}

/// Waits (polling, PID 1 keeps SIGCHLD blocked) until the warm-up `pid` exited or `limit` passed since
/// `started`. True if it exited; otherwise its session is killed (PID 1's reaper collects it later).
pub fn finish(pid: libc::pid_t, started: Instant, limit: Duration) -> bool {
    loop {
        match sys::try_reap(pid) {
            Ok(true) => return true,
            Ok(false) => {}
            // Not our child any more (cannot happen before the reaper runs): nothing to wait for.
            Err(_) => return true,
        }
        if started.elapsed() >= limit {
            crate::log("shell warm-up did not finish in time: continuing without it");
            let _ = sys::kill(-pid, libc::SIGKILL);
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_login_shell_warms_up_and_is_reaped() {
        let started = Instant::now();
        let pid = start(Path::new("/bin/sh")).expect("the host's /bin/sh starts");
        assert!(finish(pid, started, Duration::from_secs(30)));
        // Reaped: the pid is no longer our child.
        assert!(sys::try_reap(pid).is_err());
    }

    #[test]
    fn no_shell_means_no_warm_up() {
        assert_eq!(start(Path::new("/nonexistent/sh")), None);
    }

    #[test]
    fn a_warm_up_that_overstays_is_killed_with_its_session() {
        let dir = tempfile::tempdir().unwrap();
        // A "shell" whose profile never ends, with a child of its own in the same session.
        let shell = dir.path().join("sh");
        std::fs::write(
            &shell,
            "#!/bin/sh\nsleep 60 &\necho $! > \"$0.child\"\nsleep 60\n",
        )
        .unwrap();
        std::fs::set_permissions(&shell, std::fs::Permissions::from_mode(0o755)).unwrap();
        let started = Instant::now();
        let pid = start(&shell).expect("the script starts");
        let child_file = dir.path().join("sh.child");
        while !child_file.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "script did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!finish(pid, started, Duration::from_millis(300)));
        // The whole session got SIGKILL: the shell becomes reapable, its background child dies too.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sys::try_reap(pid).unwrap_or(true) {
            assert!(
                Instant::now() < deadline,
                "the warm-up shell was not killed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let child: i32 = std::fs::read_to_string(&child_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // The background sleep was re-parented (not our child); gone once kill(pid, 0) fails.
        // SAFETY: kill with signal 0 only checks that the process exists.
        while unsafe { libc::kill(child, 0) } == 0 {
            let zombie = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true);
            if zombie {
                break;
            }
            assert!(Instant::now() < deadline, "the warm-up's child survived");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
