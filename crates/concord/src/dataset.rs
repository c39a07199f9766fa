//! `concord dataset`: register, remove, show and list a node's datasets (offline, in its
//! folder).

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use concord_node::node::admin;
use concord_node::store::config::NodeDir;

use crate::ListFormat;
use crate::out::say;

#[derive(Subcommand)]
pub enum DatasetCommand {
    /// Register a CSV or Parquet file by reference, a table of the member's PostgreSQL database,
    /// or Parquet files on the member's Ballista cluster.
    #[command(
        after_help = "Examples:\n  concord dataset add nodes/alpha cases --file data/cases.csv --schema health_cases\n  \
                            concord dataset add nodes/alpha survey --file survey.csv --delimiter ';' --null NA --allow '*'\n  \
                            STATS_PG_PASSWORD=... concord dataset add nodes/alpha cases --postgres postgresql://concord@127.0.0.1:5432/stats \\\n    \
                            --table public.cases --password-env STATS_PG_PASSWORD --schema health_cases\n  \
                            concord dataset add nodes/alpha cases --ballista df://127.0.0.1:50050 --table /srv/cases/ --schema health_cases"
    )]
    Add(Box<AddArgs>),
    /// Take a dataset out of the registry (its file stays); a running node stops serving it.
    #[command(after_help = "Example:\n  concord dataset remove nodes/alpha cases")]
    Remove {
        /// The node folder.
        dir: PathBuf,
        /// The dataset's name.
        name: String,
    },
    /// One dataset: file, rows, shared schema, columns with their SQL types, and its policy.
    #[command(after_help = "Example:\n  concord dataset show nodes/alpha cases")]
    Show {
        /// The node folder.
        dir: PathBuf,
        /// The dataset's name.
        name: String,
    },
    /// List the datasets.
    #[command(after_help = "Example:\n  concord dataset list nodes/alpha --format json")]
    List {
        /// The node folder.
        dir: PathBuf,
        /// `table` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
}

/// What `concord dataset add` is given.
#[derive(clap::Args)]
pub struct AddArgs {
    /// The node folder.
    dir: PathBuf,
    /// The dataset's name: what other members write after `member.`.
    name: String,
    /// The CSV or Parquet file; it stays where it is.
    #[arg(long, required_unless_present_any = ["postgres", "ballista"], conflicts_with_all = ["postgres", "ballista"])]
    file: Option<PathBuf>,
    /// A PostgreSQL database instead of a file, as a URL without a password:
    /// postgresql://USER@HOST:PORT/DATABASE (loopback or a Unix socket). The owner's checked
    /// plans run inside PostgreSQL; only their groups come back.
    #[arg(long, value_name = "URL", requires = "table")]
    postgres: Option<String>,
    /// An Apache DataFusion Ballista cluster instead of a file: its scheduler, df://HOST:PORT
    /// (loopback). The owner's checked plans run on the cluster; only their groups come back.
    #[arg(long, value_name = "URL", requires = "table", conflicts_with = "postgres")]
    ballista: Option<String>,
    /// With --postgres: the table or view (schema.table). With --ballista: the Parquet file, or
    /// directory of Parquet files, that the cluster's scheduler and executors read (the node
    /// reads their footers for the columns).
    #[arg(long)]
    table: Option<String>,
    /// With --postgres: the environment variable that holds the database password (of the
    /// node's process too, whenever it runs). Never give a password on the command line.
    #[arg(long, value_name = "VAR", requires = "postgres", conflicts_with = "password_file")]
    password_env: Option<String>,
    /// With --postgres: a file (mode 0600) whose first line is the database password.
    #[arg(long, value_name = "FILE", requires = "postgres")]
    password_file: Option<PathBuf>,
    /// The charter's shared schema this dataset conforms to.
    #[arg(long)]
    schema: Option<String>,
    /// Members that may use it under the policy it gets: ids separated by commas, or '*'.
    /// Only for a new dataset; where its shared schema marks personal columns, the policy
    /// is derived from the schema and --allow never makes them plain.
    #[arg(long)]
    allow: Option<String>,
    /// Replace a dataset of this name; says what changed. Its policy stays (change it with
    /// `concord policy set`).
    #[arg(long)]
    replace: bool,
    /// CSV: the character between fields (default ','), e.g. ';' or '|'; `tab` for a tab.
    #[arg(long)]
    delimiter: Option<String>,
    /// CSV: the file has no header line; its columns are the shared schema's, in order.
    #[arg(long)]
    no_header: bool,
    /// CSV: a text that stands for NULL, e.g. NA; empty fields are NULL as well.
    #[arg(long)]
    null: Option<String>,
    /// CSV: how the shared schema's date columns are written, e.g. %d/%m/%Y.
    #[arg(long)]
    date_format: Option<String>,
    /// CSV: how the shared schema's timestamp columns are written, e.g. "%d/%m/%Y %H:%M:%S".
    #[arg(long)]
    timestamp_format: Option<String>,
}

