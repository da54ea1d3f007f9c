//! Untrusted bytes decoded as task values of the shapes users send: byte strings, text, structs
//! with flattened maps, untagged enums, `serde_json::Value`. Decoding must fail cleanly, never
//! panic nor allocate without bound.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use parallel_core::__fuzz::value;
use serde::Deserialize;

#[derive(Deserialize)]
#[allow(dead_code)]
struct Order {
    id: u64,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum Either {
    Number(i64),
    Text(String),
    List(Vec<Either>),
}

/// A user's struct with byte sequences of its own (no `serde_bytes`): read element by element,
/// from a byte string too, with options, newtypes and enums of one byte.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Blob {
    data: Vec<u8>,
    optional: Vec<Option<u8>>,
    wrapped: Vec<Byte>,
    kinds: Vec<Kind>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Byte(u8);

#[derive(Deserialize)]
#[allow(dead_code)]
enum Kind {
    Small,
    Large(u8),
}

fuzz_target!(|data: &[u8]| {
    let _ = value::<Vec<u8>>(data);
    let _ = value::<String>(data);
    let _ = value::<Order>(data);
    let _ = value::<Either>(data);
    let _ = value::<serde_json::Value>(data);
    let _ = value::<(u32, Option<String>, Vec<f64>)>(data);
    let _ = value::<Blob>(data);
});
