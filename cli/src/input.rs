//! Input refused on this side, before it reaches the daemon: the CLI's own checks of what
//! the user typed or piped in (exit code 6, like the daemon's "invalid params").

use std::fmt;

/// Input given on this side was refused before it reached the daemon (exit code 6).
#[derive(Debug)]
pub struct InvalidInput(pub String);

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidInput {}
