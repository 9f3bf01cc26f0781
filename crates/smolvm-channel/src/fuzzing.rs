//! Entry points for the coverage-guided fuzzers (`fuzz/` at the top of the repository) and the seeded
//! randomized tests (`tests/hostile_agent.rs`): each feeds arbitrary bytes, as a hostile guest agent
//! would send them, to the host-side code of this crate over real sockets, and panics only on a finding
//! (a panic inside, a hang, or an invariant broken). Not an API: hidden from the docs.

use std::io::{self, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use smolvm_protocol::fuzzing::{retarget, PLACEHOLDER_ID};
use smolvm_protocol::{with_sync, Decoder, FrameType, Hello, Ready, Request, PROTOCOL_VERSION};

use crate::greeting::{handshake, GreetError};
use crate::mux::{serve, ServeEnd};

/// Longer than any run of these entry points takes: reaching it means a hang (a finding).
const HANG: Duration = Duration::from_secs(20);

/// The host's greeting (`SYNC` + `Hello`, then skipping stale bytes up to `SYNC` + our `Ready`,
/// checking the version of an unmarked `Ready`) against an agent that sends `agent_bytes` and then
/// ends the stream. The nonce is random, so no input can answer it: the greeting must end with an
/// error (end of stream, version mismatch, too many stale bytes), never succeed and never time out.
pub fn greeting(agent_bytes: &[u8]) {
    let (host, agent) = UnixStream::pair().expect("a socket pair");
    let agent_thread = play_agent(agent, agent_bytes.to_vec());
    let result = handshake(&host, HANG);
    drop(host);
    agent_thread.join().expect("the fake agent");
    match result {
        Ok((ready, _)) => panic!("greeted by a Ready that cannot know our nonce: {ready:?}"),
        Err(GreetError::Timeout(_)) => panic!("the greeting hung after the agent's stream ended"),
        Err(_) => {}
    }
}

/// Writes `bytes` to `s`, ends its sending side and reads (discards) until the other side leaves.
fn play_agent(mut s: UnixStream, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(Shutdown::Write);
        let _ = io::copy(&mut s, &mut io::sink());
    })
}

/// The channel owner ([`serve`]) with one client that greets and starts one request (`EnvList` under
/// id [`PLACEHOLDER_ID`]); the agent answers with `agent_bytes` (their [`PLACEHOLDER_ID`] headers
/// retargeted at the forwarded request's upstream id) and ends the stream. The client must get only
/// whole frames under its own id, none after its request's last frame, then end of stream; `serve`
/// must return. Returns the frames the client got.
pub fn mux_upstream(agent_bytes: &[u8]) -> usize {
    let dir = scratch_dir("mux");
    let path = dir.join("owner.sock");
    let listener = UnixListener::bind(&path).expect("bind the owner's socket");
    let (owner_side, mut agent) = UnixStream::pair().expect("a socket pair");
    let ready = Ready {
        protocol_version: PROTOCOL_VERSION,
        agent_version: "fuzz".into(),
        nonce: None,
        boot_stages: vec![],
    };
    let owner = std::thread::spawn(move || serve(owner_side, ready, Decoder::new(), listener));

    let mut client = UnixStream::connect(&path).expect("connect to the owner");
    client.set_read_timeout(Some(HANG)).expect("read timeout");
    let hello = Request::Hello(Hello { nonce: 7 })
        .to_frame(0)
        .expect("hello");
    client
        .write_all(&with_sync(&hello).expect("sync"))
        .expect("greet");
    let mut dec = Decoder::hunting();
    loop {
        let frame = next_frame(&mut dec, &mut client).expect("the owner's Ready");
        let frame = frame.expect("a valid frame from the owner");
        if frame.frame_type == FrameType::Ready {
            break;
        }
    }
    let request = Request::EnvList.to_frame(PLACEHOLDER_ID).expect("request");
    request.write_to(&mut client).expect("send the request");

    agent.set_read_timeout(Some(HANG)).expect("read timeout");
    let mut adec = Decoder::new();
    let forwarded = next_frame(&mut adec, &mut agent)
        .expect("the forwarded request")
        .expect("a valid forwarded frame");
    assert_eq!(forwarded.frame_type, FrameType::EnvList);
    let agent_thread = play_agent(agent, retarget(agent_bytes, forwarded.request_id));

    let mut got = 0;
    let mut finished = false;
    while let Some(item) = next_frame(&mut dec, &mut client) {
        let frame = item.unwrap_or_else(|e| panic!("the owner forwarded a broken frame: {e}"));
        assert_eq!(frame.request_id, PLACEHOLDER_ID, "another request's frame");
        assert!(!finished, "a frame after the request's last one");
        finished = matches!(
            frame.frame_type,
            FrameType::Exit | FrameType::Done | FrameType::Error
        );
        got += 1;
    }
    drop(client);
    agent_thread.join().expect("the fake agent");
    match owner.join().expect("the owner") {
        ServeEnd::UpstreamClosed | ServeEnd::Upstream(_) => {}
        end @ ServeEnd::Accept { .. } => panic!("the owner ended with {end}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
    got
}

/// The next frame from `s`; `None` at end of stream. A read timeout is a hang: a finding.
fn next_frame(
    dec: &mut Decoder,
    s: &mut UnixStream,
) -> Option<Result<smolvm_protocol::Frame, smolvm_protocol::ProtocolError>> {
    loop {
        if let Some(item) = dec.next_frame() {
            return Some(item);
        }
        match dec.read_from(s, 64 * 1024) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!("no frame and no end of stream within {HANG:?}")
            }
            Err(_) => return None,
        }
    }
}

/// A fresh private directory under the system's temporary directory (also the library's fuzzing
/// entry points' scratch space).
pub fn scratch_dir(what: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "smolvm-fuzz-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}
