//! `concord query`: send SQL to a node's local API and print the result.

use std::io::Write as _;

use anyhow::{Context as _, Result, bail};
use arrow::array::{Array, RecordBatch};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use concord_query::Contribution;
use serde::Deserialize;

#[derive(Deserialize)]
struct Answer {
    arrow_ipc: String,
    provenance: Vec<Contribution>,
    #[serde(default)]
    missing: Vec<String>,
    #[serde(default)]
    left_out: Vec<String>,
}

pub async fn query(
    node: &str,
    token: &str,
    sql: &str,
    purpose: &str,
    format: &str,
    provenance: bool,
    partial: bool,
) -> Result<()> {
    let body = serde_json::json!({ "sql": sql, "purpose": purpose, "partial": partial });
    let resp =
        concord_node::net::client::local_call(node, "POST", "/v1/query", Some(token), Some(&body)).await?;
    if resp.status != 200 {
        let (code, message) = resp.error_parts();
        bail!("{message} [{code}]");
    }
    let answer: Answer = serde_json::from_slice(&resp.body).context("the node's answer is malformed")?;
    let ipc = B64.decode(answer.arrow_ipc).context("the node's answer holds no valid Arrow data")?;
    let (schema, batches) = concord_query::ipc::decode(&ipc)?;
    for d in &answer.left_out {
        eprintln!("left out: {d}: its owner does not release it to this member");
    }
    if !answer.missing.is_empty() {
        eprintln!("partial result: {} could not be reached and are left out", answer.missing.join(", "));
    }
    let mut out = std::io::stdout().lock();
    match format {
        "csv" => {
            write_csv(&mut out, &schema, &batches)?;
            if provenance {
                let mut err = std::io::stderr().lock();
                writeln!(err, "member,dataset,rows_scanned,groups_released,receipt_digest")?;
                for c in &answer.provenance {
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
            }
        }
        "json" => {
            let rows = json_rows(&batches)?;
            let value = if provenance {
                serde_json::json!({ "rows": rows, "provenance": answer.provenance, "missing": answer.missing, "left_out": answer.left_out })
            } else {
                rows
            };
            writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        }
        _ => {
            if batches.is_empty() {
                let empty = RecordBatch::new_empty(schema.clone());
                writeln!(out, "{}", arrow::util::pretty::pretty_format_batches(&[empty])?)?;
            } else {
                writeln!(out, "{}", arrow::util::pretty::pretty_format_batches(&batches)?)?;
            }
            if provenance {
                writeln!(out, "\nprovenance:")?;
                writeln!(
                    out,
                    "  {:<12} {:<20} {:>12} {:>8}  receipt",
                    "member", "dataset", "rows", "groups"
                )?;
                for c in &answer.provenance {
                    writeln!(
                        out,
                        "  {:<12} {:<20} {:>12} {:>8}  {}",
                        c.member,
                        c.dataset,
                        c.rows_scanned.map_or_else(|| "withheld".to_owned(), |n| n.to_string()),
                        c.groups_released,
                        c.receipt_digest.as_deref().unwrap_or("(own data, nothing crossed a border)")
                    )?;
                    let r = &c.release;
                    let mut notes = Vec::new();
                    if r.rows_from_statistics {
                        notes.push(
                            "no row was read: DataFusion answered from the file's statistics (rows: as the dataset holds them)"
                                .to_string(),
                        );
                    }
                    match (&r.mechanism, r.threshold) {
                        (Some(_), Some(t)) => notes.push(format!(
                            "groups released where their noisy count of distinct people reaches {t} (minimum group size {}, \
                             delta {:e}); groups held back not counted",
                            r.min_group_size.map(|k| k.to_string()).unwrap_or_else(|| "none".into()),
                            r.delta.unwrap_or(0.0)
                        )),
                        (Some(_), None) if r.public_keys => {
                            notes.push("every public key released with noise, zeros included".to_owned())
                        }
                        (Some(_), None) => {}
                        (None, _) if r.suppressed_not_counted => notes.push(format!(
                            "groups under the minimum group size ({}) held back, not counted (the group columns have no \
                             public key set)",
                            r.min_group_size.map(|k| k.to_string()).unwrap_or_else(|| "none".into())
                        )),
                        (None, _) if r.groups_suppressed > 0 || r.min_group_size.is_some() => notes.push(format!(
                            "{} suppressed (minimum group size {})",
                            match r.groups_suppressed {
                                1 => "1 group".to_owned(),
                                n => format!("{n} groups"),
                            },
                            r.min_group_size.map(|k| k.to_string()).unwrap_or_else(|| "none".into())
                        )),
                        (None, _) => {}
                    }
                    if r.small_cells_left_out {
                        notes.push(
                            "values leave out any cell of a group (rows by FILTER clause and non-NULL argument) under the minimum group size"
                                .to_owned(),
                        );
                    }
                    if let Some(m) = &r.mechanism {
                        let scales: Vec<String> =
                            r.noise_scale.iter().map(|(col, s)| format!("{col} ±{s:.2}")).collect();
                        notes.push(format!("{m} noise, scale {}", scales.join(", ")));
                    }
                    if let Some(g) = &r.guarantee {
                        notes.push(format!(
                            "this release is ({:.4}, {:e})-differentially private",
                            g.epsilon, g.delta
                        ));
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
                    for n in notes {
                        writeln!(out, "  {:<12} {n}", "")?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// RFC 4180: header row, CRLF line ends, fields quoted when they hold a comma, quote or line
/// break, quotes doubled, NULL as an empty field.
fn write_csv(
    out: &mut impl std::io::Write,
    schema: &arrow::datatypes::Schema,
    batches: &[RecordBatch],
) -> Result<()> {
    let header: Vec<String> = schema.fields().iter().map(|f| csv_field(f.name())).collect();
    write!(out, "{}\r\n", header.join(","))?;
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
            write!(out, "{}\r\n", row.join(","))?;
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

/// `concord audit`: ask the node to audit and print its report; an error if anything failed.
pub async fn audit(node: &str, token: &str, member: Option<String>, all: bool, json: bool) -> Result<()> {
    let body = match member {
        Some(m) if !all => serde_json::json!({ "members": [m] }),
        _ => serde_json::json!({ "all": true }),
    };
    let resp =
        concord_node::net::client::local_call(node, "POST", "/v1/audit", Some(token), Some(&body)).await?;
    if resp.status != 200 {
        let (code, message) = resp.error_parts();
        bail!("{message} [{code}]");
    }
    let v: serde_json::Value =
        serde_json::from_slice(&resp.body).context("the node's answer is malformed")?;
    let ok = v["ok"].as_bool().unwrap_or(false);
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v["report"])?)?;
    } else {
        let r = &v["report"];
        for m in r["members"].as_array().into_iter().flatten() {
            let problems: Vec<&str> =
                m["problems"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).collect();
            let cosigners: Vec<&str> =
                m["cosigners"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).collect();
            writeln!(
                out,
                "{:<12} {} entries, root {}, cosigned by [{}] (quorum {}){}",
                m["member"].as_str().unwrap_or("?"),
                m["size"],
                m["root"].as_str().map(|s| &s[..s.len().min(16)]).unwrap_or(""),
                cosigners.join(", "),
                m["witness_quorum"],
                if problems.is_empty() {
                    "  ok".to_owned()
                } else {
                    format!("\n  FAILED: {}", problems.join("\n  FAILED: "))
                }
            )?;
        }
        for x in r["mismatches"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "MISSING TWIN request {}: {}",
                x["request_id"].as_str().unwrap_or("?"),
                x["problem"].as_str().unwrap_or("")
            )?;
        }
        for x in r["evidence"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "EVIDENCE {}: {}",
                x["origin"].as_str().unwrap_or("?"),
                x["detail"].as_str().unwrap_or("")
            )?;
        }
        writeln!(out, "{}", if ok { "audit passed" } else { "audit FAILED" })?;
    }
    if !ok {
        bail!("the audit found problems");
    }
    Ok(())
}

/// `policy test` as text: one block per sub-query, one line per rule.
pub fn explain_policy_test(report: &serde_json::Value) -> String {
    let mut s = format!(
        "policy test: {} asks {} for purpose {:?}\n",
        report["requester"].as_str().unwrap_or("?"),
        report["dataset"].as_str().unwrap_or("?"),
        report["purpose"].as_str().unwrap_or("")
    );
    for q in report["subqueries"].as_array().into_iter().flatten() {
        s.push_str(&format!("\nsub-query: {}\n", q["sql"].as_str().unwrap_or("")));
        s.push_str(&format!(
            "  action {}: {}\n",
            q["action"].as_str().unwrap_or("-"),
            q["access"].as_str().unwrap_or("-")
        ));
        for l in q["lines"].as_array().into_iter().flatten() {
            s.push_str(&format!("  {}\n", l.as_str().unwrap_or("")));
        }
        if let Some(b) = q["budget_left"].as_str() {
            s.push_str(&format!("  budget left: {b}\n"));
        }
        s.push_str(&format!("  => {}\n", q["verdict"].as_str().unwrap_or("")));
    }
    s
}
