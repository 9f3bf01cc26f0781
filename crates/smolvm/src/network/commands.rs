//! The system tools behind a small trait, so that unit tests check the exact `ip` argv and nft scripts
//! without touching the host.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::Path;

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
            NetworkError::Tool(crate::host::ToolError::Missing {
                program: program.to_string(),
                package,
                hint: "",
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
    /// a non-zero exit becomes a [`crate::host::ToolError::Failed`] carrying stderr.
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
pub(crate) struct SystemCommands;

impl NetCommands for SystemCommands {
    fn run(
        &self,
        program: &str,
        args: &[String],
        stdin: Option<&str>,
    ) -> Result<String, NetworkError> {
        // English messages (LC_ALL=C in the runner): is_permission() and users read them.
        let out = crate::host::tools::run(program, args, None, stdin)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::RecordingCommands;

    #[test]
    fn system_commands_capture_stdout_stdin_and_stderr() {
        let c = SystemCommands;
        let out = c.run("cat", &[], Some("hello")).unwrap();
        assert_eq!(out, "hello");
        let err = c
            .run("sh", &["-c".into(), "echo oops >&2; exit 3".into()], None)
            .unwrap_err();
        match err {
            NetworkError::Tool(crate::host::ToolError::Failed { stderr, status, .. }) => {
                assert_eq!(stderr, "oops");
                assert!(status.contains('3'), "{status}");
            }
            other => panic!("{other:?}"),
        }
        let missing = c.run("smolvm-no-such-tool", &[], None).unwrap_err();
        assert!(
            matches!(
                missing,
                NetworkError::Tool(crate::host::ToolError::Missing { .. })
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
