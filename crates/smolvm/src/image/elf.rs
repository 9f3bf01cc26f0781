//! A minimal, bounds-checked ELF64 little-endian reader: enough to find where an ELF file ends inside a
//! larger buffer (vmlinux inside the decompressed kernel payload), read a section (`.modinfo` of a kernel
//! module) and tell a static binary from a dynamic one (`PT_INTERP`).

/// `PT_INTERP`: the program needs a dynamic loader.
const PT_INTERP: u32 = 3;
/// `SHT_NOBITS`: a section with no bytes in the file (`.bss`).
const SHT_NOBITS: u32 = 8;
/// `EM_X86_64`.
pub(super) const EM_X86_64: u16 = 62;

/// A parsed view of an ELF64 file.
#[derive(Debug)]
pub(super) struct Elf<'a> {
    data: &'a [u8],
    /// `e_machine`.
    pub machine: u16,
    phdrs: Vec<Phdr>,
    shdrs: Vec<Shdr>,
    shstrndx: usize,
    ph_end: u64,
    sh_end: u64,
}

#[derive(Debug, Clone, Copy)]
struct Phdr {
    p_type: u32,
    offset: u64,
    filesz: u64,
}

#[derive(Debug, Clone, Copy)]
struct Shdr {
    name: u32,
    sh_type: u32,
    offset: u64,
    size: u64,
}

