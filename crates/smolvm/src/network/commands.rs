//! The system tools behind a small trait, so that unit tests check the exact `ip` argv and nft scripts
//! without touching the host.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::Path;
use std::sync::Mutex;

use super::NetworkError;

/// What the host lets this process do with networking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetCapabilities {
    /// Effective user id (owner given to new TAP devices so that the VMM can open them).
    pub euid: u32,
    /// Root or `CAP_NET_ADMIN` in the effective set.
    pub net_admin: bool,
    /// `nft` is installed.
    pub nft: bool,
    /// `ip` is installed.
    pub ip: bool,
    /// `/dev/net/tun` exists.
    pub tun: bool,
}

impl NetCapabilities {
    /// Everything present, as root: what the unit-test fake reports by default.
    pub fn all() -> Self {
        NetCapabilities {
            euid: 0,
            net_admin: true,
            nft: true,
            ip: true,
            tun: true,
        }
    }

    /// True if TAP networking can be set up.
    pub fn tap_possible(&self) -> bool {
        self.check_tap().is_ok()
    }

    /// Ok if TAP networking can be set up, else the first missing piece as a clear error.
    pub fn check_tap(&self) -> Result<(), NetworkError> {
        let missing = |program: &str, package| {
            NetworkError::Tool(crate::tool::ToolError::Missing {
                program: program.to_string(),
                package,
            })
        };
        if !self.net_admin {
            return Err(NetworkError::NoPrivilege {
                detail: format!("uid {} without CAP_NET_ADMIN", self.euid),
            });
        }
        if !self.nft {
            return Err(missing("nft", "nftables"));
        }
        if !self.ip {
            return Err(missing("ip", "iproute2"));
        }
        if !self.tun {
            return Err(NetworkError::NoPrivilege {
                detail: "/dev/net/tun is missing (load the tun module: modprobe tun)".into(),
            });
        }
        Ok(())
    }

    /// Probes this process and host.
    pub fn detect() -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        NetCapabilities {
            euid,
            net_admin: euid == 0 || effective_caps().is_some_and(|c| c & (1 << CAP_NET_ADMIN) != 0),
            nft: crate::host::tools::find_program("nft").is_some(),
            ip: crate::host::tools::find_program("ip").is_some(),
            tun: Path::new("/dev/net/tun").exists(),
        }
    }
}

const CAP_NET_ADMIN: u32 = 12;

/// The effective capability set from `/proc/self/status` (`CapEff:` in hex).
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The system tools and kernel settings networking uses.
pub trait NetCommands: Send + Sync + std::fmt::Debug {
    /// Runs `program` with `args` (argv, never a shell), feeding `stdin` if given. Returns stdout;
    /// a non-zero exit becomes a [`crate::tool::ToolError::Failed`] carrying stderr.
    fn run(
        &self,
        program: &str,
        args: &[String],
        stdin: Option<&str>,
    ) -> Result<String, NetworkError>;

    /// Reads a small file such as a `/proc/sys` setting; `None` if it does not exist.
    fn read_file(&self, path: &str) -> Result<Option<String>, NetworkError>;

    /// Writes a `/proc/sys` setting.
    fn write_file(&self, path: &str, value: &str) -> Result<(), NetworkError>;

    /// What this process may do.
    fn capabilities(&self) -> NetCapabilities;

    /// True if something listens on (or holds) `127.0.0.1:<port>`.
    fn loopback_port_in_use(&self, port: u16) -> bool;
}

/// The real tools: `std::process::Command` with argv only.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemCommands;

