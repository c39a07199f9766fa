//! The federation's charter: who the members are (keys, TLS pins, endpoints), the shared schemas
//! every member may publish data in, and the threshold that changes them.
//!
//! A charter version is a C2SP signed note whose text is the canonical form of [`Charter`]: every
//! member computes the same bytes from the same content, so signatures made apart combine into one
//! note. Version 1 (genesis) needs the signature of every founder; later versions (built from
//! proposals and votes) need the threshold of the previous version's members, see
//! [`SignedCharter::verify_successor`].
//!
//! Invariant: this crate does no IO; it turns bytes into verified values and back.

#![warn(missing_docs)]

pub mod governance;
mod text;
mod types;

use concord_log::checkpoint::CosignatureVerifier;
use concord_log::{LogError, Note, NoteVerifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use text::CHARTER_TYPE_LINE;
pub use types::{ColumnType, DictionaryKey, IntervalUnit, TimeUnit};

/// Errors of charters and member cards.
#[derive(Debug, thiserror::Error)]
pub enum CharterError {
    /// Charter, proposal or vote text does not parse.
    #[error("charter text is malformed at line {line}: {reason}")]
    Malformed {
        /// The 1-based line that does not parse; 0 when the whole text is at fault.
        line: usize,
        /// What is wrong with that line.
        reason: String,
    },
    /// The text parses but is not the canonical form its content renders to, so signatures would not combine.
    #[error("charter text is not in canonical form; regenerate it with `concord charter genesis`")]
    NotCanonical,
    /// A value breaks a rule of the charter, a member card or a shared schema.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The kind of value at fault, such as `member id` or `threshold`.
        what: &'static str,
        /// The rule it breaks, and how to fix it.
        reason: String,
    },
    /// A charter version lacks the signatures of some members it needs (genesis needs every founder's).
    #[error(
        "charter version {version} lacks the signature of {missing:?}; each of them must run `concord charter sign`"
    )]
    MissingSignatures {
        /// The charter version that is not fully signed.
        version: u64,
        /// Ids of the members whose signatures are missing.
        missing: Vec<String>,
    },
    /// A signature or key failed its check in the signed-note layer.
    #[error("charter signature check failed: {0}")]
    Signature(#[from] LogError),
    /// A charter version is not a valid successor of the version it claims to follow.
    #[error("charter version {got} does not follow version {base}: {reason}")]
    NotSuccessor {
        /// The version it should follow.
        base: u64,
        /// The version offered as its successor.
        got: u64,
        /// Why it does not follow: version number, federation, digest or too few yes signatures.
        reason: String,
    },
}

/// Checks a member id: `[a-z][a-z0-9-]{1,31}`.
pub fn check_member_id(id: &str) -> Result<(), CharterError> {
    let ok = id.len() >= 2
        && id.len() <= 32
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(CharterError::Invalid {
            what: "member id",
            reason: format!(
                "{id:?} must match [a-z][a-z0-9-]{{1,31}}, for example `alpha` or `stat-office-2`"
            ),
        })
    }
}

/// Checks a federation name: `[a-z0-9][a-z0-9.-]{0,62}` (it becomes part of key names and log origins).
pub fn check_federation_name(name: &str) -> Result<(), CharterError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(CharterError::Invalid {
            what: "federation name",
            reason: format!("{name:?} must match [a-z0-9][a-z0-9.-]{{0,62}}, for example `health-2026`"),
        })
    }
}

/// Checks a shared schema, dataset or column name: `[a-z_][a-z0-9_]{0,62}`.
pub fn check_identifier(what: &'static str, name: &str) -> Result<(), CharterError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(CharterError::Invalid {
            what,
            reason: format!("{name:?} must be lower-case letters, digits and '_', starting with a letter"),
        })
    }
}

/// Checks free text that sits on one charter line (names, jurisdictions, endpoints).
pub(crate) fn check_line_text(what: &'static str, s: &str) -> Result<(), CharterError> {
    if s.is_empty() || s.trim() != s || s.chars().any(char::is_control) {
        return Err(CharterError::Invalid {
            what,
            reason: format!("{s:?} must be non-empty, one line, without leading or trailing spaces"),
        });
    }
    Ok(())
}

