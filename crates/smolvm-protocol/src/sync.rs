//! Resynchronisation: the [`SYNC`] marker and a [`Decoder`] that can skip to it.
//!
//! A virtio-serial port outlives host connections: bytes one host left half-read or half-written reach
//! the next host (or the agent) first. So every greeting ([`crate::Hello`] from the host, [`crate::Ready`]
//! from the agent) is preceded by [`SYNC`], and a reader that lost the frame boundaries (or does not know
//! where a stale stream ends) discards bytes until the marker. Frame lengths never reach 2^24, so a
//! frame's first byte is always 0; the marker's first byte is not, which tells the two apart at a frame
//! boundary without any lookahead beyond one byte.

use std::io::{self, Read};

use crate::frame::{Frame, FrameType, ProtocolError};
use crate::limits::{HEADER_LEN, MAX_FRAME_LEN};
use crate::messages::Hello;

/// Written immediately before every `Hello` and `Ready` frame. Its first byte is non-zero (no frame
/// starts with it) and occurs only once in it, so a byte-wise scan never needs to back up.
pub const SYNC: [u8; 16] = [
    0xA5, b'S', b'M', b'O', b'L', b'V', b'M', b'-', b'S', b'Y', b'N', b'C', 0x5A, 0x0F, 0xC3, 0x96,
];

const _: () = assert!(MAX_FRAME_LEN < 1 << 24, "a frame's first byte must be 0");
const _: () = {
    let mut i = 1;
    while i < SYNC.len() {
        assert!(
            SYNC[i] != SYNC[0],
            "the first SYNC byte must be unique in it"
        );
        i += 1;
    }
};

/// Incremental frame decoder over a byte stream that may contain [`SYNC`] markers and garbage.
///
/// In step it returns frames one by one, skipping a [`SYNC`] at a frame boundary. On a bad length (or
/// after [`Decoder::hunt`]) it is *hunting*: it discards input up to and including the next [`SYNC`],
/// then decodes frames again. Never panics, and never buffers more than one frame plus one pushed chunk.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    pos: usize,
    hunting: bool,
    discarded: u64,
    frames: u64,
    /// Bytes after `pos` that [`Decoder::buffered_has_hello`] already searched.
    scanned: usize,
}

