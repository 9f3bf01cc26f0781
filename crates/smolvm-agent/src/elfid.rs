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

    /// One ELF note: name, type, descriptor, each padded to 4 bytes.
    fn note(name: &[u8], ty: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend((name.len() as u32).to_le_bytes());
        n.extend((desc.len() as u32).to_le_bytes());
        n.extend(ty.to_le_bytes());
        for part in [name, desc] {
            n.extend(part);
            n.resize(n.len().next_multiple_of(4), 0);
        }
        n
    }

    /// A minimal ELF64 little-endian head: a LOAD header, then a NOTE header over `notes`.
    fn elf_with_notes(notes: &[u8]) -> Vec<u8> {
        const PHOFF: usize = 64;
        const PHENTSIZE: usize = 56;
        let notes_at = PHOFF + 2 * PHENTSIZE;
        let mut b = vec![0u8; notes_at];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[32..40].copy_from_slice(&(PHOFF as u64).to_le_bytes());
        b[54..56].copy_from_slice(&(PHENTSIZE as u16).to_le_bytes());
        b[56..58].copy_from_slice(&2u16.to_le_bytes());
        b[PHOFF..PHOFF + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        let ph = PHOFF + PHENTSIZE;
        b[ph..ph + 4].copy_from_slice(&PT_NOTE.to_le_bytes());
        b[ph + 8..ph + 16].copy_from_slice(&(notes_at as u64).to_le_bytes());
        b[ph + 32..ph + 40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        b.extend(notes);
        b
    }

    #[test]
    fn finds_the_gnu_build_id_among_other_notes() {
        let id: Vec<u8> = (1..=20).collect();
        let mut notes = note(b"GNU\0", 1, &[0; 16]); // NT_GNU_ABI_TAG first
        notes.extend(note(b"Go\0\0", NT_GNU_BUILD_ID, b"not-gnu")); // right type, other owner
        notes.extend(note(b"GNU\0", NT_GNU_BUILD_ID, &id));
        let elf = elf_with_notes(&notes);
        assert_eq!(parse(&elf), Some(id.clone()));
        // Through a file, as stage 1 reads it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("init");
        std::fs::write(&path, &elf).unwrap();
        assert_eq!(build_id(&path), Some(id));
        // Without the build-id note there is none.
        assert_eq!(parse(&elf_with_notes(&note(b"GNU\0", 1, &[0; 16]))), None);
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(parse(b"not an elf"), None);
        let mut fake = vec![0u8; 64];
        fake[..6].copy_from_slice(b"\x7fELF\x02\x01");
        fake[56] = 200; // many program headers, all out of bounds
        assert_eq!(parse(&fake), None);
        // A note whose descriptor runs past the segment.
        let mut bad = note(b"GNU\0", NT_GNU_BUILD_ID, &[7; 20]);
        bad.truncate(bad.len() - 8);
        assert_eq!(parse(&elf_with_notes(&bad)), None);
    }
}
