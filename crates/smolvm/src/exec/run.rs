//! Commands: collected into a [`CommandResult`] / [`CommandOutput`], or streamed as they run.

use std::time::{Duration, Instant};

use smolvm_protocol::limits::{MAX_OUTPUT_LEN, MAX_STDIN_LEN, STDIN_CHUNK_LEN};
use smolvm_protocol::{ExecStart, FrameType, ProtocolError, Reply, Request};

use super::client::AgentClient;
use super::{CommandOutput, CommandResult, ExecError, ExecRequest, Stream};

/// Time the agent gets beyond a command's own timeout to kill it and report back before the client
/// gives up on its own.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// With no output for this long, the client checks that the agent is still alive (a ping), so a hung
/// guest is noticed even for commands without a timeout.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(15);

impl AgentClient {
    /// Runs `command` through `/bin/sh -lc` (login profile and persisted env vars apply), as the spec's
    /// `run`. A non-zero exit is a normal result; `timeout` passing is [`ExecError::Timeout`] (the guest
    /// kills the command's whole process group).
    pub fn run(
        &self,
        command: &str,
        timeout: Option<Duration>,
    ) -> Result<CommandResult, ExecError> {
        self.exec(&ExecRequest::shell(command).timeout(timeout))
    }

    /// Runs a request and collects its output as text (lossy UTF-8).
    pub fn exec(&self, req: &ExecRequest) -> Result<CommandResult, ExecError> {
        self.exec_raw(req).map(CommandResult::from)
    }

    /// Runs a request and collects its raw output, up to [`MAX_OUTPUT_LEN`] bytes (stdout + stderr);
    /// beyond that the command is cancelled and the call fails with [`ExecError::OutputTooLarge`].
    pub fn exec_raw(&self, req: &ExecRequest) -> Result<CommandOutput, ExecError> {
        let mut out = CommandOutput {
            exit_code: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        let mut total = 0usize;
        out.exit_code = self.exec_inner(req, |stream, data| {
            total += data.len();
            if total > MAX_OUTPUT_LEN {
                return Err(ExecError::OutputTooLarge {
                    limit: MAX_OUTPUT_LEN,
                });
            }
            match stream {
                Stream::Stdout => out.stdout.extend_from_slice(data),
                Stream::Stderr => out.stderr.extend_from_slice(data),
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Runs a request and hands each output chunk to `on_output` as it arrives (no size limit). The
    /// callback runs on the calling thread, in arrival order. Returns the exit code (128 + N for
    /// signal N).
    pub fn exec_streaming(
        &self,
        req: &ExecRequest,
        mut on_output: impl FnMut(Stream, &[u8]),
    ) -> Result<i32, ExecError> {
        self.exec_inner(req, |stream, data| {
            on_output(stream, data);
            Ok(())
        })
    }

    /// One step of the liveness check of a quiet command: sends a ping if none is in flight, else
    /// looks (without waiting) whether it was answered. Fails once the ping went unanswered for the
    /// request timeout or the connection ended.
    fn check_liveness<'a>(
        &'a self,
        ping: Option<(super::client::Call<'a>, Instant)>,
    ) -> Result<Option<(super::client::Call<'a>, Instant)>, ExecError> {
        let Some((mut call, sent)) = ping else {
            let call = self.start()?;
            call.send(&Request::Ping)?;
            return Ok(Some((call, Instant::now())));
        };
        match call.try_recv_for(Duration::ZERO)? {
            Some(Reply::Done(_)) => Ok(None),
            Some(Reply::Error(e)) => Err(ExecError::Agent {
                kind: e.kind,
                message: e.message,
            }),
            Some(other) => Err(super::client::unexpected(&other)),
            None if sent.elapsed() >= self.request_timeout() => Err(ExecError::Timeout {
                operation: "ping".into(),
                after: self.request_timeout(),
            }),
            None => Ok(Some((call, sent))),
        }
    }

    fn exec_inner(
        &self,
        req: &ExecRequest,
        mut on_output: impl FnMut(Stream, &[u8]) -> Result<(), ExecError>,
    ) -> Result<i32, ExecError> {
        let start = ExecStart {
            command: req.command.clone(),
            env: req.env.clone(),
            cwd: req.cwd.clone(),
            timeout_ms: req
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            stdin: req.stdin.is_some(),
        };
        start.validate().map_err(ExecError::InvalidRequest)?;
        if let Some(stdin) = &req.stdin {
            if stdin.len() > MAX_STDIN_LEN {
                return Err(ExecError::InvalidRequest(ProtocolError::invalid(
                    "stdin",
                    format!("{} bytes exceed {MAX_STDIN_LEN}", stdin.len()),
                )));
            }
        }
        let mut call = self.start()?;
        call.send(&Request::Exec(start))?;
        if let Some(stdin) = &req.stdin {
            for chunk in stdin.chunks(STDIN_CHUNK_LEN) {
                call.send_raw(FrameType::Stdin, chunk.to_vec())?;
            }
            call.send_raw(FrameType::Stdin, Vec::new())?;
        }
        let deadline = req.timeout.map(|t| Instant::now() + t + EXIT_GRACE);
        let command_timeout = |after| ExecError::Timeout {
            operation: "command".into(),
            after,
        };
        // A liveness ping in flight, and when it was sent. It is never waited for while this
        // command's output could be queued behind it: a full queue holds back every frame after it,
        // the ping's answer too, so waiting here would wait for ourselves.
        let mut ping: Option<(super::client::Call<'_>, Instant)> = None;
        loop {
            let wait = match deadline {
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .min(LIVENESS_INTERVAL),
                None => LIVENESS_INTERVAL,
            };
            let Some(reply) = call.try_recv_for(wait)? else {
                if let (Some(d), Some(t)) = (deadline, req.timeout) {
                    if Instant::now() >= d {
                        // The agent did not report the timeout itself: give up (dropping the call
                        // cancels the command).
                        return Err(command_timeout(t));
                    }
                }
                ping = self.check_liveness(ping)?;
                continue;
            };
            // The agent is talking: no ping needed.
            ping = None;
            match reply {
                Reply::Stdout(d) => on_output(Stream::Stdout, &d)?,
                Reply::Stderr(d) => on_output(Stream::Stderr, &d)?,
                Reply::Exit(status) if status.timed_out => {
                    return Err(command_timeout(req.timeout.unwrap_or_default()))
                }
                Reply::Exit(status) => return Ok(status.exit_code()),
                Reply::Error(e) => {
                    return Err(ExecError::Agent {
                        kind: e.kind,
                        message: e.message,
                    })
                }
                other => return Err(super::client::unexpected(&other)),
            }
        }
    }
}