fn delimiter(d: Option<&str>) -> Result<Option<char>> {
    Ok(match d {
        None => None,
        Some("tab" | "\\t") => Some('\t'),
        Some(d) => {
            let mut chars = d.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Some(c),
                _ => bail!("--delimiter takes one character (or `tab`), not {d:?}"),
            }
        }
    })
}

fn show(dir: PathBuf, name: &str) -> Result<()> {
    let nd = NodeDir::new(dir);
    nd.load_config()?;
    let d = nd
        .open_state()?
        .datasets()?
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| anyhow::anyhow!("no dataset {name}; `concord dataset list` shows them"))?;
    let schema = concord_query::ipc::decode_schema(&d.schema_ipc)?;
    say!("dataset {} ({}, {} rows)", d.name, d.format.as_str(), d.rows);
    say!("{}", d.location());
    say!("shared schema: {}", d.shared_schema.as_deref().unwrap_or("none"));
    say!("registered: {}", d.added_at);
    let options = d.csv.describe();
    if !options.is_empty() {
        say!("read with: {}", options.join(", "));
    }
    say!("columns:");
    for f in schema.fields() {
        say!(
            "  {} {}{}",
            f.name(),
            concord_query::dataset::sql_type(f.data_type()),
            if f.is_nullable() { "" } else { " NOT NULL" }
        );
    }
    say!("policy:");
    for line in concord_node::node::stored_policy(&d)?.source.lines() {
        say!("  {line}");
    }
    Ok(())
}

fn list(dir: PathBuf, format: ListFormat) -> Result<()> {
    let nd = NodeDir::new(dir);
    nd.load_config()?;
    let list = nd.open_state()?.datasets()?;
    match format {
        ListFormat::Json => say!("{}", serde_json::to_string_pretty(&list)?),
        ListFormat::Table => {
            say!(
                "{:<24} {:<8} {:>10}  {:<20} {:<10} {:<8} path",
                "name",
                "format",
                "rows",
                "shared schema",
                "class",
                "personal"
            );
            for d in list {
                let policy =
                    concord_node::node::stored_policy(&d).with_context(|| format!("policy of {}", d.name))?;
                say!(
                    "{:<24} {:<8} {:>10}  {:<20} {:<10} {:<8} {}",
                    d.name,
                    d.format.as_str(),
                    d.rows,
                    d.shared_schema.as_deref().unwrap_or("-"),
                    policy.classification.as_str(),
                    if policy.holds_personal_data() { "yes" } else { "no" },
                    if d.format.is_file() { d.path.display().to_string() } else { d.location() }
                );
            }
        }
    }
    Ok(())
}

