//! The parallel section: rounds of simultaneous cold starts from threads sharing one manager, against
//! one cold start and the CPU floor.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use super::coldstart::{PARALLEL_FACTOR, PARALLEL_VMS};
use super::report::{Row, SectionReport, TargetCheck, Unit};
use super::run::{checkpoint, Ctx};
use super::stats::{ms, Summary};
use super::vm::cold_start as one_cold_start;
use super::BenchError;

/// The parallel section: rounds of 4 simultaneous cold starts.
pub(super) fn parallel(
    ctx: &Ctx,
    single: Option<f64>,
    rep: &mut SectionReport,
) -> Result<(), BenchError> {
    let single = match single {
        Some(s) => s,
        None => {
            let mut v = Vec::new();
            for i in 0..3 {
                checkpoint()?;
                let config = ctx.config(&format!("bench-single-{i}"), None)?;
                let (s, _guard) = one_cold_start(&ctx.manager, &config, ctx.boot_timeout)?;
                v.push(ms(s.total));
            }
            rep.notes.push(
                "single cold start reference measured here (cold-start section not run)".into(),
            );
            Summary::of(&v).map_or(f64::NAN, |s| s.median)
        }
    };
    let rounds = ctx.iterations.min(3);
    let mut walls = Vec::new();
    let mut per_vm = Vec::new();
    let mut floors = Vec::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for r in 0..rounds {
        checkpoint()?;
        let configs = (0..PARALLEL_VMS)
            .map(|k| ctx.config(&format!("bench-par-{r}-{k}"), None))
            .collect::<Result<Vec<_>, _>>()?;
        let barrier = Barrier::new(PARALLEL_VMS);
        let outcomes = std::thread::scope(|s| {
            let handles: Vec<_> = configs
                .iter()
                .map(|c| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        let t0 = Instant::now();
                        let r = one_cold_start(&ctx.manager, c, ctx.boot_timeout);
                        (t0, Instant::now(), r)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| BenchError::Panicked("parallel cold start".into()))
                })
                .collect::<Vec<_>>()
        });
        let mut guards = Vec::new();
        let mut first: Option<Instant> = None;
        let mut last: Option<Instant> = None;
        let mut error = None;
        let mut cpu_sum = Some(Duration::ZERO);
        for o in outcomes {
            match o {
                Ok((t0, t1, Ok((sample, guard)))) => {
                    first = Some(first.map_or(t0, |f| f.min(t0)));
                    last = Some(last.map_or(t1, |l| l.max(t1)));
                    per_vm.push(ms(sample.total));
                    cpu_sum = cpu_sum.zip(sample.vmm_cpu_at_ready).map(|(a, b)| a + b);
                    guards.push(guard);
                }
                Ok((_, _, Err(e))) | Err(e) => error = error.or(Some(e)),
            }
        }
        drop(guards);
        if let Some(e) = error {
            return Err(e);
        }
        if let (Some(f), Some(l)) = (first, last) {
            let wall = ms(l - f);
            ctx.say(&format!(
                "parallel round {r}: {wall:.0} ms wall for {PARALLEL_VMS} VMs"
            ));
            walls.push(wall);
            if let Some(cpu) = cpu_sum {
                floors.push(ms(cpu) / cores);
            }
        }
    }
    let wall = Summary::of(&walls).map_or(f64::NAN, |s| s.median);
    rep.rows.push(Row::samples(
        format!("{PARALLEL_VMS} parallel cold starts: wall time"),
        Unit::Ms,
        walls,
    ));
    rep.rows.push(Row::samples(
        "per-VM cold start inside a parallel round",
        Unit::Ms,
        per_vm,
    ));
    rep.rows.push(Row::value(
        "single cold start (median, reference)",
        Unit::Ms,
        single,
    ));
    if !floors.is_empty() {
        rep.rows.push(
            Row::samples(
                "CPU floor: VMM CPU time until Ready / cores",
                Unit::Ms,
                floors,
            )
            .with_note(format!(
                "the {PARALLEL_VMS} VMMs' CPU time until their agents were ready, divided by the \
                     {cores} cores: no schedule can finish the boots faster"
            )),
        );
    }
    rep.rows.push(
        Row::value("parallel wall / one cold start", Unit::Ratio, wall / single).with_target(
            TargetCheck::below(
                "4 parallel cold starts < 2 x one",
                "median wall / single median",
                PARALLEL_FACTOR,
                wall / single,
            ),
        ),
    );
    rep.rows.push(Row::value(
        format!("parallel wall / ({PARALLEL_VMS} x one cold start)"),
        Unit::Ratio,
        wall / (PARALLEL_VMS as f64 * single),
    ));
    rep.notes.push(format!(
        "{rounds} rounds; {PARALLEL_VMS} threads released together by a barrier, each doing create -> \
         start -> first command through one shared manager; wall = first start to last output"
    ));
    Ok(())
}
