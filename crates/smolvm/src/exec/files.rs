//! File transfers: uploads stream a local file (or bytes) in chunks; downloads land in a temp file beside
//! the target and are renamed into place when complete.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use smolvm_protocol::limits::{FILE_CHUNK_LEN, MAX_FILE_LEN};
use smolvm_protocol::{FileRead, FileWrite, FrameType, ProtocolError, Reply, Request};

use super::client::{unexpected, AgentClient};
use super::ExecError;

/// Longest wait for the next chunk of a download (the agent sends it as fast as the guest reads disk).
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

impl AgentClient {
    /// Copies the local file `local` to the absolute guest path `remote`, creating missing parent
    /// directories. `mode` defaults to the local file's permission bits. The guest file appears whole
    /// or not at all. Returns the bytes copied.
    pub fn upload_file(
        &self,
        local: &Path,
        remote: &str,
        mode: Option<u32>,
    ) -> Result<u64, ExecError> {
        let local_err = |action, source| ExecError::LocalIo {
            action,
            path: local.to_path_buf(),
            source,
        };
        let file = fs::File::open(local).map_err(|e| local_err("open", e))?;
        let meta = file.metadata().map_err(|e| local_err("stat", e))?;
        let mode = mode.unwrap_or(meta.permissions().mode() & 0o7777);
        self.upload(file, meta.len(), remote, mode)
            .map_err(|e| match e {
                ExecError::LocalIo { action, source, .. } => local_err(action, source),
                other => other,
            })
    }

    /// Writes `content` to the absolute guest path `remote` with `mode`, creating parent directories.
    pub fn write_file(&self, remote: &str, content: &[u8], mode: u32) -> Result<(), ExecError> {
        self.upload(content, content.len() as u64, remote, mode)
            .map(drop)
    }

    fn upload(
        &self,
        mut source: impl Read,
        size: u64,
        remote: &str,
        mode: u32,
    ) -> Result<u64, ExecError> {
        let req = FileWrite {
            path: remote.to_string(),
            mode,
            size,
            create_parents: true,
        };
        req.validate().map_err(ExecError::InvalidRequest)?;
        let mut call = self.start()?;
        call.send(&Request::FileWrite(req))?;
        let mut buf = vec![0u8; FILE_CHUNK_LEN];
        let mut sent: u64 = 0;
        while sent < size {
            // The agent may have failed early (no permission, no space): stop sending then.
            if let Some(reply) = call.try_recv_for(Duration::ZERO)? {
                return finish_upload(reply);
            }
            let want = (size - sent).min(FILE_CHUNK_LEN as u64) as usize;
            let n = match source.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(ExecError::LocalIo {
                        action: "read (file shrank during upload)",
                        path: remote.into(),
                        source: io::ErrorKind::UnexpectedEof.into(),
                    })
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(ExecError::LocalIo {
                        action: "read",
                        path: remote.into(),
                        source: e,
                    })
                }
            };
            call.send_raw(FrameType::FileData, buf[..n].to_vec())?;
            sent += n as u64;
        }
        let deadline = Instant::now() + self.request_timeout();
        let reply = call.recv(deadline, "file upload", self.request_timeout())?;
        finish_upload(reply)
    }

    /// Copies the guest file `remote` to the local path `local` (its directory must exist), with the
    /// guest file's permission bits (`rwx` for user, group, other; never setuid, setgid or sticky).
    /// Returns the bytes copied.
    pub fn download_file(&self, remote: &str, local: &Path) -> Result<u64, ExecError> {
        let local_err = |action, source| ExecError::LocalIo {
            action,
            path: local.to_path_buf(),
            source,
        };
        let name = local
            .file_name()
            .ok_or_else(|| local_err("name", io::ErrorKind::InvalidInput.into()))?;
        let tmp = local.with_file_name(format!(
            ".{}.smolvm-download-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let result = (|| {
            let mut file = fs::File::create(&tmp).map_err(|e| local_err("create", e))?;
            let (bytes, mode) = self.download(remote, |chunk| {
                file.write_all(chunk).map_err(|e| local_err("write", e))
            })?;
            file.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(|e| local_err("set mode of", e))?;
            drop(file);
            fs::rename(&tmp, local).map_err(|e| local_err("rename into", e))?;
            Ok(bytes)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Reads the guest file `remote` into memory (up to [`super::MAX_OUTPUT_LEN`] bytes).
    pub fn read_file(&self, remote: &str) -> Result<Vec<u8>, ExecError> {
        let mut content = Vec::new();
        self.download(remote, |chunk| {
            if content.len() + chunk.len() > super::MAX_OUTPUT_LEN {
                return Err(ExecError::OutputTooLarge {
                    limit: super::MAX_OUTPUT_LEN,
                });
            }
            content.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(content)
    }

    /// Streams a guest file into `sink`; returns (bytes, mode).
    fn download(
        &self,
        remote: &str,
        mut sink: impl FnMut(&[u8]) -> Result<(), ExecError>,
    ) -> Result<(u64, u32), ExecError> {
        let req = FileRead {
            path: remote.to_string(),
        };
        req.validate().map_err(ExecError::InvalidRequest)?;
        let mut call = self.start()?;
        call.send(&Request::FileRead(req))?;
        let mut received: u64 = 0;
        loop {
            let deadline = Instant::now() + CHUNK_TIMEOUT;
            match call.recv(deadline, "file download", CHUNK_TIMEOUT)? {
                Reply::FileData(d) => {
                    received += d.len() as u64;
                    if received > MAX_FILE_LEN {
                        return Err(ExecError::Protocol(ProtocolError::invalid(
                            "file data",
                            format!("more than {MAX_FILE_LEN} bytes"),
                        )));
                    }
                    sink(&d)?;
                }
                Reply::Done(done) => {
                    if done.bytes.is_some_and(|b| b != received) {
                        return Err(ExecError::Protocol(ProtocolError::invalid(
                            "file data",
                            format!("received {received} bytes, agent sent {:?}", done.bytes),
                        )));
                    }
                    // Only the permission bits: the guest decides the mode, and a setuid or setgid
                    // bit on a file the host (often root) writes would hand the guest a privileged
                    // program on the host.
                    return Ok((received, done.mode.unwrap_or(0o644) & 0o777));
                }
                Reply::Error(e) => {
                    return Err(ExecError::Agent {
                        kind: e.kind,
                        message: e.message,
                    })
                }
                other => return Err(unexpected(&other)),
            }
        }
    }
}

fn finish_upload(reply: Reply) -> Result<u64, ExecError> {
    match reply {
        Reply::Done(d) => Ok(d.bytes.unwrap_or(0)),
        Reply::Error(e) => Err(ExecError::Agent {
            kind: e.kind,
            message: e.message,
        }),
        other => Err(unexpected(&other)),
    }
}
