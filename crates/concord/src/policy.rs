//! `concord policy`: set, show and check policy files offline; test them through a node.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use concord_node::node::admin;
use concord_node::store::config::NodeDir;
use concord_node::wire::PolicyTestRequest;

use crate::ListFormat;
use crate::connect::Connect;
use crate::out::say;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Set a dataset's usage policy from a policy file (see docs/policy.md); a running node
    /// applies it at once.
    #[command(
        after_help = "Example:\n  concord policy set nodes/bravo health_cases policies/health_cases.toml"
    )]
    Set {
        /// The node folder.
        dir: PathBuf,
        /// The dataset's name.
        dataset: String,
        /// The policy file (TOML).
        file: PathBuf,
    },
    /// Print the policy in force for a dataset.
    #[command(after_help = "Example:\n  concord policy show nodes/bravo health_cases")]
    Show {
        /// The node folder.
        dir: PathBuf,
        /// The dataset's name.
        dataset: String,
    },
    /// Check a policy file offline: syntax, Cedar rules, and the default baseline; every
    /// error at once, with its line.
    #[command(after_help = "Example:\n  concord policy check policies/health_cases.toml")]
    Check {
        /// The policy file (TOML).
        file: PathBuf,
    },
    /// Explain what a node's policy would release for a member's SQL over one of its datasets,
    /// rule by rule, without running it or spending budget (role steward).
    #[command(after_help = "Example:\n  concord policy test --as alpha health_cases \\\n    \
                            \"SELECT region, count(*) FROM health_cases GROUP BY region\"")]
    Test {
        #[command(flatten)]
        connect: Connect,
        /// The requesting member.
        #[arg(long = "as")]
        as_member: String,
        /// The purpose the request would state.
        #[arg(long, default_value = "analysis")]
        purpose: String,
        /// `table` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// One of the node's datasets.
        dataset: String,
        /// The member's SQL, as it would send it.
        sql: String,
    },
}

pub async fn run(command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Test { connect, as_member, purpose, format, dataset, sql } => {
            let t = PolicyTestRequest { as_member, purpose, dataset, sql };
            let report = connect.client()?.policy_test(&t).await?;
            match format {
                ListFormat::Json => say!("{}", serde_json::to_string_pretty(&report)?),
                ListFormat::Table => {
                    use std::io::Write as _;
                    write!(std::io::stdout().lock(), "{}", crate::output::explain_policy_test(&report))?;
                }
            }
        }
        PolicyCommand::Set { dir, dataset, file } => {
            let p = admin::policy_set(&NodeDir::new(dir), &dataset, &file)?;
            say!(
                "policy of {dataset} set: {}, {}, sha256:{}",
                p.classification.as_str(),
                if p.holds_personal_data() { "personal data" } else { "no personal data" },
                p.digest()
            );
            for w in p.warnings() {
                eprintln!("warning: {w}");
            }
        }
        PolicyCommand::Show { dir, dataset } => {
            let p = admin::policy_show(&NodeDir::new(dir), &dataset)?;
            say!("# policy of {dataset}, sha256:{}", p.digest());
            use std::io::Write as _;
            write!(std::io::stdout().lock(), "{}", p.source)?;
        }
        PolicyCommand::Check { file } => {
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let p = concord_policy::Policy::parse(&text, &file.display().to_string())?;
            p.check_baseline(&concord_policy::Baseline::default())?;
            say!(
                "{}: valid ({}, {} columns named, {} access rules)",
                file.display(),
                p.classification.as_str(),
                p.columns.len(),
                p.rule_count()
            );
            for w in p.warnings() {
                eprintln!("warning: {w}");
            }
        }
    }
    Ok(())
}
