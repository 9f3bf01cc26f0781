//! The vsock handshake against a fake vsock Unix socket.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use crate::backend::firecracker::{connect_vsock, VsockHandshakeError};

/// Listens on a temporary socket; for one connection, reads the CONNECT line (sent back on the
/// channel) and writes `reply`, then holds the connection until the client closes it.
fn fake_vsock(reply: &'static [u8]) -> (tempfile::TempDir, PathBuf, mpsc::Receiver<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        tx.send(line).unwrap();
        let mut stream = reader.into_inner();
        if reply == b"<close>" {
            return;
        }
        stream.write_all(reply).unwrap();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    });
    (dir, path, rx)
}

#[test]
fn handshake_succeeds_and_no_guest_bytes_are_swallowed() {
    // The acknowledgement and the agent's first bytes arrive in one write.
    let (_dir, path, rx) = fake_vsock(b"OK 1073741824\nhello from the agent");
    let mut stream = connect_vsock(&path, 52, Duration::from_secs(5)).unwrap();
    assert_eq!(rx.recv().unwrap(), "CONNECT 52\n");
    let mut buf = [0u8; 20];
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello from the agent");
    assert_eq!(stream.read_timeout().unwrap(), None);
}

#[test]
fn an_unexpected_reply_is_a_typed_error() {
    let (_dir, path, _rx) = fake_vsock(b"ERR no\n");
    let err = connect_vsock(&path, 52, Duration::from_secs(5)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let inner = err.get_ref().unwrap().downcast_ref::<VsockHandshakeError>();
    assert_eq!(
        inner,
        Some(&VsockHandshakeError::UnexpectedReply {
            port: 52,
            reply: "ERR no\n".into()
        })
    );
}

#[test]
fn a_closed_connection_means_nobody_listens_in_the_guest() {
    let (_dir, path, _rx) = fake_vsock(b"<close>");
    let err = connect_vsock(&path, 1024, Duration::from_secs(5)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    let inner = err.get_ref().unwrap().downcast_ref::<VsockHandshakeError>();
    assert_eq!(inner, Some(&VsockHandshakeError::Closed { port: 1024 }));
}

#[test]
fn a_silent_device_times_out() {
    let (_dir, path, _rx) = fake_vsock(b"");
    let err = connect_vsock(&path, 52, Duration::from_millis(200)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
}

#[test]
fn an_overlong_reply_is_refused() {
    let (_dir, path, _rx) = fake_vsock(b"OK 1111111111111111111111111111111111111111\n");
    let err = connect_vsock(&path, 52, Duration::from_secs(5)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn a_missing_socket_is_the_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = connect_vsock(&dir.path().join("none"), 52, Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
}
