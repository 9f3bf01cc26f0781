//! The multiplexer against a fake agent: many clients at once, ids rewritten both ways, no output
//! mixed, requests of a client that leaves cancelled, everybody disconnected when the agent goes.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use smolvm_protocol::{
    with_sync, Command, Decoder, ExecStart, ExitStatus, Frame, FrameType, Hello, Ready, Reply,
    Request, PROTOCOL_VERSION,
};

use super::{serve, ServeEnd};
use crate::greeting::handshake;

const WAIT: Duration = Duration::from_secs(10);

/// What the fake agent saw.
enum Seen {
    Exec(u32, Vec<String>),
    Cancel(u32),
}

/// A fake agent on `path`: greets, answers `Exec ["echo", words..]` with one stdout frame per word
/// and `Exit{0}`, never answers `Exec ["hang"]`, and closes on `Exec ["quit"]`.
fn fake_agent(path: &Path) -> Receiver<Seen> {
    let listener = UnixListener::bind(path).unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut dec = Decoder::hunting();
        loop {
            while let Some(item) = dec.next_frame() {
                let frame = item.unwrap();
                let id = frame.request_id;
                match Request::from_frame(frame).unwrap() {
                    Request::Hello(Hello { nonce }) => {
                        let ready = Ready {
                            protocol_version: PROTOCOL_VERSION,
                            agent_version: "fake".into(),
                            nonce: Some(nonce),
                            boot_stages: vec![],
                        };
                        let f = Frame::json(FrameType::Ready, 0, &ready).unwrap();
                        s.write_all(&with_sync(&f).unwrap()).unwrap();
                    }
                    Request::Exec(ExecStart {
                        command: Command::Argv(argv),
                        ..
                    }) => {
                        let _ = tx.send(Seen::Exec(id, argv.clone()));
                        match argv[0].as_str() {
                            "quit" => return,
                            "hang" => {}
                            _ => {
                                for w in &argv[1..] {
                                    let f = Frame::new(FrameType::Stdout, id, w.clone().into());
                                    s.write_all(&f.encode().unwrap()).unwrap();
                                }
                                let exit = Reply::Exit(ExitStatus {
                                    code: Some(0),
                                    signal: None,
                                    timed_out: false,
                                });
                                s.write_all(&exit.to_frame(id).unwrap().encode().unwrap())
                                    .unwrap();
                            }
                        }
                    }
                    Request::Cancel => {
                        let _ = tx.send(Seen::Cancel(id));
                    }
                    _ => {}
                }
            }
            if dec.read_from(&mut s, 65536).unwrap_or(0) == 0 {
                return;
            }
        }
    });
    rx
}

/// A fake agent and an owner serving it on `<dir>/chan`; returns the clients' socket.
fn start(dir: &Path) -> (PathBuf, Receiver<Seen>, std::thread::JoinHandle<ServeEnd>) {
    let up = dir.join("agent");
    let seen = fake_agent(&up);
    let (stream, ready, dec) = crate::owner::open_upstream(&up, WAIT).unwrap();
    let listen = dir.join("chan");
    let listener = crate::owner::listen(&listen).unwrap();
    let server = std::thread::spawn(move || serve(stream, ready, dec, listener));
    (listen, seen, server)
}

fn exec_frame(id: u32, argv: &[&str]) -> Vec<u8> {
    let req = Request::Exec(ExecStart {
        command: Command::Argv(argv.iter().map(|s| s.to_string()).collect()),
        env: Default::default(),
        cwd: None,
        timeout_ms: None,
        stdin: false,
    });
    req.to_frame(id).unwrap().encode().unwrap()
}

/// Collects the stdout of request `id` up to its exit; panics on frames of any other id.
fn collect(stream: &mut UnixStream, mut dec: Decoder, id: u32) -> String {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut out = String::new();
    loop {
        while let Some(f) = dec.next_frame() {
            let f = f.unwrap();
            assert_eq!(f.request_id, id, "a frame of another request");
            match f.frame_type {
                FrameType::Stdout => out.push_str(std::str::from_utf8(&f.payload).unwrap()),
                FrameType::Exit => return out,
                t => panic!("unexpected {t:?}"),
            }
        }
        assert!(dec.read_from(stream, 65536).unwrap() > 0, "owner closed");
    }
}

