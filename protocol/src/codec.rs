//! The one place where sotto turns values into bytes and back.
//!
//! Every wire and stored format goes through [`encode`] and [`decode`]: bincode 1.3.3 with
//! variable-length integers, a hard size limit, and trailing bytes rejected. Nothing else in
//! the workspace calls bincode directly, so the encoding rules live in one file.

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

/// The largest value the codec will encode or decode, in bytes. Callers pass a smaller
/// limit where the format allows it.
pub const MAX_SIZE: u64 = 2 << 20;

/// Why bytes could not be turned into a value, or a value into bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input (or the encoding) is longer than the limit for this format.
    #[error("encoded value too large: limit {limit} bytes, got {got} bytes")]
    TooLarge { limit: u64, got: u64 },
    /// The bytes do not form a valid value of the expected type, or have bytes left over.
    #[error("malformed encoding: {0}")]
    Malformed(String),
}

fn options(limit: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_varint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
        .with_limit(limit)
}

/// Encode `value`, refusing results longer than `limit` bytes (at most [`MAX_SIZE`]).
pub fn encode_limited<T: Serialize + ?Sized>(value: &T, limit: u64) -> Result<Vec<u8>, CodecError> {
    let limit = limit.min(MAX_SIZE);
    options(limit).serialize(value).map_err(|e| match *e {
        bincode::ErrorKind::SizeLimit => CodecError::TooLarge {
            limit,
            got: options(MAX_SIZE * 64)
                .serialized_size(value)
                .unwrap_or(u64::MAX),
        },
        other => CodecError::Malformed(other.to_string()),
    })
}

/// Encode `value` with the default limit, [`MAX_SIZE`].
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_limited(value, MAX_SIZE)
}

/// Decode a `T` from exactly `bytes`, refusing inputs longer than `limit` (at most
/// [`MAX_SIZE`]) and any bytes left over after the value.
pub fn decode_limited<T: DeserializeOwned>(bytes: &[u8], limit: u64) -> Result<T, CodecError> {
    let limit = limit.min(MAX_SIZE);
    let got = bytes.len() as u64;
    if got > limit {
        return Err(CodecError::TooLarge { limit, got });
    }
    options(limit).deserialize(bytes).map_err(|e| match *e {
        bincode::ErrorKind::SizeLimit => CodecError::TooLarge { limit, got },
        other => CodecError::Malformed(other.to_string()),
    })
}

/// `value` encoded (at most `limit` bytes) behind a version byte, for messages whose
/// version is checked before anything else is read.
pub fn encode_versioned<T: Serialize>(
    version: u8,
    value: &T,
    limit: usize,
) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![version];
    out.extend(encode_limited(value, limit as u64)?);
    Ok(out)
}

/// A message [`encode_versioned`] wrote with `version`; `what` names the message in errors.
pub fn decode_versioned<T: DeserializeOwned>(
    version: u8,
    what: &str,
    bytes: &[u8],
    limit: usize,
) -> Result<T, CodecError> {
    match bytes.split_first() {
        Some((&v, rest)) if v == version => decode_limited(rest, limit as u64),
        Some((v, _)) => Err(CodecError::Malformed(format!(
            "{what} version {v}, expected {version}"
        ))),
        None => Err(CodecError::Malformed(format!("empty {what}"))),
    }
}

/// Decode a `T` with the default limit, [`MAX_SIZE`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_limited(bytes, MAX_SIZE)
}

/// 16 bytes from the 32 lowercase or uppercase hex digits [`write_hex`] prints.
pub fn parse_hex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// `bytes` as lowercase hex digits.
pub fn write_hex(bytes: &[u8], f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        n: u64,
        s: String,
        v: Vec<u8>,
    }

    #[test]
    fn snapshot_of_one_encoding() {
        let bytes = encode(&Sample {
            n: 300,
            s: "hi".into(),
            v: vec![1, 2],
        })
        .unwrap();
        // varint 300 = fb 2c 01; string and vec carry a varint length.
        assert_eq!(hex(&bytes), "fb2c01026869020102");
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&Sample {
            n: 1,
            s: String::new(),
            v: vec![],
        })
        .unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<Sample>(&bytes),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn oversize_input_is_rejected_before_parsing() {
        let bytes = vec![0u8; 100];
        assert!(matches!(
            decode_limited::<Sample>(&bytes, 10),
            Err(CodecError::TooLarge {
                limit: 10,
                got: 100
            })
        ));
    }

    #[test]
    fn a_claimed_huge_length_does_not_allocate() {
        // n = 0, s = length 2^60 (varint marker 0xfd + u64).
        let mut bytes = vec![0u8, 0xfd];
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode::<Sample>(&bytes).is_err());
    }

    #[test]
    fn oversize_value_is_refused_on_encode() {
        let big = Sample {
            n: 0,
            s: "x".repeat(200),
            v: vec![],
        };
        assert!(matches!(
            encode_limited(&big, 100),
            Err(CodecError::TooLarge { limit: 100, .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(n in any::<u64>(), s in ".{0,64}", v in proptest::collection::vec(any::<u8>(), 0..256)) {
            let value = Sample { n, s, v };
            let bytes = encode(&value).unwrap();
            prop_assert_eq!(decode::<Sample>(&bytes).unwrap(), value);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Sample>(&bytes);
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
