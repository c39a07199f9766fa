//! C2SP signed notes (c2sp.org/signed-note) with Ed25519 keys.
//!
//! Every signed object in Concord is one of these: query requests, release receipts, charter
//! versions, and (later) checkpoints and cosignatures. A note is text ending in a newline, a blank
//! line, and one or more signature lines `— <key name> base64(key id || signature)`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::LogError;

/// Signature type byte of plain Ed25519 note signatures.
pub const ED25519_TYPE: u8 = 0x01;

/// Largest note accepted from outside, signatures included.
pub const MAX_NOTE_BYTES: usize = 256 * 1024;

/// Most signatures accepted on one note; the spec asks for at least 16.
pub const MAX_SIGNATURES: usize = 128;

const SIG_PREFIX: &str = "\u{2014} ";

/// Checks a key name: non-empty, no Unicode spaces and no `+`.
pub fn check_key_name(name: &str) -> Result<(), LogError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+' || c.is_control()) {
        return Err(LogError::BadKey(format!(
            "key name {name:?} is empty or holds a space or '+'; use a schema-less URL such as federation/member"
        )));
    }
    Ok(())
}

/// The C2SP key id: `SHA-256(name || 0x0A || type || public key)[:4]`, big-endian.
pub fn key_id(name: &str, sig_type: u8, public_key: &[u8]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', sig_type]);
    h.update(public_key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Splits a C2SP key string `<name>+<hex key id>+base64(type || 32 bytes)` (a vkey, or a
/// private key after its `PRIVATE+KEY+` prefix) and checks its name, id syntax and type. The
/// caller checks that the id belongs to the key.
pub(crate) fn split_key_string<'a>(
    s: &'a str,
    sig_type: u8,
    bad: &dyn Fn(&str) -> LogError,
) -> Result<(&'a str, u32, [u8; 32]), LogError> {
    // Key names hold no '+', base64 may: split from the left.
    let mut parts = s.trim().splitn(3, '+');
    let (Some(name), Some(id_hex), Some(material)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("expected <name>+<hex key id>+<base64 key>"));
    };
    check_key_name(name)?;
    if id_hex.len() != 8 {
        return Err(bad("key id must be 8 hex digits"));
    }
    let id = u32::from_str_radix(id_hex, 16).map_err(|_| bad("key id is not hex"))?;
    let bytes = B64.decode(material).map_err(|_| bad("key is not base64"))?;
    let (&t, key) = bytes.split_first().ok_or_else(|| bad("empty key"))?;
    if t != sig_type {
        return Err(bad(&format!("key type is 0x{t:02x}, expected 0x{sig_type:02x}")));
    }
    let key: [u8; 32] = key.try_into().map_err(|_| bad("key must be 32 bytes"))?;
    Ok((name, id, key))
}

/// `<name>+<hex key id>+base64(type || material)`.
pub(crate) fn key_string(name: &str, sig_type: u8, id: u32, material: &[u8]) -> String {
    let mut m = vec![sig_type];
    m.extend_from_slice(material);
    format!("{name}+{id:08x}+{}", B64.encode(m))
}

/// An Ed25519 signing key with its note key name.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Invariant: a private key is never printed, not even in debug output.
        f.debug_struct("NoteSigner").field("name", &self.name).finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A fresh random key.
    pub fn generate(name: &str) -> Result<Self, LogError> {
        check_key_name(name)?;
        let seed: [u8; 32] = rand::random();
        Ok(Self { name: name.to_owned(), key: SigningKey::from_bytes(&seed) })
    }

    /// The key from its 32-byte seed.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self, LogError> {
        check_key_name(name)?;
        Ok(Self { name: name.to_owned(), key: SigningKey::from_bytes(&seed) })
    }

    /// Parses the private-key string written by [`NoteSigner::to_skey`]:
    /// `PRIVATE+KEY+<name>+<hex key id>+base64(0x01 || seed)`.
    pub fn from_skey(skey: &str) -> Result<Self, LogError> {
        let bad = |why: &str| LogError::BadKey(format!("private key file is not a note signing key: {why}"));
        let rest =
            skey.trim().strip_prefix("PRIVATE+KEY+").ok_or_else(|| bad("missing PRIVATE+KEY+ prefix"))?;
        let (name, id, seed) = split_key_string(rest, ED25519_TYPE, &bad)?;
        let signer = Self::from_seed(name, seed)?;
        if signer.key_id() != id {
            return Err(bad("key id does not match the key"));
        }
        Ok(signer)
    }

    /// The private-key string; write it only to a file with mode 0600.
    pub fn to_skey(&self) -> String {
        format!("PRIVATE+KEY+{}", key_string(&self.name, ED25519_TYPE, self.key_id(), self.key.as_bytes()))
    }

    /// The key name, such as `federation/member`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The C2SP key id of this key.
    pub fn key_id(&self) -> u32 {
        key_id(&self.name, ED25519_TYPE, self.key.verifying_key().as_bytes())
    }

    /// The matching verifier key, for those who check this key's signatures.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier { name: self.name.clone(), id: self.key_id(), key: self.key.verifying_key() }
    }

    /// The C2SP verifier-key string of this key.
    pub fn vkey(&self) -> String {
        self.verifier().to_vkey()
    }

    /// Raw Ed25519 signature over `msg`, for formats that sign other bytes than a note's text.
    pub fn sign_raw(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    /// Signs `text` and returns the note's signature.
    pub fn sign_text(&self, text: &str) -> NoteSignature {
        NoteSignature {
            name: self.name.clone(),
            key_id: self.key_id(),
            signature: self.key.sign(text.as_bytes()).to_bytes().to_vec(),
        }
    }
}

