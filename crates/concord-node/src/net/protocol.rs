//! The peer protocol's signed objects: query requests and release receipts, both C2SP signed
//! notes with a type line and one `key value` fact per line.

use concord_log::{Note, NoteSigner, NoteVerifier};

use crate::NodeError;

pub const REQUEST_TYPE: &str = "concord/query-request/v1";
pub const RECEIPT_TYPE: &str = "concord/release-receipt/v1";

/// How far a request's time may be from the owner's clock, in seconds.
pub const FRESHNESS_SECS: i64 = 300;

/// A query request from a requester to an owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryRequest {
    pub federation: String,
    pub request_id: String,
    pub requester: String,
    pub owner: String,
    pub charter_version: u64,
    /// Unix seconds.
    pub time: i64,
    pub dataset: String,
    pub purpose: String,
    pub sql: String,
}

/// An owner's receipt for what it released.
#[derive(Clone, Debug, PartialEq)]
pub struct ReleaseReceipt {
    pub federation: String,
    pub request_id: String,
    pub owner: String,
    pub requester: String,
    pub dataset: String,
    /// Hex SHA-256 of the Arrow IPC bytes released.
    pub result_sha256: String,
    /// `None` (written `withheld`) under differential privacy.
    pub rows_scanned: Option<u64>,
    pub groups_released: u64,
    /// Index of the owner's "access served" entry in its transparency log.
    pub log_index: u64,
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

    fn end(mut self) -> Result<(), NodeError> {
        match self.lines.next() {
            None => Ok(()),
            Some(l) => Err(NodeError::BadRequest(format!("unexpected line {l:?} in note"))),
        }
    }
}

impl QueryRequest {
    pub fn to_text(&self) -> Result<String, NodeError> {
        for (what, v) in [("purpose", &self.purpose), ("sql", &self.sql), ("dataset", &self.dataset)] {
            one_line(what, v)?;
        }
        Ok(format!(
            "{REQUEST_TYPE}\nfederation {}\nrequest {}\nrequester {}\nowner {}\ncharter {}\ntime {}\ndataset {}\npurpose {}\nsql {}\n",
            self.federation,
            self.request_id,
            self.requester,
            self.owner,
            self.charter_version,
            self.time,
            self.dataset,
            self.purpose,
            self.sql
        ))
    }

    pub fn sign(&self, signer: &NoteSigner) -> Result<Note, NodeError> {
        let mut note = Note::new(self.to_text()?)?;
        note.sign(signer);
        Ok(note)
    }

    /// Parses the text of a request note (its signature is checked separately).
    pub fn from_text(text: &str) -> Result<Self, NodeError> {
        let mut f = Fields::open(text, REQUEST_TYPE)?;
        let r = Self {
            federation: f.get("federation")?.to_owned(),
            request_id: f.get("request")?.to_owned(),
            requester: f.get("requester")?.to_owned(),
            owner: f.get("owner")?.to_owned(),
            charter_version: f.number("charter")?,
            time: f.number("time")?,
            dataset: f.get("dataset")?.to_owned(),
            purpose: f.get("purpose")?.to_owned(),
            sql: f.get("sql")?.to_owned(),
        };
        f.end()?;
        if r.request_id.len() != 32 || !r.request_id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(NodeError::BadRequest("request id must be 32 hex digits".into()));
        }
        Ok(r)
    }
}

impl ReleaseReceipt {
    pub fn to_text(&self) -> String {
        format!(
            "{RECEIPT_TYPE}\nfederation {}\nrequest {}\nowner {}\nrequester {}\ndataset {}\nresult sha256:{}\nrows-scanned {}\ngroups-released {}\nlog-index {}\nrelease {}\n",
            self.federation,
            self.request_id,
            self.owner,
            self.requester,
            self.dataset,
            self.result_sha256,
            self.rows_scanned.map_or_else(|| "withheld".to_owned(), |n| n.to_string()),
            self.groups_released,
            self.log_index,
            // A serialisable struct of strings and numbers; compact JSON has no line breaks.
            serde_json::to_string(&self.release).unwrap_or_else(|_| "{}".into())
        )
    }

    pub fn sign(&self, signer: &NoteSigner) -> Result<Note, NodeError> {
        let mut note = Note::new(self.to_text())?;
        note.sign(signer);
        Ok(note)
    }

