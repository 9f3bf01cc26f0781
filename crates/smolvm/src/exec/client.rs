//! The connection: handshake, the demultiplexing reader thread, and per-request calls.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smolvm_protocol::{
    Decoder, EnvSet, EnvUnset, Frame, FrameType, ProtocolError, Ready, Reply, Request,
};

use super::greeting::handshake;
use super::ExecError;
use crate::backend::AgentEndpoint;

/// How long a quick request (ping, env, power-off, the end of a file transfer) may take.
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A write to the agent that blocks this long means the guest stopped reading: the connection is
/// declared dead (a partial frame cannot be taken back).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between connection attempts while the VM is still booting.
const CONNECT_RETRY: Duration = Duration::from_millis(10);
/// Bytes read from the socket at once.
pub(super) const READ_CHUNK: usize = 256 * 1024;
/// Longest `OK <port>` line accepted from Firecracker's vsock proxy.
const MAX_VSOCK_REPLY: usize = 64;

/// Frames for pending requests, by request id; `dead` once the connection ended.
#[derive(Default)]
struct Pending {
    calls: HashMap<u32, Sender<Frame>>,
    dead: Option<Arc<ProtocolError>>,
    closed: bool,
}

struct Shared {
    writer: Mutex<UnixStream>,
    pending: Mutex<Pending>,
    next_id: AtomicU32,
}

/// A connection to a guest agent. Cheap to share: every method takes `&self`, and any number of threads
/// may run requests at once on the one connection.
pub struct AgentClient {
    shared: Arc<Shared>,
    ready: Ready,
    stream: UnixStream,
    reader: Option<JoinHandle<()>>,
    request_timeout: Duration,
}

// Shared across threads (and, later, across the Python binding's threads).
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<AgentClient>();
};

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

pub(super) fn timeout_error(operation: &str, after: Duration) -> ExecError {
    ExecError::Timeout {
        operation: operation.to_string(),
        after,
    }
}

