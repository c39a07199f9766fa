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
use crate::wire::{AccessStatus, ErrorCode};

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogEntry {
    /// Owner side: a peer's authenticated request and what was decided and released.
    AccessServed {
        /// When the entry was written, in Unix seconds.
        time: i64,
        /// The request's id, 32 hex digits.
        request_id: String,
        /// Member id of the requester.
        requester: String,
        /// Name of the owner's dataset asked for.
        dataset: String,
        /// What the owner did: `released`, `refused:<code>` or `failed:<code>`.
        decision: ServedDecision,
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
        /// When the entry was written, in Unix seconds.
        time: i64,
        /// The request's id, 32 hex digits.
        request_id: String,
        /// Member id of the owner asked.
        owner: String,
        /// Name of the owner's dataset asked for.
        dataset: String,
        /// The signed request note, base64 (public facts and a commitment to the details).
        request_note: String,
        /// The request's details, where the charter makes access notes public.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        notes: Option<Notes>,
    },
    /// Owner side: requests that were no access (malformed, unsigned, stale, replayed, over the
    /// rate limit), counted per member and code since the previous such entry.
    RefusalsCounted {
        /// When the entry was written, in Unix seconds.
        time: i64,
        /// Start of the counted period, in Unix seconds.
        since: i64,
        /// The refusals, one count per member and code.
        counts: Vec<RefusalCount>,
    },
    /// Requester side: an access made, with the owner's signed receipt.
    AccessMade {
        /// When the entry was written, in Unix seconds.
        time: i64,
        /// The request's id, 32 hex digits.
        request_id: String,
        /// Member id of the owner that released.
        owner: String,
        /// Name of the owner's dataset released from.
        dataset: String,
        /// `sha256:<hex>` of the release's details (salted), as the receipt states it.
        release: String,
        /// Index of the owner's "access served" entry in its own log, as the receipt states it.
        owner_log_index: u64,
        /// The owner's signed receipt note, base64.
        receipt: String,
        /// The release's details, where the charter makes access notes public.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        notes: Option<Notes>,
    },
    /// A charter version this node accepted.
    CharterAccepted {
        /// When the entry was written, in Unix seconds.
        time: i64,
        /// The charter version number.
        version: u64,
        /// Hex SHA-256 of the version's canonical text.
        digest: String,
        /// Member ids whose signatures on the version this node counted.
        signers: Vec<String>,
    },
    /// A proposal seen, with its signed note.
    GovernanceProposal {
        /// When the entry was written, in Unix seconds.
        time: i64,
        /// The proposal's id: hex SHA-256 of its canonical text.
        proposal: String,
        /// Member id of the proposer.
        proposer: String,
        /// The charter version the proposal changes.
        base_version: u64,
        /// One line per proposed change.
        changes: Vec<String>,
        /// The signed proposal note.
        note: String,
    },
    /// A vote seen: `yes` or `no`, with its signed note.
    GovernanceVote {
        /// When the entry was written, in Unix seconds.
        time: i64,
        /// Id of the proposal voted on: hex SHA-256 of its canonical text.
        proposal: String,
        /// Member id of the voter.
        voter: String,
        /// `yes` or `no`.
        ballot: concord_charter::governance::Ballot,
        /// The signed vote note.
        note: String,
    },
    /// Two yes votes of one member on two live proposals of one base: both kept.
    Equivocation {
        /// When the entry was written, in Unix seconds.
        time: i64,
        /// Member id of the voter who signed both yes votes.
        voter: String,
        /// The charter version both proposals change.
        base_version: u64,
        /// Id of the first proposal voted yes on.
        first: String,
        /// Id of the second proposal voted yes on.
        second: String,
        /// Both proposal ids with their signed votes, as JSON.
        evidence: String,
    },
    /// A dataset registered (or registered again) and its policy: `sha256:<hex>` of the file.
    DatasetRegistered {
        /// When the entry was written, in Unix seconds.
        time: i64,
        /// The dataset's name on this node.
        name: String,
        /// The charter's shared schema the dataset conforms to, if any.
        shared_schema: Option<String>,
        /// Hex SHA-256 of the dataset's Arrow IPC schema.
        schema_sha256: String,
        /// `sha256:<hex>` of the dataset's policy file.
        policy: String,
    },
    /// A dataset taken out of the registry; its file stays where it is.
    DatasetRemoved {
        /// When the entry was written, in Unix seconds.
        time: i64,
        /// The dataset's name on this node.
        name: String,
    },
    /// An access request filed (requester side) or received (owner side), with its signed note.
    AccessRequestFiled {
        /// When the entry was written, in Unix seconds.
        time: i64,
        /// The access request's id, 32 hex digits.
        request_id: String,
        /// Member id of the requester.
        requester: String,
        /// Member id of the owner.
        owner: String,
        /// Name of the owner's dataset the request is for.
        dataset: String,
        /// The signed access-request note, base64: actions and period, and a salted commitment
        /// to the purpose and legal basis, which stay with the two parties.
        request_note: String,
        /// The access request's details, where the charter makes access notes public.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        notes: Option<Notes>,
    },
    /// An owner's decision on an access request (approved, refused, revoked), with its signed note.
    AccessRequestDecided {
        /// When the entry was written, in Unix seconds.
        time: i64,
        /// The access request's id, 32 hex digits.
        request_id: String,
        /// Member id of the requester.
        requester: String,
        /// Member id of the owner.
        owner: String,
        /// Name of the owner's dataset the request is for.
        dataset: String,
        /// `approved`, `refused` or `revoked`.
        decision: AccessStatus,
        /// End of the grant's period, in Unix seconds (for a revocation, when it was revoked).
        valid_until: i64,
        /// The owner's signed decision note, base64: with a salted commitment to its reason.
        decision_note: String,
        /// The decision's details, where the charter makes access notes public.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        notes: Option<Notes>,
    },
    /// A dataset's usage policy set: `sha256:<hex>` of the policy file, and its classification.
    PolicySet {
        /// When the entry was written, in Unix seconds.
        time: i64,
        /// The dataset's name on this node.
        dataset: String,
        /// `sha256:<hex>` of the policy file.
        policy_sha256: String,
        /// `public`, `general`, `important` or `core`.
        classification: concord_policy::Classification,
    },
    /// The node's keys and TLS pin, at creation and at every change.
    KeysSet {
        /// When the entry was written, in Unix seconds.
        time: i64,
        /// This node's member id.
        member: String,
        /// The member's Ed25519 verifier key, in C2SP vkey form.
        vkey: String,
        /// The member's witness (cosigning) verifier key, in C2SP vkey form.
        witness_vkey: String,
        /// `sha256/<base64>` of the DER SubjectPublicKeyInfo of the node's TLS key.
        tls_pin: String,
    },
    /// Evidence of a fork in another member's log: `sha256:<hex>` of each signed checkpoint
    /// (the notes themselves are kept in the node's evidence store; a checkpoint may be as large
    /// as an entry may be).
    ForkEvidence {
        /// When the entry was written, in Unix seconds.
        time: i64,
        /// The forked log's origin, `<federation>/<member>`.
        origin: String,
        /// What does not agree, in words.
        detail: String,
        /// `sha256:<hex>` of each signed checkpoint note kept as evidence.
        checkpoints: Vec<String>,
    },
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

/// What an owner did with an authenticated, fresh request, as its "access served" entry says:
/// written in the log as `released`, `refused:<code>` or `failed:<code>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum ServedDecision {
    /// The part was computed and released.
    Released,
    /// Refused before anything ran: by the policy, the charter or a limit.
    Refused(ErrorCode),
    /// Allowed, but the sub-query failed while it ran (or the dataset was unavailable).
    Failed(ErrorCode),
}

