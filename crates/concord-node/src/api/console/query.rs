//! The query page: an editor, the result as a table and a chart, its provenance, and a CSV
//! download of exactly the result shown (kept in the session, so a download runs nothing
//! again and spends no budget).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};

use super::session::{self, Authed, StoredResult};
use super::{Console, chart, page};
use crate::NodeError;
use crate::wire::{ErrorCode, Role};
use concord_query::federate::QueryOutcome;

/// Rows a result page shows; the CSV holds them all.
const ROWS_SHOWN: usize = 500;

#[derive(serde::Deserialize, Default)]
pub struct QueryForm {
    #[serde(default)]
    sql: String,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    partial: Option<String>,
}

pub async fn form(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let who = match session::viewer(&c, &headers, &[Role::Analyst]) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let tables = c.node.tables().await;
    let body = html! {
        (editor(&who, &QueryForm::default()))
        (tables_list(&tables))
    };
    Html(page(&who, "Query", body).into_string()).into_response()
}

fn editor(who: &Authed, form: &QueryForm) -> Markup {
    let purpose = if form.purpose.trim().is_empty() { "analysis" } else { form.purpose.trim() };
    html! {
        form.query method="post" action="/console/query" {
            input type="hidden" name="csrf" value=(who.csrf);
            label for="sql" { "SQL" }
            textarea #sql name="sql" rows="6" spellcheck="false" required
                placeholder="SELECT region, count(*) AS cases FROM health_cases GROUP BY region ORDER BY region" { (form.sql) }
            div.row {
                label for="purpose" { "Purpose" }
                input #purpose type="text" name="purpose" value=(purpose);
                label.check {
                    input type="checkbox" name="partial" value="on" checked[form.partial.is_some()];
                    " a partial result when a member cannot answer"
                }
                button type="submit" { "Run" }
            }
        }
    }
}

fn tables_list(tables: &Result<crate::wire::TableList, NodeError>) -> Markup {
    html! {
        details.tables {
            summary { "Tables you may query" }
            @match tables {
                Ok(list) => {
                    ul {
                        @for t in &list.tables {
                            li { code { (t.name) } " — " (t.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")) }
                        }
                    }
                    @for w in &list.warnings { p.warning { (w) } }
                }
                Err(e) => p.warning { "The tables cannot be listed: " (e.to_string()) }
            }
        }
    }
}

pub async fn run(State(c): State<Arc<Console>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let (who, form) = match session::posted::<QueryForm>(&c, &headers, &body, &[Role::Analyst]) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let purpose = form.purpose.trim();
    let outcome = if purpose.contains(['\n', '\r']) || purpose.is_empty() {
        Err(NodeError::BadRequest("purpose must be one line of text, for example analysis".into()))
    } else {
        c.node.query(&form.sql, purpose, form.partial.is_some()).await
    };
    c.node.metrics.query_made(outcome.as_ref().err().map(|e| e.code().as_str()));
    let (status, result) = match outcome {
        Ok(out) => {
            tracing::info!(
                rows = out.batches.iter().map(|b| b.num_rows()).sum::<usize>(),
                "console query answered"
            );
            (StatusCode::OK, answer(&c, &who, out))
        }
        Err(e) => {
            tracing::info!(code = e.code().as_str(), "console query failed");
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, refusal(&e))
        }
    };
    let body = html! { (editor(&who, &form)) section.result { (result) } };
    (status, Html(page(&who, "Query", body).into_string())).into_response()
}

/// A refusal or an error in words: what happened and what to do.
fn refusal(e: &NodeError) -> Markup {
    let what = match e.code() {
        ErrorCode::PolicyRefused | ErrorCode::SubqueryRefused => "An owner's policy refused this query.",
        ErrorCode::QueryRefused => "Concord refuses to run this query across members.",
        ErrorCode::InvalidQuery | ErrorCode::BadRequest => "The query cannot be run as written.",
        ErrorCode::PeerError => "A member's node could not answer.",
        _ => "The query did not run.",
    };
    html! {
        div.refusal role="alert" {
            p { strong { (what) } }
            p { (e.to_string()) }
            p.hint { "Code: " code { (e.code().as_str()) } }
        }
    }
}

fn answer(c: &Console, who: &Authed, out: QueryOutcome) -> Markup {
    let rows: usize = out.batches.iter().map(|b| b.num_rows()).sum();
    let bytes: usize = out.batches.iter().map(|b| b.get_array_memory_size()).sum();
    let plan = chart::plan(&out.schema);
    let stored = Arc::new(StoredResult { schema: out.schema.clone(), batches: out.batches.clone() });
    let kept = c.sessions.keep_result(&who.session, stored, bytes);
    html! {
        @for m in &out.missing { p.warning { "Left out: " (m) } }
        @for m in &out.left_out { p.warning { "Left out: " (m) } }
        p { (rows) @if rows == 1 { " row" } @else { " rows" }
            @if let Some(id) = &kept { " · " a.download href={"/console/results/" (id) "/result.csv"} download="result.csv" { "Download CSV" } }
            @else { " · the result is too large to keep for a download (over 64 MiB); narrow the query" }
        }
        @match (&plan, &kept) {
            (Ok(kind), Some(id)) => figure.chart {
                img src={"/console/results/" (id) "/chart.svg"} alt={(kind.describe())};
                figcaption { (kind.describe()) }
            },
            (Err(why), _) => p.hint { "No chart: " (why) },
            _ => {},
        }
        (table(&out.schema, &out.batches))
        @if rows > ROWS_SHOWN {
            p.warning { "The first " (ROWS_SHOWN) " of " (rows) " rows are shown"
                @if kept.is_some() { "; the CSV holds them all." } @else { "; narrow the query to see the rest." } }
        }
        (provenance(&out.provenance))
    }
}

fn table(schema: &SchemaRef, batches: &[RecordBatch]) -> Markup {
    let opts = FormatOptions::default().with_null("NULL");
    let mut rows: Vec<Vec<String>> = Vec::new();
    'batches: for b in batches {
        let formatters: Vec<_> =
            b.columns().iter().map(|a| ArrayFormatter::try_new(a.as_ref(), &opts)).collect();
        for row in 0..b.num_rows() {
            if rows.len() >= ROWS_SHOWN {
                break 'batches;
            }
            rows.push(
                formatters
                    .iter()
                    .map(|f| match f {
                        Ok(f) => f.value(row).to_string(),
                        Err(e) => e.to_string(),
                    })
                    .collect(),
            );
        }
    }
    html! {
        div.scroll { table.result {
            thead { tr { @for f in schema.fields() { th { (f.name()) } } } }
            tbody { @for r in &rows { tr { @for v in r { td { (v) } } } } }
        } }
    }
}

