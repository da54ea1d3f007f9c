//! The cluster backend: the program's tasks run on serving copies of the same program, on this
//! machine or others, through a NATS JetStream server (feature `cluster`).
//!
//! A caller's pool ([`caller`]) publishes each task into the namespace's stream under its
//! fingerprint; serving processes ([`serve`]) take the tasks they have, run them on their slots
//! ([`slots`]) and send the replies to the caller's own subject. [`wire`] is what they say to
//! each other; [`connect`] reaches the server. `README.md` beside this file has the life of a
//! task, the guarantees and the faults.

mod caller;
mod connect;
mod entry;
mod payloads;
mod serve;
pub(crate) mod slots;
pub(crate) mod wire;

pub(crate) use caller::{cancels_together, ClusterBackend};
pub(crate) use connect::Target;
pub(crate) use entry::anchor;
pub use serve::serve;
