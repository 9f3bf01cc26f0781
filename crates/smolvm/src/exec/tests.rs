//! Client-side tests against scripted fake agents: handshakes, version checks, timeouts, error mapping.
//! The real agent is tested against this client in `smolvm-agent` (server tests).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use smolvm_protocol::{
    with_sync, Decoder, Done, Frame, FrameType, Hello, Ready, Reply, Request, PROTOCOL_VERSION,
};

use super::{AgentClient, ExecError};
use crate::backend::AgentEndpoint;

fn ready(version: u32, nonce: Option<u64>) -> Ready {
    Ready {
        protocol_version: version,
        agent_version: "fake".into(),
        nonce,
        boot_stages: vec![],
    }
}

/// `SYNC` + a Ready frame.
fn ready_bytes(version: u32, nonce: u64) -> Vec<u8> {
    let f = Frame::json(FrameType::Ready, 0, &ready(version, Some(nonce))).unwrap();
    with_sync(&f).unwrap()
}

/// A scripted agent's side of a connection.
struct FakeAgent {
    s: UnixStream,
    dec: Decoder,
}

impl FakeAgent {
    fn new(s: UnixStream) -> FakeAgent {
        FakeAgent {
            s,
            dec: Decoder::hunting(),
        }
    }

    /// The next frame from the host; `None` once it disconnected.
    fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.dec.next_frame() {
                return Some(f.unwrap());
            }
            if self.dec.read_from(&mut self.s, 4096).ok()? == 0 {
                return None;
            }
        }
    }

    /// Waits for the host's Hello; returns its nonce.
    fn hello(&mut self) -> u64 {
        let f = self.frame().expect("a hello");
        match Request::from_frame(f).unwrap() {
            Request::Hello(Hello { nonce }) => nonce,
            other => panic!("{other:?}"),
        }
    }

    /// Answers every request with `Done`, after first sending a stale frame; skips repeated Hellos.
    fn answer_pings(mut self) {
        let stale = Reply::Done(Done::default()).to_frame(7).unwrap();
        let _ = stale.write_to(&mut self.s);
        while let Some(f) = self.frame() {
            if f.frame_type == FrameType::Hello {
                continue;
            }
            let done = Reply::Done(Done::default()).to_frame(f.request_id).unwrap();
            if done.write_to(&mut self.s).is_err() {
                break;
            }
        }
    }
}

/// Runs `script` as the agent on the other end of a socketpair, and connects a client to it.
fn with_agent(
    timeout: Duration,
    script: impl FnOnce(FakeAgent) + Send + 'static,
) -> (Result<AgentClient, ExecError>, std::thread::JoinHandle<()>) {
    let (agent, host) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || script(FakeAgent::new(agent)));
    (AgentClient::from_stream(host, timeout), t)
}

const SHORT: Duration = Duration::from_millis(300);

#[test]
fn version_mismatch_is_a_clear_error() {
    let (r, _t) = with_agent(SHORT, |mut a| {
        let n = a.hello();
        a.s.write_all(&ready_bytes(PROTOCOL_VERSION + 1, n))
            .unwrap();
        std::thread::sleep(SHORT);
    });
    match r {
        Err(e @ ExecError::VersionMismatch { .. }) => {
            assert!(e.to_string().contains("rebuild the image"))
        }
        other => panic!("{other:?}"),
    }
    // An agent from before the greeting sends an unmarked Ready unasked, and never answers.
    let (r, _t) = with_agent(Duration::from_secs(10), |a| {
        let mut s = a.s;
        Frame::json(FrameType::Ready, 0, &ready(1, None))
            .unwrap()
            .write_to(&mut s)
            .unwrap();
        std::thread::sleep(Duration::from_secs(1));
    });
    assert!(
        matches!(r, Err(ExecError::VersionMismatch { agent: 1, .. })),
        "{r:?}"
    );
}

#[test]
fn stale_bytes_half_frames_and_foreign_readies_are_skipped() {
    let (r, t) = with_agent(Duration::from_secs(10), |mut a| {
        let n = a.hello();
        let mut stale = Vec::new();
        // The end of a frame cut in half, whole frames, a marker with a Ready for another host, a
        // marker followed by garbage, and a Ready of a wrong type of frame.
        stale.extend(
            &Reply::Stdout(vec![b'x'; 100])
                .to_frame(3)
                .unwrap()
                .encode()
                .unwrap()[40..],
        );
        stale.extend(
            Reply::Done(Done::default())
                .to_frame(3)
                .unwrap()
                .encode()
                .unwrap(),
        );
        stale.extend(ready_bytes(PROTOCOL_VERSION, n ^ 1));
        stale.extend(smolvm_protocol::SYNC);
        stale.extend(b"\xff garbage");
        stale.extend(smolvm_protocol::SYNC);
        stale.extend(
            Reply::Done(Done::default())
                .to_frame(0)
                .unwrap()
                .encode()
                .unwrap(),
        );
        stale.extend(ready_bytes(PROTOCOL_VERSION, n));
        // Byte by byte, so the client sees every split.
        for b in stale {
            a.s.write_all(&[b]).unwrap();
        }
        a.answer_pings();
    });
    let client = r.unwrap();
    assert_eq!(client.ready().agent_version, "fake");
    client.ping().unwrap();
    drop(client);
    t.join().unwrap();
}

