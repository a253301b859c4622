//! Messages on the `/sotto/envelope/1` request-response protocol.
//!
//! A request is one frame holding one sealed envelope; the answer is one frame holding a
//! [`Response`]. A frame is a 4-byte big-endian length followed by that many bytes. A reader
//! checks the length against the limit before reading the body, so an oversize frame costs
//! four bytes of memory.

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::envelope;

/// The protocol id of direct envelope delivery.
pub const ENVELOPE_PROTOCOL: &str = "/sotto/envelope/1";
/// The largest request frame body: one envelope.
pub const MAX_REQUEST_BYTES: usize = envelope::MAX_BYTES;
/// The largest response frame body.
pub const MAX_RESPONSE_BYTES: usize = 256;

/// Why a node refused an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// The frame was longer than [`MAX_REQUEST_BYTES`].
    TooLarge,
    /// Not an envelope of a known version and a bucket size.
    Malformed,
    /// The envelope does not open with this node's key, or its sender is unknown.
    Unopenable,
    /// The node is overloaded; try again later.
    Busy,
    /// The node failed to store the message; try again later.
    Internal,
    /// This peer sent more than the node's rate limit allows; slow down. A peer that keeps
    /// going is banned. (Nodes of this version answer [`Refusal::SlowDown`] instead on
    /// `/sotto/envelope/1`; a sender reads this one as a pause of 10 s.)
    RateLimited,
    /// This peer is over its rate limit: the node takes its next envelope in this many
    /// milliseconds, not before. A peer that is not a contact's node and keeps going is
    /// banned.
    SlowDown(u32),
}

/// The answer to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// Opened, decrypted and stored (flushed to disk) by the recipient.
    Accepted,
    /// Already received earlier; nothing was changed.
    Duplicate,
    Refused(Refusal),
}

impl Response {
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode_limited(self, MAX_RESPONSE_BYTES as u64).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode_limited(bytes, MAX_RESPONSE_BYTES as u64)
    }

    /// Did the recipient take the envelope (now or before)?
    pub fn is_delivered(&self) -> bool {
        matches!(self, Response::Accepted | Response::Duplicate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn snapshot() {
        assert_eq!(Response::Accepted.to_bytes(), vec![0]);
        assert_eq!(Response::Duplicate.to_bytes(), vec![1]);
        assert_eq!(Response::Refused(Refusal::Busy).to_bytes(), vec![2, 3]);
        assert_eq!(
            Response::Refused(Refusal::SlowDown(300)).to_bytes(),
            vec![2, 6, 251, 44, 1]
        );
        assert_eq!(
            Response::from_bytes(&[2, 1]).unwrap(),
            Response::Refused(Refusal::Malformed)
        );
        assert!(Response::from_bytes(&[9]).is_err());
        assert!(Response::from_bytes(&[0, 0]).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Response::from_bytes(&bytes);
        }
    }
}
