//! Task values on the wire: serde's data model as MessagePack, written and read here so that
//! every serde value crosses unchanged and no value can nest deeper than [`MAX_DEPTH`].
//!
//! The layout is rmp-serde's with structs as maps (self-describing, so `#[serde(flatten)]`,
//! untagged enums and `serde_json::Value` work): a unit struct is `[]`, a unit variant its name,
//! any other variant a map of one entry `{name: content}`, a newtype struct its content, an
//! `i128`/`u128` 16 big-endian bytes, a sequence or map of unknown length a 32-bit header
//! filled in at the end. Two things differ, and they are why this module exists:
//!
//! - **`Some` of a value written as nil.** MessagePack writes `None` and `()` as nil and `Some(x)`
//!   as `x`, so `Some(None)` and `Some(())` would come back as `None`. Here a `Some(x)` whose `x`
//!   came out as exactly nil is written as the extension [`SOME_EXT`] holding `k = 1`, and a
//!   `Some` of that marker as the marker with `k + 1`; reading the marker yields `Some` of
//!   (nil, or the marker with `k - 1`). `Some(x)` of any other `x` stays `x`: the common path pays
//!   nothing. No other extension is ever written; one in the input is an error.
//! - **Depth.** Every level of serde nesting (an element of a sequence, tuple, map or struct, the
//!   content of a variant, a `Some`, a newtype) counts, on both sides, so a value too deep is an
//!   [`Error`] naming the limit before it can overflow the stack of the thread that serializes
//!   or reads it. rmp-serde's own limit counts arrays and maps only: a deep enum or option chain
//!   passed it and crashed the pool's reader thread.
//!
//! The rest of the crate reaches this module only through `protocol` (`encode_value`,
//! `decode_value`), the registry (a task from its arguments' bytes) and the cluster backend.

use std::fmt;

use rmp::Marker;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};

/// The deepest a task value may nest (serde levels, see the module docs): far beyond what real
/// data nests (serde_json stops at 128 arrays or objects). Values at this depth in the shapes
/// that cost the most stack (an untagged enum, whose content serde buffers and reads again, a
/// flattened struct, `serde_json::Value`) need between 768 KiB and 1 MiB of stack in a debug
/// build, so they fit the default 2 MiB stack of the pool's reader thread twice over
/// (`the_limit_fits_in_half_a_reader_thread_stack`).
pub(crate) const MAX_DEPTH: usize = 256;

/// The MessagePack extension type of the `Some` marker (application types are 0 to 127).
const SOME_EXT: i8 = 0x53;
/// The MessagePack extension type of a sequence of `u8` written as its bytes.
const BYTES_EXT: i8 = 0x42;
/// The fewest elements a sequence of `u8` has for it to be written as [`BYTES_EXT`]: below it,
/// the array is as small and the extension gains nothing worth the unusual form.
const BYTES_MIN: u32 = 32;
const NIL: u8 = 0xc0;
const FIXEXT1: u8 = 0xd4;
const FIXEXT2: u8 = 0xd5;
const EXT8: u8 = 0xc7;
const EXT16: u8 = 0xc8;
const EXT32: u8 = 0xc9;
const UINT8: u8 = 0xcc;
const ARRAY32: u8 = 0xdd;
const MAP32: u8 = 0xdf;

// A marker's count is at most the depth, and it is written in at most two bytes.
const _: () = assert!(MAX_DEPTH <= u16::MAX as usize);

/// Why a value could not be written or read.
#[derive(Debug)]
pub(crate) struct Error(String);

impl Error {
    fn too_deep() -> Error {
        Error(format!(
            "the value nests deeper than the limit of {MAX_DEPTH} levels that a task value may have"
        ))
    }

    fn malformed(what: impl fmt::Display) -> Error {
        Error(format!("malformed MessagePack: {what}"))
    }

    fn over_limit() -> Error {
        Error("the value is over the size limit".into())
    }
}

/// Why a value could not be written.
#[derive(Debug)]
pub(crate) enum EncodeError {
    /// The value takes more bytes than the limit; writing stopped as soon as it crossed it.
    OverLimit,
    /// The value's own `Serialize`, or this format (a value too deep), refused it.
    Refused(Error),
}

impl EncodeError {
    /// What a caller is told when its value does not go out under the pool's `max_message_size`
    /// of `max` bytes: the setting's name and what to do, or what refused the value.
    #[cfg_attr(not(any(process_backend, feature = "cluster", loom)), allow(dead_code))]
    pub(crate) fn describe(&self, max: usize) -> String {
        match self {
            EncodeError::OverLimit => format!(
                "the value is over the `max_message_size` of {max} bytes; raise it with \
                 `Pool::builder().max_message_size(bytes)` or send less (a file's path instead \
                 of its contents)"
            ),
            EncodeError::Refused(error) => error.to_string(),
        }
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::OverLimit => f.write_str("the value is over the size limit"),
            EncodeError::Refused(error) => error.fmt(f),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Error(message.to_string())
    }
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Error(message.to_string())
    }
}

impl From<rmp::encode::ValueWriteError<std::io::Error>> for Error {
    // Writes go to a `Vec<u8>`, which never fails; the conversion only satisfies the types.
    fn from(error: rmp::encode::ValueWriteError<std::io::Error>) -> Self {
        Error(format!("cannot write MessagePack: {error}"))
    }
}

/// Appends `value` to `out`, which may grow to `limit` bytes (what it holds already included).
///
/// The limit is checked as the value is written (before each string or byte string, after each
/// element of a sequence, map or struct), so a value far over it fails after writing about
/// `limit` bytes, not all of it.
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), EncodeError> {
    let mut serializer = Serializer::new(out, limit);
    let written = value.serialize(&mut serializer);
    // Crossing the limit is why it stopped, whatever the value's `Serialize` made of our error.
    if serializer.is_over_limit || serializer.out.len() > limit {
        return Err(EncodeError::OverLimit);
    }
    written.map_err(EncodeError::Refused)
}

/// A value whose type is erased but whose writing is not: [`Encode::encode`] runs [`encode`] as
/// compiled for the value's own type, so a worker pays one dynamic call per output, error or
/// progress message, none per field or element (through `erased_serde` a `Vec<u8>` of 200 MiB
/// inside a user's struct cost three dynamic calls per byte).
#[cfg_attr(not(any(test, process_backend, feature = "cluster")), allow(dead_code))]
pub(crate) trait Encode {
    /// Appends the value to `out`, as [`encode`] does.
    fn encode(&self, out: &mut Vec<u8>, limit: usize) -> Result<(), EncodeError>;
}

impl<T: Serialize> Encode for T {
    fn encode(&self, out: &mut Vec<u8>, limit: usize) -> Result<(), EncodeError> {
        encode(self, out, limit)
    }
}

/// Reads a whole value from `bytes` (a `Vec<u8>` from one byte string, see [`crate::value`]);
/// bytes left over are an error.
pub(crate) fn decode<T: de::DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T, String> {
    let mut deserializer = Deserializer::new(bytes);
    crate::value::deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value))
        .map_err(|error: Error| error.to_string())
}

