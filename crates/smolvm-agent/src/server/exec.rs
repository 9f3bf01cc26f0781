//! Running one command. Three threads per command: this request's thread (the "main" loop: stdin
//! routing, cancellation, timeout, the final `Exit`), an output pump (poll on stdout+stderr, chunks out as
//! frames, then reaping the child) and, if the host sends stdin, a stdin writer (a child that does not
//! read its stdin must not stall anything else).
//!
//! The child runs in its own session (`setsid`), so its process group id is its pid and a timeout or a
//! cancel kills the whole group (`kill(-pgid, SIGKILL)`), grandchildren included.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use smolvm_protocol::limits::{MAX_STDIN_LEN, OUTPUT_CHUNK_LEN};
use smolvm_protocol::{Command, ErrorKind, ExecStart, ExitStatus, Frame, FrameType, Reply};

use super::{env, error_chain, reaper, Ctx, Inbound, Out, DEFAULT_PATH};

/// Poll slice of the output pump while its pipes are open: how often it checks whether the child has
/// exited although something (a background grandchild) still holds the pipes.
const PUMP_POLL_MS: i32 = 50;
/// After the child exited, the pump stops once the pipes stay quiet this long, so `server &` in a
/// command does not keep the request open. (The command's own output is already in the pipe buffers
/// when it exits, and is read without waiting.)
const DRAIN_QUIET_MS: i32 = 50;
/// After the child exited, at most this much more output is forwarded (more than two full pipe buffers
/// at Linux' default `pipe-max-size`), so a chatty background job cannot keep the request open.
const DRAIN_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Upper bound of one wait of the main loop when there is no timeout (it only waits for frames).
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// Runs `start` and answers with output frames and `Exit` (or `Error`).
pub(crate) fn run(ctx: Ctx, start: ExecStart) {
    let mut child = match spawn(&ctx, &start) {
        Ok(c) => c,
        Err(e) => {
            ctx.out.reply(ctx.id, &Reply::Error(e));
            return;
        }
    };
    let pgid = child.id() as libc::pid_t;
    let stdin = child.stdin.take().map(spawn_stdin_writer);
    let pump = {
        let out = std::sync::Arc::clone(&ctx.out);
        let tx = ctx.inbox_tx.clone();
        let id = ctx.id;
        std::thread::Builder::new()
            .name(format!("pump-{id}"))
            .spawn(move || {
                let status = pump(id, &out, &mut child);
                reaper::unregister(child.id());
                let _ = tx.send(Inbound::Finished(status));
            })
    };
    if let Err(e) = pump {
        kill_group(pgid);
        // The child (moved into the failed closure) was dropped unwaited: PID 1 may reap it now.
        reaper::unregister(pgid as u32);
        ctx.out.error(
            ctx.id,
            ErrorKind::SpawnFailed,
            format!("cannot start a thread: {e}"),
        );
        return;
    }
    let deadline = start
        .timeout_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut stdin = stdin;
    let mut stdin_len = 0usize;
    let mut timed_out = false;
    let mut failure: Option<smolvm_protocol::ErrorReply> = None;
    let status = loop {
        let wait = match deadline {
            Some(d) if !timed_out => d.saturating_duration_since(Instant::now()),
            _ => IDLE_WAIT,
        };
        match ctx.inbox.recv_timeout(wait) {
            Ok(Inbound::Finished(status)) => break status,
            Ok(Inbound::Stdin(data)) => {
                stdin_len = stdin_len.saturating_add(data.len());
                if stdin_len > MAX_STDIN_LEN {
                    failure.get_or_insert(smolvm_protocol::ErrorReply::new(
                        ErrorKind::LimitExceeded,
                        format!("stdin exceeds {MAX_STDIN_LEN} bytes"),
                    ));
                    kill_group(pgid);
                    stdin = None;
                } else if let Some(tx) = &stdin {
                    let eof = data.is_empty();
                    let _ = tx.send(data);
                    if eof {
                        stdin = None;
                    }
                }
            }
            Ok(Inbound::Cancel) => {
                failure.get_or_insert(smolvm_protocol::ErrorReply::new(
                    ErrorKind::Cancelled,
                    "cancelled by the host",
                ));
                kill_group(pgid);
            }
            Ok(Inbound::Abort(e)) => {
                failure.get_or_insert(e);
                kill_group(pgid);
            }
            Ok(Inbound::FileData(_)) => {}
            Err(RecvTimeoutError::Timeout) => {
                if deadline.is_some_and(|d| Instant::now() >= d) && !timed_out {
                    timed_out = true;
                    kill_group(pgid);
                }
            }
            // Cannot happen while ctx holds a sender; end cleanly anyway.
            Err(RecvTimeoutError::Disconnected) => {
                kill_group(pgid);
                return;
            }
        }
    };
    drop(stdin);
    if let Some(e) = failure {
        ctx.out.reply(ctx.id, &Reply::Error(e));
        return;
    }
    match status {
        Ok(s) => {
            let exit = ExitStatus {
                code: s.code(),
                signal: s.signal(),
                timed_out,
            };
            ctx.out.reply(ctx.id, &Reply::Exit(exit));
        }
        Err(e) => {
            ctx.out.error(
                ctx.id,
                ErrorKind::Io,
                format!("waiting for the command: {e}"),
            );
        }
    }
}