/// The public facts about a member that it hands to the founders: `member-card.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberCard {
    /// The member id, `[a-z][a-z0-9-]{1,31}`; it ends the member's key name `<federation>/<id>`.
    pub id: String,
    /// The member's display name, such as `Alpha Statistics Office`.
    pub name: String,
    /// The jurisdiction the member's node runs in, such as a country code (`FR`).
    pub jurisdiction: String,
    /// The member's Ed25519 verifier key in C2SP vkey form.
    pub vkey: String,
    /// The member's witness (cosigning) key in C2SP vkey form, signature type 0x04.
    pub witness_vkey: String,
    /// `sha256/<base64>` of the DER SubjectPublicKeyInfo of the member's TLS key.
    pub tls_pin: String,
    /// `host:port` of the member's peer listener.
    pub peer_endpoint: String,
}

impl MemberCard {
    /// Checks the card on its own: id, one-line texts, key names (`.../<id>`, `.../<id>/witness`), TLS pin.
    pub fn validate(&self) -> Result<(), CharterError> {
        check_member_id(&self.id)?;
        check_line_text("member name", &self.name)?;
        check_line_text("jurisdiction", &self.jurisdiction)?;
        check_line_text("peer endpoint", &self.peer_endpoint)?;
        let v = NoteVerifier::from_vkey(&self.vkey)?;
        let want_suffix = format!("/{}", self.id);
        if !v.name().ends_with(&want_suffix) {
            return Err(CharterError::Invalid {
                what: "member card",
                reason: format!("key name {} does not end in {want_suffix}", v.name()),
            });
        }
        let w = self.witness_verifier()?;
        if w.name() != format!("{}/witness", v.name()) {
            return Err(CharterError::Invalid {
                what: "member card",
                reason: format!("witness key name {} is not {}/witness", w.name(), v.name()),
            });
        }
        let pin = self.tls_pin.strip_prefix("sha256/").unwrap_or("");
        if pin.len() != 44 {
            return Err(CharterError::Invalid {
                what: "TLS pin",
                reason: format!("{:?} must be sha256/ followed by 44 base64 characters", self.tls_pin),
            });
        }
        Ok(())
    }

    /// The member's note verifier key, parsed from [`MemberCard::vkey`].
    pub fn verifier(&self) -> Result<NoteVerifier, CharterError> {
        Ok(NoteVerifier::from_vkey(&self.vkey)?)
    }

    /// The member's witness cosignature verifier key, parsed from [`MemberCard::witness_vkey`].
    pub fn witness_verifier(&self) -> Result<CosignatureVerifier, CharterError> {
        Ok(CosignatureVerifier::from_vkey(&self.witness_vkey)?)
    }

    /// The origin of the member's transparency log: its key name, `<federation>/<member>`.
    pub fn log_origin(&self) -> Result<String, CharterError> {
        Ok(self.verifier()?.name().to_owned())
    }
}

/// One column of a shared schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SchemaColumn {
    /// The column name, `[a-z_][a-z0-9_]{0,62}`.
    pub name: String,
    /// The column's type by its canonical name: `int64`, `decimal(15,2)`, `date32`, ...
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub ty: ColumnType,
    /// Personal columns describe people; later release rules protect them.
    #[serde(default)]
    pub personal: bool,
}

/// A shared schema: the columns that every conforming dataset must offer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SharedSchema {
    /// The schema name, `[a-z_][a-z0-9_]{0,62}`, unique in the charter.
    pub name: String,
    /// The schema's version, 1 by default; a change to a schema needs a higher one.
    #[serde(default = "one")]
    pub version: u32,
    /// The columns, with unique names; at least one.
    pub columns: Vec<SchemaColumn>,
    /// The column that identifies a data subject (a person, a household): minimum group sizes
    /// count its distinct values and differential privacy bounds what one value contributes.
    /// A dataset of a schema with personal columns or a privacy unit is protected by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy_unit: Option<String>,
}

fn one() -> u32 {
    1
}

