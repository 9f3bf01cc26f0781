//! The exec-path warm-up: before the agent greets its first host, it serves one `<shell> -lc true` to
//! itself through the real server (frame decoder, dispatch, the exec request's threads, output pump,
//! frame encoding and the writer), over a socketpair.
//!
//! Why: under TCG the guest's code is translated the first time it runs, and the shell binary and
//! `/etc/profile` are read from the disk on first use. Measured on the minimal kernel (bench, quiet
//! machine): the first `run("true")` after `Ready` took 100-250 ms with nothing warmed, about 48 ms
//! with only a login shell run during boot, 13 ms with this warm-up, against 15-25 ms for later
//! commands. The agent runs it while PID 1 still starts the SSH server and the network (see
//! [`crate::gate`]), on another vCPU, so it costs the boot little; a benchmark's raw-VMM floor, which
//! waits for the same `Ready`, pays the same.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use smolvm_protocol::{
    with_sync, Command, Decoder, ExecStart, FrameType, Hello, Ready, Request, PROTOCOL_VERSION,
};

use super::{serve_with, Config, Hooks};

/// Longest wait for the warm-up command (a hung profile must not delay the agent's `Ready`).
pub const EXEC_WARMUP_LIMIT: Duration = Duration::from_secs(3);

/// The request id of the warm-up command.
const WARM_ID: u32 = 1;

/// Runs `<shell> -lc true` through the server once; true if its `Exit` frame came back within
/// `limit`. Any failure only means the path stays cold: it is logged by the caller, nothing else
/// changes (the server thread ends when this side closes its end).
pub fn exec_path(config: &Config, hooks: &'static Hooks, limit: Duration) -> io::Result<bool> {
    let (agent, mut host) = UnixStream::pair()?;
    let chan = File::from(OwnedFd::from(agent));
    let config = config.clone();
    let ready = Ready {
        protocol_version: PROTOCOL_VERSION,
        agent_version: String::new(),
        nonce: None,
        boot_stages: Vec::new(),
    };
    let server = std::thread::Builder::new()
        .name("exec-warmup".into())
        .spawn(move || serve_with(chan, hooks, &config, &ready))?;
    let started = Instant::now();
    let hello = Request::Hello(Hello { nonce: 1 })
        .to_frame(0)
        .map_err(io::Error::other)?;
    let exec = Request::Exec(ExecStart {
        command: Command::Shell("true".into()),
        env: Default::default(),
        cwd: None,
        // No agent-side timeout: giving up here closes the connection, which cancels the command.
        timeout_ms: None,
        stdin: false,
    })
    .to_frame(WARM_ID)
    .map_err(io::Error::other)?;
    host.write_all(&with_sync(&hello).map_err(io::Error::other)?)?;
    host.write_all(&exec.encode().map_err(io::Error::other)?)?;
    let mut dec = Decoder::hunting();
    let done = loop {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            break false;
        }
        host.set_read_timeout(Some(left))?;
        match dec.read_from(&mut host, 64 * 1024) {
            Ok(0) => break false,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break false
            }
            Err(e) => return Err(e),
        }
        let mut exited = false;
        while let Some(frame) = dec.next_frame() {
            if let Ok(f) = frame {
                if f.request_id == WARM_ID
                    && matches!(f.frame_type, FrameType::Exit | FrameType::Error)
                {
                    exited = true;
                }
            }
        }
        if exited {
            break true;
        }
    };
    // Closing our end ends the server (it cancels a command still running, killing its group).
    drop(host);
    let _ = server.join();
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_power_off() -> ! {
        panic!("the warm-up never powers off");
    }

    static HOOKS: Hooks = Hooks {
        power_off: no_power_off,
    };

    #[test]
    fn a_warm_up_command_runs_through_the_server_and_exits() {
        let dir = tempfile::tempdir().unwrap();
        let config = super::super::tests::config_in(dir.path());
        assert!(exec_path(&config, &HOOKS, Duration::from_secs(30)).unwrap());
    }

    #[test]
    fn a_warm_up_that_overstays_gives_up_and_returns() {
        let dir = tempfile::tempdir().unwrap();
        let shell = dir.path().join("slow-sh");
        std::fs::write(&shell, "#!/bin/sh\nsleep 30\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shell, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut config = super::super::tests::config_in(dir.path());
        config.shell = shell;
        let started = Instant::now();
        assert!(!exec_path(&config, &HOOKS, Duration::from_millis(300)).unwrap());
        // The server cancelled the command and ended: nothing waits the 30 s.
        assert!(started.elapsed() < Duration::from_secs(20));
    }
}
