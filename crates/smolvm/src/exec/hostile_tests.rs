//! Client-side tests with fake agents that behave like a hostile guest: flooding output faster than
//! the caller reads, and file replies with dangerous metadata.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use smolvm_protocol::fuzzing::Rng;
use smolvm_protocol::{Done, Frame, FrameType, Reply, PROTOCOL_VERSION};

use super::tests::{ready_bytes, with_agent, SHORT};

#[test]
fn a_slow_caller_holds_back_a_flooding_agent() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const FRAMES: usize = 400;
    let chunk = vec![b'x'; smolvm_protocol::limits::OUTPUT_CHUNK_LEN];
    let written = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&written);
    let (client, _t) = with_agent(SHORT, move |mut a| {
        let n = a.hello();
        a.s.write_all(&ready_bytes(PROTOCOL_VERSION, n)).unwrap();
        let id = a.frame().expect("an exec").request_id;
        for _ in 0..FRAMES {
            let f = Frame::new(FrameType::Stdout, id, chunk.clone());
            if f.write_to(&mut a.s).is_err() {
                return;
            }
            count.fetch_add(1, Ordering::SeqCst);
        }
        let exit = smolvm_protocol::ExitStatus {
            code: Some(0),
            signal: None,
            timed_out: false,
        };
        let _ = Reply::Exit(exit).to_frame(id).unwrap().write_to(&mut a.s);
    });
    let client = client.unwrap();
    let mut seen = 0usize;
    let mut stalled_at = None;
    let code = client
        .exec_streaming(&crate::exec::ExecRequest::shell("yes"), |_, data| {
            if stalled_at.is_none() {
                // The caller is slow: wait until the agent cannot write any more.
                let mut last = usize::MAX;
                while written.load(Ordering::SeqCst) != last {
                    last = written.load(Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(300));
                }
                stalled_at = Some(last);
            }
            seen += data.len();
        })
        .unwrap();
    assert_eq!(
        (code, seen),
        (0, FRAMES * smolvm_protocol::limits::OUTPUT_CHUNK_LEN)
    );
    // Queued frames plus what the socket and the decoder hold, not the whole flood.
    let stalled_at = stalled_at.unwrap();
    assert!(
        stalled_at <= crate::exec::client::QUEUED_FRAMES + 16,
        "the agent wrote {stalled_at} frames while the caller did not read"
    );
}

#[test]
fn a_downloaded_file_never_gets_setuid_setgid_or_sticky_bits() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("payload");
    let (client, _t) = with_agent(SHORT, |mut a| {
        let n = a.hello();
        a.s.write_all(&ready_bytes(PROTOCOL_VERSION, n)).unwrap();
        let id = a.frame().expect("a file read").request_id;
        Frame::new(FrameType::FileData, id, b"#!/bin/sh\n".to_vec())
            .write_to(&mut a.s)
            .unwrap();
        let done = Done {
            bytes: Some(10),
            mode: Some(0o7755),
        };
        Reply::Done(done)
            .to_frame(id)
            .unwrap()
            .write_to(&mut a.s)
            .unwrap();
        // Stay connected until the host is done.
        let _ = a.frame();
    });
    let client = client.unwrap();
    assert_eq!(client.download_file("/x", &local).unwrap(), 10);
    let mode = std::fs::metadata(&local).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755, "mode {mode:o}");
}

/// A reply frame a hostile agent might send: valid, valid with odd values, or garbage of any type.
fn hostile_frame(rng: &mut Rng, id: u32) -> Frame {
    let id = if rng.below(8) == 0 {
        rng.next_u64() as u32
    } else {
        id
    };
    let frame_type = FrameType::ALL[rng.below(FrameType::ALL.len())];
    let payload = match rng.below(6) {
        0 => br#"{"code":-2147483648,"signal":2147483647,"timed_out":true}"#.to_vec(),
        1 => br#"{"bytes":18446744073709551615,"mode":4294967295}"#.to_vec(),
        2 => br#"{"kind":"no_such_kind","message":"\u0000\u001b[2J"}"#.to_vec(),
        3 => br#"{"vars":{"A":"1","":"x","B=C":"\n"}}"#.to_vec(),
        4 => Vec::new(),
        _ => (0..rng.below(300)).map(|_| rng.next_u64() as u8).collect(),
    };
    Frame::new(frame_type, id, payload)
}

#[test]
fn random_hostile_replies_never_panic_hang_or_leave_files() {
    let dir = tempfile::tempdir().unwrap();
    for seed in 1..=300u64 {
        let (client, t) = with_agent(Duration::from_secs(5), move |mut a| {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let n = a.hello();
            a.s.write_all(&ready_bytes(PROTOCOL_VERSION, n)).unwrap();
            let Some(req) = a.frame() else { return };
            for _ in 0..rng.below(12) {
                let f = hostile_frame(&mut rng, req.request_id);
                if f.write_to(&mut a.s).is_err() {
                    return;
                }
            }
            // Then hang up: every call must end with a result or an error.
        });
        let client = client.unwrap();
        let local = dir.path().join(format!("f{seed}"));
        match seed % 3 {
            0 => drop(client.exec(&crate::exec::ExecRequest::shell("x"))),
            1 => {
                if client.download_file("/x", &local).is_ok() {
                    let mode = std::fs::metadata(&local).unwrap().permissions().mode();
                    assert_eq!(mode & 0o7000, 0, "seed {seed}: mode {mode:o}");
                }
            }
            _ => drop(client.list_env_vars()),
        }
        drop(client);
        t.join().unwrap();
    }
    // A failed download removes its temporary file.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("smolvm-download"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
