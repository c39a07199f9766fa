//! Audit: fetch a member's checkpoint, entry bundles and hash tiles, verify the log's signature
//! and its witnesses' cosignatures, check consistency with the last state this node saw,
//! recompute the tree from the entries (every served tile must match it), and reconcile accesses
//! bilaterally between logs.
//!
//! Invariant: an audit trusts nothing it fetched until the entries hash to the signed root.

use std::collections::{BTreeMap, BTreeSet};

use concord_charter::MemberCard;
use concord_log::checkpoint::Checkpoint;
use concord_log::merkle::MemoryTree;
use concord_log::tiles::{TILE_WIDTH, Tile, TileKind, decode_bundle};
use concord_log::{LogError, Note};
use serde::Serialize;

use crate::NodeError;
use crate::node::Node;
use crate::store::entry::LogEntry;

/// A member's log, fetched and verified.
#[derive(Debug)]
pub struct VerifiedLog {
    pub member: String,
    pub checkpoint: Checkpoint,
    pub note: Note,
    pub cosigners: Vec<String>,
    pub entries: Vec<Vec<u8>>,
}

/// What an audit fetches of a log: the signed checkpoint, every entry bundle in order, and every
/// hash tile of the checkpointed tree.
#[derive(Clone, Debug)]
pub struct FetchedLog {
    pub checkpoint: Vec<u8>,
    pub bundles: Vec<Vec<u8>>,
    pub tiles: Vec<(Tile, Vec<u8>)>,
}

/// Verifies a fetched log: the checkpoint's signature by `card`'s key, the cosignatures of the
/// other members' witness keys, that the entry bundles hash to its root, and that every hash
/// tile holds what the entries give.
pub fn verify_log(
    card: &MemberCard,
    witnesses: &[MemberCard],
    fetched: &FetchedLog,
) -> Result<VerifiedLog, NodeError> {
    let bundles = &fetched.bundles;
    let (cp, note) = Checkpoint::open(&fetched.checkpoint, &card.verifier()?)?;
    let mut cosigners = Vec::new();
    for w in witnesses.iter().filter(|w| w.id != card.id) {
        match w.witness_verifier()?.verify(&note) {
            Ok(Some(_)) => cosigners.push(w.id.clone()),
            Ok(None) => {}
            Err(e) => return Err(NodeError::Note(e)),
        }
    }
    let mut entries = Vec::new();
    for (i, b) in bundles.iter().enumerate() {
        let decoded = decode_bundle(b)
            .map_err(|e| NodeError::Note(LogError::MalformedBundle(format!("bundle {i}: {e}"))))?;
        let want = (cp.size - i as u64 * TILE_WIDTH).min(TILE_WIDTH) as usize;
        if decoded.len() != want {
            return Err(NodeError::Note(LogError::MalformedBundle(format!(
                "bundle {i} holds {} entries, the checkpoint needs {want}",
                decoded.len()
            ))));
        }
        entries.extend(decoded);
    }
    if entries.len() as u64 != cp.size {
        return Err(NodeError::Note(LogError::MalformedBundle(format!(
            "{} entries fetched for a tree of {}",
            entries.len(),
            cp.size
        ))));
    }
    let mut tree = MemoryTree::new();
    for e in &entries {
        tree.append(e);
    }
    if tree.root() != cp.root {
        return Err(NodeError::Note(LogError::Proof(format!(
            "the entries of {} do not hash to its signed root: a tile or entry was altered",
            card.id
        ))));
    }
    for (tile, bytes) in &fetched.tiles {
        if !tile.exists_in(cp.size) || *bytes != tile.hashes(&tree)? {
            return Err(NodeError::Note(LogError::Proof(format!(
                "{} of {} does not match its entries: the tile was altered",
                tile.path(),
                card.id
            ))));
        }
    }
    Ok(VerifiedLog { member: card.id.clone(), checkpoint: cp, note, cosigners, entries })
}

