//! Catching a task's panic with its message, location and backtrace.
//!
//! `catch_unwind` hands back only the payload; the location and backtrace exist only inside the
//! panic hook. So `parallel` chains a hook (once, when the first pool is built) that records them
//! for the panicking thread, and the worker matches the record with the payload it caught. A panic
//! raised on another thread and carried over by rayon (a `par_iter` inside a task) is matched by
//! its message. The previous hook still runs, so panics print as they would on a plain thread.

use std::any::Any;
use std::backtrace::{Backtrace, BacktraceStatus};
use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Mutex, Once, PoisonError};
use std::thread::{self, ThreadId};

/// What the caller learns about a panic.
#[derive(Debug, Clone)]
pub(crate) struct PanicReport {
    pub(crate) message: String,
    pub(crate) location: Option<String>,
    pub(crate) backtrace: Option<String>,
}

/// A panic as the hook saw it.
struct Record {
    thread: ThreadId,
    message: String,
    location: Option<String>,
    backtrace: Option<String>,
}

/// How many recent panics the hook remembers; enough for every worker thread to have one pending.
const RECORDS: usize = 64;

static RECENT: Mutex<VecDeque<Record>> = Mutex::new(VecDeque::new());

/// Chains the recording hook in front of the current one; idempotent.
pub(crate) fn install_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let backtrace = Backtrace::capture();
            let record = Record {
                thread: thread::current().id(),
                message: payload_message(info.payload()),
                location: info.location().map(ToString::to_string),
                backtrace: (backtrace.status() == BacktraceStatus::Captured)
                    .then(|| backtrace.to_string()),
            };
            {
                let mut recent = RECENT.lock().unwrap_or_else(PoisonError::into_inner);
                if recent.len() == RECORDS {
                    recent.pop_front();
                }
                recent.push_back(record);
            }
            previous(info);
        }));
    });
}

/// Runs `f`, turning a panic into a report.
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, PanicReport> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload_message(&*payload);
        // Dropping a payload can itself panic; a report is all the caller needs, so forget it.
        std::mem::forget(payload);
        report_for(message)
    })
}

/// Runs code that drops environment values outside any task (a purge, a worker's end): a value
/// whose `Drop` panics must not take the worker down, nor rayon, which aborts on a panic in its
/// own frames. The panic hook has already printed the panic; there is no task to report it to.
pub(crate) fn drop_values(f: impl FnOnce()) {
    let _ = catch(f);
}

/// The newest record of this message, preferring one raised on the current thread.
fn report_for(message: String) -> PanicReport {
    let mut recent = RECENT.lock().unwrap_or_else(PoisonError::into_inner);
    let here = thread::current().id();
    let found = recent
        .iter()
        .rposition(|record| record.thread == here && record.message == message)
        .or_else(|| recent.iter().rposition(|record| record.message == message));
    match found.and_then(|index| recent.remove(index)) {
        Some(record) => {
            PanicReport { message, location: record.location, backtrace: record.backtrace }
        }
        None => PanicReport { message, location: None, backtrace: None },
    }
}

fn payload_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&'static str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_message_and_location() {
        install_hook();
        let line = line!() + 1;
        let report = catch(|| panic!("bad value {}", 42)).unwrap_err();
        assert_eq!(report.message, "bad value 42");
        let location = report.location.expect("the hook saw the panic");
        assert!(location.starts_with(&format!("{}:{line}:", file!())), "{location}");
    }

    #[test]
    fn non_string_payload_is_named() {
        install_hook();
        let report = catch(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(report.message, "Box<dyn Any>");
    }

    #[test]
    fn panic_carried_from_another_thread_keeps_its_location() {
        install_hook();
        let report = catch(|| {
            let joined = std::thread::spawn(|| panic!("far away")).join();
            std::panic::resume_unwind(joined.unwrap_err())
        })
        .unwrap_err();
        assert_eq!(report.message, "far away");
        assert!(report.location.unwrap().contains("unwind.rs"));
    }

    #[test]
    fn success_passes_through() {
        assert_eq!(catch(|| 5).unwrap(), 5);
    }
}
