//! `smolvm image build` and `smolvm image list`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use smolvm::image::{GuestImage, ImageBuilder, ImageOptions, Progress};

use crate::Cli;

/// Image commands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the default guest image (Debian cloud kernel, busybox, dropbear, smolvm agent), or reuse
    /// the cached one when nothing changed.
    Build(BuildArgs),
    /// List built images.
    List(ListArgs),
}

/// Arguments of `smolvm image build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Image name.
    #[arg(long, default_value = smolvm::image::DEFAULT_IMAGE_NAME)]
    pub name: String,
    /// Root password for SSH logins.
    #[arg(long, conflicts_with = "ssh_key")]
    pub ssh_password: Option<String>,
    /// Public key file installed as root's authorized_keys.
    #[arg(long, value_name = "PUBFILE")]
    pub ssh_key: Option<PathBuf>,
    /// Root filesystem size in MiB (sparse).
    #[arg(long, value_name = "MIB", default_value_t = smolvm::image::DEFAULT_SIZE_MIB)]
    pub rootfs_size: u64,
    /// Rebuild even if the cached image is up to date.
    #[arg(long)]
    pub force: bool,
    /// Use this bzImage instead of Debian's linux-image-cloud-amd64 [env: SMOLVM_KERNEL].
    #[arg(long, value_name = "BZIMAGE")]
    pub kernel: Option<PathBuf>,
    /// Modules directory (lib/modules/<release>) of --kernel [env: SMOLVM_KERNEL_MODULES].
    #[arg(long, value_name = "DIR", requires = "kernel")]
    pub kernel_modules: Option<PathBuf>,
    /// Guest agent binary (static) [env: SMOLVM_AGENT_BIN].
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
    /// Print the image as JSON (and no progress).
    #[arg(long)]
    pub json: bool,
    /// Also make the template snapshot of the image's default VM (boots it once, snapshots it), so
    /// later default VMs start from it instead of booting.
    #[arg(long)]
    pub template: bool,
}

/// Arguments of `smolvm image list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs an image command.
pub fn run(cli: &Cli, cmd: &ImageCommand) -> anyhow::Result<ExitCode> {
    let dirs = smolvm::dirs::Dirs::resolve(cli.data_dir.as_deref(), cli.socket_dir.as_deref())?;
    let mut builder = ImageBuilder::new(&dirs.data_dir);
    match cmd {
        ImageCommand::Build(a) => {
            if let Some(k) = &a.kernel {
                builder = builder.with_kernel(k, a.kernel_modules.clone());
            }
            if let Some(agent) = &a.agent {
                builder = builder.with_agent(agent);
            }
            let ssh_public_key = a
                .ssh_key
                .as_ref()
                .map(|p| {
                    std::fs::read_to_string(p)
                        .with_context(|| format!("read public key {}", p.display()))
                })
                .transpose()?;
            let opts = ImageOptions {
                name: a.name.clone(),
                ssh_password: a.ssh_password.clone(),
                ssh_public_key,
                rootfs_size_mib: a.rootfs_size,
                force: a.force,
                progress: if a.json {
                    Progress::Quiet
                } else {
                    Progress::Auto
                },
            };
            let start = Instant::now();
            let img = builder.build(&opts).map_err(smolvm::Error::from)?;
            if a.json {
                crate::output::print_json(&img)?;
            } else {
                print_built(&img, start.elapsed().as_secs_f64());
            }
            if a.template {
                let m = super::common::manager(cli)?;
                let backend = m.resolve(super::common::backend_choice(cli)?)?;
                let config = img.vm_config(backend).backend(Some(backend)).build()?;
                let t = Instant::now();
                let made = m.build_template(
                    &config,
                    smolvm::manager::NetworkChoice::Auto,
                    std::time::Duration::from_secs(120),
                )?;
                match made {
                    Some(name) if !a.json => {
                        eprintln!("template {name} ready ({:.1}s)", t.elapsed().as_secs_f64())
                    }
                    Some(_) => {}
                    None => anyhow::bail!(
                        "image {} cannot have a template (no smolvm agent)",
                        img.name
                    ),
                }
            }
        }
        ImageCommand::List(a) => {
            let images = builder.list().map_err(smolvm::Error::from)?;
            if a.json {
                crate::output::print_json(&images)?;
            } else {
                print_table(&images);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_built(img: &GuestImage, secs: f64) {
    let how = if img.cached { "up to date" } else { "built" };
    println!("image {:?} {how} in {secs:.2}s", img.name);
    println!(
        "  kernel     {}  ({})",
        img.kernel.display(),
        img.kernel_package
    );
    println!("  vmlinux    {}", img.kernel_elf.display());
    println!("  initrd     {}", img.initrd.display());
    println!(
        "  rootfs     {}  ({} MiB, sparse)",
        img.rootfs.display(),
        img.rootfs_size_mib
    );
    println!("  boot args  {}", img.boot_args);
}

fn print_table(images: &[GuestImage]) {
    if images.is_empty() {
        println!("no images (build one with `smolvm image build`)");
        return;
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["NAME", "KERNEL", "ROOTFS MiB", "SSH", "FINGERPRINT"]);
    for i in images {
        let ssh = match (i.ssh_password, i.ssh_public_key) {
            (true, true) => "password+key",
            (true, false) => "password",
            (false, true) => "key",
            (false, false) => "key at boot",
        };
        t.add_row([
            i.name.clone(),
            i.kernel_package.clone(),
            i.rootfs_size_mib.to_string(),
            ssh.to_string(),
            i.fingerprint.chars().take(12).collect(),
        ]);
    }
    println!("{t}");
}
