//! The node's SQLite state database (WAL): charter versions, the dataset registry, local users'
//! tokens and the request ids seen from peers.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::NodeError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS governance_acts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    base_version INTEGER NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS governance_acts_by_base ON governance_acts (base_version);
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
    added_at TEXT NOT NULL,
    read_options TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seen_requests_by_requester (
    id TEXT NOT NULL,
    requester TEXT NOT NULL,
    seen_at INTEGER NOT NULL,
    PRIMARY KEY (id, requester)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_requests_by_time ON seen_requests_by_requester (seen_at);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('datasets_generation', 0);
CREATE TRIGGER IF NOT EXISTS datasets_inserted AFTER INSERT ON datasets
BEGIN UPDATE meta SET value = value + 1 WHERE key = 'datasets_generation'; END;
CREATE TRIGGER IF NOT EXISTS datasets_updated AFTER UPDATE ON datasets
BEGIN UPDATE meta SET value = value + 1 WHERE key = 'datasets_generation'; END;
CREATE TRIGGER IF NOT EXISTS datasets_deleted AFTER DELETE ON datasets
BEGIN UPDATE meta SET value = value + 1 WHERE key = 'datasets_generation'; END;
CREATE TABLE IF NOT EXISTS budget_charges (
    request_id TEXT NOT NULL,
    dataset TEXT NOT NULL,
    requester TEXT NOT NULL,
    cost INTEGER NOT NULL,
    charged_at INTEGER NOT NULL,
    PRIMARY KEY (request_id, requester)
);
CREATE INDEX IF NOT EXISTS budget_charges_by_dataset ON budget_charges (dataset, requester);
CREATE TABLE IF NOT EXISTS access_notes (
    request_id TEXT NOT NULL,
    requester TEXT NOT NULL,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    kept_at INTEGER NOT NULL,
    PRIMARY KEY (request_id, requester, kind)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS releases (
    request_id TEXT NOT NULL,
    requester TEXT NOT NULL,
    receipt BLOB NOT NULL,
    ipc BLOB NOT NULL,
    released_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS releases_by_request ON releases (request_id, requester);
CREATE INDEX IF NOT EXISTS releases_by_time ON releases (released_at);
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    dataset TEXT NOT NULL,
    actions TEXT NOT NULL,
    purpose TEXT NOT NULL,
    valid_from INTEGER NOT NULL,
    valid_until INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX IF NOT EXISTS grants_by_requester ON grants (requester, dataset);
CREATE TABLE IF NOT EXISTS access_requests (
    id TEXT PRIMARY KEY,
    direction TEXT NOT NULL,
    requester TEXT NOT NULL,
    owner TEXT NOT NULL,
    dataset TEXT NOT NULL,
    actions TEXT NOT NULL,
    purpose TEXT NOT NULL,
    legal_basis TEXT NOT NULL,
    valid_from INTEGER NOT NULL,
    valid_until INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    request_note BLOB NOT NULL,
    decision_note BLOB,
    filed_at INTEGER NOT NULL,
    decided_at INTEGER
);
CREATE TABLE IF NOT EXISTS refusal_counts (
    member TEXT NOT NULL,
    code TEXT NOT NULL,
    count INTEGER NOT NULL,
    since INTEGER NOT NULL,
    PRIMARY KEY (member, code)
) WITHOUT ROWID;
";

/// What the notes of an access kept by its parties are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteKind {
    /// The signed request with its details (the wire body).
    Request,
    /// A release's details.
    Release,
    /// A refusal's reason, as the requester was told.
    Reason,
}

impl NoteKind {
    /// The kind as the `access_notes` table stores it: `request`, `release` or `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Release => "release",
            Self::Reason => "reason",
        }
    }
}

/// A registered dataset, as the registry keeps it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DatasetRecord {
    /// The dataset's name on this node, unique in the registry.
    pub name: String,
    /// The canonical path of the dataset's file.
    pub path: PathBuf,
    /// The file's format, `csv` or `parquet`.
    pub format: concord_query::dataset::DatasetFormat,
    /// The charter's shared schema the dataset conforms to, if any.
    pub shared_schema: Option<String>,
    /// The dataset's Arrow schema, encoded as an Arrow IPC schema message.
    #[serde(skip)]
    pub schema_ipc: Vec<u8>,
    /// The dataset's usage policy file (TOML).
    pub policy: String,
    /// Rows counted in the file when it was registered.
    pub rows: u64,
    /// When the dataset was registered, RFC 3339 in UTC to the second.
    pub added_at: String,
    /// How a CSV file is read (delimiter, header, null marker, formats); empty for defaults.
    #[serde(default, skip_serializing_if = "concord_query::dataset::CsvOptions::is_default")]
    pub csv: concord_query::dataset::CsvOptions,
    /// Format `postgres`: the database and table (no password; `path` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<concord_source::postgres::PostgresSource>,
    /// Format `ballista`: the cluster's scheduler (`path` is the Parquet files it reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ballista: Option<concord_source::ballista::BallistaSource>,
}

