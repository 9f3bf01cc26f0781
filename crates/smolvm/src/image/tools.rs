//! Host tools the builder runs (always with argv vectors, never through a shell).

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::error::ImageError;

/// Directories searched after `$PATH`: a non-root user's PATH often lacks the sbin directories that hold
/// `mkfs.ext4` and `debugfs`.
const EXTRA_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// A path as a C string (fails on interior NUL bytes).
pub(super) fn cpath(p: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte")
    })
}

/// Finds `tool` in `$PATH` or the sbin directories.
pub(super) fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds a required tool or says which package provides it.
pub(super) fn require(tool: &'static str, package: &'static str) -> Result<PathBuf, ImageError> {
    which(tool).ok_or(ImageError::ToolMissing {
        tool,
        package,
        hint: "",
    })
}

/// Runs a command to completion, capturing its output; a non-zero exit becomes
/// [`ImageError::Command`] with the tail of stderr (and a hint when the disk is full).
pub(super) fn run(cmd: &mut Command) -> Result<Output, ImageError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| ImageError::Spawn {
            program: program.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(out);
    }
    Err(command_error(cmd, &out))
}

/// Builds the error for a failed command.
pub(super) fn command_error(cmd: &Command, out: &Output) -> ImageError {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(6)..].join(" | ");
    let hint = if stderr.contains("No space left") {
        "; the disk is full: free some space or use another --data-dir".to_string()
    } else {
        String::new()
    };
    ImageError::Command {
        command: describe(cmd),
        status: out.status.to_string(),
        stderr: if tail.is_empty() {
            "(no error output)".into()
        } else {
            tail
        },
        hint,
    }
}

/// `program arg arg` for messages.
pub(super) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a decompressor over `input` and returns its output.
pub(super) fn filter(
    argv: &[&'static str],
    package: &'static str,
    input: &[u8],
) -> Result<Vec<u8>, ImageError> {
    let prog = require(argv[0], package)?;
    let mut cmd = Command::new(prog);
    cmd.args(&argv[1..]);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ImageError::Spawn {
            program: argv[0].into(),
            source,
        })?;
    let mut stdin = child.stdin.take();
    let out = std::thread::scope(|s| {
        let writer = s.spawn(move || {
            if let Some(mut w) = stdin.take() {
                // A broken pipe means the tool stopped early; its exit status tells why.
                let _ = w.write_all(input);
            }
        });
        let out = child.wait_with_output();
        let _ = writer.join();
        out
    })
    .map_err(|source| ImageError::Spawn {
        program: argv[0].into(),
        source,
    })?;
    if !out.status.success() {
        return Err(command_error(&cmd, &out));
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_reports_failures() {
        assert!(which("sh").is_some());
        assert!(which("definitely-not-a-tool-smolvm").is_none());
        let err = run(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("oops") && msg.contains("exit status: 3"),
            "{msg}"
        );
        assert!(matches!(
            require("definitely-not-a-tool-smolvm", "nothing"),
            Err(ImageError::ToolMissing { .. })
        ));
    }
}
