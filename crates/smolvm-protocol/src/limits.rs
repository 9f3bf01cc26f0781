//! Every size limit of the protocol, in one place. Related limits are checked against each other at
//! compile time, so a change that would make a legal message unencodable does not build.

/// Bytes of the frame header (length + type + request id).
pub const HEADER_LEN: usize = 9;
/// Largest accepted frame body (type + request id + payload), in bytes.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Largest payload of one frame.
pub const MAX_PAYLOAD_LEN: usize = MAX_FRAME_LEN - 5;

/// Largest chunk of command output (stdout or stderr) the agent puts into one frame.
pub const OUTPUT_CHUNK_LEN: usize = 64 * 1024;
/// Largest chunk of command stdin the host puts into one frame.
pub const STDIN_CHUNK_LEN: usize = 64 * 1024;
/// Largest chunk of file content in one frame (both directions).
pub const FILE_CHUNK_LEN: usize = 256 * 1024;

/// Most stdin bytes one command may be sent; the agent buffers stdin for a command that does not read
/// it yet, so this bounds the agent's memory per request.
pub const MAX_STDIN_LEN: usize = 64 * 1024 * 1024;
/// Most output bytes (stdout + stderr) the host keeps in one `CommandResult`; streaming has no limit.
pub const MAX_OUTPUT_LEN: usize = 64 * 1024 * 1024;
/// Largest file that can be uploaded or downloaded.
pub const MAX_FILE_LEN: u64 = 16 * 1024 * 1024 * 1024;

/// Longest path (guest file or working directory), in bytes; Linux' PATH_MAX.
pub const MAX_PATH_LEN: usize = 4096;
/// Most persisted environment variables.
pub const MAX_ENV_VARS: usize = 1024;
/// Longest environment variable name, in bytes.
pub const MAX_ENV_KEY_LEN: usize = 256;
/// Longest environment variable value, in bytes (Linux' MAX_ARG_STRLEN: one `KEY=value` string passed to
/// exec must stay below 128 KiB).
pub const MAX_ENV_VALUE_LEN: usize = 128 * 1024 - MAX_ENV_KEY_LEN - 2;
/// Most environment variables in one exec request.
pub const MAX_EXEC_ENV_VARS: usize = 1024;
/// Most requests one connection may have in flight at once.
pub const MAX_IN_FLIGHT: usize = 256;

/// JSON escapes a byte as at most 6 bytes (`\u001f`).
const JSON_WORST_EXPANSION: usize = 6;
/// Room for the JSON structure around one escaped string.
const JSON_OVERHEAD: usize = 1024;

const _: () = assert!(MAX_FRAME_LEN <= u32::MAX as usize);
const _: () = assert!(MAX_PAYLOAD_LEN + 5 == MAX_FRAME_LEN);
const _: () = assert!(OUTPUT_CHUNK_LEN <= MAX_PAYLOAD_LEN);
const _: () = assert!(STDIN_CHUNK_LEN <= MAX_PAYLOAD_LEN);
const _: () = assert!(FILE_CHUNK_LEN <= MAX_PAYLOAD_LEN);
const _: () = assert!(STDIN_CHUNK_LEN <= MAX_STDIN_LEN);
const _: () = assert!(
    MAX_OUTPUT_LEN >= 10 * 1024 * 1024,
    "a CommandResult must hold 10 MiB of output"
);
// One env var, fully escaped, always fits one EnvSet frame; so does one path in a file request.
const _: () = assert!(
    (MAX_ENV_KEY_LEN + MAX_ENV_VALUE_LEN) * JSON_WORST_EXPANSION + JSON_OVERHEAD <= MAX_PAYLOAD_LEN
);
const _: () = assert!(MAX_PATH_LEN * JSON_WORST_EXPANSION + JSON_OVERHEAD <= MAX_PAYLOAD_LEN);
const _: () = assert!(MAX_ENV_KEY_LEN + 1 + MAX_ENV_VALUE_LEN < 128 * 1024);
const _: () = assert!(MAX_IN_FLIGHT >= 16, "16 concurrent execs per connection");
