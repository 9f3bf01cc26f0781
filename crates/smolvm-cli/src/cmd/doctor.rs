//! `smolvm doctor`: what this host can do, and what is missing for each backend.
//!
//! Exit status 1 when no backend can run a VM (or, with `--backend`, when the chosen one cannot).

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use smolvm::internals::network::HostNetwork;
use smolvm::BackendKind;
use smolvm::{Accelerator, HostCapabilities, ToolInfo};

use crate::Cli;

/// Arguments of `smolvm doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// One backend's verdict.
#[derive(Debug, Serialize)]
struct BackendReport {
    ready: bool,
    problems: Vec<String>,
}

/// The whole report (`--json` prints exactly this).
#[derive(Debug, Serialize)]
struct Report {
    /// A VM can run (with the chosen backend, or with any when auto).
    ok: bool,
    /// The backend that would be used: the `--backend` choice, else what auto resolves to (null if
    /// nothing can run).
    backend: Option<BackendKind>,
    /// The `--backend` choice, null for auto.
    requested_backend: Option<BackendKind>,
    backends: Backends,
    /// Things that work but are not what smolvm is tested with (an older QEMU, ...).
    warnings: Vec<String>,
    host: HostCapabilities,
    network: NetworkReport,
}

/// What host networking can do here.
#[derive(Debug, Serialize)]
struct NetworkReport {
    /// TAP networking (TAP + NAT + loopback SSH forward) can be set up by this process.
    tap: bool,
    /// Why not, with the fix.
    tap_problem: Option<String>,
    /// Forward chains of other firewalls (Docker) with a DROP policy; smolvm adds accept rules for its
    /// guests to them. `None` when they could not be listed (see `forward_drop_error`).
    forward_drop_chains: Option<Vec<String>>,
    /// Why the forward policies could not be checked.
    forward_drop_error: Option<String>,
}

impl NetworkReport {
    fn detect() -> NetworkReport {
        let net = HostNetwork::system();
        let tap_problem = net.capabilities().check_tap().err().map(|e| e.to_string());
        let (forward_drop_chains, forward_drop_error) = match &tap_problem {
            Some(_) => (
                None,
                Some("needs TAP networking privileges to list the ruleset".into()),
            ),
            None => match net.detect_forward_drop() {
                Ok(chains) => (Some(chains.iter().map(ToString::to_string).collect()), None),
                Err(e) => (None, Some(e.to_string())),
            },
        };
        NetworkReport {
            tap: tap_problem.is_none(),
            tap_problem,
            forward_drop_chains,
            forward_drop_error,
        }
    }
}

#[derive(Debug, Serialize)]
struct Backends {
    qemu: BackendReport,
    firecracker: BackendReport,
}