impl SharedSchema {
    /// Checks the schema: its name, at least one column, unique column names, a privacy unit among them.
    pub fn validate(&self) -> Result<(), CharterError> {
        check_identifier("shared schema name", &self.name)?;
        if self.columns.is_empty() {
            return Err(CharterError::Invalid {
                what: "shared schema",
                reason: format!("{} has no columns", self.name),
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.columns {
            check_identifier("column name", &c.name)?;
            if !seen.insert(&c.name) {
                return Err(CharterError::Invalid {
                    what: "shared schema",
                    reason: format!("{} names column {} twice", self.name, c.name),
                });
            }
        }
        if let Some(u) = &self.privacy_unit
            && !seen.contains(u)
        {
            return Err(CharterError::Invalid {
                what: "shared schema",
                reason: format!("{}'s privacy unit {u} is not one of its columns", self.name),
            });
        }
        Ok(())
    }

    /// Whether the schema describes people: it marks personal columns or a privacy unit.
    pub fn is_personal(&self) -> bool {
        self.privacy_unit.is_some() || self.columns.iter().any(|c| c.personal)
    }

    /// The columns that describe people: those marked personal, and the privacy unit.
    pub fn personal_columns(&self) -> Vec<String> {
        self.columns
            .iter()
            .filter(|c| c.personal || self.privacy_unit.as_deref() == Some(c.name.as_str()))
            .map(|c| c.name.clone())
            .collect()
    }
}

/// Who sees the notes of an access (its SQL, purpose, legal basis, result sizes) in the logs:
/// the two parties only (other members see who asked whom, for which dataset, when, under
/// which policy and at what privacy cost, and a salted commitment to the notes), or every
/// member.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccessNotes {
    /// Only the requester and the owner read the notes; other members see a salted commitment to them.
    #[default]
    Parties,
    /// Every member reads the notes.
    Public,
}

impl AccessNotes {
    /// The name the charter text uses: `parties` or `public`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Parties => "parties",
            Self::Public => "public",
        }
    }

    /// Parses the name the charter text uses; `None` for any other.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "parties" => Some(Self::Parties),
            "public" => Some(Self::Public),
            _ => None,
        }
    }
}

/// The baseline minimum group size of a new federation.
pub const DEFAULT_MIN_GROUP_SIZE: u64 = 10;

/// The most sensitive classification of data that may leave its owner for another member.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CrossBorders {
    /// Only public data may cross borders.
    Public,
    /// General and public data may cross borders.
    General,
    /// Important data under an approved access request, and everything less sensitive.
    #[default]
    Important,
}

impl CrossBorders {
    /// The name the charter text uses: `public`, `general` or `important`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::General => "general",
            Self::Important => "important",
        }
    }

    /// Parses the name the charter text uses; `None` for any other.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "public" => Some(Self::Public),
            "general" => Some(Self::General),
            "important" => Some(Self::Important),
            _ => None,
        }
    }
}

/// The content of one charter version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charter {
    /// The federation's name, `[a-z0-9][a-z0-9.-]{0,62}`; it starts every member's key name.
    pub federation: String,
    /// The version number: 1 for genesis, one more for each adopted successor.
    pub version: u64,
    /// Hex SHA-256 of the previous version's text; `None` for genesis.
    pub previous: Option<String>,
    /// Yes signatures (of this version's members) needed to adopt the next version.
    pub threshold: usize,
    /// Witness policy: a checkpoint is published once this many of its log's witnesses
    /// cosigned it.
    pub witness_quorum: usize,
    /// Witness policy: how many members witness each log, at most; `None`: every other member.
    /// A log's witnesses are the members after its owner in id order, wrapping around
    /// ([`Charter::witnesses_of`]), so that each member witnesses as many logs as it has
    /// witnesses, and the cosignatures of one round grow with the members, not their square.
    pub witnesses_per_log: Option<usize>,
    /// Baseline rule: personal data is released only in groups of at least this many distinct
    /// people (privacy units), whatever a dataset's own policy says.
    pub min_group_size: u64,
    /// Baseline rule: the most sensitive classification whose data may cross borders at all
    /// (core data never does, and important data only under an approved access request).
    pub cross_borders: CrossBorders,
    /// Who reads the notes of accesses in the logs: the two parties, or every member.
    pub access_notes: AccessNotes,
    /// Sorted by id.
    pub members: Vec<MemberCard>,
    /// Sorted by name.
    pub schemas: Vec<SharedSchema>,
}

