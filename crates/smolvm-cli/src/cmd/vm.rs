//! VM lifecycle commands: `create`, `start`, `stop`, `delete`, `logs`, `reconcile`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use smolvm::{
    CreateOptions, NetworkMode, SmolVmManager, DEFAULT_BOOT_TIMEOUT_SECS, DEFAULT_STOP_TIMEOUT_SECS,
};
use smolvm::{DiskMode, VmConfig, VmConfigSpec, VmInfo, VmState};

use super::common::{backend_choice, manager, Secs};
use crate::output::print_json;
use crate::Cli;

/// How to build the VM: the default image unless `--kernel`/`--rootfs` are given.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// VM id (default: generated `vm-<8 hex>`).
    #[arg(long = "id")]
    pub vm_id: Option<String>,
    /// Virtual CPUs (1-32).
    #[arg(long, default_value_t = smolvm::DEFAULT_VCPU_COUNT)]
    pub vcpus: u32,
    /// Guest memory in MiB (128-16384).
    #[arg(long, default_value_t = smolvm::DEFAULT_MEM_SIZE_MIB)]
    pub mem: u32,
    /// Root disk size in MiB: the VM's disk is grown to it (and its ext4 resized) when larger than the
    /// image's.
    #[arg(long, value_name = "MIB")]
    pub disk_size: Option<u64>,
    /// Host limit: hard CPU cap of the VMM in percent of one host CPU (50 = half a CPU, 200 = two).
    #[arg(long, value_name = "PERCENT")]
    pub cpu_quota: Option<u32>,
    /// Host limit: relative CPU weight against other VMs, 1-10000 (default 100).
    #[arg(long, value_name = "WEIGHT")]
    pub cpu_weight: Option<u32>,
    /// Host limit: memory cap of the VMM process in MiB (default guest RAM + 256).
    #[arg(long, value_name = "MIB")]
    pub memory_limit: Option<u32>,
    /// Host limit: the VMM's host processes and threads (default 256).
    #[arg(long, value_name = "N")]
    pub pids_max: Option<u32>,
    /// Boot cold even when a template snapshot of this configuration exists (also SMOLVM_TEMPLATES=off).
    /// Otherwise VMs of a built image start from their template, and the first one started makes it.
    #[arg(long)]
    pub no_template: bool,
    /// Name of a built or imported image to boot (see `smolvm image list`) [default: auto-configuration's
    /// choice: `default-minimal` once the minimal kernel is compiled, else `default`; `SMOLVM_AUTO_KERNEL`].
    #[arg(long, conflicts_with_all = ["kernel", "rootfs"])]
    pub image: Option<String>,
    /// Kernel image (with --rootfs: use your own image instead of the default).
    #[arg(long, requires = "rootfs")]
    pub kernel: Option<PathBuf>,
    /// Root filesystem image.
    #[arg(long, requires = "kernel")]
    pub rootfs: Option<PathBuf>,
    /// Initial ramdisk for --kernel.
    #[arg(long, requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line for --kernel.
    #[arg(long, requires = "kernel")]
    pub boot_args: Option<String>,
    /// The --rootfs does not run smolvm's agent, even if --boot-args say `init=/init` (an image with an
    /// `/init` of its own): smolvm then never waits for or talks to an agent (no exec, stop by ACPI/kill).
    /// Default: the agent runs when the boot args hand over to it with `init=/init`.
    #[arg(long, requires = "kernel")]
    pub no_agent: bool,
    /// Disk mode: isolated (own copy) or shared (boot the image read-only).
    #[arg(long, value_enum, default_value_t)]
    pub disk_mode: DiskMode,
    /// Keep the isolated disk after delete; a later create with the same id reuses it.
    #[arg(long)]
    pub retain_disk: bool,
    /// Delete a disk retained by an earlier VM with this id and start from a fresh copy of the image
    /// (by default such a disk is reused, with its files).
    #[arg(long)]
    pub discard_retained_disk: bool,
    /// Environment variable for the guest, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Network attachment.
    #[arg(long, value_enum, default_value_t)]
    pub network: NetworkMode,
    /// Egress policy (TAP networking only for anything but open).
    #[command(flatten)]
    pub policy: super::policy::PolicyArgs,
}

impl CreateArgs {
    /// Sets the user-given fields on `spec`.
    fn apply(&self, spec: &mut VmConfigSpec) -> anyhow::Result<()> {
        spec.vm_id = self.vm_id.clone();
        spec.vcpu_count = self.vcpus;
        spec.mem_size_mib = self.mem;
        spec.disk_mode = self.disk_mode;
        spec.retain_disk_on_delete = self.retain_disk;
        spec.disk_size_mib = self.disk_size;
        spec.network_policy = self.policy.policy()?.unwrap_or_default();
        let limits = smolvm::HostLimits {
            cpu_quota_percent: self.cpu_quota,
            cpu_weight: self.cpu_weight,
            memory_limit_mib: self.memory_limit,
            pids_max: self.pids_max,
        };
        if limits != smolvm::HostLimits::default() {
            spec.host_limits = Some(limits);
        }
        for kv in &self.env {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--env {kv:?}: expected KEY=VALUE"))?;
            spec.env_vars.insert(k.to_string(), v.to_string());
        }
        Ok(())
    }

