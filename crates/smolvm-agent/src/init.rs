//! Stage 2: PID 1 on the root disk.
//!
//! PID 1 mounts the file systems, then forks the *agent process*, which serves the host channel with as
//! many threads as it likes, and goes on single-threaded: host name, authorised key, SSH server,
//! network. The agent finds its port and warms its exec path meanwhile (another vCPU), and answers
//! `Ready` only once PID 1 has sent it the stages of that work through the [`crate::gate`] (so `Ready`
//! still means the SSH server listens). PID 1 itself then only waits for signals: it reaps every zombie
//! (`waitpid(-1)`), restarts the agent process or the SSH server if they die, and powers off on
//! request.
//!
//! Why a separate process: PID 1 must reap any child, but the request server waits for the commands it
//! starts by pid; if both lived in one process, PID 1's `waitpid(-1)` would steal the server's exit
//! statuses. In the agent process the server's children are its own; orphans still go to PID 1.

use std::time::{Duration, Instant};

use crate::cmdline::BootParams;
use crate::gate::{GateReceiver, GateSender};
use crate::stages::Stages;
use crate::{power, setup, sys};

/// How long `Ready` waits for the SSH server's listening socket (it takes milliseconds; a dropbear that
/// fails to bind must not keep the agent from serving).
const SSHD_LISTEN_LIMIT: Duration = Duration::from_secs(3);

/// Signals PID 1 handles synchronously (blocked, then taken with `sigwaitinfo`).
fn handled_signals() -> Vec<libc::c_int> {
    let mut s = vec![libc::SIGCHLD, libc::SIGHUP];
    s.extend_from_slice(power::POWER_SIGNALS);
    s
}

/// A restartable child of PID 1.
struct Supervised {
    pid: Option<libc::pid_t>,
    last_start: Instant,
}

impl Supervised {
    fn new(pid: Option<libc::pid_t>) -> Self {
        Supervised {
            pid,
            last_start: Instant::now(),
        }
    }
}

/// Runs stage 2. Never returns (PID 1 must not exit).
pub fn run(mut stages: Stages) -> ! {
    if !stages.has("init_start") {
        stages.mark("init_start");
    }
    let signals = handled_signals();
    if let Err(e) = sys::sigmask(libc::SIG_BLOCK, &signals) {
        crate::log(&format!("block signals: {e}"));
    }
    // Ctrl+Alt+Del (Firecracker's SendCtrlAltDel) now sends SIGINT to PID 1 instead of rebooting.
    if let Err(e) = sys::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF) {
        crate::log(&format!("disable Ctrl+Alt+Del reboot: {e}"));
    }
    setup::mount_all();
    setup::ensure_stdio();
    let params = match std::fs::read_to_string("/proc/cmdline") {
        Ok(c) => crate::cmdline::parse(&c),
        Err(e) => {
            crate::log(&format!("read /proc/cmdline: {e}"));
            BootParams::default()
        }
    };
    setup::make_root_writable(params.read_only);
    if setup::root_is_read_only() {
        // `shared` disk mode: what smolvm writes (SSH keys, environment) goes to tmpfs copies.
        crate::rwdirs::make_writable();
    }
    stages.mark("mounts_done");
    // The agent starts now, while PID 1 does the rest; it answers `Ready` once the gate opens.
    let (gate_tx, mut agent) = match crate::gate::gate() {
        Ok((tx, rx)) => {
            let pid = spawn_agent(&stages, &signals, Some((&tx, rx)));
            (Some(tx), Some(Supervised::new(pid)))
        }
        Err(e) => {
            crate::log(&format!("make the Ready gate: {e}; the agent starts last"));
            (None, None)
        }
    };
    let forked_at = stages.0.len();

    for w in &params.warnings {
        crate::log(w);
    }
    setup::hostname(params.hostname.as_deref());
    // The SSH server starts before the network is configured (it binds the wildcard address), so its
    // start-up overlaps the network setup; `Ready` waits for its listening socket below.
    if let Some(key) = &params.authorized_key {
        if let Err(e) = setup::install_authorized_key(key) {
            crate::log(&format!("install authorized key: {e}"));
        }
    }
    let mut sshd = Supervised::new(start_sshd());
    stages.mark("sshd_started");
    match crate::net::configure(&params) {
        Ok(_) => {}
        Err(e) => crate::log(&format!("network: {e}")),
    }
    let resolv = std::path::Path::new(crate::net::RESOLV_CONF);
    if let Err(e) = crate::net::write_resolv_conf(resolv, &params) {
        crate::log(&format!("write /etc/resolv.conf: {e}"));
    }
    stages.mark("network_up");
    // The agent process answers `Ready`; everything smolvm advertises must accept by then.
    if sshd.pid.is_some() {
        if setup::wait_listening(22, SSHD_LISTEN_LIMIT) {
            stages.mark("sshd_listening");
        } else {
            crate::log("the SSH server is not listening on port 22: continuing without it");
        }
    }

    let mode = power::detect_mode(Some(&params));
    let mut agent = match (gate_tx, agent.take()) {
        (Some(tx), Some(agent)) => {
            tx.open(&Stages(stages.0[forked_at..].to_vec()));
            agent
        }
        _ => Supervised::new(spawn_agent(&stages, &signals, None)),
    };
    supervise(&signals, mode, &stages, &mut agent, &mut sshd)
}

