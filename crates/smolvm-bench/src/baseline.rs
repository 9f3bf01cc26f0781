//! The raw-VMM baseline: the same QEMU with the same argv (built by [`build_argv`] from the same
//! [`LaunchSpec`]: kernel, initrd, a cloned disk, command line), started by the benchmark itself without
//! smolvm's manager, state store or QMP handshake, timed from spawn to the agent's Ready frame on the
//! virtio-serial socket. Everything smolvm adds on top of this is its overhead.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use smolvm_protocol::Ready;

use super::watch::CreationWatch;
use super::BenchError;
use smolvm::internals::backend::qemu::{build_argv, QemuBackend};
use smolvm::internals::backend::{Backend, LaunchSpec};
use smolvm::internals::process::{spawn_detached, ProcessIdentity};
use smolvm::{AgentClient, ExecError};

/// Pause between attempts to connect to the agent socket; the same as the agent client's, so both sides
/// of the comparison discover the socket equally fast.
const CONNECT_RETRY: Duration = Duration::from_millis(10);
/// Bytes of a log quoted in errors.
const TAIL_BYTES: u64 = 2048;

/// One baseline boot.
#[derive(Debug, Clone)]
pub struct BaselineSample {
    /// Spawn to QEMU's QMP socket being created, if seen.
    pub vmm_launch: Option<Duration>,
    /// Spawn to the agent's Ready frame.
    pub ready: Duration,
    /// The Ready message (boot-stage timestamps).
    pub ready_msg: Ready,
    /// CPU time the VMM process had used when Ready arrived.
    pub vmm_cpu_at_ready: Option<Duration>,
}

/// Kills the VMM when dropped, so no error path leaves it running.
struct Vmm(ProcessIdentity);

impl Drop for Vmm {
    fn drop(&mut self) {
        self.0.kill();
    }
}

/// Boots `spec` with the raw VMM up to the agent's Ready frame, then kills it and removes its sockets.
/// The disk in `spec` must exist (a clone made by the caller); it is left for the caller to remove.
pub fn run_baseline(
    backend: &QemuBackend,
    spec: &LaunchSpec,
    timeout: Duration,
) -> Result<BaselineSample, BenchError> {
    let agent_path = spec.agent.path().to_path_buf();
    let sockets = [spec.control_socket.clone(), agent_path.clone()];
    for s in &sockets {
        let _ = std::fs::remove_file(s);
    }
    let argv = build_argv(&backend.binary, spec, backend.accel);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let watch = socket_watch(spec);
    let t0 = Instant::now();
    let vmm = spawn_detached(cmd, &spec.vmm_log)
        .map(Vmm)
        .map_err(|e| BenchError::io("start the baseline VMM", &backend.binary, e))?;
    let result = wait_ready(&vmm.0, spec, t0, timeout);
    let cpu = super::mem::cpu_time_ms(vmm.0.pid);
    let created = watch.map(CreationWatch::finish).unwrap_or_default();
    drop(vmm);
    for s in &sockets {
        let _ = std::fs::remove_file(s);
    }
    let (ready, ready_msg) = result?;
    Ok(BaselineSample {
        vmm_launch: since(&created, &spec.control_socket, t0),
        ready,
        ready_msg,
        vmm_cpu_at_ready: cpu.map(|ms| Duration::from_secs_f64(ms / 1000.0)),
    })
}

/// Watches the socket directory for the VMM's QMP socket (`None` if inotify is unavailable: the phase
/// is then simply not reported).
pub fn socket_watch(spec: &LaunchSpec) -> Option<CreationWatch> {
    let dir = spec.control_socket.parent()?;
    let name = spec
        .control_socket
        .file_name()?
        .to_string_lossy()
        .into_owned();
    CreationWatch::start(dir, vec![name]).ok()
}

/// Time from `t0` to the creation of `path`, if it was seen.
pub fn since(created: &HashMap<String, Instant>, path: &Path, t0: Instant) -> Option<Duration> {
    let name = path.file_name()?.to_string_lossy();
    created
        .get(name.as_ref())
        .map(|t| t.saturating_duration_since(t0))
}

