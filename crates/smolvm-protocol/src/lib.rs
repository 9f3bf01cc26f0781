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
//! The host opens with [`FrameType::Hello`] under a non-zero id of its choosing; the agent answers with
//! [`FrameType::Ready`] (a JSON [`Ready`]) under that same id, and the host takes only that one as its
//! greeting. (The agent also sends a Ready under id 0 whenever it starts serving a channel; a host reads
//! past it, checking only its version. Over virtio-serial, one host can leave and the next arrive
//! faster than the guest notices, so only the echoed id tells a host its greeting is its own; a Hello
//! also makes the agent cancel whatever an earlier host on the channel left running.)
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
pub const PROTOCOL_VERSION: u32 = 2;
