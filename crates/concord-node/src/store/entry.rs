//! What a node writes to its transparency log: one JSON object per entry, tagged by `kind`.
//!
//! Invariant: entries hold ids, digests, decisions and signed public notes; never dataset rows,
//! and, unless the charter makes notes public, never the SQL, purpose, legal basis, reason or
//! sizes of an access: those are details the two parties keep, committed to by salted hashes.
//! Every entry stays under 64 KiB (the tile format's limit), which the log enforces.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::NodeError;

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogEntry {
    /// Owner side: a peer's authenticated request and what was decided and released.
    AccessServed {
        time: i64,
        request_id: String,
        requester: String,
        dataset: String,
        /// `released`, `refused:<code>` or `failed:<code>`.
        decision: String,
        /// The requester's signed request note, base64: its public facts and a salted
        /// commitment to its details (SQL, purpose), which stay with the two parties.
        request_note: String,
        /// `sha256:<hex>` of the dataset's policy in force, where the dataset exists.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<String>,
        /// The privacy cost charged (`rho 0.005`), for a release under differential privacy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cost: Option<String>,
        /// For a release: `sha256:<hex>` of its details (salted), as the receipt repeats it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        release: Option<String>,
        /// For a refusal or failure: `sha256:<hex>` of the reason the requester was told, salted
        /// with the request's salt.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The notes, where the charter shows them to every member.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        notes: Option<Notes>,
    },
    /// Requester side: a signed request, written before it is sent, so that after any crash
    /// the owner's "access served" has its twin here whether or not the answer came back.
    AccessRequested {
        time: i64,
        request_id: String,
        owner: String,
        dataset: String,
        /// The signed request note, base64 (public facts and a commitment to the details).
        request_note: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        notes: Option<Notes>,
    },
    /// Owner side: requests that were no access (malformed, unsigned, stale, replayed, over the
    /// rate limit), counted per member and code since the previous such entry.
    RefusalsCounted { time: i64, since: i64, counts: Vec<RefusalCount> },
    /// Requester side: an access made, with the owner's signed receipt.
    AccessMade {
        time: i64,
        request_id: String,
        owner: String,
        dataset: String,
        /// `sha256:<hex>` of the release's details (salted), as the receipt states it.
        release: String,
        owner_log_index: u64,
        /// The owner's signed receipt note, base64.
        receipt: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        notes: Option<Notes>,
    },
    /// A charter version this node accepted.
    CharterAccepted { time: i64, version: u64, digest: String, signers: Vec<String> },
    /// A proposal seen, with its signed note.
    GovernanceProposal {
        time: i64,
        proposal: String,
        proposer: String,
        base_version: u64,
        changes: Vec<String>,
        /// The signed proposal note.
        note: String,
    },
    /// A vote seen: `yes` or `no`, with its signed note.
    GovernanceVote { time: i64, proposal: String, voter: String, ballot: String, note: String },
    /// Two yes votes of one member on two live proposals of one base: both kept.
    Equivocation {
        time: i64,
        voter: String,
        base_version: u64,
        first: String,
        second: String,
        evidence: String,
    },
    /// A dataset registered (or registered again) and its policy: `sha256:<hex>` of the file.
    DatasetRegistered {
        time: i64,
        name: String,
        shared_schema: Option<String>,
        schema_sha256: String,
        policy: String,
    },
    /// A dataset taken out of the registry; its file stays where it is.
    DatasetRemoved { time: i64, name: String },
    /// An access request filed (requester side) or received (owner side), with its signed note.
    AccessRequestFiled {
        time: i64,
        request_id: String,
        requester: String,
        owner: String,
        dataset: String,
        /// The signed access-request note, base64: actions and period, and a salted commitment
        /// to the purpose and legal basis, which stay with the two parties.
        request_note: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        notes: Option<Notes>,
    },
    /// An owner's decision on an access request (approved, refused, revoked), with its signed note.
    AccessRequestDecided {
        time: i64,
        request_id: String,
        requester: String,
        owner: String,
        dataset: String,
        decision: String,
        valid_until: i64,
        /// The owner's signed decision note, base64: with a salted commitment to its reason.
        decision_note: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        notes: Option<Notes>,
    },
    /// A dataset's usage policy set: `sha256:<hex>` of the policy file, and its classification.
    PolicySet { time: i64, dataset: String, policy_sha256: String, classification: String },
    /// The node's keys and TLS pin, at creation and at every change.
    KeysSet { time: i64, member: String, vkey: String, witness_vkey: String, tls_pin: String },
    /// Evidence of a fork in another member's log: `sha256:<hex>` of each signed checkpoint
    /// (the notes themselves are kept in the node's evidence store; a checkpoint may be as large
    /// as an entry may be).
    ForkEvidence { time: i64, origin: String, detail: String, checkpoints: Vec<String> },
}

