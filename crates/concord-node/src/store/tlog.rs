//! The node's transparency log, durable in its SQLite database.
//!
//! Appends go through one writer thread that batches every request waiting at the time into a
//! single transaction (group commit): entries, then every complete Merkle node they complete.
//! An append's index is returned only after that transaction committed with
//! `synchronous=FULL`, so an acknowledged entry survives kill -9 and power loss.
//!
//! Invariant: an append is acknowledged only after its transaction is durable.
//! Invariant: the tree on disk is always whole: entries and their nodes commit together, and the
//! writer re-reads the size inside its write transaction, so other processes may append too.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use concord_log::merkle::{CompactRange, Hash, HashReader, leaf_hash};

use concord_log::tiles::MAX_ENTRY_BYTES;
use concord_log::{LogError, Note};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::NodeError;
use crate::store::entry::ServedDecision;
use crate::wire::Mismatch;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log_entries (
    idx INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS log_nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_checkpoints (
    size INTEGER PRIMARY KEY,
    note BLOB NOT NULL,
    published INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS witnessed (
    origin TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    checkpoint BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS witness_progress (
    witness TEXT PRIMARY KEY,
    size INTEGER NOT NULL
);
-- Audits before incremental verification kept only (size, root); they start over from 0.
DROP TABLE IF EXISTS audited;
CREATE TABLE IF NOT EXISTS audit_state (
    origin TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    peaks BLOB NOT NULL,
    checkpoint BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_facts (
    member TEXT NOT NULL,
    idx INTEGER NOT NULL,
    kind TEXT NOT NULL,
    request_id TEXT NOT NULL,
    peer TEXT NOT NULL,
    decision TEXT NOT NULL,
    digest TEXT,
    note TEXT,
    PRIMARY KEY (member, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS audit_facts_by_request ON audit_facts (member, kind, request_id);
CREATE TABLE IF NOT EXISTS evidence (
    id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    detail TEXT NOT NULL,
    first BLOB NOT NULL,
    second BLOB NOT NULL,
    time INTEGER NOT NULL
);
";

/// What a witness decided about a submitted checkpoint.
#[derive(Debug)]
pub enum WitnessDecision {
    /// Consistent: the stored state moved to the new checkpoint.
    Cosign,
    /// The old size is not what was last cosigned (409), with that size.
    Conflict(u64),
    /// Two signed checkpoints of one size with different roots (422), kept as evidence.
    Fork(String),
    /// A consistency proof that does not verify (422): evidence of nothing, kept nowhere.
    BadProof(String),
}

pub use crate::wire::Evidence;

/// Most entries a batch gathers before it is written (one request's entries always go together).
const MAX_BATCH: usize = 4096;

fn db(e: rusqlite::Error) -> NodeError {
    NodeError::LogStorage(e)
}

fn open(path: &Path) -> Result<Connection, NodeError> {
    crate::store::files::private_database(path)?;
    let conn = Connection::open(path)
        .map_err(|source| NodeError::DatabaseOpen { path: path.display().to_string(), source })?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(db)?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(db)?;
    conn.execute_batch(SCHEMA).map_err(db)?;
    Ok(conn)
}

/// Complete subtree hashes read from the database.
pub struct DbReader<'a>(pub &'a Connection);

impl HashReader for DbReader<'_> {
    fn hash(&self, level: u8, index: u64) -> Result<Hash, LogError> {
        let h: Option<Vec<u8>> = self
            .0
            .query_row(
                "SELECT hash FROM log_nodes WHERE level = ?1 AND idx = ?2",
                params![level, index as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| LogError::Proof(format!("log storage: {e}")))?;
        h.and_then(|h| Hash::try_from(h).ok())
            .ok_or_else(|| LogError::Proof(format!("no stored node at level {level}, index {index}")))
    }
}

/// The number of entries of the log stored in the database at `path`, read with one
/// connection (no writer is started): for a copy such as a backup.
pub fn stored_size_at(path: &Path) -> Result<u64, NodeError> {
    stored_size(&open(path)?)
}

fn stored_size(conn: &Connection) -> Result<u64, NodeError> {
    let n: Option<i64> = conn.query_row("SELECT max(idx) FROM log_entries", [], |r| r.get(0)).map_err(db)?;
    Ok(n.map(|n| n as u64 + 1).unwrap_or(0))
}

/// Where an append's outcome goes: an async waiter or a blocked thread.
type Reply = Box<dyn FnOnce(Result<u64, Arc<NodeError>>) + Send>;

/// Entries to append together, in order; the reply carries the first one's index.
struct Request {
    entries: Vec<Vec<u8>>,
    reply: Reply,
}

/// A handle to append to the log and read it. Cheap to clone.
#[derive(Clone)]
pub struct Log {
    path: PathBuf,
    sender: mpsc::Sender<Request>,
    reader: Arc<Mutex<Connection>>,
    /// For the witness's and the audit's own writes: they wait for the log writer's lock here,
    /// never while holding the reader.
    side: Arc<Mutex<Connection>>,
    appended: Arc<tokio::sync::Notify>,
    /// Appends made through [`Log::append`] and the nanoseconds they took, for the metrics;
    /// shared by every handle.
    append_count: Arc<std::sync::atomic::AtomicU64>,
    append_nanos: Arc<std::sync::atomic::AtomicU64>,
}

impl Log {
    /// Opens the log in the database at `path` and starts its writer thread. The thread ends
    /// when the last handle is dropped.
    pub fn open(path: &Path) -> Result<Self, NodeError> {
        let writer = open(path)?;
        let reader = open(path)?;
        let side = open(path)?;
        let (sender, receiver) = mpsc::channel::<Request>();
        let appended = Arc::new(tokio::sync::Notify::new());
        let notify = appended.clone();
        std::thread::Builder::new()
            .name("concord-log-writer".into())
            .spawn(move || write_loop(writer, receiver, &notify))
            .map_err(|source| NodeError::Io { path: "the log writer thread".into(), source })?;
        Ok(Self {
            path: path.to_owned(),
            sender,
            reader: Arc::new(Mutex::new(reader)),
            side: Arc::new(Mutex::new(side)),
            appended,
            append_count: Default::default(),
            append_nanos: Default::default(),
        })
    }

    /// Resolves after the next committed append (or at once if one happened since the last wait).
    pub async fn appended(&self) {
        self.appended.notified().await;
    }

    /// The database file the log lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an entry; resolves to its index once it is on disk.
    pub async fn append(&self, entry: Vec<u8>) -> Result<u64, NodeError> {
        self.append_all(vec![entry]).await
    }

    /// Appends entries in order, in one commit (one sync for all); resolves to the first one's
    /// index once all are on disk. Either all are appended or none.
    pub async fn append_all(&self, entries: Vec<Vec<u8>>) -> Result<u64, NodeError> {
        if let Some(e) = entries.iter().find(|e| e.len() > MAX_ENTRY_BYTES) {
            return Err(NodeError::Note(LogError::EntryTooLarge(e.len())));
        }
        if entries.is_empty() {
            return self.size();
        }
        let count = entries.len() as u64;
        let started = std::time::Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reply: Reply = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.sender.send(Request { entries, reply }).map_err(|_| NodeError::Stopped("the log writer"))?;
        let index =
            rx.await.map_err(|_| NodeError::Stopped("the log writer"))?.map_err(NodeError::LogAppend)?;
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.append_count.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        self.append_nanos.fetch_add(nanos, std::sync::atomic::Ordering::Relaxed);
        Ok(index)
    }

    /// Appends made through [`Log::append`] since the log was opened, and their total time in
    /// nanoseconds.
    pub fn append_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.append_count.load(Relaxed), self.append_nanos.load(Relaxed))
    }

    /// Appends from synchronous code (offline commands).
    pub fn append_blocking(&self, entry: Vec<u8>) -> Result<u64, NodeError> {
        if entry.len() > MAX_ENTRY_BYTES {
            return Err(NodeError::Note(LogError::EntryTooLarge(entry.len())));
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let reply: Reply = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.sender
            .send(Request { entries: vec![entry], reply })
            .map_err(|_| NodeError::Stopped("the log writer"))?;
        rx.recv().map_err(|_| NodeError::Stopped("the log writer"))?.map_err(NodeError::LogAppend)
    }

    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T, NodeError>) -> Result<T, NodeError> {
        let conn = self.reader.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&conn)
    }

    /// Entries on disk.
    pub fn size(&self) -> Result<u64, NodeError> {
        self.with_reader(stored_size)
    }

    /// The root of the tree of `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, NodeError> {
        self.with_reader(|c| Ok(concord_log::merkle::root(&DbReader(c), size)?))
    }

    /// The RFC 6962 inclusion proof of entry `index` in the tree of `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, NodeError> {
        self.with_reader(|c| Ok(concord_log::merkle::inclusion_proof(&DbReader(c), index, size)?))
    }

    /// The RFC 6962 consistency proof from the tree of `size1` leaves to the tree of `size2`.
    pub fn consistency_proof(&self, size1: u64, size2: u64) -> Result<Vec<Hash>, NodeError> {
        self.with_reader(|c| Ok(concord_log::merkle::consistency_proof(&DbReader(c), size1, size2)?))
    }

    /// Entries `[start, end)`.
    pub fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, NodeError> {
        self.with_reader(|c| {
            let mut stmt = c
                .prepare("SELECT data FROM log_entries WHERE idx >= ?1 AND idx < ?2 ORDER BY idx")
                .map_err(db)?;
            let rows =
                stmt.query_map(params![start as i64, end as i64], |r| r.get::<_, Vec<u8>>(0)).map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    /// A tile's bytes (hashes or entry bundle), if it exists at `size`.
    pub fn tile(&self, tile: &concord_log::tiles::Tile, size: u64) -> Result<Option<Vec<u8>>, NodeError> {
        use concord_log::tiles::{TILE_WIDTH, TileKind, encode_bundle};
        if !tile.exists_in(size) {
            return Ok(None);
        }
        match tile.kind {
            TileKind::Hashes(_) => self.with_reader(|c| Ok(Some(tile.hashes(&DbReader(c))?))),
            TileKind::Entries => {
                let start = tile.index * TILE_WIDTH;
                let entries = self.entries(start, start + tile.width)?;
                Ok(Some(encode_bundle(entries.iter().map(Vec::as_slice))?))
            }
        }
    }

    /// Stores a signed checkpoint; `published` once its witness quorum cosigned it.
    pub fn store_checkpoint(&self, size: u64, note: &Note, published: bool) -> Result<(), NodeError> {
        self.with_reader(|c| {
            c.execute(
                "INSERT INTO log_checkpoints (size, note, published) VALUES (?1, ?2, ?3)
                 ON CONFLICT(size) DO UPDATE SET note = excluded.note, published = max(published, excluded.published)",
                params![size as i64, note.to_bytes(), published as i64],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    /// The latest signed checkpoint, published or not.
    pub fn latest_checkpoint(&self) -> Result<Option<(u64, Note)>, NodeError> {
        self.checkpoint_where("1")
    }

    /// The latest checkpoint whose witness quorum cosigned it: what `/checkpoint` serves.
    pub fn published_checkpoint(&self) -> Result<Option<(u64, Note)>, NodeError> {
        self.checkpoint_where("published = 1")
    }

    fn checkpoint_where(&self, cond: &str) -> Result<Option<(u64, Note)>, NodeError> {
        self.with_reader(|c| {
            let row: Option<(i64, Vec<u8>)> = c
                .query_row(
                    &format!(
                        "SELECT size, note FROM log_checkpoints WHERE {cond} ORDER BY size DESC LIMIT 1"
                    ),
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db)?;
            row.map(|(s, n)| Ok((s as u64, Note::parse(&n)?))).transpose()
        })
    }
}

impl Log {
    /// The witness's atomic check-and-update for `origin` (C2SP tlog-witness add-checkpoint):
    /// the old size must be the last cosigned size, and the new checkpoint must be consistent
    /// with the last cosigned one.
    pub fn witness_update(
        &self,
        origin: &str,
        old: u64,
        proof: &[Vec<u8>],
        checkpoint: &concord_log::checkpoint::Checkpoint,
        checkpoint_note: &[u8],
    ) -> Result<WitnessDecision, NodeError> {
        let mut conn = self.side.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
        let (size, root, prev) = last_witnessed(&tx, origin)?;
        if old != size {
            return Ok(WitnessDecision::Conflict(size));
        }
        if old == checkpoint.size {
            return same_size_decision(tx, origin, &root, &prev, checkpoint, checkpoint_note);
        }
        if let Err(detail) = check_consistency(old, proof, &root, checkpoint) {
            // Whoever sent it, a proof that does not verify shows nothing about the log: it is
            // refused and kept against no one.
            return Ok(WitnessDecision::BadProof(detail));
        }
        tx.execute(
            "INSERT INTO witnessed (origin, size, root, checkpoint) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(origin) DO UPDATE SET size = excluded.size, root = excluded.root, checkpoint = excluded.checkpoint",
            params![origin, checkpoint.size as i64, checkpoint.root.as_slice(), checkpoint_note],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(WitnessDecision::Cosign)
    }

    /// Evidence of misbehaviour this node has kept.
    pub fn evidence(&self) -> Result<Vec<Evidence>, NodeError> {
        self.with_reader(|c| {
            let mut stmt = c
                .prepare("SELECT origin, detail, first, second, time FROM evidence ORDER BY id")
                .map_err(db)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(Evidence {
                        origin: r.get(0)?,
                        detail: r.get(1)?,
                        first: String::from_utf8_lossy(&r.get::<_, Vec<u8>>(2)?).into_owned(),
                        second: String::from_utf8_lossy(&r.get::<_, Vec<u8>>(3)?).into_owned(),
                        time: r.get(4)?,
                    })
                })
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    /// Keeps evidence found by an audit.
    pub fn keep_evidence(
        &self,
        origin: &str,
        detail: &str,
        first: &[u8],
        second: &[u8],
    ) -> Result<(), NodeError> {
        self.with_reader(|c| {
            c.execute(
                "INSERT INTO evidence (origin, detail, first, second, time) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![origin, detail, first, second, chrono::Utc::now().timestamp()],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    /// The last size a witness cosigned of this log.
    pub fn witness_progress(&self, witness: &str) -> Result<u64, NodeError> {
        self.with_reader(|c| {
            let n: Option<i64> = c
                .query_row("SELECT size FROM witness_progress WHERE witness = ?1", params![witness], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db)?;
            Ok(n.unwrap_or(0) as u64)
        })
    }

    /// Records `size` as the last size `witness` cosigned of this log.
    pub fn set_witness_progress(&self, witness: &str, size: u64) -> Result<(), NodeError> {
        self.with_reader(|c| {
            c.execute(
                "INSERT INTO witness_progress (witness, size) VALUES (?1, ?2)
                 ON CONFLICT(witness) DO UPDATE SET size = excluded.size",
                params![witness, size as i64],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    /// The state this node's audits last verified of `origin`.
    pub fn audit_state(&self, origin: &str) -> Result<Option<AuditState>, NodeError> {
        self.with_reader(|c| {
            let row = c
                .query_row(
                    "SELECT size, root, peaks, checkpoint FROM audit_state WHERE origin = ?1",
                    params![origin],
                    |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Vec<u8>>(2)?, r.get(3)?))
                    },
                )
                .optional()
                .map_err(db)?;
            let Some((size, root, peaks, checkpoint)) = row else { return Ok(None) };
            let peaks = peaks
                .chunks(32)
                .map(|h| {
                    Hash::try_from(h)
                        .map_err(|_| NodeError::State("a stored audit peak is not 32 bytes".into()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(AuditState { size: size as u64, root, peaks, checkpoint }))
        })
    }

    /// Keeps one audit step of `member`'s log (whose origin is `origin`): its new state and the
    /// access facts of its new entries, together.
    pub fn store_audit_step(
        &self,
        origin: &str,
        member: &str,
        state: &AuditState,
        facts: &[AccessFact],
    ) -> Result<(), NodeError> {
        let mut conn = self.side.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
        let peaks: Vec<u8> = state.peaks.iter().flatten().copied().collect();
        tx.execute(
            "INSERT INTO audit_state (origin, size, root, peaks, checkpoint) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(origin) DO UPDATE SET size = excluded.size, root = excluded.root,
                 peaks = excluded.peaks, checkpoint = excluded.checkpoint",
            params![origin, state.size as i64, state.root, peaks, state.checkpoint],
        )
        .map_err(db)?;
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO audit_facts (member, idx, kind, request_id, peer, decision, digest, note)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(db)?;
            for f in facts {
                put.execute(params![
                    member,
                    f.index as i64,
                    f.kind.name(),
                    f.request_id,
                    f.peer,
                    f.kind.decision(),
                    f.digest,
                    f.note
                ])
                .map_err(db)?;
            }
        }
        tx.commit().map_err(db)
    }

    /// Reconciles the verified access facts of `members`' logs with each other, listing at most
    /// `max` findings of each kind: (mismatches, releases not received).
    ///
    /// Every access made must have a released "access served" twin in the owner's log with the
    /// same requester and digest; every release must have the requester's record of asking
    /// (made or requested). A release whose requester asked but never recorded the answer is
    /// listed apart: a crash between the two, not a hidden access. Any number of entries with
    /// one request id, in any order, cannot mask a finding.
    pub fn reconcile(
        &self,
        members: &std::collections::BTreeSet<String>,
        max: usize,
    ) -> Result<(Vec<Mismatch>, Vec<Mismatch>), NodeError> {
        let set = serde_json::to_string(members)
            .map_err(|source| NodeError::Encode { what: "a reconciliation's member set", source })?;
        self.with_reader(|c| {
            let mut mismatches = made_without_release(c, &set, max)?;
            mismatches.extend(released_without_request(c, &set, max)?);
            mismatches.extend(released_more_than_once(c, &set, max)?);
            let unreceived = released_not_received(c, &set, max)?;
            Ok((mismatches, unreceived))
        })
    }
}

/// The last checkpoint cosigned of `origin`: (size, root, signed note), or the empty tree with
/// no note if none was.
fn last_witnessed(conn: &Connection, origin: &str) -> Result<(u64, Vec<u8>, Vec<u8>), NodeError> {
    let stored: Option<(i64, Vec<u8>, Vec<u8>)> = conn
        .query_row("SELECT size, root, checkpoint FROM witnessed WHERE origin = ?1", params![origin], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()
        .map_err(db)?;
    Ok(match stored {
        Some((s, r, c)) => (s as u64, r, c),
        None => (0, concord_log::merkle::empty_root().to_vec(), Vec::new()),
    })
}

/// The witness's decision on a checkpoint of the size it last cosigned (`root`, signed as
/// `prev`): the same root is cosigned again; another root is a fork, kept as evidence in `tx`.
fn same_size_decision(
    tx: rusqlite::Transaction<'_>,
    origin: &str,
    root: &[u8],
    prev: &[u8],
    checkpoint: &concord_log::checkpoint::Checkpoint,
    checkpoint_note: &[u8],
) -> Result<WitnessDecision, NodeError> {
    if checkpoint.root.as_slice() == root {
        return Ok(WitnessDecision::Cosign);
    }
    if prev.is_empty() {
        return Ok(WitnessDecision::BadProof("a tree of 0 entries has the empty root".into()));
    }
    // Two checkpoints of one size with different roots, both signed by the log's owner
    // (the stored one was verified when it was cosigned): they cannot both be true.
    let detail = format!("two signed checkpoints of {} entries with different roots", checkpoint.size);
    // One piece of evidence per cosigned checkpoint is proof enough; more second roots
    // would only let the log's owner grow this database.
    let known: Option<i64> = tx
        .query_row("SELECT id FROM evidence WHERE origin = ?1 AND first = ?2", params![origin, prev], |r| {
            r.get(0)
        })
        .optional()
        .map_err(db)?;
    if known.is_some() {
        return Ok(WitnessDecision::BadProof(format!("{detail} (evidence already kept)")));
    }
    tx.execute(
        "INSERT INTO evidence (origin, detail, first, second, time) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![origin, detail, prev, checkpoint_note, chrono::Utc::now().timestamp()],
    )
    .map_err(db)?;
    tx.commit().map_err(db)?;
    Ok(WitnessDecision::Fork(detail))
}

/// Checks that `proof` shows the tree of `old` entries with `root` consistent with
/// `checkpoint`; the error says why not.
fn check_consistency(
    old: u64,
    proof: &[Vec<u8>],
    root: &[u8],
    checkpoint: &concord_log::checkpoint::Checkpoint,
) -> Result<(), String> {
    if old == 0 {
        if proof.is_empty() { Ok(()) } else { Err("a proof from size 0 must be empty".to_owned()) }
    } else {
        concord_log::merkle::verify_consistency(old, checkpoint.size, proof, root, &checkpoint.root)
            .map_err(|e| e.to_string())
    }
}

/// The facts every reconciliation query reads: `facts`, those between two members of the set
/// `?1` (a JSON array), and `released`, the served ones among them that released data.
const IN_SET: &str = "WITH facts AS (SELECT * FROM audit_facts
        WHERE member IN (SELECT value FROM json_each(?1)) AND peer IN (SELECT value FROM json_each(?1))),
    released AS (SELECT * FROM facts WHERE kind = 'served' AND decision = 'released')";

/// Runs one reconciliation query, over the facts of the members in `set` (a JSON array), for at
/// most `max` findings: rows of (request id, member, peer, extra), the member being the
/// requester if `requester_first`, else the owner, each worded by `problem`.
fn findings(
    c: &Connection,
    set: &str,
    max: usize,
    sql: &str,
    problem: &dyn Fn(&str, &str, &str) -> String,
    requester_first: bool,
) -> Result<Vec<Mismatch>, NodeError> {
    let mut stmt = c.prepare(sql).map_err(db)?;
    let found = stmt
        .query_map(params![set, max as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .map_err(db)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db)?;
    Ok(found
        .into_iter()
        .map(|(id, a, b, extra)| {
            let (requester, owner) = if requester_first { (a, b) } else { (b, a) };
            let problem = problem(&requester, &owner, extra.as_deref().unwrap_or(""));
            Mismatch { request_id: id, requester, owner, problem }
        })
        .collect::<Vec<_>>())
}

/// Accesses made without the owner's released "access served" twin of the same requester and
/// digest.
fn made_without_release(c: &Connection, set: &str, max: usize) -> Result<Vec<Mismatch>, NodeError> {
    findings(
        c,
        set,
        max,
        &format!(
            "{IN_SET} SELECT m.request_id, m.member, m.peer,
                    (SELECT group_concat(s.decision || ' for ' || s.peer, ', ') FROM audit_facts s
                      WHERE s.member = m.peer AND s.kind = 'served' AND s.request_id = m.request_id)
             FROM facts m
             WHERE m.kind = 'made'
               AND NOT EXISTS (SELECT 1 FROM released s WHERE s.member = m.peer
                    AND s.request_id = m.request_id AND s.peer = m.member AND s.digest = m.digest)
             ORDER BY m.request_id LIMIT ?2"
        ),
        &|requester, owner, seen| {
            if seen.is_empty() {
                format!("{requester} logged an access to {owner} that {owner}'s log does not hold")
            } else {
                format!("{owner} logged another release ({seen}) than {requester} received")
            }
        },
        true,
    )
}

/// Releases whose requester's log holds neither the access made nor the record of asking with
/// the same request note: hidden accesses.
fn released_without_request(c: &Connection, set: &str, max: usize) -> Result<Vec<Mismatch>, NodeError> {
    findings(
        c,
        set,
        max,
        &format!(
            "{IN_SET} SELECT s.request_id, s.member, s.peer, NULL FROM released s
             WHERE NOT EXISTS (SELECT 1 FROM facts r WHERE r.member = s.peer AND r.request_id = s.request_id
                    AND r.peer = s.member AND (r.kind = 'made' OR (r.kind = 'requested' AND r.note = s.note)))
             ORDER BY s.request_id LIMIT ?2"
        ),
        &|requester, owner, _| {
            format!(
                "{owner} released data to {requester}, whose log does not hold that request (signed as {owner} \
                 served it) at all: a hidden access"
            )
        },
        false,
    )
}

/// Request ids under which an owner released to one requester more than once.
fn released_more_than_once(c: &Connection, set: &str, max: usize) -> Result<Vec<Mismatch>, NodeError> {
    findings(
        c,
        set,
        max,
        &format!(
            "{IN_SET} SELECT s.request_id, s.member, s.peer, CAST(count(*) AS TEXT) FROM released s
             GROUP BY s.member, s.peer, s.request_id HAVING count(*) > 1
             ORDER BY s.request_id LIMIT ?2"
        ),
        &|requester, owner, n| {
            format!(
                "{owner} released data to {requester} {n} times under one request id: one record cannot stand for them all"
            )
        },
        false,
    )
}

/// Releases the requester asked for but never recorded receiving: a crash between the two, not
/// a hidden access.
fn released_not_received(c: &Connection, set: &str, max: usize) -> Result<Vec<Mismatch>, NodeError> {
    findings(
        c,
        set,
        max,
        &format!(
            "{IN_SET} SELECT s.request_id, s.member, s.peer, NULL FROM released s
             WHERE EXISTS (SELECT 1 FROM facts r WHERE r.member = s.peer AND r.kind = 'requested'
                    AND r.request_id = s.request_id AND r.peer = s.member AND r.note = s.note)
               AND NOT EXISTS (SELECT 1 FROM facts r WHERE r.member = s.peer AND r.kind = 'made'
                    AND r.request_id = s.request_id AND r.peer = s.member)
             ORDER BY s.request_id LIMIT ?2"
        ),
        &|requester, owner, _| {
            format!(
                "{requester} asked and {owner} served, but {requester} did not record receiving it (it went down or the answer was lost)"
            )
        },
        false,
    )
}

/// What an audit keeps of a log between audits: the verified size, root and right edge, and
/// the signed checkpoint that was verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditState {
    /// Entries verified so far.
    pub size: u64,
    /// The tree's root hash at `size` (32 bytes).
    pub root: Vec<u8>,
    /// The tree's right edge at `size`: the roots of its complete subtrees, largest first, as
    /// needed to verify the next entries without reading the old ones again.
    pub peaks: Vec<Hash>,
    /// The signed checkpoint note that was verified at `size`.
    pub checkpoint: Vec<u8>,
}

/// Which access entry a fact comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactKind {
    /// "access requested": the requester logged a request before sending it.
    Requested,
    /// "access made": the requester received a release, with the owner's receipt.
    Made,
    /// "access served": the owner decided on a request.
    Served(ServedDecision),
}

impl FactKind {
    /// `requested`, `made` or `served`, as the audit table stores it.
    fn name(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Made => "made",
            Self::Served(_) => "served",
        }
    }

    /// The decision column: a served entry's decision, the kind's name otherwise.
    fn decision(self) -> String {
        match self {
            Self::Served(d) => d.to_string(),
            other => other.name().to_owned(),
        }
    }
}

/// One access entry of an audited log, as reconciliation needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessFact {
    /// The entry's index in the audited log.
    pub index: u64,
    /// The entry's kind, and a served entry's decision.
    pub kind: FactKind,
    /// The access's request id, 32 hex digits.
    pub request_id: String,
    /// The owner (requested, made) or the requester (served).
    pub peer: String,
    /// `sha256:<hex>` of the release's details (made entries, released served ones), or of the
    /// reason a served request was refused; none for requested entries.
    pub digest: Option<String>,
    /// SHA-256 of the signed request note (requested and served entries).
    pub note: Option<String>,
}

fn write_loop(mut conn: Connection, receiver: mpsc::Receiver<Request>, appended: &tokio::sync::Notify) {
    let mut range: Option<CompactRange> = None;
    while let Ok(first) = receiver.recv() {
        let mut entries = first.entries.len();
        let mut batch = vec![first];
        while entries < MAX_BATCH {
            match receiver.try_recv() {
                Ok(r) => {
                    entries += r.entries.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        match write_batch(&mut conn, &mut range, &batch) {
            Ok(mut index) => {
                for r in batch {
                    let n = r.entries.len() as u64;
                    (r.reply)(Ok(index));
                    index += n;
                }
                appended.notify_one();
            }
            Err(e) => {
                // The transaction rolled back: forget the in-memory edge and re-read it.
                range = None;
                let e = Arc::new(e);
                for r in batch {
                    (r.reply)(Err(e.clone()));
                }
            }
        }
    }
}

fn write_batch(
    conn: &mut Connection,
    range: &mut Option<CompactRange>,
    batch: &[Request],
) -> Result<u64, NodeError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
    let size = stored_size(&tx)?;
    let mut edge = match range.take() {
        Some(r) if r.size() == size => r,
        _ => CompactRange::from_reader(&DbReader(&tx), size)?,
    };
    {
        let mut put_entry =
            tx.prepare_cached("INSERT INTO log_entries (idx, data) VALUES (?1, ?2)").map_err(db)?;
        let mut put_node =
            tx.prepare_cached("INSERT INTO log_nodes (level, idx, hash) VALUES (?1, ?2, ?3)").map_err(db)?;
        for (i, entry) in batch.iter().flat_map(|r| &r.entries).enumerate() {
            put_entry.execute(params![(size + i as u64) as i64, entry]).map_err(db)?;
            for (level, index, hash) in edge.append(leaf_hash(entry)) {
                put_node.execute(params![level, index as i64, hash.as_slice()]).map_err(db)?;
            }
        }
    }
    tx.commit().map_err(db)?;
    *range = Some(edge);
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(
        index: u64,
        kind: &'static str,
        id: &str,
        peer: &str,
        decision: &str,
        digest: Option<&str>,
    ) -> AccessFact {
        // Requested and served entries carry the digest of their request note: here, its id's.
        let note = matches!(kind, "requested" | "served").then(|| format!("note-{id}"));
        let kind = match kind {
            "requested" => FactKind::Requested,
            "made" => FactKind::Made,
            _ => FactKind::Served(ServedDecision::parse(decision).expect("a decision the log writes")),
        };
        AccessFact {
            index,
            kind,
            request_id: id.into(),
            peer: peer.into(),
            digest: digest.map(str::to_owned),
            note,
        }
    }

    #[tokio::test]
    async fn entries_appended_together_are_consecutive_and_all_or_none() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = Log::open(&dir.path().join("state.db")).expect("log");
        assert_eq!(log.append(b"first".to_vec()).await.expect("one"), 0);
        let together = vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()];
        assert_eq!(log.append_all(together.clone()).await.expect("three"), 1);
        assert_eq!(log.entries(1, 4).expect("entries"), together);
        let too_large = vec![b"d".to_vec(), vec![0; MAX_ENTRY_BYTES + 1]];
        assert!(log.append_all(too_large).await.is_err());
        assert_eq!(log.size().expect("size"), 4, "nothing of a refused set is appended");
        let mut tree = concord_log::merkle::MemoryTree::new();
        for e in log.entries(0, 4).expect("entries") {
            tree.append(&e);
        }
        assert_eq!(log.root(4).expect("root"), tree.root());
    }

    #[test]
    fn reconciliation_finds_each_missing_or_different_twin_whatever_the_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = Log::open(&dir.path().join("state.db")).expect("log");
        let state = |size| AuditState { size, root: vec![0; 32], peaks: vec![], checkpoint: vec![] };
        let alpha = [
            fact(0, "requested", "r1", "bravo", "requested", None),
            fact(1, "made", "r1", "bravo", "made", Some("d1")),
            fact(2, "made", "r2", "bravo", "made", Some("d2")),
            fact(3, "made", "r3", "bravo", "made", Some("d3")),
            fact(4, "requested", "r5", "bravo", "requested", None),
            fact(5, "made", "r6", "bravo", "made", Some("d6")),
            fact(6, "made", "r7", "bravo", "made", Some("d7")),
            fact(7, "made", "r9", "zulu", "made", Some("d9")),
        ];
        let bravo = [
            fact(0, "served", "r1", "alpha", "released", Some("d1")),
            fact(1, "served", "r2", "alpha", "released", Some("other")),
            fact(2, "served", "r4", "alpha", "released", Some("d4")),
            fact(3, "served", "r5", "alpha", "released", Some("d5")),
            // A refusal under the same id before and after the release masks nothing.
            fact(4, "served", "r6", "alpha", "refused:replayed_request", None),
            fact(5, "served", "r6", "alpha", "released", Some("d6")),
            fact(6, "served", "r6", "alpha", "refused:replayed_request", None),
            // Released, but to another requester than the one that logged it.
            fact(7, "served", "r7", "charlie", "released", Some("d7")),
            // Released twice under one id (a requester reusing an id after the owner forgot it).
            fact(8, "served", "r1", "alpha", "released", Some("d1")),
        ];
        log.store_audit_step("f/alpha", "alpha", &state(0), &alpha).expect("alpha");
        log.store_audit_step("f/bravo", "bravo", &state(0), &bravo).expect("bravo");
        let members = ["alpha".to_owned(), "bravo".to_owned()].into_iter().collect();
        let (mismatches, unreceived) = log.reconcile(&members, 100).expect("reconciles");
        let found: Vec<(&str, &str)> =
            mismatches.iter().map(|m| (m.request_id.as_str(), m.problem.as_str())).collect();
        let ids: Vec<&str> = found.iter().map(|(i, _)| *i).collect();
        assert_eq!(ids, ["r2", "r3", "r7", "r4", "r1"], "{found:#?}");
        assert!(found[0].1.contains("another release"), "{found:?}");
        assert!(found[1].1.contains("does not hold"), "{found:?}");
        assert!(found[2].1.contains("released for charlie"), "{found:?}");
        assert!(found[3].1.contains("hidden access"), "{found:?}");
        assert!(found[4].1.contains("2 times under one request id"), "{found:?}");
        assert_eq!(unreceived.len(), 1);
        assert_eq!((unreceived[0].request_id.as_str(), unreceived[0].requester.as_str()), ("r5", "alpha"));
        // Charlie's log is not audited: nothing about charlie is concluded.
        let (m, _) = log.reconcile(&["alpha".to_owned()].into_iter().collect(), 100).expect("reconciles");
        assert!(m.is_empty(), "{m:?}");
        // The listing is capped.
        let (m, _) = log.reconcile(&members, 1).expect("reconciles");
        assert_eq!(m.len(), 3, "at most one of each kind");
        // A record of asking for another request (another note under the same id) is no twin.
        let mut other = fact(9, "requested", "r8", "bravo", "requested", None);
        other.note = Some("note-something-else".into());
        log.store_audit_step("f/alpha", "alpha", &state(0), &[other]).expect("alpha");
        log.store_audit_step(
            "f/bravo",
            "bravo",
            &state(0),
            &[fact(9, "served", "r8", "alpha", "released", Some("d8"))],
        )
        .expect("bravo");
        let (m, _) = log.reconcile(&members, 100).expect("reconciles");
        assert!(m.iter().any(|m| m.request_id == "r8" && m.problem.contains("hidden access")), "{m:?}");
    }
}
