//! A small blocking HTTP/1.1 client over Firecracker's API Unix socket: no async runtime, one request at
//! a time. Requests carry `Host` and `Content-Length`; responses are parsed properly (status line,
//! headers, `Content-Length` or chunked bodies, close-delimited bodies), the connection is kept alive and
//! re-opened when the server closed it, and every request has an overall deadline.

mod wire;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::api::ApiRequest;
use super::FirecrackerError;
use wire::{exchange, Conn, Ctx, Failure};

/// Default limit for one request (send plus complete response). `InstanceStart` loads the kernel
/// synchronously, so this is generous.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response head (status line plus headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest response body accepted: Firecracker's bodies are small JSON documents.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// The HTTP methods Firecracker's API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET.
    Get,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
}

impl Method {
    /// The method as it appears on the request line.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A complete HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    /// Status code.
    pub status: u16,
    /// Header names (as sent) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The decoded body (chunked encoding removed).
    pub body: Vec<u8>,
}

impl Response {
    /// True for 2xx statuses.
    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A blocking client for one Firecracker API socket. Keeps one connection open between requests.
#[derive(Debug)]
pub(crate) struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
    conn: Option<Conn>,
}

impl ApiClient {
    /// A client for the API socket at `socket`, with [`DEFAULT_TIMEOUT`]. Connects lazily.
    pub(crate) fn new(socket: impl Into<PathBuf>) -> Self {
        ApiClient {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
            conn: None,
        }
    }

    /// Sets the limit for each request (sending it and reading the whole response).
    pub(crate) fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends a typed request and expects a 2xx answer.
    pub(crate) fn send<R: ApiRequest>(
        &mut self,
        request: &R,
    ) -> Result<Response, FirecrackerError> {
        let path = request.path();
        let body = serde_json::to_vec(request).map_err(|source| FirecrackerError::Encode {
            method: R::METHOD,
            path: path.clone(),
            source,
        })?;
        self.call(R::METHOD, &path, Some(&body))
    }

    /// GETs `path` and decodes the JSON answer.
    #[cfg(test)]
    pub(crate) fn get_json<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
    ) -> Result<T, FirecrackerError> {
        let resp = self.call(Method::Get, path, None)?;
        serde_json::from_slice(&resp.body).map_err(|source| FirecrackerError::Decode {
            method: Method::Get,
            path: path.to_string(),
            source,
        })
    }

    /// Sends a request and maps a non-2xx answer to [`FirecrackerError::Api`] with the API's
    /// `fault_message`.
    pub(crate) fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, FirecrackerError> {
        let resp = self.request(method, path, body)?;
        if resp.is_success() {
            return Ok(resp);
        }
        Err(FirecrackerError::Api {
            method,
            path: path.to_string(),
            status: resp.status,
            fault_message: fault_message(&resp.body),
        })
    }

    /// Sends a request and returns whatever the server answered, whatever the status.
    ///
    /// A kept-alive connection that the server has closed in the meantime shows up as a failed write or
    /// as end-of-stream before any response byte; then the request is sent once more on a new
    /// connection (the server cannot have acted on it).
    pub(crate) fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, FirecrackerError> {
        let raw = encode_request(method, path, body)?;
        let deadline = Instant::now() + self.timeout;
        let ctx = Ctx {
            method,
            path,
            timeout: self.timeout,
        };
        loop {
            let reused = self.conn.is_some();
            let mut conn = match self.conn.take() {
                Some(c) => c,
                None => Conn::connect(&self.socket)?,
            };
            match exchange(&mut conn, &raw, deadline, &ctx) {
                Ok((resp, keep_alive)) => {
                    if keep_alive {
                        self.conn = Some(conn);
                    }
                    return Ok(resp);
                }
                Err(Failure::Stale(_)) if reused => continue,
                Err(Failure::Stale(source)) => return Err(ctx.io(source)),
                Err(Failure::Fatal(e)) => return Err(e),
            }
        }
    }
}

/// The API's `fault_message`, or the raw body when the server sent something else.
fn fault_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Fault {
        fault_message: String,
    }
    match serde_json::from_slice::<Fault>(body) {
        Ok(f) => f.fault_message,
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                "(empty response body)".to_string()
            } else {
                text.chars().take(1024).collect()
            }
        }
    }
}

/// Builds the request bytes. The path goes on the request line verbatim, so it must be a plain absolute
/// path: no spaces or control characters that could split the request.
fn encode_request(
    method: Method,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Vec<u8>, FirecrackerError> {
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FirecrackerError::InvalidPath {
            path: path.to_string(),
        });
    }
    let body = body.unwrap_or_default();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    Ok(raw)
}
