//! The Ready gate: PID 1 forks the agent process early, before it has started the SSH server and
//! configured the network, so the agent's own start-up (finding its port, warming its exec path:
//! [`crate::server::warm`]) runs on another vCPU alongside that work. The agent must still not answer
//! `Ready` before everything smolvm advertises accepts, so it waits on this gate: a pipe over which
//! PID 1 sends the boot stages it recorded after the fork (SSH server listening included) and then
//! closes it.
//!
//! Why a pipe and not a signal: it carries the stamps (the `Ready` frame reports every stage), and its
//! end of file also opens the gate when PID 1 could not write.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use crate::stages::Stages;

/// Longest wait for PID 1's stages: its own waits are bounded (3 s for the SSH server), so this only
/// matters if PID 1 is stuck; the agent then answers without them.
pub const GATE_LIMIT: Duration = Duration::from_secs(10);

/// PID 1's end: sends the stages and closes.
#[derive(Debug)]
pub struct GateSender(File);

/// The agent's end.
#[derive(Debug)]
pub struct GateReceiver(File);

/// A new gate (both ends close-on-exec, so no program either side starts holds them).
pub fn gate() -> io::Result<(GateSender, GateReceiver)> {
    let mut fds = [0; 2];
    // SAFETY: valid out array of two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these descriptors; each is owned exactly once from here.
    let (r, w) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    Ok((GateSender(w), GateReceiver(r)))
}

impl GateSender {
    /// Closes this end's descriptor in a child just forked from its owner (which keeps it). The child
    /// must not use this value afterwards; it never returns to where the owner would drop it.
    pub fn close_in_child(&self) {
        // SAFETY: the descriptor is this process's copy; nothing in this process uses it again.
        unsafe { libc::close(self.0.as_raw_fd()) };
    }

    /// Sends `stages` (the ones recorded after the fork) and opens the gate. Errors only lose stamps.
    pub fn open(mut self, stages: &Stages) {
        if let Err(e) = self.0.write_all(stages.encode().as_bytes()) {
            crate::log(&format!("send boot stages to the agent: {e}"));
        }
    }
}

impl GateReceiver {
    /// Waits until PID 1 opened the gate (or closed its end, or `limit` passed) and returns the stages
    /// it sent (none on timeout or garbage: stamps are diagnostics).
    pub fn wait(mut self, limit: Duration) -> Stages {
        let deadline = Instant::now() + limit;
        let mut buf = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                crate::log(
                    "PID 1 did not finish booting in time: answering Ready without its stages",
                );
                return Stages::default();
            }
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
                continue; // timeout (checked above) or EINTR
            }
            let mut chunk = [0u8; 1024];
            match self.0.read(&mut chunk) {
                Ok(0) => return Stages::decode(&String::from_utf8_lossy(&buf)),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    crate::log(&format!("read boot stages from PID 1: {e}"));
                    return Stages::default();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smolvm_protocol::BootStage;

    fn stage(name: &str, micros: u64) -> BootStage {
        BootStage {
            name: name.into(),
            micros,
        }
    }

    #[test]
    fn the_agent_gets_pid_1s_stages_in_time_order() {
        let (tx, rx) = gate().unwrap();
        let t = std::thread::spawn(move || rx.wait(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        tx.open(&Stages(vec![
            stage("sshd_started", 30),
            stage("sshd_listening", 50),
        ]));
        let mut mine = Stages(vec![stage("mounts_done", 10), stage("exec_warm", 40)]);
        mine.merge(t.join().unwrap());
        let names: Vec<&str> = mine.0.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["mounts_done", "sshd_started", "exec_warm", "sshd_listening"]
        );
    }

    #[test]
    fn a_closed_sender_opens_the_gate_and_a_silent_one_times_out() {
        let (tx, rx) = gate().unwrap();
        drop(tx);
        assert!(rx.wait(Duration::from_secs(10)).0.is_empty());
        let (tx, rx) = gate().unwrap();
        let started = Instant::now();
        assert!(rx.wait(Duration::from_millis(100)).0.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(100));
        drop(tx);
    }
}
