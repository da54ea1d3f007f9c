//! The default pool and the `PARALLEL_*` variables. Its own test binary: the variables are
//! process-wide, so one test sets them in order.

use parallel::{task, Backend, Pool};

#[task]
fn fib(n: u32) -> u64 {
    if n < 2 {
        return u64::from(n);
    }
    // Same pool, joined from inside a task: with one worker this needs the caller to help.
    let a = fib::dispatch(n - 1);
    let b = fib::dispatch(n - 2);
    a.join().unwrap() + b.join().unwrap()
}

#[test]
fn variables_configure_the_default_pool_and_unset_builder_fields() {
    // SAFETY: this is the binary's only test, so no other test thread touches the environment;
    // the pools' worker threads read no variable (`PoolBuilder::build` reads them, on this
    // thread). The same holds for every `set_var` below.
    unsafe { std::env::set_var("PARALLEL_WORKERS", "1") };
    // SAFETY: as above.
    unsafe { std::env::set_var("PARALLEL_BACKEND", "thread") };
    let pool = parallel::default_pool();
    assert_eq!(pool.workers(), 1);
    assert_eq!(pool.backend(), Backend::Thread);
    assert!(std::ptr::eq(pool, parallel::default_pool()), "built once");

    // A task that dispatches to its own pool of one worker and joins does not deadlock.
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(fib::dispatch(16).join()).unwrap());
    let result = receiver.recv_timeout(std::time::Duration::from_secs(60));
    assert_eq!(result.expect("fib on a pool of one deadlocked"), Ok(987));

    // SAFETY: as above.
    unsafe { std::env::set_var("PARALLEL_WORKERS", "3") };
    assert_eq!(Pool::builder().build().unwrap().workers(), 3);
    assert_eq!(Pool::builder().workers(2).build().unwrap().workers(), 2, "the builder wins");

    // SAFETY: as above.
    unsafe { std::env::set_var("PARALLEL_WORKERS", "many") };
    let error = Pool::builder().build().unwrap_err();
    assert!(error.is_invalid_config());
    assert!(error.to_string().contains("PARALLEL_WORKERS=\"many\""), "{error}");

    // SAFETY: as above.
    unsafe { std::env::set_var("PARALLEL_WORKERS", "2") };
    // SAFETY: as above.
    unsafe { std::env::set_var("PARALLEL_BACKEND", "green-threads") };
    let error = Pool::builder().build().unwrap_err();
    assert!(error.to_string().contains("PARALLEL_BACKEND=\"green-threads\""), "{error}");
    assert_eq!(Pool::builder().backend(Backend::Thread).build().unwrap().workers(), 2);
}
