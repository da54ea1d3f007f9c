//! A worker's reply stream, as the pool's reader thread meets it, carrying values that nest
//! deep: the input is `[depth (2 bytes), pattern length, pattern, tail]`, and the value is the
//! pattern repeated `depth` times, then the tail (so a pattern of `0x91`, an array of one
//! element, or `0x81 0xa4 "Node"`, a variant, reaches 65 535 levels in a few bytes). The value
//! is framed as an output and as an error reply and decoded into nested types and
//! `serde_json::Value`; the raw input is also read as a stream of frames. Decoding must fail
//! cleanly past the depth limit, never overflow the stack (the reader thread's is 2 MiB; this
//! runs on libFuzzer's main thread, whose 8 MiB it would overflow well before 65 535 levels).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use parallel_core::__fuzz::{pool_side_values, reply_frame};
use serde::Deserialize;

#[derive(Deserialize)]
#[allow(dead_code)]
enum Nest {
    Leaf,
    Node(Box<Nest>),
    Pair(Box<Nest>, Option<Box<Nest>>),
    Named { inner: Option<Option<Box<Nest>>>, map: BTreeMap<String, Nest> },
}

/// No variant may be `Option<Box<Untagged>>`: serde tries it on the same buffered content again
/// and again (`visit_some` of itself), a loop in any format, whatever the input.
#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum Untagged {
    Nothing(()),
    Maybe(Option<Option<u8>>),
    List(Vec<Untagged>),
    Map(BTreeMap<String, Untagged>),
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Flat {
    id: Option<u8>,
    #[serde(flatten)]
    rest: BTreeMap<String, Option<Box<Flat>>>,
}

fn decode_all(stream: &[u8]) {
    const LIMIT: usize = 1 << 24;
    pool_side_values::<Nest>(stream, LIMIT);
    pool_side_values::<Untagged>(stream, LIMIT);
    pool_side_values::<Flat>(stream, LIMIT);
    pool_side_values::<serde_json::Value>(stream, LIMIT);
    pool_side_values::<Option<Option<Option<()>>>>(stream, LIMIT);
}

fuzz_target!(|data: &[u8]| {
    decode_all(data);
    let [high, low, len, rest @ ..] = data else { return };
    let depth = usize::from(u16::from_be_bytes([*high, *low]));
    let (pattern, tail) = rest.split_at(usize::from(*len).min(rest.len()));
    let mut value = pattern.repeat(depth);
    value.extend_from_slice(tail);
    let mut stream = reply_frame(&value, false);
    stream.extend_from_slice(&reply_frame(&value, true));
    decode_all(&stream);
});
