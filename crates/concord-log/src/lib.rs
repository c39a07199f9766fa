//! Concord's transparency-log primitives: C2SP signed notes with Ed25519 keys (the one signature
//! format of every signed object in the federation), RFC 6962 Merkle trees with inclusion and
//! consistency proofs, C2SP checkpoints and cosignatures, tlog-tiles paths, tiles and entry
//! bundles, and tlog-proof receipts.
//!
//! Invariant: this crate does no IO, starts no runtime and knows nothing of SQL.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod merkle;
pub mod note;
pub mod tiles;

pub use note::{Note, NoteSignature, NoteSigner, NoteVerifier};

/// Errors of signed notes and keys.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A signed note's bytes do not follow the C2SP signed-note format.
    #[error("malformed signed note: {0}")]
    MalformedNote(String),
    /// A key name, verifier key or private-key string is malformed or its key id does not match the key.
    #[error("bad key: {0}")]
    BadKey(String),
    /// A known key's signature on a note does not verify; holds the key name.
    #[error("the signature by {0} does not verify: the note was altered or signed by another key")]
    BadSignature(String),
    /// None of the note's signatures is by a key the caller knows.
    #[error("the note carries no signature from a key we know; check the signer's verifier key")]
    NoKnownSignature,
    /// A Merkle inclusion or consistency proof cannot be made or does not verify.
    #[error("proof failed: {0}")]
    Proof(String),
    /// A checkpoint's text is malformed, or its origin is not the log's key name.
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(String),
    /// A string is not a valid tlog-tiles path, or the tile lies beyond any 64-bit tree.
    #[error("{0:?} is not a tile path (tile/<L>/<N>[.p/<W>] or tile/entries/<N>[.p/<W>])")]
    BadTilePath(String),
    /// A log entry is longer than an entry bundle's u16 length prefix allows; holds its size in bytes.
    #[error("a log entry of {0} bytes is over the 65535-byte limit")]
    EntryTooLarge(usize),
    /// An entry bundle is cut short.
    #[error("malformed entry bundle: {0}")]
    MalformedBundle(String),
    /// A tlog-proof receipt's text is malformed.
    #[error("malformed tlog-proof: {0}")]
    MalformedProof(String),
}
