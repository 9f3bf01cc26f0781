//! The initramfs: the agent as `/init` (its stage 1 loads modules, mounts the root disk and switches to
//! it), the selected kernel modules with their load list, and the few directories and the console node
//! stage 1 needs.
//!
//! Uncompressed on purpose: the kernel copies it into memory in a few milliseconds, while decompressing
//! costs real time when the guest CPU is emulated, and the archive is only a few MiB.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use super::cpio::CpioWriter;
use super::error::ImageError;

/// Module directory inside the initramfs (the agent's `stage1::MODULE_DIR`).
pub(super) const MODULE_DIR: &str = "lib/modules/smolvm";

/// A module to put into the initramfs.
#[derive(Debug, Clone, Copy)]
pub(super) struct ModuleRef<'a> {
    /// File name in [`MODULE_DIR`].
    pub file_name: &'a str,
    /// Module bytes.
    pub data: &'a [u8],
}

/// Writes the initramfs to `dest`.
pub(super) fn write(
    dest: &Path,
    agent: &[u8],
    modules: &[ModuleRef<'_>],
    load_list: &str,
) -> Result<(), ImageError> {
    let f = File::create(dest).map_err(|e| ImageError::io("create", dest, e))?;
    let mut w = CpioWriter::new(BufWriter::new(f));
    let res = (|| -> std::io::Result<()> {
        for d in [
            "dev",
            "proc",
            "sys",
            "newroot",
            "lib",
            "lib/modules",
            MODULE_DIR,
        ] {
            w.dir(d, 0o755)?;
        }
        // The kernel opens /dev/console of the initramfs as init's stdin/stdout/stderr.
        w.char_dev("dev/console", 0o600, 5, 1)?;
        for m in modules {
            w.file(&format!("{MODULE_DIR}/{}", m.file_name), 0o644, m.data)?;
        }
        w.file(
            &format!("{MODULE_DIR}/load.list"),
            0o644,
            load_list.as_bytes(),
        )?;
        w.file("init", 0o755, agent)?;
        Ok(())
    })();
    res.and_then(|_| w.finish().map(drop))
        .map_err(|e| ImageError::io("write initramfs", dest, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_cpio_the_system_tool_lists() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("initrd.img");
        let m = [ModuleRef {
            file_name: "virtio.ko",
            data: b"\x7fELF fake",
        }];
        write(&dest, b"agent", &m, "virtio.ko always\n").unwrap();
        let data = std::fs::read(&dest).unwrap();
        assert!(data.starts_with(b"070701"));
        let Some(cpio) = crate::test_tools::tool_or_skip("initramfs listing", "cpio") else {
            return;
        };
        let out = std::process::Command::new(cpio)
            .args(["-t", "--quiet", "-F"])
            .arg(&dest)
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&out.stdout);
        for want in [
            "init",
            "dev/console",
            "lib/modules/smolvm/virtio.ko",
            "lib/modules/smolvm/load.list",
        ] {
            assert!(list.lines().any(|l| l == want), "{want} missing:\n{list}");
        }
    }
}