/// Writes a value into a byte buffer; `room` is how many more levels may nest.
struct Serializer<'a> {
    out: &'a mut Vec<u8>,
    room: usize,
    /// The length `out` may reach.
    limit: usize,
    is_over_limit: bool,
    /// The `room` at which `serialize_u8` last ran. An element of a sequence was one plain
    /// `u8` exactly when this equals the room the element started at: a `u8` inside an option, a
    /// newtype or a nested sequence is written one level deeper, and an element's `Serialize`
    /// makes one call to the serializer.
    u8_room: usize,
    /// The `room` at which `serialize_u8` writes its byte as it is rather than as a uint: that of
    /// the elements of the sequence being written, while every element so far was a plain `u8`
    /// (`usize::MAX` otherwise). Such a sequence is on its way to being a [`BYTES_EXT`]; one that
    /// turns out not to be has its bytes widened back to uints ([`widen`]).
    raw_room: usize,
}

impl<'a> Serializer<'a> {
    fn new(out: &'a mut Vec<u8>, limit: usize) -> Self {
        Serializer {
            out,
            room: MAX_DEPTH,
            limit,
            is_over_limit: false,
            u8_room: usize::MAX,
            raw_room: usize::MAX,
        }
    }

    /// Fails once `out`, grown by `more` bytes, would be over the limit.
    fn check_limit(&mut self, more: usize) -> Result<(), Error> {
        if self.out.len().saturating_add(more) > self.limit {
            self.is_over_limit = true;
            return Err(Error::over_limit());
        }
        Ok(())
    }

    fn enter(&mut self) -> Result<(), Error> {
        self.room = self.room.checked_sub(1).ok_or_else(Error::too_deep)?;
        Ok(())
    }

    fn leave(&mut self, levels: usize) {
        self.room += levels;
    }

    fn nested<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.enter()?;
        value.serialize(&mut *self)?;
        self.leave(1);
        Ok(())
    }

    /// Starts a sequence (`map == false`) or map of `len` elements, `levels` deep (2 for a
    /// variant's fields: the variant, then its sequence or map).
    fn compound(
        &mut self,
        len: Option<usize>,
        map: bool,
        levels: usize,
    ) -> Result<Compound<'_, 'a>, Error> {
        for _ in 0..levels {
            self.enter()?;
        }
        let at = self.out.len();
        let header = match len {
            Some(len) => {
                // Every element takes a byte at least (an entry two): a sequence that cannot fit
                // is refused before its first element, not after a limit's worth of them.
                self.check_limit(len.saturating_mul(if map { 2 } else { 1 }))?;
                let len = u32::try_from(len)
                    .map_err(|_| Error(format!("a sequence of {len} elements is too long")))?;
                if map {
                    rmp::encode::write_map_len(self.out, len)?;
                } else {
                    rmp::encode::write_array_len(self.out, len)?;
                }
                Header::Known(len)
            }
            None => {
                // The count is filled in by `end`; a 32-bit header has room for any count.
                self.out.extend_from_slice(&[if map { MAP32 } else { ARRAY32 }, 0, 0, 0, 0]);
                Header::Unknown(at)
            }
        };
        let elements = self.out.len();
        Ok(Compound { ser: self, header, at, elements, count: 0, levels, is_bytes: !map })
    }

    fn variant_name(&mut self, variant: &str) -> Result<(), Error> {
        rmp::encode::write_map_len(self.out, 1)?;
        rmp::encode::write_str(self.out, variant)?;
        Ok(())
    }
}

/// The `k` of a `Some` marker that `bytes` are exactly, with nil as `k = 0`.
fn nils_in(bytes: &[u8]) -> Option<usize> {
    match *bytes {
        [NIL] => Some(0),
        [FIXEXT1, ty, k] if ty == SOME_EXT as u8 => Some(usize::from(k)),
        [FIXEXT2, ty, high, low] if ty == SOME_EXT as u8 => {
            Some(usize::from(u16::from_be_bytes([high, low])))
        }
        _ => None,
    }
}

fn write_some_marker(out: &mut Vec<u8>, k: usize) {
    match (u8::try_from(k), u16::try_from(k)) {
        (Ok(k), _) => out.extend_from_slice(&[FIXEXT1, SOME_EXT as u8, k]),
        (_, Ok(k)) => {
            out.extend_from_slice(&[FIXEXT2, SOME_EXT as u8]);
            out.extend_from_slice(&k.to_be_bytes());
        }
        // `k` counts nested levels, at most MAX_DEPTH, which fits in a u16 (asserted above).
        _ => unreachable!("a Some marker of {k} levels is beyond the depth limit"),
    }
}

impl<'a, 'b> ser::Serializer for &'a mut Serializer<'b> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'a, 'b>;
    type SerializeTuple = Compound<'a, 'b>;
    type SerializeTupleStruct = Compound<'a, 'b>;
    type SerializeTupleVariant = Compound<'a, 'b>;
    type SerializeMap = Compound<'a, 'b>;
    type SerializeStruct = Compound<'a, 'b>;
    type SerializeStructVariant = Compound<'a, 'b>;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out.push(if v { 0xc3 } else { 0xc2 });
        Ok(())
    }

    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.serialize_i64(v.into())
    }

    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        self.serialize_i64(v.into())
    }

    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        self.serialize_i64(v.into())
    }

    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        rmp::encode::write_sint(self.out, v)?;
        Ok(())
    }

    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        self.serialize_bytes(&v.to_be_bytes())
    }

    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.u8_room = self.room;
        if self.raw_room == self.room {
            self.out.push(v);
            return Ok(());
        }
        self.serialize_u64(v.into())
    }

    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.serialize_u64(v.into())
    }

    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.serialize_u64(v.into())
    }

    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        rmp::encode::write_uint(self.out, v)?;
        Ok(())
    }

    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        self.serialize_bytes(&v.to_be_bytes())
    }

    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        rmp::encode::write_f32(self.out, v)?;
        Ok(())
    }

    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        rmp::encode::write_f64(self.out, v)?;
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.check_limit(v.len().saturating_add(5))?;
        rmp::encode::write_str(self.out, v)?;
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        self.check_limit(v.len().saturating_add(5))?;
        rmp::encode::write_bin(self.out, v)?;
        Ok(())
    }

    fn serialize_none(self) -> Result<(), Error> {
        self.out.push(NIL);
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        let start = self.out.len();
        self.nested(value)?;
        if let Some(k) = nils_in(&self.out[start..]) {
            self.out.truncate(start);
            write_some_marker(self.out, k + 1);
        }
        Ok(())
    }

    fn serialize_unit(self) -> Result<(), Error> {
        self.serialize_none()
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        rmp::encode::write_array_len(self.out, 0)?;
        Ok(())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.nested(value)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.variant_name(variant)?;
        self.nested(value)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        self.compound(len, false, 1)
    }

    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, Error> {
        self.compound(Some(len), false, 1)
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        self.compound(Some(len), false, 1)
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        self.variant_name(variant)?;
        self.compound(Some(len), false, 2)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, Error> {
        self.compound(len, true, 1)
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, Error> {
        self.compound(Some(len), true, 1)
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        self.variant_name(variant)?;
        self.compound(Some(len), true, 2)
    }
}

enum Header {
    /// Written with this count, which the elements must match.
    Known(u32),
    /// A 32-bit header at this offset, filled in by `end`.
    Unknown(usize),
}

/// A sequence or map being written; its elements are one level deeper than it.
struct Compound<'a, 'b> {
    ser: &'a mut Serializer<'b>,
    header: Header,
    /// Where its header starts in `out`.
    at: usize,
    /// Where its first element starts in `out`.
    elements: usize,
    count: u32,
    levels: usize,
    /// Whether it is a sequence and every element so far was one plain `u8`.
    is_bytes: bool,
}

impl Compound<'_, '_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let room = self.ser.room;
        let start = self.ser.out.len();
        self.ser.u8_room = usize::MAX;
        self.ser.raw_room = if self.is_bytes { room } else { usize::MAX };
        let written = value.serialize(&mut *self.ser);
        self.ser.raw_room = usize::MAX;
        written?;
        if self.is_bytes && self.ser.u8_room != room {
            // The first element that is not a plain `u8`: the ones before it become uints.
            self.is_bytes = false;
            widen(self.ser.out, self.elements, start);
        }
        self.count = self.count.checked_add(1).ok_or_else(|| Error("too many elements".into()))?;
        self.ser.check_limit(0)
    }

    fn end(self) -> Result<(), Error> {
        match self.header {
            Header::Known(len) if len != self.count => {
                return Err(Error(format!(
                    "a sequence or map announced {len} elements but has {}",
                    self.count
                )));
            }
            Header::Known(_) => {}
            Header::Unknown(at) => {
                self.ser.out[at + 1..at + 5].copy_from_slice(&self.count.to_be_bytes());
            }
        }
        if self.is_bytes && self.count >= BYTES_MIN {
            write_bytes_header(self.ser.out, self.at, self.elements, self.count);
        } else if self.is_bytes {
            let end = self.ser.out.len();
            widen(self.ser.out, self.elements, end);
        }
        self.ser.leave(self.levels);
        Ok(())
    }
}

