//! The text forms a user pastes or a client sends: a `sotto:` card URI, an account address,
//! a message id. Each parses or is refused without panicking, and what parses prints back to
//! a form that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_protocol::card::Card;
use sotto_protocol::content::MessageId;
use sotto_protocol::identity::AccountKey;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(card) = Card::from_uri(text) {
        let again = Card::from_uri(&card.to_uri());
        assert!(matches!(&again, Ok(c) if *c == card), "card URI: {again:?}");
    }
    if let Ok(key) = AccountKey::from_address(text) {
        let again = AccountKey::from_address(&key.address());
        assert!(matches!(&again, Ok(k) if *k == key), "address: {again:?}");
    }
    if let Some(id) = MessageId::parse(text) {
        assert_eq!(MessageId::parse(&id.to_string()), Some(id), "message id");
    }
});
