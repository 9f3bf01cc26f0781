//! Options, the shared context of a run, and the driver that runs the chosen sections in order.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::machine::Machine;
use super::report::{BenchReport, ImageFiles, Section, SectionReport, Settings, REPORT_SCHEMA};
use super::workdir::WorkDir;
use super::{coldstart, parallel, sections, BenchError};
use smolvm::internals::backend::qemu::QemuBackend;
use smolvm::BackendKind;
use smolvm::SmolVmManager;
use smolvm::VmConfig;

/// Default cold-start iterations.
pub const DEFAULT_ITERATIONS: usize = 10;
/// Boot timeout of benchmark VMs: generous, because 8 TCG guests on 2 cores boot slowly and a timeout
/// would cost the figure.
pub const BENCH_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

static CANCELLED: AtomicBool = AtomicBool::new(false);

/// Asks a running benchmark to stop at its next checkpoint (it then deletes what it made).
pub fn request_cancel() {
    CANCELLED.store(true, Ordering::SeqCst);
}

extern "C" fn on_sigint(_: libc::c_int) {
    if CANCELLED.swap(true, Ordering::SeqCst) {
        // Second Ctrl-C: the user insists. Leftover VMs are found by `smolvm list` in the data dir.
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

/// Makes Ctrl-C (SIGINT) cancel the benchmark gracefully (VMs are deleted); a second Ctrl-C exits at
/// once. QEMU runs in its own session, so the terminal's SIGINT never reaches it.
pub fn cancel_on_sigint() {
    // SAFETY: the handler only touches an atomic and calls _exit, both async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

/// `Err(Interrupted)` once cancellation was requested.
pub fn checkpoint() -> Result<(), BenchError> {
    if CANCELLED.load(Ordering::SeqCst) {
        Err(BenchError::Interrupted)
    } else {
        Ok(())
    }
}

/// A function that takes progress lines.
type ProgressFn = dyn Fn(&str) + Send + Sync;

/// A progress sink (the CLI prints to stderr).
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<ProgressFn>>);

impl Progress {
    /// Reports progress to `f`.
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Progress {
        Progress(Some(Arc::new(f)))
    }
    /// Reports one line.
    pub fn say(&self, msg: &str) {
        if let Some(f) = &self.0 {
            f(msg);
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress(on)"
        } else {
            "Progress(off)"
        })
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Cold-start iterations (each paired with one baseline boot). Lifecycle runs 5x as many
    /// create/delete pairs; memory and parallel run `min(iterations, 3)` rounds.
    pub iterations: usize,
    /// Backend under test (`None` = auto).
    pub backend: Option<BackendKind>,
    /// Sections to run (all if empty).
    pub sections: Vec<Section>,
    /// Where VMs are made; `None` = a private temporary directory removed afterwards.
    pub data_dir: Option<PathBuf>,
    /// Socket directory; `None` = inside the private temporary directory when `data_dir` is `None`,
    /// else smolvm's default.
    pub socket_dir: Option<PathBuf>,
    /// Where the default image is cached; `None` = `data_dir` if given, else smolvm's default data dir.
    pub image_dir: Option<PathBuf>,
    /// A cached image to boot instead of the default one (e.g. `minimal`).
    pub image: Option<String>,
    /// vCPUs of every benchmark VM (the image's default if `None`).
    pub vcpu_count: Option<u32>,
    /// Guest memory of the VMs that do not set their own (the image's default if `None`).
    pub mem_size_mib: Option<u32>,
    /// Boot timeout per VM.
    pub boot_timeout: Duration,
    /// Progress lines.
    pub progress: Progress,
    /// The `smolvm` CLI binary, to start the processes of the concurrent-exec rows (skipped if `None`).
    pub cli: Option<PathBuf>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            iterations: DEFAULT_ITERATIONS,
            backend: None,
            sections: Vec::new(),
            data_dir: None,
            socket_dir: None,
            image_dir: None,
            image: None,
            vcpu_count: None,
            mem_size_mib: None,
            boot_timeout: BENCH_BOOT_TIMEOUT,
            progress: Progress::default(),
            cli: None,
        }
    }
}

/// What every section shares.
pub(crate) struct Ctx {
    pub manager: Arc<SmolVmManager>,
    /// The image's config; each VM gets its own id (and memory size) from it.
    pub template: VmConfig,
    pub backend: BackendKind,
    /// The QEMU backend (for the raw-VMM baseline), when QEMU is under test.
    pub qemu: Option<QemuBackend>,
    pub iterations: usize,
    pub boot_timeout: Duration,
    /// Private scratch space (baseline disks and sockets).
    pub scratch: PathBuf,
    pub progress: Progress,
    /// The `smolvm` CLI, for rows that start host processes.
    pub cli: Option<PathBuf>,
}

impl Ctx {
    /// The template with `vm_id` and optionally another memory size.
    pub(crate) fn config(&self, vm_id: &str, mem_mib: Option<u32>) -> Result<VmConfig, BenchError> {
        self.template
            .with(|s| {
                s.vm_id = Some(vm_id.to_string());
                s.backend = Some(self.backend);
                if let Some(m) = mem_mib {
                    s.mem_size_mib = m;
                }
            })
            .map_err(|e| BenchError::step(format!("config of {vm_id}"), e))
    }

    pub(crate) fn say(&self, msg: &str) {
        self.progress.say(msg);
    }
}

