//! `concord query` and `concord tables`: federated SQL through a node, and what it may name.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use concord_node::wire::QueryRequest;

use crate::ListFormat;
use crate::connect::Connect;
use crate::out::say;
use crate::output::Format;

/// `concord query`.
#[derive(Args)]
pub struct QueryArgs {
    #[command(flatten)]
    connect: Connect,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Show what each member contributed: rows, groups, noise, budget, receipts.
    #[arg(long)]
    provenance: bool,
    /// Purpose stated in every request to owners; a grant may name it.
    #[arg(long, default_value = "analysis")]
    purpose: String,
    /// Go on without owners that cannot be reached, and name them.
    #[arg(long)]
    partial: bool,
    /// Read the SQL from this file.
    #[arg(short = 'f', long = "file", conflicts_with = "sql", value_name = "FILE")]
    file: Option<PathBuf>,
    /// The SQL; `-` reads it from standard input. SHOW TABLES, SHOW COLUMNS FROM t and
    /// information_schema.tables / .columns list what a query may name.
    #[arg(required_unless_present = "file")]
    sql: Option<String>,
}

fn sql_of(a: &QueryArgs) -> Result<String> {
    let sql = match (&a.file, a.sql.as_deref()) {
        (Some(f), _) => std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?,
        (None, Some("-")) => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("reading SQL from standard input")?;
            s
        }
        (None, Some(s)) => s.to_owned(),
        (None, None) => bail!("give the SQL as an argument, with -f FILE, or as - to read standard input"),
    };
    if sql.trim().is_empty() {
        bail!("the SQL is empty");
    }
    Ok(sql)
}

pub async fn query(a: QueryArgs) -> Result<()> {
    let sql = sql_of(&a)?;
    let client = a.connect.client()?;
    let answer =
        client.query(&QueryRequest { sql, purpose: Some(a.purpose.clone()), partial: a.partial }).await?;
    crate::output::query(&answer, a.format, a.provenance)
}

/// `concord tables`.
#[derive(Args)]
pub struct TablesArgs {
    #[command(flatten)]
    connect: Connect,
    /// `table` for people, `json` for scripts.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
}

pub async fn tables(a: TablesArgs) -> Result<()> {
    let list = a.connect.client()?.tables().await?;
    for w in &list.warnings {
        eprintln!("warning: {w}");
    }
    match a.format {
        ListFormat::Json => say!("{}", serde_json::to_string_pretty(&list)?),
        ListFormat::Table => {
            say!("{:<36} {:<15} columns", "table", "kind");
            for t in &list.tables {
                let cols: Vec<String> =
                    t.columns.iter().map(|c| format!("{} {}", c.name, c.sql_type)).collect();
                say!("{:<36} {:<15} {}", t.name, t.kind.as_str(), cols.join(", "));
            }
        }
    }
    Ok(())
}
