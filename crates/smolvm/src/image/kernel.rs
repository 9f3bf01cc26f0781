//! x86 bzImage handling: read the boot protocol header, find the compressed payload, decompress it and
//! cut out the ELF `vmlinux` Firecracker boots (QEMU boots the bzImage itself).
//!
//! The payload is `vmlinux` (stripped) plus relocation data, compressed with the method the kernel was
//! configured with; every method except gzip has the uncompressed size appended as 4 bytes (LE).
//! Debian's cloud kernel uses LZ4 (legacy frame), decompressed here; gzip uses `flate2`; the rarer
//! methods use the system tool (`xz`, `zstd`, `bzip2`, `lzop`).

use std::io::Read;
use std::path::Path;

use super::elf::{Elf, EM_X86_64};
use super::error::ImageError;
use super::lz4;
use crate::host::tools;

/// Largest vmlinux we accept (a decompression bomb guard; real ones are 30-80 MiB).
const MAX_VMLINUX: usize = 1 << 30;

/// Compression of a bzImage payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    /// gzip.
    Gzip,
    /// LZ4, legacy frame.
    Lz4,
    /// xz.
    Xz,
    /// zstd.
    Zstd,
    /// bzip2.
    Bzip2,
    /// lzma (alone).
    Lzma,
    /// lzo (lzop).
    Lzo,
    /// Not compressed (`CONFIG_KERNEL_UNCOMPRESSED`).
    None,
}

impl Compression {
    fn detect(p: &[u8]) -> Option<Compression> {
        let starts = |m: &[u8]| p.starts_with(m);
        Some(if starts(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if starts(&lz4::LEGACY_MAGIC.to_le_bytes()) {
            Compression::Lz4
        } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if starts(b"BZh") {
            Compression::Bzip2
        } else if starts(&[0x5d, 0, 0]) {
            Compression::Lzma
        } else if starts(&[0x89, b'L', b'Z', b'O']) {
            Compression::Lzo
        } else if starts(b"\x7fELF") {
            Compression::None
        } else {
            return None;
        })
    }
}

/// What the boot protocol header says about a bzImage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BzImage {
    /// Offset of the compressed payload in the file.
    pub payload_offset: usize,
    /// Its length.
    pub payload_len: usize,
    /// The kernel release (`6.1.0-56-cloud-amd64`), if the header names it.
    pub release: Option<String>,
}

/// Parses the setup header (boot protocol >= 2.08, which added the payload fields).
pub(super) fn parse_bzimage(data: &[u8]) -> Result<BzImage, String> {
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if data.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        return Err("not an x86 bzImage (no HdrS boot header)".into());
    }
    let version = u16_at(0x206).ok_or("truncated boot header")?;
    if version < 0x0208 {
        return Err(format!(
            "boot protocol {}.{:02} is too old (need 2.08+)",
            version >> 8,
            version & 0xff
        ));
    }
    let setup_sects = match data[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let pm_start = (setup_sects + 1) * 512;
    let off = u32_at(0x248).ok_or("truncated boot header")? as usize;
    let len = u32_at(0x24c).ok_or("truncated boot header")? as usize;
    let payload_offset = pm_start
        .checked_add(off)
        .filter(|&o| o.checked_add(len).is_some_and(|e| e <= data.len()))
        .ok_or("payload lies outside the file")?;
    let release = u16_at(0x20e).filter(|&p| p != 0).and_then(|p| {
        let s = data.get(usize::from(p) + 0x200..)?;
        let s = &s[..s.iter().position(|&b| b == 0)?];
        let first = String::from_utf8_lossy(s)
            .split_whitespace()
            .next()?
            .to_string();
        Some(first)
    });
    Ok(BzImage {
        payload_offset,
        payload_len: len,
        release,
    })
}

/// Extracts the ELF vmlinux from bzImage bytes.
pub(super) fn extract_vmlinux(data: &[u8], path: &Path) -> Result<Vec<u8>, ImageError> {
    let kerr = |reason: String| ImageError::Kernel {
        path: path.to_path_buf(),
        reason,
    };
    let bz = parse_bzimage(data).map_err(kerr)?;
    let payload = &data[bz.payload_offset..bz.payload_offset + bz.payload_len];
    let method =
        Compression::detect(payload).ok_or_else(|| kerr("unknown payload compression".into()))?;
    // All methods but gzip carry the uncompressed size as a 4-byte trailer.
    let body = match method {
        Compression::Gzip | Compression::None => payload,
        _ => &payload[..payload.len().saturating_sub(4)],
    };
    let mut raw = match method {
        Compression::None => body.to_vec(),
        Compression::Lz4 => lz4::decompress_legacy(body, MAX_VMLINUX).map_err(kerr)?,
        Compression::Gzip => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .take(MAX_VMLINUX as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| kerr(format!("gzip payload: {e}")))?;
            out
        }
        Compression::Xz => tools::filter(&["xz", "-dc", "--single-stream"], "xz-utils", body)?,
        Compression::Lzma => tools::filter(&["xz", "-dc", "--format=lzma"], "xz-utils", body)?,
        Compression::Zstd => tools::filter(&["zstd", "-dcq"], "zstd", body)?,
        Compression::Bzip2 => tools::filter(&["bzip2", "-dc"], "bzip2", body)?,
        Compression::Lzo => tools::filter(&["lzop", "-dc"], "lzop", body)?,
    };
    if raw.len() > MAX_VMLINUX {
        return Err(kerr(format!(
            "payload decompresses to over {MAX_VMLINUX} bytes"
        )));
    }
    let elf = Elf::parse(&raw).map_err(|e| kerr(format!("payload is not a vmlinux: {e}")))?;
    if elf.machine != EM_X86_64 {
        return Err(kerr(format!(
            "vmlinux is for machine {}, not x86_64",
            elf.machine
        )));
    }
    // Drop the relocation data that follows the ELF image.
    let end = elf.extent() as usize;
    raw.truncate(end);
    Ok(raw)
}

