//! The QMP client against a fake QMP server thread on a temporary Unix socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread::JoinHandle;

use super::*;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;
const T: Duration = Duration::from_secs(10);

/// One side of a fake QMP connection.
struct Peer {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Peer {
    fn send(&mut self, line: &str) {
        self.w.write_all(line.as_bytes()).unwrap();
        self.w.write_all(b"\n").unwrap();
    }
    /// Reads one command and returns (execute, id).
    fn recv(&mut self) -> (String, Value) {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        (v["execute"].as_str().unwrap().to_string(), v["id"].clone())
    }
    /// Greets and answers qmp_capabilities.
    fn handshake(&mut self) {
        self.send(GREETING);
        let (cmd, id) = self.recv();
        assert_eq!(cmd, "qmp_capabilities");
        self.send(&json!({"return": {}, "id": id}).to_string());
    }
}

/// Starts a fake server that runs `script` on the first connection; returns the socket path.
fn fake(
    script: impl FnOnce(Peer) + Send + 'static,
) -> (tempfile::TempDir, PathBuf, JoinHandle<()>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let h = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let peer = Peer {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        script(peer);
    });
    (dir, path, h)
}

#[test]
fn handshake_status_and_interleaved_events() {
    let (_d, path, h) = fake(|mut p| {
        p.handshake();
        let (cmd, id) = p.recv();
        assert_eq!(cmd, "query-status");
        p.send(r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RTC_CHANGE", "data": {}}"#);
        p.send(r#"{"timestamp": {"seconds": 1, "microseconds": 3}, "event": "NIC_RX_FILTER_CHANGED", "data": {}}"#);
        p.send(&json!({"return": {"status": "running", "singlestep": false, "running": true}, "id": id}).to_string());
        let (cmd, id) = p.recv();
        assert_eq!(cmd, "system_powerdown");
        p.send(r#"{"timestamp": {"seconds": 1, "microseconds": 4}, "event": "POWERDOWN"}"#);
        p.send(&json!({"return": {}, "id": id}).to_string());
    });
    let mut c = QmpClient::connect(&path, T).unwrap();
    assert_eq!(c.greeting()["QMP"]["version"]["qemu"]["major"], 7);
    assert_eq!(
        c.query_status().unwrap(),
        QmpStatus {
            status: "running".into(),
            running: true
        }
    );
    c.system_powerdown().unwrap();
    let events: Vec<String> = c
        .take_events()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["RTC_CHANGE", "NIC_RX_FILTER_CHANGED", "POWERDOWN"]);
    assert!(c.take_events().is_empty());
    h.join().unwrap();
}

#[test]
fn error_reply_carries_class_and_desc() {
    let (_d, path, h) = fake(|mut p| {
        p.handshake();
        let (cmd, id) = p.recv();
        assert_eq!(cmd, "no-such-command");
        p.send(&json!({"error": {"class": "CommandNotFound", "desc": "The command no-such-command has not been found"}, "id": id}).to_string());
        // The session stays usable after an error.
        let (_, id) = p.recv();
        p.send(&json!({"return": {"answer": 42}, "id": id}).to_string());
    });
    let mut c = QmpClient::connect(&path, T).unwrap();
    match c.execute("no-such-command", None) {
        Err(QmpError::Command {
            command,
            class,
            desc,
        }) => {
            assert_eq!(command, "no-such-command");
            assert_eq!(class, "CommandNotFound");
            assert_eq!(desc, "The command no-such-command has not been found");
        }
        other => panic!("unexpected {other:?}"),
    }
    let v = c.execute("x", Some(json!({"a": 1}))).unwrap();
    assert_eq!(v, json!({"answer": 42}));
    h.join().unwrap();
}

#[test]
fn arguments_are_sent() {
    let (_d, path, h) = fake(|mut p| {
        p.handshake();
        let mut line = String::new();
        p.r.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["execute"], "human-monitor-command");
        assert_eq!(v["arguments"], json!({"command-line": "info version"}));
        p.send(&json!({"return": "7.2.0\r\n", "id": v["id"]}).to_string());
    });
    let mut c = QmpClient::connect(&path, T).unwrap();
    let v = c
        .execute(
            "human-monitor-command",
            Some(json!({"command-line": "info version"})),
        )
        .unwrap();
    assert_eq!(v, "7.2.0\r\n");
    h.join().unwrap();
}

#[test]
fn quit_tolerates_a_closed_connection() {
    let (_d, path, h) = fake(|mut p| {
        p.handshake();
        let (cmd, _) = p.recv();
        assert_eq!(cmd, "quit");
        p.send(r#"{"timestamp": {"seconds": 1, "microseconds": 0}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}"#);
        // Close without replying, as an exiting QEMU may.
    });
    let mut c = QmpClient::connect(&path, T).unwrap();
    c.quit().unwrap();
    h.join().unwrap();
}

#[test]
fn protocol_violations_are_errors() {
    // No greeting.
    let (_d, path, h) = fake(|mut p| p.send(r#"{"return": {}}"#));
    assert!(matches!(
        QmpClient::connect(&path, T),
        Err(QmpError::Protocol(_))
    ));
    h.join().unwrap();

    // Not JSON.
    let (_d, path, h) = fake(|mut p| p.send("hello"));
    assert!(matches!(
        QmpClient::connect(&path, T),
        Err(QmpError::Json(_))
    ));
    h.join().unwrap();

    // A reply with someone else's id.
    let (_d, path, h) = fake(|mut p| {
        p.handshake();
        p.recv();
        p.send(r#"{"return": {}, "id": 999}"#);
    });
    let mut c = QmpClient::connect(&path, T).unwrap();
    assert!(matches!(
        c.execute("query-status", None),
        Err(QmpError::Protocol(_))
    ));
    h.join().unwrap();

    // Closed mid-session.
    let (_d, path, h) = fake(|mut p| {
        p.handshake();
        p.recv();
    });
    let mut c = QmpClient::connect(&path, T).unwrap();
    assert!(matches!(c.query_status(), Err(QmpError::Closed { .. })));
    h.join().unwrap();
}

#[test]
fn silence_times_out_instead_of_hanging() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (_d, path, h) = fake(move |_p| {
        // Hold the connection open without a greeting until the client gave up.
        let _ = rx.recv();
    });
    let err = QmpClient::connect(&path, Duration::from_millis(100)).unwrap_err();
    assert!(matches!(err, QmpError::Io { .. }), "{err:?}");
    tx.send(()).unwrap();
    h.join().unwrap();
}

#[test]
fn connecting_to_nothing_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.sock");
    let err = QmpClient::connect(&path, T).unwrap_err();
    assert!(err.to_string().contains("absent.sock"), "{err}");
    assert!(std::error::Error::source(&err).is_some());
}
