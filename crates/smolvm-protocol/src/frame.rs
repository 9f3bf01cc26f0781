//! Framing: a 9-byte header (`u32 BE` body length, `u8` type, `u32 BE` request id), then the payload.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::limits::{HEADER_LEN, MAX_FRAME_LEN, MAX_PAYLOAD_LEN};

/// Kinds of frames. Values are fixed forever within a protocol version. The arrow says who sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Agent -> host, the answer to [`FrameType::Hello`] (request id 0), always right after
    /// [`crate::SYNC`]: JSON [`crate::Ready`].
    Ready = 1,
    /// Host -> agent: start a command, JSON [`crate::ExecStart`].
    Exec = 2,
    /// Host -> agent: raw stdin bytes of a command; an empty payload closes its stdin.
    Stdin = 3,
    /// Agent -> host: raw stdout bytes of a command.
    Stdout = 4,
    /// Agent -> host: raw stderr bytes of a command.
    Stderr = 5,
    /// Agent -> host: the command ended, JSON [`crate::ExitStatus`]; the last frame of an exec.
    Exit = 6,
    /// Host -> agent: abandon the request (kill a command's process group, drop a partial upload).
    Cancel = 7,
    /// Host -> agent: upload a file, JSON [`crate::FileWrite`], followed by exactly `size` bytes of
    /// [`FrameType::FileData`].
    FileWrite = 8,
    /// Host -> agent: download a file, JSON [`crate::FileRead`].
    FileRead = 9,
    /// Either way: raw file content.
    FileData = 10,
    /// Host -> agent: set persisted environment variables, JSON [`crate::EnvSet`].
    EnvSet = 11,
    /// Host -> agent: remove persisted environment variables, JSON [`crate::EnvUnset`].
    EnvUnset = 12,
    /// Host -> agent: list persisted environment variables (empty payload).
    EnvList = 13,
    /// Agent -> host: the persisted environment variables, JSON [`crate::EnvVars`].
    EnvVars = 14,
    /// Host -> agent: power the guest off (empty payload); answered with `Done` first.
    PowerOff = 15,
    /// Host -> agent: liveness check (empty payload); answered with `Done`.
    Ping = 16,
    /// Agent -> host: the request succeeded, JSON [`crate::Done`]; the last frame of a request.
    Done = 17,
    /// Agent -> host: the request failed, JSON [`crate::ErrorReply`]; the last frame of a request.
    Error = 18,
    /// Host -> agent, the first frame of every connection (request id 0), always right after
    /// [`crate::SYNC`]: JSON [`crate::Hello`].
    Hello = 19,
    /// Host -> agent: the guest's new identity after a restore from a snapshot, JSON
    /// [`crate::Identity`]; answered with `Done` or `Error`.
    Identity = 20,
}

impl FrameType {
    /// Every frame type, in value order.
    pub const ALL: [FrameType; 20] = [
        FrameType::Ready,
        FrameType::Exec,
        FrameType::Stdin,
        FrameType::Stdout,
        FrameType::Stderr,
        FrameType::Exit,
        FrameType::Cancel,
        FrameType::FileWrite,
        FrameType::FileRead,
        FrameType::FileData,
        FrameType::EnvSet,
        FrameType::EnvUnset,
        FrameType::EnvList,
        FrameType::EnvVars,
        FrameType::PowerOff,
        FrameType::Ping,
        FrameType::Done,
        FrameType::Error,
        FrameType::Hello,
        FrameType::Identity,
    ];