    /// Parses and verifies a receipt with the owner's key.
    pub fn verify(bytes: &[u8], owner_key: &NoteVerifier) -> Result<Self, NodeError> {
        let note = Note::parse(bytes)?;
        note.verify(std::slice::from_ref(owner_key))?;
        let mut f = Fields::open(note.text(), RECEIPT_TYPE)?;
        let r = Self {
            federation: f.get("federation")?.to_owned(),
            request_id: f.get("request")?.to_owned(),
            owner: f.get("owner")?.to_owned(),
            requester: f.get("requester")?.to_owned(),
            dataset: f.get("dataset")?.to_owned(),
            result_sha256: f
                .get("result")?
                .strip_prefix("sha256:")
                .ok_or_else(|| NodeError::BadRequest("receipt result must be sha256:<hex>".into()))?
                .to_owned(),
            rows_scanned: match f.get("rows-scanned")? {
                "withheld" => None,
                n => Some(
                    n.parse().map_err(|_| NodeError::BadRequest("`rows-scanned` is not a number".into()))?,
                ),
            },
            groups_released: f.number("groups-released")?,
            log_index: f.number("log-index")?,
            release: serde_json::from_str(f.get("release")?)
                .map_err(|e| NodeError::BadRequest(format!("receipt release line: {e}")))?,
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

pub const ACCESS_REQUEST_TYPE: &str = "concord/access-request/v1";
pub const ACCESS_DECISION_TYPE: &str = "concord/access-decision/v1";

/// A requester's access request: the proper channel for what a policy does not release by
/// itself. Signed by the requester, sent to the owner, kept by both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRequest {
    pub federation: String,
    pub request_id: String,
    pub requester: String,
    pub owner: String,
    pub dataset: String,
    /// `aggregate`, `read_rows`, `describe`.
    pub actions: Vec<concord_policy::Action>,
    pub purpose: String,
    pub legal_basis: String,
    /// Unix seconds: the period asked for.
    pub valid_from: i64,
    pub valid_until: i64,
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
    pub fn to_text(&self) -> Result<String, NodeError> {
        for (what, v) in
            [("purpose", &self.purpose), ("legal basis", &self.legal_basis), ("dataset", &self.dataset)]
        {
            one_line(what, v)?;
        }
        Ok(format!(
            "{ACCESS_REQUEST_TYPE}\nfederation {}\nrequest {}\nrequester {}\nowner {}\ndataset {}\nactions {}\npurpose {}\nlegal-basis {}\nfrom {}\nuntil {}\ntime {}\n",
            self.federation,
            self.request_id,
            self.requester,
            self.owner,
            self.dataset,
            actions_text(&self.actions),
            self.purpose,
            self.legal_basis,
            self.valid_from,
            self.valid_until,
            self.time
        ))
    }

    pub fn sign(&self, signer: &NoteSigner) -> Result<Note, NodeError> {
        let mut note = Note::new(self.to_text()?)?;
        note.sign(signer);
        Ok(note)
    }

    pub fn from_text(text: &str) -> Result<Self, NodeError> {
        let mut f = Fields::open(text, ACCESS_REQUEST_TYPE)?;
        let r = Self {
            federation: f.get("federation")?.to_owned(),
            request_id: f.get("request")?.to_owned(),
            requester: f.get("requester")?.to_owned(),
            owner: f.get("owner")?.to_owned(),
            dataset: f.get("dataset")?.to_owned(),
            actions: parse_actions(f.get("actions")?)?,
            purpose: f.get("purpose")?.to_owned(),
            legal_basis: f.get("legal-basis")?.to_owned(),
            valid_from: f.number("from")?,
            valid_until: f.number("until")?,
            time: f.number("time")?,
        };
        f.end()?;
        if r.request_id.len() != 32 || !r.request_id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(NodeError::BadRequest("request id must be 32 hex digits".into()));
        }
        if r.valid_until <= r.valid_from {
            return Err(NodeError::BadRequest("the period asked for ends before it starts".into()));
        }
        Ok(r)
    }
}

/// An owner's decision on an access request: approved (a grant for a period), refused, or a
/// grant revoked. Signed by the owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessDecision {
    pub federation: String,
    pub request_id: String,
    pub owner: String,
    pub requester: String,
    pub dataset: String,
    /// `approved`, `refused` or `revoked`.
    pub decision: String,
    pub actions: Vec<concord_policy::Action>,
    pub valid_from: i64,
    pub valid_until: i64,
    pub reason: String,
    pub time: i64,
}

impl AccessDecision {
    pub fn to_text(&self) -> Result<String, NodeError> {
        one_line("reason", &self.reason)?;
        Ok(format!(
            "{ACCESS_DECISION_TYPE}\nfederation {}\nrequest {}\nowner {}\nrequester {}\ndataset {}\ndecision {}\nactions {}\nfrom {}\nuntil {}\nreason {}\ntime {}\n",
            self.federation,
            self.request_id,
            self.owner,
            self.requester,
            self.dataset,
            self.decision,
            actions_text(&self.actions),
            self.valid_from,
            self.valid_until,
            self.reason,
            self.time
        ))
    }

    pub fn sign(&self, signer: &NoteSigner) -> Result<Note, NodeError> {
        let mut note = Note::new(self.to_text()?)?;
        note.sign(signer);
        Ok(note)
    }

    /// Parses and verifies a decision with the owner's key.
    pub fn verify(bytes: &[u8], owner_key: &NoteVerifier) -> Result<Self, NodeError> {
        let note = Note::parse(bytes)?;
        note.verify(std::slice::from_ref(owner_key))?;
        let mut f = Fields::open(note.text(), ACCESS_DECISION_TYPE)?;
        let d = Self {
            federation: f.get("federation")?.to_owned(),
            request_id: f.get("request")?.to_owned(),
            owner: f.get("owner")?.to_owned(),
            requester: f.get("requester")?.to_owned(),
            dataset: f.get("dataset")?.to_owned(),
            decision: f.get("decision")?.to_owned(),
            actions: parse_actions(f.get("actions")?)?,
            valid_from: f.number("from")?,
            valid_until: f.number("until")?,
            reason: f.get("reason")?.to_owned(),
            time: f.number("time")?,
        };
        f.end()?;
        if !matches!(d.decision.as_str(), "approved" | "refused" | "revoked") {
            return Err(NodeError::BadRequest(format!("unknown decision {:?}", d.decision)));
        }
        Ok(d)
    }
}
