//! The two clocks the node reads, under two names: [`unix_ms`] is the wall clock
//! (timestamps that leave the node or outlive it: messages, deposits, bans, epochs), and
//! [`Monotonic`] measures intervals that must not jump when the wall clock is set (rate
//! limits, pacing).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, by the wall clock (0 if it is set before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A monotonic clock counting milliseconds from its own start.
#[derive(Clone, Copy, Debug)]
pub struct Monotonic(Instant);

impl Monotonic {
    /// A clock that reads 0 now.
    pub fn start() -> Self {
        Monotonic(Instant::now())
    }

    /// Milliseconds since [`Monotonic::start`].
    pub fn ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

impl Default for Monotonic {
    fn default() -> Self {
        Monotonic::start()
    }
}
