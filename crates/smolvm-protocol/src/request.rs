//! Typed views of frames: [`Request`] is everything the host sends, [`Reply`] everything the agent sends.
//! Parsing a frame checks its direction, its JSON and the message's rules; it never panics.

use crate::frame::{Frame, FrameType, ProtocolError};
use crate::limits::{FILE_CHUNK_LEN, OUTPUT_CHUNK_LEN, STDIN_CHUNK_LEN};
use crate::messages::{
    Done, EnvSet, EnvUnset, EnvVars, ErrorReply, ExecStart, ExitStatus, FileRead, FileWrite, Hello,
    Ready,
};

/// A frame the host sends to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Greet the agent (connection level, request id 0).
    Hello(Hello),
    /// Start a command.
    Exec(ExecStart),
    /// Stdin bytes for a running command; empty closes its stdin.
    Stdin(Vec<u8>),
    /// Abandon the request.
    Cancel,
    /// Start a file upload.
    FileWrite(FileWrite),
    /// Download a file.
    FileRead(FileRead),
    /// Content of an upload.
    FileData(Vec<u8>),
    /// Set persisted environment variables.
    EnvSet(EnvSet),
    /// Remove persisted environment variables.
    EnvUnset(EnvUnset),
    /// List persisted environment variables.
    EnvList,
    /// Power the guest off.
    PowerOff,
    /// Liveness check.
    Ping,
    /// Take on a new identity (after a restore from a snapshot).
    Identity(crate::Identity),
}

/// A frame the agent sends to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The agent is up (connection level, request id 0).
    Ready(Ready),
    /// Command stdout bytes.
    Stdout(Vec<u8>),
    /// Command stderr bytes.
    Stderr(Vec<u8>),
    /// The command ended.
    Exit(ExitStatus),
    /// Downloaded file content.
    FileData(Vec<u8>),
    /// Persisted environment variables.
    EnvVars(EnvVars),
    /// The request succeeded.
    Done(Done),
    /// The request failed.
    Error(ErrorReply),
}

fn data(what: &'static str, payload: Vec<u8>, limit: usize) -> Result<Vec<u8>, ProtocolError> {
    if payload.len() > limit {
        return Err(ProtocolError::invalid(
            what,
            format!("chunk of {} bytes exceeds {limit}", payload.len()),
        ));
    }
    Ok(payload)
}

impl Request {
    /// Interprets a frame received by the agent: checks direction, JSON and the message's rules.
    pub fn from_frame(frame: Frame) -> Result<Request, ProtocolError> {
        let req = match frame.frame_type {
            FrameType::Hello => Request::Hello(frame.parse_json("hello")?),
            FrameType::Exec => {
                let m: ExecStart = frame.parse_json("exec")?;
                m.validate()?;
                Request::Exec(m)
            }
            FrameType::Stdin => Request::Stdin(data("stdin", frame.payload, STDIN_CHUNK_LEN)?),
            FrameType::Cancel => Request::Cancel,
            FrameType::FileWrite => {
                let m: FileWrite = frame.parse_json("file write")?;
                m.validate()?;
                Request::FileWrite(m)
            }
            FrameType::FileRead => {
                let m: FileRead = frame.parse_json("file read")?;
                m.validate()?;
                Request::FileRead(m)
            }
            FrameType::FileData => {
                Request::FileData(data("file data", frame.payload, FILE_CHUNK_LEN)?)
            }
            FrameType::EnvSet => {
                let m: EnvSet = frame.parse_json("env set")?;
                m.validate()?;
                Request::EnvSet(m)
            }
            FrameType::EnvUnset => {
                let m: EnvUnset = frame.parse_json("env unset")?;
                m.validate()?;
                Request::EnvUnset(m)
            }
            FrameType::EnvList => Request::EnvList,
            FrameType::PowerOff => Request::PowerOff,
            FrameType::Ping => Request::Ping,
            FrameType::Identity => {
                let m: crate::Identity = frame.parse_json("identity")?;
                m.validate()?;
                Request::Identity(m)
            }
            t @ (FrameType::Ready
            | FrameType::Stdout
            | FrameType::Stderr
            | FrameType::Exit
            | FrameType::EnvVars
            | FrameType::Done
            | FrameType::Error) => return Err(ProtocolError::Unexpected { frame_type: t }),
        };
        Ok(req)
    }

