//! The name servers a TAP guest is told to use: the host's upstream servers.
//!
//! A TAP guest reaches the outside through the host's NAT, so the servers in the host's
//! `/etc/resolv.conf` work for it, except loopback ones (`127.0.0.53` of systemd-resolved, a local
//! dnsmasq on `127.0.0.1`): those only exist inside the host. For them the upstream list of
//! systemd-resolved (`/run/systemd/resolve/resolv.conf`) is used instead; if no reachable server is
//! left, the guest gets no resolver configuration (names then fail cleanly with "bad address") rather
//! than one that cannot answer. User-mode guests need none of this: QEMU answers DNS at `10.0.2.3`.
//!
//! The files are read when a VM starts, in the process that starts it: `ip netns exec NS smolvm ...`
//! sees the namespace's `/etc/netns/NS/resolv.conf`, as every other program would.

use std::net::Ipv4Addr;
use std::path::Path;

/// The host's resolver configuration.
pub(crate) const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// systemd-resolved's list of its upstream servers (used when the host's file names only its stub).
pub(crate) const RESOLVED_UPSTREAM_CONF: &str = "/run/systemd/resolve/resolv.conf";
/// At most this many servers (the C library's resolver reads no more than three).
pub(crate) const MAX_SERVERS: usize = 3;

/// IPv4 `nameserver` entries of a resolv.conf text that a guest can reach (not loopback, not
/// unspecified), in order, without duplicates, at most [`MAX_SERVERS`].
pub(crate) fn guest_reachable_servers(text: &str) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(Ok(ip)) = words.next().map(str::parse::<Ipv4Addr>) else {
            continue; // IPv6 or garbage: the guest network is IPv4 only
        };
        if ip.is_loopback() || ip.is_unspecified() || out.contains(&ip) {
            continue;
        }
        out.push(ip);
    }
    out.truncate(MAX_SERVERS);
    out
}

/// The servers of the first of `files` that names a reachable one (unreadable files are skipped).
pub(crate) fn servers_from(files: &[&Path]) -> Vec<Ipv4Addr> {
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(|t| guest_reachable_servers(&t))
        .find(|s| !s.is_empty())
        .unwrap_or_default()
}

/// The host's upstream name servers for TAP guests (see the module docs).
pub(crate) fn host_upstream_servers() -> Vec<Ipv4Addr> {
    servers_from(&[
        Path::new(HOST_RESOLV_CONF),
        Path::new(RESOLVED_UPSTREAM_CONF),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_reachable_ipv4_servers_in_order() {
        let text = "# generated\nsearch example.org\nnameserver 127.0.0.53\nnameserver 10.0.0.1\n\
                    nameserver ::1\nnameserver 2001:db8::1\nnameserver 10.0.0.1\n  nameserver\t9.9.9.9 \n\
                    nameserver 0.0.0.0\noptions edns0\nnameserver 1.1.1.1\nnameserver 8.8.8.8\n";
        assert_eq!(
            guest_reachable_servers(text),
            [
                Ipv4Addr::new(10, 0, 0, 1),
                Ipv4Addr::new(9, 9, 9, 9),
                Ipv4Addr::new(1, 1, 1, 1)
            ]
        );
        assert!(guest_reachable_servers("nameserver 127.0.0.53\noptions trust-ad\n").is_empty());
    }

    #[test]
    fn falls_back_to_the_next_file_when_only_loopback_is_named() {
        let t = tempfile::tempdir().unwrap();
        let stub = t.path().join("stub");
        let upstream = t.path().join("upstream");
        std::fs::write(&stub, "nameserver 127.0.0.53\n").unwrap();
        std::fs::write(&upstream, "nameserver 192.0.2.53\n").unwrap();
        let missing = t.path().join("missing");
        assert_eq!(
            servers_from(&[&missing, &stub, &upstream]),
            [Ipv4Addr::new(192, 0, 2, 53)]
        );
        // A file with a reachable server wins over later ones.
        std::fs::write(&stub, "nameserver 198.51.100.1\n").unwrap();
        assert_eq!(
            servers_from(&[&stub, &upstream]),
            [Ipv4Addr::new(198, 51, 100, 1)]
        );
        assert!(servers_from(&[&missing]).is_empty());
    }
}