impl DatasetRecord {
    /// Where the rows are, in words: `file /data/cases.csv`, or `table public.cases in
    /// postgresql://concord@127.0.0.1:5432/stats` (the URL holds no password).
    pub fn location(&self) -> String {
        match (&self.postgres, &self.ballista) {
            (Some(pg), _) => format!("table {} in {}", pg.table, pg.url),
            (None, Some(b)) => {
                format!("Parquet {} on the Ballista cluster at {}", self.path.display(), b.scheduler)
            }
            (None, None) => format!("file {}", self.path.display()),
        }
    }
}

/// The state database; one connection, serialised by a mutex (every statement is short).
pub struct State {
    conn: Mutex<Connection>,
    /// The check round's reservations, by request id: held in memory, taken only while the
    /// connection's lock is held (so a budget check sees charges and holds at one instant). A
    /// restart forgets them, and nothing was released under them.
    held: Mutex<std::collections::HashMap<(String, String), Held>>,
}

/// Checked requests that have not run that one requester may hold on one dataset: one query
/// sends a dataset a sub-query per aggregate over it, few in practice.
const MAX_HOLDS: usize = 16;

/// Budget a checked request holds until it runs, is withdrawn, or its time ends.
struct Held {
    dataset: String,
    requester: String,
    cost: u64,
    until: i64,
}

fn db(e: rusqlite::Error) -> NodeError {
    NodeError::Database(e)
}

/// The current time as RFC 3339 in UTC, to the second (`2024-05-01T12:00:00Z`).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Adds a column older databases lack; another process may have added it meanwhile.
fn add_column(conn: &Connection, sql: &str) -> Result<(), NodeError> {
    match conn.execute_batch(sql) {
        Err(e) if e.to_string().contains("duplicate column") => Ok(()),
        other => other.map_err(db),
    }
}

impl State {
    /// Opens the state database at `path` (WAL, `synchronous=FULL`), creating it private
    /// (0600) with its tables if needed and adding columns that older databases lack.
    pub fn open(path: &Path) -> Result<Self, NodeError> {
        crate::store::files::private_database(path)?;
        let conn = Connection::open(path)
            .map_err(|source| NodeError::DatabaseOpen { path: path.display().to_string(), source })?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        // Databases from before CSV options: the column is added once, empty options.
        let has_options = conn
            .prepare("SELECT 1 FROM pragma_table_info('datasets') WHERE name = 'read_options'")
            .and_then(|mut s| s.exists([]))
            .map_err(db)?;
        if !has_options {
            add_column(&conn, "ALTER TABLE datasets ADD COLUMN read_options TEXT NOT NULL DEFAULT '{}'")?;
        }
        // Databases from before datasets in PostgreSQL: NULL for a file.
        let has_source = conn
            .prepare("SELECT 1 FROM pragma_table_info('datasets') WHERE name = 'source'")
            .and_then(|mut s| s.exists([]))
            .map_err(db)?;
        if !has_source {
            add_column(&conn, "ALTER TABLE datasets ADD COLUMN source TEXT")?;
        }
        Ok(Self { conn: Mutex::new(conn), held: Mutex::new(std::collections::HashMap::new()) })
    }

