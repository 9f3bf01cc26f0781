//! The greeting: `SYNC` + `Hello{nonce}` out (repeated until answered), then everything skipped up to
//! `SYNC` + the `Ready` carrying our nonce. See [`smolvm_protocol`]'s "Greeting and resynchronisation".

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smolvm_protocol::{
    with_sync, Decoder, FrameType, Hello, ProtocolError, Ready, Request, PROTOCOL_VERSION,
};

use super::client::{timeout_error, READ_CHUNK};
use super::ExecError;

/// The greeting is re-sent this often until the agent answers it (it may have missed it: not listening
/// yet, or busy skipping a half frame an earlier host left behind). The agent answers a nonce once.
pub(crate) const HELLO_RESEND: Duration = Duration::from_millis(250);
/// Most bytes read while waiting for our `Ready` (replies the agent wrote for earlier hosts come first).
pub(crate) const MAX_STALE_BYTES: u64 = 64 * 1024 * 1024;

/// Greets the agent and waits for its `Ready` with our nonce; returns it and the decoder, which may
/// already hold the first frames after it.
pub(super) fn handshake(
    stream: &UnixStream,
    timeout: Duration,
) -> Result<(Ready, Decoder), ExecError> {
    let io_err = |e: io::Error| ExecError::Protocol(ProtocolError::Io(e));
    let timed_out = || timeout_error("waiting for the guest agent's ready message", timeout);
    let deadline = Instant::now() + timeout;
    let nonce: u64 = rand::random();
    let hello = Request::Hello(Hello { nonce })
        .to_frame(0)
        .and_then(|f| with_sync(&f))
        .map_err(ExecError::InvalidRequest)?;
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
            return Err(timed_out());
        }
        if now >= next_hello {
            let left = deadline - now;
            stream.set_write_timeout(Some(left)).map_err(io_err)?;
            match (&mut &*stream).write_all(&hello) {
                Ok(()) => {}
                // A partial greeting is garbage the agent skips; the next one will do.
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(ExecError::disconnected(Some(Arc::new(ProtocolError::Io(
                        e,
                    )))))
                }
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
                let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
                return Err(ExecError::disconnected(Some(Arc::new(ProtocolError::Io(
                    eof,
                )))));
            }
            Ok(n) => n,
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ExecError::disconnected(Some(Arc::new(ProtocolError::Io(
                    e,
                )))))
            }
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
                            return Err(version_mismatch(r));
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
                        return Err(version_mismatch(r));
                    }
                    return Ok((r, dec));
                }
                // Anything else before our Ready is stale: skip to the next marker.
                _ => dec.hunt(),
            }
        }
        if received > MAX_STALE_BYTES {
            return Err(ExecError::Protocol(ProtocolError::invalid(
                "agent greeting",
                format!("no Ready for our Hello within {MAX_STALE_BYTES} bytes"),
            )));
        }
    }
}

fn version_mismatch(r: Ready) -> ExecError {
    ExecError::VersionMismatch {
        agent: r.protocol_version,
        host: PROTOCOL_VERSION,
        agent_version: r.agent_version,
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
