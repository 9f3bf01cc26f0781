//! Raw frames straight at the server: malformed, misdirected and random ones get an `Error` frame (or
//! are dropped when stale) and the server keeps serving; a broken length makes it skip input up to the
//! next `SYNC`, and a new greeting brings it back.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;

use smolvm_protocol::{ErrorKind, ErrorReply, FrameType, Ready, Reply, Request, MAX_FRAME_LEN};

use super::channel::{greet, RawHost};
use super::{config_in, start_server};

fn send(s: &UnixStream, t: u8, id: u32, payload: &[u8]) {
    let mut bytes = ((payload.len() + 5) as u32).to_be_bytes().to_vec();
    bytes.push(t);
    bytes.extend(id.to_be_bytes());
    bytes.extend(payload);
    std::io::Write::write_all(&mut &*s, &bytes).unwrap();
}

/// Reads replies until the `Done` of request `until`; returns the others by id.
fn replies_until(s: &mut RawHost, until: u32) -> HashMap<u32, Reply> {
    let mut seen = HashMap::new();
    loop {
        let f = s.frame();
        let id = f.request_id;
        let reply = Reply::from_frame(f).unwrap();
        if id == until {
            assert_eq!(reply, Reply::Done(Default::default()));
            return seen;
        }
        seen.insert(id, reply);
    }
}

fn kind(r: Option<&Reply>) -> Option<ErrorKind> {
    match r {
        Some(Reply::Error(ErrorReply { kind, .. })) => Some(*kind),
        _ => None,
    }
}

#[test]
fn malformed_frames_get_errors_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, host, server) = start_server(&config_in(dir.path()));
    let mut raw = RawHost::new(host.try_clone().unwrap());
    assert_eq!(greet(&mut raw, 1).nonce, Some(1));

    send(&host, 200, 5, b"whatever");
    send(&host, FrameType::Exec as u8, 6, b"{not json");
    send(&host, FrameType::Stdout as u8, 7, b"wrong way");
    send(&host, FrameType::Ping as u8, 0, b"");
    send(
        &host,
        FrameType::EnvSet as u8,
        9,
        br#"{"vars":{"A-B":"x"}}"#,
    );
    send(
        &host,
        FrameType::Exec as u8,
        10,
        br#"{"command":{"argv":[]}}"#,
    );
    send(&host, FrameType::Stdin as u8, 11, b"stale data"); // no such request: dropped
    send(&host, FrameType::FileData as u8, 12, b"stale data");
    send(&host, FrameType::Cancel as u8, 13, b"");
    send(&host, FrameType::Ping as u8, 100, b"");
    let seen = replies_until(&mut raw, 100);
    for id in [5, 6, 7, 0, 9, 10] {
        assert_eq!(kind(seen.get(&id)), Some(ErrorKind::BadRequest), "{id}");
    }
    // Stale data and cancels for unknown requests are dropped without a reply.
    for id in [11, 12, 13] {
        assert!(!seen.contains_key(&id), "{id}");
    }

    // A storm of random frames of every non-destructive type (no PowerOff).
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // Sent in batches, each followed by a ping whose answer is awaited: the answers must be read, or
    // both sides would block on full socket buffers.
    for batch in 0..30u32 {
        for i in 0..100u32 {
            let t = match (rnd() % 20) as u8 {
                15 => 16,
                t => t,
            };
            let len = (rnd() % 64) as usize;
            let payload: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            send(&host, t, 1000 + batch * 100 + i, &payload);
        }
        send(&host, FrameType::Ping as u8, 101, b"");
        replies_until(&mut raw, 101);
    }

    // A request id in use is refused without disturbing the running request.
    let exec = Request::Exec(smolvm_protocol::ExecStart {
        command: smolvm_protocol::Command::Argv(vec!["sleep".into(), "1000".into()]),
        env: Default::default(),
        cwd: None,
        timeout_ms: None,
        stdin: true,
    });
    exec.to_frame(50).unwrap().write_to(&mut &host).unwrap();
    exec.to_frame(50).unwrap().write_to(&mut &host).unwrap();
    // A malformed frame inside it ends it with exactly one error.
    send(
        &host,
        FrameType::Stdin as u8,
        50,
        &vec![0; smolvm_protocol::limits::STDIN_CHUNK_LEN + 1],
    );
    send(&host, FrameType::Ping as u8, 102, b"");
    let mut errors = Vec::new();
    while errors.len() < 2 {
        let f = raw.frame();
        if f.request_id == 50 {
            errors.push(kind(Some(&Reply::from_frame(f).unwrap())));
        }
    }
    assert!(errors.contains(&Some(ErrorKind::Busy)));
    assert!(errors.contains(&Some(ErrorKind::BadRequest)));

    // A length beyond the limit loses the frame boundaries: the server skips everything (this ping
    // too) up to the next SYNC, and a new greeting finds it serving again.
    let mut bad = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
    bad.extend([16, 0, 0, 0, 1]);
    std::io::Write::write_all(&mut &host, &bad).unwrap();
    send(&host, FrameType::Ping as u8, 103, b"");
    // Greet without skipping anything the server sends before the Ready (`greet` would discard a
    // wrong answer to 103 along with stale Readys).
    raw.hello(2);
    let mut before_ready = Vec::new();
    loop {
        let f = raw.frame();
        if f.frame_type == FrameType::Ready {
            let r: Ready = f.parse_json("ready").unwrap();
            if r.nonce == Some(2) {
                break;
            }
        }
        before_ready.push(f);
    }
    send(&host, FrameType::Ping as u8, 104, b"");
    let seen = replies_until(&mut raw, 104);
    let answered_103 = before_ready.iter().any(|f| f.request_id == 103) || seen.contains_key(&103);
    assert!(!answered_103, "a ping inside skipped input was answered");
    host.shutdown(std::net::Shutdown::Both).unwrap();
    assert!(server.join().unwrap().is_ok());
}
