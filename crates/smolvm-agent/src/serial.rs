//! The virtio-serial host channel (QEMU): one request server for the life of the agent, whatever hosts
//! come and go.
//!
//! # How a virtio-serial port behaves
//! Measured against QEMU 7.2 (`virtserialport` on a `socket,server=on,wait=off` chardev) with this
//! image, and matching `drivers/char/virtio_console.c`:
//! * The port is opened once (a second open is refused with EBUSY). QEMU tells the guest whether a
//!   client is connected to the chardev socket (`host_connected`), one control message per change.
//! * `write` while no host is connected **blocks** (blocking fd) until one connects; then the data goes
//!   to that client. Waiting costs no CPU.
//! * `read` with no pending data returns **0 (EOF) while no host is connected**, including right after
//!   one disconnects.
//! * `poll` reports POLLHUP for as long as no host is connected; POLLHUP cannot be masked, so a
//!   poll-based wait for a connection would spin.
//! * **A quick reconnect is invisible to `read`**: a blocked reader re-checks the state only when it
//!   runs, and if a new client connected in between, it keeps waiting.
//! * With `O_ASYNC` the driver signals the owner on every host connection change **and on every data
//!   arrival**, both with `si_code` POLL_OUT (`send_sigio_to_port`), so a signal cannot tell the two
//!   apart. (Reading them as connection changes is what tore sessions down on the first request.)
//!
//! # What we do
//! No sessions: one reader (this thread) feeds one request server for as long as the agent runs, and
//! connection changes never tear anything down. Each host greets with `SYNC` + `Hello{nonce}` and
//! re-sends it until it gets `SYNC` + `Ready{nonce}`; a new nonce cancels the previous host's requests
//! (see [`crate::server`]). Replies written while no host is connected block in the writer and reach the
//! next host ahead of its `Ready`, which it skips.
//!
//! The reader only has to keep its input decodable:
//! * `read` == 0 (no host): a partial frame can never be completed by its host, so the decoder skips to
//!   the next `SYNC`; then the reader waits for the port's signal (a host connecting), at most
//!   [`NO_HOST_WAIT`] so that a missed signal costs a retry, not a hang.
//! * A frame that stays incomplete while input pauses is dropped the same way: its host died mid-write
//!   and the next host connected before `read` saw a gap, so the new host's `Hello`s are being
//!   swallowed as the rest of the old frame. (Measured: a host wrote half of a 200 KiB frame and closed,
//!   the next connected right away; in most runs the guest never saw the first one leave, and sometimes
//!   QEMU delivered only the first 4 KiB of what it had written.) Such a frame is dropped after
//!   [`QUIET_WITH_GREETING`] of waiting for input if a complete `SYNC` + `Hello` lies among its bytes,
//!   else after [`STALL_LIMIT`]. A live host writes each frame in one go, so neither happens to it.
//! * Garbage (a bad length) makes the decoder skip to the next `SYNC` by itself.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smolvm_protocol::{Decoder, Ready};

use crate::server::{self, Config, Source, Writer};

const F_SETSIG: libc::c_int = 10;
const F_SETOWN_EX: libc::c_int = 15;
const F_OWNER_TID: libc::c_int = 0;
/// Longest wait for a host while none is connected, between two reads.
pub const NO_HOST_WAIT: Duration = Duration::from_millis(50);
/// How long a partial frame may wait for its rest (time spent waiting for input, not processing it).
/// A host writes each frame in one go, so a live one never gets near this.
pub const STALL_LIMIT: Duration = Duration::from_secs(3);
/// How long a partial frame that contains a complete `SYNC` + `Hello` (a new host's greeting) may wait
/// for input.
pub const QUIET_WITH_GREETING: Duration = Duration::from_millis(100);
/// Bytes read from the port at once.
const READ_CHUNK: usize = 64 * 1024;

#[repr(C)]
struct FOwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

/// The signal carrying port events (a real-time one, queued per event).
fn port_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

/// Signals this module takes synchronously; the agent process blocks them in every thread before
/// starting any (else a stray one would kill it: the default action of both is to terminate).
pub fn signals() -> [libc::c_int; 2] {
    [port_signal(), libc::SIGIO]
}

