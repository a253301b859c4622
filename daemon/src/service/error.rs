//! Why a service operation failed: one enum per family of operations, each variant saying
//! what was expected and what came. The control API maps each variant to one error code
//! (`rpc.rs`, docs/api.md).

use sotto_protocol::card::CardError;
use sotto_protocol::chat::ChatError;
use sotto_protocol::content::ContentError;

use crate::net::SendError as NetError;
use crate::store::StoreError;

/// Why an operation on the account or the node failed (`account.*`, `node.status`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    #[error("no account yet: create one with `sotto init --name NAME`")]
    NoAccount,
    #[error("an account exists already")]
    AccountExists,
    #[error("a name is 1 to 64 characters, without control characters")]
    BadName,
    #[error("cannot sign this account's card: {0}")]
    Card(#[from] CardError),
    #[error("the network is not answering: {0}")]
    Network(#[from] NetError),
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
}

/// Why an operation on contacts failed (`contact.*`, `requests.*`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContactError {
    #[error("no account yet: create one with `sotto init --name NAME`")]
    NoAccount,
    #[error("no contact named {0:?}")]
    Unknown(String),
    #[error("bad card: {0}")]
    BadCard(#[from] CardError),
    #[error("a contact named {0:?} exists already; choose another name with --name")]
    NameTaken(String),
    #[error("that is this account's own card")]
    OwnCard,
    #[error("a contact name is 1 to 64 characters, without spaces")]
    BadName,
    #[error("at most {limit} contacts")]
    TooMany { limit: usize },
    #[error("{0:?} is a contact, not a message request")]
    NotARequest(String),
    #[error("{0:?} is not blocked")]
    NotBlocked(String),
    #[error("cannot queue this node's presence: {0}")]
    Presence(Box<MessageError>),
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
}

/// Why a message could not be sent or listed (`message.*`), or a control message queued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    #[error("no account yet: create one with `sotto init --name NAME`")]
    NoAccount,
    #[error(transparent)]
    Contact(Box<ContactError>),
    #[error("the message is empty")]
    Empty,
    #[error("the message is too long: limit {limit} bytes, got {got}")]
    TooLong { limit: usize, got: usize },
    #[error("the outbox is full ({limit} messages waiting); try again later")]
    OutboxFull { limit: usize },
    #[error("{0:?} is blocked; `sotto contact unblock {0}` first")]
    Blocked(String),
    #[error("cannot build the message: {0}")]
    Content(#[from] ContentError),
    #[error("the contact's stored card is unreadable: {0}")]
    Card(#[from] CardError),
    #[error("cannot encrypt: {0}")]
    Encrypt(ChatError),
    #[error(transparent)]
    Group(Box<super::groups::GroupError>),
    #[error("no message {0:?} in this chat (`sotto messages NAME` lists their ids)")]
    UnknownMessage(String),
    #[error("{0:?} names more than one message; give more of its id")]
    AmbiguousMessage(String),
    #[error("only its sender can {0} a message")]
    NotYours(&'static str),
    #[error("a message can be {what} only within {window_secs} s of sending it")]
    TooLate {
        what: &'static str,
        window_secs: u64,
    },
    #[error("the message was deleted")]
    Deleted,
    #[error("a reaction is one emoji (or empty, to take it back), not {0:?}")]
    NotAnEmoji(String),
    #[error("a disappearing timer is one of 24h, 7d, 90d or off (the API takes 1 to {max} s)")]
    BadTimer { max: u64 },
    #[error("{0}")]
    File(String),
    #[error("no attachment with message id {0:?} (`sotto messages NAME` lists their ids)")]
    NoAttachment(String),
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
}

impl From<ContactError> for MessageError {
    fn from(e: ContactError) -> Self {
        match e {
            ContactError::NoAccount => MessageError::NoAccount,
            ContactError::Store(e) => MessageError::Store(e),
            other => MessageError::Contact(Box::new(other)),
        }
    }
}

impl From<MessageError> for ContactError {
    fn from(e: MessageError) -> Self {
        match e {
            MessageError::NoAccount => ContactError::NoAccount,
            MessageError::Store(e) => ContactError::Store(e),
            other => ContactError::Presence(Box::new(other)),
        }
    }
}

/// Why an envelope that arrived was not taken. The sender learns only the wire refusal
/// this maps to ([`ReceiveError::refusal`]); the node logs the rest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiveError {
    #[error("no account to open envelopes with")]
    NoAccount,
    #[error("the envelope does not open: {0}")]
    Open(ChatError),
    #[error("an envelope from an unknown sender without a card")]
    UnknownSender,
    #[error("the sender does not match the seal key")]
    SenderMismatch,
    #[error("the attached card is unreadable: {0}")]
    AttachedCard(ChatError),
    #[error("a stored card is unreadable: {0}")]
    BadCard(#[from] CardError),
    #[error("a card older than the one known")]
    OlderCard,
    #[error("the contact list is full ({limit})")]
    ContactsFull { limit: usize },
    #[error("too many message requests waiting ({limit})")]
    RequestsFull { limit: usize },
    /// The Olm message does not decrypt. `fresh`: it was a pre-key message, or no session
    /// with the sender existed — then it never will (a later message cannot make it).
    #[error("cannot decrypt: {error}")]
    Decrypt { error: ChatError, fresh: bool },
    #[error("cannot queue this node's answer: {0}")]
    Answer(Box<MessageError>),
    #[error("cannot add the writer as a message request: {0}")]
    Contact(Box<ContactError>),
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
}

impl ReceiveError {
    /// Can this envelope never be taken, however often it is tried? Then it is answered
    /// `Unopenable` (and a mailbox host is told to delete it); otherwise `Internal`: it may
    /// be taken later (an earlier message of the session is still missing, the store or the
    /// request list was full).
    pub fn is_final(&self) -> bool {
        match self {
            ReceiveError::Open(_)
            | ReceiveError::UnknownSender
            | ReceiveError::SenderMismatch
            | ReceiveError::AttachedCard(_)
            | ReceiveError::OlderCard => true,
            ReceiveError::Decrypt { fresh, .. } => *fresh,
            ReceiveError::NoAccount
            | ReceiveError::BadCard(_)
            | ReceiveError::ContactsFull { .. }
            | ReceiveError::RequestsFull { .. }
            | ReceiveError::Answer(_)
            | ReceiveError::Contact(_)
            | ReceiveError::Store(_) => false,
        }
    }

    /// What the sender (or the mailbox host) is told.
    pub fn refusal(&self) -> sotto_protocol::wire::Refusal {
        use sotto_protocol::wire::Refusal;
        if self.is_final() {
            Refusal::Unopenable
        } else {
            Refusal::Internal
        }
    }
}

impl From<MessageError> for ReceiveError {
    fn from(e: MessageError) -> Self {
        match e {
            MessageError::Store(e) => ReceiveError::Store(e),
            other => ReceiveError::Answer(Box::new(other)),
        }
    }
}

impl From<ContactError> for ReceiveError {
    fn from(e: ContactError) -> Self {
        match e {
            ContactError::Store(e) => ReceiveError::Store(e),
            ContactError::BadCard(e) => ReceiveError::BadCard(e),
            other => ReceiveError::Contact(Box::new(other)),
        }
    }
}

/// Why an operation on peers failed (`peers.*`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    #[error("{0:?} is not a PeerId")]
    NotAPeerId(String),
    #[error("peer {0} is not banned")]
    NotBanned(String),
    #[error("the network is not answering: {0}")]
    Network(#[from] NetError),
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
}
