//! The greeting and a channel shared by hosts one after another: repeated `Hello`s are answered once,
//! a new host cancels the previous one's requests and never sees their replies, garbage before `SYNC`
//! is skipped, and a stand-in for a virtio-serial port carries many hosts through one server.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smolvm::{AgentClient, ExecRequest};
use smolvm_protocol::{
    with_sync, Command, Decoder, ExecStart, Frame, FrameType, Hello, Ready, Request,
};

use super::{config_in, path_str, start_server, wait_dead};

/// A host speaking raw frames.
pub(crate) struct RawHost {
    pub stream: UnixStream,
    dec: Decoder,
}

impl RawHost {
    pub fn new(stream: UnixStream) -> RawHost {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        RawHost {
            stream,
            dec: Decoder::hunting(),
        }
    }

    /// The next frame (skipping anything before the first SYNC).
    pub fn frame(&mut self) -> Frame {
        loop {
            if let Some(f) = self.dec.next_frame() {
                return f.unwrap();
            }
            assert!(self.dec.read_from(&mut self.stream, 65536).unwrap() > 0);
        }
    }

    /// The next frame if one arrives within `wait`.
    pub fn frame_within(&mut self, wait: Duration) -> Option<Frame> {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let f = loop {
            if let Some(f) = self.dec.next_frame() {
                break Some(f.unwrap());
            }
            match self.dec.read_from(&mut self.stream, 65536) {
                Ok(n) => assert!(n > 0),
                Err(_) => break None,
            }
        };
        self.stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        f
    }

    pub fn send(&self, req: &Request, id: u32) {
        req.to_frame(id)
            .unwrap()
            .write_to(&mut &self.stream)
            .unwrap();
    }

    pub fn hello(&self, nonce: u64) {
        let f = Request::Hello(Hello { nonce }).to_frame(0).unwrap();
        (&self.stream).write_all(&with_sync(&f).unwrap()).unwrap();
    }
}

/// Greets with `nonce` and returns the `Ready` that answers it (skipping stale ones).
pub(crate) fn greet(host: &mut RawHost, nonce: u64) -> Ready {
    host.dec.hunt();
    host.hello(nonce);
    loop {
        let f = host.frame();
        if f.frame_type == FrameType::Ready {
            let r: Ready = f.parse_json("ready").unwrap();
            if r.nonce == Some(nonce) {
                return r;
            }
        }
        host.dec.hunt();
    }
}

fn sleeper(pidfile: &str) -> Request {
    Request::Exec(ExecStart {
        command: Command::Shell(format!("echo $$ > '{pidfile}'; exec sleep 1000")),
        env: Default::default(),
        cwd: None,
        timeout_ms: None,
        stdin: false,
    })
}

fn wait_for_file(path: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(s) = std::fs::read_to_string(path) {
            if s.ends_with('\n') {
                return s.trim().to_string();
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} never written", path.display());
}

#[test]
fn repeated_hellos_are_answered_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, host, _server) = start_server(&config_in(dir.path()));
    let mut raw = RawHost::new(host);
    // Stale bytes and a half frame before the first marker are skipped.
    (&raw.stream).write_all(b"\0\0\0\x40\x02 stale").unwrap();
    for _ in 0..3 {
        raw.hello(77);
    }
    let r = greet(&mut raw, 77);
    assert_eq!(r.boot_stages[0].micros, 42);
    // A long command survives the repeats that follow (a host re-sending before our Ready came).
    let pidfile = dir.path().join("pid");
    raw.send(&sleeper(&path_str(&pidfile)), 5);
    let pid: u32 = wait_for_file(&pidfile).parse().unwrap();
    raw.hello(77);
    raw.send(&Request::Ping, 6);
    let f = raw.frame();
    assert_eq!((f.frame_type, f.request_id), (FrameType::Done, 6));
    assert!(
        raw.frame_within(Duration::from_millis(300)).is_none(),
        "a repeated hello was answered (or the command ended)"
    );
    assert!(smolvm::internals::process::proc_stat(pid).is_some_and(|s| s.state != 'Z'));
    raw.send(&Request::Cancel, 5);
    assert_eq!(raw.frame().request_id, 5);
    assert!(wait_dead(pid));
}

