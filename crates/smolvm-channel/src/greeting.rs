//! The host side of the greeting: `SYNC` + `Hello{nonce}` out (repeated until answered), then everything
//! skipped up to `SYNC` + the `Ready` carrying our nonce. See [`smolvm_protocol`]'s "Greeting and
//! resynchronisation". Used by the library's agent client and by the channel owner (which greets the
//! agent once for all its clients), so both speak exactly the same greeting.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use smolvm_protocol::{
    with_sync, Decoder, FrameType, Hello, ProtocolError, Ready, Request, PROTOCOL_VERSION,
};

/// The greeting is re-sent this often until the agent answers it (it may have missed it: not listening
/// yet, or busy skipping a half frame an earlier host left behind). The agent answers a nonce once.
pub const HELLO_RESEND: Duration = Duration::from_millis(250);
/// Most bytes read while waiting for our `Ready` (replies the agent wrote for earlier hosts come first).
pub const MAX_STALE_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes read from the socket at once.
const READ_CHUNK: usize = 256 * 1024;

/// Why a greeting failed.
#[derive(Debug, thiserror::Error)]
pub enum GreetError {
    /// No `Ready` with our nonce arrived in time.
    #[error("no ready message from the guest agent within {:.1}s", .0.as_secs_f64())]
    Timeout(Duration),
    /// The other side closed or reset the connection.
    #[error("the agent channel closed during the greeting")]
    Disconnected(#[source] io::Error),
    /// The agent speaks another protocol version; its `Ready` is attached.
    #[error("the guest agent speaks protocol v{}, this host v{PROTOCOL_VERSION}", .0.protocol_version)]
    VersionMismatch(Box<Ready>),
    /// Too many stale bytes, a failed socket option, or an unencodable greeting.
    #[error("protocol error during the greeting")]
    Protocol(#[source] ProtocolError),
}

/// Greets the agent and waits for its `Ready` with a fresh random nonce; returns it and the decoder,
/// which may already hold the first frames after it. At most `timeout`.
pub fn handshake(stream: &UnixStream, timeout: Duration) -> Result<(Ready, Decoder), GreetError> {
    let io_err = |e: io::Error| GreetError::Protocol(ProtocolError::Io(e));
    let deadline = Instant::now() + timeout;
    let nonce: u64 = rand::random();
    let hello = Request::Hello(Hello { nonce })
        .to_frame(0)
        .and_then(|f| with_sync(&f))
        .map_err(GreetError::Protocol)?;
    let mut dec = Decoder::hunting();
    // Decodes the stream from its first byte, to recognise an agent from before the Hello greeting
    // (it sends an unmarked Ready unasked, and never answers).
    let mut first = Some(Decoder::new());
    let mut received = 0u64;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut next_hello = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(GreetError::Timeout(timeout));
        }
        if now >= next_hello {
            let left = deadline - now;
            stream.set_write_timeout(Some(left)).map_err(io_err)?;
            match (&mut &*stream).write_all(&hello) {
                Ok(()) => {}
                // A partial greeting is garbage the agent skips; the next one will do.
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(GreetError::Disconnected(e)),
            }
            next_hello = now + HELLO_RESEND;
        }
        let wait = next_hello
            .min(deadline)
            .saturating_duration_since(Instant::now());
        stream
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .map_err(io_err)?;
        let n = match (&*stream).read(&mut buf) {
            Ok(0) => {
                return Err(GreetError::Disconnected(
                    io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            Ok(n) => n,
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(GreetError::Disconnected(e)),
        };
        received += n as u64;
        dec.push(&buf[..n]);
        if let Some(plain) = &mut first {
            plain.push(&buf[..n]);
            match plain.next_frame() {
                None => {}
                Some(Ok(f)) if f.frame_type == FrameType::Ready => {
                    if let Ok(r) = f.parse_json::<Ready>("ready") {
                        if r.nonce.is_none() && r.protocol_version != PROTOCOL_VERSION {
                            return Err(GreetError::VersionMismatch(Box::new(r)));
                        }
                    }
                    first = None;
                }
                Some(_) => first = None,
            }
        }
        while let Some(item) = dec.next_frame() {
            let ready = match item {
                Ok(f) if f.frame_type == FrameType::Ready => f.parse_json::<Ready>("ready").ok(),
                _ => None,
            };
            match ready {
                Some(r) if r.nonce == Some(nonce) => {
                    if r.protocol_version != PROTOCOL_VERSION {
                        return Err(GreetError::VersionMismatch(Box::new(r)));
                    }
                    return Ok((r, dec));
                }
                // Anything else before our Ready is stale: skip to the next marker.
                _ => dec.hunt(),
            }
        }
        if received > MAX_STALE_BYTES {
            return Err(GreetError::Protocol(ProtocolError::invalid(
                "agent greeting",
                format!("no Ready for our Hello within {MAX_STALE_BYTES} bytes"),
            )));
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
