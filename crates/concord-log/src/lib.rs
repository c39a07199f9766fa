//! Concord's log primitives: C2SP signed notes with Ed25519 keys, the one signature format of
//! every signed object in the federation (requests, receipts, charter versions, checkpoints).
//!
//! Invariant: this crate does no IO, starts no runtime and knows nothing of SQL.

pub mod merkle;
pub mod note;

pub use note::{Note, NoteSignature, NoteSigner, NoteVerifier};

/// Errors of signed notes and keys.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("malformed signed note: {0}")]
    MalformedNote(String),
    #[error("bad key: {0}")]
    BadKey(String),
    #[error("the signature by {0} does not verify: the note was altered or signed by another key")]
    BadSignature(String),
    #[error("the note carries no signature from a key we know; check the signer's verifier key")]
    NoKnownSignature,
    #[error("proof failed: {0}")]
    Proof(String),
}
