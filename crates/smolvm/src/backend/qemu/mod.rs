//! QEMU backend (`qemu-system-x86_64 -M microvm`): argv builder, QMP client, launch.

/// Errors of the QEMU backend.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// Starting the QEMU process failed.
    #[error("could not start {binary}")]
    Spawn {
        /// The binary that was run.
        binary: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
