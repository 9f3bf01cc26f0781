//! The wire side of the client: one connection with its read buffer, writing a request, and parsing
//! one response (status line and headers with `httparse`, then a `Content-Length`, chunked or
//! close-delimited body) under an overall deadline.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{Method, Response, MAX_BODY, MAX_HEAD};
use crate::backend::firecracker::FirecrackerError;

/// What one request is, for error messages.
pub(super) struct Ctx<'a> {
    pub(super) method: Method,
    pub(super) path: &'a str,
    pub(super) timeout: Duration,
}

impl Ctx<'_> {
    pub(super) fn io(&self, source: io::Error) -> FirecrackerError {
        FirecrackerError::Io {
            method: self.method,
            path: self.path.to_string(),
            source,
        }
    }

    fn malformed(&self, reason: impl Into<String>) -> FirecrackerError {
        FirecrackerError::MalformedResponse {
            method: self.method,
            path: self.path.to_string(),
            reason: reason.into(),
        }
    }

    fn timeout(&self) -> FirecrackerError {
        FirecrackerError::Timeout {
            method: self.method,
            path: self.path.to_string(),
            timeout: self.timeout,
        }
    }
}

/// Why an exchange failed.
pub(super) enum Failure {
    /// The connection was closed before any response byte: safe to retry on a new connection.
    Stale(io::Error),
    /// Anything else.
    Fatal(FirecrackerError),
}

impl From<FirecrackerError> for Failure {
    fn from(e: FirecrackerError) -> Self {
        Failure::Fatal(e)
    }
}

/// One connection with its read buffer (`buf[pos..]` is received but not yet consumed).
#[derive(Debug)]
pub(super) struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    pos: usize,
}

/// Outcome of one read.
enum Fill {
    Data,
    Eof,
}

impl Conn {
    pub(super) fn connect(socket: &Path) -> Result<Conn, FirecrackerError> {
        let stream = UnixStream::connect(socket).map_err(|source| FirecrackerError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
            pos: 0,
        })
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Reads more bytes, waiting at most until `deadline`.
    fn fill(&mut self, deadline: Instant, ctx: &Ctx) -> Result<Fill, Failure> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ctx.timeout().into());
        }
        self.stream
            .set_read_timeout(Some(remaining))
            .map_err(|e| ctx.io(e))?;
        let mut chunk = [0u8; 8192];
        loop {
            return match self.stream.read(&mut chunk) {
                Ok(0) => Ok(Fill::Eof),
                Ok(n) => {
                    if self.pos > 0 {
                        self.buf.drain(..self.pos);
                        self.pos = 0;
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                    Ok(Fill::Data)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => Err(ctx.timeout().into()),
                Err(e) => Err(ctx.io(e).into()),
            };
        }
    }

    /// Reads until `n` bytes are pending.
    fn fill_to(&mut self, n: usize, deadline: Instant, ctx: &Ctx) -> Result<(), Failure> {
        while self.pending().len() < n {
            if let Fill::Eof = self.fill(deadline, ctx)? {
                return Err(ctx
                    .malformed("connection closed in the middle of the body")
                    .into());
            }
        }
        Ok(())
    }

    /// Takes one CRLF-terminated line (without the CRLF).
    fn line(&mut self, deadline: Instant, ctx: &Ctx) -> Result<String, Failure> {
        loop {
            if let Some(i) = self.pending().windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.pending()[..i]).into_owned();
                self.consume(i + 2);
                return Ok(line);
            }
            if self.pending().len() > MAX_HEAD {
                return Err(ctx.malformed("chunk header line too long").into());
            }
            if let Fill::Eof = self.fill(deadline, ctx)? {
                return Err(ctx
                    .malformed("connection closed inside chunked body")
                    .into());
            }
        }
    }

    /// Writes all of `data`. `send(MSG_NOSIGNAL)` instead of `write` so that a peer that went away
    /// yields EPIPE rather than a SIGPIPE that would kill a host process which did not ignore it.
    fn write_all(&mut self, mut data: &[u8], deadline: Instant, ctx: &Ctx) -> Result<(), Failure> {
        while !data.is_empty() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ctx.timeout().into());
            }
            self.stream
                .set_write_timeout(Some(remaining))
                .map_err(|e| ctx.io(e))?;
            // SAFETY: the pointer and length describe the live slice `data`; the fd is owned by
            // `self.stream` for the duration of the call.
            let n = unsafe {
                libc::send(
                    self.stream.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    _ if is_timeout(&e) => return Err(ctx.timeout().into()),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                        return Err(Failure::Stale(e))
                    }
                    _ => return Err(ctx.io(e).into()),
                }
            }
            data = &data[n as usize..];
        }
        Ok(())
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Parsed response head.
struct Head {
    status: u16,
    minor_version: u8,
    headers: Vec<(String, String)>,
}

