//! The HTTP client against a fake server: request format, body framings, keep-alive and reconnects,
//! fault mapping, timeouts and malformed answers.

use std::time::Duration;

use super::fake_server::{FakeServer, Reply};
use crate::backend::firecracker::api::{ActionType, InstanceActionInfo, InstanceInfo};
use crate::backend::firecracker::{ApiClient, FirecrackerError, Method};

const INFO: &str =
    r#"{"app_name":"Firecracker","id":"vm-1","state":"Not started","vmm_version":"1.16.1"}"#;

fn chunked_info() -> Vec<u8> {
    // Split mid-document, with a chunk extension and a trailer.
    let (a, b) = INFO.split_at(20);
    format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{a}\r\n{:X}\r\n{b}\r\n0\r\nX-Trailer: y\r\n\r\n",
        a.len(),
        b.len()
    )
    .into_bytes()
}

fn ok_json(body: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn requests_carry_host_content_length_and_json() {
    let server = FakeServer::accepting();
    let mut client = ApiClient::new(&server.socket);
    client
        .send(&InstanceActionInfo::new(ActionType::InstanceStart))
        .unwrap();
    let r = &server.requests()[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("PUT", "/actions"));
    assert_eq!(r.header("host"), Some("localhost"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert_eq!(r.body, br#"{"action_type":"InstanceStart"}"#);
}

#[test]
fn chunked_body_is_decoded_and_the_connection_kept() {
    let server = FakeServer::start(|_| Reply::Raw(chunked_info()));
    let mut client = ApiClient::new(&server.socket);
    for _ in 0..3 {
        let info: InstanceInfo = client.get_json("/").unwrap();
        assert_eq!(info.state, "Not started");
    }
    let conns: Vec<usize> = server.requests().iter().map(|r| r.conn).collect();
    assert_eq!(conns, [0, 0, 0], "keep-alive reuses one connection");
    assert_eq!(server.requests()[0].header("content-length"), Some("0"));
}

#[test]
fn responses_arriving_byte_by_byte_are_parsed() {
    let server = FakeServer::start(|r| {
        if r.path == "/" {
            Reply::Trickle(chunked_info())
        } else {
            Reply::Trickle(ok_json(r#"{"firecracker_version":"1.16.1"}"#, ""))
        }
    });
    let mut client = ApiClient::new(&server.socket);
    let info: InstanceInfo = client.get_json("/").unwrap();
    assert_eq!(info.id, "vm-1");
    let v: crate::backend::firecracker::api::FirecrackerVersion =
        client.get_json("/version").unwrap();
    assert_eq!(v.firecracker_version, "1.16.1");
}

#[test]
fn connection_close_makes_the_next_request_reconnect() {
    let server = FakeServer::start(|_| Reply::RawThenClose(ok_json(INFO, "Connection: close\r\n")));
    let mut client = ApiClient::new(&server.socket);
    client.get_json::<InstanceInfo>("/").unwrap();
    client.get_json::<InstanceInfo>("/").unwrap();
    let conns: Vec<usize> = server.requests().iter().map(|r| r.conn).collect();
    assert_eq!(conns, [0, 1]);
}

#[test]
fn a_connection_the_server_dropped_silently_is_replaced() {
    // The server claims keep-alive but closes after each answer: the next request meets a dead
    // connection and must be retried once on a new one.
    let server = FakeServer::start(|_| Reply::RawThenClose(ok_json(INFO, "")));
    let mut client = ApiClient::new(&server.socket);
    for _ in 0..3 {
        client.get_json::<InstanceInfo>("/").unwrap();
    }
    let conns: Vec<usize> = server.requests().iter().map(|r| r.conn).collect();
    assert_eq!(conns, [0, 1, 2]);
}

#[test]
fn http_1_0_without_keep_alive_and_close_delimited_bodies() {
    let server = FakeServer::start(|_| {
        Reply::RawThenClose(format!("HTTP/1.0 200 OK\r\n\r\n{INFO}").into_bytes())
    });
    let mut client = ApiClient::new(&server.socket);
    let resp = client.request(Method::Get, "/", None).unwrap();
    assert_eq!(resp.body, INFO.as_bytes());
    client.request(Method::Get, "/", None).unwrap();
    let conns: Vec<usize> = server.requests().iter().map(|r| r.conn).collect();
    assert_eq!(conns, [0, 1]);
}

#[test]
fn interim_100_continue_is_skipped() {
    let server = FakeServer::start(|_| {
        let mut raw = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        raw.extend(b"HTTP/1.1 204 \r\n\r\n");
        Reply::Raw(raw)
    });
    let mut client = ApiClient::new(&server.socket);
    let resp = client.call(Method::Put, "/actions", Some(b"{}")).unwrap();
    assert_eq!(resp.status, 204);
    assert!(resp.body.is_empty());
}

#[test]
fn a_400_fault_becomes_a_typed_error() {
    let server = FakeServer::start(|_| {
        Reply::fault(
            400,
            "The kernel file cannot be opened: No such file or directory (os error 2)",
        )
    });
    let mut client = ApiClient::new(&server.socket);
    let err = client
        .send(&InstanceActionInfo::new(ActionType::InstanceStart))
        .unwrap_err();
    match err {
        FirecrackerError::Api {
            method,
            path,
            status,
            fault_message,
        } => {
            assert_eq!(method, Method::Put);
            assert_eq!(path, "/actions");
            assert_eq!(status, 400);
            assert_eq!(
                fault_message,
                "The kernel file cannot be opened: No such file or directory (os error 2)"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // The connection stays usable after an error answer.
    assert!(client.call(Method::Get, "/", None).is_err());
    let conns: Vec<usize> = server.requests().iter().map(|r| r.conn).collect();
    assert_eq!(conns, [0, 0]);
}

#[test]
fn a_fault_without_json_keeps_the_raw_body() {
    let server = FakeServer::start(|_| {
        Reply::Raw(b"HTTP/1.1 500 Internal\r\nContent-Length: 7\r\n\r\nboom!\r\n".to_vec())
    });
    let err = ApiClient::new(&server.socket)
        .call(Method::Get, "/", None)
        .unwrap_err();
    assert!(
        matches!(&err, FirecrackerError::Api { status: 500, fault_message, .. } if fault_message == "boom!"),
        "{err:?}"
    );
}

#[test]
fn a_server_that_never_answers_times_out() {
    let server = FakeServer::start(|_| Reply::Hang);
    let mut client = ApiClient::new(&server.socket).with_timeout(Duration::from_millis(200));
    let err = client.call(Method::Get, "/", None).unwrap_err();
    assert!(
        matches!(&err, FirecrackerError::Timeout { method: Method::Get, path, .. } if path == "/"),
        "{err:?}"
    );
}

#[test]
fn a_server_that_stalls_mid_body_times_out() {
    let server = FakeServer::start(|_| {
        Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial\":".to_vec())
    });
    let mut client = ApiClient::new(&server.socket).with_timeout(Duration::from_millis(200));
    let err = client.call(Method::Get, "/", None).unwrap_err();
    assert!(matches!(err, FirecrackerError::Timeout { .. }), "{err:?}");
}

#[test]
fn malformed_responses_are_errors() {
    for raw in [
        &b"garbage\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
    ] {
        let raw = raw.to_vec();
        let server = FakeServer::start(move |_| Reply::RawThenClose(raw.clone()));
        let err = ApiClient::new(&server.socket)
            .call(Method::Get, "/", None)
            .unwrap_err();
        assert!(
            matches!(err, FirecrackerError::MalformedResponse { .. }),
            "{err:?}"
        );
    }
}

#[test]
fn a_body_cut_short_by_close_is_an_error_not_a_retry() {
    let server = FakeServer::start(|_| {
        Reply::RawThenClose(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec())
    });
    let err = ApiClient::new(&server.socket)
        .call(Method::Get, "/", None)
        .unwrap_err();
    assert!(
        matches!(err, FirecrackerError::MalformedResponse { .. }),
        "{err:?}"
    );
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn connect_and_path_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = ApiClient::new(dir.path().join("missing.sock"))
        .call(Method::Get, "/", None)
        .unwrap_err();
    assert!(matches!(err, FirecrackerError::Connect { .. }), "{err:?}");
    for bad in ["/a b", "relative", "/x\r\nEvil: 1"] {
        let err = ApiClient::new(dir.path().join("missing.sock"))
            .call(Method::Get, bad, None)
            .unwrap_err();
        assert!(
            matches!(err, FirecrackerError::InvalidPath { .. }),
            "{err:?}"
        );
    }
}
