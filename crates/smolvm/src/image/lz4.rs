//! LZ4 decompression for the kernel payload: the *legacy* frame format (`lz4 -l`, what the kernel build
//! writes) around standard LZ4 blocks. Written here because it is 80 lines, safe and bounds-checked,
//! and the only LZ4 the builder ever reads.
//!
//! Legacy frame: magic `0x184C2102` (LE), then blocks `u32 LE compressed size` + data, each block
//! decompressing to at most 8 MiB; a repeated magic starts a new frame.

/// Magic number of a legacy LZ4 frame.
pub(super) const LEGACY_MAGIC: u32 = 0x184C_2102;
/// Largest decompressed size of one legacy block.
const LEGACY_BLOCK_MAX: usize = 8 << 20;

/// Decompresses a legacy LZ4 stream; stops at the end of the data or at a block length that cannot be
/// one (the kernel appends its uncompressed size after the stream). Output is capped at `limit` bytes.
pub(super) fn decompress_legacy(input: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let mut pos = 0;
    let mut out = Vec::new();
    let read_u32 = |p: usize| -> Option<u32> {
        Some(u32::from_le_bytes(input.get(p..p + 4)?.try_into().ok()?))
    };
    if read_u32(0) != Some(LEGACY_MAGIC) {
        return Err("not a legacy LZ4 stream (bad magic)".into());
    }
    pos += 4;
    while let Some(len) = read_u32(pos) {
        if len == LEGACY_MAGIC {
            pos += 4;
            continue;
        }
        let len = len as usize;
        let start = pos + 4;
        let Some(block) = start.checked_add(len).and_then(|end| input.get(start..end)) else {
            break; // trailer, not a block
        };
        let room = limit.saturating_sub(out.len());
        if let Err(e) = decompress_block(block, &mut out, LEGACY_BLOCK_MAX.min(room)) {
            if room < LEGACY_BLOCK_MAX {
                return Err(format!("decompressed data exceeds {limit} bytes"));
            }
            return Err(e);
        }
        pos = start + len;
    }
    Ok(out)
}

/// Decompresses one LZ4 block, appending to `out` (matches may reach back into earlier output, as the
/// legacy format allows). At most `max` bytes are produced.
pub(super) fn decompress_block(block: &[u8], out: &mut Vec<u8>, max: usize) -> Result<(), String> {
    let base = out.len();
    let mut i = 0;
    let err = |what: &str, at: usize| format!("corrupt LZ4 block: {what} at byte {at}");
    loop {
        let token = *block.get(i).ok_or_else(|| err("missing token", i))?;
        i += 1;
        let mut lit = usize::from(token >> 4);
        if lit == 15 {
            lit += read_len(block, &mut i).ok_or_else(|| err("bad literal length", i))?;
        }
        let lits = i
            .checked_add(lit)
            .and_then(|e| block.get(i..e))
            .ok_or_else(|| err("literals past the end", i))?;
        if out.len() - base + lit > max {
            return Err(err("block larger than allowed", i));
        }
        out.extend_from_slice(lits);
        i += lit;
        if i == block.len() {
            return Ok(()); // last sequence has literals only
        }
        let off = usize::from(u16::from_le_bytes(
            block
                .get(i..i + 2)
                .ok_or_else(|| err("missing offset", i))?
                .try_into()
                .map_err(|_| err("missing offset", i))?,
        ));
        i += 2;
        if off == 0 || off > out.len() {
            return Err(err("bad match offset", i));
        }
        let mut mlen = usize::from(token & 15);
        if mlen == 15 {
            mlen += read_len(block, &mut i).ok_or_else(|| err("bad match length", i))?;
        }
        mlen += 4;
        if out.len() - base + mlen > max {
            return Err(err("block larger than allowed", i));
        }
        let from = out.len() - off;
        if off >= mlen {
            out.extend_from_within(from..from + mlen);
        } else {
            // Overlapping copy: byte by byte repeats the pattern.
            for k in 0..mlen {
                let b = out[from + k];
                out.push(b);
            }
        }
    }
}

fn read_len(block: &[u8], i: &mut usize) -> Option<usize> {
    let mut n = 0usize;
    loop {
        let b = *block.get(*i)?;
        *i += 1;
        n = n.checked_add(usize::from(b))?;
        if b != 255 {
            return Some(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-made block: literals "abcd", then a match of length 8 at offset 4 (overlapping), then
    /// literals "xyz".
    fn sample_block() -> Vec<u8> {
        let mut b = vec![0x44]; // 4 literals, match length 4 + 4 = 8
        b.extend_from_slice(b"abcd");
        b.extend_from_slice(&4u16.to_le_bytes());
        b.push(0x30); // 3 literals, end
        b.extend_from_slice(b"xyz");
        b
    }

    #[test]
    fn decodes_blocks_and_legacy_frames() {
        let mut out = Vec::new();
        decompress_block(&sample_block(), &mut out, 100).unwrap();
        assert_eq!(out, b"abcdabcdabcdxyz");

        let mut frame = LEGACY_MAGIC.to_le_bytes().to_vec();
        let blk = sample_block();
        frame.extend_from_slice(&(blk.len() as u32).to_le_bytes());
        frame.extend_from_slice(&blk);
        frame.extend_from_slice(&15u32.to_le_bytes()); // kernel's size trailer: ignored
        assert_eq!(
            decompress_legacy(&frame, 1 << 20).unwrap(),
            b"abcdabcdabcdxyz"
        );
        assert!(decompress_legacy(&frame, 4).is_err());
    }

    #[test]
    fn long_lengths_and_corruption() {
        // 20 literals need an extra length byte (15 + 5).
        let mut b = vec![0xF0, 5];
        b.extend_from_slice(&[b'q'; 20]);
        let mut out = Vec::new();
        decompress_block(&b, &mut out, 100).unwrap();
        assert_eq!(out, vec![b'q'; 20]);
        for bad in [
            vec![0x10],                       // literal past the end
            vec![0x04, b'a', 5, 0],           // offset beyond output
            vec![0x04, b'a', 0, 0],           // zero offset
            vec![0x1F, b'a', 1, 0, 255, 255], // unterminated match length
        ] {
            assert!(
                decompress_block(&bad, &mut Vec::new(), 1000).is_err(),
                "{bad:?}"
            );
        }
        assert!(decompress_legacy(b"nope", 10).is_err());
    }

    /// Cross-check against the `lz4` tool when present (`lz4 -l` writes the kernel's format).
    #[test]
    fn matches_the_lz4_tool() {
        let Some(lz4) = crate::test_tools::tool_or_skip("matches_the_lz4_tool", "lz4") else {
            return;
        };
        let t = tempfile::tempdir().unwrap();
        let plain: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let src = t.path().join("plain");
        std::fs::write(&src, &plain).unwrap();
        let dst = t.path().join("plain.lz4");
        let st = std::process::Command::new(lz4)
            .args(["-l", "-9", "-q", "-f"])
            .arg(&src)
            .arg(&dst)
            .status()
            .unwrap();
        assert!(st.success());
        let comp = std::fs::read(&dst).unwrap();
        assert_eq!(decompress_legacy(&comp, 1 << 30).unwrap(), plain);
    }
}
