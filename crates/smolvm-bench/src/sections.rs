//! Sections without a baseline: lifecycle cost without boot, warm exec latency, memory.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Instant;

use super::mem::{mem_available_kib, mib, vmm_memory_split, ProcessMemory};
use super::report::{Row, SectionReport, TargetCheck, Unit};
use super::run::{checkpoint, Ctx};
use super::stats::ms;
use super::vm::{cold_start, VmGuard};
use super::BenchError;
use smolvm::internals::disk;
use smolvm::ExecRequest;
use smolvm::{CreateOptions, NetworkMode};

/// Target: create + delete without boot under this many ms.
pub(super) const LIFECYCLE_LIMIT_MS: f64 = 50.0;
/// Target: warm agent exec p50 under this many ms.
pub(super) const EXEC_LIMIT_MS: f64 = 2.0;
/// Target: VMM resident memory under guest memory plus this many MiB.
pub(super) const VMM_OVERHEAD_MIB: f64 = 64.0;
/// Calls per warm-exec measurement (the 200).
pub(super) const EXEC_CALLS: usize = 200;
/// Untimed calls before each warm-exec measurement.
const EXEC_WARMUP: usize = 20;
/// VMs of the concurrent-memory measurement.
pub(super) const CONCURRENT_VMS: usize = 8;
/// Guest sizes of the per-VM memory measurement.
pub(super) const GUEST_SIZES_MIB: [u32; 2] = [128, 512];

/// Create and delete of VMs that are never started.
pub(super) fn lifecycle(ctx: &Ctx, rep: &mut SectionReport) -> Result<(), BenchError> {
    let n = ctx.iterations * 5;
    let warmup = 2;
    let (mut create, mut delete, mut both) = (Vec::new(), Vec::new(), Vec::new());
    let opts = CreateOptions {
        network: NetworkMode::None,
        ..CreateOptions::default()
    };
    for i in 0..n + warmup {
        checkpoint()?;
        let config = ctx.config(&format!("bench-lc-{i:03}"), None)?;
        let t0 = Instant::now();
        let created = ctx.manager.create_with(&config, &opts);
        let c = t0.elapsed();
        created.map_err(|e| BenchError::step(format!("lifecycle {i}: create"), e))?;
        let d = VmGuard::new(Arc::clone(&ctx.manager), config.vm_id()).delete()?;
        if i >= warmup {
            create.push(ms(c));
            delete.push(ms(d));
            both.push(ms(c + d));
        }
    }
    ctx.say(&format!("lifecycle: {n} create/delete pairs"));
    let clone = clone_alone(ctx)?;
    let both_row = Row::samples("create + delete", Unit::Ms, both);
    let median = both_row.stats.as_ref().map_or(f64::NAN, |s| s.median);
    rep.rows.push(Row::samples("create", Unit::Ms, create));
    rep.rows.push(Row::samples("delete", Unit::Ms, delete));
    rep.rows.push(both_row.with_target(TargetCheck::below(
        "create + delete without boot < 50 ms",
        "median",
        LIFECYCLE_LIMIT_MS,
        median,
    )));
    rep.rows.push(clone);
    rep.notes.push(format!(
        "{n} pairs after {warmup} discarded; create includes the state transaction and the isolated disk \
         clone; delete removes disk, files and row"
    ));
    Ok(())
}

/// The rootfs clone alone, to attribute create's cost.
fn clone_alone(ctx: &Ctx) -> Result<Row, BenchError> {
    let src = ctx.template.rootfs_path();
    let meta = std::fs::metadata(src).map_err(|e| BenchError::io("stat", src, e))?;
    let mut samples = Vec::new();
    let mut method = None;
    for i in 0..5 {
        let dst = ctx.scratch.join(format!("clone-{i}.ext4"));
        let t = Instant::now();
        let r = disk::clone_file(src, &dst);
        let el = t.elapsed();
        let _ = std::fs::remove_file(&dst);
        method = Some(r.map_err(|e| BenchError::step("clone the rootfs", e))?);
        samples.push(ms(el));
    }
    Ok(
        Row::samples("of which: rootfs clone alone", Unit::Ms, samples).with_note(format!(
            "{:?}; rootfs {:.0} MiB apparent, {:.0} MiB allocated",
            method.unwrap_or(disk::CloneMethod::SparseCopy),
            meta.len() as f64 / 1048576.0,
            (meta.blocks() * 512) as f64 / 1048576.0
        )),
    )
}

