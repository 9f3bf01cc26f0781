//! The JSON messages carried by control frames, with the rules each must follow. `validate` is called by
//! [`crate::Request::from_frame`] on the agent and by the host before sending, so both sides refuse the
//! same things with the same words.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::frame::ProtocolError;
use crate::limits::{
    MAX_ENV_KEY_LEN, MAX_ENV_VALUE_LEN, MAX_ENV_VARS, MAX_EXEC_ENV_VARS, MAX_FILE_LEN,
    MAX_PATH_LEN, MAX_PAYLOAD_LEN,
};

/// Host -> agent: the first message of a connection. The host sends it again (same nonce) until it
/// gets the matching [`Ready`]; the agent treats repeats as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// A random number the agent echoes in its [`Ready`], so the host can tell its own greeting's answer
    /// from a stale one meant for an earlier host.
    pub nonce: u64,
}

/// Agent -> host, the answer to [`Hello`]: who the agent is and how long boot took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// The agent's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The agent's crate version.
    pub agent_version: String,
    /// The nonce of the [`Hello`] this answers (`None` from agents that predate `Hello`).
    #[serde(default)]
    pub nonce: Option<u64>,
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

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Run this program directly (looked up in `PATH`) with these arguments; `argv[0]` is the program.
    Argv(Vec<String>),
    /// Run `/bin/sh -lc <string>`: a login shell, so `/etc/profile` and `/etc/profile.d/*.sh` (with the
    /// persisted environment variables) apply, as for a command run over SSH by the spec.
    Shell(String),
}

/// Host -> agent: start a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStart {
    /// What to run.
    pub command: Command,
    /// Extra environment for this command, applied over the agent's environment and the persisted
    /// variables. (A login shell's profile runs after this and may override keys it sets itself.)
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; the agent's (`/`) if absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Kill the command's whole process group after this many milliseconds; no limit if absent.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// True if `Stdin` frames follow (ended by an empty one); otherwise stdin is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Terminating signal, if it was killed.
    pub signal: Option<i32>,
    /// True if the agent killed it because its timeout passed.
    #[serde(default)]
    pub timed_out: bool,
}

impl ExitStatus {
    /// The shell convention as one number: the exit code, or 128 + the signal number.
    pub fn exit_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128_i32.saturating_add(s),
            (None, None) => -1,
        }
    }
}

/// Host -> agent: write a file. Exactly `size` bytes of `FileData` follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileWrite {
    /// Absolute guest path.
    pub path: String,
    /// Permission bits (e.g. 0o644); only the low 12 bits are used.
    pub mode: u32,
    /// Exact number of content bytes that follow.
    pub size: u64,
    /// Create missing parent directories (mode 0755).
    #[serde(default)]
    pub create_parents: bool,
}

/// Host -> agent: read a regular file. The agent answers with `FileData` frames, then `Done` with the
/// byte count and mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRead {
    /// Absolute guest path.
    pub path: String,
}

/// Host -> agent: set (add or replace) persisted environment variables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvSet {
    /// Variables to set.
    pub vars: BTreeMap<String, String>,
}

/// Host -> agent: remove persisted environment variables (absent keys are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvUnset {
    /// Keys to remove.
    pub keys: Vec<String>,
}

/// Agent -> host: persisted environment variables. The answer to `EnvList` is one or more of these
/// (each within the frame limit), then `Done`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVars {
    /// The variables.
    pub vars: BTreeMap<String, String>,
}

/// Agent -> host: a request finished successfully.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// Bytes transferred (file requests).
    #[serde(default)]
    pub bytes: Option<u64>,
    /// The file's permission bits (file reads).
    #[serde(default)]
    pub mode: Option<u32>,
}

/// What went wrong in the agent, coarsely, so the host can map it to an error kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request was malformed or broke a rule.
    BadRequest,
    /// A file, directory or program does not exist.
    NotFound,
    /// The agent may not do this.
    PermissionDenied,
    /// A size or count limit was exceeded.
    LimitExceeded,
    /// The command could not be started.
    SpawnFailed,
    /// Too many requests in flight, or the request id is in use.
    Busy,
    /// The request was cancelled by the host.
    Cancelled,
    /// Any other I/O failure in the guest.
    Io,
    /// An error kind this side does not know (sent by a newer peer).
    #[serde(other)]
    Other,
}

