//! The peer protocol's signed objects: query requests and release receipts, both C2SP signed
//! notes with a type line and one `key value` fact per line.
//!
//! What other members may read of an access (in the two parties' logs) is the signed note: who
//! asked whom, for which dataset, when, under which charter, policy and privacy cost, and a
//! salted commitment (`details sha256:`, `release sha256:`) to the details that stay with the
//! two parties: the SQL and purpose of a request, the sizes, noise and budget of a release.
//! Each details text starts with a 256-bit salt, so its hash tells nothing of a guessable SQL
//! text or count.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use concord_log::{Note, NoteSigner, NoteVerifier};
use sha2::{Digest as _, Sha256};

use crate::NodeError;

/// Type line of a query request's signed public note.
pub const REQUEST_TYPE: &str = "concord/query-request/v2";
/// Type line of a query request's details text (salt, purpose, SQL).
pub const REQUEST_DETAILS_TYPE: &str = "concord/query-details/v1";
/// Type line of an owner's signed release receipt.
pub const RECEIPT_TYPE: &str = "concord/release-receipt/v2";
/// Type line of a release's details text (salt, result digest, sizes, release report).
pub const RELEASE_DETAILS_TYPE: &str = "concord/release-details/v1";

/// How far a request's time may be from the owner's clock, in seconds.
pub const FRESHNESS_SECS: i64 = 300;

/// Largest details text of a request, release, access request or decision.
pub const MAX_DETAILS: usize = 48 * 1024;

/// A query request from a requester to an owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryRequest {
    /// The federation's name.
    pub federation: String,
    /// The request's id, 32 hex digits.
    pub request_id: String,
    /// Member id of the requester, who signs the request.
    pub requester: String,
    /// Member id of the owner asked.
    pub owner: String,
    /// The charter version the request is made under; the owner must be at the same version.
    pub charter_version: u64,
    /// Unix seconds.
    pub time: i64,
    /// Name of the owner's dataset the sub-query reads.
    pub dataset: String,
    /// Why the data is asked for, one line; a detail kept by the two parties.
    pub purpose: String,
    /// The owner's sub-query as SQL text, one line; a detail kept by the two parties.
    pub sql: String,
}

/// A request as it travels and is kept: the requester's signed public note, which commits to
/// the details (salt, purpose, SQL) by their SHA-256, and the details themselves.
#[derive(Clone, Debug)]
pub struct SignedRequest {
    /// The requester's signed public note.
    pub note: Note,
    /// The details text the note commits to (salt, purpose, SQL), UTF-8.
    pub details: Vec<u8>,
    /// The request the note and details state.
    pub request: QueryRequest,
    /// The details' salt, hex: it salts the release's commitment too.
    pub salt: String,
}

/// The wire form of a signed request, or of any public note with its details.
#[derive(serde::Serialize, serde::Deserialize)]
struct Envelope {
    /// The signed public note, base64.
    note: String,
    /// The details, base64.
    details: String,
}

/// An owner's receipt for what it released: public facts, and a commitment to the details.
#[derive(Clone, Debug, PartialEq)]
pub struct ReleaseReceipt {
    /// The federation's name.
    pub federation: String,
    /// Id of the request answered, 32 hex digits.
    pub request_id: String,
    /// Member id of the owner, who signs the receipt.
    pub owner: String,
    /// Member id of the requester.
    pub requester: String,
    /// Name of the owner's dataset released from.
    pub dataset: String,
    /// `sha256:<hex>` of the requester's signed request note.
    pub request_note: String,
    /// `sha256:<hex>` of the policy file in force.
    pub policy: String,
    /// The privacy cost charged: `rho 0.005`, `epsilon 0.1`, or `none`.
    pub cost: String,
    /// `sha256:<hex>` of the release details (salted).
    pub release: String,
    /// Index of the owner's "access served" entry in its transparency log.
    pub log_index: u64,
}

/// What a release holds besides its rows, kept by the two parties: salted by the request's
/// salt, so that its hash in the logs tells nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct ReleaseDetails {
    /// The request's salt, 64 hex digits.
    pub salt: String,
    /// Hex SHA-256 of the salt and the Arrow IPC bytes released ([`result_digest`]).
    pub result_sha256: String,
    /// `None` (written `withheld`) under differential privacy.
    pub rows_scanned: Option<u64>,
    /// How many groups the release holds.
    pub groups_released: u64,
    /// What the release rules held back, the noise, the budget, the grant (one line of JSON).
    pub release: concord_query::release::ReleaseReport,
}