fn provenance(list: &[concord_query::Contribution]) -> Markup {
    html! {
        h2 { "Provenance" }
        table.provenance {
            thead { tr { th { "Member" } th { "Dataset" } th { "Rows read" } th { "Groups released" } th { "Held back" } th { "Noise" } th { "Budget spent" } th { "Budget left (you / all)" } th { "Rule" } } }
            tbody {
                @for p in list {
                    @let r = &p.release;
                    tr {
                        td { (p.member) }
                        td { (p.dataset) }
                        td { @match p.rows_scanned { Some(n) => (n), None => "not told (under differential privacy)" } }
                        td { (p.groups_released) }
                        td { @if r.suppressed_not_counted { "not counted (under differential privacy)" } @else { (r.groups_suppressed) }
                             @if let Some(m) = r.min_group_size { " (groups under " (m) ")" } }
                        td { @match &r.mechanism {
                                Some(m) => { (m) ": " (r.noise_scale.iter().map(|(c, s)| format!("{c} ±{s:.2}")).collect::<Vec<_>>().join(", ")) }
                                None => "none" } }
                        td { @match &r.budget { Some(b) => { (b.parameter) " " (b.charged) }, None => "—" } }
                        td { @match &r.budget { Some(b) => { (b.requester_remaining) " / " (b.dataset_remaining) }, None => "—" } }
                        td { (r.rule.as_deref().unwrap_or("—")) @if let Some(g) = &r.grant { " (grant " (g) ")" } }
                    }
                }
            }
        }
    }
}

/// A kept result, if this request's session kept it.
fn kept(c: &Console, headers: &HeaderMap, id: &str) -> Result<Arc<StoredResult>, session::Denied> {
    let who = session::viewer(c, headers, &[Role::Analyst])?;
    c.sessions.result(&who.session, id).ok_or_else(session::not_found)
}

pub async fn csv(State(c): State<Arc<Console>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let r = match kept(&c, &headers, &id) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    // Writing a large result is CPU work: off the async workers.
    let written = tokio::task::spawn_blocking(move || csv_bytes(&r)).await;
    match written {
        Ok(Ok(out)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8")),
                (
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_static("attachment; filename=\"result.csv\""),
                ),
            ],
            out,
        )
            .into_response(),
        Ok(Err(e)) => super::error_page(None, &NodeError::Arrow(e)),
        Err(e) => super::error_page(None, &NodeError::Task(e)),
    }
}

/// The result as CSV with a header line, exactly as kept (the CLI's CSV too).
fn csv_bytes(r: &StoredResult) -> Result<Vec<u8>, arrow::error::ArrowError> {
    if r.batches.is_empty() {
        let names: Vec<&str> = r.schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Ok(format!("{}\n", names.join(",")).into_bytes());
    }
    let mut out = Vec::new();
    let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
    r.batches.iter().try_for_each(|b| w.write(b))?;
    drop(w);
    Ok(out)
}

pub async fn chart(State(c): State<Arc<Console>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let r = match kept(&c, &headers, &id) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    match tokio::task::spawn_blocking(move || chart::svg(&r.schema, &r.batches)).await {
        Ok(Ok(svg)) => chart::response(svg),
        Ok(Err(why)) => (StatusCode::UNPROCESSABLE_ENTITY, why).into_response(),
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("the chart could not be drawn: {e}")).into_response()
        }
    }
}
