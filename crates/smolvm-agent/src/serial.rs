//! The virtio-serial host channel (QEMU), with one session per host connection.
//!
//! # How a virtio-serial port behaves
//! Measured against QEMU 7.2 (`virtserialport` on a `socket,server=on,wait=off` chardev) with this
//! image, and matching `drivers/char/virtio_console.c`:
//! * The port is opened once (a second open is refused with EBUSY). QEMU tells the guest whether a
//!   client is connected to the chardev socket (`host_connected`), one control message per change.
//! * `write` while no host is connected **blocks** (blocking fd) until one connects; then the data goes
//!   to that client. A host that connects late still gets the Ready frame, and waiting costs no CPU
//!   (QEMU's CPU use while the guest waits is the same as when idle).
//! * `read` with no pending data returns **0 (EOF) while no host is connected**, including right after
//!   one disconnects.
//! * `poll` reports POLLHUP for as long as no host is connected; POLLHUP cannot be masked, so a
//!   poll-based wait for a connection would spin.
//! * **A quick reconnect is invisible to `read`**: a blocked reader re-checks the state only when it
//!   runs, and if a new client connected in between, it keeps waiting. Measured: closing the socket and
//!   connecting again at once left the new client without a Ready frame (30 s timeout). A plain
//!   "serve until EOF, then send Ready" loop therefore hangs such a client.
//!
//! # What we do
//! Every host connection change makes the driver send SIGIO to the port's owner (`O_ASYNC`); with
//! `F_SETSIG` it is a queued real-time signal to this thread, with `si_code` POLL_OUT (data arrival is
//! POLL_IN). The request server never touches the port: it talks to one end of a socket pair, and two
//! relay threads copy between the pair and the port. A session ends when a connection change shows that
//! its host left (or the server returns); the pair is then shut down, so the server sees EOF and its
//! late output is dropped, and the next session starts with a fresh pair and a fresh Ready frame.
//! Remaining risk: a host that disconnects while a response frame is half written may leave the rest of
//! that frame in the port, to be delivered to the next host before its Ready; hosts should drop bytes
//! until they read a complete Ready frame.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::server;

const F_SETSIG: libc::c_int = 10;
const F_SETOWN_EX: libc::c_int = 15;
const F_OWNER_TID: libc::c_int = 0;
const POLL_IN: libc::c_int = 1;
const POLL_OUT: libc::c_int = 2;

#[repr(C)]
struct FOwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

/// The signal carrying port events (a real-time one, so events queue instead of merging).
fn port_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

/// Signals this module takes synchronously; the agent process blocks them in every thread before
/// starting any (else a stray one would kill it: the default action of both is to terminate).
pub fn signals() -> [libc::c_int; 2] {
    [port_signal(), libc::SIGIO]
}

/// What the port reader forwards to: the current session's end of the socket pair.
struct Shared {
    sink: Mutex<(u64, Option<UnixStream>)>,
    changed: Condvar,
}

