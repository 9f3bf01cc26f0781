//! `smolvm exec ID [OPTIONS] [--] CMD...`: runs one command in a running VM through its agent, with its
//! output streamed live to the local stdout and stderr.
//!
//! What runs is decided by a flag, never guessed from the text of the arguments:
//! * default: the words are the argv, run directly (no shell; `CMD` is searched in the guest's `PATH`),
//!   so `smolvm exec vm -- ls "a b"` passes one argument `a b`;
//! * `--shell`: the words are joined with single spaces (as `ssh host words...` does) and run as
//!   `/bin/sh -lc <line>`, so pipes, globs and `$VAR` work: `smolvm exec vm --shell -- 'ls /tmp | wc -l'`.
//!
//! Variables persisted with `smolvm env set` apply to both forms; `--env` adds variables for this command.
//!
//! Stdin is `/dev/null` unless `-i/--stdin` is given: then all of the local stdin is read (to EOF, at most
//! the protocol's stdin limit) and sent. Never implicit: an idle inherited pipe would otherwise hang a
//! script.
//!
//! Exit status: the guest command's own (128 + N when signal N killed it). smolvm's own failures use the
//! codes `timeout(1)` and container tools use: 124 when `--timeout` expired (the guest killed the
//! command's process group), 125 when smolvm could not run the command (VM not found or not running,
//! agent unreachable, invalid option), 126 when the program cannot be executed, 127 when it does not
//! exist.

use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use smolvm::SmolVm;
use smolvm::{
    AgentClient, AgentErrorKind as ErrorKind, ExecError, ExecRequest, ExecStream as Stream,
};
use smolvm_protocol::limits::MAX_STDIN_LEN;

use super::common::backend_choice;
use crate::Cli;

/// Exit status when `--timeout` expired (as `timeout(1)`).
pub const EXIT_TIMEOUT: u8 = 124;
/// Exit status when smolvm itself failed (VM not found or not running, agent unreachable, bad option).
pub const EXIT_SMOLVM_FAILED: u8 = 125;
/// Exit status when the guest program exists but cannot be executed.
pub const EXIT_CANNOT_EXECUTE: u8 = 126;
/// Exit status when the guest program does not exist.
pub const EXIT_NOT_FOUND: u8 = 127;
/// Exit status after the local stdout was closed by its reader (as a process killed by SIGPIPE).
const EXIT_BROKEN_PIPE: i32 = 128 + 13;

/// Arguments of `smolvm exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The VM id (the VM must be running).
    pub id: String,
    /// Kill the command (its whole process group) after this many seconds; exit status 124.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Working directory in the guest (absolute path).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Environment variable for this command only (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Join the words with spaces and run the line with `/bin/sh -lc` instead of as an argv.
    #[arg(long)]
    pub shell: bool,
    /// Read all of the local stdin (to EOF) and send it to the command's stdin.
    #[arg(short = 'i', long = "stdin")]
    pub stdin: bool,
    /// The command and its arguments; options for smolvm go before it (or before `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

impl ExecArgs {
    /// The request these options describe (stdin not read yet). Fails on an invalid option.
    pub fn request(&self) -> anyhow::Result<ExecRequest> {
        let mut req = if self.shell {
            ExecRequest::shell(self.command.join(" "))
        } else {
            ExecRequest::argv(self.command.iter().cloned())
        };
        for kv in &self.env {
            let (k, v) = parse_env_pair(kv).with_context(|| format!("--env {kv:?}"))?;
            req = req.env(k, v);
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.starts_with('/') {
                bail!("--cwd {cwd:?}: the guest working directory must be an absolute path");
            }
            req = req.cwd(cwd.clone());
        }
        let timeout = self.timeout.map(parse_timeout).transpose()?;
        Ok(req.timeout(timeout))
    }
}

/// Parses `KEY=VALUE` (split at the first `=`; the value may hold anything, `=` included) and checks
/// the key is a shell identifier, naming it when it is not.
pub fn parse_env_pair(kv: &str) -> anyhow::Result<(String, String)> {
    let Some((k, v)) = kv.split_once('=') else {
        bail!("expected KEY=VALUE (no '=' found)");
    };
    smolvm::validate_env_key(k)?;
    Ok((k.to_string(), v.to_string()))
}

/// Seconds on the command line to a positive duration.
fn parse_timeout(s: f64) -> anyhow::Result<Duration> {
    match Duration::try_from_secs_f64(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => bail!("--timeout {s}: expected a number of seconds > 0"),
    }
}