    /// Decodes the type byte.
    pub fn from_u8(b: u8) -> Option<FrameType> {
        FrameType::ALL.iter().copied().find(|t| *t as u8 == b)
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Frame type.
    pub frame_type: FrameType,
    /// Request id this frame belongs to (0 for connection-level frames).
    pub request_id: u32,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

/// Errors reading, writing or interpreting frames.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Underlying I/O failed (including EOF mid-frame).
    #[error("channel I/O failed")]
    Io(#[from] io::Error),
    /// The peer announced a frame larger than [`MAX_FRAME_LEN`] or shorter than its header. The stream
    /// cannot be resynchronised after this.
    #[error("frame length {0} outside 5..={MAX_FRAME_LEN}")]
    BadLength(u32),
    /// Unknown frame type byte. The frame's payload was consumed, so the stream stays in sync.
    #[error("unknown frame type {frame_type} (request {request_id})")]
    UnknownType {
        /// The type byte.
        frame_type: u8,
        /// The request id of the frame.
        request_id: u32,
    },
    /// A payload was too large to send.
    #[error("payload of {0} bytes exceeds the limit of {MAX_PAYLOAD_LEN}")]
    PayloadTooLarge(usize),
    /// A JSON payload did not parse.
    #[error("malformed {what} payload")]
    Json {
        /// Which message.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A frame arrived that this side never receives (e.g. `Stdout` sent to the agent).
    #[error("unexpected {frame_type:?} frame")]
    Unexpected {
        /// The frame's type.
        frame_type: FrameType,
    },
    /// A message parsed but breaks a rule (a limit, an empty argv, a NUL byte, ...).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which message or field.
        what: &'static str,
        /// The rule it broke.
        reason: String,
    },
}

impl ProtocolError {
    /// An [`ProtocolError::Invalid`].
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        ProtocolError::Invalid {
            what,
            reason: reason.into(),
        }
    }

    /// True if the byte stream is broken (I/O failure or a bad length), so the connection must be closed;
    /// false if only this one frame was bad.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ProtocolError::Io(_) | ProtocolError::BadLength(_))
    }
}

impl Frame {
    /// A frame with raw bytes (or an empty payload).
    pub fn new(frame_type: FrameType, request_id: u32, payload: Vec<u8>) -> Frame {
        Frame {
            frame_type,
            request_id,
            payload,
        }
    }