    /// Writes a consistent copy of the whole database (log, charter versions, registry,
    /// tokens, budgets, grants) to `dest`, which must not exist, while writers go on: SQLite's
    /// `VACUUM INTO` reads one snapshot.
    pub fn backup_into(&self, dest: &Path) -> Result<(), NodeError> {
        let target =
            dest.to_str().ok_or_else(|| NodeError::Config(format!("{} is not UTF-8", dest.display())))?;
        self.lock().execute("VACUUM INTO ?1", params![target]).map_err(db)?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (it has its own
        // transactions), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores an accepted charter version's signed note, replacing one of the same version.
    pub fn store_charter(&self, version: u64, note: &[u8]) -> Result<(), NodeError> {
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO charter_versions (version, note, accepted_at) VALUES (?1, ?2, ?3)",
                params![version as i64, note, now_rfc3339()],
            )
            .map_err(db)?;
        Ok(())
    }

    /// Stores a chain of charter versions in one transaction: all or none.
    pub fn store_charters(&self, versions: &[(u64, Vec<u8>)]) -> Result<(), NodeError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        for (version, note) in versions {
            tx.execute(
                "INSERT OR REPLACE INTO charter_versions (version, note, accepted_at) VALUES (?1, ?2, ?3)",
                params![*version as i64, note, now_rfc3339()],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    /// Keeps a governance act (`proposal`, `vote` or `evidence`) seen on a base version.
    pub fn store_governance_act(&self, base_version: u64, kind: &str, body: &str) -> Result<(), NodeError> {
        self.lock()
            .execute(
                "INSERT INTO governance_acts (base_version, kind, body, received_at) VALUES (?1, ?2, ?3, ?4)",
                params![base_version as i64, kind, body, now_rfc3339()],
            )
            .map_err(db)?;
        Ok(())
    }

    /// Keeps an act unless the same one is kept already (evidence pushed again); whether it was
    /// new.
    pub fn store_governance_act_once(
        &self,
        base_version: u64,
        kind: &str,
        body: &str,
    ) -> Result<bool, NodeError> {
        let n = self
            .lock()
            .execute(
                "INSERT INTO governance_acts (base_version, kind, body, received_at) \
                 SELECT ?1, ?2, ?3, ?4 WHERE NOT EXISTS \
                 (SELECT 1 FROM governance_acts WHERE base_version = ?1 AND kind = ?2 AND body = ?3)",
                params![base_version as i64, kind, body, now_rfc3339()],
            )
            .map_err(db)?;
        Ok(n == 1)
    }

    /// The governance acts seen on a base version, in the order they came: kind, body, and
    /// when it came (unix seconds).
    pub fn governance_acts(&self, base_version: u64) -> Result<Vec<(String, String, u64)>, NodeError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT kind, body, received_at FROM governance_acts WHERE base_version = ?1 ORDER BY seq",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(params![base_version as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, String>(2)?)))
            .map_err(db)?
            .collect::<Result<Vec<(String, String, String)>, _>>()
            .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|(kind, body, at)| {
                let at = chrono::DateTime::parse_from_rfc3339(&at)
                    .map(|t| u64::try_from(t.timestamp()).unwrap_or(0))
                    .unwrap_or(0);
                (kind, body, at)
            })
            .collect())
    }

