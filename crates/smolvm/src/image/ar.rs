//! A reader for `ar` archives (the container of a `.deb`): global header `!<arch>\n`, then members with a
//! 60-byte header (name 16, mtime 12, uid 6, gid 6, mode 8, size 10, magic "`\n") and data padded to an
//! even length. GNU (`name/`) and BSD (`#1/<len>`, name before the data) names are understood.

use std::io::{self, Read, Seek, SeekFrom};

const GLOBAL_MAGIC: &[u8; 8] = b"!<arch>\n";
const HEADER_LEN: usize = 60;

/// One member: its name and where its data lies in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Member {
    /// Member name without GNU/BSD decorations.
    pub name: String,
    /// Offset of the data from the start of the archive.
    pub offset: u64,
    /// Data length in bytes.
    pub size: u64,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Lists the members of an archive. Refuses malformed headers instead of guessing.
pub(super) fn members<R: Read + Seek>(r: &mut R) -> io::Result<Vec<Member>> {
    let total = r.seek(SeekFrom::End(0))?;
    r.seek(SeekFrom::Start(0))?;
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .map_err(|_| bad("not an ar archive (too short)"))?;
    if &magic != GLOBAL_MAGIC {
        return Err(bad("not an ar archive (bad magic)"));
    }
    let mut out = Vec::new();
    let mut pos = GLOBAL_MAGIC.len() as u64;
    while pos < total {
        if total - pos < HEADER_LEN as u64 {
            return Err(bad(format!("truncated member header at offset {pos}")));
        }
        let mut h = [0u8; HEADER_LEN];
        r.seek(SeekFrom::Start(pos))?;
        r.read_exact(&mut h)?;
        if &h[58..60] != b"`\n" {
            return Err(bad(format!("bad member header magic at offset {pos}")));
        }
        let size = field(&h[48..58])
            .parse::<u64>()
            .map_err(|_| bad(format!("bad member size at offset {pos}")))?;
        let raw_name = field(&h[0..16]);
        let mut data_off = pos + HEADER_LEN as u64;
        let mut data_size = size;
        let name = if let Some(len) = raw_name.strip_prefix("#1/") {
            // BSD: the name is the first <len> bytes of the data.
            let len: u64 = len
                .parse()
                .map_err(|_| bad(format!("bad BSD name length at offset {pos}")))?;
            if len > size || len > 4096 {
                return Err(bad(format!("bad BSD name length at offset {pos}")));
            }
            let mut n = vec![0u8; len as usize];
            r.read_exact(&mut n)?;
            data_off += len;
            data_size -= len;
            String::from_utf8_lossy(&n)
                .trim_end_matches('\0')
                .to_string()
        } else {
            raw_name.trim_end_matches('/').to_string()
        };
        let end = (pos + HEADER_LEN as u64)
            .checked_add(size)
            .filter(|&e| e <= total)
            .ok_or_else(|| bad(format!("member {name:?} runs past the end of the archive")))?;
        out.push(Member {
            name,
            offset: data_off,
            size: data_size,
        });
        pos = end + (end % 2);
    }
    Ok(out)
}

fn field(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end().to_string()
}

/// Copies a member's data to `w`.
pub(super) fn copy_member<R: Read + Seek, W: io::Write>(
    r: &mut R,
    m: &Member,
    w: &mut W,
) -> io::Result<u64> {
    r.seek(SeekFrom::Start(m.offset))?;
    let n = io::copy(&mut r.by_ref().take(m.size), w)?;
    if n != m.size {
        return Err(bad(format!("member {:?} is truncated", m.name)));
    }
    Ok(n)
}

/// Writes an archive (used by tests to make fixtures, and small enough to keep honest).
#[cfg(test)]
pub(super) fn write<W: io::Write>(w: &mut W, members: &[(&str, &[u8])]) -> io::Result<()> {
    w.write_all(GLOBAL_MAGIC)?;
    for (name, data) in members {
        let header = format!(
            "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
            format!("{name}/"),
            0,
            0,
            0,
            "100644",
            data.len()
        );
        assert_eq!(header.len(), HEADER_LEN);
        w.write_all(header.as_bytes())?;
        w.write_all(data)?;
        if data.len() % 2 == 1 {
            w.write_all(b"\n")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn reads_gnu_and_bsd_members() {
        let mut buf = Vec::new();
        write(&mut buf, &[("debian-binary", b"2.0\n"), ("odd", b"abc")]).unwrap();
        // Append a BSD-style member by hand.
        let name = b"data.tar.gz";
        let header = format!(
            "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
            format!("#1/{}", name.len()),
            0,
            0,
            0,
            "100644",
            name.len() + 2
        );
        buf.extend_from_slice(header.as_bytes());
        buf.extend_from_slice(name);
        buf.extend_from_slice(b"xy");
        let mut c = Cursor::new(buf);
        let m = members(&mut c).unwrap();
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["debian-binary", "odd", "data.tar.gz"]);
        let mut out = Vec::new();
        copy_member(&mut c, &m[1], &mut out).unwrap();
        assert_eq!(out, b"abc");
        out.clear();
        copy_member(&mut c, &m[2], &mut out).unwrap();
        assert_eq!(out, b"xy");
    }

    #[test]
    fn refuses_garbage() {
        assert!(members(&mut Cursor::new(b"hello".to_vec())).is_err());
        assert!(members(&mut Cursor::new(b"!<arch>\nshort".to_vec())).is_err());
        let mut buf = Vec::new();
        write(&mut buf, &[("a", b"1234")]).unwrap();
        buf.truncate(buf.len() - 2); // data shorter than the header says
        assert!(members(&mut Cursor::new(buf)).is_err());
    }
}
