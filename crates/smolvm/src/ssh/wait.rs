//! Running `ssh` with a deadline, and waiting until a guest's SSH server lets us in.

use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::command::{ssh_argv, SshTarget};
use super::SshError;
use crate::host::ToolError;

/// What a command run over SSH produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshOutput {
    /// Exit status of the remote command; 255 also means that ssh itself failed (see `stderr`); -1 if
    /// ssh was killed by a signal.
    pub exit_code: i32,
    /// Remote stdout.
    pub stdout: String,
    /// Remote stderr, plus ssh's own errors.
    pub stderr: String,
}

/// Runs `command` (an argv, see [`ssh_argv`]) on the target with stdin closed. With `timeout`, ssh is
/// killed when it passes and [`SshError::Timeout`] is returned.
pub fn run_ssh(
    target: &SshTarget,
    command: &[String],
    timeout: Option<Duration>,
) -> Result<SshOutput, SshError> {
    let argv = ssh_argv(target, Some(command))?;
    let program = crate::host::tools::find_program(&argv[0]).ok_or_else(|| ToolError::Missing {
        program: "ssh".into(),
        package: "openssh-client",
        hint: "",
    })?;
    let spawn_err = |source| ToolError::Spawn {
        program: "ssh".into(),
        source,
    };
    let mut child = Command::new(program)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    // Both pipes are drained on threads so that a chatty command cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = timeout.map(|t| (Instant::now() + t, t));
    let status = loop {
        if let Some(st) = child.try_wait().map_err(spawn_err)? {
            break st;
        }
        if let Some((at, limit)) = deadline {
            if Instant::now() >= at {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SshError::Timeout {
                    operation: format!("ssh to {}:{}", target.host, target.port),
                    limit,
                    last_error: None,
                });
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(SshOutput {
        exit_code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Waits until the target accepts a TCP connection and `ssh ... true` succeeds with the pinned host
/// key, or `timeout` passes ([`SshError::Timeout`], whose source is the last failure seen).
pub fn wait_for_ssh(target: &SshTarget, timeout: Duration) -> Result<(), SshError> {
    let deadline = Instant::now() + timeout;
    let mut last: Option<SshError> = None;
    let addr_name = format!("{}:{}", target.host, target.port);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(SshError::Timeout {
                operation: format!("waiting for SSH on {addr_name}"),
                limit: timeout,
                last_error: last.map(Box::new),
            });
        }
        let remaining = deadline - now;
        // A cheap TCP probe first: no ssh process per attempt while the guest still boots.
        match tcp_probe(
            &target.host,
            target.port,
            remaining.min(Duration::from_secs(1)),
        ) {
            Ok(()) => match run_ssh(target, &["true".to_string()], Some(remaining)) {
                Ok(o) if o.exit_code == 0 => return Ok(()),
                Ok(o) => {
                    last = Some(SshError::Tool(ToolError::Failed {
                        program: "ssh".into(),
                        args: vec![addr_name.clone(), "true".into()],
                        status: format!("exit status: {}", o.exit_code),
                        stderr: o.stderr.trim().to_string(),
                        hint: String::new(),
                    }))
                }
                Err(e @ (SshError::Tool(ToolError::Missing { .. }) | SshError::Invalid { .. })) => {
                    return Err(e)
                }
                Err(e) => last = Some(e),
            },
            Err(source) => {
                last = Some(SshError::Io {
                    action: "connect to",
                    path: PathBuf::from(&addr_name),
                    source,
                })
            }
        }
        std::thread::sleep(remaining.min(Duration::from_millis(50)));
    }
}

fn tcp_probe(host: &str, port: u16, timeout: Duration) -> std::io::Result<()> {
    let addr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    TcpStream::connect_timeout(&addr, timeout.max(Duration::from_millis(1))).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::path::Path;

    fn target(port: u16) -> SshTarget {
        SshTarget {
            host: "127.0.0.1".into(),
            port,
            user: "root".into(),
            identity_file: Path::new("/nonexistent/key").into(),
            known_hosts: Path::new("/nonexistent/known_hosts").into(),
            connect_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn nothing_listening_times_out_with_the_last_error() {
        // Bind and drop to get a port that is (very likely) closed.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = wait_for_ssh(&target(port), Duration::from_millis(300)).unwrap_err();
        let SshError::Timeout { last_error, .. } = &e else {
            panic!("{e:?}")
        };
        assert!(
            matches!(last_error.as_deref(), Some(SshError::Io { .. })),
            "{e:?}"
        );
        match crate::Error::from(e) {
            crate::Error::OperationTimeout { operation, .. } => {
                assert!(operation.contains(&port.to_string()))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_server_that_is_not_ssh_never_counts_as_ready() {
        if crate::test_tools::tool_or_skip("a_server_that_is_not_ssh_never_counts_as_ready", "ssh")
            .is_none()
        {
            return;
        }
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        // Accepts and immediately closes: TCP works, SSH does not.
        std::thread::spawn(move || {
            for s in l.incoming().take(100) {
                drop(s);
            }
        });
        let e = wait_for_ssh(&target(port), Duration::from_millis(1500)).unwrap_err();
        assert!(matches!(e, SshError::Timeout { .. }), "{e:?}");
    }
}
