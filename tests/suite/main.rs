//! One suite, every backend: each test here is a function taking the [`Backend`] to build its
//! pool on, and `backends!` instantiates it once per backend so the backends cannot drift apart.

#[path = "../common/mod.rs"]
mod common;
mod support;

#[cfg(feature = "tokio")]
mod async_tasks;
mod cancellation;
#[cfg(all(feature = "cluster", feature = "process"))]
mod cluster;
mod environment;
mod errors;
mod lifecycle;
mod local_tasks;
mod map;
mod nesting;
mod policies;
mod progress;
mod results;
mod stats;
mod unordered;

/// Instantiates each listed test function once per backend compiled into this build: threads,
/// worker processes (feature `process`) and the cluster (features `cluster` and `process`: serving
/// processes with worker-process slots, `cluster.rs`).
///
/// The tests listed after `quietly:` make worker processes write to standard error on purpose (a
/// provoked panic): on the process backend each runs in a copy of this binary whose output is
/// shown only if it fails (`common::quietly`); on the cluster that output goes to the serving
/// process's log. The tests listed after `not_on_cluster:` run on threads and processes only,
/// each with the reason it means nothing on the cluster; those after `cluster_faults:` run
/// there too but are ignored, each with the fault that fails it.
#[macro_export]
macro_rules! backends {
    (
        $($test:ident),* $(,)?
        $(; quietly: $($noisy:ident),+ $(,)?)?
        $(; not_on_cluster: $($local:ident: $why:literal),+ $(,)?)?
        $(; cluster_faults: $($fault:ident: $what:literal),+ $(,)?)?
    ) => {
        mod thread {
            $(
                #[test]
                fn $test() {
                    super::$test(parallel::Backend::Thread)
                }
            )*
            $($(
                #[test]
                fn $noisy() {
                    super::$noisy(parallel::Backend::Thread)
                }
            )+)?
            $($(
                #[test]
                fn $local() {
                    super::$local(parallel::Backend::Thread)
                }
            )+)?
            $($(
                #[test]
                fn $fault() {
                    super::$fault(parallel::Backend::Thread)
                }
            )+)?
        }

        #[cfg(feature = "process")]
        mod process {
            $(
                #[test]
                fn $test() {
                    super::$test(parallel::Backend::Process)
                }
            )*
            $($(
                #[test]
                fn $noisy() {
                    $crate::common::quietly(module_path!(), stringify!($noisy), || {
                        super::$noisy(parallel::Backend::Process)
                    })
                }
            )+)?
            $($(
                #[test]
                fn $local() {
                    super::$local(parallel::Backend::Process)
                }
            )+)?
            $($(
                #[test]
                fn $fault() {
                    super::$fault(parallel::Backend::Process)
                }
            )+)?
        }

        #[cfg(all(feature = "cluster", feature = "process"))]
        mod cluster {
            $(
                #[test]
                fn $test() {
                    $crate::cluster::run(module_path!(), stringify!($test), || {
                        super::$test(parallel::Backend::Cluster)
                    })
                }
            )*
            $($(
                #[test]
                fn $noisy() {
                    $crate::cluster::run(module_path!(), stringify!($noisy), || {
                        super::$noisy(parallel::Backend::Cluster)
                    })
                }
            )+)?
            $($(
                #[test]
                #[ignore = $what]
                fn $fault() {
                    $crate::cluster::run(module_path!(), stringify!($fault), || {
                        super::$fault(parallel::Backend::Cluster)
                    })
                }
            )+)?
        }
    };
}
