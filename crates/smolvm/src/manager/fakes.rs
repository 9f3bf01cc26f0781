//! Fakes for the manager's collaborators (unit tests only): a VMM backend whose "VMM" is a real, tiny
//! process (so liveness, kill and `cleanup`'s process scan see it as they would see QEMU) and whose
//! guest agent is a thread speaking the real protocol; each step can be told to fail.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};

use smolvm_protocol::{with_sync, Decoder, Done, FileWrite, Frame, FrameType, Hello, Ready, Reply};

use super::BackendFactory;
use crate::backend::{AgentEndpoint, Backend, BackendError, LaunchSpec};
use crate::config::BackendKind;
use crate::error::Result;
use crate::host::HostCapabilities;
use crate::process::ProcessIdentity;

/// What the fake guest does once its VMM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guest {
    /// The agent greets and answers every request.
    Ready,
    /// The agent socket accepts connections but the guest never answers (a boot that hangs).
    Hangs,
}

/// Shared state of a [`FakeBackends`] and the backends it makes.
#[derive(Debug)]
pub(crate) struct Fake {
    /// The next `launch` fails (the VMM does not start).
    pub fail_launch: bool,
    /// How the guest behaves (read at each agent connection, so a test can change it mid-way).
    pub guest: Guest,
    /// Every backend call, as `launch <vm>`, `shutdown <socket file name>`.
    pub calls: Vec<String>,
    /// Files the guest agent was sent (path -> bytes).
    pub guest_files: BTreeMap<String, Vec<u8>>,
    /// The launch specs seen.
    pub specs: Vec<LaunchSpec>,
    /// The VMs whose per-VM backend state was released (`Backend::release`), in order.
    pub released: Vec<String>,
    /// The fake VMMs' stdin: a VMM runs until this closes or it is killed.
    vmms: Vec<(ProcessIdentity, PathBuf, ChildStdin)>,
}

/// Makes [`FakeBackend`]s sharing one [`Fake`].
#[derive(Debug, Clone)]
pub(crate) struct FakeBackends(pub Arc<Mutex<Fake>>);

