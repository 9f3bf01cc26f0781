//! `smolvm cp SRC DST`: copies one regular file between this host and a running VM, through its agent.
//!
//! Exactly one side names the guest, as `ID:/absolute/guest/path`. An argument is a guest path when it
//! has a `:` and the text before the first `:` is non-empty and holds no `/`; so a local file whose name
//! contains `:` is written with a `/` before it (`./notes:v2`).
//!
//! As with cp(1), a destination that is an existing directory (or ends in `/`) receives the file under
//! the source's file name. Uploads take `--mode` (octal), else the local file's permission bits;
//! downloads keep the guest file's bits. Either way the destination appears whole or not at all (the
//! agent and the library write a temporary file and rename it).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use smolvm::{AgentClient, ExecRequest};

use super::exec::Attached;
use crate::Cli;

/// Arguments of `smolvm cp`.
#[derive(Debug, Args)]
pub struct CpArgs {
    /// Source: a local file, or ID:/guest/path.
    pub src: OsString,
    /// Destination: ID:/guest/path, or a local path (exactly one side is in the VM).
    pub dst: OsString,
    /// Permission bits of an uploaded file, in octal (e.g. 600); default: the local file's.
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<u32>,
}

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    /// A path on this host.
    Local(PathBuf),
    /// A path in a VM.
    Guest {
        /// The VM id.
        id: String,
        /// The guest path (absolute).
        path: String,
    },
}

/// What to do, once both sides are known.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Copy {
    Upload {
        local: PathBuf,
        id: String,
        remote: String,
    },
    Download {
        id: String,
        remote: String,
        local: PathBuf,
    },
}

/// Parses an octal mode (`600`, `0644`, `0o755`), at most `7777`.
fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m),
        _ => Err(format!(
            "{s:?}: expected octal permission bits such as 644 (at most 7777)"
        )),
    }
}

/// Splits `ID:PATH` off an argument; anything else is a local path.
fn parse_endpoint(arg: &OsStr) -> anyhow::Result<Endpoint> {
    let bytes = arg.as_bytes();
    let Some(colon) = bytes.iter().position(|&b| b == b':') else {
        return Ok(Endpoint::Local(PathBuf::from(arg)));
    };
    let (id, rest) = (&bytes[..colon], &bytes[colon + 1..]);
    if id.is_empty() || id.contains(&b'/') {
        return Ok(Endpoint::Local(PathBuf::from(arg)));
    }
    let shown = arg.to_string_lossy();
    let id =
        std::str::from_utf8(id).with_context(|| format!("{shown:?}: the VM id is not UTF-8"))?;
    let path = std::str::from_utf8(rest)
        .with_context(|| format!("{shown:?}: guest paths must be UTF-8"))?;
    if !path.starts_with('/') {
        bail!(
            "{shown:?}: the guest path must be absolute, as in {id}:/root/{}",
            path.trim_start_matches("./")
        );
    }
    Ok(Endpoint::Guest {
        id: id.to_string(),
        path: path.to_string(),
    })
}

/// Decides the direction; exactly one side must be in a VM.
fn plan(src: &OsStr, dst: &OsStr) -> anyhow::Result<Copy> {
    match (parse_endpoint(src)?, parse_endpoint(dst)?) {
        (Endpoint::Local(local), Endpoint::Guest { id, path }) => Ok(Copy::Upload {
            local,
            id,
            remote: path,
        }),
        (Endpoint::Guest { id, path }, Endpoint::Local(local)) => Ok(Copy::Download {
            id,
            remote: path,
            local,
        }),
        (Endpoint::Guest { .. }, Endpoint::Guest { .. }) => bail!(
            "both SRC and DST are in a VM (ID:PATH); cp copies between this host and one VM, so \
             copy through a local file"
        ),
        (Endpoint::Local(_), Endpoint::Local(_)) => bail!(
            "neither SRC nor DST is in a VM: write the guest side as ID:/path/in/guest (a local \
             path containing ':' needs a '/' before it, as in ./a:b)"
        ),
    }
}

/// The last component of a guest path (`None` for `/` or a path ending in `/`).
fn guest_file_name(path: &str) -> Option<&str> {
    path.rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
}

/// True if `path` is a directory in the guest. The path travels as an argument (`$1`), never as shell
/// text; `test` is the shell's builtin, so no `test` program is needed in the image.
fn guest_is_dir(c: &AgentClient, path: &str) -> smolvm::Result<bool> {
    let req = ExecRequest::argv(["/bin/sh", "-c", "test -d \"$1\"", "sh", path]);
    Ok(c.exec(&req)?.ok())
}

