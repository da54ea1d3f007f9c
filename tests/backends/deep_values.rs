//! Values nested far deeper than real data (20 000 levels): on the process backend a bounded
//! `Serialization` error that names the limit, as output, error or argument, never a crash of the
//! caller or of the worker, and the pool keeps serving; on the thread backend they are handed
//! over as they are.

use crate::common;

use common::Nest;
use parallel::{task, Backend, Pool, TaskError};

/// How deep the values of these tests nest: far beyond the process backend's limit, and beyond
/// what the 2 MiB stack of a thread that decoded them without a limit survives (4 000 aborted
/// the whole test program before the limit existed).
const DEEP: u32 = 20_000;

/// The limit the process backend puts on a task value's nesting, as its errors name it.
#[cfg(feature = "process")]
const LIMIT: &str = "limit of 256 levels";

#[task]
fn build(depth: u32) -> Nest {
    Nest::of_depth(depth)
}

#[task]
fn build_error(depth: u32) -> Result<u8, Nest> {
    Err(Nest::of_depth(depth))
}

#[task]
fn measure(nest: Nest) -> u32 {
    nest.depth()
}

fn pool(backend: Backend) -> Pool {
    Pool::builder().backend(backend).workers(1).build().expect("the pool builds")
}

#[cfg(feature = "process")]
fn assert_too_deep<T: std::fmt::Debug, E: std::fmt::Debug>(
    result: Result<T, TaskError<E>>,
    which: &str,
) {
    match result {
        Err(TaskError::Serialization { value, message, .. }) => {
            assert_eq!(value, which);
            assert!(message.contains(LIMIT), "{message}");
        }
        other => panic!("expected a Serialization error for the {which}, got {other:?}"),
    }
}

#[cfg(feature = "process")]
#[test]
fn too_deep_a_value_is_a_serialization_error_and_the_pool_keeps_serving() {
    let pool = pool(Backend::Process);
    assert_too_deep(build::dispatch_on(&pool, DEEP).join(), "output");
    assert_too_deep(build_error::dispatch_on(&pool, DEEP).join(), "error");
    // Refused by the caller's side before it reaches a worker.
    assert_too_deep(measure::dispatch_on(&pool, Nest::of_depth(DEEP)).join(), "arguments");
    // The limit is exact: 256 levels of output cross, 257 do not; an argument sits one level
    // down, inside the task's own struct.
    assert_eq!(build::dispatch_on(&pool, 256).join().map(|nest| nest.depth()), Ok(256));
    assert_too_deep(build::dispatch_on(&pool, 257).join(), "output");
    assert_eq!(measure::dispatch_on(&pool, Nest::of_depth(255)).join(), Ok(255));
    assert_too_deep(measure::dispatch_on(&pool, Nest::of_depth(256)).join(), "arguments");
    // Still serving, with the same worker: none of the above killed it.
    assert_eq!(build::dispatch_on(&pool, 3).join(), Ok(Nest::of_depth(3)));
    assert_eq!(pool.stats().restarts, 0);
}

#[test]
fn deep_values_cross_the_thread_backend_as_they_are() {
    let pool = pool(Backend::Thread);
    assert_eq!(build::dispatch_on(&pool, DEEP).join().map(|nest| nest.depth()), Ok(DEEP));
    assert_eq!(measure::dispatch_on(&pool, Nest::of_depth(DEEP)).join(), Ok(DEEP));
    match build_error::dispatch_on(&pool, DEEP).join() {
        Err(TaskError::Failed(nest)) => assert_eq!(nest.depth(), DEEP),
        other => panic!("{other:?}"),
    }
}
