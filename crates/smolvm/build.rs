//! Builds the guest agent (and the host's channel owner, `smolvm-channel`) as static x86_64 binaries and
//! embeds them in the library, so that every way of
//! building smolvm (`cargo build`, `cargo install --path crates/smolvm-cli`, `pip install .`) yields a
//! library that can make the default image with no separate step and no environment variable.
//!
//! The agent is built by a nested `cargo build` of the workspace's `smolvm-agent` package into its own
//! target directory (a second cargo in the outer target directory would wait on the outer one's lock
//! forever). `--target x86_64-unknown-linux-gnu` matters: with it, `+crt-static` applies to the agent
//! only, not to proc-macros and build scripts (which cannot be linked statically).
//!
//! The channel owner is a host program that the library starts next to each QEMU VM; embedding it
//! (rather than looking it up in `PATH`) serves callers without a `smolvm` install, such as Python.
//! Static linking costs nothing here: it is built in the same nested cargo run, with the same flags.
//!
//! `SMOLVM_EMBED_AGENT=0` skips both (the library then needs `SMOLVM_AGENT_BIN` or a builder path).

use std::env;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

const TRIPLE: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-env-changed=SMOLVM_EMBED_AGENT");
    println!("cargo:rustc-check-cfg=cfg(smolvm_embedded_agent)");
    println!("cargo:rustc-check-cfg=cfg(smolvm_embedded_channel)");

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest_dir.join("../..");
    let agent_manifest = root.join("crates/smolvm-agent/Cargo.toml");
    let wanted = env::var("SMOLVM_EMBED_AGENT").map_or(true, |v| v != "0");
    let host_ok = env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64")
        && env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    if !wanted || !host_ok || !agent_manifest.is_file() {
        println!(
            "cargo:warning=smolvm: guest agent not embedded (SMOLVM_EMBED_AGENT=0, a non-x86_64-linux \
             target, or no smolvm-agent source next to this crate); set SMOLVM_AGENT_BIN at run time"
        );
        return;
    }
    for dir in [
        "crates/smolvm-agent",
        "crates/smolvm-protocol",
        "crates/smolvm-channel",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );

    let target_dir = agent_target_dir(&out_dir, &root);
    let release = build_agent(&root, &target_dir);
    for (name, cfg) in [
        ("smolvm-agent", "smolvm_embedded_agent"),
        ("smolvm-channel", "smolvm_embedded_channel"),
    ] {
        let bin = release.join(name);
        let dst = out_dir.join(name);
        std::fs::copy(&bin, &dst)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", bin.display(), dst.display()));
        println!("cargo:rustc-cfg={cfg}");
    }
}

/// A target directory shared by every profile of the outer build (so the agent is built once, not once
/// per debug/release/test/clippy), next to the outer target directory.
fn agent_target_dir(out_dir: &Path, root: &Path) -> PathBuf {
    // OUT_DIR is <target>/[<triple>/]<profile>/build/<pkg>-<hash>/out.
    let outer = out_dir
        .ancestors()
        .find(|p| p.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.join("target"));
    outer.join("smolvm-agent-static")
}

fn build_agent(root: &Path, target_dir: &Path) -> PathBuf {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--offline")
        .args([
            "-p",
            "smolvm-agent",
            "-p",
            "smolvm-channel",
            "--target",
            TRIPLE,
        ])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    // The outer build's settings are not the agent's: its flags, wrappers (clippy) and target dir.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static");
    // A build script's stdout is read by cargo as instructions: the nested cargo's goes to stderr.
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .expect("duplicate stderr");
    let status = cmd
        .stdout(stderr)
        .status()
        .unwrap_or_else(|e| panic!("run cargo to build the guest agent: {e}"));
    if !status.success() {
        panic!("building the static guest agent and channel owner failed: {status}");
    }
    target_dir.join(TRIPLE).join("release")
}
