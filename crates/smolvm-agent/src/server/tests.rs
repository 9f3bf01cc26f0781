//! The server and the real host client on the two ends of a socketpair, greeting each other as over a
//! real channel. Everything a guest would do is done on the host here; no VM needed.

pub(super) mod channel;
mod env_files;
mod hostile;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smolvm::{
    AgentClient, AgentErrorKind as ErrorKind, ExecError, ExecRequest, ExecStream as Stream,
};
use smolvm_protocol::{BootStage, Ready, PROTOCOL_VERSION};

use super::{serve_with, Config, Hooks};

static POWERED_OFF: AtomicBool = AtomicBool::new(false);

fn test_power_off() -> ! {
    POWERED_OFF.store(true, Ordering::SeqCst);
    loop {
        std::thread::park();
    }
}

static HOOKS: Hooks = Hooks {
    power_off: test_power_off,
};

pub(super) struct Harness {
    pub client: AgentClient,
    /// The agent's end, kept to simulate the agent going away.
    pub agent_end: UnixStream,
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub server: JoinHandle<std::io::Result<()>>,
}

pub(super) fn config_in(dir: &Path) -> Config {
    Config {
        profile_path: dir.join("profile.d/smolvm_env.sh"),
        env_json_path: dir.join("smolvm/env.json"),
        shell: "/bin/sh".into(),
    }
}

/// The agent's greeting template in these tests.
pub(super) fn test_ready() -> Ready {
    Ready {
        protocol_version: PROTOCOL_VERSION,
        agent_version: "test".into(),
        nonce: None,
        boot_stages: vec![BootStage {
            name: "init_start".into(),
            micros: 42,
        }],
    }
}

/// Starts a server thread on one end of a socketpair; returns the other end.
pub(super) fn start_server(
    config: &Config,
) -> (UnixStream, UnixStream, JoinHandle<std::io::Result<()>>) {
    let (agent, host) = UnixStream::pair().unwrap();
    let chan = File::from(OwnedFd::from(agent.try_clone().unwrap()));
    let config = config.clone();
    let server = std::thread::spawn(move || serve_with(chan, &HOOKS, &config, &test_ready()));
    (agent, host, server)
}

pub(super) fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let (agent_end, host, server) = start_server(&config);
    let client = AgentClient::from_stream(host, Duration::from_secs(10)).unwrap();
    Harness {
        client,
        agent_end,
        dir,
        config,
        server,
    }
}

