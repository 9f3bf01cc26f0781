//! `ssh` argv for smolvm's own connections, and copy-paste commands for people.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::quote::join;
use super::SshError;
use crate::info::{NetworkConfig, NetworkMode};

/// Default `ConnectTimeout` of smolvm's own SSH connections.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how smolvm connects over SSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// Host name or address (no leading `-`, no whitespace).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Private key (`-i`).
    pub identity_file: PathBuf,
    /// The VM's pinned known_hosts file.
    pub known_hosts: PathBuf,
    /// TCP connect timeout (`ConnectTimeout`, whole seconds, at least 1).
    pub connect_timeout: Duration,
}

impl SshTarget {
    /// The VM through its loopback forward `127.0.0.1:<ssh_host_port>`, if it has one.
    pub fn localhost(
        net: &NetworkConfig,
        user: &str,
        identity_file: &Path,
        known_hosts: &Path,
    ) -> Option<SshTarget> {
        net.ssh_host_port
            .map(|port| Self::new("127.0.0.1", port, user, identity_file, known_hosts))
    }

    /// The VM at its own IP, port 22 (TAP networking only).
    pub fn private_ip(
        net: &NetworkConfig,
        user: &str,
        identity_file: &Path,
        known_hosts: &Path,
    ) -> SshTarget {
        Self::new(
            &net.guest_ip.to_string(),
            22,
            user,
            identity_file,
            known_hosts,
        )
    }

