//! The one-line stories `TaskError` tells.

use parallel::{task, Backend, TaskError};

use crate::support::pool;

#[task]
fn fail(reason: String) -> Result<(), String> {
    Err(reason)
}

#[task]
fn unwrap_none() -> u8 {
    let nothing: Option<u8> = std::hint::black_box(None);
    nothing.expect("a value that was never set")
}

fn display_tells_what_where_and_why(backend: Backend) {
    let pool = pool(backend, 1);
    let failed = fail::dispatch_on(&pool, "disk full".into()).join().unwrap_err();
    assert_eq!(failed.to_string(), "task failed: disk full");
    assert!(failed.is_failed());

    let panicked = unwrap_none::dispatch_on(&pool).join().unwrap_err();
    let shown = panicked.to_string();
    assert!(shown.starts_with("task `"), "{shown}");
    assert!(shown.contains("errors::unwrap_none` panicked at "), "{shown}");
    assert!(shown.contains("errors.rs:"), "{shown}");
    assert!(shown.ends_with(": a value that was never set"), "{shown}");
    assert!(!shown.contains('\n'), "one line: {shown}");

    let as_std: &dyn std::error::Error = &panicked;
    assert!(as_std.to_string().contains("never set"));
    assert!(!TaskError::<String>::TimedOut.to_string().is_empty());
}

crate::backends!(; quietly: display_tells_what_where_and_why);
