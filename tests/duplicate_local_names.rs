//! Two tasks declared in blocks of one module with the same name get the same default name (the
//! module's path and the function's name): building a pool reports them, as for any other two.

use parallel::Pool;

fn first() -> i64 {
    #[parallel::task]
    fn add(a: i64, b: i64) -> i64 {
        a + b
    }
    add(1, 2)
}

fn second() -> i64 {
    #[parallel::task]
    fn add(a: i64, b: i64) -> i64 {
        a * b
    }
    add(1, 2)
}

#[test]
fn building_a_pool_reports_both_local_tasks() {
    assert_eq!(first() + second(), 5);
    let error = Pool::builder().workers(1).build().unwrap_err();
    assert!(error.is_duplicate_task());
    let message = error.to_string();
    assert!(
        message.starts_with("task name `duplicate_local_names::add` is registered twice"),
        "{message}"
    );
    assert!(message.contains("duplicate_local_names::first::add::Task"), "{message}");
    assert!(message.contains("duplicate_local_names::second::add::Task"), "{message}");
}
