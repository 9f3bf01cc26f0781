//! Several host processes using one VM at once: 8 `smolvm exec ID -- sh -c 'sleep 1'` started
//! together, wall time until all have finished; with the VM's channel owner (how smolvm runs QEMU
//! VMs) and, in the same run, without one (each process waits for QEMU's single connection, as before
//! owners existed). Needs the `smolvm` CLI to start the processes ([`super::BenchOptions::cli`]).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use super::report::{Row, Unit};
use super::run::{checkpoint, Ctx};
use super::stats::ms;
use super::vm::VmGuard;
use super::BenchError;
use smolvm::{BackendKind, CreateOptions, NetworkMode};

/// Processes started together.
pub(crate) const PROCESSES: usize = 8;
/// Name of the row with the channel owner.
pub(crate) const CONCURRENT_ROW: &str = "8 concurrent processes x 1 s commands, wall time";
/// Name of the row without it.
pub(crate) const SERIAL_ROW: &str =
    "8 concurrent processes x 1 s commands, wall time, without the channel owner";

/// The rows, or none (with a note) when there is no CLI to start processes with.
pub(crate) fn rows(
    ctx: &Ctx,
    cli: Option<&Path>,
    notes: &mut Vec<String>,
) -> Result<Vec<Row>, BenchError> {
    let Some(cli) = cli else {
        notes.push(format!(
            "\"{CONCURRENT_ROW}\" needs the smolvm CLI (run `smolvm bench`): skipped"
        ));
        return Ok(Vec::new());
    };
    let rounds = ctx.iterations.min(3);
    let mut out = Vec::new();
    let owned = measure(ctx, cli, "bench-conc", true, rounds)?;
    out.push(Row::samples(CONCURRENT_ROW, Unit::Ms, owned).with_note(
        "each process opens its own agent connection; under QEMU they all go through the VM's \
         channel owner, which multiplexes them on QEMU's one virtio-serial connection",
    ));
    if ctx.backend == BackendKind::Qemu {
        let serial = measure(ctx, cli, "bench-serial", false, rounds)?;
        out.push(Row::samples(SERIAL_ROW, Unit::Ms, serial).with_note(
            "the same VM image started with SMOLVM_CHANNEL_OWNER=0: the processes take QEMU's \
             single agent connection one after another (the behaviour before channel owners)",
        ));
    }
    Ok(out)
}

/// Boots a VM (with or without an owner) and times `rounds` rounds of [`PROCESSES`] processes.
fn measure(
    ctx: &Ctx,
    cli: &Path,
    vm_id: &str,
    owner: bool,
    rounds: usize,
) -> Result<Vec<f64>, BenchError> {
    let m = &ctx.manager;
    let config = ctx.config(vm_id, None)?;
    let opts = CreateOptions {
        network: NetworkMode::None,
        ..CreateOptions::default()
    };
    m.create_with(&config, &opts)
        .map_err(|e| BenchError::step(format!("create {vm_id}"), e))?;
    let _guard = VmGuard::new(Arc::clone(m), vm_id);
    let mut start = smolvm_cli(cli, m.data_dir(), m.socket_dir());
    start.args(["start", vm_id]);
    if !owner {
        start.env(smolvm::internals::channel::OWNER_ENV, "0");
    }
    run_ok(&mut start, &format!("start {vm_id}"))?;
    ctx.say(&format!(
        "{PROCESSES} concurrent processes ({}) ...",
        if owner { "channel owner" } else { "no owner" }
    ));
    let mut samples = Vec::new();
    for _ in 0..rounds {
        checkpoint()?;
        let t = Instant::now();
        let children = (0..PROCESSES)
            .map(|_| {
                smolvm_cli(cli, m.data_dir(), m.socket_dir())
                    .args(["exec", vm_id, "--", "sh", "-c", "sleep 1"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| BenchError::io("start", cli, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut failed = None;
        for c in children {
            let out = c
                .wait_with_output()
                .map_err(|e| BenchError::io("wait for", cli, e))?;
            if !out.status.success() {
                failed = Some((out.status.code().unwrap_or(-1), out.stderr));
            }
        }
        if let Some((exit_code, stderr)) = failed {
            return Err(BenchError::CommandFailed {
                step: format!("concurrent `smolvm exec` on {vm_id}"),
                exit_code,
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            });
        }
        samples.push(ms(t.elapsed()));
    }
    Ok(samples)
}

fn smolvm_cli(cli: &Path, data_dir: &Path, socket_dir: &Path) -> Command {
    let mut c = Command::new(cli);
    c.arg("--data-dir")
        .arg(data_dir)
        .arg("--socket-dir")
        .arg(socket_dir);
    c
}

fn run_ok(cmd: &mut Command, step: &str) -> Result<(), BenchError> {
    let out = cmd
        .stdout(Stdio::null())
        .output()
        .map_err(|e| BenchError::io("run", cmd.get_program(), e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(BenchError::CommandFailed {
        step: step.to_string(),
        exit_code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