impl NetCommands for SystemCommands {
    fn run(
        &self,
        program: &str,
        args: &[String],
        stdin: Option<&str>,
    ) -> Result<String, NetworkError> {
        // English messages (LC_ALL=C in the runner): is_permission() and users read them.
        let out = crate::tool::run(program, args, None, stdin)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn read_file(&self, path: &str) -> Result<Option<String>, NetworkError> {
        match std::fs::read_to_string(path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(NetworkError::Sysctl {
                action: "read",
                path: path.to_string(),
                source,
            }),
        }
    }

    fn write_file(&self, path: &str, value: &str) -> Result<(), NetworkError> {
        std::fs::write(path, value).map_err(|source| NetworkError::Sysctl {
            action: "write",
            path: path.to_string(),
            source,
        })
    }

    fn capabilities(&self) -> NetCapabilities {
        NetCapabilities::detect()
    }

    fn loopback_port_in_use(&self, port: u16) -> bool {
        // Binding is the only race-free-enough probe that needs no privileges; the socket closes at
        // once. (A listener on 0.0.0.0 also makes this bind fail.) Only EADDRINUSE means "taken": with
        // loopback down (a fresh network namespace) the bind fails with EADDRNOTAVAIL instead.
        matches!(
            TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse
        )
    }
}

/// `program arg1 arg2` for messages.
pub(crate) fn display_command(program: &str, args: &[String]) -> String {
    std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One recorded call of [`RecordingCommands`]. File writes are recorded as program `write` with args
/// `[path, value]`, so the whole sequence of effects can be asserted in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The program (or `write`).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// What was fed on stdin.
    pub stdin: Option<String>,
}

impl Call {
    /// `program arg1 arg2 ...`.
    pub fn line(&self) -> String {
        display_command(&self.program, &self.args)
    }
}

#[derive(Debug)]
struct Response {
    prefix: Vec<String>,
    once: bool,
    result: Result<String, String>,
}

/// A fake for unit tests: records every call and answers from scripted responses (the first matching
/// one-shot answer, else the first matching standing answer, matched by argv prefix; unmatched calls
/// succeed with empty output).
#[derive(Debug)]
pub struct RecordingCommands {
    calls: Mutex<Vec<Call>>,
    responses: Mutex<Vec<Response>>,
    files: Mutex<BTreeMap<String, String>>,
    caps: Mutex<NetCapabilities>,
    busy_ports: Mutex<Vec<u16>>,
}

impl Default for RecordingCommands {
    fn default() -> Self {
        RecordingCommands {
            calls: Mutex::default(),
            responses: Mutex::default(),
            files: Mutex::default(),
            caps: Mutex::new(NetCapabilities::all()),
            busy_ports: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic in another test thread must not hide this test's result.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RecordingCommands {
    /// A fake with all capabilities and no scripted responses.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers calls whose argv (program first) starts with `prefix` with `stdout`, every time.
    pub fn respond(&self, prefix: &[&str], stdout: &str) {
        self.push(prefix, false, Ok(stdout.to_string()));
    }

    /// Like [`respond`](Self::respond), but only for the next matching call.
    pub fn respond_once(&self, prefix: &[&str], stdout: &str) {
        self.push(prefix, true, Ok(stdout.to_string()));
    }

    /// Makes calls matching `prefix` fail with `stderr` (once).
    pub fn fail_once(&self, prefix: &[&str], stderr: &str) {
        self.push(prefix, true, Err(stderr.to_string()));
    }

    fn push(&self, prefix: &[&str], once: bool, result: Result<String, String>) {
        lock(&self.responses).push(Response {
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
            once,
            result,
        });
    }

    /// Sets the content `read_file` returns for `path`.
    pub fn set_file(&self, path: &str, value: &str) {
        lock(&self.files).insert(path.to_string(), value.to_string());
    }

    /// Sets what `capabilities` returns.
    pub fn set_capabilities(&self, caps: NetCapabilities) {
        *lock(&self.caps) = caps;
    }

    /// Marks a loopback port as in use.
    pub fn set_port_busy(&self, port: u16) {
        lock(&self.busy_ports).push(port);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    /// Every call so far as `program arg ...` lines.
    pub fn lines(&self) -> Vec<String> {
        self.calls().iter().map(Call::line).collect()
    }

    /// The stdin of every call of `program` (for nft: the scripts).
    pub fn stdins(&self, program: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.program == program)
            .filter_map(|c| c.stdin)
            .collect()
    }

    /// Forgets the recorded calls (responses stay).
    pub fn clear_calls(&self) {
        lock(&self.calls).clear();
    }
}

impl NetCommands for RecordingCommands {
    fn run(
        &self,
        program: &str,
        args: &[String],
        stdin: Option<&str>,
    ) -> Result<String, NetworkError> {
        lock(&self.calls).push(Call {
            program: program.to_string(),
            args: args.to_vec(),
            stdin: stdin.map(str::to_string),
        });
        let argv: Vec<&str> = std::iter::once(program)
            .chain(args.iter().map(String::as_str))
            .collect();
        let mut responses = lock(&self.responses);
        let matches = |r: &Response| {
            argv.starts_with(&r.prefix.iter().map(String::as_str).collect::<Vec<_>>())
        };
        // One-shot answers win over standing ones, so a test can override a standing answer once.
        let found = responses
            .iter()
            .position(|r| r.once && matches(r))
            .or_else(|| responses.iter().position(matches));
        let result = match found {
            Some(i) if responses[i].once => responses.remove(i).result,
            Some(i) => responses[i].result.clone(),
            None => Ok(String::new()),
        };
        result.map_err(|stderr| {
            NetworkError::Tool(crate::tool::ToolError::Failed {
                command: display_command(program, args),
                status: "exit status: 1".into(),
                stderr,
            })
        })
    }

    fn read_file(&self, path: &str) -> Result<Option<String>, NetworkError> {
        Ok(lock(&self.files).get(path).cloned())
    }

    fn write_file(&self, path: &str, value: &str) -> Result<(), NetworkError> {
        lock(&self.calls).push(Call {
            program: "write".into(),
            args: vec![path.to_string(), value.to_string()],
            stdin: None,
        });
        lock(&self.files).insert(path.to_string(), value.to_string());
        Ok(())
    }

    fn capabilities(&self) -> NetCapabilities {
        *lock(&self.caps)
    }

    fn loopback_port_in_use(&self, port: u16) -> bool {
        lock(&self.busy_ports).contains(&port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_commands_capture_stdout_stdin_and_stderr() {
        let c = SystemCommands;
        let out = c.run("cat", &[], Some("hello")).unwrap();
        assert_eq!(out, "hello");
        let err = c
            .run("sh", &["-c".into(), "echo oops >&2; exit 3".into()], None)
            .unwrap_err();
        match err {
            NetworkError::Tool(crate::tool::ToolError::Failed { stderr, status, .. }) => {
                assert_eq!(stderr, "oops");
                assert!(status.contains('3'), "{status}");
            }
            other => panic!("{other:?}"),
        }
        let missing = c.run("smolvm-no-such-tool", &[], None).unwrap_err();
        assert!(
            matches!(
                missing,
                NetworkError::Tool(crate::tool::ToolError::Missing { .. })
            ),
            "{missing:?}"
        );
    }

    #[test]
    fn fake_matches_prefixes_in_order() {
        let f = RecordingCommands::new();
        f.respond_once(&["nft", "-j"], "first");
        f.respond(&["nft"], "always");
        f.fail_once(&["ip", "link"], "Cannot find device");
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(f.run("nft", &a(&["-j", "list"]), None).unwrap(), "first");
        assert_eq!(f.run("nft", &a(&["-j", "list"]), None).unwrap(), "always");
        assert!(f.run("ip", &a(&["link", "del"]), None).is_err());
        assert_eq!(f.run("ip", &a(&["link", "del"]), None).unwrap(), "");
        f.write_file("/proc/x", "1").unwrap();
        assert_eq!(f.read_file("/proc/x").unwrap().as_deref(), Some("1"));
        assert_eq!(f.lines().last().unwrap(), "write /proc/x 1");
    }

    #[test]
    fn missing_capabilities_give_clear_errors() {
        let mut caps = NetCapabilities::all();
        caps.net_admin = false;
        caps.euid = 1000;
        let e = caps.check_tap().unwrap_err();
        assert!(e.is_permission());
        assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
        let mut caps = NetCapabilities::all();
        caps.nft = false;
        let e = caps.check_tap().unwrap_err().to_string();
        assert!(e.contains("nftables"), "{e}");
    }
}