    /// Encodes the request as a frame for `request_id`.
    pub fn to_frame(&self, request_id: u32) -> Result<Frame, ProtocolError> {
        let raw = |t, p: &Vec<u8>| Ok(Frame::new(t, request_id, p.clone()));
        let empty = |t| Ok(Frame::new(t, request_id, Vec::new()));
        match self {
            Request::Hello(m) => Frame::json(FrameType::Hello, request_id, m),
            Request::Exec(m) => Frame::json(FrameType::Exec, request_id, m),
            Request::Stdin(p) => raw(FrameType::Stdin, p),
            Request::Cancel => empty(FrameType::Cancel),
            Request::FileWrite(m) => Frame::json(FrameType::FileWrite, request_id, m),
            Request::FileRead(m) => Frame::json(FrameType::FileRead, request_id, m),
            Request::FileData(p) => raw(FrameType::FileData, p),
            Request::EnvSet(m) => Frame::json(FrameType::EnvSet, request_id, m),
            Request::EnvUnset(m) => Frame::json(FrameType::EnvUnset, request_id, m),
            Request::EnvList => empty(FrameType::EnvList),
            Request::PowerOff => empty(FrameType::PowerOff),
            Request::Ping => empty(FrameType::Ping),
            Request::Identity(m) => Frame::json(FrameType::Identity, request_id, m),
        }
    }
}

impl Reply {
    /// Interprets a frame received by the host.
    pub fn from_frame(frame: Frame) -> Result<Reply, ProtocolError> {
        let reply = match frame.frame_type {
            FrameType::Ready => Reply::Ready(frame.parse_json("ready")?),
            FrameType::Stdout => Reply::Stdout(data("stdout", frame.payload, OUTPUT_CHUNK_LEN)?),
            FrameType::Stderr => Reply::Stderr(data("stderr", frame.payload, OUTPUT_CHUNK_LEN)?),
            FrameType::Exit => Reply::Exit(frame.parse_json("exit")?),
            FrameType::FileData => {
                Reply::FileData(data("file data", frame.payload, FILE_CHUNK_LEN)?)
            }
            FrameType::EnvVars => Reply::EnvVars(frame.parse_json("env vars")?),
            FrameType::Done => Reply::Done(frame.parse_json("done")?),
            FrameType::Error => Reply::Error(frame.parse_json("error")?),
            t @ (FrameType::Hello
            | FrameType::Exec
            | FrameType::Stdin
            | FrameType::Cancel
            | FrameType::FileWrite
            | FrameType::FileRead
            | FrameType::EnvSet
            | FrameType::EnvUnset
            | FrameType::EnvList
            | FrameType::PowerOff
            | FrameType::Ping
            | FrameType::Identity) => return Err(ProtocolError::Unexpected { frame_type: t }),
        };
        Ok(reply)
    }

    /// Encodes the reply as a frame for `request_id`.
    pub fn to_frame(&self, request_id: u32) -> Result<Frame, ProtocolError> {
        let raw = |t, p: &Vec<u8>| Ok(Frame::new(t, request_id, p.clone()));
        match self {
            Reply::Ready(m) => Frame::json(FrameType::Ready, request_id, m),
            Reply::Stdout(p) => raw(FrameType::Stdout, p),
            Reply::Stderr(p) => raw(FrameType::Stderr, p),
            Reply::Exit(m) => Frame::json(FrameType::Exit, request_id, m),
            Reply::FileData(p) => raw(FrameType::FileData, p),
            Reply::EnvVars(m) => Frame::json(FrameType::EnvVars, request_id, m),
            Reply::Done(m) => Frame::json(FrameType::Done, request_id, m),
            Reply::Error(m) => Frame::json(FrameType::Error, request_id, m),
        }
    }
}