impl LogEntry {
    /// The entry of keys taken into use: at creation and at every rotation.
    pub fn keys_set(card: &concord_charter::MemberCard) -> Self {
        Self::KeysSet {
            time: now(),
            member: card.id.clone(),
            vkey: card.vkey.clone(),
            witness_vkey: card.witness_vkey.clone(),
            tls_pin: card.tls_pin.clone(),
        }
    }
}

/// The details of an access as the two parties keep them, written into the log only where the
/// charter shows notes to every member (`access-notes public`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notes {
    /// The details of the request (or access request, or decision), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    /// The details of a release, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// The reason a request was refused, as its requester was told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Notes {
    /// The notes to log: `Some` only where the charter makes them public.
    pub fn public(
        charter: &concord_charter::Charter,
        details: Option<&[u8]>,
        release: Option<&[u8]>,
        reason: Option<&str>,
    ) -> Option<Self> {
        (charter.access_notes == concord_charter::AccessNotes::Public).then(|| Self {
            details: details.map(b64),
            release: release.map(b64),
            reason: reason.map(str::to_owned),
        })
    }
}

/// How many requests of one member were refused with one code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalCount {
    pub member: String,
    pub code: String,
    pub count: u64,
}

impl LogEntry {
    pub fn to_bytes(&self) -> Result<Vec<u8>, NodeError> {
        serde_json::to_vec(self).map_err(|e| NodeError::State(format!("log entry: {e}")))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, NodeError> {
        serde_json::from_slice(bytes)
            .map_err(|e| NodeError::BadRequest(format!("not a Concord log entry: {e}")))
    }

    /// The request id of an access entry.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::AccessServed { request_id, .. }
            | Self::AccessMade { request_id, .. }
            | Self::AccessRequested { request_id, .. } => Some(request_id),
            _ => None,
        }
    }
}

pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// `sha256:<hex>` of some bytes.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", concord_charter::hex(&sha2::Sha256::digest(bytes)))
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// An entry as people read it: `concord log show`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Described {
    /// Unix seconds.
    pub time: i64,
    /// The entry's kind, as its JSON tag says it (`access_served`, `governance_vote`, ...).
    pub kind: &'static str,
    /// The members it involves: requester and owner, proposer, voter, signers.
    pub parties: Vec<String>,
    pub dataset: Option<String>,
    /// What was decided: `released`, `refused:<code>`, `approved`, `yes`, a cost...
    pub decision: Option<String>,
    /// The rest in a few words: ids, versions, digests.
    pub detail: String,
}