fn one_line(what: &str, v: &str) -> Result<(), NodeError> {
    if v.is_empty() || v.contains(['\n', '\r']) || v.chars().any(char::is_control) {
        return Err(NodeError::BadRequest(format!("{what} must be one non-empty line of text")));
    }
    Ok(())
}

/// Reads `key value` lines in a fixed order after the type line.
struct Fields<'a> {
    lines: std::str::Lines<'a>,
}

impl<'a> Fields<'a> {
    fn open(text: &'a str, type_line: &str) -> Result<Self, NodeError> {
        let mut lines = text.lines();
        if lines.next() != Some(type_line) {
            return Err(NodeError::BadRequest(format!("note is not a {type_line}")));
        }
        Ok(Self { lines })
    }

    fn get(&mut self, key: &str) -> Result<&'a str, NodeError> {
        self.lines
            .next()
            .and_then(|l| l.strip_prefix(key))
            .and_then(|l| l.strip_prefix(' '))
            .ok_or_else(|| NodeError::BadRequest(format!("note lacks the `{key}` line where expected")))
    }

    fn number<T: std::str::FromStr>(&mut self, key: &str) -> Result<T, NodeError> {
        self.get(key)?.parse().map_err(|_| NodeError::BadRequest(format!("`{key}` is not a number")))
    }

    /// A `sha256:<64 hex>` value.
    fn digest(&mut self, key: &str) -> Result<String, NodeError> {
        let v = self.get(key)?;
        match v.strip_prefix("sha256:") {
            Some(h) if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) => Ok(v.to_owned()),
            _ => Err(NodeError::BadRequest(format!("`{key}` must be sha256:<64 hex digits>"))),
        }
    }

    fn end(mut self) -> Result<(), NodeError> {
        match self.lines.next() {
            None => Ok(()),
            Some(l) => Err(NodeError::BadRequest(format!("unexpected line {l:?} in note"))),
        }
    }
}

/// `sha256:<hex>` of some bytes.
pub fn commitment(bytes: &[u8]) -> String {
    format!("sha256:{}", concord_charter::hex(&Sha256::digest(bytes)))
}

/// The digest of a release's Arrow IPC bytes as its details state it: salted with the request's
/// salt, so that where details are public nobody can match it against encodings of small
/// answers.
pub fn result_digest(salt: &str, ipc: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(ipc);
    concord_charter::hex(&h.finalize())
}

/// `sha256:<hex>` of a refusal's reason, salted with the request's salt: what the owner's log
/// holds of it.
pub fn reason_commitment(salt: &str, reason: &str) -> String {
    commitment(format!("{salt}\n{reason}").as_bytes())
}

/// A fresh 256-bit salt, hex.
pub fn new_salt() -> String {
    let raw: [u8; 32] = rand::random();
    concord_charter::hex(&raw)
}

fn check_salt(salt: &str) -> Result<(), NodeError> {
    if salt.len() != 64 || !salt.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(NodeError::BadRequest("a salt must be 64 hex digits".into()));
    }
    Ok(())
}

fn check_id(id: &str) -> Result<(), NodeError> {
    if id.len() != 32 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(NodeError::BadRequest("request id must be 32 hex digits".into()));
    }
    Ok(())
}

/// A signed public note and its details as one body: JSON of both, base64.
pub fn envelope(note: &Note, details: &[u8]) -> Vec<u8> {
    let e = Envelope { note: B64.encode(note.to_bytes()), details: B64.encode(details) };
    // Two strings: serialising cannot fail.
    serde_json::to_vec(&e).unwrap_or_default()
}

/// Opens an envelope: the note parsed (its signature is checked by the caller) and the details,
/// which must be what the note commits to (`details sha256:` of its text).
pub fn open_envelope(body: &[u8]) -> Result<(Note, Vec<u8>), NodeError> {
    let e: Envelope = serde_json::from_slice(body)
        .map_err(|e| NodeError::BadRequest(format!("the body is not a note with its details: {e}")))?;
    let note = Note::parse(
        &B64.decode(&e.note).map_err(|_| NodeError::BadRequest("the note is not base64".into()))?,
    )?;
    let details =
        B64.decode(&e.details).map_err(|_| NodeError::BadRequest("the details are not base64".into()))?;
    if details.len() > MAX_DETAILS {
        return Err(NodeError::TooLarge(format!(
            "details of {} bytes are over {MAX_DETAILS}",
            details.len()
        )));
    }
    let committed = note
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("details "))
        .ok_or_else(|| NodeError::BadRequest("the note commits to no details".into()))?;
    if committed != commitment(&details) {
        return Err(NodeError::BadRequest("the details are not those the note commits to".into()));
    }
    Ok((note, details))
}

