//! The multiplexer: one upstream connection to the guest agent, any number of local clients.
//!
//! Each client speaks the ordinary protocol as if it were alone: it greets with `SYNC` + `Hello{nonce}`
//! and gets `SYNC` + the agent's `Ready` with its own nonce back (the owner greeted the agent once, for
//! everybody). After that every frame a client sends is forwarded under a fresh upstream request id, and
//! every frame the agent sends is forwarded to the client that owns its id, under the client's id. So
//! no two clients can collide on an id and no client sees another's output. A client that goes away
//! gets its unfinished requests cancelled in the guest (what the agent does for a host that leaves).
//! When the upstream ends (the VM stopped), every client is disconnected and [`serve`] returns.
//!
//! One thread reads the upstream and writes to clients; a client that does not read its output for
//! [`CLIENT_WRITE_TIMEOUT`] is dropped, so one stuck client cannot stall the others for longer.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use smolvm_protocol::{with_sync, Decoder, Frame, FrameType, Hello, ProtocolError, Ready, Request};

/// A client that does not take its output for this long is disconnected.
pub const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A client must greet within this long after connecting.
pub const CLIENT_GREETING_TIMEOUT: Duration = Duration::from_secs(60);
/// Writes to the agent that block this long mean the guest stopped reading: the owner gives up.
const UPSTREAM_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read at once.
const READ_CHUNK: usize = 256 * 1024;