/// Warm exec latency through the agent (and, when possible, SSH).
pub(super) fn exec(ctx: &Ctx, rep: &mut SectionReport) -> Result<(), BenchError> {
    let config = ctx.config("bench-exec", None)?;
    let (_, guard) = cold_start(&ctx.manager, &config, ctx.boot_timeout)?;
    let client = guard.agent("warm exec")?;
    let argv = ExecRequest::argv(["true"]);
    let exec_argv = || -> Result<(), BenchError> {
        let r = client
            .exec(&argv)
            .map_err(|e| BenchError::step("warm exec (argv)", e))?;
        ok_or_failed("warm exec (argv)", r.exit_code, r.stderr)
    };
    let exec_shell = || -> Result<(), BenchError> {
        let r = client
            .run("true", None)
            .map_err(|e| BenchError::step("warm exec (sh -lc)", e))?;
        ok_or_failed("warm exec (sh -lc)", r.exit_code, r.stderr)
    };
    let ping = || -> Result<(), BenchError> {
        client.ping().map_err(|e| BenchError::step("agent ping", e))
    };
    let pings = timed(ping)?;
    let argvs = timed(exec_argv)?;
    let shells = timed(exec_shell)?;
    ctx.say("warm exec: done");
    rep.rows.push(
        Row::samples("agent ping round trip", Unit::Ms, pings)
            .with_note("one request/reply frame pair, no process: the channel's own latency"),
    );
    for (name, samples) in [
        ("agent exec `true` (argv, no shell)", argvs),
        ("agent run(\"true\") (sh -lc, as the facade's run)", shells),
    ] {
        let row = Row::samples(name, Unit::Ms, samples);
        let p50 = row.stats.as_ref().map_or(f64::NAN, |s| s.median);
        rep.rows.push(row.with_target(TargetCheck::below(
            "warm agent exec p50 < 2 ms",
            "p50",
            EXEC_LIMIT_MS,
            p50,
        )));
    }
    rep.rows.push(guest_spawn_row(client)?);
    drop(guard);
    checkpoint()?;
    let rows = super::concurrent::rows(ctx, ctx.cli.as_deref(), &mut rep.notes)?;
    rep.rows.extend(rows);
    checkpoint()?;
    rep.rows.push(super::ssh::ssh_exec_row(ctx)?);
    rep.notes.push(format!(
        "{EXEC_CALLS} sequential calls each after {EXEC_WARMUP} untimed ones, on one agent connection \
         of a booted VM; SSH: {EXEC_CALLS} calls after 5 untimed ones, each a new `ssh` process as smolvm's \
         run over SSH does, to a TAP-networked VM inside a private network namespace"
    ));
    Ok(())
}

/// How long the guest itself takes to fork, exec and reap busybox `true` (the binary the agent's `true`
/// resolves to), from a shell loop inside the guest: what the agent cannot go below.
fn guest_spawn_row(client: &smolvm::AgentClient) -> Result<Row, BenchError> {
    const LOOP: u32 = 20;
    let script = format!("i=0; while [ $i -lt {LOOP} ]; do /bin/busybox true; i=$((i+1)); done");
    let mut samples = Vec::new();
    for _ in 0..5 {
        checkpoint()?;
        let t = Instant::now();
        let r = client
            .exec(&ExecRequest::argv(["/bin/sh", "-c", script.as_str()]))
            .map_err(|e| BenchError::step("in-guest spawn loop", e))?;
        let el = t.elapsed();
        ok_or_failed("in-guest spawn loop", r.exit_code, r.stderr)?;
        samples.push(ms(el) / f64::from(LOOP));
    }
    Ok(Row::samples("in-guest fork+exec+wait of busybox `true`", Unit::Ms, samples).with_note(format!(
        "a shell loop of {LOOP} inside the guest, timed from the host, divided by {LOOP}: the guest's own \
         process cost under this accelerator"
    )))
}

fn ok_or_failed(step: &str, exit_code: i32, stderr: String) -> Result<(), BenchError> {
    if exit_code == 0 {
        Ok(())
    } else {
        Err(BenchError::CommandFailed {
            step: step.into(),
            exit_code,
            stderr,
        })
    }
}

/// [`EXEC_WARMUP`] untimed calls, then [`EXEC_CALLS`] timed ones.
fn timed(f: impl Fn() -> Result<(), BenchError>) -> Result<Vec<f64>, BenchError> {
    for _ in 0..EXEC_WARMUP {
        f()?;
    }
    let mut out = Vec::with_capacity(EXEC_CALLS);
    for _ in 0..EXEC_CALLS {
        checkpoint()?;
        let t = Instant::now();
        f()?;
        out.push(ms(t.elapsed()));
    }
    Ok(out)
}

