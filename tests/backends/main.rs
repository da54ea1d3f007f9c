//! The backends at their edges and faults, one test binary for what were eight: each test binary
//! links the whole library (with every feature, the cluster's client too), so small files share
//! one. Each module is the file it was, with its own tasks and tests; the registry names a task by
//! its module path, so no two collide.
//!
//! Only files that can share a process are here: none sets a process-wide variable, installs a
//! global subscriber, counts the process's descriptors, children or threads, needs the registry
//! to itself, or declares tasks at the crate root to test what `#[task]` makes of that. The files
//! that do stay binaries of their own (`default_pool.rs`, `panic_backtrace.rs`, `observability.rs`,
//! `duplicate_names.rs`, `duplicate_local_names.rs`, `task_attribute.rs`, `process_backend.rs`,
//! `worker_hygiene.rs`, `parent_death.rs`, `settings.rs`, `chaos.rs`, `thread_stress.rs`).

#[path = "../common/mod.rs"]
mod common;

mod deep_values;
mod design_snippet;
mod nested_waits;
mod process_edges;
mod process_faults;
mod process_large;
mod process_pipeline;
mod thread_backend;
mod value_fidelity;
