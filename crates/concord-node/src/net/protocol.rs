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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseReceipt {
    pub federation: String,
    pub request_id: String,
    pub owner: String,
    pub requester: String,
    pub dataset: String,
    /// Hex SHA-256 of the Arrow IPC bytes released.
    pub result_sha256: String,
    pub rows_scanned: u64,
    pub groups_released: u64,
    /// Index of the owner's "access served" entry in its transparency log.
    pub log_index: u64,
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
            "{RECEIPT_TYPE}\nfederation {}\nrequest {}\nowner {}\nrequester {}\ndataset {}\nresult sha256:{}\nrows-scanned {}\ngroups-released {}\nlog-index {}\n",
            self.federation,
            self.request_id,
            self.owner,
            self.requester,
            self.dataset,
            self.result_sha256,
            self.rows_scanned,
            self.groups_released,
            self.log_index
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
            rows_scanned: f.number("rows-scanned")?,
            groups_released: f.number("groups-released")?,
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
