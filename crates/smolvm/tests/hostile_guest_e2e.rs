//! A guest that floods the host: printing to its serial console without end, and printing to the
//! stdout of a command without end. The host's disk use for the console stays under its cap, and the
//! host's memory stays bounded whether the output is collected (refused beyond the limit) or streamed.
//! Sizes are asserted, never durations. Each test runs in its own network namespace with private
//! directories (`SMOLVM_E2E=1`, root).

mod netns_util;
mod scene_util;
mod vm_util;

use std::path::Path;
use std::time::{Duration, Instant};

use scene_util::{no_net, Scene};
use smolvm::internals::rotated_console_log as rotated_path;
use smolvm::{Error, ExecError, ExecRequest, CONSOLE_LOG_MAX, MAX_OUTPUT_LEN};
use vm_util::spec;

const BOOT: Duration = Duration::from_secs(90);
const TOOLS: &[&str] = &["qemu-system-x86_64", "mkfs.ext4", "ip"];
const MIB: u64 = 1024 * 1024;

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Live processes with an open file under `dir` (the console keeper holds the VM's console log).
fn processes_holding(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(dir)))
        {
            out.push(pid);
        }
    }
    out
}

/// A kB field of `/proc/self/status` (`VmHWM`: the peak resident set so far).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn console_flood_is_capped_on_disk() {
    let Some(scene) = Scene::enter("console flood", TOOLS) else {
        return;
    };
    let env = &scene.env;
    let m = &env.manager;
    let config = spec("flood-con").build().unwrap();
    m.create_with(&config, &no_net()).unwrap();
    m.start("flood-con", BOOT).unwrap();
    let vm = env.reconnect("flood-con");
    let log = m.console_log("flood-con");
    let vm_dir = m.vm_dir("flood-con");
    assert!(size(&log) > 0, "the boot messages reach the console log");
    // QEMU holds only the pipe (and its own log): the keeper alone has the console log open.
    let keepers = processes_holding(&log);
    assert_eq!(keepers.len(), 1, "one console keeper: {keepers:?}");

    // Three caps' worth of console output in the background, then a marker line.
    let flood = 3 * CONSOLE_LOG_MAX;
    vm.run(&format!(
        "(head -c {flood} /dev/zero | tr '\\0' x; echo; echo flood-done) > /dev/ttyS0 2>&1 &"
    ))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        // The cap holds at every moment, not just at the end.
        assert!(size(&log) <= CONSOLE_LOG_MAX, "console.log {}", size(&log));
        assert!(size(&rotated_path(&log)) <= CONSOLE_LOG_MAX);
        let tail = std::fs::read(&log).unwrap_or_default();
        if tail.windows(10).any(|w| w == b"flood-done") {
            break;
        }
        assert!(Instant::now() < deadline, "the flood never finished");
        std::thread::sleep(Duration::from_millis(200));
    }
    let kept = size(&log) + size(&rotated_path(&log));
    eprintln!("console: {flood} bytes printed, {kept} bytes kept on disk");
    assert!(kept <= 2 * CONSOLE_LOG_MAX && kept < flood);
    // The guest is still fine, and agent traffic never mixes with the console.
    assert_eq!(vm.run("echo alive").unwrap().stdout, "alive\n");

    // The keeper goes with the VMM: nothing holds the VM's files after delete.
    m.delete("flood-con").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_holding(&vm_dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(processes_holding(&vm_dir), Vec::<u32>::new());
    env.assert_no_leaks("flood-con");
}

#[test]
fn stdout_flood_is_bounded_in_host_memory() {
    let Some(scene) = Scene::enter("stdout flood", TOOLS) else {
        return;
    };
    let env = &scene.env;
    let m = &env.manager;
    let config = spec("flood-out").build().unwrap();
    m.create_with(&config, &no_net()).unwrap();
    m.start("flood-out", BOOT).unwrap();
    let vm = env.reconnect("flood-out");

    // Streamed (first: the peak only grows): more than the collection limit passes through a
    // constant amount of host memory.
    let before = status_kib("VmHWM");
    let total = MAX_OUTPUT_LEN as u64 + 16 * MIB;
    let seen = std::cell::Cell::new(0u64);
    let code = vm
        .with_agent(|c| {
            c.exec_streaming(
                &ExecRequest::shell(format!("head -c {total} /dev/zero")),
                |_, data| seen.set(seen.get() + data.len() as u64),
            )
            .map_err(Error::from)
        })
        .unwrap();
    let grew = (status_kib("VmHWM") - before) * 1024;
    eprintln!(
        "streamed flood: {} MiB, peak RSS grew by {} MiB",
        seen.get() / MIB,
        grew / MIB
    );
    assert_eq!((code, seen.get()), (0, total));
    assert!(grew <= 16 * MIB, "peak RSS grew by {grew} bytes");

    // Collected: a command printing forever is cancelled at the limit and the call fails with
    // OutputTooLarge; the host held at most the limit (plus the growth of one buffer).
    let before = status_kib("VmHWM");
    // A generous timeout: under load the 64 MiB take a while to cross the emulated channel.
    let err = vm
        .run_with_timeout("yes flood", Some(Duration::from_secs(900)))
        .unwrap_err();
    let grew = (status_kib("VmHWM") - before) * 1024;
    eprintln!("collected flood: peak RSS grew by {} MiB", grew / MIB);
    match &err {
        Error::Exec(inner) => assert!(
            matches!(**inner, ExecError::OutputTooLarge { limit } if limit == MAX_OUTPUT_LEN),
            "{err:?}"
        ),
        other => panic!("expected OutputTooLarge, got {other:?}"),
    }
    assert!(
        grew <= 2 * MAX_OUTPUT_LEN as u64 + 32 * MIB,
        "peak RSS grew by {grew} bytes"
    );
    // The command was killed in the guest (cancel), and the connection is usable.
    let r = vm.run("pidof yes || echo none").unwrap();
    assert_eq!(r.stdout, "none\n");
    m.delete("flood-out").unwrap();
    env.assert_no_leaks("flood-out");
}
