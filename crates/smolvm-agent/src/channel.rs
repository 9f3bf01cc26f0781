//! The host channel: a virtio-serial port named `org.smolvm.agent` under QEMU, vsock port 52 under
//! Firecracker. Both speak the same protocol: the host greets with `SYNC` + `Hello{nonce}`, the request
//! server answers `SYNC` + `Ready{nonce}` (never unasked) and serves requests. Under QEMU one server
//! runs for the life of the agent; under Firecracker each accepted connection gets its own.
//!
//! The virtio-serial side, and how such a port behaves, is in [`crate::serial`].

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use smolvm_protocol::{Ready, PROTOCOL_VERSION};

use crate::server::{self, Hooks};
use crate::stages::Stages;

/// Name of the virtio-serial port QEMU exposes for the agent.
pub const PORT_NAME: &str = smolvm_protocol::AGENT_PORT_NAME;
/// vsock port the agent listens on under Firecracker.
pub const VSOCK_PORT: u32 = smolvm_protocol::AGENT_VSOCK_PORT;
/// How long to wait for the virtio-serial port to be announced after the driver loaded.
const PORT_WAIT: Duration = Duration::from_secs(30);
const VIRTIO_ID_CONSOLE: u32 = 3;
const VIRTIO_ID_VSOCK: u32 = 19;

/// The hooks handed to the server: power off goes through PID 1.
pub static HOOKS: Hooks = Hooks {
    power_off: crate::power::request_power_off,
};

/// Serves the host forever on whichever channels the machine has. With a `gate` (the first agent of
/// a boot) it warms its exec path and answers `Ready` only once PID 1 opened the gate.
pub fn run(mut stages: Stages, gate: Option<crate::gate::GateReceiver>) -> ! {
    let ids = crate::modules::virtio_ids(Path::new("/sys"));
    let serial = ids.contains(&VIRTIO_ID_CONSOLE);
    let vsock = ids.contains(&VIRTIO_ID_VSOCK);
    if !serial && !vsock {
        crate::log("no host channel: neither a virtio-serial nor a vsock device exists");
    }
    let port = if serial { wait_for_port() } else { None };
    if let Some(gate) = gate {
        // The first command of the first host must not pay for translating the exec path (TCG).
        match crate::server::warm::exec_path(
            &crate::server::Config::default(),
            &HOOKS,
            crate::server::warm::EXEC_WARMUP_LIMIT,
        ) {
            Ok(true) => stages.mark("exec_warm"),
            Ok(false) => crate::log("exec warm-up did not finish in time: continuing without it"),
            Err(e) => crate::log(&format!("exec warm-up: {e}")),
        }
        stages.merge(gate.wait(crate::gate::GATE_LIMIT));
    }
    stages.mark("ready");
    let ready = Ready {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        nonce: None,
        boot_stages: stages.0,
    };
    crate::log(&summary(&ready));
    if vsock {
        let ready = ready.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("vsock".into())
            .spawn(move || vsock_loop(&ready))
        {
            crate::log(&format!("cannot start the vsock listener: {e}"));
        }
    }
    if let Some(p) = port {
        crate::serial::run(&p, &ready);
    }
    loop {
        std::thread::park();
    }
}

fn summary(r: &Ready) -> String {
    let stages: Vec<String> = r
        .boot_stages
        .iter()
        .map(|s| {
            format!(
                "{} {}.{:03}s",
                s.name,
                s.micros / 1_000_000,
                s.micros / 1000 % 1000
            )
        })
        .collect();
    format!("ready: {}", stages.join(", "))
}

/// Finds `/dev/vportNpM` whose sysfs name is [`PORT_NAME`]. Ports and their names arrive in control
/// messages after the driver is up, so this waits briefly.
fn wait_for_port() -> Option<PathBuf> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(1);
    while start.elapsed() < PORT_WAIT {
        if let Some(p) = find_port(Path::new("/sys/class/virtio-ports"), PORT_NAME) {
            return Some(Path::new("/dev").join(p));
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(50));
    }
    crate::log(&format!("virtio-serial port {PORT_NAME} not found"));
    None
}

/// The device name (e.g. `vport0p1`) of the port called `name` under `class_dir`.
pub fn find_port(class_dir: &Path, name: &str) -> Option<String> {
    std::fs::read_dir(class_dir).ok()?.flatten().find_map(|e| {
        let n = std::fs::read_to_string(e.path().join("name")).ok()?;
        (n.trim() == name).then(|| e.file_name().to_string_lossy().into_owned())
    })
}

fn vsock_loop(ready: &Ready) {
    let listener = match vsock_listen(VSOCK_PORT) {
        Ok(l) => l,
        Err(e) => {
            crate::log(&format!("vsock listen on port {VSOCK_PORT}: {e}"));
            return;
        }
    };
    loop {
        // SAFETY: accept on a listening socket we own; null address pointers are allowed.
        let fd = unsafe {
            libc::accept4(
                std::os::fd::AsRawFd::as_raw_fd(&listener),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                crate::log(&format!("vsock accept: {e}"));
                std::thread::sleep(Duration::from_millis(100));
            }
            continue;
        }
        // SAFETY: accept4 returned a fresh descriptor we now own.
        let chan = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let ready = ready.clone();
        let spawned = std::thread::Builder::new()
            .name("vsock-conn".into())
            .spawn(move || {
                if let Err(e) = server::serve(chan, &HOOKS, &ready) {
                    crate::log(&format!("vsock connection: {e}"));
                }
            });
        if let Err(e) = spawned {
            crate::log(&format!("cannot serve a vsock connection: {e}"));
        }
    }
}

fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = libc::sockaddr_vm {
        svm_family: libc::AF_VSOCK as libc::sa_family_t,
        svm_reserved1: 0,
        svm_port: port,
        svm_cid: libc::VMADDR_CID_ANY,
        svm_zero: [0; 4],
    };
    // SAFETY: addr is a valid sockaddr_vm of the given length.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: bound socket.
    if unsafe { libc::listen(fd, 16) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_named_port() {
        let t = std::env::temp_dir().join(format!("smolvm-agent-port-{}", std::process::id()));
        for (dev, name) in [("vport0p0", ""), ("vport0p1", "org.smolvm.agent\n")] {
            std::fs::create_dir_all(t.join(dev)).unwrap();
            std::fs::write(t.join(dev).join("name"), name).unwrap();
        }
        assert_eq!(find_port(&t, PORT_NAME).as_deref(), Some("vport0p1"));
        assert_eq!(find_port(&t, "other"), None);
        std::fs::remove_dir_all(&t).unwrap();
    }
}
