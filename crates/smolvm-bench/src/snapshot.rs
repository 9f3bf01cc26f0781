//! Snapshots against cold starts, in the same run on the same machine: create -> first command for a
//! cold boot, for a VM started from a snapshot, and for a fork of a running VM into 4; pause and resume
//! latency; snapshot time and size; memory (PSS) per forked VM.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::mem::ProcessMemory;
use super::report::{Row, SectionReport, TargetCheck, Unit};
use super::run::{checkpoint, Ctx};
use super::stats::ms;
use super::vm::{cold_start, VmGuard};
use super::BenchError;
use smolvm::AgentClient;
use smolvm::SmolVmManager;

/// Target: start-from-snapshot -> first command at most this fraction of a cold start.
pub(super) const FROM_SNAPSHOT_FRACTION: f64 = 0.1;
/// Target: a fork into [`FORKS`] VMs (all answering) under this fraction of one cold start.
pub(super) const FORK_FRACTION: f64 = 0.5;
/// Target: resume under this many ms.
pub(super) const RESUME_LIMIT_MS: f64 = 50.0;
/// VMs of the fork measurement.
pub(super) const FORKS: usize = 4;
/// Pause/resume pairs measured.
const PAUSE_PAIRS: usize = 20;
/// Name of the benchmark's snapshot.
const SNAPSHOT: &str = "bench-snap";

/// Deletes a snapshot when dropped (after the VMs made from it, which are declared later and so
/// dropped first).
struct SnapshotGuard {
    manager: Arc<SmolVmManager>,
    name: Option<String>,
}

impl Drop for SnapshotGuard {
    fn drop(&mut self) {
        if let Some(n) = self.name.take() {
            if let Err(e) = self.manager.delete_snapshot(&n) {
                tracing::warn!(snapshot = %n, error = %e, "benchmark cleanup: snapshot delete failed");
            }
        }
    }
}

