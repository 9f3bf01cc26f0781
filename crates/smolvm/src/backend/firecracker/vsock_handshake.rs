//! Host side of a connection to a guest vsock port through Firecracker's vsock Unix socket: connect to
//! `uds_path`, send `CONNECT <port>\n`, read `OK <host port>\n`; from then on the stream carries the
//! guest's bytes.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Longest acknowledgement accepted: `OK ` plus a u32 and the newline fit easily.
const MAX_REPLY: usize = 32;

/// Why a vsock handshake failed. Carried inside the returned [`io::Error`] (see
/// [`io::Error::get_ref`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VsockHandshakeError {
    /// Firecracker closed the connection: nothing in the guest listens on the port (yet).
    #[error(
        "the vsock device closed the connection to guest port {port} (is the guest listening?)"
    )]
    Closed {
        /// The guest port.
        port: u32,
    },
    /// The acknowledgement was not `OK <n>\n`.
    #[error("unexpected vsock handshake reply for guest port {port}: {reply:?}")]
    UnexpectedReply {
        /// The guest port.
        port: u32,
        /// What was received.
        reply: String,
    },
}

/// Connects to guest vsock `port` through Firecracker's vsock socket `uds_path`. The handshake must
/// finish within `timeout`. The reply is read one byte at a time up to its newline so that none of the
/// guest's first bytes are swallowed. The returned stream has no read or write timeout.
///
/// Errors: the connect error; [`io::ErrorKind::TimedOut`]; [`io::ErrorKind::ConnectionRefused`] wrapping
/// [`VsockHandshakeError::Closed`] when the guest is not listening; [`io::ErrorKind::InvalidData`]
/// wrapping [`VsockHandshakeError::UnexpectedReply`].
pub fn connect_vsock(uds_path: &Path, port: u32, timeout: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    let mut stream = UnixStream::connect(uds_path)?;
    stream.set_write_timeout(Some(remaining(deadline)?))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;

    let mut reply = Vec::with_capacity(MAX_REPLY);
    let mut byte = [0u8; 1];
    while reply.last() != Some(&b'\n') {
        if reply.len() >= MAX_REPLY {
            return Err(unexpected(port, &reply));
        }
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        match stream.read(&mut byte) {
            Ok(0) if reply.is_empty() => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    VsockHandshakeError::Closed { port },
                ))
            }
            Ok(0) => return Err(unexpected(port, &reply)),
            Ok(_) => reply.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out(port))
            }
            Err(e) => return Err(e),
        }
    }
    if !is_ok_reply(&reply) {
        return Err(unexpected(port, &reply));
    }
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok(stream)
}

/// `OK <decimal u32>\n`.
fn is_ok_reply(reply: &[u8]) -> bool {
    let Some(rest) = reply.strip_prefix(b"OK ") else {
        return false;
    };
    let Some(digits) = rest.strip_suffix(b"\n") else {
        return false;
    };
    std::str::from_utf8(digits)
        .ok()
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<u32>().ok())
        .is_some()
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "vsock handshake timed out",
        ))
    } else {
        Ok(left)
    }
}

fn timed_out(port: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no vsock handshake reply for guest port {port} in time"),
    )
}

fn unexpected(port: u32, reply: &[u8]) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        VsockHandshakeError::UnexpectedReply {
            port,
            reply: String::from_utf8_lossy(reply).into_owned(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_reply_shape() {
        assert!(is_ok_reply(b"OK 1073741824\n"));
        assert!(is_ok_reply(b"OK 0\n"));
        assert!(!is_ok_reply(b"OK\n"));
        assert!(!is_ok_reply(b"OK -1\n"));
        assert!(!is_ok_reply(b"OK 12"));
        assert!(!is_ok_reply(b"ok 12\n"));
        assert!(!is_ok_reply(b"OK 99999999999\n"));
    }
}