    /// Misbehaviour kept as evidence on every version, oldest first, at most `limit` after
    /// `after`: sequence number, base version, kind (`evidence` for equivocation, `fork` for a
    /// second body of a version), body, when it came.
    pub fn governance_evidence(&self, after: i64, limit: u32) -> Result<Vec<EvidenceRow>, NodeError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT seq, base_version, kind, body, received_at FROM governance_acts \
                 WHERE kind IN ('evidence', 'fork') AND seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(params![after, limit], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(db)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)?;
        Ok(rows)
    }

    /// One accepted charter version's note bytes.
    pub fn charter_at(&self, version: u64) -> Result<Option<Vec<u8>>, NodeError> {
        self.lock()
            .query_row("SELECT note FROM charter_versions WHERE version = ?1", params![version as i64], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db)
    }

    /// Every accepted charter version's note bytes, oldest first.
    pub fn charter_history(&self) -> Result<Vec<Vec<u8>>, NodeError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT note FROM charter_versions ORDER BY version").map_err(db)?;
        let rows =
            stmt.query_map([], |r| r.get(0)).map_err(db)?.collect::<Result<Vec<_>, _>>().map_err(db)?;
        Ok(rows)
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
                "INSERT OR REPLACE INTO datasets (name, path, format, shared_schema, schema_ipc, policy, rows, added_at, read_options, source)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    d.name,
                    path,
                    d.format.as_str(),
                    d.shared_schema,
                    d.schema_ipc,
                    d.policy,
                    d.rows as i64,
                    d.added_at,
                    serde_json::to_string(&d.csv).map_err(|source| NodeError::Encode { what: "a dataset's CSV options", source })?,
                    match (&d.postgres, &d.ballista) {
                        (Some(pg), _) => Some(serde_json::to_string(pg)),
                        (None, Some(b)) => Some(serde_json::to_string(b)),
                        (None, None) => None,
                    }
                    .transpose()
                    .map_err(|source| NodeError::Encode { what: "a dataset's source", source })?
                ],
            )
            .map_err(db)?;
        Ok(())
    }

    /// Removes a dataset from the registry (the generation moves on by trigger).
    pub fn remove_dataset(&self, name: &str) -> Result<(), NodeError> {
        self.lock().execute("DELETE FROM datasets WHERE name = ?1", params![name]).map_err(db)?;
        Ok(())
    }

    /// Every registered dataset, by name.
    pub fn datasets(&self) -> Result<Vec<DatasetRecord>, NodeError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT name, path, format, shared_schema, schema_ipc, policy, rows, added_at, read_options, source FROM datasets ORDER BY name",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| {
                let mut record = DatasetRecord {
                    name: r.get(0)?,
                    path: PathBuf::from(r.get::<_, String>(1)?),
                    format: text_enum(r, 2, concord_query::dataset::DatasetFormat::parse)?,
                    shared_schema: r.get(3)?,
                    schema_ipc: r.get(4)?,
                    policy: r.get(5)?,
                    rows: r.get::<_, i64>(6)? as u64,
                    added_at: r.get(7)?,
                    csv: serde_json::from_str(&r.get::<_, String>(8)?).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(8, rusqlite::types::Type::Text, Box::new(e))
                    })?,
                    postgres: None,
                    ballista: None,
                };
                // The source column's JSON is the format's: a database, or a cluster.
                let source = r.get::<_, Option<String>>(9)?;
                let bad = |e: serde_json::Error| {
                    rusqlite::Error::FromSqlConversionFailure(9, rusqlite::types::Type::Text, Box::new(e))
                };
                match (record.format, source) {
                    (concord_query::dataset::DatasetFormat::Postgres, Some(t)) => {
                        record.postgres = Some(serde_json::from_str(&t).map_err(bad)?);
                    }
                    (concord_query::dataset::DatasetFormat::Ballista, Some(t)) => {
                        record.ballista = Some(serde_json::from_str(&t).map_err(bad)?);
                    }
                    _ => {}
                }
                Ok(record)
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
    ///
    /// With [`Durability::WithNextCommit`] the record does not wait for the disk: for a request
    /// about to run, whatever it leads to (a budget charge, a release or a refusal logged) is a
    /// later durable commit of the same write-ahead log, which takes this record to disk first.
    /// A record lost to a power loss before any of them belongs to a request that had no effect,
    /// which may then be served once. A kill of the process loses nothing either way.
    pub fn record_request(
        &self,
        id: &str,
        requester: &str,
        now: i64,
        forget_before: i64,
        durability: Durability,
    ) -> Result<bool, NodeError> {
        let record = |conn: &mut Connection| {
            let tx = conn.transaction()?;
            tx.execute("DELETE FROM seen_requests_by_requester WHERE seen_at < ?1", params![forget_before])?;
            let n = tx.execute(
                "INSERT OR IGNORE INTO seen_requests_by_requester (id, requester, seen_at) VALUES (?1, ?2, ?3)",
                params![id, requester, now],
            )?;
            tx.commit()?;
            Ok(n == 1)
        };
        match durability {
            Durability::Now => record(&mut self.lock()).map_err(db),
            Durability::WithNextCommit => self.unsynced(record),
        }
    }

    /// Runs `write` with `synchronous=NORMAL`: its commit goes to the write-ahead log without
    /// waiting for the disk; the connection is back to `synchronous=FULL` afterwards, even if
    /// `write` fails or panics. Invariant: only for writes that a later durable commit of the same
    /// database (the log's append, which syncs the whole write-ahead log) must cover before
    /// anything depends on them, or whose loss to a power loss is harmless.
    fn unsynced<T>(
        &self,
        write: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, NodeError> {
        let mut conn = SyncedAgain(self.lock());
        conn.0.pragma_update(None, "synchronous", "NORMAL").map_err(db)?;
        write(&mut conn.0).map_err(db)
    }
}

/// When a write reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Its commit waits for the disk (`synchronous=FULL`).
    Now,
    /// Its commit does not wait: the next durable commit of the same write-ahead log takes it to
    /// disk first.
    WithNextCommit,
}

/// The state connection, put back to `synchronous=FULL` when dropped.
struct SyncedAgain<'a>(std::sync::MutexGuard<'a, Connection>);

impl Drop for SyncedAgain<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.pragma_update(None, "synchronous", "FULL") {
            // Not expected of an open connection; said loudly, since later writes would then
            // not wait for the disk.
            tracing::error!("the state database could not be set back to synchronous=FULL: {e}");
        }
    }
}

