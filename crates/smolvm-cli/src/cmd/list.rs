//! `smolvm list` and `smolvm info`.

use std::process::ExitCode;

use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use smolvm::VmState;

use super::common::manager;
use crate::output::print_json;
use crate::Cli;

/// Arguments of `smolvm list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only VMs in this state (created, running, paused, stopped, error).
    #[arg(long)]
    pub status: Option<String>,
    /// Print JSON (a list of VmInfo) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `smolvm info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The VM id.
    pub id: String,
    /// Print JSON (the spec's VmInfo field names).
    #[arg(long)]
    pub json: bool,
}

/// Runs `smolvm list`.
pub fn list(cli: &Cli, args: &ListArgs) -> anyhow::Result<ExitCode> {
    let status = args
        .status
        .as_deref()
        .map(str::parse::<VmState>)
        .transpose()?;
    let vms = manager(cli)?.list_vms(status)?;
    if args.json {
        print_json(&vms)?;
        return Ok(ExitCode::SUCCESS);
    }
    if vms.is_empty() {
        println!("no VMs");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "VM ID", "STATUS", "BACKEND", "VCPU", "MEM MiB", "IP", "SSH PORT", "PID",
    ]);
    for vm in &vms {
        let net = vm.network.as_ref();
        table.add_row([
            vm.vm_id.clone(),
            vm.status.to_string(),
            vm.config
                .backend()
                .map_or("auto".to_string(), |b| b.to_string()),
            vm.config.vcpu_count().to_string(),
            vm.config.mem_size_mib().to_string(),
            net.map_or("-".into(), |n| n.guest_ip.to_string()),
            net.and_then(|n| n.ssh_host_port)
                .map_or("-".into(), |p| p.to_string()),
            vm.pid.map_or("-".into(), |p| p.to_string()),
        ]);
    }
    println!("{table}");
    Ok(ExitCode::SUCCESS)
}

/// Runs `smolvm info`.
pub fn info(cli: &Cli, args: &InfoArgs) -> anyhow::Result<ExitCode> {
    let m = manager(cli)?;
    let info = m.get(&args.id)?;
    if args.json {
        print_json(&info)?;
        return Ok(ExitCode::SUCCESS);
    }
    let c = &info.config;
    println!("vm_id:        {}", info.vm_id);
    println!("status:       {}", info.status);
    if info.status == smolvm::VmState::Error {
        if let Some(why) = m.last_error(&info.vm_id)? {
            println!("error:        {why}");
        }
    }
    println!(
        "backend:      {}",
        c.backend().map_or("auto".into(), |b| b.to_string())
    );
    println!("vcpu_count:   {}", c.vcpu_count());
    println!("mem_size_mib: {}", c.mem_size_mib());
    println!("kernel_path:  {}", c.kernel_path().display());
    if let Some(i) = c.initrd_path() {
        println!("initrd_path:  {}", i.display());
    }
    println!("rootfs_path:  {}", c.rootfs_path().display());
    println!("boot_args:    {}", c.boot_args());
    println!("disk_mode:    {}", c.disk_mode().as_str());
    println!("retain_disk:  {}", c.retain_disk_on_delete());
    for (k, v) in c.env_vars() {
        println!("env:          {k}={v:?}");
    }
    match &info.network {
        Some(n) => {
            println!(
                "network:      {} gw {} mask {} tap {} mac {}",
                n.guest_ip,
                n.gateway_ip,
                n.netmask,
                n.tap_device.as_deref().unwrap_or("none"),
                n.guest_mac
            );
            if let Some(p) = n.ssh_host_port {
                println!("ssh:          127.0.0.1:{p}");
            }
        }
        None => println!("network:      none"),
    }
    if let Some(p) = info.pid {
        println!("pid:          {p}");
    }
    if let Some(s) = &info.socket_path {
        println!("socket_path:  {}", s.display());
    }
    Ok(ExitCode::SUCCESS)
}
