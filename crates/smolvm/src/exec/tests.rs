//! Client-side tests against scripted fake agents: handshakes, version checks, timeouts, error mapping.
//! The real agent is tested against this client in `smolvm-agent` (server tests).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use smolvm_protocol::{Done, Frame, FrameType, Ready, Reply, PROTOCOL_VERSION};

use super::{AgentClient, ExecError};
use crate::backend::AgentEndpoint;

fn ready_frame(version: u32, id: u32) -> Vec<u8> {
    let ready = Ready {
        protocol_version: version,
        agent_version: "fake".into(),
        boot_stages: vec![],
    };
    Frame::json(FrameType::Ready, id, &ready)
        .unwrap()
        .encode()
        .unwrap()
}

/// The fake agent's side of the handshake: reads the client's Hello, answers with Ready under its id.
fn greet(s: &mut UnixStream) {
    let hello = Frame::read_from(s).unwrap();
    assert_eq!(hello.frame_type, FrameType::Hello);
    assert_ne!(hello.request_id, 0);
    assert!(hello.payload.is_empty());
    s.write_all(&ready_frame(PROTOCOL_VERSION, hello.request_id))
        .unwrap();
}

/// A client on a socketpair whose fake agent end has completed the handshake; returns both.
fn greeted_pair() -> (UnixStream, AgentClient) {
    let (agent, host) = UnixStream::pair().unwrap();
    let greeter = std::thread::spawn(move || {
        let mut agent = agent;
        greet(&mut agent);
        agent
    });
    let client = AgentClient::from_stream(host, Duration::from_secs(10)).unwrap();
    (greeter.join().unwrap(), client)
}

/// A fake agent that answers every request with `Done`, after first sending a stale frame.
fn answer_pings(mut s: UnixStream) {
    let stale = Reply::Done(Done::default()).to_frame(7).unwrap();
    let _ = stale.write_to(&mut s);
    while let Ok(f) = Frame::read_from(&mut s) {
        let done = Reply::Done(Done::default()).to_frame(f.request_id).unwrap();
        if done.write_to(&mut s).is_err() {
            break;
        }
    }
}

const SHORT: Duration = Duration::from_millis(300);

#[test]
fn version_mismatch_is_a_clear_error() {
    let (mut agent, host) = UnixStream::pair().unwrap();
    // An unasked Ready is enough to tell an agent of another version: no waiting for the echo.
    agent
        .write_all(&ready_frame(PROTOCOL_VERSION + 1, 0))
        .unwrap();
    match AgentClient::from_stream(host, SHORT) {
        Err(e @ ExecError::VersionMismatch { .. }) => {
            assert!(e.to_string().contains("rebuild the image"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn only_the_ready_echoing_the_hello_greets() {
    let (mut agent, host) = UnixStream::pair().unwrap();
    // Stale frames and Readies for other hosts are skipped; without the echo, the wait times out.
    agent
        .write_all(
            &Reply::Done(Done::default())
                .to_frame(0)
                .unwrap()
                .encode()
                .unwrap(),
        )
        .unwrap();
    agent.write_all(&ready_frame(PROTOCOL_VERSION, 0)).unwrap();
    agent
        .write_all(&ready_frame(PROTOCOL_VERSION, 12345))
        .unwrap();
    assert!(matches!(
        AgentClient::from_stream(host, SHORT),
        Err(ExecError::Timeout { .. })
    ));
    // With the echo after the same noise, the handshake completes.
    let (agent, host) = UnixStream::pair().unwrap();
    let fake = std::thread::spawn(move || {
        let mut agent = agent;
        agent.write_all(&ready_frame(PROTOCOL_VERSION, 0)).unwrap();
        greet(&mut agent);
        agent
    });
    let client = AgentClient::from_stream(host, Duration::from_secs(10)).unwrap();
    assert_eq!(client.ready().agent_version, "fake");
    drop(fake.join().unwrap());
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

#[test]
fn unresponsive_agent_times_out() {
    let (_agent, mut client) = greeted_pair();
    client.set_request_timeout(SHORT);
    let e = client.ping().unwrap_err();
    assert!(matches!(e, ExecError::Timeout { .. }), "{e:?}");
    assert_eq!(crate::Error::from(e).kind(), "operation_timeout");
}

#[test]
fn unix_socket_endpoint_says_hello_first_and_ignores_stale_frames() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let agent = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        // The client greets before it waits for Ready (this fake sends Ready only after the Hello).
        greet(&mut s);
        answer_pings(s);
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
        // The OK line and the agent's unasked Ready in one write: the client must not eat the Ready
        // as part of the line (its version is checked), then the echoed one.
        let mut reply = b"OK 1073741824\n".to_vec();
        reply.extend(ready_frame(PROTOCOL_VERSION, 0));
        s.write_all(&reply).unwrap();
        greet(&mut s);
        answer_pings(s);
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
    let (_agent, client) = greeted_pair();
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
