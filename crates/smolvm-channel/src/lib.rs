//! smolvm's channel owner: the one process that holds a QEMU VM's agent connection and serves any
//! number of local clients over it.
//!
//! Under QEMU the host side of the agent channel is a virtio-serial chardev socket that accepts one
//! connection at a time, so without an owner a second program (or a second `smolvm exec`) waits for the
//! first to finish. The protocol already multiplexes requests by id on one connection; this crate
//! extends that across processes: the owner greets the agent once, then forwards each client's frames
//! under fresh request ids (see [`mux`]).
//!
//! The library starts the owner (the `smolvm-channel` binary, embedded in the library like the guest
//! agent) right after the VMM, as a detached process of its own: it outlives the process that started
//! the VM, its crash does not touch the VM (the next client, or `reconcile`, starts a new one), and it
//! exits by itself when the VMM's end of the channel closes.

pub mod greeting;
pub mod mux;
pub mod owner;

#[doc(hidden)]
pub mod fuzzing;
