//! What a finished command returns.

use super::Stream;

/// A finished command with its raw output bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit code; 128 + N if killed by signal N.
    pub exit_code: i32,
    /// Raw stdout.
    pub stdout: Vec<u8>,
    /// Raw stderr.
    pub stderr: Vec<u8>,
}

/// A finished command, as the spec's `CommandResult`: output as text.
///
/// Output is decoded as UTF-8; invalid sequences become U+FFFD (lossy). Use [`CommandOutput`] (from
/// `exec_raw`) for binary output.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommandResult {
    /// Exit code; 128 + N if killed by signal N.
    pub exit_code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CommandResult {
    /// True if the command exited with code 0.
    pub fn ok(&self) -> bool {
        self.exit_code == 0
    }

    /// Stdout with surrounding whitespace trimmed (the spec's `result.output`).
    pub fn output(&self) -> &str {
        self.stdout.trim()
    }
}

fn lossy(bytes: Vec<u8>) -> String {
    // No copy when the output is valid UTF-8 (the usual case).
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

impl CommandOutput {
    /// True if the command exited with code 0.
    pub fn ok(&self) -> bool {
        self.exit_code == 0
    }

    /// The bytes of one stream.
    pub fn stream(&self, stream: Stream) -> &[u8] {
        match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        }
    }
}

impl From<CommandOutput> for CommandResult {
    fn from(o: CommandOutput) -> Self {
        CommandResult {
            exit_code: o.exit_code,
            stdout: lossy(o.stdout),
            stderr: lossy(o.stderr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_trims_and_lossy_decodes() {
        let r: CommandResult = CommandOutput {
            exit_code: 0,
            stdout: b"  hi\n".to_vec(),
            stderr: vec![0xff, b'x'],
        }
        .into();
        assert!(r.ok());
        assert_eq!(r.output(), "hi");
        assert_eq!(r.stderr, "\u{fffd}x");
    }
}