impl State {
    /// Privacy budget charged on each dataset, in its parameter's units (rho or epsilon).
    pub fn budget_spent(&self) -> Result<Vec<(String, f64)>, NodeError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT dataset, SUM(cost) FROM budget_charges GROUP BY dataset ORDER BY dataset")
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(db)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)?;
        Ok(rows.into_iter().map(|(d, units)| (d, units as f64 / 1e9)).collect())
    }

    /// Privacy budget charged on each dataset by each requester, in the parameter's units, with
    /// the number of charged queries: `(dataset, requester, spent, queries)`.
    pub fn budget_by_requester(&self) -> Result<Vec<(String, String, f64, u64)>, NodeError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT dataset, requester, SUM(cost), COUNT(*) FROM budget_charges \
                 GROUP BY dataset, requester ORDER BY dataset, requester",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?))
            })
            .map_err(db)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)?;
        Ok(rows.into_iter().map(|(d, r, units, n)| (d, r, units as f64 / 1e9, n.max(0) as u64)).collect())
    }

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

/// A kept release: the signed receipt's note bytes and the Arrow IPC bytes.
pub type KeptRelease = (Vec<u8>, Vec<u8>);

/// A decision on an access request, as [`State::decide_access`] records it.
pub struct DecisionRecord<'a> {
    /// The access request's id, 32 hex digits.
    pub id: &'a str,
    /// Approved, refused or revoked.
    pub status: AccessStatus,
    /// Start of the grant's period, in Unix seconds.
    pub valid_from: i64,
    /// End of the grant's period, in Unix seconds (for a revocation, when it was revoked).
    pub valid_until: i64,
    /// The steward's reason for the decision.
    pub reason: &'a str,
    /// The owner's signed decision note.
    pub note: &'a [u8],
    /// True where this node enforces the grant (the owner's side).
    pub grant: bool,
}

/// Budget already spent on a dataset: by one requester and by all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spent {
    /// Spent by the one requester, in units of 10⁻⁹ of the privacy parameter (rho or epsilon).
    pub by_requester: u64,
    /// Spent by all requesters together, in the same units.
    pub on_dataset: u64,
}

impl State {
    /// Generation of the dataset registry: it changes whenever any process adds, replaces or
    /// removes a dataset or sets a policy.
    pub fn datasets_generation(&self) -> Result<i64, NodeError> {
        self.lock()
            .query_row("SELECT value FROM meta WHERE key = 'datasets_generation'", [], |r| r.get(0))
            .map_err(db)
    }

    /// Sets the policy of a registered dataset; false if there is no such dataset.
    pub fn set_policy(&self, dataset: &str, policy: &str) -> Result<bool, NodeError> {
        let n = self
            .lock()
            .execute("UPDATE datasets SET policy = ?2 WHERE name = ?1", params![dataset, policy])
            .map_err(db)?;
        Ok(n == 1)
    }

