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
//! # Conversation
//! The first frame the agent sends on a fresh channel is [`FrameType::Ready`] with a JSON [`Ready`].
//! Then the host starts requests, each under a request id it picks (non-zero, unique among its requests
//! in flight), so that many requests share one connection concurrently:
//!
//! ```text
//! exec:       Exec -> [Stdin.. (empty = EOF)]      <- Stdout/Stderr..  <- Exit | Error
//! file write: FileWrite -> FileData.. (size bytes)                    <- Done{bytes} | Error
//! file read:  FileRead                             <- FileData..      <- Done{bytes,mode} | Error
//! env:        EnvSet | EnvUnset                                       <- Done | Error
//!             EnvList                                                 <- EnvVars.. Done | Error
//! misc:       Ping | PowerOff                                         <- Done
//! any:        Cancel (the agent kills the command / drops the upload and answers Error{cancelled})
//! ```
//!
//! Every size limit is a constant in [`limits`], checked at compile time against its neighbours; a frame
//! over [`MAX_FRAME_LEN`] is refused by the decoder before any allocation, and decoding never panics.

pub mod fuzzing;
pub mod limits;
pub mod shell;

mod frame;
mod messages;
mod request;

pub use frame::{Frame, FrameType, ProtocolError};
pub use limits::{HEADER_LEN, MAX_FRAME_LEN, MAX_PAYLOAD_LEN};
pub use messages::{
    env_batches, is_env_key, BootStage, Command, Done, EnvSet, EnvUnset, EnvVars, ErrorKind,
    ErrorReply, ExecStart, ExitStatus, FileRead, FileWrite, Ready,
};
pub use request::{Reply, Request};

/// Version of the wire protocol; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;
