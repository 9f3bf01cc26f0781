//! The Firecracker backend: start `firecracker --api-sock <socket>` detached, wait for its API socket,
//! configure the microVM over the API ([`configure`], separate from the process so that tests can drive
//! it against a fake server) and start it.

use std::fs::File;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::api::{
    ActionType, BootSource, Drive, InstanceActionInfo, Logger, MachineConfiguration,
    NetworkInterface, SerialDevice, VmRunState, Vsock,
};
use super::http::ApiClient;
use super::jail::{self, Jail};
use super::FirecrackerError;
use crate::backend::console_keeper::{ConsolePipe, CONSOLE_LOG_MAX};
use crate::backend::{AgentEndpoint, Backend, BackendError, LaunchSpec, NetAttachment};
use crate::config::BackendKind;
use crate::process::{spawn_detached, ProcessIdentity};

/// [`spawn_detached`] of a command built elsewhere (it takes the command by value).
fn spawn_detached_cmd(cmd: &mut Command, log: &Path) -> std::io::Result<ProcessIdentity> {
    let taken = std::mem::replace(cmd, Command::new(""));
    spawn_detached(taken, log)
}

/// The guest vsock port the smolvm agent listens on (shared with the agent).
pub(crate) use smolvm_protocol::AGENT_VSOCK_PORT;
/// The guest's vsock context id (0-2 are reserved; each Firecracker process has its own vsock device,
/// so every guest can use the same one).
pub(crate) const GUEST_CID: u32 = 3;
/// Drive id of the root disk.
pub(crate) const ROOT_DRIVE_ID: &str = "rootfs";
/// Interface id of the guest's network interface.
pub(crate) const NET_IFACE_ID: &str = "eth0";
/// How long [`Backend::launch`] waits for the API socket to accept connections.
pub(crate) const SOCKET_WAIT: Duration = Duration::from_secs(5);

/// Limit for the shutdown request (the VMM may be busy, but it must not block a stop for long).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of the VMM log goes into a launch error.
const LOG_TAIL_LINES: usize = 20;

/// Firecracker as a [`Backend`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FirecrackerBackend {
    /// The `firecracker` binary.
    pub binary: PathBuf,
    /// Run every VMM through the jailer (see [`Jail`]); `None`: Firecracker runs as the caller.
    pub jail: Option<Jail>,
}

impl FirecrackerBackend {
    /// A backend running `binary` directly.
    pub(crate) fn new(binary: impl Into<PathBuf>) -> Self {
        FirecrackerBackend {
            binary: binary.into(),
            jail: None,
        }
    }

    /// A backend running `binary` through the jailer of `jail`.
    pub(crate) fn jailed(binary: impl Into<PathBuf>, jail: Jail) -> Self {
        FirecrackerBackend {
            binary: binary.into(),
            jail: Some(jail),
        }
    }

    /// The jailer's command for `spec`, whose VMM user it needs.
    fn jailed_command(&self, jail: &Jail, spec: &LaunchSpec) -> Result<Command, FirecrackerError> {
        let user = spec.run_as.ok_or(FirecrackerError::JailNeedsUser)?;
        let argv = jail.argv(&self.binary, &spec.vm_id, user);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        spec.mark_owner(&mut cmd);
        Ok(cmd)
    }

    /// Refuses what a jailed VMM cannot do yet (its snapshot paths would have to live in the jail).
    fn refuse_jailed(&self, what: &str) -> Result<(), BackendError> {
        if self.jail.is_some() {
            return Err(BackendError::Unavailable {
                backend: BackendKind::Firecracker,
                reason: format!("{what} of jailed Firecracker VMs is not supported yet"),
            });
        }
        Ok(())
    }