/// Why [`serve`] returned.
#[derive(Debug, thiserror::Error)]
pub enum ServeEnd {
    /// The agent's connection closed (the VMM exited, or the guest went away).
    #[error("the agent channel closed")]
    UpstreamClosed,
    /// The agent's connection failed or lost its frame boundaries.
    #[error("the agent channel failed")]
    Upstream(#[source] ProtocolError),
    /// Accepting clients failed.
    #[error("accepting clients on {} failed", path.display())]
    Accept {
        /// The listening socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

type ClientId = u64;

struct Client {
    out: Arc<Mutex<UnixStream>>,
    /// Client request id -> upstream request id, for its requests in flight.
    ids: HashMap<u32, u32>,
}

#[derive(Default)]
struct Routes {
    next_upstream: u32,
    next_client: ClientId,
    /// Upstream request id -> (client, client request id).
    by_upstream: HashMap<u32, (ClientId, u32)>,
    clients: HashMap<ClientId, Client>,
    closed: bool,
}

struct Shared {
    upstream: Mutex<UnixStream>,
    routes: Mutex<Routes>,
    ready: Ready,
}

/// Serves clients accepted on `listener` over `upstream`, an agent connection already greeted
/// (`ready` is the agent's answer, `decoder` holds whatever followed it). Returns when the upstream
/// ends; every client is disconnected then.
pub fn serve(
    upstream: UnixStream,
    ready: Ready,
    decoder: Decoder,
    listener: UnixListener,
) -> ServeEnd {
    let setup = || -> io::Result<(UnixStream, PathBuf)> {
        upstream.set_read_timeout(None)?;
        upstream.set_write_timeout(Some(UPSTREAM_WRITE_TIMEOUT))?;
        let path = listener
            .local_addr()?
            .as_pathname()
            .map(PathBuf::from)
            .unwrap_or_default();
        Ok((upstream.try_clone()?, path))
    };
    let (reader, path) = match setup() {
        Ok(v) => v,
        Err(e) => return ServeEnd::Upstream(ProtocolError::Io(e)),
    };
    let shared = Arc::new(Shared {
        upstream: Mutex::new(upstream),
        routes: Mutex::new(Routes::default()),
        ready,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let upstream_thread = {
        let (shared, stop, path) = (Arc::clone(&shared), Arc::clone(&stop), path.clone());
        std::thread::spawn(move || {
            let end = read_upstream(reader, decoder, &shared);
            stop.store(true, Ordering::SeqCst);
            // Wakes the accept below.
            let _ = UnixStream::connect(&path);
            end
        })
    };
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        match conn {
            Ok(stream) => {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || serve_client(&shared, stream));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_transient_accept_error(&e) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(source) => {
                // The owner cannot serve anyone: end the upstream so the reader thread ends too.
                let _ = lock(&shared.upstream).shutdown(Shutdown::Both);
                let _ = upstream_thread.join();
                return ServeEnd::Accept { path, source };
            }
        }
    }
    upstream_thread.join().unwrap_or(ServeEnd::UpstreamClosed)
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    // Out of descriptors or memory: clients will be served again once others leave.
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    )
}

/// The few errno values needed here (no libc dependency for four numbers; Linux values).
mod libc_errno {
    pub(super) const ENOMEM: i32 = 12;
    pub(super) const ENFILE: i32 = 23;
    pub(super) const EMFILE: i32 = 24;
    pub(super) const ENOBUFS: i32 = 105;
}

/// The upstream reader: forwards each agent frame to the client that owns its request id.
fn read_upstream(mut stream: UnixStream, mut dec: Decoder, shared: &Shared) -> ServeEnd {
    let end = 'read: loop {
        while let Some(item) = dec.next_frame() {
            match item {
                Ok(frame) => forward_down(shared, frame),
                // A newer agent's frame type: its client could not use it either.
                Err(ProtocolError::UnknownType { .. }) => {}
                Err(e) => break 'read ServeEnd::Upstream(e),
            }
        }
        match dec.read_from(&mut stream, READ_CHUNK) {
            Ok(0) => break ServeEnd::UpstreamClosed,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break ServeEnd::Upstream(ProtocolError::Io(e)),
        }
    };
    let clients: Vec<_> = {
        let mut routes = lock(&shared.routes);
        routes.closed = true;
        routes.by_upstream.clear();
        routes.clients.drain().map(|(_, c)| c.out).collect()
    };
    for out in clients {
        let _ = lock(&out).shutdown(Shutdown::Both);
    }
    end
}

/// Sends one agent frame to its client, under the client's request id.
fn forward_down(shared: &Shared, frame: Frame) {
    let (out, client_request) = {
        let mut routes = lock(&shared.routes);
        let Some(&(client, client_request)) = routes.by_upstream.get(&frame.request_id) else {
            // A reply to a request whose client left (it was cancelled), or a stray frame.
            return;
        };
        if is_last_frame(frame.frame_type) {
            routes.by_upstream.remove(&frame.request_id);
            if let Some(c) = routes.clients.get_mut(&client) {
                c.ids.remove(&client_request);
            }
        }
        match routes.clients.get(&client) {
            Some(c) => (Arc::clone(&c.out), client_request),
            None => return,
        }
    };
    let bytes = match Frame::new(frame.frame_type, client_request, frame.payload).encode() {
        Ok(b) => b,
        Err(_) => return, // it decoded, so it encodes; nothing sensible to do otherwise
    };
    let mut out = lock(&out);
    if out.write_all(&bytes).is_err() {
        // Too slow or gone: its reader thread sees the shutdown and cancels its requests.
        let _ = out.shutdown(Shutdown::Both);
    }
}

/// The last frame of a request: after it, the request id is free.
fn is_last_frame(t: FrameType) -> bool {
    matches!(t, FrameType::Exit | FrameType::Done | FrameType::Error)
}

/// Frames that continue a request (never start one): forwarded only for a known request id.
fn continues_request(t: FrameType) -> bool {
    matches!(
        t,
        FrameType::Stdin | FrameType::FileData | FrameType::Cancel
    )
}

/// One client: greeting, then its frames upstream; on its end, its requests are cancelled.
fn serve_client(shared: &Shared, stream: UnixStream) {
    let Ok(out) = stream.try_clone() else {
        return;
    };
    let out = Arc::new(Mutex::new(out));
    let mut reader = stream;
    let Some(mut greeted) = greet_client(&mut reader, &out) else {
        let _ = reader.shutdown(Shutdown::Both);
        return;
    };
    let id = {
        let mut routes = lock(&shared.routes);
        if routes.closed {
            let _ = reader.shutdown(Shutdown::Both);
            return;
        }
        let id = routes.next_client;
        routes.next_client += 1;
        routes.clients.insert(
            id,
            Client {
                out: Arc::clone(&out),
                ids: HashMap::new(),
            },
        );
        id
    };
    // Registered before the client sees Ready, so no reply can arrive for an unknown client.
    if send_ready(shared, &greeted, &out).is_ok() {
        forward_up_loop(shared, id, &mut reader, &mut greeted);
    }
    let _ = reader.shutdown(Shutdown::Both);
    drop_client(shared, id);
}

/// What the greeting found: the client's nonce, and the decoder positioned after its `Hello`.
struct Greeted {
    dec: Decoder,
    nonce: u64,
}

/// Reads until the client's `SYNC` + `Hello`; `None` if it leaves or never greets.
fn greet_client(reader: &mut UnixStream, out: &Arc<Mutex<UnixStream>>) -> Option<Greeted> {
    reader
        .set_read_timeout(Some(CLIENT_GREETING_TIMEOUT))
        .ok()?;
    lock(out)
        .set_write_timeout(Some(CLIENT_WRITE_TIMEOUT))
        .ok()?;
    let mut dec = Decoder::hunting();
    loop {
        while let Some(item) = dec.next_frame() {
            if let Ok(f) = item {
                if f.frame_type == FrameType::Hello {
                    if let Ok(hello) = f.parse_json::<Hello>("hello") {
                        reader.set_read_timeout(None).ok()?;
                        return Some(Greeted {
                            dec,
                            nonce: hello.nonce,
                        });
                    }
                }
            }
            // Anything before the greeting is not for us.
            dec.hunt();
        }
        match dec.read_from(reader, READ_CHUNK) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

fn send_ready(shared: &Shared, greeted: &Greeted, out: &Arc<Mutex<UnixStream>>) -> io::Result<()> {
    let ready = Ready {
        nonce: Some(greeted.nonce),
        ..shared.ready.clone()
    };
    let bytes = Frame::json(FrameType::Ready, 0, &ready)
        .and_then(|f| with_sync(&f))
        .map_err(io::Error::other)?;
    lock(out).write_all(&bytes)
}

/// Forwards the client's frames upstream under fresh request ids until it leaves or breaks framing.
fn forward_up_loop(
    shared: &Shared,
    client: ClientId,
    reader: &mut UnixStream,
    greeted: &mut Greeted,
) {
    let dec = &mut greeted.dec;
    loop {
        while let Some(item) = dec.next_frame() {
            match item {
                Ok(frame) => {
                    if !forward_up(shared, client, frame) {
                        return;
                    }
                }
                Err(ProtocolError::UnknownType { .. }) => {}
                // A client that loses its frame boundaries cannot be understood any more.
                Err(_) => return,
            }
        }
        match dec.read_from(reader, READ_CHUNK) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Sends one client frame upstream; false if the upstream is gone.
fn forward_up(shared: &Shared, client: ClientId, frame: Frame) -> bool {
    // Connection-level frames (repeated greetings) are the owner's business, not the agent's.
    if frame.request_id == 0 {
        return true;
    }
    let upstream_id = {
        let mut routes = lock(&shared.routes);
        if routes.closed {
            return false;
        }
        let known = routes
            .clients
            .get(&client)
            .and_then(|c| c.ids.get(&frame.request_id).copied());
        match known {
            Some(id) => id,
            // Stdin or data for a request that already finished (or never was): nobody wants it.
            None if continues_request(frame.frame_type) => return true,
            None => {
                let id = next_upstream_id(&mut routes);
                routes.by_upstream.insert(id, (client, frame.request_id));
                if let Some(c) = routes.clients.get_mut(&client) {
                    c.ids.insert(frame.request_id, id);
                }
                id
            }
        }
    };
    send_up(
        shared,
        Frame::new(frame.frame_type, upstream_id, frame.payload),
    )
}

fn next_upstream_id(routes: &mut Routes) -> u32 {
    loop {
        routes.next_upstream = routes.next_upstream.wrapping_add(1);
        let id = routes.next_upstream;
        if id != 0 && !routes.by_upstream.contains_key(&id) {
            return id;
        }
    }
}

fn send_up(shared: &Shared, frame: Frame) -> bool {
    let Ok(bytes) = frame.encode() else {
        return true; // it decoded within the limits, so this does not happen; skip it if it does
    };
    let mut up = lock(&shared.upstream);
    if up.write_all(&bytes).is_err() {
        // A partial frame broke the stream: end it, so the reader thread disconnects everybody.
        let _ = up.shutdown(Shutdown::Both);
        return false;
    }
    true
}

/// Forgets a client and cancels its unfinished requests in the guest.
fn drop_client(shared: &Shared, client: ClientId) {
    let unfinished: Vec<u32> = {
        let mut routes = lock(&shared.routes);
        let Some(c) = routes.clients.remove(&client) else {
            return;
        };
        let ids: Vec<u32> = c.ids.into_values().collect();
        for id in &ids {
            routes.by_upstream.remove(id);
        }
        ids
    };
    for id in unfinished {
        if let Ok(frame) = Request::Cancel.to_frame(id) {
            if !send_up(shared, frame) {
                return;
            }
        }
    }
}

/// Locks a mutex, ignoring poisoning: the data under these locks stays consistent between statements.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
#[path = "mux_tests.rs"]
mod tests;
