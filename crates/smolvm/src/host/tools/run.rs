//! Running the host's programs (`ip`, `nft`, `ssh-keygen`, `qemu-img`, `mkfs.ext4`, `tar`, ...): argv
//! only (never a shell), stdout returned, the tail of stderr kept for the error. The one runner of
//! smolvm and its one error, [`ToolError`]; each area (network, SSH, image, snapshot) wraps it in its
//! own error with `#[from]`, so the chain down to the tool stays intact.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

use super::find_program;

/// How many non-empty lines of a failed tool's stderr its error keeps.
const STDERR_TAIL_LINES: usize = 6;

/// A host program could not be found, started, or it failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Not installed.
    #[error(
        "`{program}` not found: install the {package} package (apt-get install {package}){hint}"
    )]
    Missing {
        /// The program (or file) that is missing.
        program: String,
        /// The Debian package that provides it.
        package: &'static str,
        /// Extra advice (starts with " (" or "; ") or empty.
        hint: &'static str,
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
    #[error("`{}` failed ({status}): {stderr}{hint}", command_line(program, args))]
    Failed {
        /// The program as it was started (a name or a path).
        program: String,
        /// Its arguments (for messages only: never executed as a string).
        args: Vec<String>,
        /// Exit status description (`exit status: 3`, `signal: 9 (SIGKILL)`).
        status: String,
        /// The last non-empty lines of its stderr, joined by ` | ` (or "(no error output)").
        stderr: String,
        /// Extra advice (starts with "; ") or empty.
        hint: String,
    },
}

impl ToolError {
    /// The error for `cmd` having exited with `status` after printing `stderr`: keeps the tail of
    /// stderr and adds a hint when the disk is full.
    pub(crate) fn failed(cmd: &Command, status: &ExitStatus, stderr: &str) -> ToolError {
        let lossy = |s: &OsStr| s.to_string_lossy().into_owned();
        ToolError::Failed {
            program: lossy(cmd.get_program()),
            args: cmd.get_args().map(lossy).collect(),
            status: status.to_string(),
            stderr: stderr_tail(stderr),
            hint: if stderr.contains("No space left") {
                "; the disk is full: free some space or use another --data-dir".to_string()
            } else {
                String::new()
            },
        }
    }

    /// Adds `hint` ("; " is prepended) to a [`ToolError::Failed`] that has none yet; other errors are
    /// returned unchanged.
    pub(crate) fn with_hint(self, hint: &str) -> ToolError {
        match self {
            ToolError::Failed {
                program,
                args,
                status,
                stderr,
                hint: h,
            } if h.is_empty() => ToolError::Failed {
                program,
                args,
                status,
                stderr,
                hint: format!("; {hint}"),
            },
            other => other,
        }
    }

    /// The command line of a [`ToolError::Failed`] (program and arguments joined by spaces).
    pub fn command(&self) -> Option<String> {
        match self {
            ToolError::Failed { program, args, .. } => Some(command_line(program, args)),
            _ => None,
        }
    }
}

/// `program arg arg`, for messages.
fn command_line(program: &str, args: &[String]) -> String {
    std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last [`STDERR_TAIL_LINES`] non-empty lines of `stderr`, trimmed and joined by ` | `.
fn stderr_tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return "(no error output)".into();
    }
    lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join(" | ")
}

/// The Debian package providing `program`, for "install it" hints.
pub(crate) fn package_of(program: &str) -> &'static str {
    match program {
        "nft" => "nftables",
        "ip" => "iproute2",
        "iptables" => "iptables",
        "ssh" | "ssh-keygen" => "openssh-client",
        "dropbearconvert" => "dropbear-bin",
        "debugfs" | "mkfs.ext4" | "resize2fs" => "e2fsprogs",
        "qemu-img" => "qemu-utils",
        "tar" => "tar",
        _ => "matching",
    }
}

/// Finds `program` (see [`find_program`]) or says which package provides it.
pub(crate) fn require(program: &str, package: &'static str) -> Result<PathBuf, ToolError> {
    find_program(program).ok_or_else(|| ToolError::Missing {
        program: program.to_string(),
        package,
        hint: "",
    })
}