    /// The command line that starts the VMM for `spec`: the API socket, plus `--id` so Firecracker's
    /// log lines name the VM when the id fits Firecracker's rule (1-64 alphanumerics and hyphens).
    pub(crate) fn command(&self, spec: &LaunchSpec) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--api-sock").arg(&spec.control_socket);
        let id = spec.vm_id.as_bytes();
        if (1..=64).contains(&id.len())
            && id.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        {
            cmd.arg("--id").arg(&spec.vm_id);
        }
        spec.mark_owner(&mut cmd);
        cmd
    }

    /// [`Backend::launch`] with an explicit limit for the API socket to appear.
    pub(crate) fn launch_with(
        &self,
        spec: &LaunchSpec,
        socket_wait: Duration,
    ) -> Result<ProcessIdentity, FirecrackerError> {
        self.start_vmm(spec, socket_wait, None)
    }

    /// Starts the process and either configures and boots `spec`, or (`restore_from`) loads the
    /// snapshot in that directory with `spec`'s TAP and vsock socket.
    pub(crate) fn start_vmm(
        &self,
        spec: &LaunchSpec,
        socket_wait: Duration,
        restore_from: Option<&Path>,
    ) -> Result<ProcessIdentity, FirecrackerError> {
        // Everything that can be checked without side effects is checked before anything is created.
        preflight(spec)?;
        remove_sockets(&spec.control_socket, &spec.agent)?;
        // The guest's serial console goes into a pipe and a keeper copies it into the console log
        // with a size cap, as under QEMU (see `console_keeper`): a guest printing forever cannot fill
        // the disk. Unjailed, Firecracker inherits the pipe and `serial_out_path` is its `/dev/fd`
        // path; jailed (the jailer closes every other descriptor, and there is no `/dev/fd` in the
        // jail), the pipe is its stdout, where the serial console goes without `/serial`.
        let spawn_err = |source| FirecrackerError::Spawn {
            binary: self.binary.display().to_string(),
            source,
        };
        let console = ConsolePipe::new().map_err(spawn_err)?;
        let (mut cmd, api_spec, serial) = match &self.jail {
            Some(jail) => {
                let mut cmd = self.jailed_command(jail, spec)?;
                let inside = jail.prepare(&self.binary, spec)?;
                console.as_stdout(&mut cmd);
                (cmd, inside, false)
            }
            None => {
                let mut cmd = self.command(spec);
                console.pass_to(&mut cmd);
                let piped = LaunchSpec {
                    console_log: console.vmm_path(),
                    ..spec.clone()
                };
                (cmd, piped, true)
            }
        };
        let release_jail = || {
            if let Some(jail) = &self.jail {
                if let Err(e) = jail.release(&self.binary, &spec.vm_id) {
                    tracing::warn!(error = %e, "removing the jail after a failed launch");
                }
            }
        };
        let identity = match spawn_detached_cmd(&mut cmd, &spec.vmm_log) {
            Ok(id) => id,
            Err(e) => {
                release_jail();
                return Err(spawn_err(e));
            }
        };
        if let Err(e) = console.start_keeper(&spec.console_log, CONSOLE_LOG_MAX) {
            identity.kill();
            release_jail();
            return Err(spawn_err(e));
        }
        let result = wait_for_socket(&spec.control_socket, &identity, socket_wait).and_then(|()| {
            let mut client = ApiClient::new(&spec.control_socket);
            match restore_from {
                None => configure_vm(&mut client, &api_spec, None, serial),
                Some(dir) => super::snapshot::load(&mut client, &api_spec, dir),
            }
        });
        match result {
            Ok(()) => Ok(identity),
            Err(e) => {
                identity.kill();
                // The launch error matters more than a failed cleanup, which the manager's cleanup
                // repeats anyway.
                if let Err(cleanup) = remove_sockets(&spec.control_socket, &spec.agent) {
                    tracing::warn!(error = %cleanup, "removing sockets after a failed launch");
                }
                identity.wait_gone(Duration::from_secs(2));
                release_jail();
                Err(FirecrackerError::Launch {
                    vm_id: spec.vm_id.clone(),
                    vmm_log: spec.vmm_log.clone(),
                    log_tail: log_tail(&spec.vmm_log),
                    source: Box::new(e),
                })
            }
        }
    }
}

