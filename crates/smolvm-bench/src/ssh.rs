//! Warm exec over SSH, the way smolvm runs commands over SSH (`ssh::run_ssh`: one `ssh` process per
//! command, pinned host key, TAP networking). Measured in a private network namespace the benchmark
//! creates (a thread of its own, see [`super::netns`]), so the TAP device, the NAT rules and every packet
//! stay inside it and vanish with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::netns::in_private_netns;
use super::report::{Row, Unit};
use super::run::{chain, checkpoint, Ctx};
use super::sections::EXEC_CALLS;
use super::stats::ms;
use super::vm::VmGuard;
use super::BenchError;
use smolvm::DEFAULT_SSH_USER;
use smolvm::{CreateOptions, NetworkMode};

/// Name of the SSH row.
pub(super) const SSH_ROW: &str = "SSH exec `true` (one ssh process per call)";
/// Untimed SSH calls first.
const SSH_WARMUP: usize = 5;
/// How long the guest's SSH server may take to let us in after the agent is ready.
const SSH_WAIT: Duration = Duration::from_secs(60);
/// Limit of one SSH call.
const SSH_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The SSH row: samples, or "not measured" with the reason.
pub(super) fn ssh_exec_row(ctx: &Ctx) -> Result<Row, BenchError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(Row::not_measured(
            SSH_ROW,
            Unit::Ms,
            "needs root: TAP networking inside a private network namespace",
        ));
    }
    match in_private_netns(|| measure(ctx)) {
        Ok(Ok(samples)) => Ok(Row::samples(SSH_ROW, Unit::Ms, samples)),
        Ok(Err(BenchError::Interrupted)) => Err(BenchError::Interrupted),
        Ok(Err(e)) => Ok(Row::not_measured(
            SSH_ROW,
            Unit::Ms,
            format!("failed: {}", chain(&e)),
        )),
        Err(e) => Ok(Row::not_measured(
            SSH_ROW,
            Unit::Ms,
            format!("cannot create a private network namespace: {e}"),
        )),
    }
}

/// Runs on the namespace's thread: boots a TAP-networked VM, then times SSH calls.
fn measure(ctx: &Ctx) -> Result<Vec<f64>, BenchError> {
    let config = ctx.config("bench-ssh", None)?;
    let step = |s: &str| format!("SSH exec: {s}");
    let opts = CreateOptions {
        network: NetworkMode::Tap,
        ..CreateOptions::default()
    };
    ctx.manager
        .create_with(&config, &opts)
        .map_err(|e| BenchError::step(step("create with TAP networking"), e))?;
    // Deleted by the guard on this thread, so the TAP and rules go while the namespace still exists.
    let _guard = VmGuard::new(Arc::clone(&ctx.manager), config.vm_id());
    ctx.manager
        .start(config.vm_id(), ctx.boot_timeout)
        .map_err(|e| BenchError::step(step("start"), e))?;
    ctx.manager
        .wait_for_ssh(config.vm_id(), SSH_WAIT)
        .map_err(|e| BenchError::step(step("wait for the SSH server"), e))?;
    let target = ctx
        .manager
        .ssh_target(config.vm_id(), DEFAULT_SSH_USER)
        .map_err(|e| BenchError::step(step("SSH target"), e))?;
    let argv = ["true".to_string()];
    let call = || -> Result<(), BenchError> {
        let out = smolvm::internals::ssh::run_ssh(&target, &argv, Some(SSH_CALL_TIMEOUT))
            .map_err(|e| BenchError::step(step("ssh true"), e))?;
        if out.exit_code != 0 {
            return Err(BenchError::CommandFailed {
                step: step("ssh true"),
                exit_code: out.exit_code,
                stderr: out.stderr,
            });
        }
        Ok(())
    };
    for _ in 0..SSH_WARMUP {
        call()?;
    }
    let mut samples = Vec::with_capacity(EXEC_CALLS);
    for _ in 0..EXEC_CALLS {
        checkpoint()?;
        let t = Instant::now();
        call()?;
        samples.push(ms(t.elapsed()));
    }
    ctx.say("warm exec over SSH: done");
    Ok(samples)
}
