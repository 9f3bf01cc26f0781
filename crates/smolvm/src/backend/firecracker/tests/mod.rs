//! Tests of the Firecracker backend: typed bodies and requests checked against the API definition,
//! the HTTP client and the configuration sequence against an in-process fake API server, the vsock
//! handshake against a fake socket, the launch path against a fake `firecracker` process, and (only
//! where a real binary exists) the real thing.

mod api_tests;
mod configure_tests;
mod fake_server;
mod http_tests;
mod jail_tests;
mod jailed_process_tests;
mod process_tests;
mod real_binary;
mod schema;
mod snapshot_tests;