/// Agent -> host: a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// Human-readable detail (the guest's OS error text, the rule broken, ...).
    pub message: String,
}

impl ErrorReply {
    /// An error reply.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorReply {
            kind,
            message: message.into(),
        }
    }
}

/// True if `key` may be a persisted variable: a shell identifier (`^[A-Za-z_][A-Za-z0-9_]*$`) of at most
/// [`MAX_ENV_KEY_LEN`] bytes, as the spec's `env_vars` rule says.
pub fn is_env_key(key: &str) -> bool {
    let mut bytes = key.bytes();
    key.len() <= MAX_ENV_KEY_LEN
        && matches!(bytes.next(), Some(b) if b == b'_' || b.is_ascii_alphabetic())
        && bytes.all(|b| b == b'_' || b.is_ascii_alphanumeric())
}

fn no_nul(what: &'static str, s: &str) -> Result<(), ProtocolError> {
    if s.as_bytes().contains(&0) {
        return Err(ProtocolError::invalid(what, "contains a NUL byte"));
    }
    Ok(())
}

fn check_path(what: &'static str, path: &str) -> Result<(), ProtocolError> {
    no_nul(what, path)?;
    if !path.starts_with('/') {
        return Err(ProtocolError::invalid(
            what,
            format!("{path:?} is not absolute"),
        ));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(ProtocolError::invalid(
            what,
            format!("{} bytes exceeds {MAX_PATH_LEN}", path.len()),
        ));
    }
    Ok(())
}

fn check_env_value(key: &str, value: &str) -> Result<(), ProtocolError> {
    no_nul("environment value", value)?;
    if value.len() > MAX_ENV_VALUE_LEN {
        return Err(ProtocolError::invalid(
            "environment value",
            format!("{key}: {} bytes exceeds {MAX_ENV_VALUE_LEN}", value.len()),
        ));
    }
    Ok(())
}

impl ExecStart {
    /// Checks argv, env, cwd against the protocol's rules.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match &self.command {
            Command::Argv(argv) => {
                if !matches!(argv.first(), Some(a) if !a.is_empty()) {
                    return Err(ProtocolError::invalid("argv", "empty program name"));
                }
                for a in argv {
                    no_nul("argv", a)?;
                }
            }
            Command::Shell(cmd) => no_nul("shell command", cmd)?,
        }
        if self.env.len() > MAX_EXEC_ENV_VARS {
            return Err(ProtocolError::invalid(
                "env",
                format!("{} variables exceed {MAX_EXEC_ENV_VARS}", self.env.len()),
            ));
        }
        for (k, v) in &self.env {
            // Any name the kernel accepts: not empty, no '=' and no NUL.
            if k.is_empty() || k.contains('=') || k.len() > MAX_ENV_KEY_LEN {
                return Err(ProtocolError::invalid(
                    "environment key",
                    format!("{k:?} is empty, holds '=' or is too long"),
                ));
            }
            no_nul("environment key", k)?;
            check_env_value(k, v)?;
        }
        if let Some(cwd) = &self.cwd {
            check_path("cwd", cwd)?;
        }
        Ok(())
    }
}

impl FileWrite {
    /// Checks the path, size and mode.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_path("path", &self.path)?;
        if self.size > MAX_FILE_LEN {
            return Err(ProtocolError::invalid(
                "size",
                format!("{} bytes exceeds {MAX_FILE_LEN}", self.size),
            ));
        }
        if self.mode > 0o7777 {
            return Err(ProtocolError::invalid(
                "mode",
                format!("{:o} is not a permission mode", self.mode),
            ));
        }
        Ok(())
    }
}

impl FileRead {
    /// Checks the path.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_path("path", &self.path)
    }
}

impl EnvSet {
    /// Checks keys (shell identifiers), values and counts.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if self.vars.len() > MAX_ENV_VARS {
            return Err(ProtocolError::invalid(
                "env",
                format!("{} variables exceed {MAX_ENV_VARS}", self.vars.len()),
            ));
        }
        for (k, v) in &self.vars {
            if !is_env_key(k) {
                return Err(ProtocolError::invalid(
                    "environment key",
                    format!("{k:?} is not a shell identifier (^[A-Za-z_][A-Za-z0-9_]*$)"),
                ));
            }
            check_env_value(k, v)?;
        }
        Ok(())
    }
}