/// Connects to the agent socket (retrying while QEMU has not bound it) and greets the agent the way
/// smolvm does (`Hello` until the matching `Ready`, the protocol's only way to get a `Ready`), so both
/// sides of the comparison pay the same handshake.
fn wait_ready(
    vmm: &ProcessIdentity,
    spec: &LaunchSpec,
    t0: Instant,
    timeout: Duration,
) -> Result<(Duration, Ready), BenchError> {
    let deadline = t0 + timeout;
    let path = spec.agent.path();
    let timed_out = || BenchError::BaselineTimeout {
        after: timeout,
        console: spec.console_log.clone(),
        tail: tail(&spec.console_log),
    };
    let exited = || BenchError::BaselineExited {
        log: spec.vmm_log.clone(),
        tail: tail(&spec.vmm_log),
    };
    let stream = loop {
        if !vmm.is_alive() {
            return Err(exited());
        }
        if let Ok(s) = UnixStream::connect(path) {
            break s;
        }
        if Instant::now() >= deadline {
            return Err(timed_out());
        }
        std::thread::sleep(CONNECT_RETRY);
    };
    let left = deadline.saturating_duration_since(Instant::now());
    match AgentClient::from_stream(stream, left.max(Duration::from_millis(1))) {
        Ok(client) => Ok((t0.elapsed(), client.ready().clone())),
        Err(_) if !vmm.is_alive() => Err(exited()),
        Err(ExecError::Timeout { .. }) => Err(timed_out()),
        Err(e) => Err(BenchError::step("baseline: greet the agent", e)),
    }
}

/// The last bytes of a log, for error messages.
pub fn tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(t) if !t.trim().is_empty() => t.trim_end().to_string(),
        _ => "(no output)".to_string(),
    }
}

/// The baseline's spec for a VM id: the caller's template with this run's id and files.
pub fn respec(
    template: &LaunchSpec,
    backend: &QemuBackend,
    vm_id: &str,
    socket_dir: &Path,
    run_dir: &Path,
    disk: &Path,
) -> LaunchSpec {
    LaunchSpec {
        vm_id: vm_id.to_string(),
        disk: disk.to_path_buf(),
        control_socket: backend.control_socket(socket_dir, vm_id),
        agent: backend.agent_endpoint(socket_dir, vm_id),
        console_log: run_dir.join("console.log"),
        vmm_log: run_dir.join("vmm.log"),
        ..template.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smolvm::internals::backend::qemu::QemuAccel;
    use smolvm::internals::backend::AgentEndpoint;
    use smolvm_protocol::{with_sync, Decoder, Frame, FrameType, Hello};
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixListener;

    fn spec(dir: &Path) -> LaunchSpec {
        LaunchSpec {
            vm_id: "bl".into(),
            vcpu_count: 1,
            mem_size_mib: 128,
            kernel: dir.join("k"),
            initrd: None,
            kernel_cmdline: "console=ttyS0".into(),
            disk: dir.join("d"),
            disk_read_only: false,
            net: None,
            control_socket: dir.join("bl.qmp"),
            agent: AgentEndpoint::UnixSocket(dir.join("bl.agent")),
            console_log: dir.join("console.log"),
            vmm_log: dir.join("vmm.log"),
            store: None,
            cgroup_procs: Vec::new(),
            run_as: None,
        }
    }

    /// A fake "VMM" (a shell script) plays QEMU: it cannot bind sockets, so the test serves the agent
    /// socket itself, answering the greeting, and checks that the runner gets the Ready and kills the
    /// process.
    #[test]
    fn greets_the_agent_and_returns_its_ready() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path());
        let listener = UnixListener::bind(s.agent.path()).unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut dec = Decoder::hunting();
            let hello: Hello = loop {
                dec.read_from(&mut c, 4096).unwrap();
                if let Some(Ok(f)) = dec.next_frame() {
                    break f.parse_json("hello").unwrap();
                }
            };
            let ready = Ready {
                protocol_version: smolvm_protocol::PROTOCOL_VERSION,
                agent_version: "t".into(),
                nonce: Some(hello.nonce),
                boot_stages: vec![],
            };
            let frame = Frame::json(FrameType::Ready, 0, &ready).unwrap();
            c.write_all(&with_sync(&frame).unwrap()).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            ready
        });
        let fake = dir.path().join("fake-qemu");
        std::fs::write(&fake, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let be = QemuBackend::new(&fake, QemuAccel::tcg(None, None));
        // run_baseline removes stale sockets first, which would remove our listener: call the inner
        // steps instead.
        let mut cmd = Command::new(&fake);
        cmd.args(&build_argv(&be.binary, &s, be.accel)[1..]);
        let vmm = Vmm(spawn_detached(cmd, &s.vmm_log).unwrap());
        let (_, got) = wait_ready(&vmm.0, &s, Instant::now(), Duration::from_secs(5)).unwrap();
        let id = vmm.0;
        drop(vmm);
        assert!(!id.is_alive());
        assert_eq!(got, server.join().unwrap());
    }

    #[test]
    fn early_exit_is_reported_with_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path());
        let be = QemuBackend::new("/bin/false", QemuAccel::tcg(None, None));
        std::fs::write(dir.path().join("d"), b"").unwrap();
        let err = run_baseline(&be, &s, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, BenchError::BaselineExited { .. }), "{err}");
    }

    #[test]
    fn tail_of_missing_or_empty_log() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(tail(&dir.path().join("none")), "(no output)");
        let p = dir.path().join("log");
        std::fs::write(&p, "a\nb\n").unwrap();
        assert_eq!(tail(&p), "a\nb");
    }
}
