//! C2SP tlog-checkpoint notes and tlog-cosignature/v1 (Ed25519, signature type 0x04).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

use crate::merkle::{Hash, empty_root};
use crate::note::{NoteSignature, check_key_name, key_id, key_string, split_key_string};
use crate::{LogError, Note, NoteVerifier};

/// Signature type byte of timestamped Ed25519 cosignatures.
pub const COSIGNATURE_TYPE: u8 = 0x04;

/// The body of a checkpoint: origin, tree size, root hash, extension lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line, which must equal the log's key name.
    pub origin: String,
    /// Number of leaves in the tree.
    pub size: u64,
    /// Root hash of the tree of `size` leaves.
    pub root: Hash,
    /// Extension lines after the root hash, each non-empty.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The checkpoint's note text: origin, size, base64 root hash and extension lines, each ending in a newline.
    pub fn to_text(&self) -> String {
        let mut s = format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root));
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Parses a checkpoint's note text.
    pub fn from_text(text: &str) -> Result<Self, LogError> {
        let bad = |why: &str| LogError::MalformedCheckpoint(why.to_owned());
        let body = text.strip_suffix('\n').ok_or_else(|| bad("text must end in a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().filter(|l| !l.is_empty()).ok_or_else(|| bad("the origin line is empty"))?;
        let size_line = lines.next().ok_or_else(|| bad("the size line is missing"))?;
        if size_line.is_empty()
            || !size_line.bytes().all(|b| b.is_ascii_digit())
            || (size_line.len() > 1 && size_line.starts_with('0'))
        {
            return Err(bad("the size must be a decimal number without leading zeroes"));
        }
        let size: u64 = size_line.parse().map_err(|_| bad("the size does not fit 64 bits"))?;
        let root_line = lines.next().ok_or_else(|| bad("the root hash line is missing"))?;
        let root: Hash = B64
            .decode(root_line)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad("the root hash is not 32 bytes of base64"))?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(bad("extension lines must not be empty"));
        }
        if size == 0 && root != empty_root() {
            return Err(bad("a checkpoint of size 0 must carry the empty tree's root"));
        }
        Ok(Self { origin: origin.to_owned(), size, root, extensions })
    }

    /// Parses a signed checkpoint and verifies the log's signature on it.
    pub fn open(bytes: &[u8], log_key: &NoteVerifier) -> Result<(Self, Note), LogError> {
        let note = Note::parse(bytes)?;
        let cp = Self::from_text(note.text())?;
        if cp.origin != log_key.name() {
            return Err(LogError::MalformedCheckpoint(format!(
                "origin {} is not the log's key name {}",
                cp.origin,
                log_key.name()
            )));
        }
        note.verify(std::slice::from_ref(log_key))?;
        Ok((cp, note))
    }
}

/// A witness's Ed25519 cosigning key (a separate key from its note key, as the spec asks).
#[derive(Clone)]
pub struct CosignatureSigner {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for CosignatureSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CosignatureSigner").field("name", &self.name).finish_non_exhaustive()
    }
}

fn cosigned_message(timestamp: u64, checkpoint_text: &str) -> Vec<u8> {
    format!("cosignature/v1\ntime {timestamp}\n{checkpoint_text}").into_bytes()
}

impl CosignatureSigner {
    /// A fresh random cosigning key named `name`.
    pub fn generate(name: &str) -> Result<Self, LogError> {
        check_key_name(name)?;
        let seed: [u8; 32] = rand::random();
        Ok(Self { name: name.to_owned(), key: SigningKey::from_bytes(&seed) })
    }

    /// Parses `PRIVATE+KEY+<name>+<hex id>+base64(0x04 || seed)`.
    pub fn from_skey(skey: &str) -> Result<Self, LogError> {
        let bad = |why: &str| LogError::BadKey(format!("not a cosigning key: {why}"));
        let rest =
            skey.trim().strip_prefix("PRIVATE+KEY+").ok_or_else(|| bad("missing PRIVATE+KEY+ prefix"))?;
        let (name, id, seed) = split_key_string(rest, COSIGNATURE_TYPE, &bad)?;
        let s = Self { name: name.to_owned(), key: SigningKey::from_bytes(&seed) };
        if s.key_id() != id {
            return Err(bad("key id does not match the key"));
        }
        Ok(s)
    }

    /// The private-key string that [`CosignatureSigner::from_skey`] parses; write it only to a file with mode 0600.
    pub fn to_skey(&self) -> String {
        format!(
            "PRIVATE+KEY+{}",
            key_string(&self.name, COSIGNATURE_TYPE, self.key_id(), self.key.as_bytes())
        )
    }

    /// The witness's key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The C2SP key id of this cosigning key.
    pub fn key_id(&self) -> u32 {
        key_id(&self.name, COSIGNATURE_TYPE, self.key.verifying_key().as_bytes())
    }