/// An Ed25519 verifier key: name, key id and public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses a C2SP vkey `<name>+<hex id>+base64(0x01 || key)`; the id must match the key.
    pub fn from_vkey(vkey: &str) -> Result<Self, LogError> {
        let bad = |why: &str| LogError::BadKey(format!("verifier key {vkey:?} is malformed: {why}"));
        let (name, id, pk) = split_key_string(vkey, ED25519_TYPE, &bad)?;
        let key = VerifyingKey::from_bytes(&pk).map_err(|_| bad("not a valid Ed25519 point"))?;
        if key_id(name, ED25519_TYPE, &pk) != id {
            return Err(bad("key id does not match name and key"));
        }
        Ok(Self { name: name.to_owned(), id, key })
    }

    /// The C2SP verifier-key string `<name>+<hex id>+base64(0x01 || key)`.
    pub fn to_vkey(&self) -> String {
        key_string(&self.name, ED25519_TYPE, self.id, self.key.as_bytes())
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The C2SP key id of this key.
    pub fn key_id(&self) -> u32 {
        self.id
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Checks a raw Ed25519 signature.
    pub fn verify_raw(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
            return false;
        };
        self.key.verify_strict(msg, &sig).is_ok()
    }

    fn matches(&self, sig: &NoteSignature) -> bool {
        sig.name == self.name && sig.key_id == self.id
    }
}

/// One signature line of a note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature {
    /// Name of the key that made the signature.
    pub name: String,
    /// C2SP key id of the key that made the signature.
    pub key_id: u32,
    /// The signature bytes after the key id: 64 for an Ed25519 signature, 72 for a timestamped cosignature.
    pub signature: Vec<u8>,
}

impl NoteSignature {
    fn line(&self) -> String {
        let mut raw = self.key_id.to_be_bytes().to_vec();
        raw.extend_from_slice(&self.signature);
        format!("{SIG_PREFIX}{} {}\n", self.name, B64.encode(raw))
    }
}

/// A signed note: its text and its signatures, none of them checked yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    text: String,
    signatures: Vec<NoteSignature>,
}

