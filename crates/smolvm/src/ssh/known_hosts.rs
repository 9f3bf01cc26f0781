//! The per-VM known_hosts file: one line pinning the VM's host key for every address smolvm reaches it
//! at. One file per VM means no shared file to edit concurrently and nothing stale when a port or IP is
//! leased again to another VM.

use std::fs;
use std::path::Path;

use super::keys::key_fields;
use super::{io_err, SshError};
use crate::info::{NetworkConfig, NetworkMode};

/// The host patterns a VM is reached at: `[127.0.0.1]:<ssh_host_port>` (when forwarded) and, in TAP
/// mode, the guest IP (port 22, which known_hosts writes without brackets). A user-mode guest's IP is
/// private to its QEMU, so it is not pinned.
pub fn known_hosts_patterns(net: &NetworkConfig) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(port) = net.ssh_host_port {
        out.push(format!("[127.0.0.1]:{port}"));
    }
    if net.mode == NetworkMode::Tap {
        out.push(net.guest_ip.to_string());
    }
    out
}

/// The known_hosts line for `patterns` and a public key line (its comment is dropped).
pub(crate) fn known_hosts_line(
    patterns: &[String],
    public_key_line: &str,
) -> Result<String, SshError> {
    let (kind, key) = key_fields(public_key_line).ok_or_else(|| SshError::Invalid {
        what: "public key",
        value: public_key_line.to_string(),
        reason: "must be `<type> <base64> [comment]`",
    })?;
    let bad = |p: &String| {
        p.is_empty()
            || p.bytes()
                .any(|b| b.is_ascii_whitespace() || b == b',' || b.is_ascii_control())
    };
    if patterns.is_empty() || patterns.iter().any(bad) {
        return Err(SshError::Invalid {
            what: "known_hosts patterns",
            value: patterns.join(","),
            reason: "need at least one pattern without spaces or commas",
        });
    }
    Ok(format!("{} {kind} {key}\n", patterns.join(",")))
}

/// Writes (atomically replaces) a known_hosts file holding exactly one line.
pub fn write_known_hosts(
    path: &Path,
    patterns: &[String],
    public_key_line: &str,
) -> Result<(), SshError> {
    let line = known_hosts_line(patterns, public_key_line)?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    fs::write(&tmp, line).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err("rename into place", path)(e)
    })
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

    #[test]
    fn one_line_pins_both_addresses() {
        let p = known_hosts_patterns(&net(Some(2222)));
        assert_eq!(p, ["[127.0.0.1]:2222", "172.16.0.5"]);
        assert_eq!(known_hosts_patterns(&net(None)), ["172.16.0.5"]);
        let user = NetworkConfig {
            mode: NetworkMode::User,
            ..net(Some(2223))
        };
        assert_eq!(known_hosts_patterns(&user), ["[127.0.0.1]:2223"]);
        let line = known_hosts_line(&p, "ssh-ed25519 AAAAC3Nz smolvm-host-vm1").unwrap();
        assert_eq!(line, "[127.0.0.1]:2222,172.16.0.5 ssh-ed25519 AAAAC3Nz\n");
        assert!(known_hosts_line(&p, "garbage").is_err());
        assert!(known_hosts_line(&["a b".into()], "ssh-ed25519 AAAA").is_err());
        assert!(known_hosts_line(&[], "ssh-ed25519 AAAA").is_err());

        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("known_hosts");
        write_known_hosts(&f, &p, "ssh-ed25519 AAAAC3Nz").unwrap();
        write_known_hosts(&f, &p, "ssh-ed25519 BBBB").unwrap();
        assert_eq!(
            fs::read_to_string(&f).unwrap(),
            "[127.0.0.1]:2222,172.16.0.5 ssh-ed25519 BBBB\n"
        );
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