fn u16_at(d: &[u8], off: u64) -> Option<u16> {
    let o = usize::try_from(off).ok()?;
    Some(u16::from_le_bytes(
        d.get(o..o.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(d: &[u8], off: u64) -> Option<u32> {
    let o = usize::try_from(off).ok()?;
    Some(u32::from_le_bytes(
        d.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(d: &[u8], off: u64) -> Option<u64> {
    let o = usize::try_from(off).ok()?;
    Some(u64::from_le_bytes(
        d.get(o..o.checked_add(8)?)?.try_into().ok()?,
    ))
}

impl<'a> Elf<'a> {
    /// Parses the headers. `data` may be longer than the ELF file (trailing bytes are ignored) but
    /// must contain every header and section it declares.
    pub(super) fn parse(data: &'a [u8]) -> Result<Elf<'a>, String> {
        if data.len() < 64 || &data[..4] != b"\x7fELF" {
            return Err("not an ELF file".into());
        }
        if data[4] != 2 || data[5] != 1 {
            return Err("not a 64-bit little-endian ELF file".into());
        }
        let short = || "truncated ELF header".to_string();
        let machine = u16_at(data, 18).ok_or_else(short)?;
        let phoff = u64_at(data, 32).ok_or_else(short)?;
        let shoff = u64_at(data, 40).ok_or_else(short)?;
        let phentsize = u64::from(u16_at(data, 54).ok_or_else(short)?);
        let phnum = u64::from(u16_at(data, 56).ok_or_else(short)?);
        let shentsize = u64::from(u16_at(data, 58).ok_or_else(short)?);
        let shnum = u64::from(u16_at(data, 60).ok_or_else(short)?);
        let shstrndx = usize::from(u16_at(data, 62).ok_or_else(short)?);
        if (phnum > 0 && phentsize < 56) || (shnum > 0 && shentsize < 64) {
            return Err("bad ELF header entry sizes".into());
        }
        let mut phdrs = Vec::new();
        for i in 0..phnum {
            let b = phoff + i * phentsize;
            let bad = || format!("program header {i} out of bounds");
            phdrs.push(Phdr {
                p_type: u32_at(data, b).ok_or_else(bad)?,
                offset: u64_at(data, b + 8).ok_or_else(bad)?,
                filesz: u64_at(data, b + 32).ok_or_else(bad)?,
            });
        }
        let mut shdrs = Vec::new();
        for i in 0..shnum {
            let b = shoff + i * shentsize;
            let bad = || format!("section header {i} out of bounds");
            shdrs.push(Shdr {
                name: u32_at(data, b).ok_or_else(bad)?,
                sh_type: u32_at(data, b + 4).ok_or_else(bad)?,
                offset: u64_at(data, b + 24).ok_or_else(bad)?,
                size: u64_at(data, b + 32).ok_or_else(bad)?,
            });
        }
        let elf = Elf {
            data,
            machine,
            phdrs,
            shdrs,
            shstrndx,
            ph_end: phoff + phnum * phentsize,
            sh_end: shoff + shnum * shentsize,
        };
        if elf.extent() > data.len() as u64 {
            return Err(format!(
                "ELF file needs {} bytes but only {} are present",
                elf.extent(),
                data.len()
            ));
        }
        Ok(elf)
    }

    /// The length of the ELF file: the end of the furthest header, segment or section.
    pub(super) fn extent(&self) -> u64 {
        let segs = self.phdrs.iter().map(|p| p.offset.saturating_add(p.filesz));
        let secs = self
            .shdrs
            .iter()
            .filter(|s| s.sh_type != SHT_NOBITS)
            .map(|s| s.offset.saturating_add(s.size));
        segs.chain(secs)
            .chain([64, self.ph_end, self.sh_end])
            .max()
            .unwrap_or(64)
    }

    /// True if the program asks for a dynamic loader (not statically linked).
    pub(super) fn has_interp(&self) -> bool {
        self.phdrs.iter().any(|p| p.p_type == PT_INTERP)
    }

    /// The bytes of the section called `name`.
    pub(super) fn section(&self, name: &str) -> Option<&'a [u8]> {
        let strtab = self.shdrs.get(self.shstrndx)?;
        let names = self.bytes(strtab.offset, strtab.size)?;
        self.shdrs.iter().find_map(|s| {
            let n = names.get(s.name as usize..)?;
            let n = &n[..n.iter().position(|&b| b == 0)?];
            (n == name.as_bytes() && s.sh_type != SHT_NOBITS)
                .then(|| self.bytes(s.offset, s.size))
                .flatten()
        })
    }

    fn bytes(&self, off: u64, len: u64) -> Option<&'a [u8]> {
        let start = usize::try_from(off).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.data.get(start..end)
    }
}

/// Builds a small ELF64 file for tests: one PT_LOAD segment (or PT_INTERP too), and sections named in
/// `sections` with their contents.
#[cfg(test)]
pub(super) fn build_test_elf(interp: bool, sections: &[(&str, &[u8])]) -> Vec<u8> {
    let mut shstrtab = vec![0u8];
    let mut name_offs = Vec::new();
    for (n, _) in sections {
        name_offs.push(shstrtab.len() as u32);
        shstrtab.extend_from_slice(n.as_bytes());
        shstrtab.push(0);
    }
    let shstr_name = shstrtab.len() as u32;
    shstrtab.extend_from_slice(b".shstrtab\0");
    let phnum: u16 = if interp { 2 } else { 1 };
    let mut body = Vec::new(); // after headers
    let data_start = 64 + 56 * u64::from(phnum);
    let mut sec_offs = Vec::new();
    for (_, d) in sections {
        sec_offs.push(data_start + body.len() as u64);
        body.extend_from_slice(d);
    }
    let shstr_off = data_start + body.len() as u64;
    body.extend_from_slice(&shstrtab);
    while body.len() % 8 != 0 {
        body.push(0);
    }
    let shoff = data_start + body.len() as u64;
    let shnum = sections.len() as u16 + 2;
    let mut out = Vec::new();
    out.extend_from_slice(b"\x7fELF\x02\x01\x01");
    out.resize(16, 0);
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&EM_X86_64.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&0x1000u64.to_le_bytes());
    out.extend_from_slice(&64u64.to_le_bytes());
    out.extend_from_slice(&shoff.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, phnum, 64, shnum, shnum - 1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let mut phdr = |t: u32, off: u64, sz: u64| {
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&5u32.to_le_bytes());
        for v in [off, 0x1000, 0x1000, sz, sz, 0x1000] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    };
    phdr(1, 0, data_start + body.len() as u64);
    if interp {
        phdr(PT_INTERP, 0, 1);
    }
    out.extend_from_slice(&body);
    out.extend_from_slice(&[0u8; 64]); // null section
    let mut shdr = |name: u32, off: u64, size: u64, ty: u32| {
        out.extend_from_slice(&name.to_le_bytes());
        out.extend_from_slice(&ty.to_le_bytes());
        for v in [0u64, 0, off, size] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&[0u8; 24]);
    };
    for (i, (_, d)) in sections.iter().enumerate() {
        shdr(name_offs[i], sec_offs[i], d.len() as u64, 1);
    }
    shdr(shstr_name, shstr_off, shstrtab.len() as u64, 3);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sections_extent_and_interp() {
        let f = build_test_elf(false, &[(".modinfo", b"name=x\0depends=a,b\0")]);
        let mut padded = f.clone();
        padded.extend_from_slice(b"trailing relocs");
        let e = Elf::parse(&padded).unwrap();
        assert_eq!(e.extent(), f.len() as u64);
        assert_eq!(e.section(".modinfo").unwrap(), b"name=x\0depends=a,b\0");
        assert!(e.section(".nope").is_none());
        assert!(!e.has_interp());
        assert_eq!(e.machine, EM_X86_64);
        assert!(Elf::parse(&build_test_elf(true, &[])).unwrap().has_interp());
    }

    #[test]
    fn refuses_truncated_and_foreign_files() {
        let f = build_test_elf(false, &[(".a", b"abc")]);
        assert!(Elf::parse(&f[..f.len() - 1]).is_err());
        assert!(Elf::parse(b"\x7fELF").is_err());
        let mut be = f.clone();
        be[5] = 2;
        assert!(Elf::parse(&be).is_err());
        assert!(Elf::parse(&[0u8; 100]).is_err());
    }
}