    /// Checks every user-given value that needs no file system (id, sizes, env keys): call before
    /// opening the state or building an image, so bad input is answered first and changes nothing.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut probe = VmConfigSpec::new("", "");
        self.apply(&mut probe)?;
        Ok(probe.validate_fields()?)
    }

    /// Builds the validated config (building the default image if needed, the auto-configuration the
    /// facade uses too: [`SmolVmManager::image_config`]).
    pub fn config(&self, m: &SmolVmManager, cli: &Cli) -> anyhow::Result<VmConfig> {
        self.validate()?;
        let mut spec = match (&self.kernel, &self.rootfs) {
            (Some(k), Some(r)) => {
                let mut s = VmConfigSpec::new(k, r);
                s.initrd_path = self.initrd.clone();
                if let Some(a) = &self.boot_args {
                    s.boot_args = a.clone();
                }
                if self.no_agent {
                    s.agent = Some(false);
                }
                s.backend = Some(m.resolve(backend_choice(cli))?);
                s
            }
            _ => m
                .image_config(self.image.as_deref(), backend_choice(cli))
                .context("cannot prepare the guest image")?,
        };
        self.apply(&mut spec)?;
        Ok(spec.build()?)
    }

    /// True when this VM may start from (or make) a template: an image VM (not --kernel/--rootfs),
    /// without --no-template or SMOLVM_TEMPLATES=off.
    pub fn uses_templates(&self) -> bool {
        !self.no_template && self.kernel.is_none() && smolvm::templates_enabled_by_env()
    }

    /// Create options.
    pub fn options(&self) -> CreateOptions {
        CreateOptions {
            network: self.network,
            discard_retained_disk: self.discard_retained_disk,
        }
    }
}

/// Arguments of `smolvm create`.
#[derive(Debug, Args)]
pub struct CreateCmd {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Start a new VM from this snapshot instead (running when the command returns; the machine shape
    /// is the snapshot's; only --id, --boot-timeout and --json apply).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["image", "kernel", "rootfs", "disk_size", "vcpus", "mem", "env", "start", "cpu_quota", "cpu_weight", "memory_limit", "pids_max"])]
    pub from_snapshot: Option<String>,
    /// Start the VM after creating it.
    #[arg(long)]
    pub start: bool,
    /// Boot timeout in seconds (with --start).
    #[arg(long, value_name = "SECS", default_value_t = Secs::of(DEFAULT_BOOT_TIMEOUT_SECS))]
    pub boot_timeout: Secs,
    /// Print the VmInfo as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments naming one VM, with a timeout.
#[derive(Debug, Args)]
pub struct IdTimeoutArgs {
    /// The VM id.
    pub id: String,
    /// Timeout in seconds [default: 30 for start, 10 for stop].
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<Secs>,
    /// Print the VmInfo as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `smolvm delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The VM ids.
    #[arg(required = true)]
    pub ids: Vec<String>,
}

/// Arguments of `smolvm logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The VM id.
    pub id: String,
    /// Keep printing new output until interrupted.
    #[arg(long, short)]
    pub follow: bool,
    /// Show the VMM's own log instead of the guest console.
    #[arg(long)]
    pub vmm: bool,
}

/// Arguments of `smolvm reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn show(info: &VmInfo, json: bool, verb: &str) -> anyhow::Result<()> {
    if json {
        print_json(info)
    } else {
        println!("{verb} {} ({})", info.vm_id, info.status);
        Ok(())
    }
}