#[test]
fn many_clients_share_one_agent_connection_without_mixing() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, seen, _server) = start(dir.path());
    let clients: Vec<_> = (0..8)
        .map(|n| {
            let listen = listen.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&listen).unwrap();
                let (ready, dec) = handshake(&s, WAIT).unwrap();
                assert_eq!(ready.agent_version, "fake");
                // Every client uses the same request id: the owner must keep them apart.
                let words: Vec<String> = (0..50).map(|i| format!("c{n}w{i} ")).collect();
                let mut argv = vec!["echo"];
                argv.extend(words.iter().map(String::as_str));
                s.write_all(&exec_frame(7, &argv)).unwrap();
                (collect(&mut s, dec, 7), words.concat())
            })
        })
        .collect();
    for c in clients {
        let (got, want) = c.join().unwrap();
        assert_eq!(got, want);
    }
    // The agent saw eight distinct request ids.
    let mut ids: Vec<u32> = seen
        .try_iter()
        .filter_map(|s| match s {
            Seen::Exec(id, _) => Some(id),
            Seen::Cancel(_) => None,
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 8);
}

#[test]
fn a_client_that_leaves_gets_its_requests_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, seen, _server) = start(dir.path());
    let mut s = UnixStream::connect(&listen).unwrap();
    handshake(&s, WAIT).unwrap();
    s.write_all(&exec_frame(3, &["hang"])).unwrap();
    let upstream_id = match seen.recv_timeout(WAIT).unwrap() {
        Seen::Exec(id, argv) => {
            assert_eq!(argv, ["hang"]);
            id
        }
        Seen::Cancel(_) => panic!("cancel before exec"),
    };
    drop(s);
    match seen.recv_timeout(WAIT).unwrap() {
        Seen::Cancel(id) => assert_eq!(id, upstream_id),
        Seen::Exec(..) => panic!("expected the cancel"),
    }
    // Another client is still served afterwards.
    let mut s = UnixStream::connect(&listen).unwrap();
    let (_, dec) = handshake(&s, WAIT).unwrap();
    s.write_all(&exec_frame(3, &["echo", "again"])).unwrap();
    assert_eq!(collect(&mut s, dec, 3), "again");
}

#[test]
fn clients_are_disconnected_when_the_agent_goes() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, _seen, server) = start(dir.path());
    let mut waiting = UnixStream::connect(&listen).unwrap();
    let (_, mut dec) = handshake(&waiting, WAIT).unwrap();
    let mut quitter = UnixStream::connect(&listen).unwrap();
    handshake(&quitter, WAIT).unwrap();
    quitter.write_all(&exec_frame(1, &["quit"])).unwrap();
    assert!(matches!(server.join().unwrap(), ServeEnd::UpstreamClosed));
    waiting.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(dec.read_from(&mut waiting, 1024).unwrap_or(0), 0);
}

#[test]
fn greeting_resends_and_stray_frames_are_not_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, seen, _server) = start(dir.path());
    let mut s = UnixStream::connect(&listen).unwrap();
    // Garbage before the greeting is skipped; a repeated Hello after it is not sent to the agent.
    s.write_all(b"stale bytes").unwrap();
    let (_, dec) = handshake(&s, WAIT).unwrap();
    let hello = Request::Hello(Hello { nonce: 1 }).to_frame(0).unwrap();
    s.write_all(&with_sync(&hello).unwrap()).unwrap();
    // Stdin for a request that does not exist is dropped, not sent as a new request.
    let stdin = Frame::new(FrameType::Stdin, 9, b"x".to_vec());
    s.write_all(&stdin.encode().unwrap()).unwrap();
    s.write_all(&exec_frame(2, &["echo", "ok"])).unwrap();
    assert_eq!(collect(&mut s, dec, 2), "ok");
    let all: Vec<Seen> = seen.try_iter().collect();
    assert_eq!(all.len(), 1, "only the exec reaches the agent");
}