#[test]
fn hello_is_resent_until_answered() {
    let (r, t) = with_agent(Duration::from_secs(10), |mut a| {
        // The first greeting is lost (as when the agent was still skipping a half frame).
        let first = a.hello();
        let again = a.hello();
        assert_eq!(first, again, "a re-sent Hello must keep its nonce");
        a.s.write_all(&ready_bytes(PROTOCOL_VERSION, again))
            .unwrap();
        a.answer_pings();
    });
    r.unwrap().ping().unwrap();
    t.join().unwrap();
}

#[test]
fn endless_stale_output_is_bounded() {
    let (r, _t) = with_agent(Duration::from_secs(60), |mut a| {
        a.hello();
        let junk = vec![0x11u8; 1 << 20];
        for _ in 0..=(super::greeting::MAX_STALE_BYTES >> 20) {
            if a.s.write_all(&junk).is_err() {
                return;
            }
        }
    });
    assert!(matches!(r, Err(ExecError::Protocol(_))), "{r:?}");
}

#[test]
fn silent_or_closed_agent_before_ready() {
    let (_agent, host) = UnixStream::pair().unwrap();
    assert!(matches!(
        AgentClient::from_stream(host, SHORT),
        Err(ExecError::Timeout { .. })
    ));
    let (agent, host) = UnixStream::pair().unwrap();
    drop(agent);
    assert!(matches!(
        AgentClient::from_stream(host, SHORT),
        Err(ExecError::AgentDisconnected { .. })
    ));
}

/// An agent that greets back and then never answers.
fn mute(mut a: FakeAgent) {
    let n = a.hello();
    a.s.write_all(&ready_bytes(PROTOCOL_VERSION, n)).unwrap();
    while a.frame().is_some() {}
}

#[test]
fn unresponsive_agent_times_out() {
    let (r, _t) = with_agent(SHORT, mute);
    let mut client = r.unwrap();
    client.set_request_timeout(SHORT);
    let e = client.ping().unwrap_err();
    assert!(matches!(e, ExecError::Timeout { .. }), "{e:?}");
    assert_eq!(crate::Error::from(e).kind(), "operation_timeout");
}

#[test]
fn unix_socket_endpoint_connects_and_ignores_stale_frames() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let agent = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut a = FakeAgent::new(s);
        let n = a.hello();
        a.s.write_all(&ready_bytes(PROTOCOL_VERSION, n)).unwrap();
        a.answer_pings();
    });
    let client =
        AgentClient::connect(&AgentEndpoint::UnixSocket(path), Duration::from_secs(10)).unwrap();
    assert_eq!(client.ready().agent_version, "fake");
    for _ in 0..3 {
        client.ping().unwrap();
    }
    drop(client);
    agent.join().unwrap();
}

#[test]
fn firecracker_vsock_handshake_keeps_the_agent_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let agent = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        assert_eq!(line, b"CONNECT 52");
        s.write_all(b"OK 1073741824\n").unwrap();
        let mut a = FakeAgent::new(s);
        let n = a.hello();
        a.s.write_all(&ready_bytes(PROTOCOL_VERSION, n)).unwrap();
        a.answer_pings();
    });
    let endpoint = AgentEndpoint::FirecrackerVsock {
        uds_path: path,
        port: 52,
    };
    let client = AgentClient::connect(&endpoint, Duration::from_secs(10)).unwrap();
    client.ping().unwrap();
    drop(client);
    agent.join().unwrap();
}

#[test]
fn vsock_refusal_and_missing_socket_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let proxy = std::thread::spawn(move || {
        // Refuse every attempt until the client gives up, as Firecracker does while nobody listens.
        listener.set_nonblocking(true).unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < end {
            if let Ok((s, _)) = listener.accept() {
                drop(s);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let endpoint = AgentEndpoint::FirecrackerVsock {
        uds_path: path,
        port: 52,
    };
    match AgentClient::connect(&endpoint, SHORT) {
        Err(ExecError::VsockHandshake { port, .. }) => assert_eq!(port, 52),
        other => panic!("{other:?}"),
    }
    proxy.join().unwrap();
    let missing = AgentEndpoint::UnixSocket(dir.path().join("missing.sock"));
    match AgentClient::connect(&missing, SHORT) {
        Err(e @ ExecError::Connect { .. }) => {
            assert_eq!(crate::Error::from(e).kind(), "exec")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn errors_map_to_library_kinds() {
    let v: crate::Error = ExecError::InvalidRequest(smolvm_protocol::ProtocolError::invalid(
        "cwd",
        "not absolute",
    ))
    .into();
    assert_eq!(v.kind(), "validation");
    let d: crate::Error = ExecError::AgentDisconnected { source: None }.into();
    assert_eq!(d.kind(), "exec");
    let io: crate::Error = ExecError::LocalIo {
        action: "open",
        path: "/x".into(),
        source: std::io::ErrorKind::NotFound.into(),
    }
    .into();
    assert_eq!(io.kind(), "io");
    assert!(std::error::Error::source(&io).is_some());
}

#[test]
fn oversized_requests_are_refused_before_sending() {
    let (r, _t) = with_agent(SHORT, mute);
    let client = r.unwrap();
    let huge = "x".repeat(smolvm_protocol::MAX_PAYLOAD_LEN);
    match client.run(&huge, None) {
        Err(ExecError::InvalidRequest(smolvm_protocol::ProtocolError::PayloadTooLarge(n))) => {
            assert!(n > smolvm_protocol::MAX_PAYLOAD_LEN)
        }
        other => panic!("{other:?}"),
    }
    let stdin = vec![0; smolvm_protocol::limits::MAX_STDIN_LEN + 1];
    assert!(matches!(
        client.exec(&super::ExecRequest::argv(["cat"]).stdin(stdin)),
        Err(ExecError::InvalidRequest(_))
    ));
}