impl Charter {
    /// Genesis (version 1) with the default threshold of two thirds of members, rounded up.
    pub fn genesis(
        federation: &str,
        members: Vec<MemberCard>,
        schemas: Vec<SharedSchema>,
    ) -> Result<Self, CharterError> {
        let threshold = default_threshold(members.len());
        let witnesses_per_log = default_witnesses_per_log(members.len());
        let witness_quorum = majority(witnesses_of_each_log(members.len(), witnesses_per_log));
        let mut c = Self {
            federation: federation.to_owned(),
            version: 1,
            previous: None,
            threshold,
            witness_quorum,
            witnesses_per_log,
            min_group_size: DEFAULT_MIN_GROUP_SIZE,
            cross_borders: CrossBorders::default(),
            access_notes: AccessNotes::default(),
            members,
            schemas,
        };
        c.members.sort_by(|a, b| a.id.cmp(&b.id));
        c.schemas.sort_by(|a, b| a.name.cmp(&b.name));
        c.validate()?;
        Ok(c)
    }

    /// Checks the whole version: federation name, members and keys, threshold, witness quorum, schemas.
    pub fn validate(&self) -> Result<(), CharterError> {
        check_federation_name(&self.federation)?;
        self.check_numbers()?;
        self.check_members()?;
        self.check_schemas()
    }

    /// Checks that there are members, that the version chain is sound and that the counts fit them.
    fn check_numbers(&self) -> Result<(), CharterError> {
        if self.members.is_empty() {
            return Err(CharterError::Invalid { what: "charter", reason: "it has no members".into() });
        }
        if self.version == 0 || (self.version == 1) != self.previous.is_none() {
            return Err(CharterError::Invalid {
                what: "charter",
                reason: "version 1 has no previous digest and every later version has one".into(),
            });
        }
        if self.threshold == 0 || self.threshold > self.members.len() {
            return Err(CharterError::Invalid {
                what: "threshold",
                reason: format!("{} is not between 1 and the {} members", self.threshold, self.members.len()),
            });
        }
        if self.min_group_size == 0 {
            return Err(CharterError::Invalid {
                what: "minimum group size",
                reason: "it must be at least 1".into(),
            });
        }
        if self.witnesses_per_log == Some(0) {
            return Err(CharterError::Invalid {
                what: "witnesses per log",
                reason: "a log needs at least one witness; leave the setting out for every other member"
                    .into(),
            });
        }
        if self.witness_quorum == 0 && self.witnesses_of_each_log() > 0 {
            return Err(CharterError::Invalid {
                what: "witness quorum",
                reason: "it must be at least 1 where a log has witnesses; a quorum of 0 publishes what no one cosigned"
                    .into(),
            });
        }
        if self.witness_quorum > self.witnesses_of_each_log() {
            return Err(CharterError::Invalid {
                what: "witness quorum",
                reason: format!(
                    "{} is more than the {} witnesses of each log",
                    self.witness_quorum,
                    self.witnesses_of_each_log()
                ),
            });
        }
        Ok(())
    }

    /// Checks each member card, its key name, and that no id or TLS key appears twice.
    fn check_members(&self) -> Result<(), CharterError> {
        let mut ids = std::collections::BTreeSet::new();
        let mut pins = std::collections::BTreeSet::new();
        for m in &self.members {
            m.validate()?;
            let key_name = format!("{}/{}", self.federation, m.id);
            if m.verifier()?.name() != key_name {
                return Err(CharterError::Invalid {
                    what: "member card",
                    reason: format!("{}'s key is named {}, expected {key_name}", m.id, m.verifier()?.name()),
                });
            }
            if !ids.insert(&m.id) {
                return Err(CharterError::Invalid {
                    what: "charter",
                    reason: format!("member {} appears twice", m.id),
                });
            }
            if !pins.insert(&m.tls_pin) {
                return Err(CharterError::Invalid {
                    what: "charter",
                    reason: format!("member {} reuses another member's TLS key", m.id),
                });
            }
        }
        Ok(())
    }

