//! One suite, every backend: each test here is a function taking the [`Backend`] to build its
//! pool on, and `backends!` instantiates it once per backend so the backends cannot drift apart.

#[path = "../common/mod.rs"]
mod common;
mod support;

#[cfg(feature = "tokio")]
mod async_tasks;
mod cancellation;
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

/// Instantiates each listed test function once per backend compiled into this build. The tests
/// listed after `quietly:` make worker processes write to standard error on purpose (a provoked
/// panic): on the process backend each runs in a copy of this binary whose output is shown only if
/// it fails (`common::quietly`).
#[macro_export]
macro_rules! backends {
    ($($test:ident),* $(,)? $(; quietly: $($noisy:ident),+ $(,)?)?) => {
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
        }
    };
}
