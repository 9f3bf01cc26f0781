//! Host <-> guest wire protocol of smolvm, shared by the host library and the guest agent.
//!
//! # Framing
//! Every message is one frame: a 9-byte header, then the payload.
//!
//! ```text
//! u32 BE  length of (type + request_id + payload) = 5 + payload length
//! u8      frame type (FrameType)
//! u32 BE  request id (0 for connection-level frames such as Ready)
//! ...     payload: JSON for control frames, raw bytes for data chunks
//! ```
//!
//! The first frame the agent sends on a fresh channel is [`FrameType::Ready`] with a JSON [`Ready`].
//! Size limits are constants checked at compile time; a frame over [`MAX_FRAME_LEN`] is refused by the
//! decoder before any allocation.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Version of the wire protocol; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Bytes of the frame header (length + type + request id).
pub const HEADER_LEN: usize = 9;
/// Largest accepted frame body (type + request id + payload), in bytes.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Largest payload of one frame.
pub const MAX_PAYLOAD_LEN: usize = MAX_FRAME_LEN - 5;

const _: () = assert!(MAX_FRAME_LEN <= u32::MAX as usize);
const _: () = assert!(
    MAX_PAYLOAD_LEN > 64 * 1024,
    "payload must fit a 64 KiB data chunk"
);

/// Kinds of frames. Values are fixed forever within a protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Agent -> host, first frame on a channel: JSON [`Ready`].
    Ready = 1,
}

impl FrameType {
    /// Decodes the type byte.
    pub fn from_u8(b: u8) -> Option<FrameType> {
        match b {
            1 => Some(FrameType::Ready),
            _ => None,
        }
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

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Underlying I/O failed (including EOF mid-frame).
    #[error("channel I/O failed")]
    Io(#[from] io::Error),
    /// The peer announced a frame larger than [`MAX_FRAME_LEN`] or shorter than its header.
    #[error("frame length {0} outside 5..={MAX_FRAME_LEN}")]
    BadLength(u32),
    /// Unknown frame type byte.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
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
}

impl Frame {
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
        Ok(Frame {
            frame_type,
            request_id,
            payload,
        })
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
    pub fn read_from<R: Read>(r: &mut R) -> Result<Frame, ProtocolError> {
        let mut header = [0u8; HEADER_LEN];
        r.read_exact(&mut header)?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        if !(5..=MAX_FRAME_LEN as u32).contains(&len) {
            return Err(ProtocolError::BadLength(len));
        }
        let frame_type =
            FrameType::from_u8(header[4]).ok_or(ProtocolError::UnknownType(header[4]))?;
        let request_id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
        let mut payload = vec![0u8; len as usize - 5];
        r.read_exact(&mut payload)?;
        Ok(Frame {
            frame_type,
            request_id,
            payload,
        })
    }
}

/// The agent's first message: who it is and how long boot took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// The agent's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The agent's crate version.
    pub agent_version: String,
    /// Boot stages with their time since kernel start (CLOCK_BOOTTIME) in microseconds, in order.
    pub boot_stages: Vec<BootStage>,
}

/// One boot-stage timestamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootStage {
    /// Stage name, e.g. `init_start`, `mounts_done`, `network_up`, `sshd_started`.
    pub name: String,
    /// Microseconds since kernel start (CLOCK_BOOTTIME).
    pub micros: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_round_trips() {
        let ready = Ready {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
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
    fn hostile_lengths_are_refused_without_allocation() {
        for len in [0u32, 4, MAX_FRAME_LEN as u32 + 1, u32::MAX] {
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[1, 0, 0, 0, 0]);
            assert!(matches!(
                Frame::read_from(&mut &bytes[..]),
                Err(ProtocolError::BadLength(l)) if l == len
            ));
        }
        let bytes = [0, 0, 0, 5, 200, 0, 0, 0, 0];
        assert!(matches!(
            Frame::read_from(&mut &bytes[..]),
            Err(ProtocolError::UnknownType(200))
        ));
        // Truncated payload is an I/O error, not a panic.
        let bytes = [0, 0, 0, 9, 1, 0, 0, 0, 0, 1];
        assert!(matches!(
            Frame::read_from(&mut &bytes[..]),
            Err(ProtocolError::Io(_))
        ));
    }
}