impl QueryRequest {
    /// The details text: the salt, the purpose and the SQL.
    fn details_text(&self, salt: &str) -> Result<String, NodeError> {
        for (what, v) in [("purpose", &self.purpose), ("sql", &self.sql)] {
            one_line(what, v)?;
        }
        Ok(format!("{REQUEST_DETAILS_TYPE}\nsalt {salt}\npurpose {}\nsql {}\n", self.purpose, self.sql))
    }

    /// The public note text, committing to `details`.
    fn public_text(&self, details: &[u8]) -> Result<String, NodeError> {
        one_line("dataset", &self.dataset)?;
        Ok(format!(
            "{REQUEST_TYPE}\nfederation {}\nrequest {}\nrequester {}\nowner {}\ncharter {}\ntime {}\ndataset {}\ndetails {}\n",
            self.federation,
            self.request_id,
            self.requester,
            self.owner,
            self.charter_version,
            self.time,
            self.dataset,
            commitment(details)
        ))
    }

    /// Signs the request under a fresh salt.
    pub fn sign(&self, signer: &NoteSigner) -> Result<SignedRequest, NodeError> {
        let salt = new_salt();
        let details = self.details_text(&salt)?.into_bytes();
        let mut note = Note::new(self.public_text(&details)?)?;
        note.sign(signer);
        Ok(SignedRequest { note, details, request: self.clone(), salt })
    }
}

impl SignedRequest {
    /// The body that travels to the owner.
    pub fn to_bytes(&self) -> Vec<u8> {
        envelope(&self.note, &self.details)
    }

    /// Reads a body: the public note and the details it commits to (the signature is checked
    /// by the caller, who knows the requester's key).
    pub fn from_bytes(body: &[u8]) -> Result<Self, NodeError> {
        let (note, details) = open_envelope(body)?;
        Self::from_parts(note, details)
    }

    /// A kept note and its details, the one committing to the other.
    pub fn from_parts(note: Note, details: Vec<u8>) -> Result<Self, NodeError> {
        let mut f = Fields::open(note.text(), REQUEST_TYPE)?;
        let federation = f.get("federation")?.to_owned();
        let request_id = f.get("request")?.to_owned();
        let requester = f.get("requester")?.to_owned();
        let owner = f.get("owner")?.to_owned();
        let charter_version = f.number("charter")?;
        let time = f.number("time")?;
        let dataset = f.get("dataset")?.to_owned();
        let committed = f.digest("details")?;
        f.end()?;
        check_id(&request_id)?;
        if committed != commitment(&details) {
            return Err(NodeError::BadRequest("the details are not those the note commits to".into()));
        }
        let text = std::str::from_utf8(&details)
            .map_err(|_| NodeError::BadRequest("the details are not UTF-8".into()))?;
        let mut d = Fields::open(text, REQUEST_DETAILS_TYPE)?;
        let salt = d.get("salt")?.to_owned();
        let purpose = d.get("purpose")?.to_owned();
        let sql = d.get("sql")?.to_owned();
        d.end()?;
        check_salt(&salt)?;
        let request = QueryRequest {
            federation,
            request_id,
            requester,
            owner,
            charter_version,
            time,
            dataset,
            purpose,
            sql,
        };
        Ok(Self { note, details, request, salt })
    }

    /// `sha256:<hex>` of the signed public note, as both logs hold it.
    pub fn note_digest(&self) -> String {
        commitment(&self.note.to_bytes())
    }
}

/// The public facts of a signed request note, without its details: for audits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFacts {
    /// The federation's name.
    pub federation: String,
    /// The request's id.
    pub request_id: String,
    /// Member id of the requester.
    pub requester: String,
    /// Member id of the owner asked.
    pub owner: String,
    /// Name of the owner's dataset asked for.
    pub dataset: String,
}

impl RequestFacts {
    /// Reads the facts from a request note's text (its signature is not checked here).
    pub fn from_text(text: &str) -> Result<Self, NodeError> {
        let mut f = Fields::open(text, REQUEST_TYPE)?;
        let federation = f.get("federation")?.to_owned();
        let request_id = f.get("request")?.to_owned();
        let requester = f.get("requester")?.to_owned();
        let owner = f.get("owner")?.to_owned();
        let _: u64 = f.number("charter")?;
        let _: i64 = f.number("time")?;
        let dataset = f.get("dataset")?.to_owned();
        f.digest("details")?;
        f.end()?;
        Ok(Self { federation, request_id, requester, owner, dataset })
    }
}

