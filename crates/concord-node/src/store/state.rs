//! The node's SQLite state database (WAL): charter versions, the dataset registry, local users'
//! tokens and the request ids seen from peers.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::NodeError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS charter_versions (
    version INTEGER PRIMARY KEY,
    note BLOB NOT NULL,
    accepted_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    format TEXT NOT NULL,
    shared_schema TEXT,
    schema_ipc BLOB NOT NULL,
    policy TEXT NOT NULL,
    rows INTEGER NOT NULL,
    added_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seen_requests (
    id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    seen_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_requests_by_time ON seen_requests (seen_at);
CREATE TABLE IF NOT EXISTS refusal_counts (
    member TEXT NOT NULL,
    code TEXT NOT NULL,
    count INTEGER NOT NULL,
    since INTEGER NOT NULL,
    PRIMARY KEY (member, code)
) WITHOUT ROWID;
";

/// A registered dataset, as the registry keeps it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DatasetRecord {
    pub name: String,
    pub path: PathBuf,
    pub format: String,
    pub shared_schema: Option<String>,
    #[serde(skip)]
    pub schema_ipc: Vec<u8>,
    /// JSON of the dataset's usage policy.
    pub policy: String,
    pub rows: u64,
    pub added_at: String,
}

/// The state database; one connection, serialised by a mutex (every statement is short).
pub struct State {
    conn: Mutex<Connection>,
}

fn db(e: rusqlite::Error) -> NodeError {
    NodeError::State(e.to_string())
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl State {
    pub fn open(path: &Path) -> Result<Self, NodeError> {
        crate::store::config::private_database(path)?;
        let conn = Connection::open(path)
            .map_err(|e| NodeError::State(format!("cannot open state database {}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (it has its own
        // transactions), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn store_charter(&self, version: u64, note: &[u8]) -> Result<(), NodeError> {
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO charter_versions (version, note, accepted_at) VALUES (?1, ?2, ?3)",
                params![version as i64, note, now_rfc3339()],
            )
            .map_err(db)?;
        Ok(())
    }

    /// The newest accepted charter version's note bytes.
    pub fn latest_charter(&self) -> Result<Option<Vec<u8>>, NodeError> {
        self.lock()
            .query_row("SELECT note FROM charter_versions ORDER BY version DESC LIMIT 1", [], |r| r.get(0))
            .optional()
            .map_err(db)
    }

    /// Registers a dataset; a dataset of the same name is replaced.
    pub fn put_dataset(&self, d: &DatasetRecord) -> Result<(), NodeError> {
        let path = d.path.to_str().ok_or_else(|| NodeError::Config("dataset path is not UTF-8".into()))?;
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO datasets (name, path, format, shared_schema, schema_ipc, policy, rows, added_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![d.name, path, d.format, d.shared_schema, d.schema_ipc, d.policy, d.rows as i64, d.added_at],
            )
            .map_err(db)?;
        Ok(())
    }

    pub fn datasets(&self) -> Result<Vec<DatasetRecord>, NodeError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT name, path, format, shared_schema, schema_ipc, policy, rows, added_at FROM datasets ORDER BY name")
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(DatasetRecord {
                    name: r.get(0)?,
                    path: PathBuf::from(r.get::<_, String>(1)?),
                    format: r.get(2)?,
                    shared_schema: r.get(3)?,
                    schema_ipc: r.get(4)?,
                    policy: r.get(5)?,
                    rows: r.get::<_, i64>(6)? as u64,
                    added_at: r.get(7)?,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }

    /// Stores a new bearer token (only its hash) and returns the token.
    pub fn create_token(&self, role: &str) -> Result<String, NodeError> {
        let raw: [u8; 32] = rand::random();
        let token = format!("concord_{}", concord_charter::hex(&raw));
        self.lock()
            .execute(
                "INSERT INTO tokens (hash, role, created_at) VALUES (?1, ?2, ?3)",
                params![token_hash(&token), role, now_rfc3339()],
            )
            .map_err(db)?;
        Ok(token)
    }

    /// The role of a token, if it is known.
    pub fn token_role(&self, token: &str) -> Result<Option<String>, NodeError> {
        self.lock()
            .query_row("SELECT role FROM tokens WHERE hash = ?1", params![token_hash(token)], |r| r.get(0))
            .optional()
            .map_err(db)
    }

    /// Records a peer request id; false if it was seen before (a replay). Ids older than
    /// `forget_before` (unix seconds) are forgotten: such requests fail the freshness check.
    pub fn record_request(
        &self,
        id: &str,
        requester: &str,
        now: i64,
        forget_before: i64,
    ) -> Result<bool, NodeError> {
        let conn = self.lock();
        conn.execute("DELETE FROM seen_requests WHERE seen_at < ?1", params![forget_before]).map_err(db)?;
        let n = conn
            .execute(
                "INSERT OR IGNORE INTO seen_requests (id, requester, seen_at) VALUES (?1, ?2, ?3)",
                params![id, requester, now],
            )
            .map_err(db)?;
        Ok(n == 1)
    }
}

impl State {
    /// Counts a request that was no access (see `RefusalsCounted`).
    pub fn count_refusal(&self, member: &str, code: &str) -> Result<(), NodeError> {
        self.lock()
            .execute(
                "INSERT INTO refusal_counts (member, code, count, since) VALUES (?1, ?2, 1, ?3)
                 ON CONFLICT(member, code) DO UPDATE SET count = count + 1",
                params![member, code, chrono::Utc::now().timestamp()],
            )
            .map_err(db)?;
        Ok(())
    }

    /// The counts so far and since when, oldest first; they are kept until `forget_refusals`.
    pub fn refusal_counts(&self) -> Result<(i64, Vec<crate::store::entry::RefusalCount>), NodeError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT member, code, count, since FROM refusal_counts ORDER BY member, code")
            .map_err(db)?;
        let mut since = i64::MAX;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    crate::store::entry::RefusalCount {
                        member: r.get(0)?,
                        code: r.get(1)?,
                        count: r.get::<_, i64>(2)? as u64,
                    },
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(db)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)?;
        let counts = rows
            .into_iter()
            .map(|(c, s)| {
                since = since.min(s);
                c
            })
            .collect::<Vec<_>>();
        Ok((if counts.is_empty() { 0 } else { since }, counts))
    }

    /// Subtracts counts that were logged; what arrived meanwhile stays.
    pub fn forget_refusals(&self, logged: &[crate::store::entry::RefusalCount]) -> Result<(), NodeError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        for c in logged {
            tx.execute(
                "UPDATE refusal_counts SET count = count - ?3 WHERE member = ?1 AND code = ?2",
                params![c.member, c.code, c.count as i64],
            )
            .map_err(db)?;
        }
        tx.execute("DELETE FROM refusal_counts WHERE count <= 0", []).map_err(db)?;
        tx.commit().map_err(db)
    }
}

fn token_hash(token: &str) -> String {
    concord_charter::hex(&Sha256::digest(token.as_bytes()))
}
