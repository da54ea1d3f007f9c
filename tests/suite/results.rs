//! Results: outputs, typed errors and panics reach the caller intact.

use parallel::{task, Backend, Environment, RemoteError, TaskError};
use serde::{Deserialize, Serialize};

use crate::support::{pool, within_limit};

#[task]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum ParseError {
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

#[task]
fn explode(message: String) -> u32 {
    panic!("{message}")
}

#[task]
fn worker_of(env: &Environment) -> usize {
    env.worker_id()
}

#[task]
fn read(path: String) -> Result<String, RemoteError> {
    Ok(std::fs::read_to_string(path)?)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Order {
    pub(crate) id: u64,
    #[serde(flatten)]
    pub(crate) extra: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum Either {
    Number(i64),
    Text(String),
}

#[task]
fn echo(
    order: Order,
    either: Either,
    value: serde_json::Value,
) -> (Order, Either, serde_json::Value) {
    (order, either, value)
}

fn outputs_come_back(backend: Backend) {
    let pool = pool(backend, 2);
    assert_eq!(add::dispatch_on(&pool, 2, 40).join(), Ok(42));
    assert_eq!(add(2, 40), 42, "the plain function stays callable");
    assert_eq!(parse::dispatch_on(&pool, "17".into()).join(), Ok(17));
}

fn typed_errors_come_back(backend: Backend) {
    let pool = pool(backend, 2);
    assert_eq!(
        parse::dispatch_on(&pool, String::new()).join(),
        Err(TaskError::Failed(ParseError::Empty))
    );
    assert_eq!(
        parse::dispatch_on(&pool, "x".into()).join(),
        Err(TaskError::Failed(ParseError::Bad("x".into())))
    );
    match read::dispatch_on(&pool, "/definitely/not/here".into()).join() {
        Err(TaskError::Failed(error)) => {
            assert_eq!(error.type_name(), "std::io::error::Error");
            assert!(error.message().contains("No such file"), "{error}");
        }
        other => panic!("{other:?}"),
    }
}

fn panics_are_reported_and_the_worker_survives(backend: Backend) {
    let pool = pool(backend, 1);
    let before = worker_of::dispatch_on(&pool).join().unwrap();
    let line = 1 + include_str!("results.rs")
        .lines()
        .position(|text| text.trim() == "panic!(\"{message}\")")
        .expect("explode panics on its own line");
    match explode::dispatch_on(&pool, "the cake is a lie".into()).join() {
        Err(error @ TaskError::Panicked { .. }) => {
            let TaskError::Panicked { task, message, location, .. } = &error else {
                unreachable!()
            };
            assert!(task.ends_with("results::explode"), "{task}");
            assert_eq!(message, "the cake is a lie");
            let location = location.as_deref().expect("the location is captured");
            assert!(
                location.starts_with(&format!("{}:{line}:", file!())),
                "{location} vs line {line}"
            );
            let shown = error.to_string();
            assert!(shown.contains("the cake is a lie") && shown.contains("explode"), "{shown}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(add::dispatch_on(&pool, 1, 1).join(), Ok(2), "the pool keeps serving");
    assert_eq!(worker_of::dispatch_on(&pool).join().unwrap(), before, "the same worker serves");
}

fn every_serde_shape_crosses(backend: Backend) {
    let pool = pool(backend, 1);
    let order = Order {
        id: 7,
        extra: [
            ("colour".to_owned(), serde_json::json!("red")),
            ("qty".to_owned(), serde_json::json!(3)),
        ]
        .into_iter()
        .collect(),
    };
    let value = serde_json::json!({"nested": [1, "two", null, {"three": 3.5}]});
    for either in [Either::Number(-5), Either::Text("five".into())] {
        let back = echo::dispatch_on(&pool, order.clone(), either.clone(), value.clone()).join();
        assert_eq!(back, Ok((order.clone(), either, value.clone())));
    }
}

fn many_tasks_from_many_threads(backend: Backend) {
    let pool = std::sync::Arc::new(pool(backend, 2));
    within_limit("4 threads submitting 2000 tasks", move || {
        let submitters: Vec<_> = (0..4)
            .map(|t| {
                let pool = std::sync::Arc::clone(&pool);
                std::thread::spawn(move || {
                    let handles: Vec<_> = (0..500).map(|i| add::dispatch_on(&pool, t, i)).collect();
                    handles.into_iter().enumerate().all(|(i, h)| h.join() == Ok(t + i as i64))
                })
            })
            .collect();
        for submitter in submitters {
            assert!(submitter.join().unwrap());
        }
    });
}

crate::backends!(
    outputs_come_back,
    typed_errors_come_back,
    every_serde_shape_crosses,
    many_tasks_from_many_threads;
    quietly: panics_are_reported_and_the_worker_survives,
);