/// Starts the child in its own session with piped output.
fn spawn(ctx: &Ctx, start: &ExecStart) -> Result<Child, smolvm_protocol::ErrorReply> {
    let (program, mut cmd) = match &start.command {
        Command::Argv(argv) => {
            let mut c = std::process::Command::new(&argv[0]);
            c.args(&argv[1..]);
            (argv[0].clone(), c)
        }
        Command::Shell(s) => {
            let mut c = std::process::Command::new(&ctx.config.shell);
            c.arg("-lc").arg(s);
            (ctx.config.shell.display().to_string(), c)
        }
    };
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    // Persisted variables apply to argv commands too; a login shell's profile sets the same values.
    cmd.envs(env::load(&ctx.config)?);
    cmd.envs(&start.env);
    if let Some(cwd) = &start.cwd {
        cmd.current_dir(cwd);
    }
    cmd.stdin(if start.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // The agent runs with its channel's event signals blocked and SIGPIPE ignored; a command must start
    // with neither (measured: busybox sh then waited forever for the SIGCHLD of `$(id -u)` in /etc/profile).
    crate::setup::reset_signals(&mut cmd);
    // SAFETY: setsid is async-signal-safe; it makes the child a session and process group leader, so its
    // pgid equals its pid and a timeout can kill the whole group.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Registered under the reaper's lock, so PID 1 never reaps it before its waiter does.
    let mut registry = reaper::lock();
    let child = cmd.spawn().map_err(|e| {
        let what = match (&start.cwd, e.kind()) {
            (Some(cwd), io::ErrorKind::NotFound) => format!("start {program:?} in {cwd:?}"),
            _ => format!("start {program:?}"),
        };
        let kind = match e.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            _ => ErrorKind::SpawnFailed,
        };
        smolvm_protocol::ErrorReply::new(kind, format!("{what}: {}", error_chain(&e)))
    })?;
    registry.insert(child.id());
    Ok(child)
}

/// Kills the child's whole process group.
fn kill_group(pgid: libc::pid_t) {
    if pgid > 1 {
        // SAFETY: kill(2) on our own child's group; ESRCH (already gone) is fine.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Feeds the child's stdin from a channel; an empty chunk (or a dropped sender) closes it.
fn spawn_stdin_writer(mut stdin: ChildStdin) -> Sender<Vec<u8>> {
    let (tx, rx) = channel::<Vec<u8>>();
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for chunk in rx {
                // A child that closed its stdin gets no more; the rest is dropped.
                if chunk.is_empty() || stdin.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
    tx
}

/// Forwards stdout and stderr until both reach EOF (or the child exited and the pipes went quiet), then
/// reaps the child.
fn pump(id: u32, out: &Out, child: &mut Child) -> io::Result<std::process::ExitStatus> {
    let mut pipes: Vec<(FrameType, Box<dyn Read + Send>, i32)> = Vec::new();
    if let Some(p) = child.stdout.take() {
        let fd = p.as_raw_fd();
        pipes.push((FrameType::Stdout, Box::new(p), fd));
    }
    if let Some(p) = child.stderr.take() {
        let fd = p.as_raw_fd();
        pipes.push((FrameType::Stderr, Box::new(p), fd));
    }
    let mut buf = vec![0u8; OUTPUT_CHUNK_LEN];
    let mut exited: Option<std::process::ExitStatus> = None;
    let mut drained = 0usize;
    while !pipes.is_empty() && drained <= DRAIN_MAX_BYTES {
        let mut fds: Vec<libc::pollfd> = pipes
            .iter()
            .map(|(_, _, fd)| libc::pollfd {
                fd: *fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let timeout = if exited.is_some() {
            DRAIN_QUIET_MS
        } else {
            PUMP_POLL_MS
        };
        // SAFETY: fds is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            if exited.is_some() {
                // Exited, and the pipes stayed quiet: what still holds them is a background job.
                break;
            }
            exited = child.try_wait()?;
            continue;
        }
        let mut closed = Vec::new();
        for (i, pfd) in fds.iter().enumerate() {
            if pfd.revents == 0 {
                continue;
            }
            let (frame_type, reader, _) = &mut pipes[i];
            match reader.read(&mut buf) {
                Ok(0) => closed.push(i),
                Ok(n) => {
                    if exited.is_some() {
                        drained += n;
                    }
                    // A closed connection only means nobody listens; keep draining so the child never
                    // blocks on a full pipe.
                    out.send(&Frame::new(*frame_type, id, buf[..n].to_vec()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => closed.push(i),
            }
        }
        for i in closed.into_iter().rev() {
            pipes.remove(i);
        }
        if exited.is_none() && !pipes.is_empty() {
            exited = child.try_wait()?;
        }
    }
    match exited {
        Some(s) => Ok(s),
        None => child.wait(),
    }
}