/// The section.
pub(super) fn snapshot(ctx: &Ctx, rep: &mut SectionReport) -> Result<(), BenchError> {
    let m = &ctx.manager;
    let n = ctx.iterations.clamp(1, 5);
    let mut snap_guard = SnapshotGuard {
        manager: Arc::clone(m),
        name: None,
    };
    let mut fork_snap_guard = SnapshotGuard {
        manager: Arc::clone(m),
        name: None,
    };

    // Cold starts; the first VM stays up as the source of the snapshot and the forks.
    let mut cold = Vec::new();
    let mut source = None;
    for i in 0..n {
        checkpoint()?;
        let config = ctx.config(&format!("bench-sn-cold-{i}"), None)?;
        let (sample, guard) = cold_start(m, &config, ctx.boot_timeout)?;
        cold.push(ms(sample.total));
        if source.is_none() {
            source = Some(guard);
        }
    }
    let source = source.expect("n >= 1");
    let src = source.vm_id().to_string();
    let cold_median = median(&cold);
    ctx.say(&format!(
        "snapshot: {n} cold starts, median {cold_median:.0} ms"
    ));

    // Pause / resume.
    let (mut pause, mut resume) = (Vec::new(), Vec::new());
    for _ in 0..PAUSE_PAIRS {
        checkpoint()?;
        let t = Instant::now();
        m.pause(&src)
            .map_err(|e| BenchError::step("pause the source", e))?;
        pause.push(ms(t.elapsed()));
        let t = Instant::now();
        m.resume(&src)
            .map_err(|e| BenchError::step("resume the source", e))?;
        resume.push(ms(t.elapsed()));
    }

    // Snapshot.
    let t = Instant::now();
    let info = m
        .snapshot(&src, SNAPSHOT)
        .map_err(|e| BenchError::step("snapshot the source", e))?;
    let snap_ms = ms(t.elapsed());
    snap_guard.name = Some(SNAPSHOT.to_string());

    // From snapshot -> first command.
    let mut restored = Vec::new();
    for i in 0..n {
        checkpoint()?;
        let id = format!("bench-sn-from-{i}");
        let t = Instant::now();
        let r = m.restore_inner(SNAPSHOT, Some(&id), ctx.boot_timeout);
        let mut guard = VmGuard::new(Arc::clone(m), &id);
        let (_, client) = r.map_err(|e| BenchError::step("start from the snapshot", e))?;
        guard.client = client;
        first_command(guard.agent("first command after restore")?)?;
        restored.push(ms(t.elapsed()));
        guard.delete()?;
    }

    // Fork into FORKS -> every fork answered.
    checkpoint()?;
    let t = Instant::now();
    let forks = m.fork(&src, FORKS, ctx.boot_timeout);
    let forked_at = t.elapsed();
    let forks = forks.map_err(|e| BenchError::step("fork", e))?;
    let guards: Vec<VmGuard> = forks
        .iter()
        .map(|f| VmGuard::new(Arc::clone(m), &f.vm_id))
        .collect();
    fork_snap_guard.name = m
        .list_snapshots()
        .ok()
        .and_then(|all| {
            all.into_iter()
                .find(|s| s.name.starts_with(&format!("{src}-fork-")))
        })
        .map(|s| s.name);
    let backend = m
        .backend_impl(ctx.backend)
        .map_err(|e| BenchError::step("backend", e))?;
    for f in &forks {
        let ep = backend.agent_endpoint(m.socket_dir(), &f.vm_id);
        let c = AgentClient::connect(&ep, ctx.boot_timeout)
            .map_err(|e| BenchError::step("connect to a fork", e))?;
        first_command(&c)?;
    }
    let fork_ms = ms(t.elapsed());
    let pss: Vec<f64> = forks
        .iter()
        .filter_map(|f| f.pid)
        .filter_map(|pid| ProcessMemory::of(pid).ok())
        .map(|p| p.pss_kib as f64 / 1024.0)
        .collect();
    drop(guards);
    drop(source);

    let restored_median = median(&restored);
    rep.rows.push(Row::samples(
        "cold: create -> first command",
        Unit::Ms,
        cold,
    ));
    rep.rows.push(
        Row::samples("from snapshot -> first command", Unit::Ms, restored).with_target(
            TargetCheck::at_most(
                "from snapshot <= 0.1 x cold start",
                "median",
                cold_median * FROM_SNAPSHOT_FRACTION,
                restored_median,
            ),
        ),
    );
    rep.rows.push(
        Row::value(
            format!("fork into {FORKS} -> all answered"),
            Unit::Ms,
            fork_ms,
        )
        .with_target(TargetCheck::below(
            "fork into 4 < 0.5 x one cold start",
            "value",
            cold_median * FORK_FRACTION,
            fork_ms,
        ))
        .with_note(format!(
            "includes the snapshot of the source; the {FORKS} restores took {:.0} ms",
            ms(forked_at)
        )),
    );
    rep.rows.push(Row::samples("pause", Unit::Ms, pause));
    let resume_median = median(&resume);
    rep.rows.push(
        Row::samples("resume", Unit::Ms, resume).with_target(TargetCheck::below(
            "resume < 50 ms",
            "median",
            RESUME_LIMIT_MS,
            resume_median,
        )),
    );
    rep.rows
        .push(Row::value("snapshot create", Unit::Ms, snap_ms));
    rep.rows.push(
        Row::value(
            "snapshot size (allocated)",
            Unit::Mib,
            info.size_bytes as f64 / 1048576.0,
        )
        .with_note(format!(
            "{} MiB guest; memory file sparse (mapped-ram) + disk copy",
            info.mem_size_mib
        )),
    );
    if pss.is_empty() {
        rep.rows.push(Row::not_measured(
            "PSS per forked VMM",
            Unit::Mib,
            "no fork process could be read",
        ));
    } else {
        rep.rows
            .push(Row::samples("PSS per forked VMM", Unit::Mib, pss));
    }
    rep.notes.push(format!(
        "{n} cold starts and {n} starts from one snapshot, no networking; {PAUSE_PAIRS} pause/resume pairs \
         on a running VM; `fork` snapshots the running source, restores {FORKS} VMs and each runs `true`"
    ));
    Ok(())
}

fn first_command(c: &AgentClient) -> Result<(), BenchError> {
    let r = c
        .run("true", Some(Duration::from_secs(30)))
        .map_err(|e| BenchError::step("first command", e))?;
    if r.exit_code != 0 {
        return Err(BenchError::CommandFailed {
            step: "first command".into(),
            exit_code: r.exit_code,
            stderr: r.stderr,
        });
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    super::stats::Summary::of(v).map_or(f64::NAN, |s| s.median)
}