/// Turns the array at `at` in `out`, whose `count` elements were written as they are (one byte
/// each, from `elements` to the end of `out`: see `Serializer::raw_room`), into the extension
/// [`BYTES_EXT`] holding those bytes: one byte each instead of one or two as uints, and a reader
/// copies them in one go.
///
/// A reader hands the extension to every visitor as the sequence of `u8` it was, element by
/// element through the same reader (see [`ByteElements`]): nothing but the bytes on the wire
/// changes.
fn write_bytes_header(out: &mut Vec<u8>, at: usize, elements: usize, count: u32) {
    let len = count as usize;
    debug_assert_eq!(out.len() - elements, len, "one byte per element");
    let mut header = [0; 6];
    let header_len = match (u8::try_from(count), u16::try_from(count)) {
        (Ok(count), _) => {
            header[..3].copy_from_slice(&[EXT8, count, BYTES_EXT as u8]);
            3
        }
        (_, Ok(count)) => {
            header[0] = EXT16;
            header[1..3].copy_from_slice(&count.to_be_bytes());
            header[3] = BYTES_EXT as u8;
            4
        }
        _ => {
            header[0] = EXT32;
            header[1..5].copy_from_slice(&count.to_be_bytes());
            header[5] = BYTES_EXT as u8;
            6
        }
    };
    // The header may be longer than the array's (by at most 3 bytes): make room before moving.
    let end = at + header_len + len;
    if end > out.len() {
        out.resize(end, 0);
    }
    out.copy_within(elements..elements + len, at + header_len);
    out[at..at + header_len].copy_from_slice(&header[..header_len]);
    out.truncate(end);
}

/// Widens the bytes written as they are in `out[from..to]` (the elements of a sequence that
/// looked like bytes so far) to the MessagePack uints `write_uint` writes for them (`0xcc` before
/// each byte from 128 on), moving what follows `to` along.
fn widen(out: &mut Vec<u8>, from: usize, to: usize) {
    let wide = out[from..to].iter().filter(|&&byte| byte >= 128).count();
    if wide == 0 {
        return;
    }
    let len = out.len();
    out.resize(len + wide, 0);
    out.copy_within(to..len, to + wide);
    // From the back, so that no byte is overwritten before it is read.
    let mut write = to + wide;
    for read in (from..to).rev() {
        let byte = out[read];
        write -= 1;
        out[write] = byte;
        if byte >= 128 {
            write -= 1;
            out[write] = UINT8;
        }
    }
    debug_assert_eq!(write, from);
}

/// The compounds whose items are plain values, one `impl` each with the same two bodies.
macro_rules! value_compounds {
    ($($compound:ident::$add:ident),* $(,)?) => {$(
        impl ser::$compound for Compound<'_, '_> {
            type Ok = ();
            type Error = Error;

            fn $add<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                self.element(value)
            }

            fn end(self) -> Result<(), Error> {
                Compound::end(self)
            }
        }
    )*};
}

value_compounds!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

/// The compounds whose items are named fields: the name as a map key, then the value.
macro_rules! field_compounds {
    ($($compound:ident),* $(,)?) => {$(
        impl ser::$compound for Compound<'_, '_> {
            type Ok = ();
            type Error = Error;

            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), Error> {
                rmp::encode::write_str(self.ser.out, key)?;
                self.element(value)
            }

            fn end(self) -> Result<(), Error> {
                Compound::end(self)
            }
        }
    )*};
}

field_compounds!(SerializeStruct, SerializeStructVariant);

impl ser::SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        key.serialize(&mut *self.ser)?;
        self.ser.check_limit(0)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }

    fn end(self) -> Result<(), Error> {
        Compound::end(self)
    }
}

/// Reads one value from bytes that are untrusted: every length is checked against the input
/// left, every level against the depth limit; strings and byte strings are borrowed, not copied.
pub(crate) struct Deserializer<'de> {
    input: &'de [u8],
    room: usize,
}

impl<'de> Deserializer<'de> {
    pub(crate) fn new(input: &'de [u8]) -> Self {
        Deserializer { input, room: MAX_DEPTH }
    }

    /// Fails if bytes are left after the value.
    pub(crate) fn end(&self) -> Result<(), Error> {
        match self.input.len() {
            0 => Ok(()),
            left => Err(Error::malformed(format_args!("{left} bytes after the value"))),
        }
    }

    fn peek(&self) -> Result<u8, Error> {
        self.input.first().copied().ok_or_else(|| Error::malformed("the value ends early"))
    }

    fn take(&mut self, len: usize) -> Result<&'de [u8], Error> {
        if len > self.input.len() {
            return Err(Error::malformed("the value ends early"));
        }
        let (head, rest) = self.input.split_at(len);
        self.input = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn byte(&mut self) -> Result<u8, Error> {
        self.array::<1>().map(|[byte]| byte)
    }

    /// The length after a marker whose length is 8, 16 or 32 bits.
    fn len(&mut self, bits: u8) -> Result<usize, Error> {
        Ok(match bits {
            8 => usize::from(self.byte()?),
            16 => usize::from(u16::from_be_bytes(self.array()?)),
            _ => u32::from_be_bytes(self.array()?) as usize,
        })
    }

