//! The demo's scripted tour (`concord demo --smoke`): federated answers compared with the same
//! SQL over the pooled data (within the reported noise where owners add it), a refused query, a
//! forged peer request refused, a replayed one answered with the same release.

use concord_log::NoteSigner;
use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;

use crate::demo::{ApiResult, Demo, DemoMember, api_query, data_queries, pooled_context, sample_queries};
use concord_node::net::protocol::{QueryRequest, new_request_id};
use concord_node::net::tls::TlsKeys;
use concord_node::store::config::NodeDir;
use concord_node::wire::ErrorCode;
use concord_node::{NodeError, PeerFailure};

/// One step of the tour and how it went.
#[derive(Debug)]
pub struct Step {
    /// What the step checks, e.g. the SQL compared with the pooled data.
    pub name: String,
    /// `Ok` with what was seen, or `Err` with why the step failed.
    pub outcome: Result<String, String>,
}

pub use concord_query::compare::compare;

/// Runs the tour against a launched demo.
pub async fn tour(demo: &Demo, sample: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    let Some(first) = demo.file.members.first() else {
        return vec![Step { name: "members".into(), outcome: Err("the demo has no members".into()) }];
    };
    let queries: Vec<String> = if sample {
        sample_queries().into_iter().map(String::from).collect()
    } else {
        data_queries(&demo.schemas)
    };
    let pooled = pooled_context(&demo.specs, &demo.schemas).await;
    for sql in &queries {
        let outcome = federated_equals_pooled(first, &pooled, sql).await;
        steps.push(Step { name: format!("federated = pooled: {sql}"), outcome });
    }
    let table = demo.schemas.first().map(|s| s.name.clone()).unwrap_or_else(|| "health_cases".into());
    let raw = format!("SELECT * FROM {table}");
    let outcome = match api_query(&first.local_url, &first.analyst_token, &raw).await {
        Err(NodeError::Peer { code: PeerFailure::Answered(ErrorCode::PolicyRefused), message, .. }) => {
            Ok(message)
        }
        Err(e) => Err(format!("refused for the wrong reason: {e}")),
        Ok(_) => Err("raw rows were returned".into()),
    };
    steps.push(Step { name: format!("refused: {raw}"), outcome });
    let bomb =
        format!("SELECT max(length(repeat(arrow_cast('x', 'LargeUtf8'), 1000000000000))) FROM {table}");
    let outcome = match api_query(&first.local_url, &first.analyst_token, &bomb).await {
        Err(NodeError::Peer { code: PeerFailure::Answered(ErrorCode::QueryRefused), message, .. }) => {
            Ok(message)
        }
        Err(e) => Err(format!("refused for the wrong reason: {e}")),
        Ok(_) => Err("the bomb ran".into()),
    };
    steps.push(Step { name: "a query bomb is refused naming the limit".into(), outcome });
    // Before the hand-made requests below, which no requester's log holds.
    steps.push(Step { name: "audit of every member passes".into(), outcome: audit_all(first).await });
    if demo.file.members.len() > 1 {
        steps.push(Step { name: "forged peer request refused".into(), outcome: forged(demo, &table).await });
        steps.push(Step {
            name: "replayed peer request gets the same release, not a new one".into(),
            outcome: replayed(demo, &table).await,
        });
    }
    steps
}

/// Runs `sql` federated as `first`'s analyst and over the pooled data, and compares the answers:
/// exactly, or within the reported noise where owners add it.
async fn federated_equals_pooled(
    first: &DemoMember,
    pooled: &Result<SessionContext, NodeError>,
    sql: &str,
) -> Result<String, String> {
    let pooled = pooled.as_ref().map_err(|e| e.to_string())?;
    let fed = api_query(&first.local_url, &first.analyst_token, sql).await.map_err(|e| e.to_string())?;
    let p = pooled.sql(sql).await.map_err(|e| e.to_string())?.collect().await.map_err(|e| e.to_string())?;
    let members = fed.provenance.iter().map(|c| c.member.as_str()).collect::<Vec<_>>().join(",");
    let noisy =
        fed.provenance.iter().any(|c| c.release.mechanism.is_some() || c.release.groups_suppressed > 0);
    if !noisy {
        let rows = compare(&fed.batches, &p)?;
        return Ok(format!("{rows} rows, same as pooled; contributed by {members}"));
    }
    within_noise(&fed, &p, &members)
}

