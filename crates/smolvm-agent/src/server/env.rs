//! Persisted environment variables. The JSON copy is the source of truth (so `list` is exact); the
//! profile script is generated from it with [`smolvm_protocol::shell::export_line`], so every value is
//! one single-quoted word that round-trips byte for byte and never executes. Both files are replaced
//! atomically (temp file + rename), under one lock so concurrent updates do not lose each other.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use smolvm_protocol::limits::MAX_ENV_VARS;
use smolvm_protocol::shell::export_line;
use smolvm_protocol::{ErrorKind, ErrorReply};

use super::Config;

/// Serialises read-modify-write of the env files across connections and threads.
static ENV_LOCK: Mutex<()> = Mutex::new(());

/// Maps an I/O failure on `path` to an error reply.
pub(crate) fn io_error(action: &str, path: &Path, e: &io::Error) -> ErrorReply {
    let kind = match e.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        _ => ErrorKind::Io,
    };
    ErrorReply::new(kind, format!("{action} {}: {e}", path.display()))
}

/// The persisted variables (empty if none were ever set).
pub(crate) fn load(config: &Config) -> Result<BTreeMap<String, String>, ErrorReply> {
    let path = &config.env_json_path;
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| ErrorReply::new(ErrorKind::Io, format!("parse {}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(io_error("read", path, &e)),
    }
}

/// Adds or replaces `vars` (already validated by the protocol parser).
pub(crate) fn set(config: &Config, vars: BTreeMap<String, String>) -> Result<(), ErrorReply> {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut all = load(config)?;
    all.extend(vars);
    if all.len() > MAX_ENV_VARS {
        return Err(ErrorReply::new(
            ErrorKind::LimitExceeded,
            format!("{} variables would exceed {MAX_ENV_VARS}", all.len()),
        ));
    }
    store(config, &all)
}

/// Removes `keys`; absent ones are ignored.
pub(crate) fn unset(config: &Config, keys: &[String]) -> Result<(), ErrorReply> {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut all = load(config)?;
    for k in keys {
        all.remove(k);
    }
    store(config, &all)
}

/// The profile script for `vars`.
pub(crate) fn profile_script(vars: &BTreeMap<String, String>) -> Result<Vec<u8>, ErrorReply> {
    let mut text =
        b"# Written by smolvm-agent from /etc/smolvm/env.json; changes here are lost.\n".to_vec();
    for (k, v) in vars {
        let line = export_line(k, v.as_bytes())
            .map_err(|e| ErrorReply::new(ErrorKind::BadRequest, format!("{k}: {e}")))?;
        text.extend(line);
    }
    Ok(text)
}

fn store(config: &Config, vars: &BTreeMap<String, String>) -> Result<(), ErrorReply> {
    let json = serde_json::to_vec_pretty(vars)
        .map_err(|e| ErrorReply::new(ErrorKind::Io, format!("encode env: {e}")))?;
    // JSON first: it is the truth, and the profile is regenerated from it by the next update.
    write_atomic(&config.env_json_path, &json, 0o600)?;
    write_atomic(&config.profile_path, &profile_script(vars)?, 0o644)
}

/// Writes `content` to a temp file beside `path`, then renames it over `path`: readers see the old or the
/// new file, never a half-written one.
pub(crate) fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), ErrorReply> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(|e| io_error("create directory", dir, &e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_error("write", path, &e)
    })
}