impl ReleaseDetails {
    /// The details text, as the receipt's `release` digest commits to it.
    pub fn to_bytes(&self) -> Vec<u8> {
        format!(
            "{RELEASE_DETAILS_TYPE}\nsalt {}\nresult sha256:{}\nrows-scanned {}\ngroups-released {}\nrelease {}\n",
            self.salt,
            self.result_sha256,
            self.rows_scanned.map_or_else(|| "withheld".to_owned(), |n| n.to_string()),
            self.groups_released,
            // A serialisable struct of strings and numbers; compact JSON has no line breaks.
            serde_json::to_string(&self.release).unwrap_or_else(|_| "{}".into())
        )
        .into_bytes()
    }

    /// Reads a details text, at most [`MAX_DETAILS`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, NodeError> {
        if bytes.len() > MAX_DETAILS {
            return Err(NodeError::TooLarge(format!("release details of {} bytes", bytes.len())));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| NodeError::BadRequest("release details are not UTF-8".into()))?;
        let mut f = Fields::open(text, RELEASE_DETAILS_TYPE)?;
        let salt = f.get("salt")?.to_owned();
        check_salt(&salt)?;
        let result_sha256 = f.digest("result")?.trim_start_matches("sha256:").to_owned();
        let rows_scanned = match f.get("rows-scanned")? {
            "withheld" => None,
            n => Some(n.parse().map_err(|_| NodeError::BadRequest("`rows-scanned` is not a number".into()))?),
        };
        let groups_released = f.number("groups-released")?;
        let release = serde_json::from_str(f.get("release")?)
            .map_err(|e| NodeError::BadRequest(format!("release details' release line: {e}")))?;
        f.end()?;
        Ok(Self { salt, result_sha256, rows_scanned, groups_released, release })
    }
}

impl ReleaseReceipt {
    /// The receipt's note text: type line and one `key value` fact per line.
    pub fn to_text(&self) -> String {
        format!(
            "{RECEIPT_TYPE}\nfederation {}\nrequest {}\nowner {}\nrequester {}\ndataset {}\nrequest-note {}\npolicy {}\ncost {}\nrelease {}\nlog-index {}\n",
            self.federation,
            self.request_id,
            self.owner,
            self.requester,
            self.dataset,
            self.request_note,
            self.policy,
            self.cost,
            self.release,
            self.log_index,
        )
    }

    /// Signs the receipt as the owner: its signed note.
    pub fn sign(&self, signer: &NoteSigner) -> Result<Note, NodeError> {
        one_line("cost", &self.cost)?;
        let mut note = Note::new(self.to_text())?;
        note.sign(signer);
        Ok(note)
    }

    /// Parses and verifies a receipt with the owner's key.
    pub fn verify(bytes: &[u8], owner_key: &NoteVerifier) -> Result<Self, NodeError> {
        let note = Note::parse(bytes)?;
        note.verify(std::slice::from_ref(owner_key))?;
        Self::from_text(note.text())
    }

    /// Parses a receipt's text (its signature is checked separately).
    pub fn from_text(text: &str) -> Result<Self, NodeError> {
        let mut f = Fields::open(text, RECEIPT_TYPE)?;
        let r = Self {
            federation: f.get("federation")?.to_owned(),
            request_id: f.get("request")?.to_owned(),
            owner: f.get("owner")?.to_owned(),
            requester: f.get("requester")?.to_owned(),
            dataset: f.get("dataset")?.to_owned(),
            request_note: f.digest("request-note")?,
            policy: f.digest("policy")?,
            cost: f.get("cost")?.to_owned(),
            release: f.digest("release")?,
            log_index: f.number("log-index")?,
        };
        f.end()?;
        Ok(r)
    }
}

/// A fresh 128-bit request id.
pub fn new_request_id() -> String {
    let raw: [u8; 16] = rand::random();
    concord_charter::hex(&raw)
}

/// Type line of an access request's signed public note.
pub const ACCESS_REQUEST_TYPE: &str = "concord/access-request/v2";
/// Type line of an access request's details text (salt, purpose, legal basis).
pub const ACCESS_REQUEST_DETAILS_TYPE: &str = "concord/access-request-details/v1";
/// Type line of an owner's signed decision on an access request.
pub const ACCESS_DECISION_TYPE: &str = "concord/access-decision/v2";
/// Type line of an access decision's details text (salt, reason).
pub const ACCESS_DECISION_DETAILS_TYPE: &str = "concord/access-decision-details/v1";