    /// Checks each shared schema, and that no schema name appears twice.
    fn check_schemas(&self) -> Result<(), CharterError> {
        let mut names = std::collections::BTreeSet::new();
        for s in &self.schemas {
            s.validate()?;
            if !names.insert(&s.name) {
                return Err(CharterError::Invalid {
                    what: "charter",
                    reason: format!("shared schema {} appears twice", s.name),
                });
            }
        }
        Ok(())
    }

    /// The member card with this id, if any.
    pub fn member(&self, id: &str) -> Option<&MemberCard> {
        self.members.iter().find(|m| m.id == id)
    }

    /// How many witnesses each log has: [`Charter::witnesses_per_log`], at most the other
    /// members.
    pub fn witnesses_of_each_log(&self) -> usize {
        witnesses_of_each_log(self.members.len(), self.witnesses_per_log)
    }

    /// The members who witness `owner`'s log: the [`Charter::witnesses_of_each_log`] members
    /// after it in id order, wrapping around; none for an id that is not a member.
    pub fn witnesses_of(&self, owner: &str) -> Vec<&MemberCard> {
        let Some(i) = self.members.iter().position(|m| m.id == owner) else {
            return Vec::new();
        };
        let n = self.members.len();
        (1..=self.witnesses_of_each_log()).map(|d| &self.members[(i + d) % n]).collect()
    }

    /// Whether `witness` is one of the witnesses of `owner`'s log.
    pub fn is_witness_of(&self, witness: &str, owner: &str) -> bool {
        self.witnesses_of(owner).iter().any(|m| m.id == witness)
    }

    /// The shared schema with this name, if any.
    pub fn schema(&self, name: &str) -> Option<&SharedSchema> {
        self.schemas.iter().find(|s| s.name == name)
    }

    /// The member whose TLS key has this pin.
    pub fn member_by_pin(&self, pin: &str) -> Option<&MemberCard> {
        self.members.iter().find(|m| m.tls_pin == pin)
    }

    /// The canonical note text of this version.
    pub fn to_text(&self) -> String {
        text::render(self)
    }

    /// Parses canonical note text.
    pub fn from_text(s: &str) -> Result<Self, CharterError> {
        let c = text::parse(s)?;
        c.validate()?;
        if c.to_text() != s {
            return Err(CharterError::NotCanonical);
        }
        Ok(c)
    }

    /// Hex SHA-256 of the canonical text: what the next version names as `previous`.
    pub fn digest(&self) -> String {
        hex(&Sha256::digest(self.to_text().as_bytes()))
    }

    fn verifiers(&self) -> Result<Vec<(String, NoteVerifier)>, CharterError> {
        self.members.iter().map(|m| Ok((m.id.clone(), m.verifier()?))).collect()
    }
}

/// Two thirds of `n`, rounded up.
pub fn default_threshold(n: usize) -> usize {
    (2 * n).div_ceil(3).max(1)
}

/// Witnesses per log that a federation gets unless it chooses: every other member up to
/// [`DEFAULT_WITNESSES_PER_LOG`] of them, then that many. Any two majorities of eight
/// witnesses share two of them (of `n - 1`, only one), so a log that shows two members two
/// histories needs two of its witnesses to cosign both.
pub const DEFAULT_WITNESSES_PER_LOG: usize = 8;

/// [`Charter::witnesses_per_log`] by default for `n` members: `None` (every other member) while
/// they are at most [`DEFAULT_WITNESSES_PER_LOG`], then that many.
pub fn default_witnesses_per_log(n: usize) -> Option<usize> {
    (n.saturating_sub(1) > DEFAULT_WITNESSES_PER_LOG).then_some(DEFAULT_WITNESSES_PER_LOG)
}

/// How many witnesses each log of `n` members has under `per_log`.
pub fn witnesses_of_each_log(n: usize, per_log: Option<usize>) -> usize {
    let others = n.saturating_sub(1);
    per_log.map_or(others, |k| k.min(others))
}