    /// What was spent so far on `dataset`.
    pub fn spent(&self, dataset: &str, requester: &str) -> Result<Spent, NodeError> {
        let conn = self.lock();
        let held = self.held();
        spent_in(&conn, &held, dataset, requester)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, String), Held>> {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Charges `cost` of `dataset`'s budgets to `request_id`, in one transaction, if both the
    /// requester's and the dataset's budget still hold it (what is charged and what live
    /// reservations hold); the request's own reservation, if its check round made one, becomes
    /// the charge. Returns what is spent after the charge, or (as `Err`) what was spent before a
    /// refused one. A charge is never refunded.
    pub fn charge(
        &self,
        request_id: &str,
        dataset: &str,
        requester: &str,
        cost: u64,
        per_requester: u64,
        per_dataset: u64,
    ) -> Result<Result<Spent, Spent>, NodeError> {
        let mut conn = self.lock();
        let mut held = self.held();
        let now = chrono::Utc::now().timestamp();
        held.retain(|_, h| h.until >= now);
        // The request's own hold becomes the charge: it is not counted twice.
        let key = (requester.to_owned(), request_id.to_owned());
        let own = held.remove(&key);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db)?;
        let before = spent_in(&tx, &held, dataset, requester)?;
        if !fits(&before, cost, per_requester, per_dataset) {
            if let Some(h) = own {
                held.insert(key, h);
            }
            return Ok(Err(before));
        }
        tx.execute(
            "INSERT INTO budget_charges (request_id, dataset, requester, cost, charged_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![request_id, dataset, requester, cost as i64, now],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(Ok(Spent { by_requester: before.by_requester + cost, on_dataset: before.on_dataset + cost }))
    }

    /// Holds `cost` of `dataset`'s budgets for `request_id` until `until` (Unix seconds), as
    /// [`State::charge`] would charge it; a second reservation of one request holds nothing
    /// more, and an id that another requester holds is refused.
    pub fn reserve(
        &self,
        request_id: &str,
        dataset: &str,
        requester: &str,
        cost: u64,
        (per_requester, per_dataset): (u64, u64),
        until: i64,
    ) -> Result<Result<Spent, Spent>, NodeError> {
        let conn = self.lock();
        let mut held = self.held();
        let now = chrono::Utc::now().timestamp();
        held.retain(|_, h| h.until >= now);
        let key = (requester.to_owned(), request_id.to_owned());
        held.remove(&key);
        let open = held.iter().filter(|((r, _), h)| r == requester && h.dataset == dataset).count();
        if open >= MAX_HOLDS {
            return Err(NodeError::Conflict(format!(
                "{requester} holds {open} checked requests on {dataset} that have not run; run or withdraw them first"
            )));
        }
        let before = spent_in(&conn, &held, dataset, requester)?;
        if !fits(&before, cost, per_requester, per_dataset) {
            return Ok(Err(before));
        }
        held.insert(key, Held { dataset: dataset.to_owned(), requester: requester.to_owned(), cost, until });
        Ok(Ok(Spent { by_requester: before.by_requester + cost, on_dataset: before.on_dataset + cost }))
    }

    /// Whether a check round's reservation is held for `request_id` of `requester`.
    pub fn holds_reservation(&self, request_id: &str, requester: &str) -> bool {
        let _conn = self.lock();
        self.held().contains_key(&(requester.to_owned(), request_id.to_owned()))
    }

    /// Releases a reservation its requester withdrew; false if it holds none under that id.
    pub fn cancel_reservation(&self, request_id: &str, requester: &str) -> bool {
        let _conn = self.lock();
        self.held().remove(&(requester.to_owned(), request_id.to_owned())).is_some()
    }

    /// How much live reservations hold now, over every dataset.
    pub fn reserved(&self) -> u64 {
        let now = chrono::Utc::now().timestamp();
        self.held().values().filter(|h| h.until >= now).map(|h| h.cost).sum()
    }

    /// Whether a peer's request id was seen from `requester` (and not yet forgotten). Ids are
    /// a requester's own: another member cannot spend them.
    pub fn request_seen(&self, id: &str, requester: &str) -> Result<bool, NodeError> {
        self.lock()
            .query_row(
                "SELECT 1 FROM seen_requests_by_requester WHERE id = ?1 AND requester = ?2",
                params![id, requester],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(db)
    }

    /// Keeps the notes of an access that this node was a party to: `request` (the signed
    /// request with its details), `release` (a release's details), `reason` (a refusal's
    /// reason). The logs hold only their salted commitments; audits check these against them.
    ///
    /// Written without a sync of its own: every note is kept before the log entry it belongs to
    /// is appended, and that append's sync of the same write-ahead log makes it durable too.
    /// Notes are a requester's request's: keyed by its id and the requester who signed it, so no
    /// other member's request can touch them.
    pub fn keep_notes(
        &self,
        request_id: &str,
        requester: &str,
        kind: NoteKind,
        body: &[u8],
    ) -> Result<(), NodeError> {
        self.unsynced(|conn| {
            conn.execute(
                "INSERT OR REPLACE INTO access_notes (request_id, requester, kind, body, kept_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![request_id, requester, kind.as_str(), body, chrono::Utc::now().timestamp()],
            )
        })?;
        Ok(())
    }

    /// The notes of one kind kept for an access.
    pub fn notes(
        &self,
        request_id: &str,
        requester: &str,
        kind: NoteKind,
    ) -> Result<Option<Vec<u8>>, NodeError> {
        self.lock()
            .query_row(
                "SELECT body FROM access_notes WHERE request_id = ?1 AND requester = ?2 AND kind = ?3",
                params![request_id, requester, kind.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)
    }

    /// Keeps a release so that a replay of its request gets the same bytes, not a new draw.
    pub fn keep_release(
        &self,
        request_id: &str,
        requester: &str,
        receipt: &[u8],
        ipc: &[u8],
    ) -> Result<(), NodeError> {
        // Kept only to answer a retry with the same bytes; the release itself is durable in
        // the log already. Like notes, it is written without waiting for the disk (a crash
        // may lose the last ones: a retry is then refused as a replay, and the audit still
        // shows the release).
        self.unsynced(|conn| {
            conn.execute(
                "INSERT OR REPLACE INTO releases (request_id, requester, receipt, ipc, released_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![request_id, requester, receipt, ipc, chrono::Utc::now().timestamp()],
            )
        })?;
        Ok(())
    }

    /// The kept release of `request_id`, if `requester` made it; releases older than
    /// `forget_before` are forgotten (their requests fail the freshness check anyway).
    pub fn kept_release(
        &self,
        request_id: &str,
        requester: &str,
        forget_before: i64,
    ) -> Result<Option<KeptRelease>, NodeError> {
        let conn = self.lock();
        conn.execute("DELETE FROM releases WHERE released_at < ?1", params![forget_before]).map_err(db)?;
        conn.query_row(
            "SELECT receipt, ipc FROM releases WHERE request_id = ?1 AND requester = ?2",
            params![request_id, requester],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db)
    }
}

impl State {
    /// The purposes of `requester`'s live grants on `dataset`.
    pub fn grant_purposes(&self, requester: &str, dataset: &str, now: i64) -> Result<Vec<String>, NodeError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT DISTINCT purpose FROM grants WHERE requester = ?1 AND dataset = ?2 AND revoked_at IS NULL
                 AND valid_from <= ?3 AND valid_until > ?3 ORDER BY purpose",
            )
            .map_err(db)?;
        stmt.query_map(params![requester, dataset, now], |r| r.get::<_, String>(0))
            .map_err(db)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)
    }

