//! How task values (arguments, outputs, errors) meet serde: as themselves, except that a
//! `Vec<u8>` travels as one byte string instead of one serde call per byte.
//!
//! serde's own `Vec<u8>` impl is a sequence of `u8`, which costs a call per byte in every format
//! (and a dynamic call per byte through the worker's type-erased registry). Task values are
//! `'static`, so a `Vec<u8>` is recognized by its type id and handed to `serialize_bytes`;
//! reading accepts a byte string or a sequence, so either side may be any serde format. A
//! `Vec<u8>` nested inside a user's own type keeps serde's default, a sequence, which
//! [`crate::wire_value`] writes and reads as bytes at a few instructions a byte; `serde_bytes`
//! makes it one copy there too.

use std::any::{Any, TypeId};
use std::fmt;

use serde::de::{DeserializeOwned, SeqAccess, Visitor};
use serde::{Deserializer, Serialize, Serializer};

/// Serializes a task value, a `Vec<u8>` as bytes.
pub(crate) fn serialize<T: Serialize + 'static, S: Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match (value as &dyn Any).downcast_ref::<Vec<u8>>() {
        Some(bytes) => serializer.serialize_bytes(bytes),
        None => value.serialize(serializer),
    }
}

/// Deserializes a task value, a `Vec<u8>` from bytes (or from a sequence).
pub(crate) fn deserialize<'de, T: DeserializeOwned + 'static, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    if TypeId::of::<T>() != TypeId::of::<Vec<u8>>() {
        return T::deserialize(deserializer);
    }
    let bytes: Box<dyn Any> = Box::new(deserializer.deserialize_byte_buf(BytesVisitor)?);
    match bytes.downcast::<T>() {
        Ok(value) => Ok(*value),
        // `T` is `Vec<u8>`: the type ids were just compared.
        Err(_) => unreachable!("a Vec<u8> downcasts to the type whose id equals Vec<u8>'s"),
    }
}

/// A task value that serializes through [`serialize`].
pub(crate) struct Wire<T>(pub(crate) T);

impl<T: Serialize + 'static> Serialize for Wire<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize(&self.0, serializer)
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a byte string")
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
        Ok(bytes.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(bytes)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(byte) = seq.next_element()? {
            bytes.push(byte);
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + DeserializeOwned + 'static>(value: T) -> (T, String) {
        let json = serde_json::to_string(&Wire(value)).unwrap();
        let mut deserializer = serde_json::Deserializer::from_str(&json);
        (deserialize::<T, _>(&mut deserializer).unwrap(), json)
    }

    #[test]
    fn bytes_go_as_one_byte_string_and_come_back() {
        // The recorder accepts `serialize_bytes` and refuses everything else, `serialize_u8`
        // included: a `Vec<u8>` is one call, any other sequence is refused.
        assert!(serialize(&vec![7u8; 300], &mut bytes_only::Recorder).is_ok());
        assert!(serialize(&vec![7u16; 3], &mut bytes_only::Recorder).is_err());
        let (back, json) = round_trip(vec![1u8, 2, 255]);
        assert_eq!(back, [1, 2, 255]);
        assert_eq!(json, "[1,2,255]", "serde_json writes byte strings as arrays");
    }

    #[test]
    fn other_types_keep_their_own_shape() {
        assert_eq!(round_trip(vec![1u16, 2]).1, "[1,2]");
        assert_eq!(round_trip("text".to_owned()).0, "text");
    }

    #[test]
    fn a_sequence_of_bytes_is_accepted_too() {
        let mut deserializer = serde_json::Deserializer::from_str("[4,5,6]");
        assert_eq!(deserialize::<Vec<u8>, _>(&mut deserializer).unwrap(), [4, 5, 6]);
    }

    /// A serializer that only records whether it was handed bytes in one call.
    mod bytes_only {
        use serde::ser::{self, Impossible, Serializer};

        pub(super) struct Recorder;

        #[derive(Debug)]
        pub(super) struct Refused;

        impl std::fmt::Display for Refused {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("only bytes are expected")
            }
        }

        impl std::error::Error for Refused {}

        impl ser::Error for Refused {
            fn custom<T: std::fmt::Display>(_: T) -> Self {
                Refused
            }
        }

        macro_rules! refuse {
            ($($method:ident($($arg:ty),*) -> $ok:ty;)*) => {
                $(fn $method(self, $(_: $arg),*) -> Result<$ok, Refused> { Err(Refused) })*
            };
        }

        impl Serializer for &mut Recorder {
            type Ok = ();
            type Error = Refused;
            type SerializeSeq = Impossible<(), Refused>;
            type SerializeTuple = Impossible<(), Refused>;
            type SerializeTupleStruct = Impossible<(), Refused>;
            type SerializeTupleVariant = Impossible<(), Refused>;
            type SerializeMap = Impossible<(), Refused>;
            type SerializeStruct = Impossible<(), Refused>;
            type SerializeStructVariant = Impossible<(), Refused>;

            fn serialize_bytes(self, _: &[u8]) -> Result<(), Refused> {
                Ok(())
            }

            refuse! {
                serialize_bool(bool) -> ();
                serialize_i8(i8) -> (); serialize_i16(i16) -> (); serialize_i32(i32) -> ();
                serialize_i64(i64) -> (); serialize_u8(u8) -> (); serialize_u16(u16) -> ();
                serialize_u32(u32) -> (); serialize_u64(u64) -> (); serialize_f32(f32) -> ();
                serialize_f64(f64) -> (); serialize_char(char) -> (); serialize_str(&str) -> ();
                serialize_none() -> (); serialize_unit() -> ();
                serialize_unit_struct(&'static str) -> ();
                serialize_unit_variant(&'static str, u32, &'static str) -> ();
                serialize_seq(Option<usize>) -> Self::SerializeSeq;
                serialize_tuple(usize) -> Self::SerializeTuple;
                serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
                serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
                serialize_map(Option<usize>) -> Self::SerializeMap;
                serialize_struct(&'static str, usize) -> Self::SerializeStruct;
                serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
            }

            fn serialize_some<T: ?Sized + serde::Serialize>(self, _: &T) -> Result<(), Refused> {
                Err(Refused)
            }

            fn serialize_newtype_struct<T: ?Sized + serde::Serialize>(
                self,
                _: &'static str,
                _: &T,
            ) -> Result<(), Refused> {
                Err(Refused)
            }

            fn serialize_newtype_variant<T: ?Sized + serde::Serialize>(
                self,
                _: &'static str,
                _: u32,
                _: &'static str,
                _: &T,
            ) -> Result<(), Refused> {
                Err(Refused)
            }
        }
    }
}
