//! Running the host's system tools (`ip`, `nft`, `ssh-keygen`, `debugfs`, ...): argv only (never a
//! shell), English messages (`LC_ALL=C`, which callers match on), stdout returned, stderr kept for the
//! error. The one runner behind `network` and `ssh`; each converts [`ToolError`] into its own error.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// A system tool could not be run or failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Not installed.
    #[error("`{program}` not found: install the {package} package (apt-get install {package})")]
    Missing {
        /// The program.
        program: String,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// Could not be started, or waited for.
    #[error("cannot run `{program}`")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line, for messages only (never executed as a string).
        command: String,
        /// Exit status description.
        status: String,
        /// What the tool printed on stderr, trimmed.
        stderr: String,
    },
}

/// The Debian package providing `program`, for "install it" hints.
pub(crate) fn package_of(program: &str) -> &'static str {
    match program {
        "nft" => "nftables",
        "ip" => "iproute2",
        "iptables" => "iptables",
        "ssh" | "ssh-keygen" => "openssh-client",
        "dropbearconvert" => "dropbear-bin",
        "debugfs" | "mkfs.ext4" => "e2fsprogs",
        _ => "matching",
    }
}

/// Runs `program` with `args` (optionally in `cwd`, feeding `stdin`), returning its stdout.
pub(crate) fn run<S: AsRef<str>>(
    program: &str,
    args: &[S],
    cwd: Option<&Path>,
    stdin: Option<&str>,
) -> Result<Vec<u8>, ToolError> {
    let path = crate::network::find_program(program).ok_or_else(|| ToolError::Missing {
        program: program.to_string(),
        package: package_of(program),
    })?;
    let mut cmd = Command::new(path);
    cmd.args(args.iter().map(AsRef::as_ref))
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let spawn_err = |source| ToolError::Spawn {
        program: program.to_string(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Inputs are small scripts (a few KiB, below the pipe buffer), so writing before reading cannot
        // deadlock; a failed write shows up as the tool's own failure below.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(ToolError::Failed {
            command: std::iter::once(program)
                .chain(args.iter().map(AsRef::as_ref))
                .collect::<Vec<_>>()
                .join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_argv_and_reports_failures_with_stderr() {
        let out = run(
            "sh",
            &["-c", "printf '%s' \"$1\"", "sh", "a b;$(x)"],
            None,
            None,
        )
        .unwrap();
        assert_eq!(out, b"a b;$(x)");
        let out = run("cat", &[] as &[&str], None, Some("fed")).unwrap();
        assert_eq!(out, b"fed");
        match run("sh", &["-c", "echo oops >&2; exit 3"], None, None) {
            Err(ToolError::Failed { stderr, status, .. }) => {
                assert_eq!(stderr, "oops");
                assert!(status.contains('3'), "{status}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            run("no-such-tool-smolvm", &["x"], None, None),
            Err(ToolError::Missing { .. })
        ));
    }
}