    /// Consumes a `Some` marker if the input starts with one, returning its `k`.
    fn some_marker(&mut self) -> Result<Option<usize>, Error> {
        let k = match *self.input {
            [FIXEXT1, ty, k, ..] if ty == SOME_EXT as u8 => {
                self.input = &self.input[3..];
                usize::from(k)
            }
            [FIXEXT2, ty, high, low, ..] if ty == SOME_EXT as u8 => {
                self.input = &self.input[4..];
                usize::from(u16::from_be_bytes([high, low]))
            }
            _ => return Ok(None),
        };
        match k {
            0 => Err(Error::malformed("a Some marker of zero levels")),
            k => Ok(Some(k)),
        }
    }

    /// Goes one level deeper; [`Deserializer::leave`] comes back.
    fn enter(&mut self) -> Result<(), Error> {
        self.room = self.room.checked_sub(1).ok_or_else(Error::too_deep)?;
        Ok(())
    }

    fn leave(&mut self) {
        self.room += 1;
    }

    /// Reads the next value's header: its marker, its length and what a string, byte string or
    /// extension holds, everything a visitor is not needed for.
    ///
    /// Not generic, so that each visitor type (one per `Deserialize` type of every task) adds
    /// only the small match of [`Deserializer::any`] to a debug build (every test binary), not
    /// the whole reader. Inlined into it in optimized builds, where a call here cost about 20%
    /// of the time to read a struct of strings, floats and options (callgrind), and 5% inlined.
    #[cfg_attr(not(debug_assertions), inline(always))]
    fn head(&mut self) -> Result<Head<'de>, Error> {
        if let Some(k) = self.some_marker()? {
            return Ok(Head::Some(k));
        }
        Ok(match Marker::from_u8(self.byte()?) {
            Marker::Null => Head::Unit,
            Marker::True => Head::Bool(true),
            Marker::False => Head::Bool(false),
            Marker::FixPos(v) => Head::U8(v),
            Marker::FixNeg(v) => Head::I8(v),
            Marker::U8 => Head::U8(self.byte()?),
            Marker::U16 => Head::U16(u16::from_be_bytes(self.array()?)),
            Marker::U32 => Head::U32(u32::from_be_bytes(self.array()?)),
            Marker::U64 => Head::U64(u64::from_be_bytes(self.array()?)),
            Marker::I8 => Head::I8(i8::from_be_bytes(self.array()?)),
            Marker::I16 => Head::I16(i16::from_be_bytes(self.array()?)),
            Marker::I32 => Head::I32(i32::from_be_bytes(self.array()?)),
            Marker::I64 => Head::I64(i64::from_be_bytes(self.array()?)),
            Marker::F32 => Head::F32(f32::from_be_bytes(self.array()?)),
            Marker::F64 => Head::F64(f64::from_be_bytes(self.array()?)),
            Marker::FixStr(len) => self.str(usize::from(len))?,
            Marker::Str8 => self.len(8).and_then(|len| self.str(len))?,
            Marker::Str16 => self.len(16).and_then(|len| self.str(len))?,
            Marker::Str32 => self.len(32).and_then(|len| self.str(len))?,
            Marker::Bin8 => Head::Bytes(self.len(8).and_then(|len| self.take(len))?),
            Marker::Bin16 => Head::Bytes(self.len(16).and_then(|len| self.take(len))?),
            Marker::Bin32 => Head::Bytes(self.len(32).and_then(|len| self.take(len))?),
            Marker::FixArray(len) => Head::Seq(usize::from(len)),
            Marker::Array16 => Head::Seq(self.len(16)?),
            Marker::Array32 => Head::Seq(self.len(32)?),
            Marker::FixMap(len) => Head::Map(usize::from(len)),
            Marker::Map16 => Head::Map(self.len(16)?),
            Marker::Map32 => Head::Map(self.len(32)?),
            Marker::Ext8 => self.len(8).and_then(|len| self.ext(len))?,
            Marker::Ext16 => self.len(16).and_then(|len| self.ext(len))?,
            Marker::Ext32 => self.len(32).and_then(|len| self.ext(len))?,
            other => return Err(Error::malformed(format_args!("unexpected marker {other:?}"))),
        })
    }

    fn str(&mut self, len: usize) -> Result<Head<'de>, Error> {
        match std::str::from_utf8(self.take(len)?) {
            Ok(text) => Ok(Head::Str(text)),
            Err(_) => Err(Error::malformed("a string that is not UTF-8")),
        }
    }

    /// An extension of `len` bytes after its marker and length: only [`BYTES_EXT`] is known, a
    /// sequence of `u8` visited as the array it was written from.
    fn ext(&mut self, len: usize) -> Result<Head<'de>, Error> {
        let ty = self.byte()?;
        if ty != BYTES_EXT as u8 {
            return Err(Error::malformed(format_args!("an extension of unknown type {ty}")));
        }
        Ok(Head::ByteArray(self.take(len)?))
    }

    /// Visits the next value as it is; a byte string as a sequence when `bytes_as_seq`.
    fn any<V: Visitor<'de>>(&mut self, visitor: V, bytes_as_seq: bool) -> Result<V::Value, Error> {
        match self.head()? {
            Head::Some(k) => self.some(k, visitor),
            Head::Unit => visitor.visit_unit(),
            Head::Bool(v) => visitor.visit_bool(v),
            Head::U8(v) => visitor.visit_u8(v),
            Head::U16(v) => visitor.visit_u16(v),
            Head::U32(v) => visitor.visit_u32(v),
            Head::U64(v) => visitor.visit_u64(v),
            Head::I8(v) => visitor.visit_i8(v),
            Head::I16(v) => visitor.visit_i16(v),
            Head::I32(v) => visitor.visit_i32(v),
            Head::I64(v) => visitor.visit_i64(v),
            Head::F32(v) => visitor.visit_f32(v),
            Head::F64(v) => visitor.visit_f64(v),
            Head::Str(text) => visitor.visit_borrowed_str(text),
            Head::Bytes(bytes) if bytes_as_seq => {
                visitor.visit_seq(de::value::SeqDeserializer::new(bytes.iter().copied()))
            }
            Head::Bytes(bytes) => visitor.visit_borrowed_bytes(bytes),
            Head::Seq(len) => self.seq(len, visitor),
            Head::Map(len) => self.map(len, visitor),
            Head::ByteArray(bytes) => self.byte_array(bytes, visitor),
        }
    }

    /// Visits the `Some` of a marker of `k` levels, one level deeper.
    fn some<V: Visitor<'de>>(&mut self, k: usize, visitor: V) -> Result<V::Value, Error> {
        self.enter()?;
        let value = visitor.visit_some(Nils { k: k - 1, room: self.room });
        self.leave();
        value
    }

    /// Visits the bytes of a [`BYTES_EXT`] as the sequence of `u8` it was written from.
    fn byte_array<V: Visitor<'de>>(
        &mut self,
        bytes: &'de [u8],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.enter()?;
        let mut access = ByteElements { bytes: bytes.iter(), room: self.room };
        let value = visitor.visit_seq(&mut access);
        self.leave();
        Self::all_read(value?, access.bytes.len(), "elements")
    }

    fn seq<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.enter()?;
        let mut access = Elements { de: self, left: len };
        let value = visitor.visit_seq(&mut access);
        let left = access.left;
        self.leave();
        Self::all_read(value?, left, "elements")
    }

    fn map<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.enter()?;
        let mut access = Elements { de: self, left: len };
        let value = visitor.visit_map(&mut access);
        let left = access.left;
        self.leave();
        Self::all_read(value?, left, "entries")
    }

    /// `value`, if a visitor read every one of the elements or entries it was given.
    fn all_read<T>(value: T, left: usize, what: &str) -> Result<T, Error> {
        match left {
            0 => Ok(value),
            left => Err(Error::malformed(format_args!("{left} {what} left unread"))),
        }
    }
}