/// A requester's access request: the proper channel for what a policy does not release by
/// itself. Signed by the requester, sent to the owner, kept by both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRequest {
    /// The federation's name.
    pub federation: String,
    /// The access request's id, 32 hex digits.
    pub request_id: String,
    /// Member id of the requester, who signs the access request.
    pub requester: String,
    /// Member id of the owner it is filed with.
    pub owner: String,
    /// Name of the owner's dataset asked for.
    pub dataset: String,
    /// `aggregate`, `read_rows`, `describe`.
    pub actions: Vec<concord_policy::Action>,
    /// Why access is asked for, one line; a detail kept by the two parties.
    pub purpose: String,
    /// The legal basis for the access, one line; a detail kept by the two parties.
    pub legal_basis: String,
    /// Unix seconds: the period asked for.
    pub valid_from: i64,
    /// End of the period asked for, in Unix seconds; after `valid_from`.
    pub valid_until: i64,
    /// When the requester signed it, in Unix seconds.
    pub time: i64,
}

fn actions_text(actions: &[concord_policy::Action]) -> String {
    actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(",")
}

fn parse_actions(s: &str) -> Result<Vec<concord_policy::Action>, NodeError> {
    let mut out = Vec::new();
    for a in s.split(',') {
        let a = concord_policy::Action::parse(a.trim()).map_err(|e| NodeError::BadRequest(e.to_string()))?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    if out.is_empty() {
        return Err(NodeError::BadRequest("name at least one action: aggregate, read_rows, describe".into()));
    }
    Ok(out)
}

impl AccessRequest {
    fn details_text(&self, salt: &str) -> Result<String, NodeError> {
        for (what, v) in [("purpose", &self.purpose), ("legal basis", &self.legal_basis)] {
            one_line(what, v)?;
        }
        Ok(format!(
            "{ACCESS_REQUEST_DETAILS_TYPE}\nsalt {salt}\npurpose {}\nlegal-basis {}\n",
            self.purpose, self.legal_basis
        ))
    }

    fn public_text(&self, details: &[u8]) -> Result<String, NodeError> {
        one_line("dataset", &self.dataset)?;
        Ok(format!(
            "{ACCESS_REQUEST_TYPE}\nfederation {}\nrequest {}\nrequester {}\nowner {}\ndataset {}\nactions {}\nfrom {}\nuntil {}\ntime {}\ndetails {}\n",
            self.federation,
            self.request_id,
            self.requester,
            self.owner,
            self.dataset,
            actions_text(&self.actions),
            self.valid_from,
            self.valid_until,
            self.time,
            commitment(details)
        ))
    }

    /// Signs the request under a fresh salt: the public note and its details.
    pub fn sign(&self, signer: &NoteSigner) -> Result<(Note, Vec<u8>), NodeError> {
        let details = self.details_text(&new_salt())?.into_bytes();
        let mut note = Note::new(self.public_text(&details)?)?;
        note.sign(signer);
        Ok((note, details))
    }

    /// Reads a public note and its details (the signature is checked by the caller).
    pub fn from_parts(note: &Note, details: &[u8]) -> Result<Self, NodeError> {
        let mut f = Fields::open(note.text(), ACCESS_REQUEST_TYPE)?;
        let federation = f.get("federation")?.to_owned();
        let request_id = f.get("request")?.to_owned();
        let requester = f.get("requester")?.to_owned();
        let owner = f.get("owner")?.to_owned();
        let dataset = f.get("dataset")?.to_owned();
        let actions = parse_actions(f.get("actions")?)?;
        let valid_from = f.number("from")?;
        let valid_until = f.number("until")?;
        let time = f.number("time")?;
        let committed = f.digest("details")?;
        f.end()?;
        check_id(&request_id)?;
        if committed != commitment(details) {
            return Err(NodeError::BadRequest("the details are not those the note commits to".into()));
        }
        let text = std::str::from_utf8(details)
            .map_err(|_| NodeError::BadRequest("details are not UTF-8".into()))?;
        let mut d = Fields::open(text, ACCESS_REQUEST_DETAILS_TYPE)?;
        check_salt(d.get("salt")?)?;
        let purpose = d.get("purpose")?.to_owned();
        let legal_basis = d.get("legal-basis")?.to_owned();
        d.end()?;
        if valid_until <= valid_from {
            return Err(NodeError::BadRequest("the period asked for ends before it starts".into()));
        }
        Ok(Self {
            federation,
            request_id,
            requester,
            owner,
            dataset,
            actions,
            purpose,
            legal_basis,
            valid_from,
            valid_until,
            time,
        })
    }
}

/// The status a signed decision may give: `approved`, `refused` or `revoked`.
fn decided_status(s: &str) -> Result<crate::wire::AccessStatus, NodeError> {
    use crate::wire::AccessStatus;
    AccessStatus::parse(s)
        .filter(|s| matches!(s, AccessStatus::Approved | AccessStatus::Refused | AccessStatus::Revoked))
        .ok_or_else(|| {
            NodeError::BadRequest(format!("unknown decision {s:?}: expected approved, refused or revoked"))
        })
}

/// An owner's decision on an access request: approved (a grant for a period), refused, or a
/// grant revoked. Signed by the owner; its reason is a detail, kept by the two parties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessDecision {
    /// The federation's name.
    pub federation: String,
    /// Id of the access request decided on.
    pub request_id: String,
    /// Member id of the owner, who signs the decision.
    pub owner: String,
    /// Member id of the requester.
    pub requester: String,
    /// Name of the owner's dataset the request is for.
    pub dataset: String,
    /// `approved`, `refused` or `revoked` (never `pending` or `expired`: [`Self::verify`]
    /// refuses them).
    pub decision: crate::wire::AccessStatus,
    /// The actions the grant covers.
    pub actions: Vec<concord_policy::Action>,
    /// Start of the grant's period, in Unix seconds.
    pub valid_from: i64,
    /// End of the grant's period, in Unix seconds (its start for a refusal, when revoked for a
    /// revocation).
    pub valid_until: i64,
    /// The steward's reason, one line; a detail kept by the two parties.
    pub reason: String,
    /// When the owner signed the decision, in Unix seconds.
    pub time: i64,
}

