//! Printing what a node answered: query results, audits, policy tests.

use std::io::Write as _;

use anyhow::{Context as _, Result, bail};
use arrow::array::{Array, RecordBatch};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::ValueEnum;
use concord_node::wire::{AuditResponse, PolicyTest, QueryResponse};

/// How a result is printed.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// RFC 4180 fields, LF line ends, a header row; NULL as an empty field.
    Csv,
    /// An array of objects, one per row.
    Json,
}

/// Prints a query's answer in `format`; with `provenance`, what each member contributed.
pub fn query(answer: &QueryResponse, format: Format, provenance: bool) -> Result<()> {
    let ipc = B64.decode(&answer.arrow_ipc).context("the node's answer holds no valid Arrow data")?;
    let (schema, batches) = concord_query::ipc::decode(&ipc)?;
    for d in &answer.left_out {
        eprintln!("left out: {d}: its owner does not release it to this member");
    }
    if !answer.missing.is_empty() {
        eprintln!("partial result: {} could not be reached and are left out", answer.missing.join(", "));
    }
    let mut out = std::io::stdout().lock();
    match format {
        Format::Csv => {
            write_csv(&mut out, &schema, &batches)?;
            if provenance {
                csv_provenance(&answer.provenance)?;
            }
        }
        Format::Json => {
            writeln!(out, "{}", serde_json::to_string_pretty(&json(answer, &batches, provenance)?)?)?
        }
        Format::Table => {
            let shown =
                if batches.is_empty() { vec![RecordBatch::new_empty(schema.clone())] } else { batches };
            writeln!(out, "{}", arrow::util::pretty::pretty_format_batches(&shown)?)?;
            if provenance {
                table_provenance(&mut out, &answer.provenance)?;
            }
        }
    }
    Ok(())
}

