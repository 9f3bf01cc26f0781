//! A recording fake of [`NetCommands`] for unit tests (compiled only for tests).

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::commands::{NetCapabilities, NetCommands};
use super::NetworkError;

/// One recorded call of [`RecordingCommands`]. File writes are recorded as program `write` with args
/// `[path, value]`, so the whole sequence of effects can be asserted in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Call {
    /// The program (or `write`).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// What was fed on stdin.
    pub stdin: Option<String>,
}

impl Call {
    /// `program arg1 arg2 ...`.
    pub(crate) fn line(&self) -> String {
        display_command(&self.program, &self.args)
    }
}

#[derive(Debug)]
struct Response {
    prefix: Vec<String>,
    once: bool,
    result: Result<String, String>,
}

/// A fake for unit tests: records every call and answers from scripted responses (the first matching
/// one-shot answer, else the first matching standing answer, matched by argv prefix; unmatched calls
/// succeed with empty output).
#[derive(Debug)]
pub(crate) struct RecordingCommands {
    calls: Mutex<Vec<Call>>,
    responses: Mutex<Vec<Response>>,
    files: Mutex<BTreeMap<String, String>>,
    caps: Mutex<NetCapabilities>,
    busy_ports: Mutex<Vec<u16>>,
    /// Argv prefixes at which the caller "dies" (the call panics), once each.
    deaths: Mutex<Vec<Vec<String>>>,
}

impl Default for RecordingCommands {
    fn default() -> Self {
        RecordingCommands {
            calls: Mutex::default(),
            responses: Mutex::default(),
            files: Mutex::default(),
            caps: Mutex::new(NetCapabilities::all()),
            busy_ports: Mutex::default(),
            deaths: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic in another test thread must not hide this test's result.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RecordingCommands {
    /// A fake with all capabilities and no scripted responses.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Answers calls whose argv (program first) starts with `prefix` with `stdout`, every time.
    pub(crate) fn respond(&self, prefix: &[&str], stdout: &str) {
        self.push(prefix, false, Ok(stdout.to_string()));
    }

    /// Like [`respond`](Self::respond), but only for the next matching call.
    pub(crate) fn respond_once(&self, prefix: &[&str], stdout: &str) {
        self.push(prefix, true, Ok(stdout.to_string()));
    }

    /// Makes calls matching `prefix` fail with `stderr` (once).
    pub(crate) fn fail_once(&self, prefix: &[&str], stderr: &str) {
        self.push(prefix, true, Err(stderr.to_string()));
    }

    /// Makes the next call matching `prefix` panic: the calling process "dies" at that point (tests
    /// catch the unwind and look at what the interrupted operation left).
    pub(crate) fn die_once(&self, prefix: &[&str]) {
        lock(&self.deaths).push(prefix.iter().map(|s| s.to_string()).collect());
    }

    fn push(&self, prefix: &[&str], once: bool, result: Result<String, String>) {
        lock(&self.responses).push(Response {
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
            once,
            result,
        });
    }

    /// Sets the content `read_file` returns for `path`.
    pub(crate) fn set_file(&self, path: &str, value: &str) {
        lock(&self.files).insert(path.to_string(), value.to_string());
    }

    /// Sets what `capabilities` returns.
    pub(crate) fn set_capabilities(&self, caps: NetCapabilities) {
        *lock(&self.caps) = caps;
    }

    /// Marks a loopback port as in use.
    pub(crate) fn set_port_busy(&self, port: u16) {
        lock(&self.busy_ports).push(port);
    }

    /// Every call so far.
    pub(crate) fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    /// Every call so far as `program arg ...` lines.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.calls().iter().map(Call::line).collect()
    }

    /// The stdin of every call of `program` (for nft: the scripts).
    pub(crate) fn stdins(&self, program: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.program == program)
            .filter_map(|c| c.stdin)
            .collect()
    }

    /// Forgets the recorded calls (responses stay).
    pub(crate) fn clear_calls(&self) {
        lock(&self.calls).clear();
    }
}

impl NetCommands for RecordingCommands {
    fn run(
        &self,
        program: &str,
        args: &[String],
        stdin: Option<&str>,
    ) -> Result<String, NetworkError> {
        lock(&self.calls).push(Call {
            program: program.to_string(),
            args: args.to_vec(),
            stdin: stdin.map(str::to_string),
        });
        let argv: Vec<&str> = std::iter::once(program)
            .chain(args.iter().map(String::as_str))
            .collect();
        let dies = {
            let mut deaths = lock(&self.deaths);
            let hit = deaths
                .iter()
                .position(|d| argv.starts_with(&d.iter().map(String::as_str).collect::<Vec<_>>()));
            hit.map(|i| deaths.remove(i))
        };
        if dies.is_some() {
            panic!("simulated death at `{}`", display_command(program, args));
        }
        let mut responses = lock(&self.responses);
        let matches = |r: &Response| {
            argv.starts_with(&r.prefix.iter().map(String::as_str).collect::<Vec<_>>())
        };
        // One-shot answers win over standing ones, so a test can override a standing answer once.
        let found = responses
            .iter()
            .position(|r| r.once && matches(r))
            .or_else(|| responses.iter().position(matches));
        let result = match found {
            Some(i) if responses[i].once => responses.remove(i).result,
            Some(i) => responses[i].result.clone(),
            None => Ok(String::new()),
        };
        result.map_err(|stderr| {
            NetworkError::Tool(crate::host::ToolError::Failed {
                program: program.to_string(),
                args: args.to_vec(),
                status: "exit status: 1".into(),
                stderr,
                hint: String::new(),
            })
        })
    }

    fn read_file(&self, path: &str) -> Result<Option<String>, NetworkError> {
        Ok(lock(&self.files).get(path).cloned())
    }

    fn write_file(&self, path: &str, value: &str) -> Result<(), NetworkError> {
        lock(&self.calls).push(Call {
            program: "write".into(),
            args: vec![path.to_string(), value.to_string()],
            stdin: None,
        });
        lock(&self.files).insert(path.to_string(), value.to_string());
        Ok(())
    }

    fn capabilities(&self) -> NetCapabilities {
        *lock(&self.caps)
    }

    fn loopback_port_in_use(&self, port: u16) -> bool {
        lock(&self.busy_ports).contains(&port)
    }
}

/// `program arg1 arg2` for messages.
fn display_command(program: &str, args: &[String]) -> String {
    std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}