/// Serves the port forever.
pub fn run(port: &Path, ready: &Ready) -> ! {
    loop {
        match OpenOptions::new().read(true).write(true).open(port) {
            Ok(f) => {
                if let Err(e) = serve_port(f, ready) {
                    crate::log(&format!("host channel {}: {e}", port.display()));
                }
            }
            Err(e) => crate::log(&format!("open {}: {e}", port.display())),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn serve_port(port: File, ready: &Ready) -> io::Result<()> {
    let fd = port.as_raw_fd();
    let owner = FOwnerEx {
        kind: F_OWNER_TID,
        // SAFETY: gettid has no preconditions.
        pid: unsafe { libc::gettid() },
    };
    // Port events go to this thread (the reader) as a queued real-time signal, taken with sigtimedwait.
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
    let writer: Arc<Writer> = Writer::new(port.try_clone()?);
    let source = PortSource {
        port,
        sigs: crate::sys::sigset(&signals()),
        frames_seen: 0,
        stalled: Duration::ZERO,
    };
    server::serve_source(
        source,
        &writer,
        &crate::channel::HOOKS,
        &Config::default(),
        ready,
    )
}

/// The port as the server's input; it never ends.
struct PortSource {
    port: File,
    sigs: libc::sigset_t,
    /// The decoder's frame count when `stalled` started counting (a new frame resets it).
    frames_seen: u64,
    /// Time spent waiting for the rest of the current partial frame.
    stalled: Duration,
}

impl Source for PortSource {
    fn fill(&mut self, dec: &mut Decoder) -> io::Result<bool> {
        loop {
            if dec.frames() != self.frames_seen || !dec.is_mid_frame() {
                self.frames_seen = dec.frames();
                self.stalled = Duration::ZERO;
            }
            if dec.is_mid_frame() {
                // A greeting is looked for only once the frame waited a while (incrementally: each
                // byte is searched once).
                if self.stalled >= STALL_LIMIT
                    || (self.stalled >= QUIET_WITH_GREETING && dec.buffered_has_hello())
                {
                    crate::log("a frame was cut off: skipping input up to the next SYNC");
                    dec.hunt();
                    return Ok(true); // the greeting may be buffered already
                }
                let next_check = if self.stalled < QUIET_WITH_GREETING {
                    QUIET_WITH_GREETING - self.stalled
                } else {
                    STALL_LIMIT - self.stalled
                };
                let start = Instant::now();
                let readable = self.wait_readable(next_check);
                self.stalled += start.elapsed();
                if !readable {
                    continue;
                }
            }
            match dec.read_from(&mut &self.port, READ_CHUNK) {
                Ok(0) => {
                    // No host. Whatever part of a frame we hold, its host cannot finish it.
                    if dec.is_mid_frame() {
                        crate::log("host left mid-frame: skipping input up to the next SYNC");
                        dec.hunt();
                        return Ok(true); // a greeting may be buffered already
                    }
                    self.wait_signal(NO_HOST_WAIT);
                }
                Ok(_) => {
                    // Data arrivals raise signals too: drop them so the queue never grows.
                    self.wait_signal(Duration::ZERO);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    crate::log(&format!("read host channel: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

impl PortSource {
    /// Waits up to `limit` for input (or a hang-up, which `read` reports as 0); false on timeout.
    fn wait_readable(&self, limit: Duration) -> bool {
        let mut p = libc::pollfd {
            fd: self.port.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = limit.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        n != 0 // an error (EINTR) just means: try reading
    }

    /// Takes every queued port signal; if there is none, waits up to `limit` for one.
    fn wait_signal(&self, limit: Duration) {
        let mut timeout = libc::timespec {
            tv_sec: limit.as_secs() as libc::time_t,
            tv_nsec: limit.subsec_nanos() as libc::c_long,
        };
        // SAFETY: valid set and timeout; the siginfo is not needed.
        while unsafe { libc::sigtimedwait(&self.sigs, std::ptr::null_mut(), &timeout) } > 0 {
            timeout = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    //! The reader's rules for keeping input decodable, with one end of a socket pair as the "port".
    //! The host-connected/EOF semantics of a real virtio-serial port are the E2E tests' business; these
    //! check the decisions `fill` makes on the bytes it sees.

    use super::*;
    use smolvm_protocol::{with_sync, Frame, FrameType, Hello, Request};
    use std::io::Write;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    fn port() -> (PortSource, UnixStream) {
        let (guest, host) = UnixStream::pair().unwrap();
        let source = PortSource {
            port: File::from(OwnedFd::from(guest)),
            sigs: crate::sys::sigset(&signals()),
            frames_seen: 0,
            stalled: Duration::ZERO,
        };
        (source, host)
    }

    fn greeting(nonce: u64) -> Vec<u8> {
        with_sync(&Request::Hello(Hello { nonce }).to_frame(0).unwrap()).unwrap()
    }

    /// The first `n` bytes of a 1000-byte stdout frame: a frame whose writer stopped half-way.
    fn cut_frame(n: usize) -> Vec<u8> {
        let mut f = Frame::new(FrameType::Stdout, 7, vec![b'x'; 991])
            .encode()
            .unwrap();
        f.truncate(n);
        f
    }

    /// Runs a test body on its own thread: a reader that never returns fails the test instead of
    /// hanging it (the limit is a deadlock guard, far above anything the body waits for).
    fn bounded(body: impl FnOnce() + Send + 'static) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            body();
            let _ = tx.send(());
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(()) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("the test body failed"),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("fill never returned"),
        }
    }

    /// Fills until a frame decodes; returns it.
    fn next(src: &mut PortSource, dec: &mut Decoder) -> Frame {
        loop {
            if let Some(f) = dec.next_frame() {
                return f.unwrap();
            }
            assert!(src.fill(dec).unwrap());
        }
    }

    #[test]
    fn a_host_that_leaves_mid_frame_makes_the_reader_skip_to_the_next_sync() {
        bounded(|| {
            let (mut src, mut host) = port();
            let mut dec = Decoder::new();
            host.write_all(&greeting(1)).unwrap();
            host.write_all(&cut_frame(300)).unwrap();
            assert_eq!(next(&mut src, &mut dec).frame_type, FrameType::Hello);
            drop(host); // read now returns 0, as on a port whose host went away
            while dec.next_frame().is_none() && !dec.is_hunting() {
                assert!(src.fill(&mut dec).unwrap());
            }
            assert!(dec.is_hunting(), "the half frame was kept");
        });
    }

    #[test]
    fn a_cut_off_frame_with_a_new_greeting_inside_is_dropped_and_the_greeting_served() {
        bounded(|| {
            let (mut src, mut host) = port();
            let mut dec = Decoder::new();
            // The old host wrote 200 bytes of a 1000-byte frame; the next host connected at once and
            // greeted, so its bytes arrive as if they were the rest of that frame. It stays connected.
            host.write_all(&cut_frame(200)).unwrap();
            host.write_all(&greeting(42)).unwrap();
            let f = next(&mut src, &mut dec);
            assert_eq!(f.frame_type, FrameType::Hello);
            let hello: Hello = f.parse_json("hello").unwrap();
            assert_eq!(hello.nonce, 42);
        });
    }

    #[test]
    fn a_frame_written_in_two_parts_by_a_live_host_is_kept_whole() {
        bounded(|| {
            let (mut src, mut host) = port();
            let mut dec = Decoder::new();
            let whole = cut_frame(1004);
            host.write_all(&whole[..500]).unwrap();
            let rest = whole[500..].to_vec();
            let writer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                host.write_all(&rest).unwrap();
                host
            });
            let f = next(&mut src, &mut dec);
            assert_eq!(
                (f.frame_type, f.request_id, f.payload.len()),
                (FrameType::Stdout, 7, 991)
            );
            drop(writer.join().unwrap());
        });
    }

    #[test]
    fn a_stalled_frame_without_greeting_is_dropped_after_the_stall_limit() {
        bounded(|| {
            let (mut src, mut host) = port();
            let mut dec = Decoder::new();
            host.write_all(&cut_frame(100)).unwrap();
            // The host stays connected and sends nothing more.
            while dec.next_frame().is_none() && !dec.is_hunting() {
                assert!(src.fill(&mut dec).unwrap());
            }
            assert!(dec.is_hunting());
            // What comes next is read from the next SYNC on.
            host.write_all(b"garbage").unwrap();
            host.write_all(&greeting(5)).unwrap();
            assert_eq!(next(&mut src, &mut dec).frame_type, FrameType::Hello);
        });
    }
}