/// The hash tiles of a tree of `size` entries, at every level.
pub fn hash_tiles(size: u64) -> Vec<Tile> {
    let mut tiles = Vec::new();
    for level in 0..8u8 {
        let nodes = if 8 * level as u32 >= 64 { 0 } else { size >> (8 * level as u32) };
        if nodes == 0 {
            break;
        }
        for i in 0..nodes / TILE_WIDTH {
            tiles.push(Tile { kind: TileKind::Hashes(level), index: i, width: TILE_WIDTH });
        }
        if !nodes.is_multiple_of(TILE_WIDTH) {
            tiles.push(Tile {
                kind: TileKind::Hashes(level),
                index: nodes / TILE_WIDTH,
                width: nodes % TILE_WIDTH,
            });
        }
    }
    tiles
}

/// The bundles a tree of `size` entries is served as.
pub fn bundle_tiles(size: u64) -> Vec<Tile> {
    let full = size / TILE_WIDTH;
    let mut tiles: Vec<Tile> =
        (0..full).map(|i| Tile { kind: TileKind::Entries, index: i, width: TILE_WIDTH }).collect();
    if !size.is_multiple_of(TILE_WIDTH) {
        tiles.push(Tile { kind: TileKind::Entries, index: full, width: size % TILE_WIDTH });
    }
    tiles
}

/// One member's part of an audit report.
#[derive(Debug, Serialize)]
pub struct MemberAudit {
    pub member: String,
    pub size: u64,
    pub root: String,
    pub cosigners: Vec<String>,
    pub witness_quorum: usize,
    /// The size this node had seen before, if any.
    pub previous_size: Option<u64>,
    pub problems: Vec<String>,
}

/// A reconciliation finding between two logs.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Mismatch {
    pub request_id: String,
    pub requester: String,
    pub owner: String,
    pub problem: String,
}

/// The whole audit report.
#[derive(Debug, Serialize)]
pub struct AuditReport {
    pub members: Vec<MemberAudit>,
    pub mismatches: Vec<Mismatch>,
    pub evidence: Vec<crate::store::tlog::Evidence>,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.members.iter().all(|m| m.problems.is_empty())
            && self.mismatches.is_empty()
            && self.evidence.is_empty()
    }
}

