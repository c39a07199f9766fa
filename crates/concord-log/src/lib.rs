//! Concord's transparency-log primitives: C2SP signed notes with Ed25519 keys (the one signature
//! format of every signed object in the federation), RFC 6962 Merkle trees with inclusion and
//! consistency proofs, C2SP checkpoints and cosignatures, tlog-tiles paths, tiles and entry
//! bundles, and tlog-proof receipts.
//!
//! Invariant: this crate does no IO, starts no runtime and knows nothing of SQL.

pub mod checkpoint;
pub mod merkle;
pub mod note;
pub mod tiles;

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
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(String),
    #[error("{0:?} is not a tile path (tile/<L>/<N>[.p/<W>] or tile/entries/<N>[.p/<W>])")]
    BadTilePath(String),
    #[error("a log entry of {0} bytes is over the 65535-byte limit")]
    EntryTooLarge(usize),
    #[error("malformed entry bundle: {0}")]
    MalformedBundle(String),
    #[error("malformed tlog-proof: {0}")]
    MalformedProof(String),
}
