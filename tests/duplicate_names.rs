//! Two tasks under one name are refused, naming both, instead of one silently shadowing the other.

use parallel::{task, Pool};

mod billing {
    #[parallel::task(name = "charge")]
    pub(crate) fn charge(cents: u64) -> u64 {
        cents
    }
}

mod refunds {
    #[parallel::task(name = "charge")]
    pub(crate) fn charge(cents: u64) -> u64 {
        cents
    }
}

#[task]
fn unique() {}

#[test]
fn building_a_pool_reports_both_tasks() {
    let error = Pool::builder().workers(1).build().unwrap_err();
    assert!(error.is_duplicate_task());
    let message = error.to_string();
    assert!(message.contains("task name `charge` is registered twice"), "{message}");
    assert!(message.contains("duplicate_names::billing::charge::Task"), "{message}");
    assert!(message.contains("duplicate_names::refunds::charge::Task"), "{message}");
    assert!(message.contains("#[task(name"), "says what to do: {message}");
}

#[test]
fn the_registry_lists_each_name_once() {
    let names = parallel::registered_tasks();
    assert_eq!(names.iter().filter(|name| **name == "charge").count(), 1);
    assert!(names.contains(&"duplicate_names::unique"), "{names:?}");
    assert_eq!(billing::charge(5) + refunds::charge(5), 10);
}
