//! `smolvm image build` and `smolvm image list`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use smolvm::{
    DebianOptions, GuestImage, ImageBuilder, ImageOptions, ImageProgress as Progress,
    ImportOptions, ImportSource, Preset,
};

use crate::Cli;

/// Image commands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the default guest image (Debian cloud kernel, busybox, dropbear, smolvm agent), or with
    /// `--distro debian` a Debian userland from the distribution's packages; reuses the cached image
    /// when nothing changed.
    Build(Box<BuildArgs>),
    /// List images: name, source (default, debian, oci, archive), size on disk, creation time.
    List(ListArgs),
    /// Remove an image (refused while a VM boots from it).
    Rm(RmArgs),
    /// Import a `docker save` archive, an OCI image layout (directory or tar) or a rootfs tarball.
    Import(ImportArgs),
    /// Pull an image from a registry (linux/amd64; anonymous or token auth) and import it.
    Pull(PullArgs),
}

/// Arguments of `smolvm image import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The archive, OCI layout directory or rootfs tarball.
    pub path: PathBuf,
    /// Image name.
    #[arg(long)]
    pub name: String,
    /// Print the image as JSON (and no progress).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `smolvm image pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference (docker.io/library/debian:bookworm, localhost:5000/app:1).
    pub reference: String,
    /// Image name [default: the reference's last path component, `:` and `@` replaced by `-`].
    #[arg(long)]
    pub name: Option<String>,
    /// Plain HTTP or unverified TLS (local registries).
    #[arg(long)]
    pub insecure: bool,
    /// Registry credentials USER:PASSWORD [env: SMOLVM_REGISTRY_CREDS].
    #[arg(long, env = "SMOLVM_REGISTRY_CREDS", hide_env_values = true)]
    pub creds: Option<String>,
    /// Print the image as JSON (and no progress).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `smolvm image rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// The image names.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// One row of `smolvm image list --json`.
#[derive(Debug, serde::Serialize)]
struct ListedImage<'a> {
    name: &'a str,
    source: &'a smolvm::ImageSource,
    size_on_disk_bytes: u64,
    rootfs_size_mib: u64,
    created: u64,
    fingerprint: &'a str,
}

/// Arguments of `smolvm image build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Image name [default: `default`; `minimal` with --kernel minimal; `debian-<suite>[-<preset>]` with
    /// --distro debian].
    #[arg(long)]
    pub name: Option<String>,
    /// Userland: a Debian system installed from the distribution's packages (mmdebstrap).
    #[arg(long, value_enum)]
    pub distro: Option<Distro>,
    /// Debian suite [default: bookworm].
    #[arg(long, requires = "distro")]
    pub suite: Option<String>,
    /// Extra Debian packages, comma-separated (python3,git,curl).
    #[arg(long, value_delimiter = ',', requires = "distro")]
    pub packages: Vec<String>,
    /// A package preset: `python` = python3, python3-pip, python3-venv, git, curl, ca-certificates.
    #[arg(long, requires = "distro")]
    pub preset: Option<String>,
    /// Debian mirror URL [default: the host's apt mirror].
    #[arg(long, requires = "distro")]
    pub mirror: Option<String>,
    /// Root password for SSH logins (default image only).
    #[arg(long, conflicts_with_all = ["ssh_key", "distro"])]
    pub ssh_password: Option<String>,
    /// Public key file installed as root's authorized_keys (default image only; VMs get smolvm's key
    /// at boot either way).
    #[arg(long, value_name = "PUBFILE", conflicts_with = "distro")]
    pub ssh_key: Option<PathBuf>,
    /// Root filesystem size in MiB (sparse) [default: 512; Debian: the installed size plus room].
    #[arg(long, value_name = "MIB")]
    pub rootfs_size: Option<u64>,
    /// Rebuild even if the cached image is up to date.
    #[arg(long)]
    pub force: bool,
    /// The kernel: `debian` (Debian's linux-image-cloud-amd64, the default), `minimal` (smolvm's
    /// minimal kernel compiled here from Debian's linux-source: minutes once, then cached; boots without
    /// an initramfs, about twice as fast), or the path of a bzImage [env: SMOLVM_KERNEL].
    #[arg(long, value_name = "debian|minimal|BZIMAGE")]
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

