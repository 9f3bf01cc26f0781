//! The owner process's life: connect to the VMM's agent socket (retrying while the VM boots), greet
//! the agent, listen on the clients' socket, serve until the channel closes, remove the socket.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use smolvm_protocol::{Decoder, Ready};

use crate::greeting::{handshake, GreetError};
use crate::mux::{serve, ServeEnd};

/// Pause between attempts to reach the agent while the VM boots.
const RETRY: Duration = Duration::from_millis(10);
/// How often the owner checks that its VMM still lives.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// What the owner serves, from its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerArgs {
    /// The VMM's agent socket (QEMU's virtio-serial chardev).
    pub upstream: PathBuf,
    /// The socket clients connect to.
    pub listen: PathBuf,
    /// How long to wait for the agent's first `Ready` (the guest may still be booting).
    pub ready_timeout: Duration,
    /// The VMM process (pid, start time in clock ticks): when it is gone, so is the owner.
    pub vmm: Option<(u32, u64)>,
}

/// Errors of the owner process.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// The command line is wrong.
    #[error("usage: smolvm-channel --upstream SOCKET --listen SOCKET [--ready-timeout SECS] [--vmm PID:START] ({0})")]
    Usage(String),
    /// The agent did not answer in time or refused the greeting.
    #[error("cannot greet the guest agent on {}", path.display())]
    Greet {
        /// The upstream socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: GreetError,
    },
    /// The agent socket could not be connected before the deadline.
    #[error("cannot connect to the agent socket {}", path.display())]
    Connect {
        /// The upstream socket.
        path: PathBuf,
        /// The last cause.
        #[source]
        source: std::io::Error,
    },
    /// The clients' socket could not be made.
    #[error("cannot listen on {}", path.display())]
    Listen {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl OwnerArgs {
    /// Parses `--upstream P --listen P [--ready-timeout SECS] [--vmm PID:START]`.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<OwnerArgs, OwnerError> {
        let usage = |why: &str| OwnerError::Usage(why.to_string());
        let (mut upstream, mut listen, mut timeout, mut vmm) = (None, None, None, None);
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| usage("a flag lacks its value"))?;
            match flag.to_str() {
                Some("--upstream") => upstream = Some(PathBuf::from(value)),
                Some("--listen") => listen = Some(PathBuf::from(value)),
                Some("--ready-timeout") => {
                    let secs: f64 = value
                        .to_str()
                        .and_then(|v| v.parse().ok())
                        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                        .ok_or_else(|| usage("--ready-timeout wants seconds"))?;
                    timeout = Some(Duration::from_secs_f64(secs));
                }
                Some("--vmm") => {
                    let parsed = value.to_str().and_then(|v| {
                        let (pid, start) = v.split_once(':')?;
                        Some((pid.parse().ok()?, start.parse().ok()?))
                    });
                    vmm = Some(parsed.ok_or_else(|| usage("--vmm wants PID:START"))?);
                }
                _ => return Err(usage("unknown flag")),
            }
        }
        Ok(OwnerArgs {
            upstream: upstream.ok_or_else(|| usage("--upstream is required"))?,
            listen: listen.ok_or_else(|| usage("--listen is required"))?,
            ready_timeout: timeout.unwrap_or(Duration::from_secs(30)),
            vmm,
        })
    }
}

/// Connects to the agent socket and greets the agent, retrying while the socket is not there yet or
/// QEMU resets the connection (seen right after a boot), for at most `timeout` in all.
pub fn open_upstream(
    path: &Path,
    timeout: Duration,
) -> Result<(UnixStream, Ready, Decoder), OwnerError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match UnixStream::connect(path) {
            Ok(stream) => match handshake(&stream, left.max(Duration::from_millis(1))) {
                Ok((ready, dec)) => return Ok((stream, ready, dec)),
                Err(GreetError::Disconnected(_)) if Instant::now() < deadline => {}
                Err(source) => {
                    return Err(OwnerError::Greet {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            },
            Err(source) if Instant::now() >= deadline => {
                return Err(OwnerError::Connect {
                    path: path.to_path_buf(),
                    source,
                })
            }
            Err(_) => {}
        }
        std::thread::sleep(RETRY);
    }
}

/// Binds the clients' socket, replacing a stale socket file (never any other kind of file).
pub fn listen(path: &Path) -> Result<UnixListener, OwnerError> {
    let err = |source| OwnerError::Listen {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(m) = fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(err(std::io::Error::other("exists and is not a socket")));
        }
        fs::remove_file(path).map_err(err)?;
    }
    UnixListener::bind(path).map_err(err)
}