/// Runs `smolvm doctor`.
pub fn run(cli: &Cli, args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let requested = match cli.backend.as_deref() {
        Some(s) => BackendKind::parse_choice(s)?,
        None => None,
    };
    let host = HostCapabilities::detect_with_versions();
    let report_for = |b| {
        let problems = host.check_prerequisites(b);
        BackendReport {
            ready: problems.is_empty(),
            problems,
        }
    };
    let backends = Backends {
        qemu: report_for(BackendKind::Qemu),
        firecracker: report_for(BackendKind::Firecracker),
    };
    let backend = match requested {
        Some(b) => Some(b),
        None => host.auto_backend(),
    };
    let ok = match requested {
        Some(BackendKind::Qemu) => backends.qemu.ready,
        Some(BackendKind::Firecracker) => backends.firecracker.ready,
        None => backend.is_some(),
    };
    let report = Report {
        ok,
        backend,
        requested_backend: requested,
        backends,
        warnings: host.warnings(),
        host,
        network: NetworkReport::detect(),
    };
    if args.json {
        crate::output::print_json(&report)?;
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Builds the text report: sections of aligned `key  value` lines.
#[derive(Default)]
struct Text(String);

impl Text {
    fn section(&mut self, title: &str) {
        if !self.0.is_empty() {
            self.0.push('\n');
        }
        self.0.push_str(title);
        self.0.push('\n');
    }
    fn line(&mut self, key: &str, value: impl AsRef<str>) {
        self.0
            .push_str(&format!("  {key:<20} {}\n", value.as_ref()));
    }
}

/// The human-readable report.
fn render(r: &Report) -> String {
    let h = &r.host;
    let mut t = Text::default();

    t.section("Backends");
    for (name, b) in [
        ("qemu", &r.backends.qemu),
        ("firecracker", &r.backends.firecracker),
    ] {
        match (b.ready, name) {
            (true, "qemu") => t.line(name, format!("ready (accelerator: {})", h.accelerator)),
            (true, _) => t.line(name, "ready"),
            (false, _) => t.line(name, "NOT READY"),
        }
        for p in &b.problems {
            t.line("", format!("- {p}"));
        }
    }
    t.line(
        "backend",
        match (r.requested_backend, r.backend) {
            (Some(b), _) if r.ok => format!("{b} (requested)"),
            (Some(b), _) => format!("{b} (requested, cannot run here)"),
            (None, Some(b)) => format!("{b} (auto)"),
            (None, None) => "none: no backend can run a VM on this host".to_string(),
        },
    );

    if !r.warnings.is_empty() {
        t.section("Warnings");
        for w in &r.warnings {
            t.line("", format!("- {w}"));
        }
    }

    t.section("KVM");
    let k = &h.kvm;
    t.line(
        "/dev/kvm",
        match (k.present, k.api_version, &k.open_error) {
            (true, Some(v), _) => format!("present (API version {v})"),
            (_, _, Some(e)) if k.device_exists => format!("cannot be used: {e}"),
            _ => "absent".to_string(),
        },
    );
    let mut facts = vec![format!(
        "cpu flag: {}",
        k.cpu_virt_flag.as_deref().unwrap_or("none (no vmx/svm)")
    )];
    if let Some(m) = &k.paravirtual_module {
        facts.push(format!("paravirtual module: {m}"));
    }
    t.line("details", facts.join(", "));
    t.line(
        "usable",
        match (&k.reason, k.forced) {
            (None, Some(true)) => "yes (forced by SMOLVM_KVM=on)".to_string(),
            (None, _) => "yes".to_string(),
            (Some(reason), _) => format!("no: {reason}"),
        },
    );

    t.section("VMMs");
    let tools = &h.tools;
    t.line("qemu-system-x86_64", tool(&tools.qemu_system));
    t.line("firecracker", tool(&tools.firecracker));

    t.section("Tools");
    for (name, info) in [
        ("nft", &tools.nft),
        ("ip", &tools.ip),
        ("ssh", &tools.ssh),
        ("ssh-keygen", &tools.ssh_keygen),
        ("mkfs.ext4", &tools.mkfs_ext4),
        ("debugfs", &tools.debugfs),
        ("apt-get", &tools.apt_get),
    ] {
        t.line(name, tool(info));
    }

    t.section("Host");
    t.line(
        "QEMU accelerator",
        match h.accelerator {
            Accelerator::Kvm => "kvm (hardware virtualization)",
            Accelerator::Tcg => "tcg (software emulation)",
        },
    );
    t.line(
        "TSC",
        h.tsc_khz
            .map_or("unknown".to_string(), |k| format!("{k} kHz")),
    );
    let p = &h.privileges;
    t.line(
        "privileges",
        match (p.root, p.cap_net_admin) {
            (true, _) => "root",
            (false, true) => "CAP_NET_ADMIN",
            (false, false) => "unprivileged (no TAP networking)",
        },
    );

    t.section("Network");
    let n = &r.network;
    t.line(
        "TAP networking",
        match &n.tap_problem {
            None => "ready (TAP + NAT, SSH forward on 127.0.0.1)".to_string(),
            Some(why) => format!("not possible: {why}"),
        },
    );
    if n.tap_problem.is_some() {
        t.line(
            "fallback",
            "QEMU VMs use user-mode networking; Firecracker VMs need TAP",
        );
    }
    match (&n.forward_drop_chains, &n.forward_drop_error) {
        (Some(c), _) if c.is_empty() => {
            t.line("forward policy", "no DROP policy in other firewalls")
        }
        (Some(c), _) => {
            t.line(
                "forward policy",
                "DROP (Docker or similar): smolvm adds accept rules for its guests",
            );
            for chain in c {
                t.line("", format!("- {chain}"));
            }
        }
        (None, Some(e)) => t.line("forward policy", format!("not checked: {e}")),
        (None, None) => t.line("forward policy", "not checked"),
    }
    t.0
}

fn tool(t: &Option<ToolInfo>) -> String {
    match t {
        Some(t) => format!(
            "{:<10} {}",
            t.version.as_deref().unwrap_or("-"),
            t.path.display()
        ),
        None => "not found".to_string(),
    }
}