/// Registers the dataset `spec` describes in the node folder `dir` and says what came of it.
async fn register(dir: PathBuf, spec: &admin::DatasetSpec<'_>, replace: bool) -> Result<()> {
    let what = match (&spec.postgres, &spec.ballista) {
        (Some(pg), _) => format!("table {} in PostgreSQL", pg.table),
        (None, Some(b)) => format!("{} on the Ballista cluster at {}", spec.file.display(), b.scheduler),
        (None, None) => spec.file.display().to_string(),
    };
    let progress = crate::out::Progress::start(format!("reading {what} and checking it"));
    let registered = admin::dataset_register(&NodeDir::new(dir), spec, replace).await?;
    drop(progress);
    for c in &registered.changes {
        say!("changed: {c}");
    }
    for w in &registered.left_out {
        eprintln!("warning: {w}");
    }
    for n in &registered.notes {
        say!("note: {n}");
    }
    let r = registered.record;
    say!(
        "registered dataset {} ({}, {} rows{}) at {}",
        r.name,
        r.format.as_str(),
        r.rows,
        r.shared_schema.as_ref().map(|s| format!(", conforms to {s}")).unwrap_or_default(),
        r.location()
    );
    Ok(())
}

pub async fn run(command: DatasetCommand) -> Result<()> {
    match command {
        DatasetCommand::Show { dir, name } => show(dir, &name)?,
        DatasetCommand::Remove { dir, name } => {
            let r = admin::dataset_remove(&NodeDir::new(dir), &name).await?;
            say!("removed dataset {} ({} stays where it is)", r.name, r.location());
        }
        DatasetCommand::Add(args) => {
            let AddArgs {
                dir,
                name,
                file,
                postgres,
                ballista,
                table,
                password_env,
                password_file,
                schema,
                allow,
                replace,
                delimiter: delim,
                no_header,
                null,
                date_format,
                timestamp_format,
            } = *args;
            let csv = concord_query::dataset::CsvOptions {
                delimiter: delimiter(delim.as_deref())?,
                header: no_header.then_some(false),
                null,
                date_format,
                timestamp_format,
            };
            if !csv.is_default() && (postgres.is_some() || ballista.is_some()) {
                bail!(
                    "CSV options apply to CSV files, not to a PostgreSQL table or a Ballista cluster's Parquet files"
                );
            }
            let (table, cluster_files) = match (&ballista, table) {
                (Some(_), Some(t)) => (None, Some(PathBuf::from(t))),
                (_, t) => (t, None),
            };
            let postgres = match (postgres, table) {
                (Some(url), Some(table)) => {
                    if !csv.is_default() {
                        bail!("CSV options apply to files, not to a PostgreSQL table");
                    }
                    let password = match (password_env, password_file) {
                        (Some(v), _) => Some(concord_source::postgres::Credential::Env(v)),
                        (None, Some(f)) => Some(concord_source::postgres::Credential::File(
                            std::path::absolute(&f).with_context(|| format!("{}", f.display()))?,
                        )),
                        (None, None) => None,
                    };
                    Some(concord_source::postgres::PostgresSource { url, table, password })
                }
                (None, Some(_)) => {
                    bail!(
                        "--table names a table of --postgres URL or the files of --ballista URL; give the database or \
                         the cluster too, or --file alone"
                    )
                }
                (Some(_), None) => bail!("--postgres needs --table, the table or view to serve"),
                (None, None) => None,
            };
            let ballista = ballista.map(|scheduler| concord_source::ballista::BallistaSource { scheduler });
            if let Some(b) = &ballista {
                concord_source::ballista::endpoint(&b.scheduler)?;
            }
            let file = cluster_files.or(file).unwrap_or_default();
            let spec = admin::DatasetSpec {
                name: &name,
                file: &file,
                shared_schema: schema.as_deref(),
                allow: allow.as_deref(),
                csv,
                postgres,
                ballista,
            };
            register(dir, &spec, replace).await?;
        }
        DatasetCommand::List { dir, format } => list(dir, format)?,
    }
    Ok(())
}