impl AgentClient {
    /// Connects to the agent behind `endpoint` and waits for its `Ready` message, retrying while the
    /// socket is not there yet or the guest agent does not listen yet, for at most `timeout` in all.
    pub fn connect(endpoint: &AgentEndpoint, timeout: Duration) -> Result<AgentClient, ExecError> {
        let deadline = Instant::now() + timeout;
        loop {
            match Self::try_connect(endpoint, deadline) {
                Ok(stream) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match Self::from_stream(stream, left.max(Duration::from_millis(1))) {
                        // QEMU reset a connection before the greeting finished (seen right after a
                        // boot, with TAP networking, under load): a new connection greets again.
                        Err(ExecError::AgentDisconnected { .. }) if Instant::now() < deadline => {
                            tracing::debug!(
                                "agent connection reset during the greeting; reconnecting"
                            );
                            std::thread::sleep(CONNECT_RETRY);
                        }
                        other => return other,
                    }
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(match e {
                        // Keep the real cause if there is one; a plain "not yet" becomes a timeout.
                        ExecError::Connect { .. } | ExecError::VsockHandshake { .. } => e,
                        _ => timeout_error("connecting to the guest agent", timeout),
                    });
                }
                Err(_) => std::thread::sleep(CONNECT_RETRY),
            }
        }
    }

    /// One attempt: connect, and for Firecracker do the `CONNECT <port>` handshake.
    fn try_connect(endpoint: &AgentEndpoint, deadline: Instant) -> Result<UnixStream, ExecError> {
        let path = endpoint.path();
        let connect_err = |source| ExecError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let mut stream = UnixStream::connect(path).map_err(connect_err)?;
        let AgentEndpoint::FirecrackerVsock { port, .. } = endpoint else {
            return Ok(stream);
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        stream.set_read_timeout(Some(left)).map_err(connect_err)?;
        stream.set_write_timeout(Some(left)).map_err(connect_err)?;
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .map_err(connect_err)?;
        // Byte by byte: whatever follows the newline is the agent's, and must stay in the socket.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        let mut source = None;
        while line.len() < MAX_VSOCK_REPLY {
            match stream.read(&mut byte) {
                Ok(0) => break,
                Ok(_) if byte[0] == b'\n' => {
                    if line.starts_with(b"OK ") {
                        return Ok(stream);
                    }
                    break;
                }
                Ok(_) => line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Firecracker closes (or resets) the connection when no guest listens on the port.
                Err(e) => {
                    source = Some(e);
                    break;
                }
            }
        }
        Err(ExecError::VsockHandshake {
            path: path.to_path_buf(),
            port: *port,
            response: String::from_utf8_lossy(&line).into_owned(),
            source,
        })
    }

    /// Takes over an already connected stream (for tests and custom transports): greets the agent
    /// (`SYNC` + `Hello` with a random nonce, re-sent every [`super::HELLO_RESEND`] until answered), skips
    /// whatever precedes `SYNC` + the `Ready` with our nonce (output meant for an earlier host), checks
    /// the protocol version and starts the reader thread. All within `timeout`.
    pub fn from_stream(stream: UnixStream, timeout: Duration) -> Result<AgentClient, ExecError> {
        let io_err = |e: io::Error| ExecError::Protocol(ProtocolError::Io(e));
        let (ready, decoder) = handshake(&stream, timeout)?;
        stream.set_read_timeout(None).map_err(io_err)?;
        stream
            .set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(io_err)?;
        let shared = Arc::new(Shared {
            writer: Mutex::new(stream.try_clone().map_err(io_err)?),
            pending: Mutex::new(Pending::default()),
            // Start somewhere random: a frame left over from an earlier connection never matches.
            next_id: AtomicU32::new(rand::random::<u32>() >> 1 | 1),
        });
        let reader_stream = stream.try_clone().map_err(io_err)?;
        let reader_shared = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name("smolvm-agent-reader".into())
            .spawn(move || read_loop(reader_stream, decoder, &reader_shared))
            .map_err(io_err)?;
        Ok(AgentClient {
            shared,
            ready,
            stream,
            reader: Some(reader),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// The agent's `Ready` message (protocol and agent version, boot stage timestamps).
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// Sets how long quick requests may take (default [`DEFAULT_REQUEST_TIMEOUT`]).
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.request_timeout = timeout;
    }

    /// How long quick requests may take.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Checks that the agent answers.
    pub fn ping(&self) -> Result<(), ExecError> {
        self.simple(&Request::Ping, "ping").map(drop)
    }

    /// Asks the guest to power off. Returns once the agent acknowledged; the connection ends soon after.
    pub fn power_off(&self) -> Result<(), ExecError> {
        self.simple(&Request::PowerOff, "power-off").map(drop)
    }

    /// Sets (adds or replaces) persisted environment variables: written to
    /// `/etc/profile.d/smolvm_env.sh`, so login shells and `run` see them. Keys must be shell
    /// identifiers. A large set is sent in several batches (each applied atomically).
    pub fn set_env_vars(&self, vars: &BTreeMap<String, String>) -> Result<(), ExecError> {
        EnvSet { vars: vars.clone() }
            .validate()
            .map_err(ExecError::InvalidRequest)?;
        for batch in smolvm_protocol::env_batches(vars) {
            self.simple(&Request::EnvSet(EnvSet { vars: batch }), "env set")?;
        }
        Ok(())
    }

    /// Removes persisted environment variables; absent keys are ignored.
    pub fn unset_env_vars(&self, keys: &[String]) -> Result<(), ExecError> {
        let req = EnvUnset {
            keys: keys.to_vec(),
        };
        req.validate().map_err(ExecError::InvalidRequest)?;
        self.simple(&Request::EnvUnset(req), "env unset").map(drop)
    }

    /// The persisted environment variables, exactly as set.
    pub fn list_env_vars(&self) -> Result<BTreeMap<String, String>, ExecError> {
        let mut call = self.start()?;
        call.send(&Request::EnvList)?;
        let deadline = Instant::now() + self.request_timeout;
        let mut vars = BTreeMap::new();
        loop {
            match call.recv(deadline, "env list", self.request_timeout)? {
                Reply::EnvVars(v) => vars.extend(v.vars),
                Reply::Done(_) => return Ok(vars),
                Reply::Error(e) => {
                    return Err(ExecError::Agent {
                        kind: e.kind,
                        message: e.message,
                    })
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// Gives a guest restored from a snapshot its new identity (entropy + reseed, clock, host name,
    /// network; see [`smolvm_protocol::Identity`]) and waits until the agent applied it.
    pub fn set_identity(&self, identity: &smolvm_protocol::Identity) -> Result<(), ExecError> {
        identity.validate().map_err(ExecError::InvalidRequest)?;
        self.simple(&Request::Identity(identity.clone()), "identity")
            .map(drop)
    }

    /// Sends a one-frame request and waits for its one-frame answer (`Done`, `EnvVars`), mapping
    /// `Error` to [`ExecError::Agent`].
    fn simple(&self, req: &Request, what: &str) -> Result<Reply, ExecError> {
        let mut call = self.start()?;
        call.send(req)?;
        let deadline = Instant::now() + self.request_timeout;
        match call.recv(deadline, what, self.request_timeout)? {
            Reply::Error(e) => Err(ExecError::Agent {
                kind: e.kind,
                message: e.message,
            }),
            reply => Ok(reply),
        }
    }

    /// Registers a new request id.
    pub(super) fn start(&self) -> Result<Call<'_>, ExecError> {
        let (tx, rx) = channel();
        let mut pending = lock(&self.shared.pending);
        if pending.closed {
            return Err(ExecError::disconnected(pending.dead.clone()));
        }
        let id = loop {
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 && !pending.calls.contains_key(&id) {
                break id;
            }
        };
        pending.calls.insert(id, tx);
        Ok(Call {
            client: self,
            id,
            rx,
            finished: false,
        })
    }

    fn send_frame(&self, frame: &Frame) -> Result<(), ExecError> {
        let bytes = frame.encode().map_err(ExecError::InvalidRequest)?;
        let mut w = lock(&self.shared.writer);
        if let Err(e) = w.write_all(&bytes) {
            // A partial frame broke the stream: end the connection so every caller learns it.
            let _ = w.shutdown(Shutdown::Both);
            let mut pending = lock(&self.shared.pending);
            let err = Arc::new(ProtocolError::Io(e));
            pending.dead.get_or_insert_with(|| Arc::clone(&err));
            return Err(ExecError::disconnected(Some(err)));
        }
        Ok(())
    }
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        // Ends the reader thread (its read returns EOF) and tells the agent we are gone.
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// Locks a mutex, ignoring poisoning: the data under these locks stays consistent between statements.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The reader thread: hands each frame to its request; at the end of the stream, fails them all.
fn read_loop(mut stream: UnixStream, mut dec: Decoder, shared: &Shared) {
    let end = 'read: loop {
        while let Some(item) = dec.next_frame() {
            match item {
                Ok(frame) => {
                    let id = frame.request_id;
                    let mut pending = lock(&shared.pending);
                    // Frames of requests nobody waits for any more (or never did) are dropped.
                    let gone = pending.calls.get(&id).map(|tx| tx.send(frame).is_err());
                    if gone == Some(true) {
                        pending.calls.remove(&id);
                    }
                }
                // A newer agent's frame type: skip it.
                Err(ProtocolError::UnknownType { .. }) => {}
                // The agent's output never loses its frame boundaries after Ready.
                Err(e) => break 'read e,
            }
        }
        match dec.read_from(&mut stream, READ_CHUNK) {
            Ok(0) => break ProtocolError::Io(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break ProtocolError::Io(e),
        }
    };
    let mut pending = lock(&shared.pending);
    pending.closed = true;
    pending.dead.get_or_insert(Arc::new(end));
    // Dropping the senders wakes every waiting call with "disconnected".
    pending.calls.clear();
}

pub(super) fn unexpected(reply: &Reply) -> ExecError {
    let frame_type = match reply.to_frame(0) {
        Ok(f) => f.frame_type,
        Err(_) => FrameType::Error,
    };
    ExecError::Protocol(ProtocolError::Unexpected { frame_type })
}

/// One request in flight. Dropping it unregisters the id and, unless the request finished, tells the
/// agent to cancel it (so a command whose caller gave up does not run on).
pub(super) struct Call<'a> {
    pub client: &'a AgentClient,
    pub id: u32,
    rx: Receiver<Frame>,
    finished: bool,
}

impl Call<'_> {
    /// Sends a frame of this request.
    pub(super) fn send(&self, req: &Request) -> Result<(), ExecError> {
        let frame = req.to_frame(self.id).map_err(ExecError::InvalidRequest)?;
        self.client.send_frame(&frame)
    }

    /// Sends a raw data frame of this request without copying through [`Request`].
    pub(super) fn send_raw(
        &self,
        frame_type: FrameType,
        payload: Vec<u8>,
    ) -> Result<(), ExecError> {
        self.client
            .send_frame(&Frame::new(frame_type, self.id, payload))
    }

    /// Waits for the next frame of this request until `deadline`. `what` and `limit` describe the
    /// timeout error.
    pub(super) fn recv(
        &mut self,
        deadline: Instant,
        what: &str,
        limit: Duration,
    ) -> Result<Reply, ExecError> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.try_recv_for(wait)? {
            Some(r) => Ok(r),
            None => Err(timeout_error(what, limit)),
        }
    }

    /// Waits up to `wait` for the next frame; `None` if none came.
    pub(super) fn try_recv_for(&mut self, wait: Duration) -> Result<Option<Reply>, ExecError> {
        let frame = match self.rx.recv_timeout(wait) {
            Ok(f) => f,
            Err(RecvTimeoutError::Timeout) => return Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                self.finished = true;
                let dead = lock(&self.client.shared.pending).dead.clone();
                return Err(ExecError::disconnected(dead));
            }
        };
        let reply = Reply::from_frame(frame).map_err(ExecError::Protocol)?;
        if matches!(reply, Reply::Exit(_) | Reply::Done(_) | Reply::Error(_)) {
            self.finished = true;
        }
        Ok(Some(reply))
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        lock(&self.client.shared.pending).calls.remove(&self.id);
        if !self.finished {
            let _ = self.send(&Request::Cancel);
        }
    }
}