impl Decoder {
    /// A decoder that expects a frame (or a [`SYNC`]) as the first byte.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// A decoder that discards everything before the first [`SYNC`].
    pub fn hunting() -> Decoder {
        Decoder {
            hunting: true,
            ..Decoder::default()
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(data);
    }

    /// Reads once from `r` (at most `max` bytes) into the decoder. Returns what `read` returned: 0 means
    /// end of stream (or, on a virtio-serial port, "no host connected").
    pub fn read_from<R: Read>(&mut self, r: &mut R, max: usize) -> io::Result<usize> {
        self.compact();
        let old = self.buf.len();
        self.buf.resize(old + max, 0);
        let result = r.read(&mut self.buf[old..]);
        let n = *result.as_ref().unwrap_or(&0);
        self.buf.truncate(old + n);
        result
    }

    /// Gives up on the frame being received (if any) and discards input up to the next [`SYNC`].
    /// Buffered bytes are scanned, not dropped: a marker among them still counts.
    pub fn hunt(&mut self) {
        self.hunting = true;
    }

    /// True while discarding input up to the next [`SYNC`].
    pub fn is_hunting(&self) -> bool {
        self.hunting
    }

    /// True if part of a frame (or of a marker) is buffered: the stream is between frame boundaries.
    pub fn is_mid_frame(&self) -> bool {
        !self.hunting && self.pos < self.buf.len()
    }

    /// Frames returned so far (including ones of unknown type): a progress counter.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// True if the buffered, not yet decoded bytes hold a complete `SYNC` + `Hello` frame that the
    /// decoder cannot see because it lies inside a frame still incomplete: the sign that this frame was
    /// cut off (its writer died) and a new host is greeting. Scans each byte once across calls.
    pub fn buffered_has_hello(&mut self) -> bool {
        if self.hunting {
            return false;
        }
        let avail = &self.buf[self.pos..];
        let mut at = self.scanned.min(avail.len());
        while let Some(i) = avail[at..].windows(SYNC.len()).position(|w| w == SYNC) {
            let frame = &avail[at + i + SYNC.len()..];
            if frame.len() < HEADER_LEN {
                self.scanned = at + i;
                return false; // maybe a greeting, still arriving
            }
            let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
            let is_hello = frame[4] == FrameType::Hello as u8
                && frame[5..HEADER_LEN] == [0, 0, 0, 0]
                && (5..=MAX_FRAME_LEN).contains(&len);
            if is_hello {
                if frame.len() < 4 + len {
                    self.scanned = at + i;
                    return false;
                }
                if serde_json::from_slice::<Hello>(&frame[HEADER_LEN..4 + len]).is_ok() {
                    return true;
                }
            }
            at += i + 1;
        }
        // A marker may still be arriving at the end.
        self.scanned = avail.len().saturating_sub(SYNC.len() - 1);
        false
    }

    /// Bytes discarded while hunting, in total.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// The next complete frame, `None` if more input is needed. `Err(UnknownType)` consumed its frame
    /// (the stream stays in step); `Err(BadLength)` means the stream lost its frame boundaries, and the
    /// decoder is now hunting.
    pub fn next_frame(&mut self) -> Option<Result<Frame, ProtocolError>> {
        loop {
            if self.hunting && !self.skip_to_sync() {
                return None;
            }
            let avail = &self.buf[self.pos..];
            let first = *avail.first()?;
            if first != 0 {
                // Not a frame header: a marker, or garbage.
                let n = avail.len().min(SYNC.len());
                if avail[..n] != SYNC[..n] {
                    self.hunting = true;
                    let mut len = [0u8; 4];
                    let m = avail.len().min(4);
                    len[..m].copy_from_slice(&avail[..m]);
                    return Some(Err(ProtocolError::BadLength(u32::from_be_bytes(len))));
                }
                if n < SYNC.len() {
                    return None; // the rest of the marker is still to come
                }
                self.pos += SYNC.len();
                continue;
            }
            if avail.len() < HEADER_LEN {
                return None;
            }
            let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]);
            if !(5..=MAX_FRAME_LEN as u32).contains(&len) {
                self.hunting = true;
                return Some(Err(ProtocolError::BadLength(len)));
            }
            let total = 4 + len as usize;
            if avail.len() < total {
                return None;
            }
            let request_id = u32::from_be_bytes([avail[5], avail[6], avail[7], avail[8]]);
            let type_byte = avail[4];
            let payload = avail[HEADER_LEN..total].to_vec();
            self.pos += total;
            self.frames += 1;
            self.scanned = 0;
            return Some(match FrameType::from_u8(type_byte) {
                Some(t) => Ok(Frame::new(t, request_id, payload)),
                None => Err(ProtocolError::UnknownType {
                    frame_type: type_byte,
                    request_id,
                }),
            });
        }
    }

    /// Discards up to and including the next marker; false (keeping a possible marker prefix at the
    /// end) if there is none yet.
    fn skip_to_sync(&mut self) -> bool {
        let avail = &self.buf[self.pos..];
        let mut start = 0;
        while let Some(i) = avail[start..].iter().position(|b| *b == SYNC[0]) {
            let at = start + i;
            let n = (avail.len() - at).min(SYNC.len());
            if avail[at..at + n] == SYNC[..n] {
                self.discarded += at as u64;
                if n == SYNC.len() {
                    self.pos += at + SYNC.len();
                    self.hunting = false;
                    self.scanned = 0;
                    return true;
                }
                self.pos += at; // a marker's beginning: wait for the rest
                return false;
            }
            start = at + 1;
        }
        self.discarded += avail.len() as u64;
        self.pos = self.buf.len();
        false
    }

    fn compact(&mut self) {
        if self.pos > 0 {
            self.scanned = 0;
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }
}

