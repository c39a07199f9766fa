//! Witnessing per C2SP tlog-witness: the `add-checkpoint` endpoint each node serves for the
//! other members' logs, and the loop that checkpoints this node's own log and has it cosigned.
//!
//! Invariant: a witness cosigns a checkpoint only after checking it against the last one it
//! cosigned for that origin, in one transaction with updating that record.
//! Invariant: a witness that is down delays publication of a checkpoint, never an append.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use concord_log::checkpoint::Checkpoint;
use concord_log::{LogError, Note};
use tokio::sync::watch;

use crate::NodeError;
use crate::node::Node;
use crate::store::entry::LogEntry;
use crate::store::tlog::WitnessDecision;

/// Largest checkpoint note a witness takes (a checkpoint is three lines, a few extensions and
/// signatures).
pub const MAX_CHECKPOINT_BYTES: usize = 8 * 1024;

/// How long the node waits after an append for more to come, before checkpointing.
pub const COALESCE: Duration = Duration::from_millis(20);
/// The least time from one checkpoint round's start to the next: under a steady stream of
/// appends (queries back to back), one checkpoint, its signature and each witness's proof and
/// cosignature cover all that came in this time, instead of a round every few queries competing
/// with them for the cores.
pub const MIN_ROUND_INTERVAL: Duration = Duration::from_millis(100);
/// How often the node looks again when no append woke it: entries appended by other processes
/// (offline commands) and witnesses that were down.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// An add-checkpoint answer: status, content type, body.
pub struct WitnessAnswer {
    /// The HTTP status: 200 with a cosignature, 409 with the size the witness holds, 4xx why not.
    pub status: u16,
    /// The HTTP content type of `body`.
    pub content_type: &'static str,
    /// The cosignature line, the size the witness holds, or why it refused.
    pub body: String,
}

fn answer(status: u16, body: impl Into<String>) -> WitnessAnswer {
    WitnessAnswer { status, content_type: "text/plain; charset=utf-8", body: body.into() }
}

/// An add-checkpoint request: old size, consistency proof, checkpoint note bytes.
#[derive(Debug)]
pub struct AddCheckpoint<'a> {
    /// The size of the checkpoint the log's owner believes the witness cosigned last; the proof
    /// starts there.
    pub old: u64,
    /// The consistency proof from `old` to the checkpoint's size: at most 63 hashes of 32 bytes.
    pub proof: Vec<Vec<u8>>,
    /// The signed checkpoint note, not yet parsed.
    pub checkpoint: &'a [u8],
}

/// Parses `old N\n<proof lines>\n\n<checkpoint>`.
pub fn parse_request(body: &[u8]) -> Result<AddCheckpoint<'_>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "body is not UTF-8".to_owned())?;
    let (head, checkpoint) = text.split_once("\n\n").ok_or("no empty line before the checkpoint")?;
    let mut lines = head.split('\n');
    let old = lines
        .next()
        .and_then(|l| l.strip_prefix("old "))
        .filter(|n| {
            !n.is_empty() && (n == &"0" || !n.starts_with('0')) && n.bytes().all(|b| b.is_ascii_digit())
        })
        .and_then(|n| n.parse().ok())
        .ok_or("the first line must be `old <size>`")?;
    let proof = lines
        .take(64)
        .map(|l| B64.decode(l).ok().filter(|h| h.len() == 32).ok_or("a proof line is not a base64 hash"))
        .collect::<Result<Vec<_>, _>>()?;
    if proof.len() > 63 {
        return Err("more than 63 proof lines".into());
    }
    Ok(AddCheckpoint { old, proof, checkpoint: checkpoint.as_bytes() })
}

