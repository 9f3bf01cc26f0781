//! The agent's request server: serves one host connection (a virtio-serial port under QEMU, an accepted
//! vsock connection under Firecracker) until the host disconnects.
//!
//! One thread (the caller's) reads frames and dispatches them. Quick requests (ping, env, power-off) are
//! answered inline; commands and file transfers run on their own threads, so requests are served
//! concurrently. Every frame goes out through [`Out`], whose lock keeps frames from interleaving. Hostile
//! input never crashes the agent: a bad frame is answered with an `Error` frame, and only a broken byte
//! stream (a bad length) closes the connection.
//!
//! The server must not share a process with a `waitpid(-1)` reaper (that would steal the exit status of
//! the commands it waits for): in the default image PID 1 reaps and the server runs in a child process.

mod env;
mod exec;
mod files;
mod out;
mod reaper;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smolvm_protocol::limits::MAX_IN_FLIGHT;
use smolvm_protocol::{
    env_batches, Done, EnvVars, ErrorKind, ErrorReply, Frame, ProtocolError, Reply, Request,
};

pub(crate) use out::Out;

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
    /// The connection's writer.
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

/// Serves requests on `chan` with the guest's default paths until the host disconnects (`Ok(())`).
/// The caller has already sent the `Ready` frame. Returns an error only if the byte stream broke in a
/// way that is not a plain disconnect (a hostile frame length, an I/O error).
pub fn serve(chan: File, hooks: &Hooks) -> io::Result<()> {
    serve_with(chan, hooks, &Config::default())
}

/// [`serve`] with explicit paths.
pub fn serve_with(chan: File, hooks: &Hooks, config: &Config) -> io::Result<()> {
    let out = Arc::new(Out::new(chan.try_clone()?));
    let mut reader = BufReader::with_capacity(256 * 1024, chan);
    let routes: Routes = Arc::default();
    let config = Arc::new(config.clone());
    let result = loop {
        match Frame::read_from(&mut reader) {
            Ok(frame) => dispatch(frame, &out, &routes, &config, hooks),
            Err(ProtocolError::UnknownType {
                frame_type,
                request_id,
            }) => out.error(
                request_id,
                ErrorKind::BadRequest,
                format!("unknown frame type {frame_type}"),
            ),
            Err(ProtocolError::Io(e)) if is_disconnect(&e) => break Ok(()),
            Err(ProtocolError::Io(e)) => break Err(e),
            Err(e) => break Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    };
    // The host is gone (or hostile): no frame may reach a later connection, and nothing keeps running
    // on its behalf.
    out.close();
    let inboxes: Vec<SyncSender<Inbound>> = match routes.lock() {
        Ok(r) => r.values().cloned().collect(),
        Err(_) => Vec::new(),
    };
    for tx in inboxes {
        let _ = tx.try_send(Inbound::Cancel);
    }
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while Instant::now() < deadline && routes.lock().map(|r| !r.is_empty()).unwrap_or(false) {
        std::thread::sleep(Duration::from_millis(10));
    }
    result
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
        Request::Exec(m) => spawn(id, out, routes, config, move |ctx| exec::run(ctx, m)),
        Request::FileWrite(m) => spawn(id, out, routes, config, move |ctx| files::write(ctx, m)),
        Request::FileRead(m) => spawn(id, out, routes, config, move |ctx| files::read(ctx, m)),
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
