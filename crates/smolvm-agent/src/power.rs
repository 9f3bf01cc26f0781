//! Ending the VM cleanly: stop every process, flush and remount the root disk read-only, then power off
//! (QEMU: ACPI S5) or reboot (Firecracker: with `reboot=k` the guest's reset makes the VMM exit, since
//! it has no ACPI power off).
//!
//! Only PID 1 does the work. Anyone else (the request server in the agent process, busybox `poweroff`
//! run over SSH) asks PID 1 with a signal: SIGUSR2 (busybox `poweroff`), SIGUSR1 (`halt`), SIGTERM
//! (`reboot`), SIGINT (Ctrl+Alt+Del once `CAD_OFF` is set), SIGPWR. A disposable VM never reboots, so all
//! of them end it.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::cmdline::{BootParams, PowerMode};
use crate::sys;

/// Signals PID 1 treats as "power off".
pub const POWER_SIGNALS: &[libc::c_int] = &[
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGPWR,
];

/// How long running processes get to exit after SIGTERM.
const TERM_GRACE: Duration = Duration::from_millis(1000);

/// Requests a clean power off and never returns. Safe to call from any process or thread of the guest:
/// outside PID 1 it signals PID 1, which stops every process (including the caller).
pub fn request_power_off() -> ! {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } == 1 {
        power_off_now(detect_mode(None));
    }
    if let Err(e) = sys::kill(1, libc::SIGUSR2) {
        crate::log(&format!("cannot signal PID 1 to power off: {e}"));
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Decides how to end the VM: the `smolvm.poweroff` parameter if given, else `Reboot` when there is no
/// ACPI or the ACPI tables are Firecracker's (OEM id `FIRECK`), else `PowerOff`.
pub fn detect_mode(params: Option<&BootParams>) -> PowerMode {
    if let Some(m) = params.and_then(|p| p.power_mode) {
        return m;
    }
    let tables = Path::new("/sys/firmware/acpi/tables");
    match std::fs::read(tables.join("DSDT")).or_else(|_| std::fs::read(tables.join("FACP"))) {
        Ok(t) if t.get(10..16) == Some(b"FIRECK".as_slice()) => PowerMode::Reboot,
        Ok(_) => PowerMode::PowerOff,
        Err(_) => PowerMode::Reboot,
    }
}

/// PID 1 only: stops everything and ends the VM. Never returns.
pub fn power_off_now(mode: PowerMode) -> ! {
    crate::log("powering off");
    let start = Instant::now();
    let _ = sys::kill(-1, libc::SIGTERM);
    if !wait_children(TERM_GRACE) {
        crate::log(&format!(
            "still running after SIGTERM, killing: {}",
            survivors()
        ));
        let _ = sys::kill(-1, libc::SIGKILL);
        wait_children(Duration::from_millis(200));
    }
    crate::log(&format!(
        "processes stopped in {} ms",
        start.elapsed().as_millis()
    ));
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    // Remounting read-only flushes the journal and marks the filesystem clean.
    if let Err(e) = sys::mount(
        "none",
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY,
        None,
    ) {
        crate::log(&format!("remount / read-only: {e}"));
    }
    // SAFETY: as above.
    unsafe { libc::sync() };
    let cmd = match mode {
        PowerMode::PowerOff => libc::RB_POWER_OFF,
        PowerMode::Reboot => libc::RB_AUTOBOOT,
    };
    if let Err(e) = sys::reboot(cmd) {
        crate::log(&format!("reboot({cmd:#x}): {e}; trying a reset"));
        let _ = sys::reboot(libc::RB_AUTOBOOT);
    }
    // Power off without a power-off method returns here; exiting PID 1 would panic the kernel, which
    // with `panic=1 reboot=k` still ends the VM, but say why first.
    crate::log("power off did not take effect; halting");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// `pid (name)` of every user process but PID 1, for the log.
fn survivors() -> String {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // Kernel threads have no command line; skip them and PID 1.
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if pid != 1 && !cmdline.is_empty() {
            let comm = stat.split(['(', ')']).nth(1).unwrap_or("?");
            out.push(format!("{pid} ({comm})"));
        }
    }
    out.join(", ")
}

/// Reaps children until none are left (true) or `limit` passes (false).
fn wait_children(limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        match sys::reap_one() {
            Ok(Some(_)) => continue,
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => return true, // ECHILD: nothing left
        }
    }
    false
}