/// `smolvm create`.
pub fn create(cli: &Cli, a: &CreateCmd) -> anyhow::Result<ExitCode> {
    // Bad input is answered before anything is opened, built or created.
    a.create.validate()?;
    let m = manager(cli)?;
    if let Some(name) = &a.from_snapshot {
        let info = m.create_from_snapshot(name, a.create.vm_id.as_deref(), a.boot_timeout.0)?;
        show(&info, a.json, "started")?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = a.create.config(&m, cli)?;
    let opts = a.create.options();
    let (created, make_template) = if a.create.uses_templates() {
        m.create_with_templates(&config, &opts)?
    } else {
        (m.create_reporting(&config, &opts)?, None)
    };
    if let Some(disk) = &created.reused_disk {
        // On stderr: stdout may be JSON.
        eprintln!(
            "reusing the disk {} retained by an earlier VM {} (its files are kept; \
             --discard-retained-disk starts fresh)",
            disk.display(),
            created.info.vm_id
        );
    }
    let mut info = created.info;
    if a.start {
        info = match m.start(&info.vm_id, a.boot_timeout.0) {
            Ok(i) => i,
            Err(e) => {
                // A VM that was asked to start but cannot is not left half-made.
                let _ = m.delete(&info.vm_id);
                return Err(e.into());
            }
        };
        if let Some(name) = make_template {
            // Best effort: a failure only costs later VMs their fast start.
            if let Err(e) = m.make_template(&info.vm_id, &name) {
                tracing::warn!(template = %name, error = %e, "could not make a template");
            }
            info = m.get(&info.vm_id)?;
        }
    }
    show(&info, a.json, if a.start { "started" } else { "created" })?;
    Ok(ExitCode::SUCCESS)
}

/// `smolvm start`.
pub fn start(cli: &Cli, a: &IdTimeoutArgs) -> anyhow::Result<ExitCode> {
    let timeout = a.timeout.unwrap_or(Secs::of(DEFAULT_BOOT_TIMEOUT_SECS));
    let info = manager(cli)?.start(&a.id, timeout.0)?;
    show(&info, a.json, "started")?;
    Ok(ExitCode::SUCCESS)
}

/// `smolvm stop`.
pub fn stop(cli: &Cli, a: &IdTimeoutArgs) -> anyhow::Result<ExitCode> {
    let m = manager(cli)?;
    let before = m.get(&a.id)?.status;
    let timeout = a.timeout.unwrap_or(Secs::of(DEFAULT_STOP_TIMEOUT_SECS));
    let info = m.stop(&a.id, timeout.0)?;
    if a.json || before == VmState::Running {
        show(&info, a.json, "stopped")?;
    } else {
        println!(
            "{}",
            not_running_note(&info, m.last_error(&a.id)?.as_deref())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What `stop` says about a VM that was not running: nothing was done, and for an `error` VM why and
/// what to do instead.
fn not_running_note(info: &VmInfo, last_error: Option<&str>) -> String {
    let id = &info.vm_id;
    match (info.status, last_error) {
        (VmState::Error, Some(why)) => format!(
            "VM {id} is not running (error: {why}); nothing to stop. \
             `smolvm start {id}` restarts it from its disk, `smolvm delete {id}` removes it"
        ),
        (status, _) => format!("VM {id} is not running ({status}); nothing to stop"),
    }
}

/// `smolvm delete`.
pub fn delete(cli: &Cli, a: &DeleteArgs) -> anyhow::Result<ExitCode> {
    let m = manager(cli)?;
    let mut failed = false;
    for id in &a.ids {
        match m.delete(id) {
            Ok(()) => println!("deleted {id}"),
            Err(e) => {
                failed = true;
                crate::output::print_error(&anyhow::Error::new(e).context(format!("delete {id}")));
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `smolvm reconcile`.
pub fn reconcile(cli: &Cli, a: &ReconcileArgs) -> anyhow::Result<ExitCode> {
    let stale = manager(cli)?.reconcile()?;
    if a.json {
        print_json(&stale)?;
    } else if stale.is_empty() {
        println!("all running VMs are alive");
    } else {
        let m = manager(cli)?;
        for id in &stale {
            let why = m.last_error(id).ok().flatten();
            println!(
                "{id}: marked error: {}",
                why.as_deref().unwrap_or("its VMM process is gone")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `smolvm logs`.
pub fn logs(cli: &Cli, a: &LogsArgs) -> anyhow::Result<ExitCode> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let m = manager(cli)?;
    m.get(&a.id)?;
    let path = if a.vmm {
        m.vmm_log(&a.id)
    } else {
        m.console_log(&a.id)
    };
    let mut out = std::io::stdout().lock();
    let mut pos = 0u64;
    loop {
        if let Ok(mut f) = std::fs::File::open(&path) {
            if f.metadata()?.len() < pos {
                pos = 0; // the log was truncated by a restart
            }
            f.seek(SeekFrom::Start(pos))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            pos += buf.len() as u64;
            out.write_all(&buf)?;
            out.flush()?;
        } else if !a.follow {
            anyhow::bail!(
                "no log yet at {} (the VM has not been started)",
                path.display()
            );
        }
        if !a.follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(status: VmState) -> VmInfo {
        let dir = tempfile::tempdir().unwrap();
        let (k, r) = (dir.path().join("k"), dir.path().join("r"));
        std::fs::write(&k, b"k").unwrap();
        std::fs::write(&r, b"r").unwrap();
        let config = VmConfig::builder(&k, &r).vm_id("tc").build().unwrap();
        VmInfo {
            vm_id: "tc".into(),
            status,
            config,
            network: None,
            pid: None,
            socket_path: None,
        }
    }

    #[test]
    fn stop_of_a_vm_that_is_not_running_says_nothing_was_stopped() {
        assert_eq!(
            not_running_note(
                &info(VmState::Error),
                Some("the VMM of VM tc (pid 7) exited")
            ),
            "VM tc is not running (error: the VMM of VM tc (pid 7) exited); nothing to stop. \
             `smolvm start tc` restarts it from its disk, `smolvm delete tc` removes it"
        );
        assert_eq!(
            not_running_note(&info(VmState::Stopped), None),
            "VM tc is not running (stopped); nothing to stop"
        );
    }
}