impl Backend for FirecrackerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }

    fn launch(&self, spec: &LaunchSpec) -> Result<ProcessIdentity, BackendError> {
        Ok(self.launch_with(spec, SOCKET_WAIT)?)
    }

    fn request_shutdown(&self, control_socket: &Path) -> Result<(), BackendError> {
        let mut client = ApiClient::new(control_socket).with_timeout(SHUTDOWN_TIMEOUT);
        client.send(&InstanceActionInfo::new(ActionType::SendCtrlAltDel))?;
        Ok(())
    }

    fn pause(&self, control_socket: &Path) -> Result<(), BackendError> {
        let mut client = ApiClient::new(control_socket);
        Ok(super::snapshot::set_state(&mut client, VmRunState::Paused)?)
    }

    fn resume(&self, control_socket: &Path) -> Result<(), BackendError> {
        let mut client = ApiClient::new(control_socket);
        Ok(super::snapshot::set_state(
            &mut client,
            VmRunState::Resumed,
        )?)
    }

    fn save_state(&self, control_socket: &Path, dir: &Path) -> Result<(), BackendError> {
        self.refuse_jailed("a snapshot")?;
        let mut client = ApiClient::new(control_socket);
        Ok(super::snapshot::create(&mut client, dir)?)
    }

    fn restore(&self, spec: &LaunchSpec, dir: &Path) -> Result<ProcessIdentity, BackendError> {
        self.refuse_jailed("restoring a snapshot")?;
        Ok(self.start_vmm(spec, SOCKET_WAIT, Some(dir))?)
    }

    fn vmm_version(&self) -> Result<String, BackendError> {
        crate::backend::version_line(&self.binary).map_err(|source| {
            FirecrackerError::Spawn {
                binary: self.binary.display().to_string(),
                source,
            }
            .into()
        })
    }

    fn agent_endpoint(&self, socket_dir: &Path, vm_id: &str) -> AgentEndpoint {
        let uds_path = match &self.jail {
            Some(jail) => jail.root(&self.binary, vm_id).join(jail::VSOCK_SOCKET),
            None => socket_dir.join(format!("{vm_id}.vsock")),
        };
        AgentEndpoint::FirecrackerVsock {
            uds_path,
            port: AGENT_VSOCK_PORT,
        }
    }

    fn control_socket(&self, socket_dir: &Path, vm_id: &str) -> PathBuf {
        match &self.jail {
            // The jailed VMM creates it in its `/`; smolvm reaches it from outside.
            Some(jail) => jail.root(&self.binary, vm_id).join(jail::API_SOCKET),
            None => socket_dir.join(format!("{vm_id}.fc.sock")),
        }
    }

    fn release(&self, vm_id: &str) -> Result<(), BackendError> {
        match &self.jail {
            Some(jail) => jail.release(&self.binary, vm_id).map_err(|source| {
                FirecrackerError::File {
                    action: "remove the jail",
                    path: jail.dir(&self.binary, vm_id),
                    source,
                }
                .into()
            }),
            None => Ok(()),
        }
    }
}

/// Configures a Firecracker process that has not started its guest yet, then starts it. The sequence:
/// `PUT /logger` (only when `logger` is given, first so that later failures are logged),
/// `/machine-config`, `/boot-source`, `/drives/rootfs`, `/network-interfaces/eth0` (TAP only), `/vsock`,
/// `/serial` (console to `spec.console_log`; skipped with a warning by releases without it), and
/// `PUT /actions` `InstanceStart`. Stops at the first failure.
#[cfg(test)]
pub(crate) fn configure(
    client: &mut ApiClient,
    spec: &LaunchSpec,
    logger: Option<&Logger>,
) -> Result<(), FirecrackerError> {
    configure_vm(client, spec, logger, true)
}

/// [`configure`], with `PUT /serial` only when `serial` (a jailed VMM's console is its stdout).
pub(crate) fn configure_vm(
    client: &mut ApiClient,
    spec: &LaunchSpec,
    logger: Option<&Logger>,
    serial: bool,
) -> Result<(), FirecrackerError> {
    // Checked before the first request so that a spec Firecracker cannot run changes nothing.
    let uds_path = vsock_uds(spec)?;
    let net = match &spec.net {
        None => None,
        Some(NetAttachment::Tap { tap, mac }) => Some(NetworkInterface {
            iface_id: NET_IFACE_ID.to_string(),
            host_dev_name: tap.clone(),
            guest_mac: Some(mac.clone()),
            mtu: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        }),
        Some(NetAttachment::User { .. }) => return Err(FirecrackerError::UnsupportedNetwork),
    };

    if let Some(logger) = logger {
        client.send(logger)?;
    }
    client.send(&MachineConfiguration {
        vcpu_count: spec.vcpu_count,
        mem_size_mib: spec.mem_size_mib,
        smt: None,
        track_dirty_pages: None,
        huge_pages: None,
    })?;
    client.send(&BootSource {
        kernel_image_path: spec.kernel.clone(),
        initrd_path: spec.initrd.clone(),
        // An empty command line would replace Firecracker's default with nothing; absent keeps it.
        boot_args: Some(spec.kernel_cmdline.clone()).filter(|a| !a.is_empty()),
    })?;
    client.send(&Drive::virtio_block(
        ROOT_DRIVE_ID,
        &spec.disk,
        true,
        spec.disk_read_only,
    ))?;
    if let Some(net) = net {
        client.send(&net)?;
    }
    client.send(&Vsock {
        guest_cid: GUEST_CID,
        uds_path: uds_path.to_path_buf(),
    })?;
    if serial {
        put_serial(client, &spec.console_log)?;
    }
    client.send(&InstanceActionInfo::new(ActionType::InstanceStart))?;
    Ok(())
}