/// A VM reconnected by id for one CLI command. Dropping it *releases* the handle
/// ([`SmolVm::close`]): the VM keeps running. (A bare reconnected `SmolVm` would stop the VM when
/// dropped, which a CLI command that merely uses the VM must never do, even on an error path.)
#[derive(Debug)]
pub struct Attached(Option<SmolVm>);

impl Attached {
    /// Reconnects to VM `id` with the global directory and backend options.
    pub fn open(cli: &Cli, id: &str) -> anyhow::Result<Attached> {
        let vm = SmolVm::from_id(
            id,
            cli.data_dir.as_deref(),
            cli.socket_dir.as_deref(),
            backend_choice(cli)?,
        )?;
        Ok(Attached(Some(vm)))
    }

    /// The VM.
    pub fn vm(&self) -> &SmolVm {
        // Always Some until drop takes it.
        self.0.as_ref().expect("present until drop")
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(vm) = self.0.take() {
            vm.close();
        }
    }
}

/// Runs `req` and copies each output chunk to the local stdout or stderr as it arrives (written and
/// flushed at once), returning the command's exit code (128 + N for signal N).
///
/// If the local stdout or stderr cannot be written (say `smolvm exec ... | head` closed the pipe), the
/// process exits at once: with status 141 on a broken pipe, as SIGPIPE would end it, otherwise 125 with
/// a message. Exiting closes the agent connection, and the agent kills the command's process group on
/// disconnect, so an endless command does not run on unseen. Destructors do not run then, so the VM is
/// left as it was.
///
/// Usage from a command holding an [`Attached`] VM:
/// `vm.with_agent(|c| Ok(exec_streaming_to_stdio(c, &req)))?` (an `anyhow::Result<i32>` inside).
pub fn exec_streaming_to_stdio(client: &AgentClient, req: &ExecRequest) -> anyhow::Result<i32> {
    let code = client
        .exec_streaming(req, |stream, data| {
            // Lock per chunk, never across the whole call: the client's reader thread may log to stderr
            // (tracing), and holding the stderr lock here would stall the very thread delivering output.
            let written = match stream {
                Stream::Stdout => write_flush(&mut io::stdout().lock(), data),
                Stream::Stderr => write_flush(&mut io::stderr().lock(), data),
            };
            if let Err(e) = written {
                local_write_failed(stream, &e);
            }
        })
        .map_err(smolvm::Error::from)?;
    Ok(code)
}

fn write_flush(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    w.write_all(data)?;
    w.flush()
}

/// Ends the process after a failed local write (see [`exec_streaming_to_stdio`]).
fn local_write_failed(stream: Stream, e: &io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(EXIT_BROKEN_PIPE);
    }
    let name = match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    // If stderr itself is what failed, this write fails too; there is nowhere else to say it.
    let _ = writeln!(
        io::stderr(),
        "error: cannot write the command's output to the local {name}: {e}"
    );
    std::process::exit(i32::from(EXIT_SMOLVM_FAILED));
}

/// The process exit status for the outcome of a command run by `exec` (or `run`): the command's own
/// code, or, for a failure (printed here, once, with its causes), 124 timeout / 126 / 127 / 125 as the
/// module docs say.
pub fn exit_status(outcome: anyhow::Result<i32>) -> ExitCode {
    match outcome {
        // Exit codes are 0..=255 (128 + N for signals); anything else cannot come from a process.
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)),
        Err(e) => {
            crate::output::print_error(&e);
            ExitCode::from(failure_status(&e))
        }
    }
}

/// Which of smolvm's own exit statuses a failure gets.
fn failure_status(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        // Only the command's own `--timeout`; an unresponsive agent ("ping", "connect") is smolvm's
        // failure.
        if let Some(smolvm::Error::OperationTimeout { operation, .. }) =
            cause.downcast_ref::<smolvm::Error>()
        {
            if operation == "command" {
                return EXIT_TIMEOUT;
            }
        }
        if let Some(ExecError::Agent { kind, .. }) = cause.downcast_ref::<ExecError>() {
            match kind {
                ErrorKind::NotFound => return EXIT_NOT_FOUND,
                ErrorKind::PermissionDenied => return EXIT_CANNOT_EXECUTE,
                _ => {}
            }
        }
    }
    EXIT_SMOLVM_FAILED
}

/// Reads all of stdin, refusing more than the protocol carries.
fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    // Read one byte past the limit so "too large" is told apart from "exactly the limit".
    io::stdin()
        .lock()
        .take(MAX_STDIN_LEN as u64 + 1)
        .read_to_end(&mut buf)
        .context("cannot read the local stdin")?;
    if buf.len() > MAX_STDIN_LEN {
        bail!(
            "stdin is larger than {} MiB, the most `exec -i` sends; copy big inputs with `smolvm cp`",
            MAX_STDIN_LEN >> 20
        );
    }
    Ok(buf)
}

