//! Size buckets: every sealed envelope is padded to one of a few fixed sizes, so that its
//! length reveals only which bucket the message fell into.

/// The envelope sizes, in bytes. The largest is the largest Noise message.
pub const BUCKETS: [usize; 7] = [512, 1024, 2048, 4096, 8192, 16384, 65535];

/// The smallest bucket that holds `len` bytes, if any does.
pub fn bucket_for(len: usize) -> Option<usize> {
    BUCKETS.iter().copied().find(|b| *b >= len)
}

/// Is `len` exactly one of the bucket sizes?
pub fn is_bucket(len: usize) -> bool {
    BUCKETS.contains(&len)
}

/// Frame `data` with a 4-byte length and zero-fill it to exactly `total` bytes.
/// Returns `None` if it does not fit.
pub fn pad_to(data: &[u8], total: usize) -> Option<Vec<u8>> {
    let needed = data.len().checked_add(4)?;
    if needed > total {
        return None;
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&u32::try_from(data.len()).ok()?.to_le_bytes());
    out.extend_from_slice(data);
    out.resize(total, 0);
    Some(out)
}

/// Undo [`pad_to`]: the framed data, or `None` if the length prefix is inconsistent or the
/// padding is not all zeros.
pub fn unpad(padded: &[u8]) -> Option<&[u8]> {
    let (len, rest) = padded.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    if len > rest.len() {
        return None;
    }
    let (data, zeros) = rest.split_at(len);
    zeros.iter().all(|b| *b == 0).then_some(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_are_chosen_smallest_first() {
        assert_eq!(bucket_for(0), Some(512));
        assert_eq!(bucket_for(512), Some(512));
        assert_eq!(bucket_for(513), Some(1024));
        assert_eq!(bucket_for(65535), Some(65535));
        assert_eq!(bucket_for(65536), None);
    }

    #[test]
    fn bad_padding_is_refused() {
        assert_eq!(unpad(&[1, 0, 0]), None);
        assert_eq!(unpad(&[5, 0, 0, 0, 1]), None);
        assert_eq!(unpad(&[1, 0, 0, 0, 9, 1]), None, "non-zero padding");
        assert_eq!(unpad(&[1, 0, 0, 0, 9, 0]), Some(&[9u8][..]));
    }

    proptest! {
        #[test]
        fn pad_round_trips(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let total = bucket_for(data.len() + 4).unwrap();
            let padded = pad_to(&data, total).unwrap();
            prop_assert_eq!(padded.len(), total);
            prop_assert_eq!(unpad(&padded).unwrap(), &data[..]);
        }

        #[test]
        fn unpad_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = unpad(&bytes);
        }
    }
}
