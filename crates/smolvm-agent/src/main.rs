//! smolvm guest agent: PID 1 of the default guest image.
//!
//! One static binary, three roles, chosen at start:
//! * **stage 1** (`/init` of the initramfs, root is ramfs): load the kernel modules the machine needs,
//!   mount the root disk, switch to it and exec the command line's `init=` ([`stage1`]), or, when
//!   that init is this same binary, simply continue as stage 2;
//! * **stage 2** (PID 1 on the root disk): mounts, host name, network from `smolvm.*` parameters,
//!   authorised key, SSH server, zombie reaping, clean power off ([`init`]);
//! * **agent process** (forked by stage 2): the host channel, Ready frame, request server ([`channel`]).
//!
//! Called as `wget` (the default image links `/usr/bin/wget` to it) it is a front end for busybox's
//! wget ([`wget`]). Run as anything else but PID 1 it only prints its version.
//!
//! Build (static, from a fresh clone): `scripts/build-agent.sh`.

mod button;
mod channel;
mod cmdline;
mod elfid;
mod gate;
mod identity;
mod init;
mod modules;
mod net;
mod power;
mod rwdirs;
mod serial;
mod server;
mod setup;
mod stage1;
mod stages;
mod sys;
mod wget;

/// Prints one line to the console (stderr of PID 1 is /dev/console).
pub fn log(msg: &str) {
    eprintln!("smolvm-agent: {msg}");
}

fn main() {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name() == Some(std::ffi::OsStr::new("wget")) {
        wget::main();
    }
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        println!(
            "smolvm-agent {} (protocol v{}): the init of smolvm guest images; run it as PID 1",
            env!("CARGO_PKG_VERSION"),
            smolvm_protocol::PROTOCOL_VERSION
        );
        return;
    }
    let mut stages = stages::Stages::from_env();
    if !stages.0.is_empty() {
        // Exec'd by stage 1 (the disk's init differs from the initramfs's).
        stages.mark("rootfs_init");
    }
    if stage1::on_initramfs() {
        stages.mark("init_start");
        if let Err(err) = stage1::run(&mut stages) {
            log(&format!("initramfs stage failed: {err}"));
            // Ending the VM beats hanging: the host sees it stop and the console says why.
            power::power_off_now(power::detect_mode(None));
        }
    }
    init::run(stages)
}