/// A majority of `witnesses` (0 for none).
pub fn majority(witnesses: usize) -> usize {
    if witnesses == 0 { 0 } else { witnesses / 2 + 1 }
}

/// Lower-case hex of `bytes`, as charter digests and proposal ids are written.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A charter version with the signatures it carries.
#[derive(Clone, Debug)]
pub struct SignedCharter {
    /// The charter version's content, parsed from the note's text.
    pub charter: Charter,
    /// The signed note whose text is the charter's canonical text.
    pub note: Note,
}

impl SignedCharter {
    /// A charter version with no signatures yet, ready for members to sign.
    pub fn unsigned(charter: Charter) -> Result<Self, CharterError> {
        let note = Note::new(charter.to_text())?;
        Ok(Self { charter, note })
    }

    /// Parses a charter file: canonical text, optionally followed by signatures.
    pub fn parse(bytes: &[u8]) -> Result<Self, CharterError> {
        let s = std::str::from_utf8(bytes)
            .map_err(|_| CharterError::Malformed { line: 0, reason: "file is not UTF-8".into() })?;
        let note = if s.contains("\n\n") { Note::parse(bytes)? } else { Note::new(s)? };
        let charter = Charter::from_text(note.text())?;
        Ok(Self { charter, note })
    }

    /// The charter file's bytes: the bare text while unsigned, else the whole signed note.
    pub fn to_bytes(&self) -> Vec<u8> {
        if self.note.signatures().is_empty() {
            self.note.text().as_bytes().to_vec()
        } else {
            self.note.to_bytes()
        }
    }

    /// Ids of the members (of this version) whose signatures verify; any bad signature by a
    /// member key is an error.
    pub fn signed_by(&self) -> Result<Vec<String>, CharterError> {
        let mut ids = Vec::new();
        for (id, v) in self.charter.verifiers()? {
            match self.note.verify(std::slice::from_ref(&v)) {
                Ok(_) => ids.push(id),
                Err(LogError::NoKnownSignature) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(ids)
    }

    /// Ids of `base`'s members whose signatures over this version verify: who adopted it.
    pub fn signed_by_members_of(&self, base: &Charter) -> Vec<String> {
        base.verifiers()
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, v)| self.note.verify(std::slice::from_ref(v)).is_ok())
            .map(|(id, _)| id)
            .collect()
    }

    /// Members of this version who have not signed it yet.
    pub fn missing_signers(&self) -> Result<Vec<String>, CharterError> {
        let signed = self.signed_by()?;
        Ok(self.charter.members.iter().map(|m| m.id.clone()).filter(|id| !signed.contains(id)).collect())
    }

    /// Genesis is adopted only with a valid signature from every founder.
    pub fn verify_genesis(&self) -> Result<(), CharterError> {
        if self.charter.version != 1 {
            return Err(CharterError::Invalid {
                what: "genesis",
                reason: format!("version is {}, genesis is version 1", self.charter.version),
            });
        }
        let missing = self.missing_signers()?;
        if !missing.is_empty() {
            return Err(CharterError::MissingSignatures { version: 1, missing });
        }
        Ok(())
    }

    /// Version N+1 is adopted with yes signatures from at least the threshold of version N's
    /// members, over a body that names version N's digest.
    pub fn verify_successor(&self, base: &Charter) -> Result<(), CharterError> {
        let got = self.charter.version;
        let not = |reason: String| CharterError::NotSuccessor { base: base.version, got, reason };
        if got != base.version + 1 {
            return Err(not("versions must increase by one".into()));
        }
        if self.charter.federation != base.federation {
            return Err(not("it names another federation".into()));
        }
        if self.charter.previous.as_deref() != Some(base.digest().as_str()) {
            return Err(not("its previous digest is not the base version's digest".into()));
        }
        let mut yes = 0;
        for (_, v) in base.verifiers()? {
            match self.note.verify(std::slice::from_ref(&v)) {
                Ok(_) => yes += 1,
                Err(LogError::NoKnownSignature) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if yes < base.threshold {
            return Err(not(format!("{yes} yes signatures, the threshold is {}", base.threshold)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
