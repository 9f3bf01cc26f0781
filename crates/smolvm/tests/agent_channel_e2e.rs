//! End-to-end test of the agent channel on a real QEMU guest (virtio-serial): many hosts one after
//! another, immediately and after pauses, each running a command; and host processes killed in the
//! middle of a long (quiet or output-flooding) command, after which the next host works and the
//! abandoned command is gone; and hosts that die halfway through writing a frame. Run with `SMOLVM_E2E=1` as root; skips otherwise.

mod netns_util;
mod vm_util;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use netns_util::e2e;
use smolvm::ExecRequest;
use smolvm::SmolVm;
use smolvm::{CreateOptions, NetworkMode};
use smolvm_protocol::{with_sync, FrameType, Hello, Request};
use vm_util::{spec, TestEnv};

const BOOT: Duration = Duration::from_secs(90);
const COMMAND: Option<Duration> = Some(Duration::from_secs(30));
const TOOLS: &[&str] = &["qemu-system-x86_64", "mkfs.ext4"];
/// Set for the helper process: data dir, socket dir, VM id and command, one per line.
const HELPER_ENV: &str = "SMOLVM_CHANNEL_HELPER";
const STARTED: &str = "HELPER-STARTED";

fn open(env: &TestEnv, id: &str) -> SmolVm {
    SmolVm::from_id(id, Some(&env.data_dir()), Some(&env.socket_dir()), None).unwrap()
}

fn console(env: &TestEnv, id: &str) -> String {
    std::fs::read_to_string(env.manager.console_log(id)).unwrap_or_default()
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Starts this test binary as a host process that runs `command` in the VM and streams its output.
fn spawn_helper(env: &TestEnv, id: &str, command: &str) -> (Child, mpsc::Receiver<()>) {
    let spec = format!(
        "{}\n{}\n{id}\n{command}",
        env.data_dir().display(),
        env.socket_dir().display()
    );
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "helper_holds_a_command",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .args(["--test-threads", "1"])
        .env(HELPER_ENV, spec)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // Drains everything (a flooding command must not stall on our pipe), reporting the first marker.
    std::thread::spawn(move || {
        let mut told = false;
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if !told && line.contains(STARTED) {
                told = true;
                let _ = tx.send(());
            }
        }
    });
    (child, rx)
}