/// Sends `raw` and reads one complete response. Returns it and whether the connection may be reused.
pub(super) fn exchange(
    conn: &mut Conn,
    raw: &[u8],
    deadline: Instant,
    ctx: &Ctx,
) -> Result<(Response, bool), Failure> {
    conn.write_all(raw, deadline, ctx)?;
    let mut head = read_head(conn, deadline, ctx)?;
    // Interim 1xx answers carry no body; the real response follows.
    while (100..200).contains(&head.status) {
        head = read_head(conn, deadline, ctx).map_err(|f| match f {
            Failure::Stale(e) => Failure::Fatal(ctx.io(e)),
            other => other,
        })?;
    }
    let get = |name: &'static str| header_values(&head.headers, name);
    let connection: Vec<String> = get("connection")
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut keep_alive = if head.minor_version >= 1 {
        !connection.iter().any(|t| t == "close")
    } else {
        connection.iter().any(|t| t == "keep-alive")
    };
    let chunked = get("transfer-encoding")
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("chunked"));
    let lengths: Vec<&str> = get("content-length").collect();

    let body = if chunked {
        read_chunked(conn, deadline, ctx)?
    } else if let Some(first) = lengths.first() {
        if lengths.iter().any(|l| l.trim() != first.trim()) {
            return Err(ctx.malformed("conflicting Content-Length headers").into());
        }
        let n: usize = first
            .trim()
            .parse()
            .map_err(|_| ctx.malformed(format!("bad Content-Length {first:?}")))?;
        if n > MAX_BODY {
            return Err(ctx
                .malformed(format!("body of {n} bytes is too large"))
                .into());
        }
        conn.fill_to(n, deadline, ctx)?;
        let body = conn.pending()[..n].to_vec();
        conn.consume(n);
        body
    } else if head.status == 204 || head.status == 304 {
        Vec::new()
    } else {
        // No framing: the body runs until the server closes the connection.
        keep_alive = false;
        while let Fill::Data = conn.fill(deadline, ctx)? {
            if conn.pending().len() > MAX_BODY {
                return Err(ctx.malformed("body too large").into());
            }
        }
        let body = conn.pending().to_vec();
        conn.consume(body.len());
        body
    };
    Ok((
        Response {
            status: head.status,
            headers: head.headers,
            body,
        },
        keep_alive,
    ))
}

/// All values of header `name` (case-insensitive).
fn header_values<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Reads and parses a status line and headers. End-of-stream (or a reset) before the first byte means
/// the server closed a kept-alive connection: [`Failure::Stale`].
fn read_head(conn: &mut Conn, deadline: Instant, ctx: &Ctx) -> Result<Head, Failure> {
    loop {
        if !conn.pending().is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(conn.pending()) {
                Ok(httparse::Status::Complete(n)) => {
                    let head = Head {
                        status: parsed.code.unwrap_or_default(),
                        minor_version: parsed.version.unwrap_or_default(),
                        headers: parsed
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_string(),
                                    String::from_utf8_lossy(h.value).trim().to_string(),
                                )
                            })
                            .collect(),
                    };
                    conn.consume(n);
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) if conn.pending().len() > MAX_HEAD => {
                    return Err(ctx.malformed("response head too large").into())
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(ctx.malformed(format!("bad response head: {e}")).into()),
            }
        }
        let empty = conn.pending().is_empty();
        match conn.fill(deadline, ctx) {
            Ok(Fill::Data) => {}
            Ok(Fill::Eof) if empty => {
                return Err(Failure::Stale(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection without answering",
                )))
            }
            Ok(Fill::Eof) => {
                return Err(ctx
                    .malformed("connection closed inside the response head")
                    .into())
            }
            Err(Failure::Fatal(FirecrackerError::Io { source, .. }))
                if empty && source.kind() == io::ErrorKind::ConnectionReset =>
            {
                return Err(Failure::Stale(source))
            }
            Err(e) => return Err(e),
        }
    }
}

/// Decodes a chunked body: `<hex size>[;ext]\r\n<data>\r\n` ... `0\r\n<trailers>\r\n`.
fn read_chunked(conn: &mut Conn, deadline: Instant, ctx: &Ctx) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    loop {
        let line = conn.line(deadline, ctx)?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| ctx.malformed(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailers (ignored) up to the empty line.
            while !conn.line(deadline, ctx)?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(ctx.malformed("chunked body too large").into());
        }
        conn.fill_to(size + 2, deadline, ctx)?;
        if &conn.pending()[size..size + 2] != b"\r\n" {
            return Err(ctx.malformed("chunk data not followed by CRLF").into());
        }
        body.extend_from_slice(&conn.pending()[..size]);
        conn.consume(size + 2);
    }
}