/// Runs `smolvm cp`.
pub fn cp(cli: &Cli, a: &CpArgs) -> anyhow::Result<ExitCode> {
    match plan(&a.src, &a.dst)? {
        Copy::Upload { local, id, remote } => upload(cli, &local, &id, &remote, a.mode),
        Copy::Download { id, remote, local } => {
            if a.mode.is_some() {
                bail!("--mode applies to uploads only (a download keeps the guest file's mode)");
            }
            download(cli, &id, &remote, &local)
        }
    }?;
    Ok(ExitCode::SUCCESS)
}

fn upload(
    cli: &Cli,
    local: &Path,
    id: &str,
    remote: &str,
    mode: Option<u32>,
) -> anyhow::Result<()> {
    // Local checks first: they need no VM and give the plainest messages.
    let meta =
        std::fs::metadata(local).with_context(|| format!("cannot read {}", local.display()))?;
    if meta.is_dir() {
        bail!("{} is a directory; cp copies single files", local.display());
    }
    let name = local
        .file_name()
        .and_then(OsStr::to_str)
        .with_context(|| format!("{}: the file name must be UTF-8", local.display()))?;
    let vm = Attached::open(cli, id)?;
    vm.vm()
        .with_agent(|c| {
            let target = if remote.ends_with('/') || guest_is_dir(c, remote)? {
                format!("{}/{name}", remote.trim_end_matches('/'))
            } else {
                remote.to_string()
            };
            Ok(c.upload_file(local, &target, mode)?)
        })
        .with_context(|| format!("copy {} to {id}:{remote}", local.display()))?;
    Ok(())
}

fn download(cli: &Cli, id: &str, remote: &str, local: &Path) -> anyhow::Result<()> {
    let into_dir = local.is_dir() || local.as_os_str().as_bytes().ends_with(b"/");
    let target = if into_dir {
        let Some(name) = guest_file_name(remote) else {
            bail!("{id}:{remote} names a directory; cp copies single files");
        };
        local.join(name)
    } else {
        local.to_path_buf()
    };
    // The library writes a temporary file beside the target: its directory must exist.
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        bail!("local directory {} does not exist", parent.display());
    }
    let vm = Attached::open(cli, id)?;
    vm.vm()
        .with_agent(|c| Ok(c.download_file(remote, &target)?))
        .with_context(|| format!("copy {id}:{remote} to {}", target.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint(os("vm-1:/tmp/a:b")).unwrap(),
            Endpoint::Guest {
                id: "vm-1".into(),
                path: "/tmp/a:b".into()
            }
        );
        for local in ["./a:b", "/x/y:z", "plain", ":/x", "dir/vm:/x"] {
            assert_eq!(
                parse_endpoint(os(local)).unwrap(),
                Endpoint::Local(local.into()),
                "{local}"
            );
        }
        let e = parse_endpoint(os("vm:tmp/x")).unwrap_err().to_string();
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn direction_and_its_errors() {
        assert_eq!(
            plan(os("f.txt"), os("vm:/tmp/")).unwrap(),
            Copy::Upload {
                local: "f.txt".into(),
                id: "vm".into(),
                remote: "/tmp/".into()
            }
        );
        assert!(matches!(
            plan(os("vm:/etc/hostname"), os(".")).unwrap(),
            Copy::Download { .. }
        ));
        let both = plan(os("a:/x"), os("b:/y")).unwrap_err().to_string();
        assert!(both.contains("both SRC and DST"), "{both}");
        let neither = plan(os("a"), os("b")).unwrap_err().to_string();
        assert!(neither.contains("neither SRC nor DST"), "{neither}");
    }

    #[test]
    fn modes_and_names() {
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0o4755"), Ok(0o4755));
        assert_eq!(parse_mode("0644"), Ok(0o644));
        for bad in ["", "0o", "8", "17777", "rw-r--r--"] {
            assert!(parse_mode(bad).is_err(), "{bad}");
        }
        assert_eq!(guest_file_name("/a/b.txt"), Some("b.txt"));
        assert_eq!(guest_file_name("/a/"), None);
        assert_eq!(guest_file_name("/"), None);
        assert_eq!(guest_file_name("/a/.."), None);
    }
}
