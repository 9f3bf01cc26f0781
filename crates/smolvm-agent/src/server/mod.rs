//! The agent's request server: serves a channel (the virtio-serial port under QEMU, for the life of the
//! agent and any number of hosts one after the other; an accepted vsock connection under Firecracker).
//!
//! One thread (the caller's) reads frames and dispatches them. A `Hello` with a new nonce is a new host:
//! the previous host's requests are cancelled and the host gets `SYNC` + `Ready` (see
//! [`smolvm_protocol`]'s greeting rules). Quick requests (ping, env, power-off) are
//! answered inline; commands and file transfers run on their own threads, so requests are served
//! concurrently. Every frame goes out through [`Out`], whose lock keeps frames from interleaving. Hostile
//! input never crashes the agent: a bad frame is answered with an `Error` frame, and only a broken byte
//! stream (a bad length) makes the server skip input up to the next `SYNC`.
//!
//! The server must not share a process with a `waitpid(-1)` reaper (that would steal the exit status of
//! the commands it waits for): in the default image PID 1 reaps and the server runs in a child process.

mod env;
mod exec;
mod files;
mod out;
mod reaper;
pub(crate) mod warm;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smolvm_protocol::limits::MAX_IN_FLIGHT;
use smolvm_protocol::{
    env_batches, with_sync, Decoder, Done, EnvVars, ErrorKind, ErrorReply, Frame, FrameType, Hello,
    ProtocolError, Ready, Reply, Request,
};

pub(crate) use out::{Out, Writer};

/// What the server needs from PID 1.
pub struct Hooks {
    /// Sync disks and power the machine off; called after the host got its `Done` for `PowerOff`.
    pub power_off: fn() -> !,
}

/// Paths the server uses; [`Config::default`] is the guest's, tests point them into a temp dir.
#[derive(Debug, Clone)]
pub struct Config {
    /// The login-shell profile script holding the persisted variables, `export KEY='value'` per line.
    pub profile_path: PathBuf,
    /// The machine-readable copy of the persisted variables (a JSON object), the source of truth for
    /// `list`.
    pub env_json_path: PathBuf,
    /// The shell that runs shell-string commands as `<shell> -lc <command>`.
    pub shell: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            profile_path: "/etc/profile.d/smolvm_env.sh".into(),
            env_json_path: "/etc/smolvm/env.json".into(),
            shell: "/bin/sh".into(),
        }
    }
}

/// `PATH` for commands when the agent itself has none (PID 1 starts with an almost empty environment).
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Frames buffered per request between the reader and the request's thread; bounds guest memory under
/// a fast upload (a full buffer pauses reading, and the request's thread always makes progress).
const INBOX_FRAMES: usize = 16;
/// How long `serve` waits at disconnect for request threads to notice the cancellation.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// A frame for a running request, from the reader to the request's thread.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// Stdin bytes (empty: EOF).
    Stdin(Vec<u8>),
    /// Upload content.
    FileData(Vec<u8>),
    /// The host cancelled, or disconnected.
    Cancel,
    /// A later frame of this request was malformed: stop and answer with this error.
    Abort(ErrorReply),
    /// The command's output pump finished (exec only; sent by the pump thread).
    Finished(io::Result<std::process::ExitStatus>),
}

/// Requests in flight: request id -> inbox of its thread.
type Routes = Arc<Mutex<HashMap<u32, SyncSender<Inbound>>>>;

/// What a request's thread gets.
pub(crate) struct Ctx {
    /// Its request id.
    pub id: u32,
    /// The channel's writer, for the epoch (host) this request belongs to.
    pub out: Arc<Out>,
    /// Frames for this request.
    pub inbox: Receiver<Inbound>,
    /// A sender into its own inbox (the exec pump reports through it).
    pub inbox_tx: SyncSender<Inbound>,
    /// Server paths.
    pub config: Arc<Config>,
    routes: Routes,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // The request is over: later frames for its id are stale and ignored.
        if let Ok(mut r) = self.routes.lock() {
            r.remove(&self.id);
        }
    }
}

/// Bytes read from the channel at once.
const READ_CHUNK: usize = 64 * 1024;

/// Where the server's input comes from.
pub(crate) trait Source {
    /// Reads more input into `dec` (and may tell it to [`Decoder::hunt`] when it knows that a partial
    /// frame will never be completed). `Ok(false)` ends the connection.
    fn fill(&mut self, dec: &mut Decoder) -> io::Result<bool>;
}

/// A connection that ends at EOF: an accepted vsock connection, or a socketpair in tests.
struct StreamSource(File);

