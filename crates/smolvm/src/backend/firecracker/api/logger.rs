//! `PUT /logger` (definition `Logger`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ApiRequest;
use crate::backend::firecracker::http::Method;

/// Firecracker's own log. Without it, Firecracker logs to its standard output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Logger {
    /// Level (case-insensitive on Firecracker's side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// File or named pipe for the log (older releases do not create it: it should exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Print the level of each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Print the source file and line of each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log messages of this module path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// The `level` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warning,
    /// Informational messages and above.
    Info,
    /// Debug messages and above.
    Debug,
    /// Everything.
    Trace,
    /// Nothing.
    Off,
}

impl ApiRequest for Logger {
    const METHOD: Method = Method::Put;
    fn path(&self) -> String {
        "/logger".to_string()
    }
}