/// The whole owner: upstream, listener, serve, then remove its own socket (not a successor's).
pub fn run(args: &OwnerArgs) -> Result<ServeEnd, OwnerError> {
    if let Some(vmm) = args.vmm {
        let listen = args.listen.clone();
        std::thread::spawn(move || watch_vmm(vmm, &listen));
    }
    // Listening first: a client that comes while the guest boots is queued (its greeting waits for
    // the agent's), instead of finding no socket and taking that for a dead owner.
    let listener = listen(&args.listen)?;
    let ours = fs::metadata(&args.listen).ok().map(|m| (m.dev(), m.ino()));
    let end = open_upstream(&args.upstream, args.ready_timeout)
        .map(|(stream, ready, dec)| serve(stream, ready, dec, listener));
    remove_if_ours(&args.listen, ours);
    end
}

fn remove_if_ours(path: &Path, ours: Option<(u64, u64)>) {
    let now = fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    if now.is_some() && now == ours {
        let _ = fs::remove_file(path);
    }
}

/// Exits the process once the VMM is gone (before the upstream connected, nothing else would notice).
fn watch_vmm((pid, start): (u32, u64), listen: &Path) {
    let ours = loop {
        if let Ok(m) = fs::metadata(listen) {
            break Some((m.dev(), m.ino()));
        }
        if !alive(pid, start) {
            std::process::exit(0);
        }
        std::thread::sleep(WATCH_INTERVAL);
    };
    while alive(pid, start) {
        std::thread::sleep(WATCH_INTERVAL);
    }
    remove_if_ours(listen, ours);
    std::process::exit(0);
}

/// True if `pid` runs and started at `start` (clock ticks after boot) and is not a zombie.
pub fn alive(pid: u32, start: u64) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first().copied().unwrap_or("X");
    let started = fields.get(19).and_then(|s| s.parse::<u64>().ok());
    started == Some(start) && state != "Z" && state != "X"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Result<OwnerArgs, OwnerError> {
        OwnerArgs::parse(words.iter().map(OsString::from))
    }

    #[test]
    fn parses_its_command_line() {
        let a = args(&[
            "--upstream",
            "/s/a.agent",
            "--listen",
            "/s/a.chan",
            "--ready-timeout",
            "2.5",
            "--vmm",
            "12:345",
        ])
        .unwrap();
        assert_eq!(a.upstream, PathBuf::from("/s/a.agent"));
        assert_eq!(a.listen, PathBuf::from("/s/a.chan"));
        assert_eq!(a.ready_timeout, Duration::from_millis(2500));
        assert_eq!(a.vmm, Some((12, 345)));
        assert!(args(&["--listen", "/x"]).is_err());
        assert!(args(&["--upstream", "/x", "--listen"]).is_err());
        assert!(args(&["--upstream", "/x", "--listen", "/y", "--vmm", "12"]).is_err());
        assert!(args(&["--upstream", "/x", "--listen", "/y", "--bogus", "1"]).is_err());
    }

    #[test]
    fn listen_replaces_a_stale_socket_but_no_other_file() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("a.chan");
        drop(UnixListener::bind(&sock).unwrap());
        listen(&sock).unwrap();
        let file = d.path().join("b.chan");
        fs::write(&file, b"precious").unwrap();
        assert!(listen(&file).is_err());
        assert_eq!(fs::read(&file).unwrap(), b"precious");
    }

    #[test]
    fn an_agent_that_never_appears_is_a_connect_error() {
        let d = tempfile::tempdir().unwrap();
        let e = open_upstream(&d.path().join("none"), Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, OwnerError::Connect { .. }), "{e}");
        assert!(alive(std::process::id(), own_start()));
        assert!(!alive(std::process::id(), own_start() + 1));
    }

    fn own_start() -> u64 {
        let stat = fs::read_to_string("/proc/self/stat").unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        rest.split_whitespace().nth(19).unwrap().parse().unwrap()
    }
}