/// Serves the port forever, one session per host connection.
pub fn run(port: &Path, ready: &[u8]) -> ! {
    loop {
        match OpenOptions::new().read(true).write(true).open(port) {
            Ok(f) => {
                if let Err(e) = sessions(f, ready) {
                    crate::log(&format!("host channel {}: {e}", port.display()));
                }
            }
            Err(e) => crate::log(&format!("open {}: {e}", port.display())),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn sessions(port: File, ready: &[u8]) -> io::Result<()> {
    let fd = port.as_raw_fd();
    let owner = FOwnerEx {
        kind: F_OWNER_TID,
        // SAFETY: gettid has no preconditions.
        pid: unsafe { libc::gettid() },
    };
    // SAFETY: fcntl on our fd with valid arguments.
    unsafe {
        if libc::fcntl(fd, F_SETSIG, port_signal()) < 0
            || libc::fcntl(fd, F_SETOWN_EX, &owner as *const FOwnerEx) < 0
        {
            return Err(io::Error::last_os_error());
        }
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_ASYNC) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let port = Arc::new(port);
    let shared = Arc::new(Shared {
        sink: Mutex::new((0, None)),
        changed: Condvar::new(),
    });
    {
        let (port, shared) = (Arc::clone(&port), Arc::clone(&shared));
        std::thread::Builder::new()
            .name("port-reader".into())
            .spawn(move || port_reader(&port, &shared))?;
    }
    let sigs = crate::sys::sigset(&signals());
    loop {
        let (ours, theirs) = UnixStream::pair()?;
        let server_thread = {
            let chan = File::from(std::os::fd::OwnedFd::from(theirs));
            // SAFETY: gettid has no preconditions.
            let me = unsafe { libc::gettid() };
            std::thread::Builder::new()
                .name("server".into())
                .spawn(move || {
                    if let Err(e) = server::serve(chan, &crate::channel::HOOKS) {
                        crate::log(&format!("request server: {e}"));
                    }
                    // Wake the session loop (si_code SI_TKILL tells it apart from port events).
                    // SAFETY: signalling a thread of our own process.
                    unsafe { libc::tgkill(libc::getpid(), me, port_signal()) };
                })?
        };
        set_sink(&shared, Some(ours.try_clone()?));
        drain(&sigs);
        let connected_before = is_connected(&port);
        (&*port).write_all(ready)?;
        // A host is there now: let the reader, parked on EOF, read again.
        bump(&shared);
        let relay = {
            let (port, from) = (Arc::clone(&port), ours.try_clone()?);
            std::thread::Builder::new()
                .name("port-writer".into())
                .spawn(move || relay_to_port(from, &port))?
        };
        // The connect event of this session, if the host connected while we waited, is still to come.
        let mut expected = usize::from(!connected_before);
        let mut seen = 0usize;
        loop {
            match wait(&sigs) {
                Event::Data => continue,
                Event::ServerDone => break,
                Event::Connection => {
                    seen += 1;
                    if seen <= expected && is_connected(&port) {
                        continue; // our own host's connect event, late
                    }
                    break; // the host left (and maybe another one is already there)
                }
                Event::Overflow => {
                    // Queue overflowed: events were lost; only the current state is known.
                    expected = usize::MAX;
                    if !is_connected(&port) {
                        break;
                    }
                }
            }
        }
        set_sink(&shared, None);
        let _ = ours.shutdown(std::net::Shutdown::Both);
        let _ = server_thread.join();
        let _ = relay.join();
    }
}

enum Event {
    Data,
    Connection,
    ServerDone,
    Overflow,
}

fn wait(sigs: &libc::sigset_t) -> Event {
    loop {
        // SAFETY: siginfo_t is plain data filled by the kernel.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid set and out pointer.
        let sig = unsafe { libc::sigwaitinfo(sigs, &mut info) };
        if sig < 0 {
            continue; // EINTR
        }
        if sig == libc::SIGIO {
            return Event::Overflow;
        }
        return match info.si_code {
            POLL_IN => Event::Data,
            POLL_OUT => Event::Connection,
            _ => Event::ServerDone,
        };
    }
}

/// Discards queued port events (they belong to earlier sessions).
fn drain(sigs: &libc::sigset_t) {
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid set and timeout; info not needed.
    while unsafe { libc::sigtimedwait(sigs, std::ptr::null_mut(), &zero) } > 0 {}
}

/// True if a host is connected (no POLLHUP; POLLOUT may be missing while the host is slow to read).
/// Never blocks.
fn is_connected(port: &File) -> bool {
    let mut p = libc::pollfd {
        fd: port.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n >= 0 && p.revents & libc::POLLHUP == 0
}

fn bump(shared: &Shared) {
    if let Ok(mut g) = shared.sink.lock() {
        g.0 += 1;
    }
    shared.changed.notify_all();
}

fn set_sink(shared: &Shared, sink: Option<UnixStream>) {
    if let Ok(mut g) = shared.sink.lock() {
        g.0 += 1;
        g.1 = sink;
    }
    shared.changed.notify_all();
}

/// Port -> current session. On EOF (no host) it waits for the next session instead of spinning.
fn port_reader(port: &File, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut r = port;
    loop {
        // Taken before the read, so a host arriving between the EOF and the wait is not missed.
        let Some(gen) = shared.sink.lock().ok().map(|g| g.0) else {
            return;
        };
        match r.read(&mut buf) {
            Ok(0) => {
                // No host: sleep until the session loop reports a change (it bumps the generation
                // when a session starts, when its host has connected, and when it ends).
                let Ok(g) = shared.sink.lock() else { return };
                drop(shared.changed.wait_while(g, |g| g.0 == gen));
            }
            Ok(n) => {
                let sink = shared
                    .sink
                    .lock()
                    .ok()
                    .and_then(|g| g.1.as_ref().and_then(|s| s.try_clone().ok()));
                if let Some(mut s) = sink {
                    // A session that just ended refuses the data: it was meant for a host now gone.
                    let _ = s.write_all(&buf[..n]);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                crate::log(&format!("read host channel: {e}"));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Server output -> port, while the host that the session belongs to is connected.
fn relay_to_port(mut from: UnixStream, port: &File) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut w = port;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Never block on a port whose host left: that write would go to the next host.
        if !is_connected(port) {
            continue;
        }
        if w.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}
