//! `concord bench load`: many analysts at once against the sample demo federation, through
//! each member's local API: latency, throughput, errors by code, and a check that no privacy
//! budget was overspent or charged without an answer. The binary runs each node in a process
//! of its own, so that each node's peak memory can be read.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use concord_node::NodeError;
use concord_node::store::config::NodeDir;

use crate::demo::{DEMO_FEDERATION, DemoMember, api_query, sample_members, sample_schemas, setup};

/// What `concord bench load` is given.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Folder for the federation; wiped at the start of a run.
    pub dir: PathBuf,
    /// Analysts sending queries at once, spread over the members.
    pub analysts: usize,
    /// Queries in all.
    pub queries: usize,
    /// First of the members' ports (three each: local, peer, Flight SQL).
    pub port_base: u16,
}

/// Queries over the public dataset, which spend no budget.
const PUBLIC_SQL: [&str; 3] = [
    "SELECT sector, sum(value_added) AS value_added FROM digital_economy GROUP BY sector ORDER BY sector",
    "SELECT count(*) AS n FROM digital_economy",
    "SELECT year, avg(share_of_gdp) AS share FROM digital_economy GROUP BY year ORDER BY year",
];
/// A query under differential privacy, which every other owner charges to the requester.
pub const DP_SQL: &str =
    "SELECT age_band, count(*) AS n FROM health_cases GROUP BY age_band ORDER BY age_band";
/// One query in this many is [`DP_SQL`]: at 2,000 queries, 100 in all, well inside each
/// requester's budget of 200 such queries per owner.
const DP_EVERY: usize = 20;

/// Figures of one run.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Each answered query's latency, in the order they finished.
    pub latencies: Vec<Duration>,
    /// From the first query sent to the last answer.
    pub wall: Duration,
    /// Failed queries by error code, with one message of each.
    pub errors: BTreeMap<String, (u64, String)>,
    /// Answered queries under differential privacy, by requesting member.
    pub dp_answered: BTreeMap<String, u64>,
}

/// The budget one owner charged one requester, against what the answered queries account for.
#[derive(Clone, Debug)]
pub struct BudgetCheck {
    /// The owner.
    pub owner: String,
    /// The requester.
    pub requester: String,
    /// Charged, in rho.
    pub charged: f64,
    /// What the requester's answered queries under differential privacy cost.
    pub expected: f64,
    /// The requester's budget at this owner.
    pub budget: f64,
}

impl BudgetCheck {
    /// Charged exactly what the answers cost, and within the budget.
    pub fn holds(&self) -> bool {
        (self.charged - self.expected).abs() < 1e-9 && self.charged <= self.budget + 1e-12
    }
}

/// Writes the sample federation under `opts.dir` (not started) and returns its members.
pub async fn prepare(opts: &LoadOptions) -> Result<Vec<DemoMember>, NodeError> {
    if opts.dir.exists() {
        std::fs::remove_dir_all(&opts.dir).map_err(|e| NodeError::io(&opts.dir, e))?;
    }
    let specs = sample_members(&opts.dir.join("data"))?;
    setup(&opts.dir, DEMO_FEDERATION, &specs, sample_schemas(), opts.port_base).await
}

/// Sends `opts.queries` queries from `opts.analysts` analysts at once, each analyst of one
/// member in turn, each sending its share one after another.
pub async fn drive(members: &[DemoMember], opts: &LoadOptions, progress: &dyn Fn(&str)) -> LoadReport {
    let analysts = opts.analysts.max(1);
    let started = Instant::now();
    let tasks = (0..analysts).map(|a| {
        let m = members[a % members.len()].clone();
        let share = opts.queries / analysts + usize::from(a < opts.queries % analysts);
        async move {
            let mut done = Vec::with_capacity(share);
            for k in 0..share {
                let global = k * analysts + a;
                let sql = if (k + a).is_multiple_of(DP_EVERY) {
                    DP_SQL
                } else {
                    PUBLIC_SQL[global % PUBLIC_SQL.len()]
                };
                let t = Instant::now();
                let r = api_query(&m.local_url, &m.analyst_token, sql).await;
                done.push((m.id.clone(), sql == DP_SQL, t.elapsed(), r.map(|_| ())));
            }
            done
        }
    });
    progress(&format!("{analysts} analysts sending {} queries", opts.queries));
    let results = futures::future::join_all(tasks).await;
    let mut report = LoadReport { wall: started.elapsed(), ..LoadReport::default() };
    for (member, dp, took, r) in results.into_iter().flatten() {
        match r {
            Ok(()) => {
                report.latencies.push(took);
                if dp {
                    *report.dp_answered.entry(member).or_default() += 1;
                }
            }
            Err(e) => {
                let entry = report.errors.entry(e.code().as_str().to_owned()).or_insert((0, e.to_string()));
                entry.0 += 1;
            }
        }
    }
    report
}

/// What each owner charged each requester on `health_cases`, against the answered queries
/// under differential privacy (each charged once by every owner other than the requester).
pub fn check_budgets(members: &[DemoMember], report: &LoadReport) -> Result<Vec<BudgetCheck>, NodeError> {
    let policy = concord_policy::Policy::parse(crate::demo::HEALTH_POLICY, "health_cases.policy.toml")?;
    let privacy = policy.release.privacy.ok_or_else(|| {
        NodeError::Config("the sample health_cases policy has no differential privacy".into())
    })?;
    let mut out = Vec::new();
    for owner in members {
        let nd = NodeDir::new(&owner.dir);
        let charged = nd.open_state()?.budget_by_requester()?;
        for requester in members.iter().filter(|m| m.id != owner.id) {
            let spent = charged
                .iter()
                .find(|(d, r, _, _)| d == "health_cases" && *r == requester.id)
                .map_or(0.0, |c| c.2);
            let answered = report.dp_answered.get(&requester.id).copied().unwrap_or(0);
            out.push(BudgetCheck {
                owner: owner.id.clone(),
                requester: requester.id.clone(),
                charged: spent,
                expected: answered as f64 * privacy.cost.as_f64(),
                budget: privacy.budget_per_requester.as_f64(),
            });
        }
    }
    Ok(out)
}

/// A node process's peak resident memory (`VmHWM`), in bytes, from `/proc`.
pub fn peak_memory(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_check_holds_only_when_charges_match_answers_within_the_budget() {
        let c = |charged, expected| BudgetCheck {
            owner: "bravo".into(),
            requester: "alpha".into(),
            charged,
            expected,
            budget: 1.0,
        };
        assert!(c(0.17, 0.17).holds());
        assert!(!c(0.175, 0.17).holds(), "charged without an answer");
        assert!(!c(1.005, 1.005).holds(), "overspent");
    }

    #[test]
    fn this_process_has_a_peak_memory() {
        assert!(peak_memory(std::process::id()).is_some_and(|b| b > 0));
    }
}
