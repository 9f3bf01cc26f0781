//! End-to-end test of a QEMU VM's channel owner (the process that holds QEMU's single agent
//! connection and multiplexes clients over it): several processes and several threads run commands
//! on one VM at the same time, all succeed and nobody's output is mixed with another's; a crashed
//! owner leaves the VM running and is replaced (by the next client, and by `reconcile`); a manager
//! opened with another socket directory reaches the VM through the recorded endpoint; stop and delete
//! leave no owner behind. Run with `SMOLVM_E2E=1` as root; skips otherwise. No timing assertions: the
//! wall times are printed.

mod netns_util;
mod vm_util;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netns_util::e2e;
use smolvm::internals::process::ProcessIdentity;
use smolvm::{CleanupOptions, CleanupScope, CreateOptions, NetworkMode, SmolVmManager};
use smolvm::{SmolVm, VmState};
use vm_util::{spec, TestEnv};

const BOOT: Duration = Duration::from_secs(90);
const COMMAND: Option<Duration> = Some(Duration::from_secs(60));
const TOOLS: &[&str] = &["qemu-system-x86_64", "mkfs.ext4"];
/// Set for a helper process: data dir, socket dir, VM id and worker number, one per line.
const HELPER_ENV: &str = "SMOLVM_OWNER_HELPER";
const WORKERS: usize = 8;
const LINES: usize = 400;

/// The command worker `n` runs: many numbered lines of its own, then a second of sleep, so that all
/// workers' commands overlap in the guest.
fn worker_command(n: usize) -> String {
    format!("i=1; while [ $i -le {LINES} ]; do echo w{n}-$i; i=$((i+1)); done; sleep 1")
}

fn worker_output(n: usize) -> String {
    (1..=LINES).map(|i| format!("w{n}-{i}\n")).collect()
}

fn owner_of(env: &TestEnv, id: &str) -> Option<ProcessIdentity> {
    let text = std::fs::read_to_string(env.manager.vm_dir(id).join("channel.pid")).ok()?;
    let (pid, start) = text.trim().split_once(' ')?;
    Some(ProcessIdentity {
        pid: pid.parse().ok()?,
        start_time: start.parse().ok()?,
    })
}

fn console(env: &TestEnv, id: &str) -> String {
    std::fs::read_to_string(env.manager.console_log(id)).unwrap_or_default()
}

/// Not a test of its own: one worker process (started by the test below with `--ignored`).
#[test]
#[ignore = "helper process, not a test: started with --ignored by the concurrency test"]
fn helper_runs_one_worker() {
    let Ok(spec) = std::env::var(HELPER_ENV) else {
        return;
    };
    let p: Vec<&str> = spec.splitn(4, '\n').collect();
    let vm = SmolVm::from_id(p[2], Some(p[0].as_ref()), Some(p[1].as_ref()), None).unwrap();
    let n: usize = p[3].parse().unwrap();
    let r = vm.run_with_timeout(&worker_command(n), COMMAND).unwrap();
    vm.close();
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert!(r.stdout == worker_output(n), "worker {n} got other output");
}