/// Reads a bzImage file and writes its vmlinux to `dest`; returns the kernel release if known.
pub(super) fn write_vmlinux(bzimage: &Path, dest: &Path) -> Result<Option<String>, ImageError> {
    let data = std::fs::read(bzimage).map_err(|e| ImageError::io("read kernel", bzimage, e))?;
    let release = parse_bzimage(&data).ok().and_then(|b| b.release);
    let elf = extract_vmlinux(&data, bzimage)?;
    std::fs::write(dest, elf).map_err(|e| ImageError::io("write", dest, e))?;
    Ok(release)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::elf::build_test_elf;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// A fake bzImage: boot header with the release string, then `payload`.
    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; 1024]; // setup_sects = 1 -> protected-mode code at 1024
        d[0x1f1] = 1;
        d[0x202..0x206].copy_from_slice(b"HdrS");
        d[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        d[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes()); // string at 0x300
        let s = b"6.1.0-test-cloud-amd64 (builder@example) #1 SMP\0";
        d[0x300..0x300 + s.len()].copy_from_slice(s);
        d[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        d[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        d.extend_from_slice(&[0u8; 16]);
        d.extend_from_slice(payload);
        d.extend_from_slice(b"setup trailer");
        d
    }

    /// An LZ4 block holding `data` as literals only (valid LZ4, no compression).
    fn lz4_literal_frame(data: &[u8]) -> Vec<u8> {
        let mut blk = vec![0xF0];
        let mut rest = data.len() - 15;
        while rest >= 255 {
            blk.push(255);
            rest -= 255;
        }
        blk.push(rest as u8);
        blk.extend_from_slice(data);
        let mut f = lz4::LEGACY_MAGIC.to_le_bytes().to_vec();
        f.extend_from_slice(&(blk.len() as u32).to_le_bytes());
        f.extend_from_slice(&blk);
        f.extend_from_slice(&(data.len() as u32).to_le_bytes()); // size trailer
        f
    }

    fn vmlinux_plus_relocs() -> (Vec<u8>, Vec<u8>) {
        let elf = build_test_elf(false, &[(".text", &[0x90; 700])]);
        let mut with_relocs = elf.clone();
        with_relocs.extend_from_slice(&[0xAA; 64]);
        (elf, with_relocs)
    }

    #[test]
    fn extracts_lz4_and_gzip_payloads() {
        let (elf, raw) = vmlinux_plus_relocs();
        let bz = fake_bzimage(&lz4_literal_frame(&raw));
        let info = parse_bzimage(&bz).unwrap();
        assert_eq!(info.release.as_deref(), Some("6.1.0-test-cloud-amd64"));
        assert_eq!(extract_vmlinux(&bz, Path::new("k")).unwrap(), elf);

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        let bz = fake_bzimage(&gz.finish().unwrap());
        assert_eq!(extract_vmlinux(&bz, Path::new("k")).unwrap(), elf);

        let bz = fake_bzimage(&raw);
        assert_eq!(extract_vmlinux(&bz, Path::new("k")).unwrap(), elf);
    }

    #[test]
    fn extracts_with_the_lz4_tool_format() {
        let Some(lz4) = crate::test_tools::tool_or_skip("extracts_with_the_lz4_tool_format", "lz4")
        else {
            return;
        };
        let (elf, raw) = vmlinux_plus_relocs();
        let mut child = Command::new(lz4)
            .args(["-l", "-9", "-c", "-q"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&raw).unwrap();
        let mut payload = child.wait_with_output().unwrap().stdout;
        payload.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        assert_eq!(
            extract_vmlinux(&fake_bzimage(&payload), Path::new("k")).unwrap(),
            elf
        );
    }

    #[test]
    fn refuses_non_kernels() {
        assert!(parse_bzimage(&[0u8; 4096]).is_err());
        let bz = fake_bzimage(b"garbage payload");
        assert!(matches!(
            extract_vmlinux(&bz, Path::new("k")),
            Err(ImageError::Kernel { .. })
        ));
        let mut bz = fake_bzimage(b"x");
        bz[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_bzimage(&bz).is_err());
    }
}
