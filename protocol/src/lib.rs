//! # sotto-protocol
//!
//! Everything in sotto that is hard to get right and needs no I/O: account identities and
//! safety numbers, contact cards, message content, the one codec, pairwise Double Ratchet
//! sessions (vodozemac Olm), sealed and padded envelopes (snow), and the composition of those
//! into [`chat::seal_message`] and [`chat::open_message`]. No tokio, no sockets, no clock:
//! time comes in as an argument.
//!
//! ```
//! use sotto_protocol::{chat, content::{Content, MessageId}, LocalAccount};
//! use rand::{rngs::StdRng, SeedableRng};
//!
//! let mut rng = StdRng::seed_from_u64(7);
//! let mut alice = LocalAccount::generate("Alice", &mut rng);
//! let mut bob = LocalAccount::generate("Bob", &mut rng);
//! let alice_card = alice.card(Default::default(), 1).unwrap();
//! let bob_card = bob.card(Default::default(), 1).unwrap();
//!
//! // Alice writes to Bob, knowing only his card.
//! let mut alice_with_bob = sotto_protocol::session::Pairwise::new();
//! let content = Content::text(MessageId::random(&mut rng), 1_000, "hi Bob").unwrap();
//! let envelope =
//!     chat::seal_message(&alice, Some(&alice_card), &mut alice_with_bob, &bob_card, &content).unwrap();
//!
//! // Bob opens it: he learns who sent it, and the sender's card rides along the first time.
//! let opened = chat::open_envelope(&bob, &envelope).unwrap();
//! assert_eq!(opened.letter.sender, alice_card.account());
//! let mut bob_with_alice = sotto_protocol::session::Pairwise::new();
//! let got = chat::open_message(&mut bob, &mut bob_with_alice, &alice_card, &opened).unwrap();
//! assert_eq!(got.as_text(), Some("hi Bob"));
//! ```

pub mod blob;
pub mod card;
pub mod chat;
pub mod codec;
pub mod content;
pub mod deaddrop;
pub mod envelope;
pub mod exit;
pub mod group;
pub mod identity;
pub mod mailbox;
pub mod onion;
pub mod outbox;
pub mod padding;
pub mod pow;
pub mod session;
pub mod wire;

pub use chat::LocalAccount;