    fn new(host: &str, port: u16, user: &str, key: &Path, known_hosts: &Path) -> SshTarget {
        SshTarget {
            host: host.to_string(),
            port,
            user: user.to_string(),
            identity_file: key.to_path_buf(),
            known_hosts: known_hosts.to_path_buf(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    fn check(&self) -> Result<(), SshError> {
        // A leading '-' would be read as an option; whitespace or '@' would change the target.
        let word_ok = |s: &str| {
            !s.is_empty()
                && !s.starts_with('-')
                && !s
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '@')
        };
        if !word_ok(&self.host) {
            return Err(SshError::Invalid {
                what: "SSH host",
                value: self.host.clone(),
                reason: "must not be empty, start with '-' or hold whitespace or '@'",
            });
        }
        if !word_ok(&self.user) {
            return Err(SshError::Invalid {
                what: "SSH user",
                value: self.user.clone(),
                reason: "must not be empty, start with '-' or hold whitespace or '@'",
            });
        }
        Ok(())
    }
}

/// The `ssh` argv (program first) for `run` over SSH (`command` given) or an interactive session
/// (`None`). The host key must match the pinned known_hosts file (`StrictHostKeyChecking=yes`, the
/// system-wide file ignored); the user's ssh config is ignored (`-F /dev/null`) so that nothing in it
/// can change where or how smolvm connects. `command` is an argv: each word is quoted so that the remote
/// shell runs exactly these words (pass `["sh", "-c", script]` to run a shell script).
pub fn ssh_argv(target: &SshTarget, command: Option<&[String]>) -> Result<Vec<String>, SshError> {
    target.check()?;
    let key = path_arg("identity file", &target.identity_file)?;
    let known = path_arg("known_hosts file", &target.known_hosts)?;
    let timeout = target.connect_timeout.as_secs().max(1);
    let mut argv: Vec<String> = [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        key,
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        &format!("UserKnownHostsFile={known}"),
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        &format!("ConnectTimeout={timeout}"),
        "-o",
        "LogLevel=ERROR",
        "-p",
        &target.port.to_string(),
        "-l",
        &target.user,
        &target.host,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(words) = command {
        // "--" ends option parsing, which ssh resumes after the host name.
        argv.push("--".into());
        argv.push(join(words));
    }
    Ok(argv)
}

fn path_arg<'a>(what: &'static str, p: &'a Path) -> Result<&'a str, SshError> {
    // ssh reads `-o Key=value` up to the end; only a newline could break it, and UTF-8 is needed.
    match p.to_str() {
        Some(s) if !s.is_empty() && !s.contains('\n') => Ok(s),
        _ => Err(SshError::Invalid {
            what,
            value: p.display().to_string(),
            reason: "must be non-empty UTF-8 without newlines",
        }),
    }
}

/// Ready-to-paste SSH commands for a VM (spec: `get_ssh_commands`), every word shell-quoted:
/// * `private_ip`: to the guest IP, port 22 (TAP networking only: a user-mode guest has no address
///   the host can reach);
/// * `localhost_port`: to `127.0.0.1:<ssh_host_port>` (only when the VM has a forwarded port);
/// * `public`: only when `public_host` is given (and a port is forwarded): through `public_host` as an
///   SSH jump host (`-J`), then to the loopback forward on it. The forward listens on 127.0.0.1 only, by
///   design, so the jump is what makes it reachable from elsewhere; the jump hop uses your own ssh
///   configuration and keys for `public_host`.
///
/// With `known_hosts`, the commands pin the VM's host key (`StrictHostKeyChecking=yes`); with
/// `key_path`, they log in with that key only.
pub fn get_ssh_commands(
    network: &NetworkConfig,
    ssh_user: &str,
    key_path: Option<&Path>,
    known_hosts: Option<&Path>,
    public_host: Option<&str>,
) -> BTreeMap<String, String> {
    let mut common: Vec<String> = vec!["ssh".into()];
    if let Some(k) = key_path {
        common.extend([
            "-i".into(),
            k.display().to_string(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
        ]);
    }
    if let Some(kh) = known_hosts {
        common.extend([
            "-o".into(),
            format!("UserKnownHostsFile={}", kh.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
        ]);
    }
    let command = |extra: &[String], host: &str| {
        let mut words = common.clone();
        words.extend_from_slice(extra);
        words.push(format!("{ssh_user}@{host}"));
        join(&words)
    };
    let mut out = BTreeMap::new();
    // A user-mode guest's IP exists only inside its QEMU: no command could reach it.
    if network.mode == NetworkMode::Tap {
        out.insert(
            "private_ip".to_string(),
            command(&[], &network.guest_ip.to_string()),
        );
    }
    if let Some(port) = network.ssh_host_port {
        let p = ["-p".to_string(), port.to_string()];
        out.insert("localhost_port".to_string(), command(&p, "127.0.0.1"));
        if let Some(public) = public_host {
            let jump = [
                "-J".to_string(),
                public.to_string(),
                p[0].clone(),
                p[1].clone(),
            ];
            out.insert("public".to_string(), command(&jump, "127.0.0.1"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn net(port: Option<u16>) -> NetworkConfig {
        NetworkConfig {
            guest_ip: Ipv4Addr::new(172, 16, 0, 5),
            gateway_ip: Ipv4Addr::new(172, 16, 0, 1),
            netmask: Ipv4Addr::new(255, 255, 0, 0),
            tap_device: Some("smv-5".into()),
            guest_mac: "02:00:00:00:00:05".into(),
            ssh_host_port: port,
            mode: NetworkMode::Tap,
        }
    }

    fn target() -> SshTarget {
        SshTarget::localhost(
            &net(Some(2222)),
            "root",
            Path::new("/d/ssh/id_ed25519"),
            Path::new("/d/vms/vm1/known_hosts"),
        )
        .unwrap()
    }

    #[test]
    fn argv_is_exact() {
        let cmd: Vec<String> = ["echo", "a b", "it's"].map(String::from).to_vec();
        let argv = ssh_argv(&target(), Some(&cmd)).unwrap();
        assert_eq!(
            argv,
            [
                "ssh",
                "-F",
                "/dev/null",
                "-i",
                "/d/ssh/id_ed25519",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "UserKnownHostsFile=/d/vms/vm1/known_hosts",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=5",
                "-o",
                "LogLevel=ERROR",
                "-p",
                "2222",
                "-l",
                "root",
                "127.0.0.1",
                "--",
                r"echo 'a b' 'it'\''s'",
            ]
        );
        let interactive = ssh_argv(&target(), None).unwrap();
        assert_eq!(interactive.last().unwrap(), "127.0.0.1");
        assert_eq!(interactive.len(), argv.len() - 2);
    }

    #[test]
    fn hostile_targets_are_refused() {
        let mut t = target();
        t.host = "-oProxyCommand=x".into();
        assert!(ssh_argv(&t, None).is_err());
        let mut t = target();
        t.user = "root@evil".into();
        assert!(ssh_argv(&t, None).is_err());
        let mut t = target();
        t.known_hosts = PathBuf::from("/a\nb");
        assert!(ssh_argv(&t, None).is_err());
        let private = SshTarget::private_ip(&net(None), "root", Path::new("/k"), Path::new("/h"));
        assert_eq!(private.host, "172.16.0.5");
        assert_eq!(private.port, 22);
    }

    #[test]
    fn ssh_commands_are_exact_and_quoted() {
        let c = get_ssh_commands(
            &net(Some(2222)),
            "root",
            Some(Path::new("/home/a b/.ssh/id")),
            Some(Path::new("/d/known_hosts")),
            Some("user@example.org"),
        );
        let opts = "-i '/home/a b/.ssh/id' -o IdentitiesOnly=yes \
                    -o UserKnownHostsFile=/d/known_hosts -o StrictHostKeyChecking=yes";
        assert_eq!(c["private_ip"], format!("ssh {opts} root@172.16.0.5"));
        assert_eq!(
            c["localhost_port"],
            format!("ssh {opts} -p 2222 root@127.0.0.1")
        );
        assert_eq!(
            c["public"],
            format!("ssh {opts} -J user@example.org -p 2222 root@127.0.0.1")
        );
        let bare = get_ssh_commands(&net(None), "ubuntu", None, None, Some("h"));
        assert_eq!(bare.len(), 1);
        assert_eq!(bare["private_ip"], "ssh ubuntu@172.16.0.5");
        let user = NetworkConfig {
            mode: NetworkMode::User,
            ..net(Some(2223))
        };
        let c = get_ssh_commands(&user, "root", None, None, Some("h"));
        assert_eq!(c.keys().collect::<Vec<_>>(), ["localhost_port", "public"]);
        assert_eq!(c["localhost_port"], "ssh -p 2223 root@127.0.0.1");
        let no_public = get_ssh_commands(&net(Some(1)), "root", None, None, None);
        assert_eq!(
            no_public.keys().collect::<Vec<_>>(),
            ["localhost_port", "private_ip"]
        );
    }
}
