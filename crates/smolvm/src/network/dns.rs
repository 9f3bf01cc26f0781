//! smolvm's own resolver for the domain names of egress allow-lists: one A query over UDP to the host's
//! upstream servers (the ones TAP guests are given, [`super::resolv`]), answers with their TTLs.
//!
//! Why not the C library: it hides the TTL, and the TTL is what tells smolvm when to resolve again
//! (the nft set elements expire with it). Why not the guest's answers: the guest is not trusted to
//! say which addresses a name has. Only A records are read (the guest network is IPv4 only); a
//! truncated answer is used as far as it goes (no TCP retry).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

/// How long one server gets to answer.
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// TTL used for a name that has no address (NXDOMAIN / no A record): ask again after this long.
pub(crate) const NEGATIVE_TTL: u32 = 30;

/// Why a name could not be resolved.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DnsError {
    /// No server is configured.
    #[error("no name server to ask (no reachable nameserver in the host's resolv.conf)")]
    NoServer,
    /// Socket trouble or no answer in time, from every server.
    #[error("no answer for {name:?} from {servers}")]
    NoAnswer {
        /// The name asked for.
        name: String,
        /// The servers asked.
        servers: String,
        /// The last failure.
        #[source]
        source: std::io::Error,
    },
    /// The server answered with an error code other than NXDOMAIN.
    #[error("name server {server} answered {name:?} with error code {rcode}")]
    ServerError {
        /// The name asked for.
        name: String,
        /// The server.
        server: SocketAddr,
        /// DNS RCODE.
        rcode: u8,
    },
}

/// The addresses of a name and how long they may be used (seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// A records (may be empty: the name has none).
    pub(crate) addrs: Vec<Ipv4Addr>,
    /// Smallest TTL in the answer ([`NEGATIVE_TTL`] when there is no address).
    pub(crate) ttl: u32,
}

/// Resolves `name` (already validated) at the first of `servers` that answers.
pub(crate) fn resolve_a(name: &str, servers: &[SocketAddr]) -> Result<Resolved, DnsError> {
    if servers.is_empty() {
        return Err(DnsError::NoServer);
    }
    let mut last = None;
    for &server in servers {
        match ask(name, server) {
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(rcode)) => {
                return Err(DnsError::ServerError {
                    name: name.to_string(),
                    server,
                    rcode,
                })
            }
            Err(e) => last = Some(e),
        }
    }
    let servers = servers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    Err(DnsError::NoAnswer {
        name: name.to_string(),
        servers,
        source: last.unwrap_or_else(|| std::io::Error::other("no server")),
    })
}

/// One query; `Ok(Err(rcode))` for a server error.
fn ask(name: &str, server: SocketAddr) -> std::io::Result<Result<Resolved, u8>> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    sock.set_read_timeout(Some(QUERY_TIMEOUT))?;
    sock.connect(server)?;
    let id = query_id();
    sock.send(&encode_query(id, name))?;
    let mut buf = [0u8; 1500];
    loop {
        let n = sock.recv(&mut buf)?;
        // Anything not answering our id (a late reply, noise) is ignored until the timeout.
        if let Some(answer) = parse_answer(id, &buf[..n]) {
            return Ok(answer);
        }
    }
}

fn query_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ std::process::id()) as u16
}

