//! File transfers. Uploads go to a temp file beside the target and are renamed into place once all
//! `size` bytes arrived, so a cancelled or failed upload never leaves a partial file at the path.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use smolvm_protocol::limits::{FILE_CHUNK_LEN, MAX_FILE_LEN};
use smolvm_protocol::{Done, ErrorKind, ErrorReply, FileRead, FileWrite, Frame, FrameType, Reply};

use super::env::io_error;
use super::{Ctx, Inbound};

/// An upload whose host sends nothing for this long is abandoned (the host client always sends the
/// whole file right after the request).
const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Receives an upload and answers `Done { bytes }` or `Error`.
pub(crate) fn write(ctx: Ctx, req: FileWrite) {
    let path = PathBuf::from(&req.path);
    let result = receive(&ctx, &req, &path);
    match result {
        Ok(()) => ctx.out.reply(
            ctx.id,
            &Reply::Done(Done {
                bytes: Some(req.size),
                mode: None,
            }),
        ),
        Err(e) => ctx.out.reply(ctx.id, &Reply::Error(e)),
    };
}

fn receive(ctx: &Ctx, req: &FileWrite, path: &Path) -> Result<(), ErrorReply> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(ErrorReply::new(
            ErrorKind::BadRequest,
            format!("{} names no file", path.display()),
        ));
    };
    if req.create_parents {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| io_error("create directory", dir, &e))?;
    }
    let tmp = dir.join(format!(
        ".{}.smolvm-upload-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        ctx.id
    ));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_error("create", &tmp, &e))?;
    let result = (|| {
        let mut received: u64 = 0;
        while received < req.size {
            let chunk = match ctx.inbox.recv_timeout(UPLOAD_IDLE_TIMEOUT) {
                Ok(Inbound::FileData(d)) => d,
                Ok(Inbound::Cancel) => {
                    return Err(ErrorReply::new(ErrorKind::Cancelled, "upload cancelled"))
                }
                Ok(Inbound::Abort(e)) => return Err(e),
                Ok(Inbound::Stdin(_) | Inbound::Finished(_)) => continue,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    return Err(ErrorReply::new(
                        ErrorKind::Io,
                        format!("upload stalled at {received} of {} bytes", req.size),
                    ))
                }
            };
            received += chunk.len() as u64;
            if received > req.size {
                return Err(ErrorReply::new(
                    ErrorKind::LimitExceeded,
                    format!("more data than the announced {} bytes", req.size),
                ));
            }
            file.write_all(&chunk)
                .map_err(|e| io_error("write", &tmp, &e))?;
        }
        // Exact mode regardless of the umask.
        file.set_permissions(fs::Permissions::from_mode(req.mode & 0o7777))
            .map_err(|e| io_error("set mode of", &tmp, &e))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| io_error("rename into", path, &e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Sends a regular file as `FileData` chunks, then `Done { bytes, mode }`.
pub(crate) fn read(ctx: Ctx, req: FileRead) {
    if let Err(e) = send_file(&ctx, &req) {
        ctx.out.reply(ctx.id, &Reply::Error(e));
    }
}

fn send_file(ctx: &Ctx, req: &FileRead) -> Result<(), ErrorReply> {
    let path = Path::new(&req.path);
    let mut file = fs::File::open(path).map_err(|e| io_error("open", path, &e))?;
    let meta = file.metadata().map_err(|e| io_error("stat", path, &e))?;
    if !meta.is_file() {
        return Err(ErrorReply::new(
            ErrorKind::BadRequest,
            format!("{} is not a regular file", path.display()),
        ));
    }
    if meta.len() > MAX_FILE_LEN {
        return Err(ErrorReply::new(
            ErrorKind::LimitExceeded,
            format!(
                "{} has {} bytes, over {MAX_FILE_LEN}",
                path.display(),
                meta.len()
            ),
        ));
    }
    let mut buf = vec![0u8; FILE_CHUNK_LEN];
    let mut total: u64 = 0;
    loop {
        match ctx.inbox.try_recv() {
            Ok(Inbound::Cancel) => {
                return Err(ErrorReply::new(ErrorKind::Cancelled, "download cancelled"))
            }
            Ok(Inbound::Abort(e)) => return Err(e),
            _ => {}
        }
        let n = file
            .read(&mut buf)
            .map_err(|e| io_error("read", path, &e))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        // The file may grow while being read; the limit still holds.
        if total > MAX_FILE_LEN {
            return Err(ErrorReply::new(
                ErrorKind::LimitExceeded,
                format!("{} grew over {MAX_FILE_LEN} bytes", path.display()),
            ));
        }
        if !ctx
            .out
            .send(&Frame::new(FrameType::FileData, ctx.id, buf[..n].to_vec()))
        {
            return Ok(()); // Nobody listens any more.
        }
    }
    ctx.out.reply(
        ctx.id,
        &Reply::Done(Done {
            bytes: Some(total),
            mode: Some(meta.mode() & 0o7777),
        }),
    );
    Ok(())
}
