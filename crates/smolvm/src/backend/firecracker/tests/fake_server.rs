//! An in-process fake Firecracker API server on a Unix socket: it records every request (with the
//! index of the connection it came on) and answers what a handler says.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub(super) struct Recorded {
    /// Index of the connection (0 for the first accepted one).
    pub conn: usize,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`null` when empty).
    pub(super) fn json(&self) -> serde_json::Value {
        if self.body.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// What to answer.
pub(super) enum Reply {
    /// Write these bytes and keep reading requests on the connection.
    Raw(Vec<u8>),
    /// Write these bytes one at a time (exercises partial reads).
    Trickle(Vec<u8>),
    /// Write these bytes, then close the connection.
    RawThenClose(Vec<u8>),
    /// Never answer; hold the connection until the server stops.
    Hang,
}

impl Reply {
    /// Firecracker's answer to a successful PUT.
    pub(super) fn no_content() -> Reply {
        Reply::Raw(
            b"HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n".to_vec(),
        )
    }

    /// A JSON answer with a Content-Length.
    pub(super) fn json(status: u16, value: &serde_json::Value) -> Reply {
        let body = value.to_string();
        Reply::Raw(
            format!(
                "HTTP/1.1 {status} \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    }

    /// Firecracker's error answer.
    pub(super) fn fault(status: u16, message: &str) -> Reply {
        Reply::json(status, &serde_json::json!({ "fault_message": message }))
    }
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// The running server; stops when dropped.
pub(super) struct FakeServer {
    pub socket: PathBuf,
    requests: Arc<Mutex<Vec<Recorded>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl FakeServer {
    /// A server on a fresh temporary socket.
    pub(super) fn start(
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> FakeServer {
        let dir = tempfile::tempdir().unwrap();
        let mut server = FakeServer::start_at(&dir.path().join("api.sock"), handler);
        server._dir = Some(dir);
        server
    }

    /// A server that answers 204 to everything.
    pub(super) fn accepting() -> FakeServer {
        FakeServer::start(|_| Reply::no_content())
    }

    /// A server on `socket`.
    pub(super) fn start_at(
        socket: &Path,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> FakeServer {
        let listener = UnixListener::bind(socket).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (reqs, stop2) = (requests.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            let next = AtomicUsize::new(0);
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let conn = next.fetch_add(1, Ordering::SeqCst);
                let (reqs, stop, handler) = (reqs.clone(), stop2.clone(), handler.clone());
                std::thread::spawn(move || serve(stream, conn, &reqs, &stop, &*handler));
            }
        });
        FakeServer {
            socket: socket.to_path_buf(),
            requests,
            stop,
            accept: Some(accept),
            _dir: None,
        }
    }

    /// Everything received so far.
    pub(super) fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// `(method, path)` of everything received so far.
    pub(super) fn sequence(&self) -> Vec<(String, String)> {
        self.requests()
            .into_iter()
            .map(|r| (r.method, r.path))
            .collect()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Serves requests on one connection until the client closes it.
fn serve(
    mut stream: UnixStream,
    conn: usize,
    reqs: &Mutex<Vec<Recorded>>,
    stop: &AtomicBool,
    handler: &Handler,
) {
    let mut buf = Vec::new();
    loop {
        let Some(req) = read_request(&mut stream, &mut buf, conn) else {
            return;
        };
        reqs.lock().unwrap().push(req.clone());
        match handler(&req) {
            Reply::Raw(bytes) => {
                if stream.write_all(&bytes).is_err() {
                    return;
                }
            }
            Reply::Trickle(bytes) => {
                for b in bytes {
                    if stream.write_all(&[b]).is_err() {
                        return;
                    }
                }
            }
            Reply::RawThenClose(bytes) => {
                let _ = stream.write_all(&bytes);
                return;
            }
            Reply::Hang => {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return;
            }
        }
    }
}

/// Reads one request (head plus Content-Length body); `None` at end of stream.
fn read_request(stream: &mut UnixStream, buf: &mut Vec<u8>, conn: usize) -> Option<Recorded> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = req.parse(buf) {
            let headers: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).to_string(),
                    )
                })
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.trim().parse().unwrap())
                .unwrap_or(0);
            let (method, path) = (req.method?.to_string(), req.path?.to_string());
            while buf.len() < n + len {
                if !fill(stream, buf) {
                    return None;
                }
            }
            let body = buf[n..n + len].to_vec();
            buf.drain(..n + len);
            return Some(Recorded {
                conn,
                method,
                path,
                headers,
                body,
            });
        }
        if !fill(stream, buf) {
            return None;
        }
    }
}

fn fill(stream: &mut UnixStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}