/// The witness's side of `POST add-checkpoint`.
pub async fn add_checkpoint(node: &Node, body: &[u8]) -> Result<WitnessAnswer, NodeError> {
    let (old, proof, note, cp) = match parse_checkpoint(body) {
        Ok(p) => p,
        Err(refusal) => return Ok(refusal),
    };
    let charter = node.charter();
    let Some(owner) = charter
        .charter
        .members
        .iter()
        .filter(|m| m.id != node.cfg.member)
        .find(|m| m.log_origin().is_ok_and(|o| o == cp.origin))
    else {
        return Ok(answer(404, format!("this node does not witness origin {}\n", cp.origin)));
    };
    // Deny by default: only the logs the charter gives this node to witness, so that no member
    // can make every other one do its witnessing.
    if !charter.charter.is_witness_of(&node.cfg.member, &owner.id) {
        return Ok(answer(
            404,
            format!(
                "this node does not witness origin {} under charter version {}: its witnesses are the {} members after it\n",
                cp.origin,
                charter.charter.version,
                charter.charter.witnesses_of_each_log()
            ),
        ));
    }
    match note.verify(std::slice::from_ref(&owner.verifier()?)) {
        Ok(_) => {}
        Err(LogError::NoKnownSignature | LogError::BadSignature(_)) => {
            return Ok(answer(403, format!("the checkpoint is not validly signed by {}\n", cp.origin)));
        }
        Err(e) => return Ok(answer(400, format!("{e}\n"))),
    }
    if old > cp.size {
        return Ok(answer(400, format!("old size {old} is larger than the checkpoint size {}\n", cp.size)));
    }
    let (log, origin, bytes, checked) = (node.log.clone(), cp.origin.clone(), note.to_bytes(), cp.clone());
    let decision =
        tokio::task::spawn_blocking(move || log.witness_update(&origin, old, &proof, &checked, &bytes))
            .await??;
    answer_decision(node, decision, &note, &cp).await
}

/// An add-checkpoint request's old size, consistency proof, checkpoint note and checkpoint.
type CheckpointToAdd = (u64, Vec<Vec<u8>>, Note, Checkpoint);

/// An add-checkpoint request, parsed, or the answer that refuses a malformed one.
fn parse_checkpoint(body: &[u8]) -> Result<CheckpointToAdd, WitnessAnswer> {
    let AddCheckpoint { old, proof, checkpoint: cp_bytes } = match parse_request(body) {
        Ok(p) => p,
        Err(why) => return Err(answer(400, format!("malformed add-checkpoint request: {why}\n"))),
    };
    if cp_bytes.len() > MAX_CHECKPOINT_BYTES {
        return Err(answer(
            400,
            format!("a checkpoint of more than {MAX_CHECKPOINT_BYTES} bytes is not accepted\n"),
        ));
    }
    let note = match Note::parse(cp_bytes) {
        Ok(n) => n,
        Err(e) => return Err(answer(400, format!("{e}\n"))),
    };
    let cp = match Checkpoint::from_text(note.text()) {
        Ok(c) => c,
        Err(e) if note.text().lines().nth(1) == Some("0") => return Err(answer(422, format!("{e}\n"))),
        Err(e) => return Err(answer(400, format!("{e}\n"))),
    };
    Ok((old, proof, note, cp))
}

/// The witness's answer to what checking a checkpoint against the last one it cosigned
/// decided: a cosignature, the size it holds, or why not (a fork is logged as evidence).
async fn answer_decision(
    node: &Node,
    decision: WitnessDecision,
    note: &Note,
    cp: &Checkpoint,
) -> Result<WitnessAnswer, NodeError> {
    match decision {
        WitnessDecision::Conflict(size) => {
            Ok(WitnessAnswer { status: 409, content_type: "text/x.tlog.size", body: format!("{size}\n") })
        }
        WitnessDecision::Fork(detail) => {
            tracing::warn!(origin = %cp.origin, "fork kept as evidence: {detail}");
            let entry = LogEntry::ForkEvidence {
                time: crate::store::entry::now(),
                origin: cp.origin.clone(),
                detail: detail.clone(),
                checkpoints: vec![crate::store::entry::sha256(&note.to_bytes())],
            };
            node.log.append(entry.to_bytes()?).await?;
            Ok(answer(422, format!("inconsistent with the last cosigned checkpoint: {detail}\n")))
        }
        WitnessDecision::BadProof(detail) => {
            Ok(answer(422, format!("the consistency proof does not verify: {detail}\n")))
        }
        WitnessDecision::Cosign => {
            let sig = node.keys().witness.cosign(note.text(), chrono::Utc::now().timestamp().max(1) as u64);
            let mut n = Note::new(note.text())?;
            n.add_signature(sig);
            let text = n.to_string();
            let line = text.rsplit_once("\n\n").map(|(_, l)| l.to_owned()).unwrap_or_default();
            Ok(WitnessAnswer { status: 200, content_type: "text/plain; charset=utf-8", body: line })
        }
    }
}

/// How often counted refusals are written to the log as one entry.
pub const REFUSALS_INTERVAL: Duration = Duration::from_secs(60);