impl LogEntry {
    /// The entry for people; the signed notes it carries are left to `--format json` of the
    /// raw entry (`concord log show --raw`).
    pub fn describe(&self) -> Described {
        let d = |time: i64,
                 kind,
                 parties: &[&str],
                 dataset: Option<&str>,
                 decision: Option<String>,
                 detail: String| {
            Described {
                time,
                kind,
                parties: parties.iter().map(|p| (*p).to_owned()).collect(),
                dataset: dataset.map(str::to_owned),
                decision,
                detail,
            }
        };
        match self {
            Self::AccessServed { time, request_id, requester, dataset, decision, policy, cost, .. } => d(
                *time,
                "access_served",
                &[requester.as_str()],
                Some(dataset.as_str()),
                Some(decision.clone()),
                format!(
                    "request {request_id}{}{}",
                    policy.as_ref().map(|p| format!(", policy {p}")).unwrap_or_default(),
                    cost.as_ref().map(|c| format!(", cost {c}")).unwrap_or_default()
                ),
            ),
            Self::AccessRequested { time, request_id, owner, dataset, .. } => d(
                *time,
                "access_requested",
                &[owner.as_str()],
                Some(dataset.as_str()),
                None,
                format!("request {request_id}"),
            ),
            Self::RefusalsCounted { time, since, counts } => {
                let parties: Vec<&str> = counts.iter().map(|c| c.member.as_str()).collect();
                let what: Vec<String> =
                    counts.iter().map(|c| format!("{} {}×{}", c.member, c.code, c.count)).collect();
                d(
                    *time,
                    "refusals_counted",
                    &parties,
                    None,
                    None,
                    format!("since {since}: {}", what.join(", ")),
                )
            }
            Self::AccessMade { time, request_id, owner, dataset, owner_log_index, .. } => d(
                *time,
                "access_made",
                &[owner.as_str()],
                Some(dataset.as_str()),
                None,
                format!("request {request_id}, owner's log entry {owner_log_index}"),
            ),
            Self::CharterAccepted { time, version, digest, signers } => {
                let parties: Vec<&str> = signers.iter().map(String::as_str).collect();
                d(
                    *time,
                    "charter_accepted",
                    &parties,
                    None,
                    None,
                    format!("version {version}, digest {digest}"),
                )
            }
            Self::GovernanceProposal { time, proposal, proposer, base_version, changes, .. } => d(
                *time,
                "governance_proposal",
                &[proposer.as_str()],
                None,
                None,
                format!("proposal {proposal} on version {base_version}: {}", changes.join("; ")),
            ),
            Self::GovernanceVote { time, proposal, voter, ballot, .. } => d(
                *time,
                "governance_vote",
                &[voter.as_str()],
                None,
                Some(ballot.clone()),
                format!("proposal {proposal}"),
            ),
            Self::Equivocation { time, voter, base_version, first, second, .. } => d(
                *time,
                "equivocation",
                &[voter.as_str()],
                None,
                None,
                format!("two yes votes on version {base_version}: proposals {first} and {second}"),
            ),
            Self::DatasetRegistered { time, name, shared_schema, policy, .. } => d(
                *time,
                "dataset_registered",
                &[],
                Some(name.as_str()),
                None,
                format!("schema {}, policy {policy}", shared_schema.as_deref().unwrap_or("none")),
            ),
            Self::DatasetRemoved { time, name } => {
                d(*time, "dataset_removed", &[], Some(name.as_str()), None, String::new())
            }
            Self::AccessRequestFiled { time, request_id, requester, owner, dataset, .. } => d(
                *time,
                "access_request_filed",
                &[requester.as_str(), owner.as_str()],
                Some(dataset.as_str()),
                None,
                format!("access request {request_id}"),
            ),
            Self::AccessRequestDecided {
                time,
                request_id,
                requester,
                owner,
                dataset,
                decision,
                valid_until,
                ..
            } => d(
                *time,
                "access_request_decided",
                &[requester.as_str(), owner.as_str()],
                Some(dataset.as_str()),
                Some(decision.clone()),
                format!("access request {request_id}, valid until {valid_until}"),
            ),
            Self::PolicySet { time, dataset, policy_sha256, classification } => d(
                *time,
                "policy_set",
                &[],
                Some(dataset.as_str()),
                None,
                format!("{classification}, sha256:{policy_sha256}"),
            ),
            Self::KeysSet { time, member, tls_pin, .. } => {
                d(*time, "keys_set", &[member.as_str()], None, None, format!("TLS pin {tls_pin}"))
            }
            Self::ForkEvidence { time, origin, detail, .. } => {
                d(*time, "fork_evidence", &[origin.as_str()], None, None, detail.clone())
            }
        }
    }
}