/// Runs `cmd` to completion, feeding it `stdin` (or an empty stdin) and capturing stdout and stderr;
/// a non-zero exit becomes [`ToolError::Failed`].
pub(crate) fn output(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<Output, ToolError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let spawn_err = |source| ToolError::Spawn {
        program: program.clone(),
        source,
    };
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    let pipe = child.stdin.take();
    let out = std::thread::scope(|s| {
        // Written on a thread while the output is read: a large input (a compressed kernel) must not
        // fill the pipe while the tool waits for us to read its stdout.
        s.spawn(move || {
            if let (Some(input), Some(mut pipe)) = (stdin, pipe) {
                // A broken pipe means the tool stopped early; its exit status says why.
                let _ = pipe.write_all(input);
            }
        });
        child.wait_with_output()
    })
    .map_err(spawn_err)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(ToolError::failed(
            cmd,
            &out.status,
            &String::from_utf8_lossy(&out.stderr),
        ))
    }
}

/// Runs the filter `argv` (a decompressor, say; `argv[0]` looked up, provided by `package`) over
/// `input` and returns its output.
pub(crate) fn filter(
    argv: &[&str],
    package: &'static str,
    input: &[u8],
) -> Result<Vec<u8>, ToolError> {
    let mut cmd = Command::new(require(argv[0], package)?);
    cmd.args(&argv[1..]);
    Ok(output(&mut cmd, Some(input))?.stdout)
}

/// Runs the program `program` (looked up with [`find_program`]) with `args`, optionally in `cwd` and
/// feeding `stdin`, with English messages (`LC_ALL=C`, which callers match on); returns its stdout.
pub(crate) fn run<S: AsRef<str>>(
    program: &str,
    args: &[S],
    cwd: Option<&Path>,
    stdin: Option<&str>,
) -> Result<Vec<u8>, ToolError> {
    let path = require(program, package_of(program))?;
    let mut cmd = Command::new(path);
    cmd.args(args.iter().map(AsRef::as_ref)).env("LC_ALL", "C");
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = output(&mut cmd, stdin.map(str::as_bytes)).map_err(|e| match e {
        // Messages name the program as the caller did, not the path it was found at.
        ToolError::Failed {
            args,
            status,
            stderr,
            hint,
            ..
        } => ToolError::Failed {
            program: program.to_string(),
            args,
            status,
            stderr,
            hint,
        },
        ToolError::Spawn { source, .. } => ToolError::Spawn {
            program: program.to_string(),
            source,
        },
        other => other,
    })?;
    Ok(out.stdout)
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
        let err = run("sh", &["-c", "echo oops >&2; exit 3"], None, None).unwrap_err();
        match &err {
            ToolError::Failed {
                program,
                args,
                stderr,
                status,
                hint,
            } => {
                assert_eq!(program, "sh");
                assert_eq!(args, &["-c", "echo oops >&2; exit 3"]);
                assert_eq!(stderr, "oops");
                assert!(status.contains('3'), "{status}");
                assert!(hint.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "`sh -c echo oops >&2; exit 3` failed (exit status: 3): oops"
        );
        assert!(matches!(
            run("no-such-tool-smolvm", &["x"], None, None),
            Err(ToolError::Missing { .. })
        ));
    }

    #[test]
    fn keeps_the_tail_of_stderr_and_hints_at_a_full_disk() {
        let script = "for i in 1 2 3 4 5 6 7 8; do echo line$i >&2; echo >&2; done; \
                      echo 'write: No space left on device' >&2; exit 1";
        let err = output(Command::new("sh").args(["-c", script]), None).unwrap_err();
        match &err {
            ToolError::Failed { stderr, hint, .. } => {
                assert_eq!(
                    stderr,
                    "line4 | line5 | line6 | line7 | line8 | write: No space left on device"
                );
                assert!(hint.contains("disk is full"), "{hint}");
            }
            other => panic!("{other:?}"),
        }
        let quiet = output(Command::new("sh").args(["-c", "exit 2"]), None).unwrap_err();
        assert!(quiet.to_string().ends_with("(no error output)"), "{quiet}");
        let hinted = quiet.with_hint("run `apt-get update`");
        assert!(
            hinted
                .to_string()
                .ends_with("(no error output); run `apt-get update`"),
            "{hinted}"
        );
        assert_eq!(hinted.command().as_deref(), Some("sh -c exit 2"));
    }

    #[test]
    fn feeds_large_stdin_while_reading_stdout() {
        // Larger than a pipe buffer in both directions: must not deadlock.
        let input = vec![b'x'; 1 << 20];
        let out = output(&mut Command::new("cat"), Some(&input)).unwrap();
        assert_eq!(out.stdout.len(), input.len());
        assert_eq!(
            filter(&["tr", "x", "y"], "coreutils", b"xox").unwrap(),
            b"yoy"
        );
        assert!(matches!(
            require("definitely-not-a-tool-smolvm", "nothing"),
            Err(ToolError::Missing {
                package: "nothing",
                ..
            })
        ));
    }
}
