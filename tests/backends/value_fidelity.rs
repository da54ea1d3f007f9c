//! Every serde value crosses a pool unchanged, on every backend: nested options (`Some(None)`),
//! units, unit structs, enums of every shape, maps with keys that are not strings,
//! `serde_json::Value`, bytes and text, as arguments, outputs and errors.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use parallel::{task, Backend, Pool, TaskError};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Marker;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Meters(Option<()>);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Kind {
    Unit,
    Newtype(Option<()>),
    Tuple(u8, Option<Option<bool>>),
    Struct { marker: Option<Marker>, nothing: Option<Option<()>> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Shape {
    nested: Option<Option<Option<u8>>>,
    unit: (),
    optional_unit: Option<()>,
    marker: Marker,
    meters: Option<Meters>,
    kinds: Vec<Kind>,
    pairs: BTreeMap<(u8, bool), Option<()>>,
    by_option: BTreeMap<Option<u32>, i8>,
    json: serde_json::Value,
    optional_json: Option<serde_json::Value>,
    bytes: Vec<u8>,
    // Sequences of `u8` cross as byte strings; these look like them and must stay what they are.
    optional_bytes: Vec<Option<u8>>,
    wide: Vec<u16>,
    hash: [u8; 32],
    text: String,
}

#[task]
fn echo(shape: Shape) -> Shape {
    shape
}

#[task]
fn echo_option(value: Option<Option<u8>>) -> Option<Option<u8>> {
    value
}

#[task]
fn echo_unit(value: Option<()>) -> Option<()> {
    value
}

#[task]
fn fail_with(value: Option<Option<u8>>) -> Result<u8, Option<Option<u8>>> {
    Err(value)
}

#[task]
fn fail_with_unit(value: Option<()>) -> Result<u8, Option<()>> {
    Err(value)
}

/// Whether the argument arrived as it was sent, seen from inside the task.
#[task]
fn is_some_none(value: Option<Option<u8>>) -> bool {
    value == Some(None)
}

fn build(backend: Backend) -> Pool {
    Pool::builder().backend(backend).workers(2).build().expect("the pool builds")
}

static THREADS: LazyLock<Pool> = LazyLock::new(|| build(Backend::Thread));
#[cfg(feature = "process")]
static PROCESSES: LazyLock<Pool> = LazyLock::new(|| build(Backend::Process));

fn pools() -> Vec<&'static Pool> {
    #[cfg(feature = "process")]
    return vec![&THREADS, &PROCESSES];
    #[cfg(not(feature = "process"))]
    return vec![&THREADS];
}

fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,4}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Unit),
        any::<Option<()>>().prop_map(Kind::Newtype),
        (any::<u8>(), any::<Option<Option<bool>>>()).prop_map(|(a, b)| Kind::Tuple(a, b)),
        (any::<Option<()>>(), any::<Option<Option<()>>>()).prop_map(|(marker, nothing)| {
            Kind::Struct { marker: marker.map(|()| Marker), nothing }
        }),
    ]
}

prop_compose! {
    fn shape()(
        nested in any::<Option<Option<Option<u8>>>>(),
        optional_unit in any::<Option<()>>(),
        meters in any::<Option<Option<()>>>(),
        kinds in proptest::collection::vec(kind(), 0..4),
        pairs in proptest::collection::btree_map(any::<(u8, bool)>(), any::<Option<()>>(), 0..4),
        by_option in proptest::collection::btree_map(any::<Option<u32>>(), any::<i8>(), 0..4),
        json in json(),
        optional_json in proptest::option::of(json()),
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
        optional_bytes in proptest::collection::vec(any::<Option<u8>>(), 0..64),
        wide in proptest::collection::vec(0..300u16, 0..64),
        hash in any::<[u8; 32]>(),
        text in ".{0,16}",
    ) -> Shape {
        Shape {
            nested, unit: (), optional_unit, marker: Marker, meters: meters.map(Meters), kinds,
            pairs, by_option, json, optional_json, bytes, optional_bytes, wide, hash, text,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_values_come_back_unchanged(shape in shape()) {
        for pool in pools() {
            let back = echo::dispatch_on(pool, shape.clone()).join();
            prop_assert_eq!(back, Ok(shape.clone()), "on {:?}", pool.backend());
        }
    }
}

#[test]
fn some_none_and_some_unit_cross_as_arguments_outputs_and_errors() {
    for pool in pools() {
        let backend = pool.backend();
        for value in [None, Some(None), Some(Some(0)), Some(Some(7))] {
            assert_eq!(echo_option::dispatch_on(pool, value).join(), Ok(value), "{backend:?}");
            assert_eq!(
                fail_with::dispatch_on(pool, value).join(),
                Err(TaskError::Failed(value)),
                "{backend:?}"
            );
        }
        assert_eq!(is_some_none::dispatch_on(pool, Some(None)).join(), Ok(true), "{backend:?}");
        for value in [None, Some(())] {
            assert_eq!(echo_unit::dispatch_on(pool, value).join(), Ok(value), "{backend:?}");
            assert_eq!(
                fail_with_unit::dispatch_on(pool, value).join(),
                Err(TaskError::Failed(value)),
                "{backend:?}"
            );
        }
    }
}

#[test]
fn some_none_and_some_unit_cross_as_struct_fields() {
    let shape = Shape {
        nested: Some(None),
        unit: (),
        optional_unit: Some(()),
        marker: Marker,
        meters: Some(Meters(None)),
        kinds: vec![
            Kind::Newtype(Some(())),
            Kind::Tuple(1, Some(None)),
            Kind::Struct { marker: Some(Marker), nothing: Some(Some(())) },
            Kind::Struct { marker: None, nothing: Some(None) },
        ],
        pairs: [((1, true), Some(())), ((2, false), None)].into(),
        by_option: [(None, -1), (Some(0), 2)].into(),
        json: serde_json::json!({"a": [null, {"b": null}]}),
        optional_json: Some(serde_json::Value::Null),
        bytes: vec![],
        optional_bytes: vec![Some(1); 40],
        wide: vec![1; 40],
        hash: [9; 32],
        text: String::new(),
    };
    for pool in pools() {
        assert_eq!(echo::dispatch_on(pool, shape.clone()).join(), Ok(shape.clone()));
        let mut deeper = shape.clone();
        deeper.nested = Some(Some(None));
        assert_eq!(echo::dispatch_on(pool, deeper.clone()).join(), Ok(deeper));
    }
}
