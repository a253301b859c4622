//! Onion cells and exit messages from the network: `onion::Cell::from_bytes`,
//! `onion::Answer::from_bytes`, a relay peeling what it got, and an exit taking a layer's
//! content (`exit::Exit::receive`) — refused or taken without panicking; what reads back
//! round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rand::{rngs::StdRng, SeedableRng};
use sotto_protocol::exit::{Exit, FromExit, Gather};
use sotto_protocol::onion::{self, Answer, Cell, RelayKey};

fuzz_target!(|data: &[u8]| {
    let mut rng = StdRng::seed_from_u64(7);
    if let Ok(answer) = Answer::from_bytes(data) {
        assert_eq!(Answer::from_bytes(&answer.to_bytes()).ok(), Some(answer));
    }
    if let Ok(cell) = Cell::from_bytes(data) {
        assert_eq!(cell.to_bytes(), data);
        let key = RelayKey::from_secret(&[9; 32]);
        let _ = onion::peel(&key, &cell, &mut rng);
    }
    let mut exit = Exit::new();
    let _ = exit.receive(0, data);
    if let Ok(from) = FromExit::from_bytes(data) {
        let _ = Gather::default().take(from);
    }
});