impl FakeBackends {
    pub(crate) fn new() -> FakeBackends {
        FakeBackends(Arc::new(Mutex::new(Fake {
            fail_launch: false,
            guest: Guest::Ready,
            calls: Vec::new(),
            guest_files: BTreeMap::new(),
            specs: Vec::new(),
            released: Vec::new(),
            vmms: Vec::new(),
        })))
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, Fake> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live fake VMM processes.
    pub(crate) fn live_vmms(&self) -> Vec<ProcessIdentity> {
        self.state()
            .vmms
            .iter()
            .map(|v| v.0)
            .filter(ProcessIdentity::is_alive)
            .collect()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        for (p, _, _) in &self.vmms {
            p.kill();
        }
    }
}

impl BackendFactory for FakeBackends {
    fn make(&self, kind: BackendKind, _host: &HostCapabilities) -> Result<Box<dyn Backend>> {
        Ok(Box::new(FakeBackend {
            kind,
            fake: self.0.clone(),
        }))
    }
}

/// One fake VMM backend.
#[derive(Debug)]
pub(crate) struct FakeBackend {
    kind: BackendKind,
    fake: Arc<Mutex<Fake>>,
}

impl FakeBackend {
    fn fake(&self) -> MutexGuard<'_, Fake> {
        self.fake.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn refused(what: &str) -> BackendError {
    BackendError::Unavailable {
        backend: BackendKind::Qemu,
        reason: format!("fake backend: {what}"),
    }
}

/// Starts a process that `cleanup`'s scan takes for QEMU serving `control` (its argv names the QMP
/// socket as QEMU's does) and that runs until its stdin closes.
fn spawn_vmm(spec: &LaunchSpec) -> std::io::Result<(ProcessIdentity, ChildStdin)> {
    let mut cmd = Command::new("sh");
    cmd.arg0("qemu-system-x86_64")
        .args(["-c", "read -r _", "sh", "-chardev"])
        .arg(format!(
            "socket,id=qmp,path={},server=on,wait=off",
            spec.control_socket.display()
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    spec.mark_owner(&mut cmd);
    let mut child = cmd.spawn()?;
    let stdin = child.stdin.take().expect("piped stdin");
    let identity = ProcessIdentity::of(child.id())
        .ok_or_else(|| std::io::Error::other("fake VMM vanished"))?;
    // spawn returns once the exec has begun, when /proc may still show an empty argv; QEMU is
    // scanned long after that, so wait for the argv as a scan would see it.
    let cmdline = format!("/proc/{}/cmdline", child.id());
    for _ in 0..500 {
        if std::fs::read(&cmdline).is_ok_and(|c| !c.is_empty()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // Reaped as soon as it exits, so a killed VMM is gone from /proc as a real detached one would be.
    std::thread::spawn(move || child.wait());
    Ok((identity, stdin))
}

impl Backend for FakeBackend {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn launch(&self, spec: &LaunchSpec) -> Result<ProcessIdentity, BackendError> {
        let mut f = self.fake();
        f.calls.push(format!("launch {}", spec.vm_id));
        f.specs.push(spec.clone());
        if f.fail_launch {
            f.fail_launch = false;
            return Err(refused("launch refused"));
        }
        let (identity, stdin) = spawn_vmm(spec).map_err(|e| refused(&e.to_string()))?;
        // As QEMU does: stale socket files at the paths are replaced. The control socket only has to
        // exist (nothing here talks QMP).
        let _ = std::fs::remove_file(&spec.control_socket);
        UnixListener::bind(&spec.control_socket).map_err(|e| refused(&e.to_string()))?;
        let _ = std::fs::remove_file(spec.agent.path());
        let listener =
            UnixListener::bind(spec.agent.path()).map_err(|e| refused(&e.to_string()))?;
        f.vmms.push((identity, spec.control_socket.clone(), stdin));
        let fake = self.fake.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let fake = fake.clone();
                let guest = fake.lock().unwrap_or_else(|p| p.into_inner()).guest;
                match guest {
                    Guest::Ready => {
                        std::thread::spawn(move || serve_agent(conn, identity, &fake));
                    }
                    // Held open, never answered.
                    Guest::Hangs => std::mem::forget(conn),
                }
                if !identity.is_alive() {
                    return;
                }
            }
        });
        Ok(identity)
    }

    fn release(&self, vm_id: &str) -> Result<(), BackendError> {
        self.fake().released.push(vm_id.to_string());
        Ok(())
    }

    fn request_shutdown(&self, control_socket: &Path) -> Result<(), BackendError> {
        let mut f = self.fake();
        f.calls
            .push(format!("shutdown {}", file_name(control_socket)));
        if let Some((p, _, _)) = f.vmms.iter().find(|v| v.1 == control_socket) {
            p.signal(libc::SIGKILL);
        }
        Ok(())
    }

    fn pause(&self, _: &Path) -> Result<(), BackendError> {
        Err(refused("pause"))
    }
    fn resume(&self, _: &Path) -> Result<(), BackendError> {
        Err(refused("resume"))
    }
    fn save_state(&self, _: &Path, _: &Path) -> Result<(), BackendError> {
        Err(refused("save_state"))
    }
    fn restore(&self, _: &LaunchSpec, _: &Path) -> Result<ProcessIdentity, BackendError> {
        Err(refused("restore"))
    }
    fn vmm_version(&self) -> Result<String, BackendError> {
        Ok("QEMU emulator version 0.0.0 (fake)".into())
    }

    fn agent_endpoint(&self, socket_dir: &Path, vm_id: &str) -> AgentEndpoint {
        AgentEndpoint::UnixSocket(socket_dir.join(format!("{vm_id}.agent")))
    }

    fn control_socket(&self, socket_dir: &Path, vm_id: &str) -> PathBuf {
        socket_dir.join(format!("{vm_id}.qmp"))
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The guest agent's side of one connection: greets, stores uploaded files, answers every other
/// request with `Done`; `PowerOff` also ends the VMM, as a guest powering off ends QEMU.
fn serve_agent(mut s: UnixStream, vmm: ProcessIdentity, fake: &Mutex<Fake>) {
    let mut dec = Decoder::hunting();
    let mut upload: Option<(u32, FileWrite, Vec<u8>)> = None;
    loop {
        let frame = match dec.next_frame() {
            Some(Ok(f)) => f,
            Some(Err(_)) => return,
            None => match dec.read_from(&mut s, 65536) {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
        };
        let reply_to = match frame.frame_type {
            FrameType::Hello => {
                let Ok(hello) = frame.parse_json::<Hello>("hello") else {
                    return;
                };
                let ready = Ready {
                    protocol_version: smolvm_protocol::PROTOCOL_VERSION,
                    agent_version: "fake".into(),
                    nonce: Some(hello.nonce),
                    boot_stages: vec![],
                };
                let f = Frame::json(FrameType::Ready, 0, &ready).expect("ready frame");
                if s.write_all(&with_sync(&f).expect("sync")).is_err() {
                    return;
                }
                None
            }
            FrameType::FileWrite => {
                let Ok(w) = frame.parse_json::<FileWrite>("file write") else {
                    return;
                };
                let id = frame.request_id;
                if w.size == 0 {
                    store(fake, &w.path, Vec::new());
                    Some(id)
                } else {
                    upload = Some((id, w, Vec::new()));
                    None
                }
            }
            FrameType::FileData => match upload.take() {
                Some((id, w, mut data)) => {
                    data.extend_from_slice(&frame.payload);
                    if data.len() as u64 >= w.size {
                        store(fake, &w.path, data);
                        Some(id)
                    } else {
                        upload = Some((id, w, data));
                        None
                    }
                }
                None => None,
            },
            _ => Some(frame.request_id),
        };
        if let Some(id) = reply_to {
            let done = Reply::Done(Done::default())
                .to_frame(id)
                .expect("done frame");
            if done.write_to(&mut s).is_err() {
                return;
            }
            if frame.frame_type == FrameType::PowerOff {
                vmm.signal(libc::SIGKILL);
                return;
            }
        }
    }
}

fn store(fake: &Mutex<Fake>, path: &str, data: Vec<u8>) {
    fake.lock()
        .unwrap_or_else(|p| p.into_inner())
        .guest_files
        .insert(path.to_string(), data);
}