impl Note {
    /// An unsigned note over `text`, which must end in a newline and hold no control characters.
    pub fn new(text: impl Into<String>) -> Result<Self, LogError> {
        let text = text.into();
        check_text(&text)?;
        Ok(Self { text, signatures: Vec::new() })
    }

    /// Parses a signed note. The signatures are not verified: call [`Note::verify`].
    pub fn parse(bytes: &[u8]) -> Result<Self, LogError> {
        if bytes.len() > MAX_NOTE_BYTES {
            return Err(LogError::MalformedNote(format!(
                "note is {} bytes, more than the {MAX_NOTE_BYTES} accepted",
                bytes.len()
            )));
        }
        let s = std::str::from_utf8(bytes)
            .map_err(|_| LogError::MalformedNote("note is not valid UTF-8".into()))?;
        if s.chars().any(|c| c.is_control() && c != '\n') {
            return Err(LogError::MalformedNote("note holds control characters other than newline".into()));
        }
        let split = s
            .rfind("\n\n")
            .ok_or_else(|| LogError::MalformedNote("no blank line separates text from signatures".into()))?;
        let text = &s[..split + 1];
        let sig_block = &s[split + 2..];
        if sig_block.is_empty() || !sig_block.ends_with('\n') {
            return Err(LogError::MalformedNote(
                "signature block is empty or does not end in a newline".into(),
            ));
        }
        let mut signatures = Vec::new();
        for line in sig_block[..sig_block.len() - 1].split('\n') {
            if signatures.len() == MAX_SIGNATURES {
                return Err(LogError::MalformedNote(format!("more than {MAX_SIGNATURES} signatures")));
            }
            let rest = line.strip_prefix(SIG_PREFIX).ok_or_else(|| {
                LogError::MalformedNote(format!("signature line {line:?} does not start with an em dash"))
            })?;
            let (name, b64) = rest.split_once(' ').ok_or_else(|| {
                LogError::MalformedNote("signature line has no space after the key name".into())
            })?;
            check_key_name(name).map_err(|e| LogError::MalformedNote(e.to_string()))?;
            let raw = B64
                .decode(b64)
                .map_err(|_| LogError::MalformedNote(format!("signature by {name} is not base64")))?;
            if raw.len() < 5 {
                return Err(LogError::MalformedNote(format!("signature by {name} is too short")));
            }
            signatures.push(NoteSignature {
                name: name.to_owned(),
                key_id: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
                signature: raw[4..].to_vec(),
            });
        }
        Ok(Self { text: text.to_owned(), signatures })
    }

    /// The signed text, ending in a newline.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The note's signatures in order, none of them checked.
    pub fn signatures(&self) -> &[NoteSignature] {
        &self.signatures
    }

    /// Adds (or replaces) the signature of `signer`.
    pub fn sign(&mut self, signer: &NoteSigner) {
        let sig = signer.sign_text(&self.text);
        self.add_signature(sig);
    }

    /// Adds a signature made elsewhere, replacing one by the same key.
    pub fn add_signature(&mut self, sig: NoteSignature) {
        self.signatures.retain(|s| !(s.name == sig.name && s.key_id == sig.key_id));
        self.signatures.push(sig);
    }

    /// The note as bytes on the wire: text, blank line, signature lines.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// Verifies the signatures from `known` keys. Unknown keys are ignored; a known key whose
    /// signature fails rejects the whole note; at least one known signature must verify.
    /// Returns the verifiers whose signatures verified.
    pub fn verify<'a>(&self, known: &'a [NoteVerifier]) -> Result<Vec<&'a NoteVerifier>, LogError> {
        let mut ok: Vec<&NoteVerifier> = Vec::new();
        for sig in &self.signatures {
            for v in known.iter().filter(|v| v.matches(sig)) {
                if !v.verify_raw(self.text.as_bytes(), &sig.signature) {
                    return Err(LogError::BadSignature(sig.name.clone()));
                }
                if !ok.contains(&v) {
                    ok.push(v);
                }
            }
        }
        if ok.is_empty() {
            return Err(LogError::NoKnownSignature);
        }
        Ok(ok)
    }
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)?;
        f.write_str("\n")?;
        for s in &self.signatures {
            f.write_str(&s.line())?;
        }
        Ok(())
    }
}