/// A value's header, read by [`Deserializer::head`].
enum Head<'de> {
    /// A `Some` marker of `k` levels.
    Some(usize),
    Unit,
    Bool(bool),
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    I8(i8),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Str(&'de str),
    Bytes(&'de [u8]),
    /// A sequence or map of this many elements or entries, which follow.
    Seq(usize),
    Map(usize),
    /// The bytes of a [`BYTES_EXT`]: a sequence of `u8` written compactly.
    ByteArray(&'de [u8]),
}

impl<'de> de::Deserializer<'de> for &mut Deserializer<'de> {
    type Error = Error;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.any(visitor, false)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.peek()? == NIL {
            self.input = &self.input[1..];
            return visitor.visit_none();
        }
        match self.some_marker()? {
            Some(k) => self.some(k, visitor),
            None => {
                self.enter()?;
                let value = visitor.visit_some(&mut *self);
                self.leave();
                value
            }
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.enter()?;
        let value = visitor.visit_newtype_struct(&mut *self);
        self.leave();
        value
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        // Written as `[]`; nil is read as well, as rmp-serde does.
        match self.peek()? {
            NIL | 0x90 => {
                self.input = &self.input[1..];
                visitor.visit_unit()
            }
            _ => self.any(visitor, false),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match Marker::from_u8(self.peek()?) {
            Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                let variant: &'de str = de::Deserialize::deserialize(&mut *self)?;
                visitor.visit_enum(variant.into_deserializer())
            }
            Marker::FixMap(1) => {
                self.input = &self.input[1..];
                self.enter()?;
                let value = visitor.visit_enum(Variant { de: &mut *self });
                self.leave();
                value
            }
            _ => Err(Error::malformed("an enum that is neither a name nor a map of one entry")),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.any(visitor, true)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.any(visitor, true)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.any(visitor, true)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.any(visitor, true)
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match *self.input {
            [0xc4, 16, ..] => {
                self.input = &self.input[2..];
                visitor.visit_i128(i128::from_be_bytes(self.array()?))
            }
            _ => self.any(visitor, false),
        }
    }

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match *self.input {
            [0xc4, 16, ..] => {
                self.input = &self.input[2..];
                visitor.visit_u128(u128::from_be_bytes(self.array()?))
            }
            _ => self.any(visitor, false),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string bytes byte_buf unit map
        identifier ignored_any
    }
}

/// The elements of a sequence, or the entries of a map, still to read.
struct Elements<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Elements<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::MapAccess<'de> for Elements<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// The elements of a [`BYTES_EXT`] still to read, each read by a [`Deserializer`] over the uint it
/// was written as before [`write_as_bytes`]: a visitor sees exactly what the array would give it.
struct ByteElements<'de> {
    bytes: std::slice::Iter<'de, u8>,
    room: usize,
}

/// The MessagePack uint of each `u8`, as `write_uint` writes it: the byte itself below 128, else
/// `0xcc` then the byte (the second byte of an entry below 128 is unused).
static UINTS: [[u8; 2]; 256] = {
    let mut uints = [[0; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        uints[byte] = if byte < 128 { [byte as u8, 0] } else { [UINT8, byte as u8] };
        byte += 1;
    }
    uints
};

impl<'de> de::SeqAccess<'de> for ByteElements<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some(&byte) = self.bytes.next() else {
            return Ok(None);
        };
        seed.deserialize(OneByte { byte, room: self.room }).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.bytes.len())
    }
}

/// One element of a [`BYTES_EXT`], answered as [`Deserializer`] answers the uint it was written
/// as (`visit_u8`, whatever the request), without a reader per byte: a `Vec<u8>` inside a user's
/// struct is read at a few instructions a byte. An option, a newtype struct or an enum, whose
/// answers differ, are asked of a [`Deserializer`] over the uint itself.
struct OneByte {
    byte: u8,
    room: usize,
}

impl OneByte {
    fn uint<'de>(&self) -> Deserializer<'de> {
        let uint = &UINTS[usize::from(self.byte)][..if self.byte < 128 { 1 } else { 2 }];
        Deserializer { input: uint, room: self.room }
    }
}

