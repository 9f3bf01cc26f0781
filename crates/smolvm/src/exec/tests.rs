//! Client-side tests against scripted fake agents: handshakes, version checks, timeouts, error mapping.
//! The real agent is tested against this client in `smolvm-agent` (server tests).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use smolvm_protocol::{Done, Frame, FrameType, Ready, Reply, PROTOCOL_VERSION};

use super::{AgentClient, ExecError};
use crate::backend::AgentEndpoint;

fn ready_frame(version: u32) -> Vec<u8> {
    let ready = Ready {
        protocol_version: version,
        agent_version: "fake".into(),
        boot_stages: vec![],
    };
    Frame::json(FrameType::Ready, 0, &ready)
        .unwrap()
        .encode()
        .unwrap()
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
    agent.write_all(&ready_frame(PROTOCOL_VERSION + 1)).unwrap();
    match AgentClient::from_stream(host, SHORT) {
        Err(e @ ExecError::VersionMismatch { .. }) => {
            assert!(e.to_string().contains("rebuild the image"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn first_frame_must_be_ready() {
    let (mut agent, host) = UnixStream::pair().unwrap();
    let f = Reply::Done(Done::default()).to_frame(0).unwrap();
    agent.write_all(&f.encode().unwrap()).unwrap();
    assert!(matches!(
        AgentClient::from_stream(host, SHORT),
        Err(ExecError::Protocol(_))
    ));
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
    let (mut agent, host) = UnixStream::pair().unwrap();
    agent.write_all(&ready_frame(PROTOCOL_VERSION)).unwrap();
    let mut client = AgentClient::from_stream(host, SHORT).unwrap();
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
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&ready_frame(PROTOCOL_VERSION)).unwrap();
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
        // The OK line and the agent's Ready in one write: the client must not eat the Ready.
        let mut reply = b"OK 1073741824\n".to_vec();
        reply.extend(ready_frame(PROTOCOL_VERSION));
        s.write_all(&reply).unwrap();
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
    let (mut agent, host) = UnixStream::pair().unwrap();
    agent.write_all(&ready_frame(PROTOCOL_VERSION)).unwrap();
    let client = AgentClient::from_stream(host, SHORT).unwrap();
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
