//! With `RUST_BACKTRACE` set, a panicking task's backtrace reaches the caller. Its own binary:
//! the standard library reads the variable once per process.

use parallel::{task, Backend, Pool, TaskError};

#[task]
fn deep_failure() -> u8 {
    inner_frame()
}

#[inline(never)]
fn inner_frame() -> u8 {
    panic!("deep down")
}

#[test]
fn the_backtrace_is_captured_when_asked_for() {
    // SAFETY: the binary's only test, and no pool exists yet: no other thread reads or writes the
    // environment.
    unsafe { std::env::set_var("RUST_BACKTRACE", "1") };
    let pool = Pool::builder().backend(Backend::Thread).workers(1).build().unwrap();
    match deep_failure::dispatch_on(&pool).join() {
        Err(TaskError::Panicked { message, backtrace, .. }) => {
            assert_eq!(message, "deep down");
            let backtrace = backtrace.expect("RUST_BACKTRACE=1 captures a backtrace");
            assert!(backtrace.contains("inner_frame"), "{backtrace}");
        }
        other => panic!("{other:?}"),
    }
}