/// Compares a federated answer with owners' noise or suppression against the pooled answer `p`,
/// allowing for the noise and for suppressed groups.
fn within_noise(fed: &ApiResult, p: &[RecordBatch], members: &str) -> Result<String, String> {
    // Six standard deviations of the members' largest noise, added up: a false alarm
    // has a chance under 1e-8 per value.
    let variance: f64 = fed
        .provenance
        .iter()
        .map(|c| c.release.noise_scale.iter().map(|(_, s)| *s).fold(0.0, f64::max).powi(2))
        .sum();
    let tolerance = 6.0 * variance.sqrt();
    // Groups held back under noisy selection are not counted: any number may be missing.
    let suppressed = if fed.provenance.iter().any(|c| c.release.suppressed_not_counted) {
        u64::MAX
    } else {
        fed.provenance.iter().map(|c| c.release.groups_suppressed).sum()
    };
    let rows = concord_query::compare::compare_noisy(&fed.batches, p, tolerance, suppressed)?;
    Ok(format!(
        "{rows} rows within the noise (±{tolerance:.1}) of pooled, {} groups suppressed; contributed by {members}",
        if suppressed == u64::MAX { "an uncounted number of".to_owned() } else { suppressed.to_string() }
    ))
}

/// Audits every member from `m`'s node until it passes (an access of the last second may not be
/// in both published checkpoints yet), for at most 30 seconds.
async fn audit_all(m: &DemoMember) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let client = concord_node::net::local::LocalClient::new(&m.local_url, &m.auditor_token);
    let all = concord_node::wire::AuditRequest { members: vec![], all: true };
    loop {
        let v = client.audit(&all).await.map_err(|e| e.to_string())?;
        if v.ok {
            return Ok(format!("{} logs verified and reconciled", v.report.members.len()));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "the audit did not pass: {}",
                serde_json::to_string(&v.report).unwrap_or_default()
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Sends `note` to member 1 over mutual TLS as member 0.
async fn send_as_first(demo: &Demo, body: Vec<u8>) -> Result<concord_node::net::client::Response, String> {
    let (a, b) = (&demo.file.members[0], &demo.file.members[1]);
    let nd = NodeDir::new(&a.dir);
    let keys = TlsKeys::load(&nd.tls_cert(), &nd.tls_key()).map_err(|e| e.to_string())?;
    let card = NodeDir::new(&b.dir).load_card().map_err(|e| e.to_string())?;
    concord_node::net::client::peer_call(
        &keys,
        &b.id,
        &card.peer_endpoint,
        &card.tls_pin,
        "POST",
        "/v1/query",
        body,
    )
    .await
    .map_err(|e| e.to_string())
}

fn request(demo: &Demo, table: &str) -> Result<QueryRequest, String> {
    let (a, b) = (&demo.file.members[0], &demo.file.members[1]);
    Ok(QueryRequest {
        federation: demo.file.federation.clone(),
        request_id: new_request_id(),
        requester: a.id.clone(),
        owner: b.id.clone(),
        charter_version: 1,
        time: chrono::Utc::now().timestamp(),
        dataset: table.to_owned(),
        purpose: "smoke test".into(),
        sql: format!("SELECT count(1) AS p0 FROM {table}"),
    })
}

async fn forged(demo: &Demo, table: &str) -> Result<String, String> {
    let a = &demo.file.members[0];
    let impostor =
        NoteSigner::generate(&format!("{}/{}", demo.file.federation, a.id)).map_err(|e| e.to_string())?;
    let note = request(demo, table)?.sign(&impostor).map_err(|e| e.to_string())?;
    let resp = send_as_first(demo, note.to_bytes()).await?;
    let (code, message) = resp.error_parts();
    if resp.status == 401 && code == "bad_signature" {
        Ok(message)
    } else {
        Err(format!("expected 401 bad_signature, got {} {code}: {message}", resp.status))
    }
}

async fn replayed(demo: &Demo, table: &str) -> Result<String, String> {
    let a = &demo.file.members[0];
    let nd = NodeDir::new(&a.dir);
    let cfg = nd.load_config().map_err(|e| e.to_string())?;
    let signer = nd.load_signer(&cfg).map_err(|e| e.to_string())?;
    let note = request(demo, table)?.sign(&signer).map_err(|e| e.to_string())?;
    let first = send_as_first(demo, note.to_bytes()).await?;
    if first.status != 200 {
        let (code, message) = first.error_parts();
        return Err(format!("the genuine request failed: {code}: {message}"));
    }
    let again = send_as_first(demo, note.to_bytes()).await?;
    let receipt = |r: &concord_node::net::client::Response| {
        r.headers.get(concord_node::node::requester::RECEIPT_HEADER).map(|v| v.as_bytes().to_vec())
    };
    if again.status == 200 && again.body == first.body && receipt(&again) == receipt(&first) {
        Ok("the replay got the first release's bytes and receipt again".into())
    } else {
        let (code, message) = again.error_parts();
        Err(format!("expected the same release, got {} {code}: {message}", again.status))
    }
}
