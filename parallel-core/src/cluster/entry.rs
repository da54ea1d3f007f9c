//! The serving entry: a constructor that runs before `main` in every program that links
//! `parallel` with the `cluster` feature. With `PARALLEL_SERVE=url` in its environment the
//! process serves its tasks (see [`serve`](super::serve)) and exits when it is told to stop;
//! `main` never runs. Without it, the constructor returns at once. A process worker of a serving
//! process inherits the variable and has the worker marker too: the worker entry serves it.
//!
//! Building a pool calls [`anchor`], so that the linker keeps this module's object file and the
//! constructor with it.

use super::serve::SERVE_VARIABLE;

/// Called when a pool is built, so that the linker keeps the constructor below.
#[inline(never)]
pub(crate) fn anchor() -> bool {
    std::hint::black_box(std::env::var_os(SERVE_VARIABLE).is_some())
}

/// Serves and exits if `PARALLEL_SERVE` says so; returns otherwise.
fn enter() {
    let Some(url) = std::env::var_os(SERVE_VARIABLE) else {
        return;
    };
    if std::env::var_os("PARALLEL_WORKER").is_some() {
        return;
    }
    let code = match url.to_str().map(super::serve) {
        Some(Ok(())) => 0,
        Some(Err(error)) => {
            eprintln!("parallel: this process cannot serve tasks: {error}");
            1
        }
        None => {
            eprintln!("parallel: {SERVE_VARIABLE} is not UTF-8");
            1
        }
    };
    std::process::exit(code);
}

// SAFETY (of running before `main`): the constructor reads environment variables while the
// process is single-threaded, then either returns or serves and exits without returning; what
// it starts (a tokio runtime, threads, sockets) needs nothing that `main` sets up.
#[allow(unsafe_code)]
#[ctor::ctor(unsafe)]
fn parallel_serve_entry() {
    enter();
}