    /// A frame with a JSON payload.
    pub fn json<T: Serialize>(
        frame_type: FrameType,
        request_id: u32,
        value: &T,
    ) -> Result<Frame, ProtocolError> {
        let payload = serde_json::to_vec(value).map_err(|source| ProtocolError::Json {
            what: "outgoing",
            source,
        })?;
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(ProtocolError::PayloadTooLarge(payload.len()));
        }
        Ok(Frame::new(frame_type, request_id, payload))
    }

    /// Parses the JSON payload.
    pub fn parse_json<'a, T: Deserialize<'a>>(
        &'a self,
        what: &'static str,
    ) -> Result<T, ProtocolError> {
        serde_json::from_slice(&self.payload).map_err(|source| ProtocolError::Json { what, source })
    }

    /// Encodes the frame into bytes (header + payload).
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        if self.payload.len() > MAX_PAYLOAD_LEN {
            return Err(ProtocolError::PayloadTooLarge(self.payload.len()));
        }
        // Cannot truncate: the payload length was just checked against a limit below u32::MAX.
        let len = (5 + self.payload.len()) as u32;
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.push(self.frame_type as u8);
        out.extend_from_slice(&self.request_id.to_be_bytes());
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    /// Writes the frame with a single `write_all` (one frame never interleaves with another writer that
    /// holds the same lock).
    pub fn write_to<W: Write>(&self, w: &mut W) -> Result<(), ProtocolError> {
        w.write_all(&self.encode()?)?;
        w.flush()?;
        Ok(())
    }

    /// Reads one frame. Never allocates more than [`MAX_FRAME_LEN`] and never panics on hostile input.
    /// A frame of unknown type is consumed whole and reported as [`ProtocolError::UnknownType`], so the
    /// caller may answer it and read on.
    pub fn read_from<R: Read>(r: &mut R) -> Result<Frame, ProtocolError> {
        let mut header = [0u8; HEADER_LEN];
        r.read_exact(&mut header)?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        if !(5..=MAX_FRAME_LEN as u32).contains(&len) {
            return Err(ProtocolError::BadLength(len));
        }
        let request_id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
        let mut payload = vec![0u8; len as usize - 5];
        r.read_exact(&mut payload)?;
        let frame_type = FrameType::from_u8(header[4]).ok_or(ProtocolError::UnknownType {
            frame_type: header[4],
            request_id,
        })?;
        Ok(Frame::new(frame_type, request_id, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BootStage, Ready, PROTOCOL_VERSION};

    #[test]
    fn ready_round_trips() {
        let ready = Ready {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            nonce: Some(7),
            boot_stages: vec![BootStage {
                name: "init_start".into(),
                micros: 1234,
            }],
        };
        let f = Frame::json(FrameType::Ready, 0, &ready).unwrap();
        let bytes = f.encode().unwrap();
        let back = Frame::read_from(&mut &bytes[..]).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.parse_json::<Ready>("ready").unwrap(), ready);
    }

    #[test]
    fn frame_type_values_are_stable() {
        for (i, t) in FrameType::ALL.iter().enumerate() {
            assert_eq!(*t as u8 as usize, i + 1);
            assert_eq!(FrameType::from_u8(*t as u8), Some(*t));
        }
        assert_eq!(FrameType::from_u8(0), None);
        assert_eq!(FrameType::from_u8(21), None);
    }

    /// Counts the bytes this thread allocates (the test binary's allocator), so a test can prove that a
    /// call allocated nothing.
    struct CountingAlloc;

    thread_local! {
        static ALLOCATED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    // SAFETY: forwards to the system allocator; the counter is a const-initialised thread-local
    // without destructor, so touching it never allocates or recurses.
    unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            let _ = ALLOCATED.try_with(|a| a.set(a.get() + layout.size()));
            // SAFETY: same contract as ours.
            unsafe { std::alloc::System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            // SAFETY: same contract as ours.
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: CountingAlloc = CountingAlloc;

    fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let before = ALLOCATED.with(|a| a.get());
        let r = f();
        (r, ALLOCATED.with(|a| a.get()) - before)
    }

    #[test]
    fn hostile_lengths_are_refused_without_allocation() {
        // The counter works: a frame within limits allocates its payload.
        let ok = Frame::new(FrameType::Ping, 1, vec![7; 1000])
            .encode()
            .unwrap();
        let (f, bytes) = allocated_by(|| Frame::read_from(&mut &ok[..]));
        assert!(f.is_ok() && bytes >= 1000, "{bytes}");
        for len in [0u32, 4, MAX_FRAME_LEN as u32 + 1, u32::MAX] {
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[1, 0, 0, 0, 0]);
            let (r, allocated) = allocated_by(|| Frame::read_from(&mut &bytes[..]));
            assert!(
                matches!(r, Err(ProtocolError::BadLength(l)) if l == len),
                "{len}: {r:?}"
            );
            assert_eq!(allocated, 0, "length {len} allocated before it was refused");
        }
        // Truncated payload is an I/O error, not a panic.
        let bytes = [0, 0, 0, 9, 1, 0, 0, 0, 0, 1];
        assert!(matches!(
            Frame::read_from(&mut &bytes[..]),
            Err(ProtocolError::Io(_))
        ));
    }

    #[test]
    fn unknown_type_consumes_its_payload() {
        let mut bytes = vec![0, 0, 0, 7, 200, 0, 0, 0, 42, 0xaa, 0xbb];
        bytes.extend(Frame::new(FrameType::Ping, 3, vec![]).encode().unwrap());
        let mut r = &bytes[..];
        assert!(matches!(
            Frame::read_from(&mut r),
            Err(ProtocolError::UnknownType {
                frame_type: 200,
                request_id: 42
            })
        ));
        let next = Frame::read_from(&mut r).unwrap();
        assert_eq!(next.frame_type, FrameType::Ping);
        assert_eq!(next.request_id, 3);
    }

    #[test]
    fn oversized_payload_is_refused_on_encode() {
        let f = Frame::new(FrameType::Stdout, 1, vec![0; MAX_PAYLOAD_LEN + 1]);
        assert!(matches!(f.encode(), Err(ProtocolError::PayloadTooLarge(_))));
        let f = Frame::new(FrameType::Stdout, 1, vec![0; MAX_PAYLOAD_LEN]);
        assert_eq!(f.encode().unwrap().len(), MAX_FRAME_LEN + 4);
    }
}