fn check_text(text: &str) -> Result<(), LogError> {
    if !text.ends_with('\n') {
        return Err(LogError::MalformedNote("note text must end in a newline".into()));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(LogError::MalformedNote("note text holds control characters other than newline".into()));
    }
    if text.len() > MAX_NOTE_BYTES {
        return Err(LogError::MalformedNote("note text is too large".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
    const SPEC_NOTE: &str = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

    #[test]
    fn verifies_the_spec_example() {
        let v = NoteVerifier::from_vkey(SPEC_VKEY).expect("spec vkey parses");
        let note = Note::parse(SPEC_NOTE.as_bytes()).expect("spec note parses");
        assert_eq!(note.text(), "This is an example message.\n");
        let ok = note.verify(std::slice::from_ref(&v)).expect("spec note verifies");
        assert_eq!(ok[0].name(), "example.com/foo");
        assert_eq!(note.to_string(), SPEC_NOTE, "round trip is byte-exact");
        assert_eq!(v.to_vkey(), SPEC_VKEY);
    }

    #[test]
    fn tampered_text_fails_and_unknown_keys_are_ignored() {
        let a = NoteSigner::generate("fed/a").expect("key");
        let b = NoteSigner::generate("fed/b").expect("key");
        let mut note = Note::new("hello\nworld\n").expect("note");
        note.sign(&a);
        let parsed = Note::parse(&note.to_bytes()).expect("parses");
        assert_eq!(parsed.verify(&[a.verifier()]).expect("verifies").len(), 1);
        // Only b is known, and b did not sign: reject.
        assert!(matches!(parsed.verify(&[b.verifier()]), Err(LogError::NoKnownSignature)));
        // A known key with a bad signature rejects the note even if another verifies.
        let tampered = note.to_string().replace("world", "w0rld");
        let t = Note::parse(tampered.as_bytes()).expect("parses");
        assert!(matches!(t.verify(&[a.verifier()]), Err(LogError::BadSignature(_))));
        let mut two = Note::new("x\n").expect("note");
        two.sign(&a);
        two.add_signature(NoteSignature { name: "fed/b".into(), key_id: b.key_id(), signature: vec![0; 64] });
        assert!(
            matches!(two.verify(&[a.verifier(), b.verifier()]), Err(LogError::BadSignature(n)) if n == "fed/b")
        );
        assert!(two.verify(&[a.verifier()]).is_ok(), "unknown (to this verifier) b is ignored");
    }

    #[test]
    fn keys_whose_base64_holds_a_plus_round_trip() {
        for i in 0..200u8 {
            let k = NoteSigner::from_seed("fed/a", [i; 32]).expect("key");
            assert_eq!(NoteVerifier::from_vkey(&k.vkey()).expect("vkey parses").to_vkey(), k.vkey());
            assert_eq!(NoteSigner::from_skey(&k.to_skey()).expect("skey parses").vkey(), k.vkey());
        }
    }

    #[test]
    fn skey_round_trip_and_malformed_inputs() {
        let a = NoteSigner::generate("fed/a").expect("key");
        let back = NoteSigner::from_skey(&a.to_skey()).expect("parses");
        assert_eq!(back.vkey(), a.vkey());
        assert!(format!("{a:?}").find("PRIVATE").is_none());
        for bad in
            ["", "\n\n", "text\n\nno dash\n", "text\n\n\u{2014} k AAAA\n", "t\u{1}\n\n\u{2014} k AAAAAAAA\n"]
        {
            assert!(Note::parse(bad.as_bytes()).is_err(), "{bad:?} must be refused");
        }
        assert!(
            NoteVerifier::from_vkey("example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k")
                .is_err()
        );
        assert!(Note::new("no newline").is_err());
    }
}
