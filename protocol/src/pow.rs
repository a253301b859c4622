//! Proof-of-work stamps for deposits at intro dead drops.
//!
//! Anyone with a contact card may deposit a first message at its intro dead drop, so such
//! deposits cost the depositor work: a stamp is a nonce such that
//! `SHA-256("sotto/pow/v1" ‖ address ‖ envelope digest ‖ nonce)` starts with `difficulty`
//! zero bits. Checking costs one hash; finding costs about `2^difficulty`.

use sha2::{Digest, Sha256};

use crate::deaddrop::Address;

const DOMAIN: &[u8] = b"sotto/pow/v1";
/// The default difficulty: about a million hashes, well under a second on a desktop.
pub const DEFAULT_DIFFICULTY: u8 = 20;
/// No stamp is ever asked to be harder than this.
pub const MAX_DIFFICULTY: u8 = 32;

fn hash(address: &Address, digest: &[u8; 32], nonce: u64) -> [u8; 32] {
    Sha256::new()
        .chain_update(DOMAIN)
        .chain_update(address.0)
        .chain_update(digest)
        .chain_update(nonce.to_be_bytes())
        .finalize()
        .into()
}

fn leading_zero_bits(h: &[u8; 32]) -> u32 {
    let mut n = 0;
    for b in h {
        if *b == 0 {
            n += 8;
        } else {
            n += b.leading_zeros();
            break;
        }
    }
    n
}

/// Does `nonce` stamp the deposit of the envelope with `digest` at `address`?
pub fn check(address: &Address, digest: &[u8; 32], nonce: u64, difficulty: u8) -> bool {
    leading_zero_bits(&hash(address, digest, nonce)) >= u32::from(difficulty.min(MAX_DIFFICULTY))
}

/// Find a stamp, trying at most `max_tries` nonces from `start`.
pub fn mint(
    address: &Address,
    digest: &[u8; 32],
    difficulty: u8,
    start: u64,
    max_tries: u64,
) -> Option<u64> {
    (0..max_tries)
        .map(|i| start.wrapping_add(i))
        .find(|n| check(address, digest, *n, difficulty))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_stamps_check_and_are_bound() {
        let a = Address([1; 32]);
        let d = [2; 32];
        let n = mint(&a, &d, 12, 0, 1 << 20).unwrap();
        assert_eq!(n, 4651, "minting is deterministic from its start");
        assert!(check(&a, &d, n, 12));
        assert!(!check(&Address([3; 32]), &d, n, 12), "bound to the address");
        assert!(!check(&a, &[4; 32], n, 12), "bound to the envelope");
        assert!(check(&a, &d, 12345, 0), "difficulty 0 accepts anything");
    }

    /// A vector computed by an independent implementation (protocol/vectors/vectors.py),
    /// not by this code; its search also wraps past `u64::MAX`.
    #[test]
    fn a_stamp_matches_an_independent_implementation() {
        let a = Address([7; 32]);
        let d = [8; 32];
        assert_eq!(mint(&a, &d, 16, u64::MAX - 999, 1 << 20), Some(88_750));
        let h: String = hash(&a, &d, 88_750)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            h,
            "00007b0a26dd5f058f69b11e77f6537659d49ae9484bf405dc4f4183a3ab044a"
        );
        assert!(check(&a, &d, 88_750, 17));
        assert!(!check(&a, &d, 88_750, 18));
    }

    #[test]
    fn harder_stamps_are_rarer() {
        let a = Address([1; 32]);
        let d = [2; 32];
        let easy = (0..4096).filter(|n| check(&a, &d, *n, 4)).count();
        let hard = (0..4096).filter(|n| check(&a, &d, *n, 10)).count();
        assert!(easy > 150 && easy < 400, "{easy}");
        assert!(hard < 20, "{hard}");
    }

    #[test]
    fn mint_gives_up() {
        assert_eq!(mint(&Address([1; 32]), &[2; 32], 32, 0, 10), None);
    }
}