/// Checkpoints new entries within a second and gets them cosigned, until shutdown; writes the
/// counted refusals to the log once a minute.
pub async fn publish_loop(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let mut refusals_logged = tokio::time::Instant::now();
    loop {
        if refusals_logged.elapsed() >= REFUSALS_INTERVAL {
            refusals_logged = tokio::time::Instant::now();
            if let Err(e) = log_refusals(&node).await {
                tracing::warn!("logging counted refusals: {e}");
            }
        }
        let round = tokio::time::Instant::now();
        if let Err(e) = publish_once(&node).await {
            tracing::warn!("checkpointing: {e}");
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = node.log.appended() => {
                let next = (tokio::time::Instant::now() + COALESCE).max(round + MIN_ROUND_INTERVAL);
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep_until(next) => {}
                }
            }
            _ = tokio::time::sleep(RETRY_INTERVAL) => {}
        }
    }
}

/// Appends one entry with the refusals counted since the last one, if any.
pub async fn log_refusals(node: &Node) -> Result<(), NodeError> {
    let (since, stored) = node.state.refusal_counts()?;
    let mut counts = stored.clone();
    for (limiter, code) in [(&node.peer_rate, "rate_limited"), (&node.read_rate, "read_rate_limited")] {
        for (member, count) in limiter.take_refused() {
            counts.push(crate::store::entry::RefusalCount { member, code: code.into(), count });
        }
    }
    if counts.is_empty() {
        return Ok(());
    }
    let now = crate::store::entry::now();
    let since = if stored.is_empty() { now } else { since };
    let entry = LogEntry::RefusalsCounted { time: now, since, counts };
    node.log.append(entry.to_bytes()?).await?;
    node.state.forget_refusals(&stored)
}

/// One round: sign a checkpoint of new entries; ask this log's witnesses (the charter's
/// witness policy) to cosign the latest unpublished checkpoint; publish it once the quorum
/// cosigned.
pub async fn publish_once(node: &Node) -> Result<(), NodeError> {
    let (cp_size, mut note) = checkpoint_to_publish(node)?;
    if node.log.published_checkpoint()?.is_some_and(|(s, _)| s >= cp_size) {
        return Ok(());
    }
    let charter = node.charter();
    let quorum = charter.charter.witness_quorum;
    let witnesses = charter.charter.witnesses_of(&node.cfg.member);
    let mut cosigned = 0;
    let mut asked = futures::stream::FuturesUnordered::new();
    for w in witnesses {
        let verifier = w.witness_verifier()?;
        if verifier.verify(&note).ok().flatten().is_some() {
            cosigned += 1;
            continue;
        }
        // Every witness is asked at once, each within its own timeout: one that hangs delays
        // nobody, and the checkpoint is published as soon as the quorum has cosigned.
        let text = note.clone();
        asked.push(async move {
            let r = ask_witness_in_time(node, w, text, cp_size).await;
            (w, verifier, r)
        });
    }
    let mut published = cosigned >= quorum;
    if published {
        node.log.store_checkpoint(cp_size, &note, true)?;
    }
    while let Some((w, verifier, r)) = futures::StreamExt::next(&mut asked).await {
        if add_cosignatures(&mut note, w, &verifier, r) {
            cosigned += 1;
        }
        if !published && cosigned >= quorum {
            published = true;
            node.log.store_checkpoint(cp_size, &note, true)?;
            tracing::debug!(size = cp_size, cosigned, "checkpoint published");
        }
    }
    // Cosignatures that came after the quorum are kept too.
    node.log.store_checkpoint(cp_size, &note, published)?;
    Ok(())
}

/// The latest checkpoint, or if entries came after it, a new one of them signed and stored
/// (unpublished): its size and note.
fn checkpoint_to_publish(node: &Node) -> Result<(u64, Note), NodeError> {
    let size = node.log.size()?;
    let latest = node.log.latest_checkpoint()?;
    Ok(match latest {
        Some((s, n)) if s >= size => (s, n),
        _ => {
            let cp = Checkpoint {
                origin: format!("{}/{}", node.federation(), node.cfg.member),
                size,
                root: node.log.root(size)?,
                extensions: vec![],
            };
            let mut n = Note::new(cp.to_text())?;
            n.sign(&node.keys().signer);
            node.log.store_checkpoint(size, &n, false)?;
            (size, n)
        }
    })
}

/// Adds what witness `w` answered to `note`; true when its cosignature now verifies.
fn add_cosignatures(
    note: &mut Note,
    w: &concord_charter::MemberCard,
    verifier: &concord_log::checkpoint::CosignatureVerifier,
    r: Result<Vec<concord_log::NoteSignature>, NodeError>,
) -> bool {
    match r {
        Ok(sigs) => {
            for s in sigs {
                note.add_signature(s);
            }
            verifier.verify(note).ok().flatten().is_some()
        }
        Err(e) => {
            tracing::info!(witness = %w.id, "no cosignature yet: {e}");
            false
        }
    }
}