/// Not a test of its own: the host process that [`spawn_helper`] starts (and then kills).
#[test]
#[ignore = "helper process, not a test: started with --ignored by spawn_helper"]
fn helper_holds_a_command() {
    let Ok(spec) = std::env::var(HELPER_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.splitn(4, '\n').collect();
    let vm = SmolVm::from_id(
        parts[2],
        Some(parts[0].as_ref()),
        Some(parts[1].as_ref()),
        None,
    )
    .unwrap();
    let req = ExecRequest::shell(parts[3]);
    let result = vm.with_agent(|c| {
        Ok(c.exec_streaming(&req, |_, data| {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(data);
            let _ = out.flush();
        })?)
    });
    vm.close();
    panic!("the held command ended: {result:?}");
}

#[test]
fn many_hosts_one_after_another_and_hosts_killed_mid_command() {
    if !e2e("agent channel", TOOLS) {
        return;
    }
    vm_util::image(); // built (or found cached) first: it may fetch packages
    let env = TestEnv::new();
    let m = &env.manager;
    let id = "chan-1";
    let none = CreateOptions {
        network: NetworkMode::None,
        ..CreateOptions::default()
    };
    m.create_with(&spec(id).build().unwrap(), &none).unwrap();
    let t = Instant::now();
    m.start(id, BOOT)
        .unwrap_or_else(|e| panic!("start: {e}\n{}", console(&env, id)));
    let start_to_ready = t.elapsed();

    // Sequential hosts: each connects (Hello -> Ready) and runs one command, with or without pauses.
    let mut first_command = Vec::new();
    let mut greetings = Vec::new();
    for i in 0..20 {
        std::thread::sleep(Duration::from_millis(match i % 4 {
            0 | 1 => 0,
            2 => 100,
            _ => 700,
        }));
        let vm = open(&env, id);
        let t = Instant::now();
        vm.with_agent(|_| Ok(()))
            .unwrap_or_else(|e| panic!("host {i} connect: {e:?}\n{}", console(&env, id)));
        greetings.push(t.elapsed());
        let r = vm
            .run_with_timeout(&format!("echo {i}"), COMMAND)
            .unwrap_or_else(|e| panic!("host {i}: {e:?}\n{}", console(&env, id)));
        first_command.push(t.elapsed());
        assert_eq!(r.stdout, format!("{i}\n"), "host {i}");
        vm.close();
    }

    // Warm latency on one connection.
    let vm = open(&env, id);
    vm.run("true").unwrap();
    let mut warm = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(vm.run("echo hi").unwrap().stdout, "hi\n");
        warm.push(t.elapsed());
    }
    vm.close();

    // Host processes killed mid-command: the next host works at once, and the command is cancelled.
    let mut after_kill = Vec::new();
    for (marker, pattern) in [
        ("exec sleep 4242", "slee[p] 4242"),
        ("exec yes tick-4243", "ye[s] tick-4243"),
    ] {
        let (mut child, started) = spawn_helper(&env, id, &format!("echo {STARTED}; {marker}"));
        if started.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("helper never started {marker:?}\n{}", console(&env, id));
        }
        std::thread::sleep(Duration::from_millis(200));
        child.kill().unwrap();
        child.wait().unwrap();
        let vm = open(&env, id);
        let t = Instant::now();
        let r = vm
            .run_with_timeout("echo after", COMMAND)
            .unwrap_or_else(|e| panic!("after killing {marker:?}: {e:?}\n{}", console(&env, id)));
        after_kill.push(t.elapsed());
        assert_eq!(r.stdout, "after\n");
        let count = format!(
            "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f 2>/dev/null; echo; done \
             | grep -c '{pattern}'"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = vm.run_with_timeout(&count, COMMAND).unwrap();
            if left.stdout.trim() == "0" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{marker:?} still runs after a new host greeted: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        vm.close();
    }

    // Hosts that die in the middle of writing a frame: the half frame never reaches the agent (the
    // VM's channel owner forwards whole frames only) and the next host, connecting at once, works.
    let socket = env.socket_dir().join(format!("{id}.chan"));
    assert!(
        socket.exists(),
        "the channel owner's socket is not at {}",
        socket.display()
    );
    let mut after_half_frame = Vec::new();
    for i in 0..4u64 {
        let mut s = UnixStream::connect(&socket).unwrap();
        let hello = Request::Hello(Hello { nonce: 1000 + i })
            .to_frame(0)
            .unwrap();
        s.write_all(&with_sync(&hello).unwrap()).unwrap();
        // Half of a 200 KiB upload chunk.
        let mut half = ((200 * 1024 + 5) as u32).to_be_bytes().to_vec();
        half.push(FrameType::FileData as u8);
        half.extend(7u32.to_be_bytes());
        half.extend(vec![0x5a; 100 * 1024]);
        s.write_all(&half).unwrap();
        if i % 2 == 1 {
            std::thread::sleep(Duration::from_millis(300));
        }
        drop(s);
        let vm = open(&env, id);
        let t = Instant::now();
        let r = vm
            .run_with_timeout("echo whole", COMMAND)
            .unwrap_or_else(|e| panic!("after a half frame: {e:?}\n{}", console(&env, id)));
        after_half_frame.push(t.elapsed());
        assert_eq!(r.stdout, "whole\n");
        vm.close();
    }

    let ms = |v: &[Duration]| -> Vec<u128> { v.iter().map(|d| d.as_millis()).collect() };
    eprintln!(
        "start() -> Ready: {:.3}s; greeting (ms): {:?}; new host + first command (ms): {:?} (median {:?}); \
         warm `echo hi`: median {:?}; first command after a killed host (ms): {:?}; \
         after a half frame (ms): {:?}",
        start_to_ready.as_secs_f64(),
        ms(&greetings),
        ms(&first_command),
        median(&mut first_command.clone()),
        median(&mut warm),
        ms(&after_kill),
        ms(&after_half_frame),
    );
    let log = console(&env, id);
    let notes: Vec<&str> = log.lines().filter(|l| l.contains("smolvm-agent")).collect();
    eprintln!("agent console lines:\n{}", notes.join("\n"));
    m.delete(id).unwrap();
    env.assert_no_leaks(id);
}