fn start_sshd() -> Option<libc::pid_t> {
    match setup::start_sshd() {
        Ok(pid) => pid.map(|p| p as libc::pid_t),
        Err(e) => {
            crate::log(&format!("start {}: {e}", setup::DROPBEAR));
            None
        }
    }
}

/// Forks the agent process. PID 1 is still single-threaded here, so fork is safe. With a `gate` (the
/// first start at boot) the agent waits on its receiving end before `Ready` (PID 1 keeps the sending
/// end); a restarted agent answers at once.
fn spawn_agent(
    stages: &Stages,
    signals: &[libc::c_int],
    gate: Option<(&GateSender, GateReceiver)>,
) -> Option<libc::pid_t> {
    match sys::fork() {
        Ok(0) => {
            // Only PID 1 may hold the sending end, or the agent would never see it closed.
            let gate = gate.map(|(tx, rx)| {
                tx.close_in_child();
                rx
            });
            // The child starts with PID 1's blocked signals: restore default delivery, and block the
            // host channel's event signals before any thread exists, so every thread inherits that.
            let _ = sys::sigmask(libc::SIG_UNBLOCK, signals);
            let _ = sys::sigmask(libc::SIG_BLOCK, &crate::serial::signals());
            crate::button::watch();
            crate::channel::run(stages.clone(), gate)
        }
        Ok(pid) => Some(pid),
        Err(e) => {
            crate::log(&format!("fork the agent process: {e}"));
            None
        }
    }
}

fn supervise(
    signals: &[libc::c_int],
    mode: crate::cmdline::PowerMode,
    stages: &Stages,
    agent: &mut Supervised,
    sshd: &mut Supervised,
) -> ! {
    let set = sys::sigset(signals);
    loop {
        // SAFETY: valid set; info not needed.
        let sig = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if sig < 0 {
            continue; // EINTR
        }
        if power::POWER_SIGNALS.contains(&sig) {
            power::power_off_now(mode);
        }
        if sig != libc::SIGCHLD {
            continue;
        }
        while let Ok(Some(pid)) = sys::reap_one() {
            if agent.pid == Some(pid) {
                crate::log("agent process exited; restarting it");
                agent.pid = None;
            } else if sshd.pid == Some(pid) {
                crate::log("ssh server exited; restarting it");
                sshd.pid = None;
            }
        }
        // Restart at most once a second, so a crash loop cannot starve the guest.
        if agent.pid.is_none() {
            backoff(agent);
            agent.pid = spawn_agent(stages, signals, None);
        }
        if sshd.pid.is_none() && std::path::Path::new(setup::DROPBEAR).exists() {
            backoff(sshd);
            sshd.pid = start_sshd();
        }
    }
}

fn backoff(s: &mut Supervised) {
    let since = s.last_start.elapsed();
    if since < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_secs(1) - since);
    }
    s.last_start = Instant::now();
}
