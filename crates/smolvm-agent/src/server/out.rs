//! The channel's writer: one lock so frames never interleave, and epochs so that no reply of an earlier
//! host's request reaches a later host.
//!
//! Every `Hello` with a new nonce starts an epoch. A request's [`Out`] carries the epoch it was started
//! in; once a newer one began, its frames are dropped (checked under the lock, so a frame waiting for
//! the lock while the new host was greeted is dropped too). What may still reach the new host ahead of
//! its `Ready` is at most the one write that was under way (a blocked write while no host was connected);
//! the host skips such bytes up to the `SYNC` marker.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use smolvm_protocol::{Done, ErrorKind, ErrorReply, Frame, Reply};

/// Longest message in an `Error` frame; longer ones are cut (they are for humans).
const MAX_ERROR_MESSAGE_LEN: usize = 16 * 1024;

/// The channel's writing half, shared by every epoch.
pub(crate) struct Writer {
    file: Mutex<WriterState>,
    epoch: AtomicU64,
    closed: AtomicBool,
}

struct WriterState {
    file: File,
    /// The epoch in which a write failed: a partial frame broke the stream, nothing more is written in
    /// it (the next `Hello` starts over with a `SYNC`).
    broken: Option<u64>,
}

impl Writer {
    /// Wraps the channel.
    pub fn new(file: File) -> Arc<Writer> {
        Arc::new(Writer {
            file: Mutex::new(WriterState { file, broken: None }),
            epoch: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        })
    }

    /// A handle for the current epoch.
    pub fn current(self: &Arc<Self>) -> Arc<Out> {
        Arc::new(Out {
            writer: Arc::clone(self),
            epoch: self.epoch.load(Ordering::SeqCst),
        })
    }

    /// Starts a new epoch (a new host): every older handle stops writing. Returns the new handle.
    pub fn next_epoch(self: &Arc<Self>) -> Arc<Out> {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        Arc::new(Out {
            writer: Arc::clone(self),
            epoch,
        })
    }

    /// Nothing is written after this (the connection ended).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

/// Writes on behalf of one epoch: the inline answers of the reader thread, or one request's frames.
pub(crate) struct Out {
    writer: Arc<Writer>,
    epoch: u64,
}

impl Out {
    /// True while this handle's frames still go out (no newer host, connection not closed).
    pub fn is_live(&self) -> bool {
        !self.writer.closed.load(Ordering::SeqCst)
            && self.writer.epoch.load(Ordering::SeqCst) == self.epoch
    }

    /// Writes raw bytes (whole frames, or `SYNC` + a frame) in one `write_all`; false if this handle is
    /// stale or the write failed (which ends writing in this epoch: a partial frame broke the stream).
    pub fn send_bytes(&self, bytes: &[u8]) -> bool {
        if !self.is_live() {
            return false;
        }
        let Ok(mut w) = self.writer.file.lock() else {
            return false;
        };
        // Checked again under the lock: a new host may have been greeted while this thread waited.
        if !self.is_live() || w.broken == Some(self.epoch) {
            return false;
        }
        if w.file.write_all(bytes).is_err() {
            w.broken = Some(self.epoch);
            return false;
        }
        true
    }

    /// Sends one frame; false if it was dropped.
    pub fn send(&self, frame: &Frame) -> bool {
        match frame.encode() {
            Ok(bytes) => self.send_bytes(&bytes),
            Err(_) => false,
        }
    }

    /// Sends a reply frame (dropped if nobody listens for it any more).
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