pub(super) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub(super) fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// True once `pid` is gone or a zombie (killed, waiting for its reaper).
pub(super) fn wait_dead(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match smolvm::internals::process::proc_stat(pid) {
            None => return true,
            Some(s) if s.state == 'Z' || s.state == 'X' => return true,
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}

#[test]
fn ready_is_kept_and_ping_works() {
    let h = harness();
    assert_eq!(h.client.ready().boot_stages[0].micros, 42);
    h.client.ping().unwrap();
}

#[test]
fn exit_codes_and_signals() {
    let h = harness();
    assert!(h.client.run("true", None).unwrap().ok());
    assert_eq!(h.client.run("exit 3", None).unwrap().exit_code, 3);
    assert_eq!(h.client.run("kill -9 $$", None).unwrap().exit_code, 137);
    let r = h.client.run("echo '  hi  '", None).unwrap();
    assert_eq!(r.output(), "hi");
}

#[test]
fn stdout_and_stderr_are_separate() {
    let h = harness();
    let r = h
        .client
        .run("echo out1; echo err1 >&2; echo out2; echo err2 >&2", None)
        .unwrap();
    assert_eq!(r.stdout, "out1\nout2\n");
    assert_eq!(r.stderr, "err1\nerr2\n");
    let mut seen = Vec::new();
    let code = h
        .client
        .exec_streaming(&ExecRequest::shell("echo a; echo b >&2; exit 4"), |s, d| {
            seen.push((s, d.to_vec()))
        })
        .unwrap();
    assert_eq!(code, 4);
    assert!(seen.contains(&(Stream::Stdout, b"a\n".to_vec())));
    assert!(seen.contains(&(Stream::Stderr, b"b\n".to_vec())));
}

#[test]
fn ten_mib_of_binary_output_arrive_intact() {
    let h = harness();
    let data = pseudo_random(10 * 1024 * 1024, 7);
    let file = h.dir.path().join("big.bin");
    std::fs::write(&file, &data).unwrap();
    let out = h
        .client
        .exec_raw(&ExecRequest::argv(["cat", &path_str(&file)]))
        .unwrap();
    assert!(out.ok());
    assert!(out.stdout == data, "10 MiB differ");
    let out = h
        .client
        .exec_raw(&ExecRequest::shell(r"printf '\000\377\n\r'"))
        .unwrap();
    assert_eq!(out.stdout, b"\0\xff\n\r");
}

#[test]
fn stdin_is_fed_and_closed() {
    let h = harness();
    let data = pseudo_random(1024 * 1024 + 3, 11);
    let out = h
        .client
        .exec_raw(&ExecRequest::argv(["cat"]).stdin(data.clone()))
        .unwrap();
    assert!(out.stdout == data);
    let r = h
        .client
        .exec(&ExecRequest::shell("wc -c").stdin(Vec::new()))
        .unwrap();
    assert_eq!(r.output(), "0");
    // Without stdin the command reads /dev/null, never the host.
    assert_eq!(h.client.run("cat", None).unwrap().stdout, "");
}

#[test]
fn argv_env_and_cwd() {
    let h = harness();
    let dir = path_str(h.dir.path());
    let r = h
        .client
        .exec(
            &ExecRequest::argv(["sh", "-c", "pwd; printf %s \"$FOO\""])
                .cwd(dir.clone())
                .env("FOO", "it's $(not run)"),
        )
        .unwrap();
    let canonical = path_str(&std::fs::canonicalize(h.dir.path()).unwrap());
    assert_eq!(r.stdout, format!("{canonical}\nit's $(not run)"));
    match h.client.exec(&ExecRequest::argv(["/nonexistent/program"])) {
        Err(ExecError::Agent { kind, .. }) => assert_eq!(kind, ErrorKind::NotFound),
        other => panic!("{other:?}"),
    }
    match h.client.exec(&ExecRequest::argv(Vec::<String>::new())) {
        Err(ExecError::InvalidRequest(_)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let h = harness();
    let pidfile = h.dir.path().join("bg.pid");
    let cmd = format!(
        "sleep 1000 & echo $! > '{}'; sleep 1000",
        path_str(&pidfile)
    );
    match h.client.run(&cmd, Some(Duration::from_secs(2))) {
        Err(ExecError::Timeout { operation, .. }) => assert_eq!(operation, "command"),
        other => panic!("{other:?}"),
    }
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(wait_dead(pid), "background grandchild {pid} survived");
    let e: smolvm::Error = ExecError::Timeout {
        operation: "command".into(),
        after: Duration::from_secs(1),
    }
    .into();
    assert_eq!(e.kind(), "operation_timeout");
    // The connection is still fine.
    h.client.ping().unwrap();
}

#[test]
fn background_jobs_do_not_hold_the_request_open() {
    let h = harness();
    let r = h.client.run("sleep 1000 & echo $!", None).unwrap();
    assert!(r.ok());
    let pid: u32 = r.output().parse().unwrap();
    // SAFETY: kill(2) of the sleep this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(wait_dead(pid));
}

#[test]
fn sixteen_concurrent_execs_on_one_connection() {
    let h = harness();
    let gate = h.dir.path().join("gate");
    std::fs::create_dir(&gate).unwrap();
    // Each command waits until all 16 have started: serial execution could not finish at all.
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let client = &h.client;
                let gate = path_str(&gate);
                s.spawn(move || {
                    let cmd = format!(
                        "touch '{gate}/{i}'; while [ $(ls '{gate}' | wc -l) -lt 16 ]; do sleep 0.02; done; echo {i}"
                    );
                    client.run(&cmd, Some(Duration::from_secs(60))).unwrap()
                })
            })
            .collect();
        for (i, handle) in handles.into_iter().enumerate() {
            let r = handle.join().unwrap();
            assert!(r.ok());
            assert_eq!(r.output(), i.to_string());
        }
    });
}

