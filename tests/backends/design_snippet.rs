//! The snippet of the design card, §1, as a user's crate writes it (on the thread backend until
//! the process backend lands; only `Backend::Process` is swapped for `Backend::Thread`).

use parallel::{task, Backend, Environment, Pool, TaskError};

#[task]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[task] // the Environment is injected, never serialized
fn visits(env: &mut Environment, user: String) -> u64 {
    let n = env.get_or_insert_with(&user, || 0u64);
    *n += 1;
    *n
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum ParseError {
    Empty,
    Bad(String),
}

#[task]
fn parse(text: String) -> Result<u32, ParseError> {
    if text.is_empty() {
        return Err(ParseError::Empty);
    }
    text.parse().map_err(|_| ParseError::Bad(text))
}

#[test]
fn the_snippet_does_what_its_comments_say() {
    let three = add::dispatch(1, 2).join().unwrap();
    assert_eq!(add(1, 2), three); // the plain function stays callable

    let pool = Pool::builder().backend(Backend::Thread).workers(4).build().unwrap();
    match parse::dispatch_on(&pool, String::new()).join() {
        Err(TaskError::Failed(ParseError::Empty)) => {} // the task's own error, typed
        other => panic!("{other:?}"),
    }
    let sums: Vec<_> = pool.map((0..1000).map(|i| add::new(i, i))).collect();
    assert_eq!(sums.len(), 1000);
    assert!(sums.iter().enumerate().all(|(i, sum)| *sum == Ok(2 * i as i64)));

    let single = Pool::builder().backend(Backend::Thread).workers(1).build().unwrap();
    assert_eq!(visits::dispatch_on(&single, "ann".into()).join(), Ok(1));
    assert_eq!(visits::dispatch_on(&single, "ann".into()).join(), Ok(2));
    assert_eq!(parse::dispatch_on(&pool, "12".into()).join(), Ok(12));
    assert_eq!(
        parse::dispatch_on(&pool, "x".into()).join(),
        Err(TaskError::Failed(ParseError::Bad("x".into())))
    );
}
