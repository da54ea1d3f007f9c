//! The runtime of [`parallel`](https://docs.rs/parallel): tasks, their registry, the per-worker
//! [`Environment`], pools, handles and errors, and the backends that run tasks.
//!
//! Users depend on the `parallel` facade, which re-exports this crate's public items together with
//! the `#[task]` attribute; this crate is what the facade and the generated code stand on.

#![deny(unsafe_code)]

// A measuring allocator for tests, and the process backend's platform layer (`process/sys.rs`)
// are the only `unsafe` code.
#[cfg(test)]
#[allow(unsafe_code)]
mod alloc_probe;
mod backend;
mod builder;
#[cfg(feature = "cluster")]
mod cluster;
mod completed;
mod engine;
mod environment;
mod error;
mod handle;
mod job;
mod ledger;
mod map;
mod never;
mod policy;
mod pool;
#[cfg(process_backend)]
mod process;
// Under loom the process backend is not built (`build.rs`), but the protocols of the memory it
// shares with its workers are, to be model-checked over heap memory (see `sync.rs`).
#[cfg(all(test, loom, unix, feature = "process"))]
#[allow(dead_code)]
mod process {
    mod claim;
    mod lead;
    mod protocol;
    mod ring;
}
mod progress;
mod registry;
mod remote_error;
#[cfg(feature = "tokio")]
mod runtime;
mod stats;
mod sync;
mod task;
mod thread;
mod timer;
mod unwind;
mod value;
mod wire_value;

pub use backend::Backend;
pub use builder::PoolBuilder;
#[cfg(feature = "cluster")]
pub use cluster::serve;
pub use completed::{as_completed, AsCompleted};
pub use environment::Environment;
pub use error::{Error, TaskError};
pub use handle::TaskHandle;
pub use map::{Map, MapUnordered};
pub use never::Never;
pub use policy::Policy;
pub use pool::{default_pool, Pool};
pub use progress::{Progress, ProgressReader};
pub use registry::registered_tasks;
pub use remote_error::RemoteError;
pub use stats::PoolStats;
pub use task::Task;

#[doc(hidden)]
pub mod __private;

/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[cfg(all(feature = "fuzzing", process_backend))]
#[doc(hidden)]
pub mod __fuzz {
    pub use crate::process::fuzz::{
        memory_files, pool_side, pool_side_values, reply_frame, rings, value, worker_side,
    };
}

#[cfg(test)]
#[global_allocator]
static ALLOCATOR: alloc_probe::Probe = alloc_probe::Probe;
