//! Entry points for the coverage-guided fuzzers (`fuzz/` at the top of the repository) and the seeded
//! randomized tests (`tests/hostile_guest_input.rs`): each feeds arbitrary bytes, as a hostile guest
//! would produce them, to this crate's host-side readers of guest output, and panics only on a finding
//! (a panic inside, or a broken invariant; a hang shows as a run that never ends). Not an API.

use std::fs;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use smolvm_channel::fuzzing::scratch_dir;
use smolvm_protocol::fuzzing::retarget;
use smolvm_protocol::{with_sync, Decoder, Frame, FrameType, Ready, Request, PROTOCOL_VERSION};

use crate::backend::console_keeper::{rotated_path, ConsolePipe};
use crate::exec::{AgentClient, ExecRequest};

/// Far longer than any run takes: the greeting with the fake agent never gets near it.
const GREETING: Duration = Duration::from_secs(20);

/// The agent client ([`AgentClient`]) runs one request chosen by `data[0]` (exec, streamed exec with
/// stdin, download to a file, read into memory, env list, upload) against a fake agent that greets
/// properly and then answers with `data[1..]` (frames under the placeholder id
/// [`smolvm_protocol::fuzzing::PLACEHOLDER_ID`] are retargeted at the request) and ends the stream.
/// Every call must return; a downloaded file never has setuid, setgid or sticky bits, and a failed
/// download leaves no temporary file.
pub fn agent_replies(data: &[u8]) {
    let Some((&op, agent_bytes)) = data.split_first() else {
        return;
    };
    let (host, agent) = UnixStream::pair().expect("a socket pair");
    let bytes = agent_bytes.to_vec();
    let agent_thread = std::thread::spawn(move || fake_agent(agent, &bytes));
    let client = AgentClient::from_stream(host, GREETING).expect("greeting the fake agent");
    let dir = scratch_dir("agent");
    let local = dir.join("download");
    match op % 6 {
        0 => drop(client.exec(&ExecRequest::shell("x"))),
        1 => {
            let req = ExecRequest::argv(["cat"]).stdin(b"input".to_vec());
            let mut seen = 0usize;
            let _ = client.exec_streaming(&req, |_, chunk| seen += chunk.len());
        }
        2 => {
            if let Ok(bytes) = client.download_file("/x", &local) {
                let meta = fs::metadata(&local).expect("a downloaded file exists");
                assert_eq!(meta.len(), bytes, "download size");
                let mode = meta.permissions().mode();
                assert_eq!(mode & 0o7000, 0, "downloaded with mode {mode:o}");
            }
        }
        3 => drop(client.read_file("/x")),
        4 => drop(client.list_env_vars()),
        _ => drop(client.write_file("/x", b"content", 0o644)),
    }
    drop(client);
    agent_thread.join().expect("the fake agent");
    let left: Vec<_> = fs::read_dir(&dir)
        .expect("scratch directory")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "download")
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
    let _ = fs::remove_dir_all(&dir);
}

/// Answers the host's `Hello`, waits for its first request, sends `bytes` retargeted at it, ends the
/// stream and reads until the host leaves.
fn fake_agent(mut s: UnixStream, bytes: &[u8]) {
    let mut dec = Decoder::hunting();
    let mut request = None;
    while request.is_none() {
        let frame = loop {
            if let Some(item) = dec.next_frame() {
                break item.expect("the host sends valid frames");
            }
            match dec.read_from(&mut s, 64 * 1024) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        match Request::from_frame(frame.clone()).expect("a valid request") {
            Request::Hello(hello) => {
                let ready = Ready {
                    protocol_version: PROTOCOL_VERSION,
                    agent_version: "fuzz".into(),
                    nonce: Some(hello.nonce),
                    boot_stages: vec![],
                };
                let f = Frame::json(FrameType::Ready, 0, &ready).expect("ready frame");
                if s.write_all(&with_sync(&f).expect("sync")).is_err() {
                    return;
                }
            }
            _ => request = Some(frame.request_id),
        }
    }
    let _ = s.write_all(&retarget(bytes, request.unwrap_or_default()));
    let _ = s.shutdown(Shutdown::Write);
    let _ = io::copy(&mut s, &mut io::sink());
}

/// The console path: `data[2..]` (what a guest prints) goes through the console keeper (a forked
/// process, as for a VM) with a cap of `64 * (data[0] + 1)` bytes, then the logs are read back the
/// way error messages read them (`console_tail`, `log_tail` with `data[1]` lines). The rotated log
/// followed by the current one must be exactly the newest bytes printed, each file at most the cap
/// (or one read, 16 KiB, if larger), and the tails single lines.
pub fn console(data: &[u8]) {
    let [cap, lines, printed @ ..] = data else {
        return;
    };
    let cap = 64 * (u64::from(*cap) + 1);
    let dir = scratch_dir("console");
    let log = dir.join("console.log");
    let pipe = ConsolePipe::new().expect("a pipe");
    // Stand-in for the VMM: this process' own handle on the pipe's write end.
    let mut writer = fs::OpenOptions::new()
        .write(true)
        .open(pipe.vmm_path())
        .expect("open the pipe's write end");
    let pid = pipe.start_keeper(&log, cap).expect("fork the keeper");
    writer.write_all(printed).expect("write to the keeper");
    drop(writer);
    wait_gone(pid);

    let current = fs::read(&log).unwrap_or_default();
    let rotated = fs::read(rotated_path(&log)).unwrap_or_default();
    let per_file = cap.max(16 * 1024);
    assert!(
        current.len() as u64 <= per_file,
        "console.log: {}",
        current.len()
    );
    assert!(
        rotated.len() as u64 <= per_file,
        "console.log.1: {}",
        rotated.len()
    );
    let kept = [rotated, current].concat();
    assert!(
        printed.ends_with(&kept),
        "the logs are not the newest output"
    );
    if printed.len() as u64 <= cap {
        assert_eq!(kept.len(), printed.len(), "output under the cap was lost");
    }
    if let Some(tail) = crate::manager::liveness::console_tail(&log) {
        assert!(!tail.contains('\n'), "a console tail of several lines");
    }
    let tail = crate::process::log_tail(&log, u64::from(*lines), usize::from(*lines));
    assert!(tail.len() <= usize::from(*lines));
    let _ = fs::remove_dir_all(&dir);
}

/// Waits until the forked keeper `pid` exited (it does at end of file).
fn wait_gone(pid: u32) {
    while crate::process::proc_stat(pid).is_some_and(|s| s.state != 'Z') {
        std::thread::sleep(Duration::from_millis(1));
    }
}
