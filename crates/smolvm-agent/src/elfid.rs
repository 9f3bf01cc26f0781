//! The GNU build id of an ELF file (the `NT_GNU_BUILD_ID` note, in the first page of the file): stage 1
//! uses it to tell whether the root disk's init is this very binary, in which case it keeps running
//! instead of exec'ing a copy of itself (an exec reads the whole binary back from disk, 100+ ms under
//! emulation).

use std::io::Read;
use std::path::Path;

const PT_NOTE: u32 = 4;
const NT_GNU_BUILD_ID: u32 = 3;
/// How much of the file is read: the notes sit right after the program headers.
const HEAD: usize = 8192;

/// The build id of the ELF64 file at `path`, if it has one in its first pages.
pub fn build_id(path: &Path) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(HEAD);
    std::fs::File::open(path)
        .ok()?
        .take(HEAD as u64)
        .read_to_end(&mut head)
        .ok()?;
    parse(&head)
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<usize> {
    usize::try_from(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?)).ok()
}

/// Parses the build id out of the head of an ELF64 little-endian file.
pub fn parse(b: &[u8]) -> Option<Vec<u8>> {
    if b.get(..4)? != b"\x7fELF" || *b.get(4)? != 2 || *b.get(5)? != 1 {
        return None;
    }
    let phoff = u64_at(b, 32)?;
    let phentsize = usize::from(u16_at(b, 54)?);
    let phnum = usize::from(u16_at(b, 56)?);
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(b, ph)? != PT_NOTE {
            continue;
        }
        let off = u64_at(b, ph + 8)?;
        let size = u64_at(b, ph + 32)?;
        let notes = b.get(off..off.checked_add(size)?)?;
        let mut p = 0;
        while p + 12 <= notes.len() {
            let namesz = u32_at(notes, p)? as usize;
            let descsz = u32_at(notes, p + 4)? as usize;
            let ty = u32_at(notes, p + 8)?;
            let name_at = p + 12;
            let desc_at = name_at.checked_add(namesz.checked_add(3)? & !3)?;
            let end = desc_at.checked_add(descsz.checked_add(3)? & !3)?;
            if ty == NT_GNU_BUILD_ID && notes.get(name_at..name_at + namesz)? == b"GNU\0" {
                return notes.get(desc_at..desc_at + descsz).map(<[u8]>::to_vec);
            }
            p = end;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_build_id_and_refuses_garbage() {
        // The test binary itself is an ELF file with a build id (Rust passes --build-id on Linux).
        let exe = std::env::current_exe().unwrap();
        if let Some(id) = build_id(&exe) {
            assert!(id.len() >= 8);
            assert_eq!(build_id(&exe), Some(id));
        }
        assert_eq!(parse(b"not an elf"), None);
        let mut fake = vec![0u8; 64];
        fake[..6].copy_from_slice(b"\x7fELF\x02\x01");
        fake[56] = 200; // many program headers, all out of bounds
        assert_eq!(parse(&fake), None);
    }
}
