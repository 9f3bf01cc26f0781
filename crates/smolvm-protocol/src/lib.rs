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
//! # Greeting and resynchronisation
//! A connection starts with the host's [`FrameType::Hello`] (JSON [`Hello`] with a random nonce,
//! request id 0); the agent answers with [`FrameType::Ready`] (JSON [`Ready`] echoing the nonce, with its
//! versions and boot stage timestamps). Each of the two frames is written immediately after the 16-byte
//! marker [`SYNC`], in the same write. The agent never sends `Ready` unasked.
//!
//! Why: under QEMU the channel is a virtio-serial port that outlives host connections. Output the agent
//! wrote for an earlier host (even half a frame) reaches the next host first, and bytes a dying host left
//! half-written reach the agent before the next host's. So the host discards everything up to a
//! [`SYNC`] followed by a `Ready` with *its* nonce (bounded in time and bytes), and the agent, whenever
//! its input stops making sense (or a half frame was cut off by a host leaving), discards input up to
//! the next [`SYNC`]. The host re-sends `Hello` (same nonce) every few hundred milliseconds until its
//! `Ready` arrives, in case the agent missed it; the agent answers a repeated nonce only once. A `Hello`
//! with a new nonce means a new host: the agent cancels every request still in flight (their replies
//! are dropped, never sent to the new host) and answers with `Ready`. [`Decoder`] implements the
//! scanning for both sides.
//!
//! ```text
//! host:  SYNC Hello{nonce}  [SYNC Hello{nonce} ...]
//! agent: [stale bytes] SYNC Ready{nonce}
//! ```
//!
//! # Conversation
//! After `Ready` the host starts requests, each under a request id it picks (non-zero, unique among its
//! requests in flight), so that many requests share one connection concurrently:
//!
//! ```text
//! exec:       Exec -> [Stdin.. (empty = EOF)]      <- Stdout/Stderr..  <- Exit | Error
//! file write: FileWrite -> FileData.. (size bytes)                    <- Done{bytes} | Error
//! file read:  FileRead                             <- FileData..      <- Done{bytes,mode} | Error
//! env:        EnvSet | EnvUnset                                       <- Done | Error
//!             EnvList                                                 <- EnvVars.. Done | Error
//! misc:       Ping | PowerOff                                         <- Done
//! identity:   Identity (after a restore from a snapshot)              <- Done | Error
//! any:        Cancel (the agent kills the command / drops the upload and answers Error{cancelled})
//! ```
//!
//! Every size limit is a constant in [`limits`], checked at compile time against its neighbours; a frame
//! over [`MAX_FRAME_LEN`] is refused by the decoder before any allocation, and decoding never panics.

pub mod base64;
pub mod boot;
pub mod channel;
pub mod fuzzing;
pub mod limits;
pub mod shell;

mod frame;
mod identity;
mod messages;
mod request;
mod sync;

pub use boot::{BootParams, PowerMode};
pub use channel::{AGENT_PORT_NAME, AGENT_VSOCK_PORT};
pub use frame::{Frame, FrameType, ProtocolError};
pub use identity::{
    parse_mac, Identity, NetIdentity, DROPBEAR_HOST_KEY_PATH, MAX_HOST_KEY_LEN,
    MAX_IDENTITY_ENTROPY, MIN_IDENTITY_ENTROPY,
};
pub use limits::{HEADER_LEN, MAX_FRAME_LEN, MAX_PAYLOAD_LEN};
pub use messages::{
    env_batches, is_env_key, BootStage, Command, Done, EnvSet, EnvUnset, EnvVars, ErrorKind,
    ErrorReply, ExecStart, ExitStatus, FileRead, FileWrite, Hello, Ready,
};
pub use request::{Reply, Request};
pub use sync::{with_sync, Decoder, SYNC};

/// Version of the wire protocol; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 2;