impl ServedDecision {
    /// Whether the part was released.
    pub fn released(self) -> bool {
        self == Self::Released
    }

    /// The decision as the log writes it.
    pub fn parse(s: &str) -> Option<Self> {
        match s.split_once(':') {
            None if s == "released" => Some(Self::Released),
            Some(("refused", code)) => ErrorCode::parse(code).map(Self::Refused),
            Some(("failed", code)) => ErrorCode::parse(code).map(Self::Failed),
            _ => None,
        }
    }
}

impl std::fmt::Display for ServedDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Released => f.write_str("released"),
            Self::Refused(code) => write!(f, "refused:{}", code.as_str()),
            Self::Failed(code) => write!(f, "failed:{}", code.as_str()),
        }
    }
}

impl From<ServedDecision> for String {
    fn from(d: ServedDecision) -> Self {
        d.to_string()
    }
}

impl TryFrom<String> for ServedDecision {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).ok_or_else(|| {
            format!("unknown decision {s:?}: expected released, refused:<code> or failed:<code>")
        })
    }
}

/// How many requests of one member were refused with one code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalCount {
    /// Member id of the sender whose requests were refused.
    pub member: String,
    /// The error code they were refused with, such as `stale_request` or `rate_limited`, or
    /// `read_rate_limited` for reads of the log over their rate (which answer `rate_limited`).
    pub code: String,
    /// How many requests were refused.
    pub count: u64,
}

impl LogEntry {
    /// The entry as the log stores it: one JSON object tagged by `kind`.
    pub fn to_bytes(&self) -> Result<Vec<u8>, NodeError> {
        serde_json::to_vec(self).map_err(|source| NodeError::Encode { what: "a log entry", source })
    }