impl AccessDecision {
    fn public_text(&self, details: &[u8]) -> String {
        format!(
            "{ACCESS_DECISION_TYPE}\nfederation {}\nrequest {}\nowner {}\nrequester {}\ndataset {}\ndecision {}\nactions {}\nfrom {}\nuntil {}\ntime {}\ndetails {}\n",
            self.federation,
            self.request_id,
            self.owner,
            self.requester,
            self.dataset,
            self.decision.as_str(),
            actions_text(&self.actions),
            self.valid_from,
            self.valid_until,
            self.time,
            commitment(details)
        )
    }

    /// Signs the decision under a fresh salt: the public note and its details (the reason).
    pub fn sign(&self, signer: &NoteSigner) -> Result<(Note, Vec<u8>), NodeError> {
        one_line("reason", &self.reason)?;
        let details =
            format!("{ACCESS_DECISION_DETAILS_TYPE}\nsalt {}\nreason {}\n", new_salt(), self.reason)
                .into_bytes();
        let mut note = Note::new(self.public_text(&details))?;
        note.sign(signer);
        Ok((note, details))
    }

    /// Opens a decision's envelope and verifies it with the owner's key.
    pub fn verify(body: &[u8], owner_key: &NoteVerifier) -> Result<(Self, Note, Vec<u8>), NodeError> {
        let (note, details) = open_envelope(body)?;
        note.verify(std::slice::from_ref(owner_key))?;
        let mut f = Fields::open(note.text(), ACCESS_DECISION_TYPE)?;
        let federation = f.get("federation")?.to_owned();
        let request_id = f.get("request")?.to_owned();
        let owner = f.get("owner")?.to_owned();
        let requester = f.get("requester")?.to_owned();
        let dataset = f.get("dataset")?.to_owned();
        let decision = decided_status(f.get("decision")?)?;
        let actions = parse_actions(f.get("actions")?)?;
        let valid_from = f.number("from")?;
        let valid_until = f.number("until")?;
        let time = f.number("time")?;
        f.digest("details")?;
        f.end()?;
        let text = std::str::from_utf8(&details)
            .map_err(|_| NodeError::BadRequest("details are not UTF-8".into()))?;
        let mut d = Fields::open(text, ACCESS_DECISION_DETAILS_TYPE)?;
        check_salt(d.get("salt")?)?;
        let reason = d.get("reason")?.to_owned();
        d.end()?;
        let d = Self {
            federation,
            request_id,
            owner,
            requester,
            dataset,
            decision,
            actions,
            valid_from,
            valid_until,
            reason,
            time,
        };
        Ok((d, note, details))
    }
}
