//! The outbox policy: when to try a queued message again.
//!
//! The daemon keeps every accepted message in a persistent outbox until the recipient's node
//! acknowledges it. Attempts back off exponentially from [`FIRST_RETRY_MS`] to
//! [`MAX_RETRY_MS`], with jitter passed in by the caller so that nodes that failed together
//! do not retry together.

/// The wait after the first failed attempt.
pub const FIRST_RETRY_MS: u64 = 1_000;
/// The longest wait between attempts.
pub const MAX_RETRY_MS: u64 = 5 * 60 * 1_000;

/// When to try again after `failures` failed attempts (1 or more), at `now_ms`.
/// `jitter` in [0, 1) spreads the wait by up to a quarter either way.
pub fn next_attempt(failures: u32, now_ms: u64, jitter: f64) -> u64 {
    let exp = failures.saturating_sub(1).min(20);
    let base = FIRST_RETRY_MS.saturating_mul(1u64 << exp).min(MAX_RETRY_MS);
    let jitter = jitter.clamp(0.0, 1.0);
    let spread = (base as f64 * (0.75 + 0.5 * jitter)) as u64;
    now_ms.saturating_add(spread.min(MAX_RETRY_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_and_caps() {
        assert_eq!(next_attempt(1, 0, 0.5), 1_000);
        assert_eq!(next_attempt(2, 0, 0.5), 2_000);
        assert_eq!(next_attempt(4, 10, 0.5), 8_010);
        assert_eq!(next_attempt(40, 0, 0.5), MAX_RETRY_MS);
        assert_eq!(next_attempt(u32::MAX, u64::MAX, 1.0), u64::MAX);
        assert!(next_attempt(1, 0, 0.0) < next_attempt(1, 0, 0.99));
    }
}