/// `SYNC` followed by the encoded frame, for one `write_all`.
pub fn with_sync(frame: &Frame) -> Result<Vec<u8>, ProtocolError> {
    let mut bytes = SYNC.to_vec();
    bytes.extend(frame.encode()?);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(id: u32) -> Vec<u8> {
        Frame::new(FrameType::Ping, id, vec![]).encode().unwrap()
    }

    fn drain(d: &mut Decoder) -> Vec<Result<u32, String>> {
        std::iter::from_fn(|| d.next_frame())
            .map(|r| r.map(|f| f.request_id).map_err(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn frames_and_markers_in_step() {
        let mut bytes = ping(1);
        bytes.extend(SYNC);
        bytes.extend(ping(2));
        bytes.extend(SYNC);
        bytes.extend(SYNC);
        bytes.extend(ping(3));
        // Byte by byte, so every split of header, payload and marker is exercised.
        let mut d = Decoder::new();
        let mut ids = Vec::new();
        for b in &bytes {
            d.push(&[*b]);
            ids.extend(drain(&mut d));
        }
        assert_eq!(ids, vec![Ok(1), Ok(2), Ok(3)]);
        assert!(!d.is_mid_frame());
        assert_eq!(d.discarded(), 0);
    }

    #[test]
    fn hunting_skips_stale_bytes_and_half_frames() {
        let mut stale = ping(9);
        stale.extend(&ping(8)[..6]); // a half frame
        stale.extend([0xA5, b'S', 0xA5]); // a false start of a marker
        let mut bytes = stale.clone();
        bytes.extend(with_sync(&Frame::new(FrameType::Ping, 5, vec![])).unwrap());
        bytes.extend(ping(6));
        for chunk in [1, 3, 7, bytes.len()] {
            let mut d = Decoder::hunting();
            let mut ids = Vec::new();
            for c in bytes.chunks(chunk) {
                d.push(c);
                ids.extend(drain(&mut d));
            }
            assert_eq!(ids, vec![Ok(5), Ok(6)], "chunk {chunk}");
            assert_eq!(d.discarded(), stale.len() as u64);
        }
    }

    #[test]
    fn bad_length_resynchronises_at_the_next_marker() {
        let mut bytes = ping(1);
        bytes.extend([0, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0]); // length far over the limit
        bytes.extend(ping(2)); // lost: the decoder hunts
        bytes.extend(SYNC);
        bytes.extend(ping(3));
        let mut d = Decoder::new();
        d.push(&bytes);
        let got = drain(&mut d);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], Ok(1));
        assert!(got[1].is_err());
        assert_eq!(got[2], Ok(3));
        // Garbage whose first byte is not 0 is caught at once, too.
        let mut d = Decoder::new();
        d.push(b"garbage");
        assert!(matches!(
            d.next_frame(),
            Some(Err(ProtocolError::BadLength(_)))
        ));
        assert!(d.is_hunting());
    }

    #[test]
    fn hunt_abandons_a_partial_frame() {
        let mut d = Decoder::new();
        let big = Frame::new(FrameType::Stdin, 1, vec![7; 100])
            .encode()
            .unwrap();
        d.push(&big[..5]);
        assert!(d.next_frame().is_none());
        assert!(d.is_mid_frame());
        assert!(!d.buffered_has_hello());
        // Another marked frame inside is no greeting; a marked Hello, arriving byte by byte, is.
        d.push(&with_sync(&Frame::new(FrameType::Ping, 2, vec![])).unwrap());
        let hello = crate::Request::Hello(Hello { nonce: 3 })
            .to_frame(0)
            .unwrap();
        for b in with_sync(&hello).unwrap() {
            assert!(!d.buffered_has_hello());
            d.push(&[b]);
        }
        assert!(
            d.next_frame().is_none(),
            "the greeting is swallowed by the partial frame"
        );
        assert!(d.buffered_has_hello());
        d.hunt();
        let got: Vec<FrameType> = std::iter::from_fn(|| d.next_frame())
            .map(|f| f.unwrap().frame_type)
            .collect();
        assert_eq!(got, vec![FrameType::Ping, FrameType::Hello]);
        assert_eq!(d.discarded(), 5);
    }

    #[test]
    fn unknown_types_keep_the_stream_in_step() {
        let mut d = Decoder::new();
        d.push(&[0, 0, 0, 6, 200, 0, 0, 0, 4, 0xee]);
        d.push(&ping(5));
        assert!(matches!(
            d.next_frame(),
            Some(Err(ProtocolError::UnknownType {
                frame_type: 200,
                request_id: 4
            }))
        ));
        assert_eq!(drain(&mut d), vec![Ok(5)]);
    }

    #[test]
    fn reads_from_a_reader() {
        let bytes = ping(7);
        let mut r = &bytes[..];
        let mut d = Decoder::new();
        assert_eq!(d.read_from(&mut r, 4).unwrap(), 4);
        assert!(d.next_frame().is_none());
        assert_eq!(d.read_from(&mut r, 64).unwrap(), bytes.len() - 4);
        assert_eq!(drain(&mut d), vec![Ok(7)]);
        assert_eq!(d.read_from(&mut r, 64).unwrap(), 0);
    }
}
