//! `#[task]` through the public API: the module it generates beside a function, registry names,
//! fallible and infallible tasks, the injected `Environment`, visibility, the impl-block form and
//! the `crate = path` option.
#![deny(unreachable_pub, missing_docs)]

use std::collections::BTreeMap;

use parallel::{task, Backend, Environment, Never, Pool, RemoteError, Task, TaskError};
use serde::{Deserialize, Serialize};

#[task]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[task]
fn visits(env: &mut Environment, user: String) -> u64 {
    let n = env.get_or_insert_with(&user, || 0u64);
    *n += 1;
    *n
}

#[task]
fn worker_of(env: &Environment, offset: usize) -> usize {
    env.worker_id() + offset
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
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

#[task(name = "billing::charge")]
fn charge(cents: u64) -> u64 {
    cents + 30
}

#[task]
fn nothing() {}

// Arguments named like the generated items and parameters still work.
#[task]
fn collide(new: u32, dispatch: u32, pool: u32, env: u32, task: u32, r#type: u32) -> u32 {
    new + dispatch + pool + env + task + r#type
}

fn one_worker() -> Pool {
    Pool::builder().backend(Backend::Thread).workers(1).build().unwrap()
}

fn infallible<T: Task<Error = Never>>() {}

fn fallible_with<T: Task<Output = u32, Error = ParseError>>() {}

#[test]
fn the_function_stays_callable() {
    assert_eq!(add(1, 2), 3);
    assert_eq!(parse("7".into()), Ok(7));
    assert_eq!(collide(1, 2, 3, 4, 5, 6), 21);
}

#[test]
fn new_builds_the_task_with_public_fields() {
    let task = add::new(1, 2);
    assert_eq!((task.a, task.b), (1, 2));
    let literal = add::Task { a: 3, b: 4 };
    assert_eq!(literal.a + literal.b, 7);
    assert_eq!(visits::new("ann".into()).user, "ann");
    assert_eq!(worker_of::new(5).offset, 5);
    assert_eq!(collide::new(1, 2, 3, 4, 5, 6).r#type, 6);
}

#[test]
fn run_calls_the_function_with_the_environment() {
    let mut env = Environment::new();
    assert_eq!(add::new(1, 2).run(&mut env), Ok(3));
    assert_eq!(parse::new(String::new()).run(&mut env), Err(ParseError::Empty));
    assert_eq!(visits::new("ann".into()).run(&mut env), Ok(1));
    assert_eq!(visits::new("ann".into()).run(&mut env), Ok(2));
    assert_eq!(visits::new("bob".into()).run(&mut env), Ok(1));
    assert_eq!(worker_of::new(10).run(&mut env), Ok(env.worker_id() + 10));
    assert_eq!(nothing::new().run(&mut env), Ok(()));
}

#[test]
fn the_default_name_is_the_module_path_and_the_function_name() {
    assert_eq!(add::Task::NAME, concat!(module_path!(), "::add"));
    assert_eq!(nothing::Task::NAME, concat!(module_path!(), "::nothing"));
    assert_eq!(
        private_tasks::inner::hidden_name(),
        concat!(module_path!(), "::private_tasks::inner::deep")
    );
}

#[test]
fn name_overrides_the_default() {
    assert_eq!(charge::Task::NAME, "billing::charge");
    assert_eq!(charge::dispatch(70).join().unwrap(), 100);
}

#[test]
fn a_result_makes_a_fallible_task_and_anything_else_an_infallible_one() {
    fallible_with::<parse::Task>();
    infallible::<add::Task>();
    infallible::<nothing::Task>();
    fn unit_output<T: Task<Output = ()>>() {}
    unit_output::<nothing::Task>();

    let pool = one_worker();
    match parse::dispatch_on(&pool, String::new()).join() {
        Err(TaskError::Failed(ParseError::Empty)) => {}
        other => panic!("{other:?}"),
    }
    match parse::dispatch_on(&pool, "x".into()).join() {
        Err(TaskError::Failed(ParseError::Bad(text))) => assert_eq!(text, "x"),
        other => panic!("{other:?}"),
    }
    assert_eq!(parse::dispatch_on(&pool, "12".into()).join().unwrap(), 12);
}

#[test]
fn dispatch_runs_on_the_default_pool() {
    assert_eq!(add::dispatch(1, 2).join().unwrap(), 3);
    nothing::dispatch().join().unwrap();
    assert_eq!(collide::dispatch(1, 1, 1, 1, 1, 1).join().unwrap(), 6);
}

#[test]
fn dispatch_on_runs_on_the_given_pool_and_the_environment_persists() {
    let pool = one_worker();
    assert_eq!(visits::dispatch_on(&pool, "ann".into()).join().unwrap(), 1);
    assert_eq!(visits::dispatch_on(&pool, "ann".into()).join().unwrap(), 2);
    assert_eq!(visits::dispatch_on(&pool, "bob".into()).join().unwrap(), 1);
    let first = worker_of::dispatch_on(&pool, 0).join().unwrap();
    assert_eq!(worker_of::dispatch_on(&pool, 100).join().unwrap(), first + 100);
}

#[test]
fn new_feeds_submit_and_map() {
    let pool = one_worker();
    assert_eq!(pool.submit(add::new(2, 3)).join().unwrap(), 5);
    let sums: Vec<i64> = pool.map((0..10).map(|i| add::new(i, i))).map(Result::unwrap).collect();
    assert_eq!(sums, (0..10).map(|i| i * 2).collect::<Vec<_>>());
}

/// The runtime reached through another path, as a crate re-exporting `parallel` would.
mod rt {
    pub(crate) use ::parallel::__private;
}

#[task(crate = crate::rt)]
fn through_a_reexport(x: u8) -> u8 {
    x + 1
}

#[task(crate = parallel)]
fn through_a_bare_path(x: u8) -> u8 {
    x + 2
}

mod nested {
    use parallel::task;

    #[task(crate = super::rt)]
    pub(crate) fn through_a_relative_path(x: u8) -> u8 {
        x + 3
    }
}

#[test]
fn crate_names_the_runtime() {
    assert_eq!(through_a_reexport::dispatch(1).join().unwrap(), 2);
    assert_eq!(through_a_bare_path::dispatch(1).join().unwrap(), 3);
    assert_eq!(nested::through_a_relative_path::dispatch(1).join().unwrap(), 4);
    assert_eq!(
        nested::through_a_relative_path::Task::NAME,
        concat!(module_path!(), "::nested::through_a_relative_path")
    );
}

/// Tasks of every visibility in a private module, under `#![deny(unreachable_pub)]`.
mod private_tasks {
    use parallel::task;

    /// A type private to this module, as an argument.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Secret(u32);

    #[task]
    fn reveal(secret: Secret) -> u32 {
        secret.0
    }

    #[task]
    pub(crate) fn double(x: u32) -> u32 {
        x * 2
    }

    #[task]
    pub(super) fn triple(x: u32) -> u32 {
        x * 3
    }

    #[allow(clippy::needless_pub_self)] // the point: `pub(self)` is a visibility too
    #[task]
    pub(self) fn quadruple(x: u32) -> u32 {
        x * 4
    }

    pub(crate) fn reveal_and_quadruple(x: u32) -> u32 {
        let revealed = reveal::dispatch(Secret(x)).join().unwrap();
        quadruple::dispatch(revealed).join().unwrap()
    }

    pub(crate) mod inner {
        use parallel::{task, Task};

        #[task]
        pub(super) fn halve(x: u32) -> u32 {
            x / 2
        }

        #[task]
        pub(in crate::private_tasks) fn deep(x: u32) -> u32 {
            x + 1
        }

        pub(crate) fn hidden_name() -> &'static str {
            deep::Task::NAME
        }
    }

    pub(crate) fn halve_then_deep(x: u32) -> u32 {
        let half = inner::halve::dispatch(x).join().unwrap();
        inner::deep::dispatch(half).join().unwrap()
    }
}

mod sibling {
    pub(crate) fn double_and_triple(x: u32) -> (u32, u32) {
        let double = crate::private_tasks::double::dispatch(x).join().unwrap();
        (double, crate::private_tasks::triple::new(x).x * 3)
    }
}

/// Types named relative to the task's module, and a user type called `Task`.
mod relative_types {
    use parallel::task;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    pub(crate) struct Task {
        pub(crate) id: u32,
    }

    pub(crate) mod leaf {
        use parallel::task;

        #[task]
        pub(crate) fn from_parent(job: super::Task, extra: self::Extra) -> super::Task {
            super::Task { id: job.id + extra.0 }
        }

        #[derive(serde::Serialize, serde::Deserialize)]
        pub(crate) struct Extra(pub(crate) u32);
    }

    #[task]
    pub(crate) fn rename(job: Task, jobs: Vec<self::Task>) -> Result<Task, Option<Task>> {
        Ok(Task { id: job.id + jobs.len() as u32 })
    }
}

#[test]
fn argument_types_mean_what_they_mean_beside_the_function() {
    use relative_types::{leaf, rename, Task as Job};

    let job = leaf::from_parent::dispatch(Job { id: 1 }, leaf::Extra(2)).join().unwrap();
    assert_eq!(job.id, 3);
    let job = rename::dispatch(Job { id: 1 }, vec![Job { id: 5 }]).join().unwrap();
    assert_eq!(job.id, 2);
    let task: rename::Task = rename::new(Job { id: 7 }, Vec::new());
    assert_eq!(task.job.id, 7);
}

#[task]
fn only_the_environment(env: &mut Environment) -> usize {
    env.len()
}

#[test]
fn a_task_may_take_only_the_environment() {
    assert_eq!(only_the_environment::new().run(&mut Environment::new()), Ok(0));
    only_the_environment::dispatch().join().unwrap();
}

#[test]
fn visibility_follows_the_function() {
    assert_eq!(sibling::double_and_triple(5), (10, 15));
    assert_eq!(private_tasks::triple::dispatch(2).join().unwrap(), 6);
    assert_eq!(private_tasks::reveal_and_quadruple(3), 12);
    assert_eq!(private_tasks::halve_then_deep(10), 6);
}

/// Public tasks, documented, under `#![deny(missing_docs)]`.
pub mod api {
    use parallel::task;

    /// Multiplies two numbers.
    #[task]
    pub fn multiply(a: u64, b: u64) -> u64 {
        a * b
    }
}

#[test]
fn public_tasks_are_documented() {
    assert_eq!(api::multiply::dispatch(6, 7).join().unwrap(), 42);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Inner {
    x: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Flattened {
    name: String,
    #[serde(flatten)]
    inner: Inner,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Loose {
    Number(i64),
    Text(String),
}

#[task]
fn echo_shapes(
    flattened: Flattened,
    loose: Loose,
    value: serde_json::Value,
) -> (Flattened, Loose, serde_json::Value) {
    (flattened, loose, value)
}

#[test]
fn self_describing_serde_shapes_cross_the_boundary() {
    let flattened = Flattened {
        name: "n".into(),
        inner: Inner { x: 1 },
        extra: BTreeMap::from([("more".to_owned(), serde_json::json!([1, "two"]))]),
    };
    let loose = Loose::Text("seven".into());
    let value = serde_json::json!({ "a": [1, 2.5, null, { "b": true }] });

    // The task value is a plain serde type...
    let task = echo_shapes::new(flattened.clone(), loose.clone(), value.clone());
    let json = serde_json::to_string(&task).unwrap();
    let back: echo_shapes::Task = serde_json::from_str(&json).unwrap();
    assert_eq!((&back.flattened, &back.loose, &back.value), (&flattened, &loose, &value));

    // ...and it runs on every backend this build has.
    let pool = one_worker();
    let echoed = echo_shapes::dispatch_on(&pool, flattened.clone(), loose.clone(), value.clone())
        .join()
        .unwrap();
    assert_eq!(echoed, (flattened.clone(), loose.clone(), value.clone()));
    if let Ok(pool) = Pool::builder().backend(Backend::Process).workers(1).build() {
        let echoed =
            echo_shapes::dispatch_on(&pool, flattened.clone(), loose.clone(), value.clone())
                .join()
                .unwrap();
        assert_eq!(echoed, (flattened, loose, value));
    }
}

#[derive(Serialize, Deserialize)]
struct Repeat {
    text: String,
    times: usize,
}

#[task]
impl Task for Repeat {
    type Output = String;
    type Error = RemoteError;

    fn run(self, _env: &mut Environment) -> Result<String, RemoteError> {
        Ok(self.text.repeat(self.times))
    }
}

#[derive(Serialize, Deserialize)]
struct Renamed;

#[task(name = "custom::renamed")]
impl parallel::Task for Renamed {
    type Output = String;
    type Error = Never;

    fn run(self, _env: &mut Environment) -> Result<String, Never> {
        Ok("renamed".to_owned())
    }
}

#[derive(Serialize, Deserialize)]
struct Explicit(u8);

#[task]
impl Task for Explicit {
    type Output = u8;
    type Error = Never;
    const NAME: &'static str = "explicit::name";

    fn run(self, _env: &mut Environment) -> Result<u8, Never> {
        Ok(self.0)
    }
}

#[derive(Serialize, Deserialize)]
struct ThroughReexport;

#[task(crate = crate::rt)]
impl parallel::Task for ThroughReexport {
    type Output = ();
    type Error = Never;

    fn run(self, _env: &mut Environment) -> Result<(), Never> {
        Ok(())
    }
}

#[test]
fn an_impl_block_registers_a_hand_written_task() {
    assert_eq!(Repeat::NAME, concat!(module_path!(), "::Repeat"));
    assert_eq!(Renamed::NAME, "custom::renamed");
    assert_eq!(Explicit::NAME, "explicit::name");
    assert_eq!(ThroughReexport::NAME, concat!(module_path!(), "::ThroughReexport"));

    let handle = parallel::default_pool().submit(Repeat { text: "ab".into(), times: 3 });
    assert_eq!(handle.join().unwrap(), "ababab");
    assert_eq!(parallel::default_pool().submit(Explicit(9)).join().unwrap(), 9);
}

#[test]
fn every_task_is_registered_by_name() {
    let registered = parallel::registered_tasks();
    for name in [
        add::Task::NAME,
        visits::Task::NAME,
        parse::Task::NAME,
        "billing::charge",
        nothing::Task::NAME,
        through_a_reexport::Task::NAME,
        private_tasks::inner::hidden_name(),
        api::multiply::Task::NAME,
        echo_shapes::Task::NAME,
        Repeat::NAME,
        "custom::renamed",
        "explicit::name",
        ThroughReexport::NAME,
    ] {
        assert!(registered.contains(&name), "{name} is not in {registered:?}");
    }
}