/// Runs the benchmark. Every VM it makes is deleted before it returns, on success and on error.
pub fn run(opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    let mut scratch = WorkDir::new("smolvm-bench-")
        .map_err(|e| BenchError::io("create a temporary directory in", std::env::temp_dir(), e))?;
    let (data_dir, socket_dir) = match &opts.data_dir {
        Some(d) => (d.clone(), opts.socket_dir.clone()),
        None => (
            scratch
                .sub("data")
                .map_err(|e| BenchError::io("create", scratch.path(), e))?,
            match &opts.socket_dir {
                Some(s) => Some(s.clone()),
                None => Some(
                    scratch
                        .sub("s")
                        .map_err(|e| BenchError::io("create", scratch.path(), e))?,
                ),
            },
        ),
    };
    // The baseline launches QEMU as the caller with the disk opened by path; smolvm's VMMs run as
    // the same user so both sides run the identical argv (a dropped VMM gets its disk as fds).
    let mut builder = SmolVmManager::builder().data_dir(&data_dir).vmm_user(false);
    if let Some(s) = socket_dir.as_deref() {
        builder = builder.socket_dir(s);
    }
    if let Some(k) = opts.backend {
        builder = builder.backend(k);
    }
    let manager = Arc::new(
        builder
            .build()
            .map_err(|e| BenchError::step("open the manager", e))?,
    );
    let backend = manager
        .resolve(opts.backend)
        .map_err(|e| BenchError::step("choose the backend", e))?;
    let image_dir = image_dir(opts)?;
    let (image_name, template) =
        super::image::image_config(&image_dir, opts.image.as_deref(), backend)
            .map_err(|e| BenchError::step("build or find the default image", e))?;
    opts.progress
        .say(&format!("image: {image_name} in {}", image_dir.display()));
    let template = template
        .with(|s| {
            if let Some(n) = opts.vcpu_count {
                s.vcpu_count = n;
            }
            if let Some(m) = opts.mem_size_mib {
                s.mem_size_mib = m;
            }
        })
        .map_err(|e| BenchError::step("apply --vcpus and --mem", smolvm::Error::from(e)))?;
    let qemu = match backend {
        BackendKind::Qemu => Some(
            QemuBackend::from_host(manager.host())
                .map_err(|e| BenchError::step("QEMU backend", e))?,
        ),
        BackendKind::Firecracker => None,
    };
    let mut machine = Machine::detect(manager.host(), &data_dir);
    let ctx = Ctx {
        manager,
        template,
        backend,
        qemu,
        iterations: opts.iterations.max(1),
        boot_timeout: opts.boot_timeout,
        scratch: scratch
            .sub("b")
            .map_err(|e| BenchError::io("create", scratch.path(), e))?,
        progress: opts.progress.clone(),
        cli: opts.cli.clone(),
    };
    let wanted: Vec<Section> = Section::ALL
        .into_iter()
        .filter(|s| opts.sections.is_empty() || opts.sections.contains(s))
        .collect();

    let mut reports: Vec<SectionReport> = Vec::new();
    for section in &wanted {
        checkpoint()?;
        ctx.say(&format!("== {}", section.title()));
        let mut rep = SectionReport::new(*section);
        let result = match section {
            Section::Lifecycle => sections::lifecycle(&ctx, &mut rep),
            Section::ColdStart => coldstart::cold_start(&ctx, &mut rep),
            Section::Exec => sections::exec(&ctx, &mut rep),
            Section::Memory => sections::memory(&ctx, &mut rep),
            Section::Snapshot => super::snapshot::snapshot(&ctx, &mut rep),
            Section::Parallel => {
                let single = reports
                    .iter()
                    .find(|r| r.section == Section::ColdStart)
                    .and_then(|r| r.row(coldstart::TOTAL_ROW))
                    .and_then(|r| r.stats.as_ref().map(|s| s.median));
                parallel::parallel(&ctx, single, &mut rep)
            }
        };
        match result {
            Ok(()) => {}
            Err(BenchError::Interrupted) => return Err(BenchError::Interrupted),
            Err(e) => {
                ctx.say(&format!(
                    "section {} failed: {}",
                    section.as_str(),
                    chain(&e)
                ));
                rep.error = Some(chain(&e));
            }
        }
        reports.push(rep);
    }
    if reports.iter().any(|r| r.error.is_some()) && std::env::var_os("SMOLVM_BENCH_KEEP").is_some()
    {
        scratch.keep();
    }

    machine.loadavg_end = super::machine::loadavg();
    let t = &ctx.template;
    Ok(BenchReport {
        schema: REPORT_SCHEMA,
        machine,
        settings: Settings {
            iterations: ctx.iterations,
            backend: backend.as_str().to_string(),
            sections: wanted,
            mem_size_mib: t.mem_size_mib(),
            vcpu_count: t.vcpu_count(),
            data_dir: data_dir.display().to_string(),
            image: ImageFiles {
                kernel: t.kernel_path().display().to_string(),
                initrd: t.initrd_path().map(|p| p.display().to_string()),
                rootfs: t.rootfs_path().display().to_string(),
                boot_args: t.boot_args().to_string(),
            },
        },
        sections: reports,
    })
}

/// Where the image cache is.
fn image_dir(opts: &BenchOptions) -> Result<PathBuf, BenchError> {
    if let Some(d) = opts.image_dir.as_ref().or(opts.data_dir.as_ref()) {
        return Ok(d.clone());
    }
    // smolvm's default data dir: the image is built once and shared with normal use.
    smolvm::Dirs::resolve(None, None)
        .map(|d| d.data_dir)
        .map_err(|e| BenchError::step("resolve the default data directory", e))
}

/// An error with its causes, on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