impl Source for StreamSource {
    fn fill(&mut self, dec: &mut Decoder) -> io::Result<bool> {
        loop {
            match dec.read_from(&mut self.0, READ_CHUNK) {
                Ok(n) => return Ok(n > 0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_disconnect(&e) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Serves requests on the connection `chan` with the guest's default paths until the host disconnects
/// (`Ok(())`), greeting each `Hello` with a `Ready` made from `ready` (its nonce filled in). Returns an
/// error only if reading failed in a way that is not a plain disconnect.
pub fn serve(chan: File, hooks: &Hooks, ready: &Ready) -> io::Result<()> {
    serve_with(chan, hooks, &Config::default(), ready)
}

/// [`serve`] with explicit paths.
pub fn serve_with(chan: File, hooks: &Hooks, config: &Config, ready: &Ready) -> io::Result<()> {
    let writer = Writer::new(chan.try_clone()?);
    serve_source(StreamSource(chan), &writer, hooks, config, ready)
}

/// Serves requests read from `source`, writing through `writer`, until the source ends. Input that
/// loses its frame boundaries is skipped up to the next `SYNC` (which precedes every `Hello`), so
/// garbage never ends the server.
pub(crate) fn serve_source(
    mut source: impl Source,
    writer: &Arc<Writer>,
    hooks: &Hooks,
    config: &Config,
    ready: &Ready,
) -> io::Result<()> {
    let mut server = Server {
        writer: Arc::clone(writer),
        out: writer.current(),
        routes: Arc::default(),
        config: Arc::new(config.clone()),
        hooks,
        ready: ready.clone(),
        nonce: None,
    };
    // Bytes before the first SYNC belong to nobody (a host that left, or garbage).
    let mut dec = Decoder::hunting();
    let result = loop {
        match source.fill(&mut dec) {
            Ok(true) => {}
            Ok(false) => break Ok(()),
            Err(e) => break Err(e),
        }
        let discarded = dec.discarded();
        while let Some(item) = dec.next_frame() {
            match item {
                Ok(frame) => server.handle(frame),
                Err(ProtocolError::UnknownType {
                    frame_type,
                    request_id,
                }) => server.out.error(
                    request_id,
                    ErrorKind::BadRequest,
                    format!("unknown frame type {frame_type}"),
                ),
                Err(e) => crate::log(&format!(
                    "host channel out of step ({e}): skipping input up to the next SYNC"
                )),
            }
        }
        if dec.discarded() > discarded && !dec.is_hunting() {
            crate::log(&format!(
                "host channel: skipped {} bytes up to a SYNC",
                dec.discarded() - discarded
            ));
        }
    };
    // The host is gone: no frame may be written any more, and nothing keeps running on its behalf.
    writer.close();
    let routes = Arc::clone(&server.routes);
    cancel_all(&routes);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while Instant::now() < deadline && routes.lock().map(|r| !r.is_empty()).unwrap_or(false) {
        std::thread::sleep(Duration::from_millis(10));
    }
    result
}

/// The state of one channel: who the host is, and its requests in flight.
struct Server<'a> {
    writer: Arc<Writer>,
    /// The current epoch's handle (inline answers; handed to new requests).
    out: Arc<Out>,
    /// Requests of the current host.
    routes: Routes,
    config: Arc<Config>,
    hooks: &'a Hooks,
    /// The greeting, without a nonce.
    ready: Ready,
    /// The nonce of the host greeted last; a `Hello` repeating it is answered already.
    nonce: Option<u64>,
}

impl Server<'_> {
    fn handle(&mut self, frame: Frame) {
        if frame.frame_type != FrameType::Hello {
            return dispatch(frame, &self.out, &self.routes, &self.config, self.hooks);
        }
        let hello: Hello = match frame.parse_json("hello") {
            Ok(h) => h,
            Err(e) => {
                crate::log(&format!("ignoring a malformed hello: {}", error_chain(&e)));
                return;
            }
        };
        if self.nonce == Some(hello.nonce) {
            return; // the host re-sent it before our Ready arrived
        }
        self.nonce = Some(hello.nonce);
        // A new host: the previous one's requests end, and none of their frames reach the new host.
        self.out = self.writer.next_epoch();
        cancel_all(&self.routes);
        self.routes = Arc::default();
        let ready = Ready {
            nonce: Some(hello.nonce),
            ..self.ready.clone()
        };
        match Frame::json(FrameType::Ready, 0, &ready).and_then(|f| with_sync(&f)) {
            Ok(bytes) => {
                self.out.send_bytes(&bytes);
            }
            Err(e) => crate::log(&format!("cannot encode Ready: {}", error_chain(&e))),
        }
    }
}

/// Tells every request in `routes` to stop (its answer is dropped if its epoch is over).
fn cancel_all(routes: &Routes) {
    let inboxes: Vec<SyncSender<Inbound>> = match routes.lock() {
        Ok(r) => r.values().cloned().collect(),
        Err(_) => Vec::new(),
    };
    for tx in inboxes {
        if let Err(TrySendError::Full(msg)) = tx.try_send(Inbound::Cancel) {
            // Its inbox is full (a command not reading its stdin): deliver once it has room, without
            // stalling the channel meanwhile.
            let _ = std::thread::Builder::new()
                .name("cancel".into())
                .spawn(move || tx.send(msg));
        }
    }
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

fn bad_request(e: &ProtocolError) -> ErrorReply {
    ErrorReply::new(ErrorKind::BadRequest, error_chain(e))
}

/// An error and its causes as one line, for the message of an `Error` frame (the host cannot receive
/// the cause objects themselves).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn dispatch(frame: Frame, out: &Arc<Out>, routes: &Routes, config: &Arc<Config>, hooks: &Hooks) {
    let id = frame.request_id;
    let route = routes.lock().ok().and_then(|r| r.get(&id).cloned());
    let req = match Request::from_frame(frame) {
        Ok(r) => r,
        Err(e) => {
            match route {
                // A bad frame inside a running request ends that request, with one terminal frame.
                Some(tx) => {
                    let _ = tx.send(Inbound::Abort(bad_request(&e)));
                }
                None => out.reply(id, &Reply::Error(bad_request(&e))),
            }
            return;
        }
    };
    let (inbound, req) = match req {
        Request::Stdin(d) => (Some(Inbound::Stdin(d)), None),
        Request::FileData(d) => (Some(Inbound::FileData(d)), None),
        Request::Cancel => (Some(Inbound::Cancel), None),
        other => (None, Some(other)),
    };
    if let Some(msg) = inbound {
        // Data for a request that already ended (or never existed) is stale: drop it.
        if let Some(tx) = route {
            let _ = tx.send(msg);
        }
        return;
    }
    let Some(req) = req else { return };
    if id == 0 {
        out.error(0, ErrorKind::BadRequest, "request id 0 is reserved");
        return;
    }
    if route.is_some() {
        out.error(id, ErrorKind::Busy, format!("request id {id} is in use"));
        return;
    }
    match req {
        Request::Ping => out.reply(id, &Reply::Done(Done::default())),
        Request::EnvList => match env::load(config) {
            Ok(vars) => {
                for vars in env_batches(&vars) {
                    out.reply(id, &Reply::EnvVars(EnvVars { vars }));
                }
                out.reply(id, &Reply::Done(Done::default()));
            }
            Err(e) => out.reply(id, &Reply::Error(e)),
        },
        Request::EnvSet(m) => out.done_or_error(id, env::set(config, m.vars)),
        Request::EnvUnset(m) => out.done_or_error(id, env::unset(config, &m.keys)),
        Request::PowerOff => {
            out.reply(id, &Reply::Done(Done::default()));
            (hooks.power_off)()
        }
        Request::Identity(m) => out.done_or_error(id, crate::identity::apply(&m)),
        Request::Exec(m) => spawn(id, out, routes, config, move |ctx| exec::run(ctx, m)),
        Request::FileWrite(m) => spawn(id, out, routes, config, move |ctx| files::write(ctx, m)),
        Request::FileRead(m) => spawn(id, out, routes, config, move |ctx| files::read(ctx, m)),
        // Handled by the server before dispatching.
        Request::Hello(_) => {}
        Request::Stdin(_) | Request::FileData(_) | Request::Cancel => {}
    }
}

/// Runs a long request on its own thread, registered under its id until it ends.
fn spawn(
    id: u32,
    out: &Arc<Out>,
    routes: &Routes,
    config: &Arc<Config>,
    handler: impl FnOnce(Ctx) + Send + 'static,
) {
    let (tx, rx) = sync_channel(INBOX_FRAMES);
    {
        let Ok(mut r) = routes.lock() else {
            out.error(id, ErrorKind::Io, "agent state poisoned");
            return;
        };
        if r.len() >= MAX_IN_FLIGHT {
            drop(r);
            out.error(
                id,
                ErrorKind::Busy,
                format!("{MAX_IN_FLIGHT} requests already in flight"),
            );
            return;
        }
        r.insert(id, tx.clone());
    }
    let ctx = Ctx {
        id,
        out: Arc::clone(out),
        inbox: rx,
        inbox_tx: tx,
        config: Arc::clone(config),
        routes: Arc::clone(routes),
    };
    let spawned = std::thread::Builder::new()
        .name(format!("req-{id}"))
        .spawn(move || handler(ctx));
    if let Err(e) = spawned {
        // The closure (and with it the Ctx, whose drop unregisters the id) is gone already.
        out.error(id, ErrorKind::Busy, format!("cannot start a thread: {e}"));
    }
}

#[cfg(test)]
mod tests;
