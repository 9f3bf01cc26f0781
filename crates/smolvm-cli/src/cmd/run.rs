//! `smolvm run [create options] [--keep] -- CMD...`: create a VM, start it, run one command with its
//! output streamed live, then stop and delete the VM (unless `--keep`). The exit status is the guest
//! command's.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use smolvm::ExecRequest;
use smolvm::SmolVm;

use super::common::{backend_choice, manager};
use super::vm::CreateArgs;
use crate::Cli;

/// Arguments of `smolvm run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Keep the VM running afterwards (prints its id); by default it is deleted.
    #[arg(long)]
    pub keep: bool,
    /// Run the command through `/bin/sh -lc` (one string) instead of as an argv.
    #[arg(long)]
    pub shell: bool,
    /// Boot timeout in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub boot_timeout: f64,
    /// Command timeout in seconds (none by default).
    #[arg(long)]
    pub timeout: Option<f64>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Runs `smolvm run`.
pub fn run(cli: &Cli, a: &RunArgs) -> anyhow::Result<ExitCode> {
    let m = manager(cli)?;
    let config = a.create.config(&m, cli)?;
    drop(m);
    let chatty = std::io::stderr().is_terminal();
    let t0 = Instant::now();
    let mut builder = SmolVm::builder()
        .config(config)
        .backend(backend_choice(cli)?)
        .network(a.create.options().network)
        .templates(a.create.uses_templates());
    if let Some(d) = &cli.data_dir {
        builder = builder.data_dir(d);
    }
    if let Some(d) = &cli.socket_dir {
        builder = builder.socket_dir(d);
    }
    // From here on the VM is owned: an error deletes it on drop, and Ctrl-C (or SIGTERM/SIGHUP) deletes it
    // from the signal watcher.
    let mut vm = builder.build()?;
    cleanup_on_signal(cli, vm.vm_id());
    if chatty {
        eprintln!("smolvm: booting {} ...", vm.vm_id());
    }
    vm.start_with_timeout(Duration::try_from_secs_f64(a.boot_timeout)?)?;
    if chatty {
        eprintln!(
            "smolvm: {} ready in {:.2}s",
            vm.vm_id(),
            t0.elapsed().as_secs_f64()
        );
    }
    let mut req = if a.shell {
        ExecRequest::shell(a.command.join(" "))
    } else {
        ExecRequest::argv(a.command.clone())
    }
    .timeout(a.timeout.map(Duration::try_from_secs_f64).transpose()?);
    req.cwd = super::exec::image_working_dir(&vm);
    // The same streaming, broken-pipe handling and exit statuses as `smolvm exec`.
    let outcome = vm.with_agent(|c| Ok(super::exec::exec_streaming_to_stdio(c, &req)));
    let outcome = match outcome {
        Ok(inner) => inner,
        Err(e) => Err(e.into()),
    };
    if a.keep {
        eprintln!(
            "smolvm: kept {} (delete it with `smolvm delete {}`)",
            vm.vm_id(),
            vm.vm_id()
        );
        vm.close();
    } else {
        vm.delete()?;
    }
    Ok(super::exec::exit_status(outcome))
}

/// Blocks SIGINT/SIGTERM/SIGHUP and starts a thread that, when one arrives, deletes the VM and exits 130:
/// the VMM runs detached, so without this an interrupted `run` would leave it behind.
fn cleanup_on_signal(cli: &Cli, vm_id: &str) {
    let signals = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
    // SAFETY: plain signal-set manipulation on a local set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let (data, sock, backend) = (
        cli.data_dir.clone(),
        cli.socket_dir.clone(),
        cli.backend.clone(),
    );
    let id = vm_id.to_string();
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: waits on the set blocked above.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            eprintln!("smolvm: interrupted, deleting {id}");
            let backend =
                backend.and_then(|b| smolvm::BackendKind::parse_choice(&b).ok().flatten());
            if let Ok(m) = smolvm::SmolVmManager::new(data.as_deref(), sock.as_deref(), backend) {
                let _ = m.delete(&id);
            }
            std::process::exit(130);
        });
}