/// `PUT /serial`, which releases before the v1.16 API lack: their "invalid path" answer is tolerated
/// (the console then stays in the VMM log); any other failure is an error.
fn put_serial(client: &mut ApiClient, console_log: &Path) -> Result<(), FirecrackerError> {
    let serial = SerialDevice {
        serial_out_path: Some(console_log.to_path_buf()),
        rate_limiter: None,
    };
    match client.send(&serial) {
        Ok(_) => Ok(()),
        Err(FirecrackerError::Api {
            status: 400,
            fault_message,
            ..
        }) if fault_message.contains("Invalid request method and/or path") => {
            tracing::warn!(%fault_message, "firecracker has no /serial; the console goes to the VMM log");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn vsock_uds(spec: &LaunchSpec) -> Result<&Path, FirecrackerError> {
    match &spec.agent {
        AgentEndpoint::FirecrackerVsock { uds_path, .. } => Ok(uds_path),
        other => Err(FirecrackerError::WrongAgentEndpoint { got: other.clone() }),
    }
}

/// Checks what can be checked before creating anything: socket path lengths, the network mode, the
/// agent endpoint, and that the kernel is an ELF vmlinux.
fn preflight(spec: &LaunchSpec) -> Result<(), FirecrackerError> {
    check_socket_path(&spec.control_socket)?;
    check_socket_path(vsock_uds(spec)?)?;
    if let Some(NetAttachment::User { .. }) = spec.net {
        return Err(FirecrackerError::UnsupportedNetwork);
    }
    let mut magic = [0u8; 4];
    File::open(&spec.kernel)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|source| FirecrackerError::File {
            action: "read kernel",
            path: spec.kernel.clone(),
            source,
        })?;
    if &magic != b"\x7fELF" {
        return Err(FirecrackerError::KernelNotElf {
            path: spec.kernel.clone(),
        });
    }
    Ok(())
}

/// Fails when `path` does not fit in `sun_path`.
fn check_socket_path(path: &Path) -> Result<(), FirecrackerError> {
    Ok(crate::backend::check_socket_path(path)?)
}

/// Removes a VM's API socket and vsock socket (both created by Firecracker, which does not remove
/// them when it is killed). Missing files are fine.
pub(crate) fn remove_sockets(
    control_socket: &Path,
    agent: &AgentEndpoint,
) -> Result<(), FirecrackerError> {
    crate::backend::remove_socket(control_socket)?;
    Ok(crate::backend::remove_socket(agent.path())?)
}

/// Polls until the API socket accepts a connection, the process dies, or `wait` passes.
fn wait_for_socket(
    socket: &Path,
    identity: &ProcessIdentity,
    wait: Duration,
) -> Result<(), FirecrackerError> {
    let start = Instant::now();
    loop {
        if UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        if !identity.is_alive() {
            return Err(FirecrackerError::Exited);
        }
        if start.elapsed() >= wait {
            return Err(FirecrackerError::SocketNotReady {
                socket: socket.to_path_buf(),
                waited: wait,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The last lines of the VMM log (best effort).
pub(crate) fn log_tail(path: &Path) -> String {
    let lines = crate::process::log_tail(path, 0, LOG_TAIL_LINES);
    if lines.is_empty() {
        return "(the log is empty or unreadable)".to_string();
    }
    lines.join("\n")
}