/// Runs [`WORKERS`] helper processes at once against `id`; returns the wall time. All must pass.
fn processes_at_once(env: &TestEnv, socket_dir: &Path, id: &str) -> Duration {
    let t = Instant::now();
    let children: Vec<_> = (0..WORKERS)
        .map(|n| {
            let spec = format!(
                "{}\n{}\n{id}\n{n}",
                env.data_dir().display(),
                socket_dir.display()
            );
            Command::new(std::env::current_exe().unwrap())
                .args(["helper_runs_one_worker", "--exact", "--ignored"])
                .args(["--test-threads", "1"])
                .env(HELPER_ENV, spec)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (n, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "worker process {n} failed:\n{}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            console(env, id)
        );
    }
    t.elapsed()
}

#[test]
fn processes_and_threads_share_one_vm_through_its_channel_owner() {
    if !e2e("channel owner", TOOLS) {
        return;
    }
    vm_util::image();
    let env = TestEnv::new();
    let m = &env.manager;
    let id = "own-1";
    let none = CreateOptions {
        network: NetworkMode::None,
        ..CreateOptions::default()
    };
    m.create_with(&spec(id).build().unwrap(), &none).unwrap();
    m.start(id, BOOT)
        .unwrap_or_else(|e| panic!("start: {e}\n{}", console(&env, id)));
    let owner = owner_of(&env, id).expect("a started QEMU VM has a channel owner");
    assert!(owner.is_alive());
    let endpoint = m.agent_endpoint(id).unwrap();
    assert_eq!(
        endpoint.path(),
        env.socket_dir().join(format!("{id}.chan")),
        "the recorded endpoint is the owner's socket"
    );

    // Several processes at once, each with its own connection through the owner.
    let procs = processes_at_once(&env, &env.socket_dir(), id);

    // Several threads at once on one SmolVm (one shared connection).
    let vm = SmolVm::from_id(id, Some(&env.data_dir()), Some(&env.socket_dir()), None).unwrap();
    let t = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|n| {
                let vm = &vm;
                s.spawn(move || (n, vm.run_with_timeout(&worker_command(n), COMMAND)))
            })
            .collect();
        for h in handles {
            let (n, r) = h.join().unwrap();
            let r = r.unwrap_or_else(|e| panic!("thread {n}: {e:?}"));
            assert_eq!(r.exit_code, 0);
            assert!(r.stdout == worker_output(n), "thread {n} got other output");
        }
    });
    let threads = t.elapsed();
    vm.close();

    // The owner crashes: the VM runs on, and the next client gets a new owner.
    assert!(owner.kill());
    assert_eq!(m.get(id).unwrap().status, VmState::Running);
    let vm = SmolVm::from_id(id, Some(&env.data_dir()), Some(&env.socket_dir()), None).unwrap();
    assert_eq!(vm.run("echo after-crash").unwrap().stdout, "after-crash\n");
    vm.close();
    let second = owner_of(&env, id).unwrap();
    assert_ne!(second, owner);
    assert!(second.is_alive());

    // And `reconcile` replaces a dead owner too.
    assert!(second.kill());
    assert_eq!(m.reconcile().unwrap(), Vec::<String>::new());
    let third = owner_of(&env, id).unwrap();
    assert!(
        third != second && third.is_alive(),
        "reconcile restarted it"
    );

    // A manager with another socket directory reaches the VM through the recorded endpoint.
    let elsewhere = env.dir.path().join("other-sockets");
    let other = SmolVmManager::new(Some(&env.data_dir()), Some(&elsewhere), None).unwrap();
    assert_eq!(other.agent_endpoint(id).unwrap(), endpoint);
    let vm = SmolVm::from_id(id, Some(&env.data_dir()), Some(&elsewhere), None).unwrap();
    assert_eq!(vm.run("echo via-record").unwrap().stdout, "via-record\n");
    vm.close();
    let procs_elsewhere = processes_at_once(&env, &elsewhere, id);

    // Stop ends the owner and removes its socket; a new start gets a new one.
    m.stop(id, Duration::from_secs(10)).unwrap();
    assert!(!third.is_alive(), "stop left the owner running");
    assert!(!endpoint.path().exists(), "stop left the owner's socket");
    m.start(id, BOOT).unwrap();
    let fourth = owner_of(&env, id).unwrap();
    assert!(fourth.is_alive());
    m.delete(id).unwrap();
    assert!(!fourth.is_alive(), "delete left the owner running");
    env.assert_no_leaks(id);

    // A VMM that dies takes its owner with it, and `cleanup` leaves nothing of either.
    m.create_with(&spec(id).build().unwrap(), &none).unwrap();
    m.start(id, BOOT).unwrap();
    let fifth = owner_of(&env, id).unwrap();
    let vmm = m.get(id).unwrap().pid.expect("a running VM has a pid");
    assert!(ProcessIdentity::of(vmm).unwrap().kill());
    assert!(
        fifth.wait_gone(Duration::from_secs(30)),
        "the owner outlived its VMM"
    );
    let report = m
        .cleanup(&CleanupOptions {
            scope: CleanupScope::Vm(id.into()),
            ..CleanupOptions::default()
        })
        .unwrap();
    assert_eq!(report.deleted_vms, [id]);
    env.assert_no_leaks(id);
    eprintln!(
        "{WORKERS} processes x (~1 s command): {:.2}s wall; {WORKERS} threads: {:.2}s wall; \
         {WORKERS} processes from another socket dir: {:.2}s wall",
        procs.as_secs_f64(),
        threads.as_secs_f64(),
        procs_elsewhere.as_secs_f64()
    );
}
