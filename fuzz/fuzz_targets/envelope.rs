//! Sealed envelopes and what they carry, as a node receives them: `envelope::open` with the
//! node's seal key, `Letter::from_bytes` on the payload, the card attached to a letter, and
//! the Olm ciphertext handed to the ratchet. None of these needs the sender's keys to refuse
//! bad input.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use sotto_protocol::chat::OpenedEnvelope;
use sotto_protocol::envelope::{self, Letter, SealKey, MAX_LETTER_BYTES};
use sotto_protocol::session::{Device, Pairwise};

fn recipient() -> SealKey {
    SealKey::from_secret(&[1; 32])
}

fn sender() -> SealKey {
    SealKey::from_secret(&[2; 32])
}

/// One Olm device for the whole run: making one costs key generation.
fn device() -> &'static Mutex<Device> {
    static DEVICE: OnceLock<Mutex<Device>> = OnceLock::new();
    DEVICE.get_or_init(|| Mutex::new(Device::new()))
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        // Raw bytes off the wire or out of a mailbox: size, version and Noise checks.
        0 => {
            if let Ok(opened) = envelope::open(&recipient(), rest) {
                letter(opened.sender, &opened.payload);
            }
        }
        // Any payload, validly sealed to us: the padding and everything behind the seal, and
        // seal/open round-trip.
        1 => {
            let sealed = envelope::seal(&sender(), &recipient().public(), rest);
            if rest.len() > MAX_LETTER_BYTES {
                assert!(sealed.is_err(), "sealed a payload over the limit");
                return;
            }
            let opened = sealed.and_then(|e| envelope::open(&recipient(), &e));
            assert!(
                matches!(&opened, Ok(o) if o.payload == rest && o.sender == sender().public()),
                "seal then open does not give back the payload and the sender"
            );
            if let Ok(opened) = opened {
                letter(opened.sender, &opened.payload);
            }
        }
        // A letter as if it had been opened already.
        _ => letter(sender().public(), rest),
    }
});

fn letter(sender_seal_key: [u8; 32], payload: &[u8]) {
    let Ok(letter) = Letter::from_bytes(payload) else {
        return;
    };
    let again = letter.to_bytes().map(|b| Letter::from_bytes(&b));
    assert!(
        matches!(&again, Ok(Ok(l)) if *l == letter),
        "a letter does not round-trip"
    );
    let opened = OpenedEnvelope {
        sender_seal_key,
        letter,
    };
    let _ = opened.attached_card();
    // The ratchet parses the ciphertext before it can fail to decrypt it. The first bytes of
    // the body stand in for the sender's identity key, so that a pre-key message can name it.
    let mut their_key = [0u8; 32];
    let body = &opened.letter.ciphertext.body;
    let n = body.len().min(32);
    their_key[..n].copy_from_slice(&body[..n]);
    if let Ok(mut device) = device().lock() {
        let _ = Pairwise::new().decrypt(&mut device, &their_key, &opened.letter.ciphertext);
    }
}
