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

/// Instantiates each listed test function once per backend compiled into this build.
#[macro_export]
macro_rules! backends {
    ($($test:ident),* $(,)?) => {
        mod thread {
            $(
                #[test]
                fn $test() {
                    super::$test(parallel::Backend::Thread)
                }
            )*
        }

        #[cfg(feature = "process")]
        mod process {
            $(
                #[test]
                fn $test() {
                    super::$test(parallel::Backend::Process)
                }
            )*
        }
    };
}