/// `--format csv --provenance`: one CSV line per contribution, on stderr.
fn csv_provenance(provenance: &[concord_query::Contribution]) -> Result<()> {
    let mut err = std::io::stderr().lock();
    writeln!(err, "member,dataset,rows_scanned,groups_released,receipt_digest")?;
    for c in provenance {
        writeln!(
            err,
            "{},{},{},{},{}",
            c.member,
            c.dataset,
            c.rows_scanned.map_or_else(|| "withheld".to_owned(), |n| n.to_string()),
            c.groups_released,
            c.receipt_digest.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}

/// `--format json`: the rows, with `--provenance` beside what each member contributed.
fn json(answer: &QueryResponse, batches: &[RecordBatch], provenance: bool) -> Result<serde_json::Value> {
    let rows = json_rows(batches)?;
    if !provenance {
        return Ok(rows);
    }
    #[derive(serde::Serialize)]
    struct WithProvenance<'a> {
        rows: serde_json::Value,
        provenance: &'a [concord_query::Contribution],
        missing: &'a [String],
        left_out: &'a [String],
    }
    Ok(serde_json::to_value(WithProvenance {
        rows,
        provenance: &answer.provenance,
        missing: &answer.missing,
        left_out: &answer.left_out,
    })?)
}

/// `--provenance` under a table: one line per member, then what its release rules did.
fn table_provenance(out: &mut impl std::io::Write, provenance: &[concord_query::Contribution]) -> Result<()> {
    writeln!(out, "\nprovenance:")?;
    writeln!(out, "  {:<12} {:<20} {:>12} {:>8}  receipt", "member", "dataset", "rows", "groups")?;
    for c in provenance {
        writeln!(
            out,
            "  {:<12} {:<20} {:>12} {:>8}  {}",
            c.member,
            c.dataset,
            c.rows_scanned.map_or_else(|| "withheld".to_owned(), |n| n.to_string()),
            c.groups_released,
            c.receipt_digest.as_deref().unwrap_or("(own data, nothing crossed a border)")
        )?;
        for n in release_notes(&c.release) {
            writeln!(out, "  {:<12} {n}", "")?;
        }
    }
    Ok(())
}

/// What an owner's release rules did, in words: groups held back, noise, guarantee, budget,
/// grant.
fn release_notes(r: &concord_query::release::ReleaseReport) -> Vec<String> {
    let mut notes = Vec::new();
    if r.rows_from_statistics {
        notes.push(
            "no row was read: DataFusion answered from the file's statistics (rows: as the dataset holds them)"
                .to_string(),
        );
    }
    if let Some(note) = groups_note(r) {
        notes.push(note);
    }
    if r.small_cells_left_out {
        notes.push(
            "values leave out any cell of a group (rows by FILTER clause and non-NULL argument) under the minimum group size"
                .to_owned(),
        );
    }
    if let Some(m) = &r.mechanism {
        let scales: Vec<String> = r.noise_scale.iter().map(|(col, s)| format!("{col} ±{s:.2}")).collect();
        notes.push(format!("{m} noise, scale {}", scales.join(", ")));
    }
    if let Some(g) = &r.guarantee {
        notes.push(format!("this release is ({:.4}, {:e})-differentially private", g.epsilon, g.delta));
    }
    if let Some(b) = &r.budget {
        notes.push(format!(
            "budget {} {} spent, {} left for you, {} for all",
            b.parameter, b.charged, b.requester_remaining, b.dataset_remaining
        ));
    }
    if let Some(g) = &r.grant {
        notes.push(format!("under grant {g}"));
    }
    notes
}

/// What the release rules did to groups, in words, if anything: noisy threshold, public keys, held back.
fn groups_note(r: &concord_query::release::ReleaseReport) -> Option<String> {
    match (&r.mechanism, r.threshold) {
        (Some(_), Some(t)) => Some(format!(
            "groups released where their noisy count of distinct people reaches {t} (minimum group size {}, \
             delta {:e}); groups held back not counted",
            r.min_group_size.map(|k| k.to_string()).unwrap_or_else(|| "none".into()),
            r.delta.unwrap_or(0.0)
        )),
        (Some(_), None) if r.public_keys => {
            Some("every public key released with noise, zeros included".to_owned())
        }
        (Some(_), None) => None,
        (None, _) if r.suppressed_not_counted => Some(format!(
            "groups under the minimum group size ({}) held back, not counted (the group columns have no \
             public key set)",
            r.min_group_size.map(|k| k.to_string()).unwrap_or_else(|| "none".into())
        )),
        (None, _) if r.groups_suppressed > 0 || r.min_group_size.is_some() => Some(format!(
            "{} suppressed (minimum group size {})",
            crate::out::plural(r.groups_suppressed, "group", "groups"),
            r.min_group_size.map(|k| k.to_string()).unwrap_or_else(|| "none".into())
        )),
        (None, _) => None,
    }
}

/// RFC 4180 but for its line ends: a header row, LF line ends (as psql and DuckDB write, so
/// that `sed`, `awk` and shell comparisons work), fields quoted when they hold a comma, quote or line
/// break, quotes doubled, NULL as an empty field.
fn write_csv(
    out: &mut impl std::io::Write,
    schema: &arrow::datatypes::Schema,
    batches: &[RecordBatch],
) -> Result<()> {
    let header: Vec<String> = schema.fields().iter().map(|f| csv_field(f.name())).collect();
    writeln!(out, "{}", header.join(","))?;
    let opts = FormatOptions::default();
    for b in batches {
        let fmts = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<Result<Vec<_>, _>>()?;
        for r in 0..b.num_rows() {
            let row: Vec<String> = b
                .columns()
                .iter()
                .zip(&fmts)
                .map(|(c, f)| if c.is_null(r) { String::new() } else { csv_field(&f.value(r).to_string()) })
                .collect();
            writeln!(out, "{}", row.join(","))?;
        }
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

fn json_rows(batches: &[RecordBatch]) -> Result<serde_json::Value> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::JsonArray>(&mut buf);
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    if buf.is_empty() {
        return Ok(serde_json::Value::Array(vec![]));
    }
    Ok(serde_json::from_slice(&buf)?)
}

/// `concord audit`'s report; an error if anything failed.
pub fn audit(v: &AuditResponse, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v.report)?)?;
    } else {
        let r = &v.report;
        for m in &r.members {
            writeln!(
                out,
                "{:<12} {} entries, root {}, cosigned by [{}] (quorum {}){}",
                m.member,
                m.size,
                &m.root[..m.root.len().min(16)],
                m.cosigners.join(", "),
                m.witness_quorum,
                if m.problems.is_empty() {
                    "  ok".to_owned()
                } else {
                    format!("\n  FAILED: {}", m.problems.join("\n  FAILED: "))
                }
            )?;
        }
        for x in &r.mismatches {
            writeln!(out, "MISSING TWIN request {}: {}", x.request_id, x.problem)?;
        }
        for x in &r.unreceived {
            writeln!(out, "not received by its requester: request {}: {}", x.request_id, x.problem)?;
        }
        for x in &r.evidence {
            writeln!(out, "EVIDENCE {}: {}", x.origin, x.detail)?;
        }
        for x in &r.notes_problems {
            writeln!(out, "NOTES {x}")?;
        }
        writeln!(out, "notes of accesses checked against their commitments: {}", r.notes_checked)?;
        writeln!(out, "{}", if v.ok { "audit passed" } else { "audit FAILED" })?;
    }
    if !v.ok {
        bail!("the audit found problems");
    }
    Ok(())
}

/// `policy test` as text: one block per sub-query, one line per rule.
pub fn explain_policy_test(report: &PolicyTest) -> String {
    let mut s = format!(
        "policy test: {} asks {} for purpose {:?}\n",
        report.requester, report.dataset, report.purpose
    );
    for q in &report.subqueries {
        s.push_str(&format!("\nsub-query: {}\n", q.sql));
        let access = q.access.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string);
        s.push_str(&format!("  action {}: {access}\n", q.action.map_or("-", |a| a.as_str())));
        for l in &q.lines {
            s.push_str(&format!("  {l}\n"));
        }
        if let Some(b) = &q.budget_left {
            s.push_str(&format!("  budget left: {b}\n"));
        }
        s.push_str(&format!("  => {}\n", q.verdict));
    }
    s
}