impl EnvUnset {
    /// Checks keys (shell identifiers) and counts.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if self.keys.len() > MAX_ENV_VARS {
            return Err(ProtocolError::invalid(
                "env",
                format!("{} keys exceed {MAX_ENV_VARS}", self.keys.len()),
            ));
        }
        match self.keys.iter().find(|k| !is_env_key(k)) {
            Some(k) => Err(ProtocolError::invalid(
                "environment key",
                format!("{k:?} is not a shell identifier"),
            )),
            None => Ok(()),
        }
    }
}

/// Splits `vars` into batches whose JSON (`{"vars":{...}}`) stays within [`MAX_PAYLOAD_LEN`], for
/// `EnvSet` and `EnvVars` frames. Always at least one (possibly empty) batch.
pub fn env_batches(vars: &BTreeMap<String, String>) -> Vec<BTreeMap<String, String>> {
    // Room for the envelope `{"vars":{}}` with margin.
    let budget = MAX_PAYLOAD_LEN - 64;
    let mut batches = Vec::new();
    let mut batch = BTreeMap::new();
    let mut size = 0;
    for (k, v) in vars {
        // Quoted key, colon, quoted value, comma.
        let entry = serde_json::to_string(k).map_or(usize::MAX / 4, |s| s.len())
            + serde_json::to_string(v).map_or(usize::MAX / 4, |s| s.len())
            + 2;
        if size + entry > budget && !batch.is_empty() {
            batches.push(std::mem::take(&mut batch));
            size = 0;
        }
        size += entry;
        batch.insert(k.clone(), v.clone());
    }
    if !batch.is_empty() || batches.is_empty() {
        batches.push(batch);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_keys_follow_the_spec() {
        for ok in ["A", "_", "_a1", "PATH", "abc_DEF_123"] {
            assert!(is_env_key(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "A=B", "é", "A\0"] {
            assert!(!is_env_key(bad), "{bad:?}");
        }
        assert!(!is_env_key(&"A".repeat(MAX_ENV_KEY_LEN + 1)));
    }

    #[test]
    fn exit_code_maps_signals() {
        let s = |code, signal| ExitStatus {
            code,
            signal,
            timed_out: false,
        };
        assert_eq!(s(Some(3), None).exit_code(), 3);
        assert_eq!(s(None, Some(9)).exit_code(), 137);
        assert_eq!(s(None, None).exit_code(), -1);
    }

    #[test]
    fn exec_validation() {
        let mut e = ExecStart {
            command: Command::Argv(vec![]),
            env: BTreeMap::new(),
            cwd: None,
            timeout_ms: None,
            stdin: false,
        };
        assert!(e.validate().is_err());
        e.command = Command::Argv(vec!["true".into()]);
        assert!(e.validate().is_ok());
        e.cwd = Some("relative".into());
        assert!(e.validate().is_err());
        e.cwd = Some("/tmp".into());
        e.env.insert("A=B".into(), "x".into());
        assert!(e.validate().is_err());
        e.env.clear();
        e.env.insert("A".into(), "x\0y".into());
        assert!(e.validate().is_err());
        e.env.clear();
        e.command = Command::Shell("echo \0".into());
        assert!(e.validate().is_err());
    }

    #[test]
    fn env_batches_fit_frames() {
        let vars: BTreeMap<String, String> = (0..40)
            .map(|i| (format!("K{i}"), "\u{1}".repeat(MAX_ENV_VALUE_LEN)))
            .collect();
        let batches = env_batches(&vars);
        assert!(batches.len() > 1);
        let mut merged = BTreeMap::new();
        for b in &batches {
            let f = crate::Frame::json(crate::FrameType::EnvSet, 1, &EnvSet { vars: b.clone() });
            assert!(f.is_ok());
            merged.extend(b.clone());
        }
        assert_eq!(merged, vars);
        assert_eq!(env_batches(&BTreeMap::new()).len(), 1);
    }

    #[test]
    fn unknown_error_kind_parses_as_other() {
        let r: ErrorReply = serde_json::from_str(r#"{"kind":"brand_new","message":"m"}"#).unwrap();
        assert_eq!(r.kind, ErrorKind::Other);
    }
}