/// The `WorkingDir` of the OCI image the VM boots, the default directory of its commands.
pub fn image_working_dir(vm: &SmolVm) -> Option<String> {
    smolvm::runtime_of_rootfs(vm.info().config.rootfs_path())?.working_dir
}

/// Runs `smolvm exec`. Never returns `Err`: failures are printed and mapped to an exit status here.
pub fn exec(cli: &Cli, a: &ExecArgs) -> anyhow::Result<ExitCode> {
    Ok(exit_status(exec_inner(cli, a)))
}

fn exec_inner(cli: &Cli, a: &ExecArgs) -> anyhow::Result<i32> {
    // Options are checked before the VM is looked up, so a typo fails fast and says what it is.
    let mut req = a.request()?;
    let vm = Attached::open(cli, &a.id)?;
    if req.cwd.is_none() {
        req.cwd = image_working_dir(vm.vm());
    }
    if a.stdin {
        req = req.stdin(read_stdin()?);
    }
    vm.vm()
        .with_agent(|c| Ok(exec_streaming_to_stdio(c, &req)))?
        .with_context(|| format!("exec in VM {}", a.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use smolvm::AgentCommand as Command;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        a: ExecArgs,
    }

    fn parse(args: &[&str]) -> Result<ExecArgs, clap::Error> {
        T::try_parse_from(std::iter::once("exec").chain(args.iter().copied())).map(|t| t.a)
    }

    #[test]
    fn argv_by_default_and_options_before_the_command() {
        let a = parse(&[
            "vm1",
            "--timeout",
            "2.5",
            "-e",
            "A=1=2",
            "--",
            "ls",
            "-l",
            "a b",
        ])
        .unwrap();
        let r = a.request().unwrap();
        assert_eq!(
            r.command,
            Command::Argv(vec!["ls".into(), "-l".into(), "a b".into()])
        );
        assert_eq!(r.env.get("A").map(String::as_str), Some("1=2"));
        assert_eq!(r.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(r.stdin, None);
        // Without `--`, the first word starts the command and everything after belongs to it.
        let a = parse(&["vm1", "echo", "--timeout", "3"]).unwrap();
        assert_eq!(a.timeout, None);
        assert_eq!(a.command, ["echo", "--timeout", "3"]);
    }

    #[test]
    fn shell_joins_words_with_spaces() {
        let a = parse(&["vm1", "--shell", "--", "echo $HOME", "|", "wc"]).unwrap();
        assert_eq!(
            a.request().unwrap().command,
            Command::Shell("echo $HOME | wc".into())
        );
    }

    #[test]
    fn invalid_options_are_named() {
        let err = |args: &[&str]| format!("{:#}", parse(args).unwrap().request().unwrap_err());
        assert!(err(&["vm", "-e", "1BAD=x", "true"]).contains("\"1BAD\""));
        assert!(err(&["vm", "-e", "NOEQUALS", "true"]).contains("KEY=VALUE"));
        assert!(err(&["vm", "--cwd", "tmp", "true"]).contains("absolute"));
        assert!(err(&["vm", "--timeout", "0", "true"]).contains("> 0"));
        assert!(err(&["vm", "--timeout", "-1", "true"]).contains("> 0"));
        assert!(parse(&["vm"]).is_err(), "a command is required");
    }

    #[test]
    fn failure_statuses() {
        let timeout = anyhow::Error::new(smolvm::Error::from(ExecError::Timeout {
            operation: "command".into(),
            after: Duration::from_secs(1),
        }));
        assert_eq!(failure_status(&timeout), EXIT_TIMEOUT);
        let hung = anyhow::Error::new(smolvm::Error::from(ExecError::Timeout {
            operation: "ping".into(),
            after: Duration::from_secs(10),
        }));
        assert_eq!(failure_status(&hung), EXIT_SMOLVM_FAILED);
        let missing = anyhow::Error::new(smolvm::Error::from(ExecError::Agent {
            kind: ErrorKind::NotFound,
            message: "start \"nope\"".into(),
        }))
        .context("exec in VM x");
        assert_eq!(failure_status(&missing), EXIT_NOT_FOUND);
        let denied = anyhow::Error::new(ExecError::Agent {
            kind: ErrorKind::PermissionDenied,
            message: String::new(),
        });
        assert_eq!(failure_status(&denied), EXIT_CANNOT_EXECUTE);
        let gone = anyhow::Error::new(smolvm::Error::VmNotFound("x".into()));
        assert_eq!(failure_status(&gone), EXIT_SMOLVM_FAILED);
    }
}