#[test]
fn a_new_host_cancels_the_previous_hosts_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, host, _server) = start_server(&config_in(dir.path()));
    let mut raw = RawHost::new(host);
    greet(&mut raw, 1);
    let pidfile = dir.path().join("pid");
    raw.send(&sleeper(&path_str(&pidfile)), 9);
    let pid: u32 = wait_for_file(&pidfile).parse().unwrap();
    // A new host on the same channel (as after a virtio-serial reconnect nobody noticed).
    greet(&mut raw, 2);
    assert!(wait_dead(pid), "the previous host's command survived");
    // Its cancellation answer belonged to the previous host: it never arrives after the new Ready.
    raw.send(&Request::Ping, 10);
    let f = raw.frame();
    assert_eq!((f.frame_type, f.request_id), (FrameType::Done, 10));
    assert!(raw.frame_within(Duration::from_millis(300)).is_none());
    // The request id is free again for the new host.
    raw.send(&Request::Ping, 9);
    assert_eq!(raw.frame().request_id, 9);
}

/// The connected host (with a generation number), and a signal when it changes.
type HostSlot = Arc<(Mutex<(u64, Option<UnixStream>)>, Condvar)>;

/// A stand-in for a virtio-serial port: one stream to the agent for its whole life; hosts connect one
/// at a time, and what the agent writes while none is connected waits for the next one.
struct FakePort {
    agent: UnixStream,
    slot: HostSlot,
    inbound: Mutex<Option<(UnixStream, JoinHandle<()>)>>,
}

impl FakePort {
    fn new(agent: UnixStream) -> FakePort {
        let slot: HostSlot = Arc::default();
        let (mut from, out) = (agent.try_clone().unwrap(), Arc::clone(&slot));
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut off = 0;
                while off < n {
                    let (lock, cv) = &*out;
                    let (gen, host) = {
                        let g = cv
                            .wait_while(lock.lock().unwrap(), |g| g.1.is_none())
                            .unwrap();
                        (g.0, g.1.as_ref().unwrap().try_clone().unwrap())
                    };
                    match (&host).write(&buf[off..n]) {
                        Ok(k) => off += k,
                        // That host left: keep the rest for the next one.
                        Err(_) => {
                            let mut g = lock.lock().unwrap();
                            if g.0 == gen {
                                g.1 = None;
                            }
                        }
                    }
                }
            }
        });
        FakePort {
            agent,
            slot,
            inbound: Mutex::new(None),
        }
    }

    /// Connects a new host, disconnecting the previous one.
    fn connect(&self) -> UnixStream {
        let (host, ours) = UnixStream::pair().unwrap();
        let mut inbound = self.inbound.lock().unwrap();
        if let Some((old, copier)) = inbound.take() {
            let _ = old.shutdown(Shutdown::Both);
            copier.join().unwrap();
        }
        {
            let (lock, cv) = &*self.slot;
            let mut g = lock.lock().unwrap();
            g.0 += 1;
            g.1 = Some(ours.try_clone().unwrap());
            cv.notify_all();
        }
        let (mut from, mut to) = (ours.try_clone().unwrap(), self.agent.try_clone().unwrap());
        let copier = std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
        });
        *inbound = Some((ours, copier));
        host
    }
}

#[test]
fn hosts_one_after_another_share_one_channel() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, relay_end, _server) = start_server(&config_in(dir.path()));
    let port = FakePort::new(relay_end);
    let timeout = Duration::from_secs(20);
    for i in 0..20 {
        let client = AgentClient::from_stream(port.connect(), timeout).unwrap();
        let r = client.run(&format!("echo {i}"), None).unwrap();
        assert_eq!(r.stdout, format!("{i}\n"));
        if i % 3 == 1 {
            std::thread::sleep(Duration::from_millis(100));
        }
        if i % 4 == 2 {
            // Leave with output still flowing: the next host gets it first and skips it.
            let call =
                client.exec_streaming(&ExecRequest::shell("yes | head -c 300000"), |_, _| {});
            assert_eq!(call.unwrap(), 0);
        }
    }
    // A host that leaves in the middle of a long command: the next host cancels it and works.
    let pidfile = dir.path().join("long.pid");
    let cmd = format!(
        "echo $$ > '{}'; while :; do echo tick; sleep 0.01; done",
        path_str(&pidfile)
    );
    let host = port.connect();
    let spare = host.try_clone().unwrap();
    let client = AgentClient::from_stream(host, timeout).unwrap();
    let pid: u32 = std::thread::scope(|s| {
        let run = s.spawn(|| client.run(&cmd, None));
        let pid = wait_for_file(&pidfile).parse().unwrap();
        // The host process "dies": its socket goes away under the running call.
        spare.shutdown(Shutdown::Both).unwrap();
        assert!(run.join().unwrap().is_err());
        pid
    });
    drop(client);
    let next = AgentClient::from_stream(port.connect(), timeout).unwrap();
    assert_eq!(next.run("echo fine", None).unwrap().stdout, "fine\n");
    assert!(wait_dead(pid), "the previous host's command survived");
    drop(agent);
}
