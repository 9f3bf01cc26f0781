//! A small blocking QMP client (QEMU Machine Protocol: one JSON object per line over a Unix socket).
//!
//! Session: QEMU sends a greeting (`{"QMP": ...}`), the client sends `qmp_capabilities`, then commands.
//! Asynchronous events (`{"event": ...}`) may arrive between a command and its reply at any time; they
//! are kept (the last few) and skipped. Every read and write has a timeout, so a wedged QEMU cannot hang
//! the caller.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

/// Longest line accepted from QEMU; replies of the commands smolvm uses are tiny.
const MAX_LINE: u64 = 16 * 1024 * 1024;
/// Events kept for [`QmpClient::take_events`].
const MAX_EVENTS: usize = 64;

/// Errors of a QMP session.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected to.
    #[error("cannot connect to QMP socket {}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing failed (a timeout shows up here as `WouldBlock`/`TimedOut`).
    #[error("QMP I/O failed while {action}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// QEMU closed the connection.
    #[error("QEMU closed the QMP connection while {action}")]
    Closed {
        /// What was being done.
        action: &'static str,
    },
    /// QEMU sent something that is not a JSON object.
    #[error("invalid JSON from QMP")]
    Json(#[source] serde_json::Error),
    /// QEMU sent valid JSON that does not fit the protocol.
    #[error("unexpected QMP message: {0}")]
    Protocol(String),
    /// A command failed: QEMU's error class and description.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// The command that was executed.
        command: String,
        /// QMP error class (e.g. `GenericError`, `CommandNotFound`).
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

/// The VM run state (`query-status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QmpStatus {
    /// The run state (`running`, `paused`, `shutdown`, `prelaunch`, ...).
    pub status: String,
    /// True while vCPUs run.
    pub running: bool,
}

/// Sends (the start of) `data` on `socket` with `fd` attached as `SCM_RIGHTS`; returns how many bytes
/// went (the caller writes the rest).
fn send_with_fd(
    socket: &UnixStream,
    data: &[u8],
    fd: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer holds one cmsghdr with room for one int (CMSG_SPACE above).
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), raw);
    }
    loop {
        // SAFETY: msg points at live buffers; the socket fd is open for the call.
        let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One QMP session, in command mode once constructed.
#[derive(Debug)]
pub struct QmpClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    greeting: Value,
    events: VecDeque<Value>,
    next_id: u64,
}

impl QmpClient {
    /// Connects to `path`, reads the greeting and negotiates capabilities. `timeout` bounds each read
    /// and write of this session.
    pub fn connect(path: &Path, timeout: Duration) -> Result<QmpClient, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_stream(stream, timeout)
    }

    /// Starts a session on an already connected stream (reads the greeting, sends `qmp_capabilities`).
    pub fn from_stream(stream: UnixStream, timeout: Duration) -> Result<QmpClient, QmpError> {
        let io = |action| move |source| QmpError::Io { action, source };
        stream
            .set_read_timeout(Some(timeout))
            .map_err(io("setting the timeout"))?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(io("setting the timeout"))?;
        let writer = stream.try_clone().map_err(io("cloning the socket"))?;
        let mut client = QmpClient {
            reader: BufReader::new(stream),
            writer,
            greeting: Value::Null,
            events: VecDeque::new(),
            next_id: 1,
        };
        let greeting = client.read_message("reading the greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "expected a greeting, got {greeting}"
            )));
        }
        client.greeting = greeting;
        client.execute("qmp_capabilities", None)?;
        Ok(client)
    }

    /// The greeting QEMU sent (holds its version).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Runs `command` with optional `arguments` and returns the `return` value. Events arriving before
    /// the reply are kept for [`take_events`](Self::take_events).
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        self.execute_passing(command, arguments, None)
    }

    /// [`execute`](Self::execute), passing `fd` to QEMU with the command (`SCM_RIGHTS`), as `add-fd`
    /// and `getfd` expect: QEMU then holds its own copy of the descriptor.
    pub fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<Value, QmpError> {
        self.execute_passing(command, arguments, Some(fd))
    }

    fn execute_passing(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        let sent = match fd {
            Some(fd) => send_with_fd(&self.writer, line.as_bytes(), fd),
            None => Ok(0),
        };
        sent.and_then(|n| self.writer.write_all(&line.as_bytes()[n..]))
            .map_err(|source| QmpError::Io {
                action: "sending a command",
                source,
            })?;
        loop {
            let mut reply = self.read_message("waiting for a reply")?;
            if reply.get("event").is_some() {
                if self.events.len() == MAX_EVENTS {
                    self.events.pop_front();
                }
                self.events.push_back(reply);
                continue;
            }
            // Replies carry our id back; one without an id (or with another) is not ours.
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                return Err(QmpError::Protocol(format!(
                    "reply does not match command {command} (id {id}): {reply}"
                )));
            }
            if let Some(ret) = reply.get_mut("return") {
                return Ok(ret.take());
            }
            if let Some(err) = reply.get("error") {
                let field = |k| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(QmpError::Protocol(format!(
                "reply to {command} has neither return nor error: {reply}"
            )));
        }
    }

    /// Presses the ACPI power button: the guest shuts down if it listens (returns at once).
    pub fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).map(drop)
    }

    /// Makes QEMU exit immediately. QEMU may close the connection before its reply arrives, which
    /// counts as success.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None) {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(QmpError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionReset =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The VM's run state.
    pub fn query_status(&mut self) -> Result<QmpStatus, QmpError> {
        let v = self.execute("query-status", None)?;
        let status = v.get("status").and_then(Value::as_str);
        let running = v.get("running").and_then(Value::as_bool);
        match (status, running) {
            (Some(status), Some(running)) => Ok(QmpStatus {
                status: status.to_string(),
                running,
            }),
            _ => Err(QmpError::Protocol(format!("bad query-status reply: {v}"))),
        }
    }

    /// The asynchronous events received so far (at most the last 64), oldest first; clears them.
    pub fn take_events(&mut self) -> Vec<Value> {
        self.events.drain(..).collect()
    }

    fn read_message(&mut self, action: &'static str) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_line(&mut line)
            .map_err(|source| QmpError::Io { action, source })?;
        if n == 0 {
            return Err(QmpError::Closed { action });
        }
        if !line.ends_with('\n') && n as u64 == MAX_LINE {
            return Err(QmpError::Protocol(format!(
                "message longer than {MAX_LINE} bytes"
            )));
        }
        let v: Value = serde_json::from_str(&line).map_err(QmpError::Json)?;
        if !v.is_object() {
            return Err(QmpError::Protocol(format!(
                "expected a JSON object, got {v}"
            )));
        }
        Ok(v)
    }
}

#[cfg(test)]
#[path = "qmp_tests.rs"]
mod tests;
