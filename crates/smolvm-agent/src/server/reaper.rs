//! Zombie reaping that does not steal exit statuses. As PID 1 the agent inherits every orphan and must
//! reap them, but a blanket `waitpid(-1)` would also reap the commands this server is waiting for (their
//! `Child::wait` would then fail with ECHILD and the exit code would be lost). So the server registers
//! the pids of its commands here, and PID 1 reaps with [`reap_orphans`], which skips them.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

/// Pids of commands whose exit status a server thread will collect.
static COMMANDS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Locks the registry; held across `spawn` + `register` so the reaper never sees an unregistered
/// command in between.
pub(crate) fn lock() -> MutexGuard<'static, BTreeSet<u32>> {
    COMMANDS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Forgets a command once its status was collected.
pub(crate) fn unregister(pid: u32) {
    lock().remove(&pid);
}

/// For PID 1, on `SIGCHLD` (or periodically): reaps every zombie child of this process except the
/// server's own commands and the pids in `keep` (children PID 1 waits for itself, such as sshd).
/// Returns how many were reaped.
pub fn reap_orphans(keep: &[u32]) -> usize {
    reap_where(|pid| !keep.contains(&pid))
}

/// Reaps zombie children of this process for which `want(pid)` holds and that are not registered
/// commands.
pub(crate) fn reap_where(want: impl Fn(u32) -> bool) -> usize {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let registry = lock();
    let mut reaped = 0;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if registry.contains(&pid) || !want(pid) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if zombie_child_of(&stat, me) {
            let mut status = 0;
            // SAFETY: waitpid on one specific zombie child; WNOHANG never blocks.
            if unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) } > 0 {
                reaped += 1;
            }
        }
    }
    reaped
}

/// True if a `/proc/<pid>/stat` text describes a zombie whose parent is `parent`. The command name may
/// hold spaces and parentheses, so fields are counted from the last `)`.
fn zombie_child_of(stat: &str, parent: u32) -> bool {
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next();
    let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
    state == Some("Z") && ppid == Some(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines() {
        assert!(zombie_child_of("12 (a) b) Z 1 12 12 0", 1));
        assert!(!zombie_child_of("12 (a) S 1 12 12 0", 1));
        assert!(!zombie_child_of("12 (a) Z 2 12 12 0", 1));
        assert!(!zombie_child_of("garbage", 1));
    }

    #[test]
    fn reaps_unregistered_zombies_only() {
        let mut free = std::process::Command::new("true").spawn().unwrap();
        let kept = {
            let mut registry = lock();
            let child = std::process::Command::new("true").spawn().unwrap();
            registry.insert(child.id());
            child
        };
        let mine = [free.id(), kept.id()];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        // Only this test's children are candidates: other tests' children must not be touched.
        while reap_where(|pid| mine.contains(&pid)) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // The free one was reaped behind its handle's back; the registered one was left alone.
        assert!(free.wait().is_err());
        let mut kept = kept;
        assert!(kept.wait().unwrap().success());
        unregister(kept.id());
    }
}