/// [`ask_witness`] within the witness timeout; a witness that does not answer in it is unreachable.
async fn ask_witness_in_time(
    node: &Node,
    w: &concord_charter::MemberCard,
    note: Note,
    size: u64,
) -> Result<Vec<concord_log::NoteSignature>, NodeError> {
    let timeout = Duration::from_secs(node.cfg.limits.witness_timeout_secs);
    match tokio::time::timeout(timeout, ask_witness(node, w, note, size)).await {
        Ok(r) => r,
        Err(_) => Err(NodeError::Peer {
            member: w.id.clone(),
            code: crate::PeerFailure::Unreachable,
            message: format!("no cosignature within {} s", timeout.as_secs()),
        }),
    }
}

/// Submits `note` (our checkpoint of `size`) to witness `w`; returns its cosignatures.
async fn ask_witness(
    node: &Node,
    w: &concord_charter::MemberCard,
    note: Note,
    size: u64,
) -> Result<Vec<concord_log::NoteSignature>, NodeError> {
    let mut old = node.log.witness_progress(&w.id)?;
    for _ in 0..2 {
        if old > size {
            return Err(NodeError::Peer {
                member: w.id.clone(),
                code: crate::PeerFailure::Rollback,
                message: format!("the witness has seen size {old}, beyond our {size}"),
            });
        }
        let body = add_checkpoint_body(node, old, size, &note)?;
        let resp = post_add_checkpoint(node, w, body).await?;
        match resp.status {
            200 => return take_cosignature(node, w, &note, &resp.body, size),
            409 => {
                old = String::from_utf8_lossy(&resp.body).trim().parse().map_err(|_| NodeError::Peer {
                    member: w.id.clone(),
                    code: crate::PeerFailure::BadConflict,
                    message: "a 409 answer without a size".into(),
                })?;
                node.log.set_witness_progress(&w.id, old)?;
            }
            status => {
                return Err(NodeError::Peer {
                    member: w.id.clone(),
                    code: crate::PeerFailure::Status(status),
                    message: String::from_utf8_lossy(&resp.body).trim().to_owned(),
                });
            }
        }
    }
    Err(NodeError::Peer {
        member: w.id.clone(),
        code: crate::PeerFailure::Conflict,
        message: "the witness's size kept moving".into(),
    })
}

/// Sends an add-checkpoint request to witness `w`, within the witness timeout and answer size.
async fn post_add_checkpoint(
    node: &Node,
    w: &concord_charter::MemberCard,
    body: String,
) -> Result<crate::net::client::Response, NodeError> {
    let budget = crate::net::client::Budget {
        timeout: Duration::from_secs(node.cfg.limits.witness_timeout_secs),
        max_bytes: MAX_CHECKPOINT_BYTES,
    };
    let keys = node.keys();
    crate::net::client::peer_call_with(
        &keys.tls,
        w,
        "POST",
        "/v1/witness/add-checkpoint",
        body.into_bytes(),
        budget,
    )
    .await
}

/// The body of an add-checkpoint request: `old`, the consistency proof from `old` to `size`,
/// and the checkpoint note.
fn add_checkpoint_body(node: &Node, old: u64, size: u64, note: &Note) -> Result<String, NodeError> {
    let proof = if old == 0 { vec![] } else { node.log.consistency_proof(old, size)? };
    let mut body = format!("old {old}\n");
    for h in &proof {
        body.push_str(&B64.encode(h));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(&note.to_string());
    Ok(body)
}

/// A witness's 200 answer: its cosignature line, which must verify on `note`; the witness's
/// progress then moves to `size`.
fn take_cosignature(
    node: &Node,
    w: &concord_charter::MemberCard,
    note: &Note,
    reply: &[u8],
    size: u64,
) -> Result<Vec<concord_log::NoteSignature>, NodeError> {
    let text = format!("{}\n{}", note.text(), String::from_utf8_lossy(reply));
    let cosigned = Note::parse(text.as_bytes())?;
    let verifier = w.witness_verifier()?;
    if verifier.verify(&cosigned)?.is_none() {
        return Err(NodeError::Peer {
            member: w.id.clone(),
            code: crate::PeerFailure::NoCosignature,
            message: "the witness answered without its cosignature".into(),
        });
    }
    let sigs = cosigned.signatures().iter().filter(|s| s.name == verifier.name()).cloned().collect();
    node.log.set_witness_progress(&w.id, size)?;
    Ok(sigs)
}