/// A distribution to build the userland from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Distro {
    /// Debian, from the distribution's packages.
    Debian,
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
    let dirs = smolvm::Dirs::resolve(cli.data_dir.as_deref(), cli.socket_dir.as_deref())?;
    let mut builder = ImageBuilder::new(&dirs.data_dir);
    match cmd {
        ImageCommand::Build(a) => {
            let minimal = a.kernel.as_deref() == Some(std::path::Path::new("minimal"));
            match a.kernel.as_deref().and_then(|k| k.to_str()) {
                Some("minimal") if a.kernel_modules.is_some() => {
                    anyhow::bail!("--kernel-modules: the minimal kernel has no modules")
                }
                Some("minimal") => builder = builder.with_minimal_kernel(),
                Some("debian") => {
                    builder = builder.with_kernel_package(smolvm::DEFAULT_KERNEL_PACKAGE)
                }
                _ => {
                    if let Some(k) = &a.kernel {
                        builder = builder.with_kernel(k, a.kernel_modules.clone());
                    }
                }
            }
            let default_name = if minimal {
                "minimal"
            } else {
                smolvm::DEFAULT_IMAGE_NAME
            };
            if let Some(agent) = &a.agent {
                builder = builder.with_agent(agent);
            }
            let progress = if a.json {
                Progress::Quiet
            } else {
                Progress::Auto
            };
            let start = Instant::now();
            if a.distro == Some(Distro::Debian) {
                let opts = DebianOptions {
                    name: a.name.clone(),
                    suite: a
                        .suite
                        .clone()
                        .unwrap_or_else(|| smolvm::DEFAULT_IMAGE_SUITE.to_string()),
                    packages: a.packages.clone(),
                    preset: a
                        .preset
                        .as_deref()
                        .map(str::parse::<Preset>)
                        .transpose()
                        .map_err(smolvm::Error::from)?,
                    mirror: a.mirror.clone(),
                    rootfs_size_mib: a.rootfs_size,
                    force: a.force,
                    progress,
                };
                let img = builder.build_debian(&opts).map_err(smolvm::Error::from)?;
                if a.json {
                    crate::output::print_json(&img)?;
                } else {
                    print_built(&img, start.elapsed().as_secs_f64());
                }
                return Ok(ExitCode::SUCCESS);
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
                name: a.name.clone().unwrap_or_else(|| default_name.to_string()),
                ssh_password: a.ssh_password.clone(),
                ssh_public_key,
                rootfs_size_mib: a.rootfs_size.unwrap_or(smolvm::DEFAULT_IMAGE_SIZE_MIB),
                force: a.force,
                progress,
            };
            let img = builder.build(&opts).map_err(smolvm::Error::from)?;
            if a.json {
                crate::output::print_json(&img)?;
            } else {
                print_built(&img, start.elapsed().as_secs_f64());
            }
            if a.template {
                // Without --name: the template of the image VMs get by default (auto-config may pick
                // the minimal kernel's image once that kernel is compiled), so they start from it.
                let img = match &a.name {
                    Some(_) => img,
                    None => builder.image_for_vm(None).map_err(smolvm::Error::from)?,
                };
                let m = super::common::manager(cli)?;
                let backend = m.resolve(super::common::backend_choice(cli))?;
                let config = img.vm_config(backend).backend(Some(backend)).build()?;
                let t = Instant::now();
                let made = m.build_template(
                    &config,
                    smolvm::NetworkMode::Auto,
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
                let rows: Vec<ListedImage<'_>> = images
                    .iter()
                    .map(|i| ListedImage {
                        name: &i.name,
                        source: &i.source,
                        size_on_disk_bytes: ImageBuilder::disk_usage(i),
                        rootfs_size_mib: i.rootfs_size_mib,
                        created: i.built_at,
                        fingerprint: &i.fingerprint,
                    })
                    .collect();
                crate::output::print_json(&rows)?;
            } else {
                print_table(&images);
            }
        }
        ImageCommand::Import(a) => {
            let start = Instant::now();
            let img = builder
                .import(&ImportOptions {
                    name: a.name.clone(),
                    source: ImportSource::Path(a.path.clone()),
                    insecure_registry: false,
                    registry_credentials: None,
                    progress: progress_for(a.json),
                })
                .map_err(smolvm::Error::from)?;
            show(&img, a.json, start)?;
        }
        ImageCommand::Pull(a) => {
            let start = Instant::now();
            let name = a
                .name
                .clone()
                .unwrap_or_else(|| name_from_reference(&a.reference));
            let img = builder
                .import(&ImportOptions {
                    name,
                    source: ImportSource::Registry(a.reference.clone()),
                    insecure_registry: a.insecure,
                    registry_credentials: a.creds.clone(),
                    progress: progress_for(a.json),
                })
                .map_err(smolvm::Error::from)?;
            show(&img, a.json, start)?;
        }
        ImageCommand::Rm(a) => {
            let m = smolvm::SmolVmManager::new(Some(&dirs.data_dir), Some(&dirs.socket_dir), None)?;
            for name in &a.names {
                m.remove_image(name)?;
                println!("removed image {name:?}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn progress_for(json: bool) -> Progress {
    if json {
        Progress::Quiet
    } else {
        Progress::Auto
    }
}

fn show(img: &GuestImage, json: bool, start: Instant) -> anyhow::Result<()> {
    if json {
        crate::output::print_json(img)?;
    } else {
        print_built(img, start.elapsed().as_secs_f64());
    }
    Ok(())
}

/// `localhost:5000/team/app:1.2` -> `app-1.2`; `alpine@sha256:ab..` -> `alpine-sha256-ab..`.
fn name_from_reference(r: &str) -> String {
    let last = r.rsplit('/').next().unwrap_or(r);
    let n: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    n.trim_start_matches(['.', '-', '_']).to_string()
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
    if img.needs_initrd {
        println!("  initrd     {}", img.initrd.display());
    } else {
        println!("  initrd     none (every driver is built into the kernel)");
    }
    println!(
        "  rootfs     {}  ({} MiB, sparse)",
        img.rootfs.display(),
        img.rootfs_size_mib
    );
    println!("  boot args  {}", img.boot_args);
    println!("  source     {}", img.source);
    println!("  ssh        {}", img.ssh_server);
    if let Some(rc) = &img.runtime {
        println!("  env        {}", rc.env.join(" "));
        if let Some(w) = &rc.working_dir {
            println!("  workdir    {w}");
        }
    }
}

fn print_table(images: &[GuestImage]) {
    if images.is_empty() {
        println!("no images (build one with `smolvm image build`)");
        return;
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header([
        "NAME",
        "SOURCE",
        "ON DISK",
        "ROOTFS MiB",
        "CREATED",
        "FINGERPRINT",
    ]);
    for i in images {
        t.add_row([
            i.name.clone(),
            i.source.to_string(),
            format!("{:.1} MiB", ImageBuilder::disk_usage(i) as f64 / 1048576.0),
            i.rootfs_size_mib.to_string(),
            utc_time(i.built_at),
            i.fingerprint.chars().take(12).collect(),
        ]);
    }
    println!("{t}");
}

/// `YYYY-MM-DD HH:MM` (UTC) of a Unix time (civil-from-days, H. Hinnant's algorithm).
fn utc_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3_600,
        rem % 3_600 / 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_from_references() {
        assert_eq!(
            super::name_from_reference("localhost:5000/team/app:1.2"),
            "app-1.2"
        );
        assert_eq!(super::name_from_reference("alpine"), "alpine");
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(super::utc_time(0), "1970-01-01 00:00");
        assert_eq!(super::utc_time(951_782_400), "2000-02-29 00:00");
        assert_eq!(super::utc_time(1_796_386_658), "2026-12-04 12:17");
    }
}