/// A standard query (recursion desired) for the A records of `name`.
pub(crate) fn encode_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(name.len() + 18);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Parses a response to query `id`: `None` if it is not one (wrong id, not a response, malformed),
/// `Some(Err(rcode))` for a server error, else the A records with the smallest TTL.
pub(crate) fn parse_answer(id: u16, msg: &[u8]) -> Option<Result<Resolved, u8>> {
    if msg.len() < 12 || u16::from_be_bytes([msg[0], msg[1]]) != id || msg[2] & 0x80 == 0 {
        return None;
    }
    let rcode = msg[3] & 0x0f;
    let no_addr = Resolved {
        addrs: Vec::new(),
        ttl: NEGATIVE_TTL,
    };
    match rcode {
        0 => {}
        3 => return Some(Ok(no_addr)), // NXDOMAIN
        _ => return Some(Err(rcode)),
    }
    let qd = u16::from_be_bytes([msg[4], msg[5]]);
    let an = u16::from_be_bytes([msg[6], msg[7]]);
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(msg, pos)? + 4;
    }
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    for _ in 0..an {
        pos = skip_name(msg, pos)?;
        let h = msg.get(pos..pos + 10)?;
        let (rtype, class) = (
            u16::from_be_bytes([h[0], h[1]]),
            u16::from_be_bytes([h[2], h[3]]),
        );
        let rttl = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let len = usize::from(u16::from_be_bytes([h[8], h[9]]));
        let data = msg.get(pos + 10..pos + 10 + len)?;
        pos += 10 + len;
        // CNAMEs on the way count for the TTL too: the chain may change when they expire.
        if class == 1 && (rtype == 1 || rtype == 5) {
            ttl = ttl.min(rttl);
        }
        if class == 1 && rtype == 1 && len == 4 {
            let a = Ipv4Addr::new(data[0], data[1], data[2], data[3]);
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
    }
    if addrs.is_empty() {
        return Some(Ok(no_addr));
    }
    Some(Ok(Resolved { addrs, ttl }))
}

/// Position after the (possibly compressed) name at `pos`.
fn skip_name(msg: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *msg.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            l if l & 0xc0 == 0xc0 => return Some(pos + 2),
            l if l < 64 => pos += 1 + usize::from(l),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response to `query` with the given (type, ttl, rdata) answers, names as pointers to the question.
    pub(crate) fn response(query: &[u8], rcode: u8, answers: &[(u16, u32, Vec<u8>)]) -> Vec<u8> {
        let mut r = query.to_vec();
        r[2] = 0x81;
        r[3] = 0x80 | rcode;
        r[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
        for (t, ttl, data) in answers {
            r.extend_from_slice(&[0xc0, 12]);
            r.extend_from_slice(&t.to_be_bytes());
            r.extend_from_slice(&[0, 1]);
            r.extend_from_slice(&ttl.to_be_bytes());
            r.extend_from_slice(&(data.len() as u16).to_be_bytes());
            r.extend_from_slice(data);
        }
        r
    }

    #[test]
    fn query_is_exact() {
        assert_eq!(
            encode_query(0x1234, "a.test"),
            [
                0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 4, b't', b'e', b's', b't', 0, 0,
                1, 0, 1
            ]
        );
    }

    #[test]
    fn answers_give_addresses_and_the_smallest_ttl() {
        let q = encode_query(7, "a.test");
        let r = response(
            &q,
            0,
            &[
                (5, 50, vec![0xc0, 12]),
                (1, 300, vec![192, 0, 2, 1]),
                (1, 60, vec![192, 0, 2, 2]),
            ],
        );
        assert_eq!(
            parse_answer(7, &r),
            Some(Ok(Resolved {
                addrs: vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)],
                ttl: 50
            }))
        );
        assert_eq!(parse_answer(8, &r), None, "another query's id");
        assert_eq!(parse_answer(7, &q), None, "not a response");
        assert_eq!(parse_answer(7, &r[..r.len() - 2]), None, "truncated");
        let nx = response(&q, 3, &[]);
        assert_eq!(
            parse_answer(7, &nx),
            Some(Ok(Resolved {
                addrs: vec![],
                ttl: NEGATIVE_TTL
            }))
        );
        assert_eq!(parse_answer(7, &response(&q, 2, &[])), Some(Err(2)));
    }

    #[test]
    fn resolves_against_a_local_server() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            let r = response(&buf[..n], 0, &[(1, 9, vec![10, 1, 2, 3])]);
            server.send_to(&r, from).unwrap();
        });
        let got = resolve_a("x.test", &[addr]).unwrap();
        t.join().unwrap();
        assert_eq!(
            got,
            Resolved {
                addrs: vec![Ipv4Addr::new(10, 1, 2, 3)],
                ttl: 9
            }
        );
        assert!(matches!(resolve_a("x.test", &[]), Err(DnsError::NoServer)));
    }
}