    /// Reads an entry from its JSON bytes; anything else is a bad request.
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

/// Standard base64 (with padding) of some bytes.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// `sha256:<hex>` of some bytes.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", concord_charter::hex(&sha2::Sha256::digest(bytes)))
}

/// The current time, in Unix seconds.
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
    /// The dataset it concerns, if any.
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
        Described {
            time: self.time(),
            kind: self.kind(),
            parties: self.parties().into_iter().map(str::to_owned).collect(),
            dataset: self.dataset().map(str::to_owned),
            decision: self.decision(),
            detail: self.detail(),
        }
    }

    /// When the entry was written, in Unix seconds.
    fn time(&self) -> i64 {
        match self {
            Self::AccessServed { time, .. }
            | Self::AccessRequested { time, .. }
            | Self::RefusalsCounted { time, .. }
            | Self::AccessMade { time, .. }
            | Self::CharterAccepted { time, .. }
            | Self::GovernanceProposal { time, .. }
            | Self::GovernanceVote { time, .. }
            | Self::Equivocation { time, .. }
            | Self::DatasetRegistered { time, .. }
            | Self::DatasetRemoved { time, .. }
            | Self::AccessRequestFiled { time, .. }
            | Self::AccessRequestDecided { time, .. }
            | Self::PolicySet { time, .. }
            | Self::KeysSet { time, .. }
            | Self::ForkEvidence { time, .. } => *time,
        }
    }

    /// The entry's kind, as its JSON tag says it.
    fn kind(&self) -> &'static str {
        match self {
            Self::AccessServed { .. } => "access_served",
            Self::AccessRequested { .. } => "access_requested",
            Self::RefusalsCounted { .. } => "refusals_counted",
            Self::AccessMade { .. } => "access_made",
            Self::CharterAccepted { .. } => "charter_accepted",
            Self::GovernanceProposal { .. } => "governance_proposal",
            Self::GovernanceVote { .. } => "governance_vote",
            Self::Equivocation { .. } => "equivocation",
            Self::DatasetRegistered { .. } => "dataset_registered",
            Self::DatasetRemoved { .. } => "dataset_removed",
            Self::AccessRequestFiled { .. } => "access_request_filed",
            Self::AccessRequestDecided { .. } => "access_request_decided",
            Self::PolicySet { .. } => "policy_set",
            Self::KeysSet { .. } => "keys_set",
            Self::ForkEvidence { .. } => "fork_evidence",
        }
    }

    /// The member ids the entry involves; a requester comes before its owner.
    fn parties(&self) -> Vec<&str> {
        match self {
            Self::AccessServed { requester, .. } => vec![requester.as_str()],
            Self::AccessRequested { owner, .. } | Self::AccessMade { owner, .. } => vec![owner.as_str()],
            Self::RefusalsCounted { counts, .. } => counts.iter().map(|c| c.member.as_str()).collect(),
            Self::CharterAccepted { signers, .. } => signers.iter().map(String::as_str).collect(),
            Self::GovernanceProposal { proposer, .. } => vec![proposer.as_str()],
            Self::GovernanceVote { voter, .. } | Self::Equivocation { voter, .. } => vec![voter.as_str()],
            Self::AccessRequestFiled { requester, owner, .. }
            | Self::AccessRequestDecided { requester, owner, .. } => vec![requester.as_str(), owner.as_str()],
            Self::KeysSet { member, .. } => vec![member.as_str()],
            Self::ForkEvidence { origin, .. } => vec![origin.as_str()],
            Self::DatasetRegistered { .. } | Self::DatasetRemoved { .. } | Self::PolicySet { .. } => {
                Vec::new()
            }
        }
    }

    /// The name of the dataset the entry concerns, if any.
    fn dataset(&self) -> Option<&str> {
        match self {
            Self::AccessServed { dataset, .. }
            | Self::AccessRequested { dataset, .. }
            | Self::AccessMade { dataset, .. }
            | Self::AccessRequestFiled { dataset, .. }
            | Self::AccessRequestDecided { dataset, .. }
            | Self::PolicySet { dataset, .. } => Some(dataset.as_str()),
            Self::DatasetRegistered { name, .. } | Self::DatasetRemoved { name, .. } => Some(name.as_str()),
            Self::RefusalsCounted { .. }
            | Self::CharterAccepted { .. }
            | Self::GovernanceProposal { .. }
            | Self::GovernanceVote { .. }
            | Self::Equivocation { .. }
            | Self::KeysSet { .. }
            | Self::ForkEvidence { .. } => None,
        }
    }

    /// What the entry records as decided: an access decision or a ballot.
    fn decision(&self) -> Option<String> {
        match self {
            Self::AccessServed { decision, .. } => Some(decision.to_string()),
            Self::AccessRequestDecided { decision, .. } => Some(decision.as_str().to_owned()),
            Self::GovernanceVote { ballot, .. } => Some(
                match ballot {
                    concord_charter::governance::Ballot::Yes => "yes",
                    concord_charter::governance::Ballot::No => "no",
                }
                .to_owned(),
            ),
            Self::AccessRequested { .. }
            | Self::RefusalsCounted { .. }
            | Self::AccessMade { .. }
            | Self::CharterAccepted { .. }
            | Self::GovernanceProposal { .. }
            | Self::Equivocation { .. }
            | Self::DatasetRegistered { .. }
            | Self::DatasetRemoved { .. }
            | Self::AccessRequestFiled { .. }
            | Self::PolicySet { .. }
            | Self::KeysSet { .. }
            | Self::ForkEvidence { .. } => None,
        }
    }

    /// The rest of the entry in a few words: ids, versions, digests.
    fn detail(&self) -> String {
        match self {
            Self::AccessServed { request_id, policy, cost, .. } => format!(
                "request {request_id}{}{}",
                policy.as_ref().map(|p| format!(", policy {p}")).unwrap_or_default(),
                cost.as_ref().map(|c| format!(", cost {c}")).unwrap_or_default()
            ),
            Self::AccessRequested { request_id, .. } => format!("request {request_id}"),
            Self::RefusalsCounted { since, counts, .. } => {
                let what: Vec<String> =
                    counts.iter().map(|c| format!("{} {}×{}", c.member, c.code, c.count)).collect();
                format!("since {since}: {}", what.join(", "))
            }
            Self::AccessMade { request_id, owner_log_index, .. } => {
                format!("request {request_id}, owner's log entry {owner_log_index}")
            }
            Self::CharterAccepted { version, digest, .. } => format!("version {version}, digest {digest}"),
            Self::GovernanceProposal { proposal, base_version, changes, .. } => {
                format!("proposal {proposal} on version {base_version}: {}", changes.join("; "))
            }
            Self::GovernanceVote { proposal, .. } => format!("proposal {proposal}"),
            Self::Equivocation { base_version, first, second, .. } => {
                format!("two yes votes on version {base_version}: proposals {first} and {second}")
            }
            Self::DatasetRegistered { shared_schema, policy, .. } => {
                format!("schema {}, policy {policy}", shared_schema.as_deref().unwrap_or("none"))
            }
            Self::DatasetRemoved { .. } => String::new(),
            Self::AccessRequestFiled { request_id, .. } => format!("access request {request_id}"),
            Self::AccessRequestDecided { request_id, valid_until, .. } => {
                format!("access request {request_id}, valid until {valid_until}")
            }
            Self::PolicySet { policy_sha256, classification, .. } => {
                format!("{}, {policy_sha256}", classification.as_str())
            }
            Self::KeysSet { tls_pin, .. } => format!("TLS pin {tls_pin}"),
            Self::ForkEvidence { detail, .. } => detail.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_decisions_keep_the_words_the_log_holds() {
        for (decision, text) in [
            (ServedDecision::Released, "released"),
            (ServedDecision::Refused(ErrorCode::PolicyRefused), "refused:policy_refused"),
            (ServedDecision::Failed(ErrorCode::ExecutionFailed), "failed:execution_failed"),
        ] {
            assert_eq!(decision.to_string(), text);
            assert_eq!(serde_json::to_value(decision).expect("json"), serde_json::json!(text));
            assert_eq!(
                serde_json::from_value::<ServedDecision>(serde_json::json!(text)).expect(text),
                decision
            );
        }
        for bad in
            ["", "release", "refused", "refused:", "refused:no_such_code", "failed:released", "released:x"]
        {
            let e = serde_json::from_value::<ServedDecision>(serde_json::json!(bad));
            assert!(e.is_err(), "{bad:?} is not a decision");
        }
    }

    #[test]
    fn an_entry_reads_back_as_written_and_an_unknown_ballot_is_refused() {
        let vote = LogEntry::GovernanceVote {
            time: 1,
            proposal: "ab".into(),
            voter: "alpha".into(),
            ballot: concord_charter::governance::Ballot::No,
            note: "n".into(),
        };
        let bytes = vote.to_bytes().expect("bytes");
        assert!(String::from_utf8_lossy(&bytes).contains(r#""ballot":"no""#));
        assert_eq!(serde_json::from_slice::<LogEntry>(&bytes).expect("entry"), vote);
        assert_eq!(vote.describe().decision.as_deref(), Some("no"));
        let maybe = String::from_utf8_lossy(&bytes).replace(r#""ballot":"no""#, r#""ballot":"maybe""#);
        assert!(serde_json::from_str::<LogEntry>(&maybe).is_err());
    }
}