    /// The matching verifier key, for those who check this witness's cosignatures.
    pub fn verifier(&self) -> CosignatureVerifier {
        CosignatureVerifier { name: self.name.clone(), id: self.key_id(), key: self.key.verifying_key() }
    }

    /// Cosigns a checkpoint's note text at `timestamp` (POSIX seconds, non-zero).
    pub fn cosign(&self, checkpoint_text: &str, timestamp: u64) -> NoteSignature {
        let sig = self.key.sign(&cosigned_message(timestamp, checkpoint_text));
        let mut raw = timestamp.to_be_bytes().to_vec();
        raw.extend_from_slice(&sig.to_bytes());
        NoteSignature { name: self.name.clone(), key_id: self.key_id(), signature: raw }
    }
}

/// A witness's cosignature verifier key; vkey type 0x04.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CosignatureVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl CosignatureVerifier {
    /// Parses a C2SP cosigner vkey `<name>+<hex id>+base64(0x04 || key)`; the id must match the key.
    pub fn from_vkey(vkey: &str) -> Result<Self, LogError> {
        let bad = |why: &str| LogError::BadKey(format!("cosigner key {vkey:?} is malformed: {why}"));
        let (name, id, pk) = split_key_string(vkey, COSIGNATURE_TYPE, &bad)?;
        let key = VerifyingKey::from_bytes(&pk).map_err(|_| bad("not a valid Ed25519 point"))?;
        if key_id(name, COSIGNATURE_TYPE, &pk) != id {
            return Err(bad("key id does not match name and key"));
        }
        Ok(Self { name: name.to_owned(), id, key })
    }

    /// The C2SP verifier-key string of this key.
    pub fn to_vkey(&self) -> String {
        key_string(&self.name, COSIGNATURE_TYPE, self.id, self.key.as_bytes())
    }

    /// The witness's key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Verifies this cosigner's signature on a note, if it carries one: `Ok(Some(timestamp))`
    /// when it verifies, `Ok(None)` when absent, an error when present and bad.
    pub fn verify(&self, note: &Note) -> Result<Option<u64>, LogError> {
        let mut found = None;
        for s in note.signatures().iter().filter(|s| s.name == self.name && s.key_id == self.id) {
            if s.signature.len() != 72 {
                return Err(LogError::BadSignature(self.name.clone()));
            }
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&s.signature[..8]);
            let timestamp = u64::from_be_bytes(ts);
            let sig = ed25519_dalek::Signature::from_slice(&s.signature[8..])
                .map_err(|_| LogError::BadSignature(self.name.clone()))?;
            if timestamp == 0
                || timestamp > i64::MAX as u64
                || self.key.verify_strict(&cosigned_message(timestamp, note.text()), &sig).is_err()
            {
                return Err(LogError::BadSignature(self.name.clone()));
            }
            found = Some(timestamp);
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoteSigner;
    use crate::merkle::MemoryTree;

    #[test]
    fn checkpoints_round_trip_sign_and_cosign() {
        let mut t = MemoryTree::new();
        t.append(b"entry");
        let log = NoteSigner::generate("fed/alpha").expect("key");
        let cp = Checkpoint { origin: "fed/alpha".into(), size: 1, root: t.root(), extensions: vec![] };
        assert_eq!(Checkpoint::from_text(&cp.to_text()).expect("parses"), cp);
        let mut note = Note::new(cp.to_text()).expect("note");
        note.sign(&log);
        let w = CosignatureSigner::generate("fed/bravo/witness").expect("key");
        note.add_signature(w.cosign(note.text(), 1_700_000_000));
        let (opened, note2) = Checkpoint::open(&note.to_bytes(), &log.verifier()).expect("opens");
        assert_eq!(opened, cp);
        let wv = CosignatureVerifier::from_vkey(&w.verifier().to_vkey()).expect("vkey");
        assert_eq!(wv.verify(&note2).expect("verifies"), Some(1_700_000_000));
        assert_eq!(CosignatureSigner::from_skey(&w.to_skey()).expect("skey").key_id(), w.key_id());
        // The cosignature does not verify on another checkpoint.
        let other = Checkpoint { size: 2, ..cp.clone() };
        let mut n3 = Note::new(other.to_text()).expect("note");
        n3.add_signature(note2.signatures()[1].clone());
        assert!(wv.verify(&n3).is_err());
        // Malformed checkpoints.
        for bad in [
            "o\n01\nAAAA\n",
            "o\n1\nshort\n",
            "\n1\nAAAA\n",
            "o\n1\n",
            "o\n0\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        ] {
            assert!(Checkpoint::from_text(bad).is_err(), "{bad:?}");
        }
    }
}
