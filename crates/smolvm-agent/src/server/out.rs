//! The connection's writer: one lock so frames never interleave, and a closed flag so that nothing is
//! written once the host has gone (a later host connection must never see a stale frame).

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use smolvm_protocol::{Done, ErrorKind, ErrorReply, Frame, Reply};

/// Longest message in an `Error` frame; longer ones are cut (they are for humans).
const MAX_ERROR_MESSAGE_LEN: usize = 16 * 1024;

/// The writing half of the host connection.
pub(crate) struct Out {
    file: Mutex<File>,
    closed: AtomicBool,
}

impl Out {
    /// Wraps the connection.
    pub fn new(file: File) -> Self {
        Out {
            file: Mutex::new(file),
            closed: AtomicBool::new(false),
        }
    }

    /// No frame is written after this.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// True once closed (by `close` or a failed write).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Sends one frame; false if the connection is closed or the write failed (which closes it: a
    /// partial frame has broken the stream).
    pub fn send(&self, frame: &Frame) -> bool {
        let Ok(bytes) = frame.encode() else {
            return false;
        };
        if self.is_closed() {
            return false;
        }
        let Ok(mut f) = self.file.lock() else {
            return false;
        };
        // Checked again under the lock: `close` may have run while this thread waited for it.
        if self.is_closed() {
            return false;
        }
        if f.write_all(&bytes).is_err() {
            self.close();
            return false;
        }
        true
    }

    /// Sends a reply frame (dropped if the connection is closed: nobody listens).
    pub fn reply(&self, id: u32, reply: &Reply) {
        match reply.to_frame(id) {
            Ok(frame) => {
                self.send(&frame);
            }
            // Only an oversized message gets here (e.g. a huge env list): say so instead.
            Err(e) => self.error(id, ErrorKind::LimitExceeded, super::error_chain(&e)),
        }
    }

    /// Sends an `Error` frame.
    pub fn error(&self, id: u32, kind: ErrorKind, message: impl Into<String>) {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE_LEN {
            let mut end = MAX_ERROR_MESSAGE_LEN;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        self.reply(id, &Reply::Error(ErrorReply::new(kind, message)))
    }

    /// Sends `Done` on success, the error otherwise.
    pub fn done_or_error(&self, id: u32, result: Result<(), ErrorReply>) {
        match result {
            Ok(()) => self.reply(id, &Reply::Done(Done::default())),
            Err(e) => self.reply(id, &Reply::Error(e)),
        }
    }
}