    /// Grants `requester` holds on `dataset` at `now`: their ids and the actions they cover.
    /// A grant serves only the purpose it was approved for; `purpose` `None` (a catalog read)
    /// takes any.
    pub fn live_grants(
        &self,
        requester: &str,
        dataset: &str,
        now: i64,
        purpose: Option<&str>,
    ) -> Result<Vec<(String, Vec<concord_policy::Action>)>, NodeError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT id, actions FROM grants WHERE requester = ?1 AND dataset = ?2 AND revoked_at IS NULL
                 AND valid_from <= ?3 AND valid_until > ?3 AND (?4 IS NULL OR purpose = ?4) ORDER BY id",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(params![requester, dataset, now, purpose], |r| {
                Ok((r.get::<_, String>(0)?, actions_of(r, 1)?))
            })
            .map_err(db)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)?;
        Ok(rows)
    }
}

/// One piece of governance evidence: sequence number, base version, kind, body, when it came.
pub type EvidenceRow = (i64, u64, String, String, String);

pub use crate::wire::AccessRecord;
use crate::wire::{AccessStatus, Direction};

/// Actions stored as their names separated by commas; a name this version does not know is a
/// corrupt row.
fn actions_of(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Vec<concord_policy::Action>> {
    let text: String = row.get(i)?;
    parse_actions_text(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into()))
}

/// The actions of a stored comma-separated list.
fn parse_actions_text(text: &str) -> Result<Vec<concord_policy::Action>, String> {
    text.split(',').map(|a| concord_policy::Action::parse(a.trim()).map_err(|e| e.to_string())).collect()
}

/// Actions as they are stored: names separated by commas.
fn actions_text(actions: &[concord_policy::Action]) -> String {
    actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(",")
}

/// A closed set stored as its text: a text this version does not know is a corrupt row.
fn text_enum<T>(row: &rusqlite::Row<'_>, i: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let text: String = row.get(i)?;
    parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown value {text:?}").into(),
        )
    })
}