#[test]
fn output_over_the_limit_is_a_clear_error() {
    let h = harness();
    let cmd = format!(
        "head -c {} /dev/zero",
        smolvm_protocol::limits::MAX_OUTPUT_LEN + 1
    );
    match h.client.run(&cmd, Some(Duration::from_secs(120))) {
        Err(ExecError::OutputTooLarge { limit }) => {
            assert_eq!(limit, smolvm_protocol::limits::MAX_OUTPUT_LEN)
        }
        other => panic!("{:?}", other.map(|r| r.stdout.len())),
    }
    h.client.ping().unwrap();
}

#[test]
fn file_round_trip_with_mode_and_parents() {
    let h = harness();
    let data = pseudo_random(3 * 1024 * 1024 + 17, 3);
    let local = h.dir.path().join("up.bin");
    std::fs::write(&local, &data).unwrap();
    let remote = h.dir.path().join("guest/a/b/c/file.bin");
    let n = h
        .client
        .upload_file(&local, &path_str(&remote), Some(0o640))
        .unwrap();
    assert_eq!(n, data.len() as u64);
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&remote).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert!(std::fs::read(&remote).unwrap() == data);
    let back = h.dir.path().join("down.bin");
    let n = h.client.download_file(&path_str(&remote), &back).unwrap();
    assert_eq!(n, data.len() as u64);
    assert!(std::fs::read(&back).unwrap() == data);
    let back_mode = std::fs::metadata(&back).unwrap().permissions().mode() & 0o7777;
    assert_eq!(back_mode, 0o640);
    // Small helpers and an empty file.
    let small = path_str(&h.dir.path().join("guest/empty"));
    h.client.write_file(&small, b"", 0o600).unwrap();
    assert_eq!(h.client.read_file(&small).unwrap(), b"");
    // Errors are the agent's, with their kind; nothing partial is left behind.
    match h.client.read_file("/nonexistent/file") {
        Err(ExecError::Agent { kind, .. }) => assert_eq!(kind, ErrorKind::NotFound),
        other => panic!("{other:?}"),
    }
    match h.client.read_file(&path_str(h.dir.path())) {
        Err(ExecError::Agent { kind, .. }) => assert_eq!(kind, ErrorKind::BadRequest),
        other => panic!("{other:?}"),
    }
    match h.client.write_file("relative/path", b"x", 0o644) {
        Err(ExecError::InvalidRequest(_)) => {}
        other => panic!("{other:?}"),
    }
    let leftovers: Vec<PathBuf> = std::fs::read_dir(remote.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(leftovers, vec![remote.clone()]);
}

#[test]
fn agent_going_away_mid_command_is_agent_disconnected() {
    let h = harness();
    let marker = h.dir.path().join("started");
    let cmd = format!("touch '{}'; sleep 1000", path_str(&marker));
    std::thread::scope(|s| {
        let run = s.spawn(|| h.client.run(&cmd, None));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !marker.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        h.agent_end.shutdown(std::net::Shutdown::Both).unwrap();
        match run.join().unwrap() {
            Err(ExecError::AgentDisconnected { .. }) => {}
            other => panic!("{other:?}"),
        }
    });
    assert!(matches!(
        h.client.ping(),
        Err(ExecError::AgentDisconnected { .. })
    ));
    // The server saw the disconnect and returned cleanly.
    assert!(h.server.join().unwrap().is_ok());
}

#[test]
fn power_off_acknowledges_then_calls_the_hook() {
    let h = harness();
    h.client.power_off().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !POWERED_OFF.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(POWERED_OFF.load(Ordering::SeqCst));
}