impl<'de> de::Deserializer<'de> for OneByte {
    type Error = Error;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u8(self.byte)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_option(&mut self.uint(), visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_newtype_struct(&mut self.uint(), name, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_enum(&mut self.uint(), name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

/// A variant written as a map of one entry: its name, then its content.
struct Variant<'a, 'de> {
    de: &'a mut Deserializer<'de>,
}

impl<'de> de::EnumAccess<'de> for Variant<'_, 'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        Ok((seed.deserialize(&mut *self.de)?, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, 'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        de::Deserialize::deserialize(self.de)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self.de)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_tuple(self.de, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_struct(self.de, "", fields, visitor)
    }
}

/// What a `Some` marker holds: nil inside `k` more levels of `Some`, with `room` levels left.
struct Nils {
    k: usize,
    room: usize,
}

impl Nils {
    fn inner(&self, k: usize) -> Result<Nils, Error> {
        Ok(Nils { k, room: self.room.checked_sub(1).ok_or_else(Error::too_deep)? })
    }
}

impl<'de> de::Deserializer<'de> for Nils {
    type Error = Error;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.k {
            0 => visitor.visit_unit(),
            k => visitor.visit_some(self.inner(k - 1)?),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.k {
            0 => visitor.visit_none(),
            k => visitor.visit_some(self.inner(k - 1)?),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self.inner(self.k)?)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Serialize};

    use super::*;

    fn round_trip<T: Serialize + DeserializeOwned + 'static>(value: &T) -> Result<T, String> {
        let mut bytes = Vec::new();
        crate::value::serialize(value, &mut Serializer::new(&mut bytes, usize::MAX))
            .map_err(|e| e.to_string())?;
        decode::<T>(&bytes)
    }

    fn decode<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T, String> {
        let mut deserializer = Deserializer::new(bytes);
        let value = crate::value::deserialize(&mut deserializer).map_err(|e| e.to_string())?;
        deserializer.end().map_err(|e| e.to_string())?;
        Ok(value)
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Unit;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Wrapper(Option<()>);

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Unit,
        Newtype(Option<Option<()>>),
        Tuple(Option<Unit>, Option<Option<Option<u8>>>),
        Struct { unit: (), wrapper: Option<Wrapper>, text: String },
        Pairs(BTreeMap<(u8, bool), Option<()>>),
        ByOption(BTreeMap<Option<u32>, i8>),
        Json(serde_json::Value),
        Bytes(#[serde(with = "bytes")] Vec<u8>, Vec<u8>),
        Wide(i128, u128, char, f64),
        Many(Vec<Shape>),
        Octets(Octets),
    }

    /// Sequences of `u8` (written as [`BYTES_EXT`] from [`BYTES_MIN`] elements on) beside
    /// sequences that look like them and must stay arrays, read by every kind of visitor.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Octets {
        plain: Vec<u8>,
        wide: Vec<u16>,
        optional: Vec<Option<u8>>,
        signed: Vec<i8>,
        wrapped: Vec<Byte>,
        array: [u8; 32],
        nested: Vec<Vec<u8>>,
        untagged: Either,
        #[serde(flatten)]
        flat: BTreeMap<String, Vec<u8>>,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
    struct Byte(u8);

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Bytes(Vec<u8>),
    }

    fn octets() -> impl Strategy<Value = Octets> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..80);
        (
            (bytes(), proptest::collection::vec(0..300u16, 0..80)),
            (proptest::collection::vec(any::<Option<u8>>(), 0..80), any::<Vec<i8>>()),
            (bytes(), any::<[u8; 32]>(), proptest::collection::vec(bytes(), 0..3)),
            (bytes(), proptest::collection::btree_map("[a-z]{1,4}", bytes(), 0..3)),
        )
            .prop_map(
                |(
                    (plain, wide),
                    (optional, signed),
                    (wrapped, array, nested),
                    (untagged, flat),
                )| {
                    Octets {
                        plain,
                        wide,
                        optional,
                        signed,
                        wrapped: wrapped.into_iter().map(Byte).collect(),
                        array,
                        nested,
                        untagged: Either::Bytes(untagged),
                        // Keys that are not the struct's own fields, so that they come back as theirs.
                        flat: flat
                            .into_iter()
                            .map(|(key, value)| (format!("x{key}"), value))
                            .collect(),
                    }
                },
            )
    }

    /// `Vec<u8>` as one MessagePack byte string, as `serde_bytes` writes it.
    mod bytes {
        pub(super) fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }

        pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<u8>, D::Error> {
            crate::value::deserialize(d)
        }
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,4}", inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn shape() -> impl Strategy<Value = Shape> {
        let leaf = prop_oneof![
            Just(Shape::Unit),
            any::<Option<Option<()>>>().prop_map(Shape::Newtype),
            (any::<Option<()>>(), any::<Option<Option<Option<u8>>>>())
                .prop_map(|(unit, nested)| Shape::Tuple(unit.map(|()| Unit), nested)),
            (any::<Option<Option<()>>>(), ".{0,8}").prop_map(|(wrapper, text)| {
                Shape::Struct { unit: (), wrapper: wrapper.map(Wrapper), text }
            }),
            proptest::collection::btree_map(any::<(u8, bool)>(), any::<Option<()>>(), 0..4)
                .prop_map(Shape::Pairs),
            proptest::collection::btree_map(any::<Option<u32>>(), any::<i8>(), 0..4)
                .prop_map(Shape::ByOption),
            json().prop_map(Shape::Json),
            (any::<Vec<u8>>(), any::<Vec<u8>>()).prop_map(|(a, b)| Shape::Bytes(a, b)),
            (any::<i128>(), any::<u128>(), any::<char>(), -1e300..1e300f64)
                .prop_map(|(a, b, c, d)| Shape::Wide(a, b, c, d)),
            octets().prop_map(Shape::Octets),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            proptest::collection::vec(inner, 0..4).prop_map(Shape::Many)
        })
    }

    proptest! {
        #[test]
        fn every_shape_round_trips(shape in shape()) {
            prop_assert_eq!(round_trip(&shape), Ok(shape.clone()));
            // The same value inside options of every depth, and as a top-level option.
            let wrapped = Some(Some(Some(shape)));
            prop_assert_eq!(round_trip(&wrapped), Ok(wrapped.clone()));
        }

        #[test]
        fn nested_options_round_trip(value in any::<Option<Option<Option<Option<u8>>>>>()) {
            prop_assert_eq!(round_trip(&value), Ok(value));
        }

        #[test]
        fn top_level_bytes_and_text_round_trip(bytes in any::<Vec<u8>>(), text in ".*") {
            prop_assert_eq!(round_trip(&bytes), Ok(bytes));
            prop_assert_eq!(round_trip(&text), Ok(text));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Shape>(&bytes);
            let _ = decode::<serde_json::Value>(&bytes);
            let _ = decode::<Option<Option<Unit>>>(&bytes);
        }
    }

    #[test]
    fn some_of_nil_is_a_marker_and_other_somes_cost_nothing() {
        let bytes = |value: &dyn erased_serde::Serialize| {
            let mut out = Vec::new();
            encode(value, &mut out, usize::MAX).unwrap();
            out
        };
        assert_eq!(bytes(&None::<()>), [NIL]);
        assert_eq!(bytes(&Some(())), [FIXEXT1, SOME_EXT as u8, 1]);
        assert_eq!(bytes(&Some(None::<u8>)), [FIXEXT1, SOME_EXT as u8, 1]);
        assert_eq!(bytes(&Some(Some(None::<u8>))), [FIXEXT1, SOME_EXT as u8, 2]);
        assert_eq!(bytes(&Some(Wrapper(None))), [FIXEXT1, SOME_EXT as u8, 1]);
        assert_eq!(bytes(&Some(Some(5u8))), [5]);
        assert_eq!(bytes(&Some(Unit)), [0x90], "a unit struct is [], not nil");
        // Any-based readers (untagged enums, flatten, Value) see the `Some` too.
        assert_eq!(decode::<serde_json::Value>(&bytes(&Some(()))), Ok(serde_json::Value::Null));
    }

    /// `value` as written, without the limit.
    fn written(value: &(impl Serialize + ?Sized)) -> Vec<u8> {
        let mut out = Vec::new();
        encode(value, &mut out, usize::MAX).unwrap();
        out
    }

    #[test]
    fn a_sequence_of_u8_is_written_as_its_bytes_from_the_threshold_on() {
        let short = vec![200u8; BYTES_MIN as usize - 1];
        assert_eq!(written(&short)[0], 0xdc, "below it, an array");
        let bytes: Vec<u8> = (0..=255).collect();
        let mut expected = vec![EXT16, 1, 0, BYTES_EXT as u8];
        expected.extend(&bytes);
        assert_eq!(written(&bytes), expected);
        let mut expected = vec![EXT8, 32, BYTES_EXT as u8];
        expected.extend([7; 32]);
        assert_eq!(written(&[7u8; 32]), expected, "a tuple of u8 too");
        // Inside a struct: the field name, then the extension; an unknown length as well.
        let mut expected = vec![0x81, 0xa1, b'v', EXT32, 0, 1, 0, 0, BYTES_EXT as u8];
        expected.extend(vec![1u8; 1 << 16]);
        assert_eq!(written(&BTreeMap::from([("v", vec![1u8; 1 << 16])])), expected);
        // A sequence of unknown length: its 32-bit array header becomes the extension's.
        struct Filtered(Vec<u8>);
        impl Serialize for Filtered {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().filter(|_| true))
            }
        }
        let mut expected = vec![EXT8, 40, BYTES_EXT as u8];
        expected.extend([200; 40]);
        assert_eq!(written(&Filtered(vec![200; 40])), expected);
        assert_eq!(decode::<Vec<u8>>(&expected), Ok(vec![200; 40]));
    }

    #[test]
    fn a_sequence_that_stops_looking_like_bytes_is_an_array_of_uints() {
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Number {
            Byte(u8),
            Wide(u16),
        }
        let uints = |values: &mut dyn Iterator<Item = u64>| {
            let mut out = Vec::new();
            values.for_each(|value| drop(rmp::encode::write_uint(&mut out, value)));
            out
        };
        // Bytes written as they are until the 41st element, then widened: 0xcc before 128..=255.
        let mut values: Vec<Number> = (0..40u8).map(|i| Number::Byte(i * 6)).collect();
        values.extend([Number::Wide(300), Number::Byte(255)]);
        let mut expected = vec![0xdc, 0, 42];
        expected.extend(uints(&mut (0..40u64).map(|i| i * 6).chain([300, 255])));
        assert_eq!(written(&values), expected);
        // Bytes to the end but fewer than the threshold: uints too.
        let short: Vec<u8> = (100..131).collect();
        let mut expected = vec![0xdc, 0, 31];
        expected.extend(uints(&mut (100..131u64)));
        assert_eq!(written(&short), expected);
        // The same inside a struct, with a byte field after it, which is a uint as ever.
        #[derive(Serialize)]
        struct Pair {
            a: Vec<u8>,
            b: u8,
        }
        let mut expected = vec![0x82, 0xa1, b'a', 0xdc, 0, 31];
        expected.extend(uints(&mut (100..131u64)));
        expected.extend([0xa1, b'b', 0xcc, 200]);
        assert_eq!(written(&Pair { a: short, b: 200 }), expected);
    }

    #[test]
    fn sequences_that_only_look_like_bytes_stay_arrays() {
        const ARRAY16: u8 = 0xdc;
        let array = |value: &dyn erased_serde::Serialize| written(value)[0] == ARRAY16;
        assert!(array(&vec![1u16; 40]), "u16 values below 256");
        assert!(array(&vec![Some(1u8); 40]), "options of u8");
        assert!(array(&vec![Byte(1); 40]), "newtypes of u8");
        assert!(array(&vec![1i8; 40]), "i8");
        let mixed: Vec<serde_json::Value> = (0..40).map(|i| serde_json::json!(i)).collect();
        assert_eq!(written(&mixed)[0], ARRAY16, "numbers that serialize as u64");
    }

    #[test]
    fn bytes_read_as_any_other_type_read_as_the_array_would() {
        let bytes: Vec<u8> = (0..64).map(|i| i * 4).collect();
        let ext = written(&bytes);
        assert_eq!(ext[0], EXT8);
        let as_u16: Vec<u16> = bytes.iter().copied().map(u16::from).collect();
        assert_eq!(decode::<Vec<u16>>(&ext), Ok(as_u16.clone()));
        let as_options: Vec<Option<u8>> = bytes.iter().copied().map(Some).collect();
        assert_eq!(decode::<Vec<Option<u8>>>(&ext), Ok(as_options));
        assert_eq!(decode::<serde_json::Value>(&ext), Ok(serde_json::json!(bytes)));
        assert_eq!(decode::<Either>(&ext), Ok(Either::Bytes(bytes.clone())));
        assert!(decode::<serde::de::IgnoredAny>(&ext).is_ok());
        // Newtypes, options and enums are asked of the uint itself (`OneByte`).
        let as_newtypes: Vec<Byte> = bytes.iter().copied().map(Byte).collect();
        assert_eq!(decode::<Vec<Byte>>(&ext), Ok(as_newtypes));
        let array = written(&as_u16);
        assert_eq!(array[0], 0xdc, "the same values, as an array of uints");
        let from_array = decode::<Vec<Shape>>(&array);
        assert!(from_array.is_err());
        assert_eq!(
            decode::<Vec<Shape>>(&ext),
            from_array,
            "an enum from a byte: the array's error"
        );
        // A visitor that stops early, or a type the bytes are not, is the array's error.
        let error = decode::<(u8, u8)>(&ext).unwrap_err();
        assert!(error.contains("62 elements left unread"), "{error}");
        assert!(decode::<Vec<bool>>(&ext).unwrap_err().contains("invalid type: integer `0`"));
    }

    #[test]
    fn a_bytes_extension_that_lies_is_refused() {
        for bytes in [
            &[EXT8, 40, BYTES_EXT as u8, 1, 2][..],
            &[EXT8, 1][..],
            &[EXT16, 0, 40, 0x41, 1, 2][..],
            &[EXT32, 0xff, 0xff, 0xff, 0xff, BYTES_EXT as u8][..],
        ] {
            assert!(decode::<Vec<u8>>(bytes).is_err(), "{bytes:x?}");
            assert!(decode::<serde_json::Value>(bytes).is_err(), "{bytes:x?}");
        }
    }

    #[test]
    fn writing_stops_as_soon_as_the_value_crosses_the_limit() {
        /// A sequence of `len` values that counts how many were asked for, and tells its length
        /// to the serializer if `says_len`.
        struct Counted {
            len: usize,
            says_len: bool,
            asked: std::cell::Cell<usize>,
        }

        impl Serialize for Counted {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let values = (0..self.len).map(|i| {
                    self.asked.set(i + 1);
                    i as u64
                });
                match self.says_len {
                    true => serializer.collect_seq(values),
                    false => serializer.collect_seq(values.filter(|_| true)),
                }
            }
        }

        const LIMIT: usize = 1 << 16;
        let huge = Counted { len: 1 << 31, says_len: false, asked: Default::default() };
        let mut out = Vec::new();
        assert!(matches!(encode(&huge, &mut out, LIMIT), Err(EncodeError::OverLimit)));
        // Each element is at most 9 bytes: writing stopped within one of the limit.
        assert!(huge.asked.get() <= LIMIT, "{} elements written", huge.asked.get());
        assert!(out.len() <= LIMIT + 9, "{} bytes", out.len());

        // A sequence that tells its length is refused before its first element (each takes a
        // byte at least): a `Vec<u8>` field of gigabytes costs nothing to refuse.
        let huge = Counted { len: 1 << 31, says_len: true, asked: Default::default() };
        let mut out = Vec::new();
        assert!(matches!(encode(&huge, &mut out, LIMIT), Err(EncodeError::OverLimit)));
        assert_eq!(huge.asked.get(), 0);
        #[derive(Serialize)]
        struct Field {
            data: Vec<u8>,
        }
        let mut out = Vec::new();
        let field = Field { data: vec![1; LIMIT] };
        assert!(matches!(encode(&field, &mut out, LIMIT), Err(EncodeError::OverLimit)));
        assert!(out.len() < 16, "{} bytes", out.len());
        let mut out = Vec::new();
        let map = BTreeMap::from_iter((0..LIMIT / 2 + 1).map(|key| (key, ())));
        assert!(matches!(encode(&map, &mut out, LIMIT), Err(EncodeError::OverLimit)));
        assert!(out.len() < 16, "a map's entries take two bytes at least: {} bytes", out.len());

        // A string or byte string over the limit is refused before it is copied.
        let mut out = vec![0; 10];
        let text = "x".repeat(LIMIT);
        assert!(matches!(encode(&text, &mut out, LIMIT), Err(EncodeError::OverLimit)));
        assert!(matches!(
            encode(&serde_bytes_like(&text), &mut out, LIMIT),
            Err(EncodeError::OverLimit)
        ));
        assert_eq!(out.len(), 10, "nothing written");

        // A value that fits exactly is written, what `out` held before included.
        let mut out = vec![0; 10];
        encode(&vec![7u8; 100], &mut out, 10 + 3 + 100).unwrap();
        assert!(matches!(
            encode(&vec![7u8; 100], &mut vec![0; 11], 113),
            Err(EncodeError::OverLimit)
        ));
        // Crossing the limit wins over whatever error the value's own `Serialize` makes of it.
        struct Disguised(String);
        impl Serialize for Disguised {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0).map_err(|_| serde::ser::Error::custom("something else"))
            }
        }
        let mut out = Vec::new();
        let wrapped = Some(vec![Disguised(text)]);
        assert!(matches!(encode(&wrapped, &mut out, LIMIT), Err(EncodeError::OverLimit)));
    }

    /// `text` as a byte string.
    fn serde_bytes_like(text: &str) -> impl Serialize + '_ {
        struct AsBytes<'a>(&'a str);
        impl Serialize for AsBytes<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0.as_bytes())
            }
        }
        AsBytes(text)
    }

    #[test]
    fn foreign_extensions_and_trailing_bytes_are_refused() {
        for bytes in [
            &[FIXEXT1, 1, 1][..],
            &[FIXEXT1, SOME_EXT as u8, 0],
            &[0xc7, 0, SOME_EXT as u8],
            &[NIL, NIL],
            &[0xc1],
        ] {
            assert!(decode::<Option<Option<u8>>>(bytes).is_err(), "{bytes:x?}");
            assert!(decode::<serde_json::Value>(bytes).is_err(), "{bytes:x?}");
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Nest {
        Leaf,
        Node(Box<Nest>),
    }

    fn nest(depth: usize) -> Nest {
        (0..depth).fold(Nest::Leaf, |inner, _| Nest::Node(Box::new(inner)))
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(untagged)]
    enum Untagged {
        Leaf(u8),
        List(Vec<Untagged>),
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Flat {
        #[serde(flatten)]
        rest: BTreeMap<String, Option<Box<Flat>>>,
    }

    #[test]
    fn the_depth_limit_is_exact_on_both_sides() {
        assert_eq!(round_trip(&nest(MAX_DEPTH)), Ok(nest(MAX_DEPTH)));
        let error = round_trip(&nest(MAX_DEPTH + 1)).unwrap_err();
        assert!(error.contains(&format!("limit of {MAX_DEPTH} levels")), "{error}");
        // Options and newtypes count as levels too: a chain of them is as deep as it looks.
        let mut chain = serde_json::Value::Null;
        for _ in 0..MAX_DEPTH {
            chain = serde_json::Value::Array(vec![chain]);
        }
        assert!(round_trip(&chain).is_ok());
        assert!(round_trip(&Some(chain)).is_err());
    }

    /// Bytes of `depth` nested values, each opened by `open`, around a nil.
    fn deep_bytes(open: &[u8], depth: usize) -> Vec<u8> {
        let mut bytes = open.repeat(depth);
        bytes.push(NIL);
        bytes
    }

    #[test]
    fn deep_input_is_an_error_not_a_stack_overflow() {
        const DEEP: usize = 100_000;
        let arrays = deep_bytes(&[0x91], DEEP);
        let variants = deep_bytes(&[0x81, 0xa4, b'N', b'o', b'd', b'e'], DEEP);
        let maps = deep_bytes(&[0x81, 0xa1, b'k'], DEEP);
        let newtypes = [FIXEXT2, SOME_EXT as u8, 0xff, 0xff];
        for bytes in [&arrays[..], &variants, &maps, &newtypes] {
            // Whatever type reads them, an error: no overflow, no panic.
            assert!(decode::<serde_json::Value>(bytes).is_err());
            assert!(decode::<Nest>(bytes).is_err());
            assert!(decode::<Untagged>(bytes).is_err());
            assert!(decode::<Flat>(bytes).is_err());
            assert!(decode::<Option<Wrapper>>(bytes).is_err());
            assert!(decode::<serde::de::IgnoredAny>(bytes).is_err());
        }
        // Read as what they were made to look like, they fail on the limit itself.
        for (bytes, error) in [
            (&arrays[..], decode::<serde_json::Value>(&arrays).unwrap_err()),
            (&variants, decode::<Nest>(&variants).unwrap_err()),
            (&maps, decode::<Flat>(&maps).unwrap_err()),
            (&newtypes, decode::<serde_json::Value>(&newtypes).unwrap_err()),
        ] {
            assert!(error.contains(&format!("limit of {MAX_DEPTH} levels")), "{bytes:x?}: {error}");
        }
    }

    /// Values at the limit, in the shapes that cost the most stack per level, are read and
    /// written on a thread with half the stack of the pool's reader thread (the default 2 MiB),
    /// in whatever profile the tests are built (debug frames are the largest).
    #[test]
    fn the_limit_fits_in_half_a_reader_thread_stack() {
        let run = || {
            let mut json = serde_json::Value::Null;
            let mut untagged = Untagged::Leaf(1);
            let mut flat = Flat { rest: BTreeMap::new() };
            for _ in 0..MAX_DEPTH / 2 {
                json = serde_json::json!([{ "k": json }]);
            }
            for _ in 0..MAX_DEPTH {
                untagged = Untagged::List(vec![untagged]);
            }
            // Two levels a link (the map, the option), and the innermost map is one more.
            for _ in 0..MAX_DEPTH / 2 - 1 {
                flat = Flat { rest: [("k".to_owned(), Some(Box::new(flat)))].into() };
            }
            assert_eq!(round_trip(&json).err(), None);
            assert_eq!(round_trip(&untagged).err(), None);
            assert_eq!(round_trip(&flat).err(), None);
            assert_eq!(round_trip(&nest(MAX_DEPTH)).err(), None);
            // The same shapes one level too deep fail cleanly on this stack too.
            assert!(round_trip(&Untagged::List(vec![untagged])).is_err());
            // Dropped here, on this thread, by serde_json's and our own recursive drop glue.
        };
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(run)
            .expect("a thread starts")
            .join()
            .expect("no overflow, no failure");
    }
}