/// VMM memory per VM for each guest size, and for 8 VMs at once.
pub(super) fn memory(ctx: &Ctx, rep: &mut SectionReport) -> Result<(), BenchError> {
    let rounds = ctx.iterations.min(3);
    for size in GUEST_SIZES_MIB {
        let (mut rss, mut pss, mut ram, mut other, mut anon) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut top = Vec::new();
        for r in 0..rounds {
            checkpoint()?;
            let config = ctx.config(&format!("bench-mem-{size}-{r}"), Some(size))?;
            let (_, guard) = cold_start(&ctx.manager, &config, ctx.boot_timeout)?;
            let m = vmm_memory(&guard)?;
            rss.push(mib(m.rss_kib));
            pss.push(mib(m.pss_kib));
            if let Some(split) = guard
                .pid
                .and_then(|p| vmm_memory_split(p, size.into()).ok())
            {
                ram.push(mib(split.guest_ram_rss_kib));
                other.push(mib(split.other_rss_kib));
                anon.push(mib(split.other_anon_rss_kib));
                top = split.top_other;
            }
        }
        ctx.say(&format!("memory: {size} MiB guest measured"));
        let row = Row::samples(format!("VMM RSS, {size} MiB guest"), Unit::Mib, rss);
        let median = row.stats.as_ref().map_or(f64::NAN, |s| s.median);
        rep.rows.push(row.with_target(TargetCheck::below(
            "VMM RSS < guest memory + 64 MiB",
            "median",
            f64::from(size) + VMM_OVERHEAD_MIB,
            median,
        )));
        rep.rows.push(Row::samples(
            format!("VMM PSS, {size} MiB guest"),
            Unit::Mib,
            pss,
        ));
        if !ram.is_empty() {
            rep.rows.push(Row::samples(
                format!("  of RSS: guest RAM block, {size} MiB guest"),
                Unit::Mib,
                ram,
            ));
            let mut row = Row::samples(
                format!("  of RSS: everything else, {size} MiB guest"),
                Unit::Mib,
                other,
            );
            if !top.is_empty() {
                let parts: Vec<String> = top
                    .iter()
                    .map(|(name, size_kib, rss_kib)| {
                        format!(
                            "{name} {:.0} MiB mapped/{:.1} MiB resident",
                            mib(*size_kib),
                            mib(*rss_kib)
                        )
                    })
                    .collect();
                row = row.with_note(format!("largest: {}", parts.join(", ")));
            }
            rep.rows.push(row);
            rep.rows.push(Row::samples(
                format!("    of which anonymous, {size} MiB guest"),
                Unit::Mib,
                anon,
            ).with_note("QEMU's heap, TCG's translation cache, thread stacks; the rest is its binary and libraries (shared between VMMs, see PSS)"));
        }
    }

    checkpoint()?;
    let size = ctx.template.mem_size_mib();
    let before = mem_available_kib().map_err(|e| BenchError::io("read", "/proc/meminfo", e))?;
    let mut guards = Vec::new();
    for k in 0..CONCURRENT_VMS {
        checkpoint()?;
        let config = ctx.config(&format!("bench-conc-{k}"), None)?;
        guards.push(cold_start(&ctx.manager, &config, ctx.boot_timeout)?.1);
        ctx.say(&format!(
            "memory: {} of {CONCURRENT_VMS} concurrent VMs running",
            k + 1
        ));
    }
    let mut rss = 0;
    let mut pss = 0;
    for g in &guards {
        let m = vmm_memory(g)?;
        rss += m.rss_kib;
        pss += m.pss_kib;
    }
    let after = mem_available_kib().map_err(|e| BenchError::io("read", "/proc/meminfo", e))?;
    drop(guards);
    let n = CONCURRENT_VMS;
    rep.rows.push(Row::value(
        format!("{n} VMs ({size} MiB guests): sum of VMM RSS"),
        Unit::Mib,
        mib(rss),
    ));
    rep.rows.push(Row::value(
        format!("{n} VMs ({size} MiB guests): sum of VMM PSS"),
        Unit::Mib,
        mib(pss),
    ));
    let drop_kib = before.saturating_sub(after);
    rep.rows.push(
        Row::value(format!("{n} VMs: host MemAvailable drop"), Unit::Mib, mib(drop_kib))
            .with_note("includes page cache of their disks and kernel memory; other work on the host adds noise"),
    );
    rep.rows.push(Row::value(
        format!("{n} VMs: MemAvailable drop per VM"),
        Unit::Mib,
        mib(drop_kib) / n as f64,
    ));
    rep.notes.push(format!(
        "per-size figures: {rounds} boots each, read right after boot + first command; the {n} VMs boot \
         one after another and are read together while all run"
    ));
    Ok(())
}

fn vmm_memory(guard: &VmGuard) -> Result<ProcessMemory, BenchError> {
    let pid = guard.pid.ok_or_else(|| {
        BenchError::io(
            "find the VMM of",
            guard.vm_id(),
            std::io::Error::other("no pid recorded"),
        )
    })?;
    // Read at once after boot + first command, as specified, so the figure is reproducible.
    ProcessMemory::of(pid).map_err(|e| BenchError::io("read memory of", format!("/proc/{pid}"), e))
}
