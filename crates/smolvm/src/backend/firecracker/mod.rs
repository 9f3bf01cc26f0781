//! Firecracker backend: a small HTTP/1.1 client over the API Unix socket and typed request bodies.

/// Errors of the Firecracker backend.
#[derive(Debug, thiserror::Error)]
pub enum FirecrackerError {
    /// Starting the Firecracker process failed.
    #[error("could not start {binary}")]
    Spawn {
        /// The binary that was run.
        binary: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