/// Bilateral reconciliation: every "access made" names an owner whose log holds an "access
/// served" twin (released, same digest), and every released "access served" names a requester
/// whose log holds the "access made" twin. Only pairs of logs both present are reconciled.
pub fn reconcile(logs: &BTreeMap<String, Vec<LogEntry>>) -> Vec<Mismatch> {
    let mut served: BTreeMap<(&str, &str), (&str, Option<&str>, &str)> = BTreeMap::new();
    let mut made: BTreeMap<(&str, &str), (&str, &str)> = BTreeMap::new();
    for (member, entries) in logs {
        for e in entries {
            match e {
                LogEntry::AccessServed { request_id, requester, decision, result_sha256, .. } => {
                    served.insert(
                        (member.as_str(), request_id.as_str()),
                        (requester.as_str(), result_sha256.as_deref(), decision.as_str()),
                    );
                }
                LogEntry::AccessMade { request_id, owner, result_sha256, .. } => {
                    made.insert(
                        (owner.as_str(), request_id.as_str()),
                        (member.as_str(), result_sha256.as_str()),
                    );
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    for ((owner, id), (requester, digest)) in &made {
        if !logs.contains_key(*owner) {
            continue;
        }
        let problem = match served.get(&(*owner, *id)) {
            None => format!("{requester} logged an access to {owner} that {owner}'s log does not hold"),
            Some((r, _, _)) if r != requester => {
                format!("{owner} logged this request as {r}'s, not {requester}'s")
            }
            Some((_, d, decision)) if *decision != "released" || *d != Some(*digest) => {
                format!("{owner} logged another release ({decision}) than {requester} received")
            }
            Some(_) => continue,
        };
        out.push(Mismatch {
            request_id: (*id).to_owned(),
            requester: (*requester).to_owned(),
            owner: (*owner).to_owned(),
            problem,
        });
    }
    for ((owner, id), (requester, _, decision)) in &served {
        if *decision != "released" || !logs.contains_key(*requester) || made.contains_key(&(*owner, *id)) {
            continue;
        }
        out.push(Mismatch {
            request_id: (*id).to_owned(),
            requester: (*requester).to_owned(),
            owner: (*owner).to_owned(),
            problem: format!("{owner} released data to {requester}, whose log does not hold the access"),
        });
    }
    out
}

async fn fetch(node: &Node, m: &MemberCard, path: &str) -> Result<Vec<u8>, NodeError> {
    let resp =
        crate::net::client::peer_call(&node.tls, &m.id, &m.peer_endpoint, &m.tls_pin, "GET", path, vec![])
            .await?;
    if resp.status != 200 {
        let (code, message) = resp.error_parts();
        return Err(NodeError::Peer { member: m.id.clone(), code, message });
    }
    Ok(resp.body.to_vec())
}

/// Fetches (or, for this node, reads) a member's published checkpoint, bundles and tiles.
async fn fetch_log(node: &Node, m: &MemberCard) -> Result<FetchedLog, NodeError> {
    if m.id == node.cfg.member {
        let (size, note) = node
            .log
            .published_checkpoint()?
            .ok_or_else(|| NodeError::NotFound("this node has published no checkpoint yet".into()))?;
        let read = |t: &Tile| node.log.tile(t, size)?.ok_or_else(|| NodeError::NotFound(t.path()));
        let bundles = bundle_tiles(size).iter().map(read).collect::<Result<Vec<_>, _>>()?;
        let tiles = hash_tiles(size)
            .into_iter()
            .map(|t| Ok((t, read(&t)?)))
            .collect::<Result<Vec<_>, NodeError>>()?;
        return Ok(FetchedLog { checkpoint: note.to_bytes(), bundles, tiles });
    }
    let checkpoint = fetch(node, m, "/v1/log/checkpoint").await?;
    let (parsed, _) = Checkpoint::open(&checkpoint, &m.verifier()?)?;
    let mut bundles = Vec::new();
    for t in bundle_tiles(parsed.size) {
        bundles.push(fetch(node, m, &format!("/v1/log/{}", t.path())).await?);
    }
    let mut tiles = Vec::new();
    for t in hash_tiles(parsed.size) {
        let bytes = fetch(node, m, &format!("/v1/log/{}", t.path())).await?;
        tiles.push((t, bytes));
    }
    Ok(FetchedLog { checkpoint, bundles, tiles })
}

/// Audits `targets` (member ids) and reconciles them with each other and with this node's log.
pub async fn audit(node: &Node, targets: &[String]) -> Result<AuditReport, NodeError> {
    let charter = &node.charter.charter;
    let mut wanted: BTreeSet<String> = targets.iter().cloned().collect();
    wanted.insert(node.cfg.member.clone());
    let mut members = Vec::new();
    let mut logs: BTreeMap<String, Vec<LogEntry>> = BTreeMap::new();
    for id in &wanted {
        let card = charter
            .member(id)
            .ok_or_else(|| NodeError::UnknownMember(format!("{id} is not in the charter")))?;
        let origin = card.log_origin()?;
        let previous = node.log.audited(&origin)?;
        let mut report = MemberAudit {
            member: id.clone(),
            size: 0,
            root: String::new(),
            cosigners: vec![],
            witness_quorum: charter.witness_quorum,
            previous_size: previous.as_ref().map(|(s, _)| *s),
            problems: vec![],
        };
        let verified = match fetch_log(node, card).await {
            Ok(fetched) => verify_log(card, &charter.members, &fetched),
            Err(e) => Err(e),
        };
        match verified {
            Err(e) => report.problems.push(e.to_string()),
            Ok(v) => {
                report.size = v.checkpoint.size;
                report.root = concord_charter::hex(&v.checkpoint.root);
                report.cosigners = v.cosigners.clone();
                if v.cosigners.len() < charter.witness_quorum {
                    report.problems.push(format!(
                        "{} witness cosignatures, the charter's quorum is {}",
                        v.cosigners.len(),
                        charter.witness_quorum
                    ));
                }
                let mut consistent = true;
                if let Some((old_size, old_root)) = &previous {
                    if *old_size > v.checkpoint.size {
                        consistent = false;
                        report.problems.push(format!(
                            "rollback: the log shrank from {old_size} entries (seen before) to {}",
                            v.checkpoint.size
                        ));
                    } else {
                        let mut t = MemoryTree::new();
                        for e in &v.entries[..*old_size as usize] {
                            t.append(e);
                        }
                        if t.root().as_slice() != old_root.as_slice() {
                            consistent = false;
                            report.problems.push(format!(
                                "fork: the first {old_size} entries no longer hash to the root seen before"
                            ));
                        }
                    }
                    if !consistent {
                        node.log.keep_evidence(
                            &origin,
                            &report.problems.join("; "),
                            old_root,
                            &v.note.to_bytes(),
                        )?;
                    }
                }
                if consistent {
                    node.log.set_audited(&origin, v.checkpoint.size, &v.checkpoint.root)?;
                }
                let mut decoded = Vec::new();
                for (i, e) in v.entries.iter().enumerate() {
                    match LogEntry::from_bytes(e) {
                        Ok(d) => decoded.push(d),
                        Err(_) => report.problems.push(format!("entry {i} is not a Concord log entry")),
                    }
                }
                logs.insert(id.clone(), decoded);
            }
        }
        members.push(report);
    }
    let mismatches = reconcile(&logs);
    Ok(AuditReport { members, mismatches, evidence: node.log.evidence()? })
}

#[cfg(test)]
mod tests {
    use concord_log::NoteSigner;
    use concord_log::checkpoint::CosignatureSigner;
    use concord_log::tiles::encode_bundle;

    use super::*;

    struct Member {
        card: MemberCard,
        signer: NoteSigner,
        witness: CosignatureSigner,
    }

    fn member(id: &str, pin: char) -> Member {
        let signer = NoteSigner::generate(&format!("fed/{id}")).expect("key");
        let witness = CosignatureSigner::generate(&format!("fed/{id}/witness")).expect("key");
        let card = MemberCard {
            id: id.into(),
            name: id.into(),
            jurisdiction: "XX".into(),
            vkey: signer.vkey(),
            witness_vkey: witness.verifier().to_vkey(),
            tls_pin: format!("sha256/{}=", pin.to_string().repeat(43)),
            peer_endpoint: "127.0.0.1:1".into(),
        };
        Member { card, signer, witness }
    }

    /// A log of `n` entries by `a`, cosigned by `b`, as an audit fetches it.
    fn log(a: &Member, b: &Member, n: usize) -> FetchedLog {
        let entries: Vec<Vec<u8>> = (0..n).map(|i| format!("entry {i}").into_bytes()).collect();
        let mut tree = MemoryTree::new();
        for e in &entries {
            tree.append(e);
        }
        let cp =
            Checkpoint { origin: "fed/alpha".into(), size: n as u64, root: tree.root(), extensions: vec![] };
        let mut note = Note::new(cp.to_text()).expect("note");
        note.sign(&a.signer);
        note.add_signature(b.witness.cosign(note.text(), 1_800_000_000));
        let bundles = entries
            .chunks(256)
            .map(|c| encode_bundle(c.iter().map(Vec::as_slice)).expect("bundle"))
            .collect();
        let tiles = hash_tiles(n as u64).into_iter().map(|t| (t, t.hashes(&tree).expect("hashes"))).collect();
        FetchedLog { checkpoint: note.to_bytes(), bundles, tiles }
    }

    #[test]
    fn verified_logs_and_every_kind_of_tampering() {
        let (a, b) = (member("alpha", 'A'), member("bravo", 'B'));
        let cards = [a.card.clone(), b.card.clone()];
        let good = log(&a, &b, 70_000);
        let v = verify_log(&a.card, &cards, &good).expect("verifies");
        assert_eq!((v.checkpoint.size, v.cosigners.as_slice()), (70_000, ["bravo".to_owned()].as_slice()));
        assert_eq!(good.tiles.len(), 273 + 1 + 1 + 1 + 1, "the spec's 70,000-leaf example");
        let fails = |f: &FetchedLog, card: &MemberCard| {
            verify_log(card, &cards, f).expect_err("must fail").to_string()
        };

        // A flipped byte in an entry.
        let mut t = good.clone();
        t.bundles[1][10] ^= 1;
        assert!(fails(&t, &a.card).contains("do not hash to its signed root"));
        // A flipped bit in a hash tile, at level 0 and at level 1.
        for k in [5, 274] {
            let mut t = good.clone();
            t.tiles[k].1[40] ^= 1;
            let msg = fails(&t, &a.card);
            assert!(msg.contains(&t.tiles[k].0.path()) && msg.contains("altered"), "{msg}");
        }
        // A truncated bundle, and a missing one.
        let mut t = good.clone();
        let cut = t.bundles[2].len() - 3;
        t.bundles[2].truncate(cut);
        assert!(fails(&t, &a.card).contains("cut short"));
        let mut t = good.clone();
        t.bundles.pop();
        assert!(fails(&t, &a.card).contains("entries fetched"));
        // A checkpoint checked with the wrong key, altered, or malformed.
        assert!(!fails(&good, &b.card).is_empty());
        let mut t = good.clone();
        t.checkpoint = String::from_utf8(good.checkpoint.clone())
            .expect("utf8")
            .replacen("\n70000\n", "\n69999\n", 1)
            .into_bytes();
        assert!(fails(&t, &a.card).contains("signature"));
        let mut t = good.clone();
        t.checkpoint = b"fed/alpha\nnot a number\n".to_vec();
        assert!(!fails(&t, &a.card).is_empty());
    }

    fn served(id: &str, requester: &str, digest: &str, decision: &str) -> LogEntry {
        LogEntry::AccessServed {
            time: 0,
            request_id: id.into(),
            requester: requester.into(),
            dataset: "d".into(),
            decision: decision.into(),
            result_sha256: Some(digest.into()),
            groups_released: 1,
            request_note: String::new(),
        }
    }

    fn made(id: &str, owner: &str, digest: &str) -> LogEntry {
        LogEntry::AccessMade {
            time: 0,
            request_id: id.into(),
            owner: owner.into(),
            dataset: "d".into(),
            result_sha256: digest.into(),
            owner_log_index: 0,
            receipt: String::new(),
        }
    }

    #[test]
    fn reconciliation_finds_each_missing_or_different_twin() {
        let mut logs = BTreeMap::new();
        logs.insert(
            "alpha".to_owned(),
            vec![
                made("r1", "bravo", "d1"),
                made("r2", "bravo", "d2"),
                made("r3", "bravo", "d3"),
                made("r9", "zulu", "d9"),
            ],
        );
        logs.insert(
            "bravo".to_owned(),
            vec![
                served("r1", "alpha", "d1", "released"),
                served("r2", "alpha", "other", "released"),
                served("r4", "alpha", "d4", "released"),
                served("r5", "alpha", "", "refused:replayed_request"),
            ],
        );
        let found: Vec<(String, String)> =
            reconcile(&logs).into_iter().map(|m| (m.request_id, m.problem)).collect();
        let ids: Vec<&str> = found.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(ids, ["r2", "r3", "r4"], "{found:#?}");
        assert!(found[0].1.contains("another release"));
        assert!(found[1].1.contains("does not hold"));
        assert!(found[2].1.contains("released data to alpha"));
    }
}