impl State {
    /// Keeps a filed access request.
    pub fn put_access_request(&self, r: &AccessRecord, note: &[u8]) -> Result<(), NodeError> {
        self.lock()
            .execute(
                "INSERT INTO access_requests (id, direction, requester, owner, dataset, actions, purpose, legal_basis,
                 valid_from, valid_until, status, reason, request_note, filed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    r.id, r.direction.as_str(), r.requester, r.owner, r.dataset, actions_text(&r.actions), r.purpose, r.legal_basis,
                    r.valid_from, r.valid_until, r.status.as_str(), r.reason, note, r.filed_at
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                    NodeError::Replayed(format!("access request {} was filed before", r.id))
                }
                other => db(other),
            })?;
        Ok(())
    }

    /// The access requests this node keeps, newest first.
    pub fn access_requests(&self, now: i64) -> Result<Vec<AccessRecord>, NodeError> {
        self.access_requests_where("", [], now)
    }

    /// Pending requests `requester` has filed with this node.
    pub fn pending_from(&self, requester: &str) -> Result<usize, NodeError> {
        let n: i64 = self
            .lock()
            .query_row(
                "SELECT count(*) FROM access_requests WHERE direction = 'in' AND requester = ?1 AND status = 'pending'",
                params![requester],
                |r| r.get(0),
            )
            .map_err(db)?;
        Ok(n.max(0) as usize)
    }

    fn access_requests_where(
        &self,
        clause: &str,
        args: impl rusqlite::Params,
        now: i64,
    ) -> Result<Vec<AccessRecord>, NodeError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT id, direction, requester, owner, dataset, actions, purpose, legal_basis, valid_from, valid_until,
                 status, reason, filed_at, decided_at FROM access_requests {clause} ORDER BY filed_at DESC, id"
            ))
            .map_err(db)?;
        let rows = stmt
            .query_map(args, |r| {
                Ok(AccessRecord {
                    id: r.get(0)?,
                    direction: text_enum(r, 1, Direction::parse)?,
                    requester: r.get(2)?,
                    owner: r.get(3)?,
                    dataset: r.get(4)?,
                    actions: actions_of(r, 5)?,
                    purpose: r.get(6)?,
                    legal_basis: r.get(7)?,
                    valid_from: r.get(8)?,
                    valid_until: r.get(9)?,
                    status: text_enum(r, 10, AccessStatus::parse)?,
                    reason: r.get(11)?,
                    filed_at: r.get(12)?,
                    decided_at: r.get(13)?,
                })
            })
            .map_err(db)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|mut r| {
                if r.status == AccessStatus::Approved && r.valid_until <= now {
                    r.status = AccessStatus::Expired;
                }
                r
            })
            .collect())
    }

    /// The signed decision note of an access request, if it was decided.
    pub fn decision_note(&self, id: &str) -> Result<Option<Vec<u8>>, NodeError> {
        self.lock()
            .query_row("SELECT decision_note FROM access_requests WHERE id = ?1", params![id], |r| r.get(0))
            .optional()
            .map(Option::flatten)
            .map_err(db)
    }

    /// One access request this node keeps, by id; an approval whose period ended reads as expired.
    pub fn access_request(&self, id: &str) -> Result<Option<AccessRecord>, NodeError> {
        Ok(self.access_requests_where("WHERE id = ?1", params![id], chrono::Utc::now().timestamp())?.pop())
    }

    /// Records a decision on an access request, and the grant it makes or ends, in one
    /// transaction.
    pub fn decide_access(&self, d: &DecisionRecord<'_>) -> Result<(), NodeError> {
        let DecisionRecord { id, status, valid_from, valid_until, reason, note, grant } = *d;
        let now = chrono::Utc::now().timestamp();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(db)?;
        let n = tx
            .execute(
                "UPDATE access_requests SET status = ?2, reason = ?3, decision_note = ?4, decided_at = ?5,
                 valid_from = ?6, valid_until = ?7 WHERE id = ?1",
                params![id, status.as_str(), reason, note, now, valid_from, valid_until],
            )
            .map_err(db)?;
        if n != 1 {
            return Err(NodeError::NotFound(format!("no access request {id}")));
        }
        if grant {
            match status {
                AccessStatus::Approved => {
                    tx.execute(
                        "INSERT OR REPLACE INTO grants (id, requester, dataset, actions, purpose, valid_from, valid_until, revoked_at)
                         SELECT id, requester, dataset, actions, purpose, ?2, ?3, NULL FROM access_requests WHERE id = ?1",
                        params![id, valid_from, valid_until],
                    )
                    .map_err(db)?;
                }
                AccessStatus::Revoked => {
                    tx.execute("UPDATE grants SET revoked_at = ?2 WHERE id = ?1", params![id, now])
                        .map_err(db)?;
                }
                _ => {}
            }
        }
        tx.commit().map_err(db)
    }
}

/// What is charged on `dataset`, and held by live reservations (checked requests not yet run).
fn spent_in(
    conn: &Connection,
    held: &std::collections::HashMap<(String, String), Held>,
    dataset: &str,
    requester: &str,
) -> Result<Spent, NodeError> {
    let (by_requester, on_dataset): (i64, i64) = conn
        .query_row(
            "SELECT coalesce(sum(CASE WHEN requester = ?2 THEN cost ELSE 0 END), 0), coalesce(sum(cost), 0)
             FROM budget_charges WHERE dataset = ?1",
            params![dataset, requester],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(db)?;
    let now = chrono::Utc::now().timestamp();
    let live = held.values().filter(|h| h.dataset == dataset && h.until >= now);
    let (mut r, mut d) = (by_requester.max(0) as u64, on_dataset.max(0) as u64);
    for h in live {
        d = d.saturating_add(h.cost);
        if h.requester == requester {
            r = r.saturating_add(h.cost);
        }
    }
    Ok(Spent { by_requester: r, on_dataset: d })
}

/// Whether `cost` more fits both budgets.
fn fits(spent: &Spent, cost: u64, per_requester: u64, per_dataset: u64) -> bool {
    spent.by_requester.checked_add(cost).is_some_and(|v| v <= per_requester)
        && spent.on_dataset.checked_add(cost).is_some_and(|v| v <= per_dataset)
}

fn token_hash(token: &str) -> String {
    concord_charter::hex(&Sha256::digest(token.as_bytes()))
}
