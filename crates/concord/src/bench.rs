//! `concord bench`: federated against pooled, governance, the log. Each writes its folders
//! under `target/bench/` unless `--dir` says otherwise.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;
use concord_lab::bench;

use crate::out::say;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Federated GROUP BY against the same SQL over the pooled data.
    #[command(after_help = "Example:\n  concord bench federated --rows 600000 --iterations 15")]
    Federated {
        /// Rows in all, split across three members.
        #[arg(long, default_value_t = 6_000_000)]
        rows: usize,
        /// Timed runs of each query, after one warm-up.
        #[arg(long, default_value_t = 5)]
        iterations: usize,
        /// Where the data and the nodes go.
        #[arg(long, default_value = "target/bench/federated")]
        dir: PathBuf,
        /// The first port of the members' listeners.
        #[arg(long, default_value_t = 7300)]
        port_base: u16,
    },
    /// Time from a proposal reaching its threshold to every node running the new version.
    #[command(after_help = "Example:\n  concord bench governance --members 50 --rounds 5")]
    Governance {
        /// Members of the federation.
        #[arg(long, default_value_t = 50)]
        members: usize,
        /// Proposals adopted, each timed.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Where the nodes go.
        #[arg(long, default_value = "target/bench/governance")]
        dir: PathBuf,
        /// The first port of the members' listeners.
        #[arg(long, default_value_t = 7400)]
        port_base: u16,
    },
    /// One small federated query over many members (every node in this process with its own
    /// keys, state and listeners) against the same over three; witnessing and governance at
    /// that size.
    #[command(after_help = "Example:\n  concord bench members --members 50 --queries 20")]
    Members {
        /// Members of the large federation.
        #[arg(long, default_value_t = 50)]
        members: usize,
        /// Timed queries in each federation, after two warm-up queries.
        #[arg(long, default_value_t = 20)]
        queries: usize,
        /// Where the nodes go.
        #[arg(long, default_value = "target/bench/members")]
        dir: PathBuf,
        /// The first port of the members' listeners (three per member, both federations).
        #[arg(long, default_value_t = 8000)]
        port_base: u16,
    },
    /// The same GROUP BY over many rows held as a Parquet file, as a PostgreSQL table (a server
    /// of Debian's started in --dir) and on a Ballista cluster of two executors (started in this
    /// process), each federated and straight to its engine.
    #[command(after_help = "Example:\n  concord bench scale --rows 60000000 --iterations 3")]
    Scale {
        /// Rows of the dataset.
        #[arg(long, default_value_t = 60_000_000)]
        rows: u64,
        /// Timed runs of each query, after one warm-up.
        #[arg(long, default_value_t = 3)]
        iterations: usize,
        /// Where the data, the PostgreSQL cluster and the nodes go (the Ballista cluster's
        /// scheduler and executors take ports of the system's choosing on 127.0.0.1).
        #[arg(long, default_value = "target/bench/scale")]
        dir: PathBuf,
        /// The first port (seven in all: two members and PostgreSQL).
        #[arg(long, default_value_t = 8400)]
        port_base: u16,
    },
    /// Many analysts at once against the sample federation, each node in its own process.
    #[command(after_help = "Example:\n  concord bench load --analysts 50 --queries 2000")]
    Load {
        /// Analysts sending queries at once, spread over the three members.
        #[arg(long, default_value_t = 50)]
        analysts: usize,
        /// Queries in all; one in twenty is under differential privacy.
        #[arg(long, default_value_t = 2000)]
        queries: usize,
        /// Where the federation goes.
        #[arg(long, default_value = "target/bench/load")]
        dir: PathBuf,
        /// The first port of the members' listeners (nine in all).
        #[arg(long, default_value_t = 7500)]
        port_base: u16,
    },
    /// Nodes killed with SIGKILL at random while analysts query, then restarted: every answer
    /// received is in both logs and the audit passes.
    #[command(after_help = "Example:\n  concord bench crash --cycles 100")]
    Crash {
        /// Kills (each followed by a restart).
        #[arg(long, default_value_t = 100)]
        cycles: usize,
        /// Seeds the choice of victims and moments.
        #[arg(long, default_value_t = 0x5eed_cafe)]
        seed: u64,
        /// Where the federation goes.
        #[arg(long, default_value = "target/bench/crash")]
        dir: PathBuf,
        /// The first port of the members' listeners (nine in all).
        #[arg(long, default_value_t = 7600)]
        port_base: u16,
    },
    /// TPC-H queries federated over three members against the pooled tables in DataFusion.
    /// `bench/tpch.py` generates the tables, runs this and checks the answers against DuckDB.
    #[command(
        after_help = "Example:\n  tpchgen-cli parquet -s 1 --output-dir target/bench/tpch/sf1\n  concord bench tpch --data target/bench/tpch/sf1 --iterations 5"
    )]
    Tpch {
        /// The tables as `tpchgen-cli parquet` writes them (lineitem.parquet, orders.parquet,
        /// customer, nation, region, part, supplier).
        #[arg(long, required_unless_present = "print_queries")]
        data: Option<PathBuf>,
        /// Print the queries' names and SQL as JSON and run nothing.
        #[arg(long)]
        print_queries: bool,
        /// Timed runs of each query, after one warm-up.
        #[arg(long, default_value_t = 5)]
        iterations: usize,
        /// Only these queries (q1, q3, q5, q6, q10, q12, q14, q19); all by default.
        #[arg(long, value_delimiter = ',')]
        queries: Vec<String>,
        /// Where the members, their nodes, the answers (answers/*.parquet) and timings.json go.
        #[arg(long, default_value = "target/bench/tpch/run")]
        dir: PathBuf,
        /// The first port of the members' listeners.
        #[arg(long, default_value_t = 7600)]
        port_base: u16,
    },
    /// Durable appends, checkpoint cosigning and inclusion proofs of the transparency log.
    #[command(after_help = "Example:\n  concord bench log --proof-sizes 100000,1000000")]
    Log {
        /// Where the log databases go.
        #[arg(long, default_value = "target/bench/log")]
        dir: PathBuf,
        /// Tree sizes at which inclusion proofs are timed.
        #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
        proof_sizes: Vec<u64>,
        /// The first port of the witnesses' listeners.
        #[arg(long, default_value_t = 7400)]
        port_base: u16,
    },
}

pub async fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Governance { members, rounds, dir, port_base } => {
            governance(members, rounds, dir, port_base).await
        }
        BenchCommand::Members { members: n, queries, dir, port_base } => {
            members(n, queries, dir, port_base).await
        }
        BenchCommand::Scale { rows, iterations, dir, port_base } => {
            scale(rows, iterations, dir, port_base).await
        }
        BenchCommand::Federated { rows, iterations, dir, port_base } => {
            federated(rows, iterations, dir, port_base).await
        }
        BenchCommand::Log { dir, proof_sizes, port_base } => log(dir, &proof_sizes, port_base).await,
        BenchCommand::Load { analysts, queries, dir, port_base } => {
            load(concord_lab::load_bench::LoadOptions { dir, analysts, queries, port_base }).await
        }
        BenchCommand::Crash { cycles, seed, dir, port_base } => {
            let exe = std::env::current_exe()?;
            crash(concord_lab::crash_bench::CrashOptions { dir, cycles, port_base, exe, seed }).await
        }
        BenchCommand::Tpch { print_queries: true, .. } => {
            let queries: Vec<serde_json::Value> = concord_lab::tpch_bench::QUERIES
                .iter()
                .map(|(name, sql)| serde_json::json!({ "name": name, "sql": sql }))
                .collect();
            say!("{}", serde_json::to_string_pretty(&queries)?);
            Ok(())
        }
        BenchCommand::Tpch { data, iterations, queries, dir, port_base, .. } => {
            let data = data.unwrap_or_default();
            tpch(concord_lab::tpch_bench::TpchOptions { data, dir, iterations, port_base, only: queries })
                .await
        }
    }
}

async fn governance(members: usize, rounds: usize, dir: PathBuf, port_base: u16) -> Result<()> {
    let progress = crate::out::Progress::start("setting up");
    if members < 2 || rounds == 0 {
        bail!("--members must be at least 2 and --rounds at least 1");
    }
    let opts = concord_lab::governance_bench::GovernanceBenchOptions { dir, members, rounds, port_base };
    let r = concord_lab::governance_bench::governance(&opts, &|s| progress.say(s)).await?;
    drop(progress);
    say!(
        "{} members on loopback, threshold {}; set up and started in {:.1} s",
        r.members,
        r.threshold,
        r.setup.as_secs_f64()
    );
    say!(
        "threshold vote to every node on the new version: median {:.1} ms, max {:.1} ms over {} rounds (target 2000 ms)",
        bench::ms(bench::percentile(&r.adoption, 0.5)),
        bench::ms(r.adoption.iter().copied().max().unwrap_or_default()),
        r.adoption.len()
    );
    Ok(())
}

async fn members(members: usize, queries: usize, dir: PathBuf, port_base: u16) -> Result<()> {
    use concord_lab::members_bench::{MEMBERS_SQL, MembersBenchOptions};
    let progress = crate::out::Progress::start("setting up");
    let opts = MembersBenchOptions { dir, members, queries, port_base };
    let r = concord_lab::members_bench::members(&opts, &|s| progress.say(s)).await?;
    drop(progress);
    say!("query: {MEMBERS_SQL}");
    for f in [&r.baseline, &r.large] {
        say!(
            "{:>3} members: set up and started in {:>5.1} s; query p50 {:>7.1} ms, p90 {:>7.1} ms, max {:>7.1} ms over {}; \
             logs published and cosigned {:>6.1} ms after the last query",
            f.members,
            f.setup.as_secs_f64(),
            bench::ms(bench::percentile(&f.latency, 0.5)),
            bench::ms(bench::percentile(&f.latency, 0.9)),
            bench::ms(f.latency.iter().copied().max().unwrap_or_default()),
            f.latency.len(),
            bench::ms(f.settle)
        );
    }
    say!(
        "ratio {} members / {} members (p50): {:.2} (goal: at most 2.00); each member beyond {} adds {:.2} ms",
        r.large.members,
        r.baseline.members,
        r.ratio(),
        r.baseline.members,
        bench::ms(r.per_member())
    );
    for f in [&r.baseline, &r.large] {
        say!(
            "{:>3} members, each query asked once every log is cosigned: p50 {:>7.1} ms, p90 {:>7.1} ms over {}",
            f.members,
            bench::ms(bench::percentile(&f.quiet, 0.5)),
            bench::ms(bench::percentile(&f.quiet, 0.9)),
            f.quiet.len()
        );
    }
    say!(
        "on a quiet federation: ratio {:.2}; each member beyond {} adds {:.2} ms",
        r.quiet_ratio(),
        r.baseline.members,
        bench::ms(r.quiet_per_member())
    );
    say!(
        "{} members, threshold {}: deciding vote to every node on the new version {:.1} ms (bound 2000 ms)",
        r.large.members,
        r.threshold,
        bench::ms(r.adoption)
    );
    Ok(())
}

async fn scale(rows: u64, iterations: usize, dir: PathBuf, port_base: u16) -> Result<()> {
    use concord_lab::scale_bench::{SCALE_SQL, ScaleBenchOptions};
    let progress = crate::out::Progress::start("setting up");
    let opts = ScaleBenchOptions { dir, rows, iterations, port_base };
    let r = concord_lab::scale_bench::scale(&opts, &|s| progress.say(s)).await?;
    drop(progress);
    let p50 = |v: &[std::time::Duration]| bench::ms(bench::percentile(v, 0.5));
    say!("query: {}", SCALE_SQL.replace("TABLE", "alpha.<dataset>"));
    say!(
        "{} rows; Parquet written in {:.1} s, PostgreSQL loaded and analysed in {:.1} s",
        r.rows,
        r.write_file.as_secs_f64(),
        r.load_postgres.as_secs_f64()
    );
    for (name, t) in
        [("Parquet file    ", &r.file), ("PostgreSQL      ", &r.postgres), ("Ballista cluster", &r.cluster)]
    {
        say!(
            "{name}: engine alone p50 {:>8.1} ms; federated p50 {:>8.1} ms; the federation's share {:>7.1} ms ({:.2}x)",
            p50(&t.direct),
            p50(&t.federated),
            p50(&t.federated) - p50(&t.direct),
            p50(&t.federated) / p50(&t.direct).max(1e-9)
        );
    }
    say!(
        "federated PostgreSQL / federated file (p50): {:.2}; federated cluster / federated file (p50): {:.2}",
        p50(&r.postgres.federated) / p50(&r.file.federated).max(1e-9),
        p50(&r.cluster.federated) / p50(&r.file.federated).max(1e-9)
    );
    Ok(())
}

async fn federated(rows: usize, iterations: usize, dir: PathBuf, port_base: u16) -> Result<()> {
    let progress = crate::out::Progress::start("setting up");
    if rows < 3 || iterations == 0 {
        bail!("--rows must be at least 3 and --iterations at least 1");
    }
    let opts = bench::BenchOptions { dir, rows, iterations, port_base };
    let report = bench::federated(&opts, &|s| progress.say(s)).await?;
    drop(progress);
    let p50 = |v: &[std::time::Duration]| bench::ms(bench::percentile(v, 0.5));
    say!("query: {}", bench::BENCH_SQL);
    say!(
        "rows: {} across 3 members, {} groups, {} runs after one warm-up",
        report.rows,
        report.groups,
        report.pooled.len()
    );
    say!("pooled    median {:>9.1} ms", bench::ms(report.pooled_median()));
    say!("federated median {:>9.1} ms", bench::ms(report.federated_median()));
    say!("ratio federated/pooled: {:.2}", report.ratio());
    say!("with the usage policy: {}", bench::POLICY_SQL.replace("TABLE", "events_dp"));
    say!("without policy median {:>9.1} ms", p50(&report.without_policy));
    say!("with policy    median {:>9.1} ms", p50(&report.with_policy));
    say!("paired ratio with/without policy (modes, minimum group, DP): {:.2}", report.policy_ratio());
    say!(
        "owner's policy check per sub-query: p50 {:.3} ms, p99 {:.3} ms over {}",
        p50(&report.policy_check),
        bench::ms(bench::percentile(&report.policy_check, 0.99)),
        report.policy_check.len()
    );
    say!(
        "one owner's release alone ({} rows, no network): without policy median {:.1} ms, with policy {:.1} ms, paired ratio {:.2}",
        report.rows / 3,
        p50(&report.owner_without_policy),
        p50(&report.owner_with_policy),
        report.owner_policy_ratio()
    );
    Ok(())
}

async fn tpch(opts: concord_lab::tpch_bench::TpchOptions) -> Result<()> {
    if opts.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let progress = crate::out::Progress::start("reading the tables");
    let r = concord_lab::tpch_bench::tpch(&opts, &|s| progress.say(s)).await?;
    drop(progress);
    let sizes: Vec<String> = r.tables.iter().map(|(t, n)| format!("{t} {n}")).collect();
    say!("rows pooled: {}", sizes.join(", "));
    say!("lineitem and orders split over alpha, bravo, charlie by order key; the other tables at charlie");
    say!("{:<5} {:>14} {:>14} {:>7}  answer", "query", "federated ms", "pooled ms", "ratio");
    let median = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s.get(s.len() / 2).copied().unwrap_or_default()
    };
    let mut failed = Vec::new();
    for q in &r.queries {
        if let Some(why) = &q.not_answered {
            say!("{:<5} not answered: {why}", q.name);
            continue;
        }
        let (f, p) = (median(&q.federated_ms), median(&q.pooled_ms));
        let answer = match &q.differs {
            None => format!("{} rows, equal to pooled", q.rows),
            Some(d) => {
                failed.push(q.name.clone());
                format!("DIFFERS from pooled: {d}")
            }
        };
        say!("{:<5} {f:>14.1} {p:>14.1} {:>7.2}  {answer}", q.name, f / p.max(1e-9));
    }
    say!("answers and timings.json in {}", opts.dir.display());
    if !failed.is_empty() {
        bail!("federated answers differ from pooled ones: {}", failed.join(", "));
    }
    Ok(())
}

async fn log(dir: PathBuf, proof_sizes: &[u64], port_base: u16) -> Result<()> {
    let progress = crate::out::Progress::start("setting up");
    let r = bench::log(&dir, proof_sizes, port_base, &|s| progress.say(s)).await?;
    drop(progress);
    say!("baseline: {:.0} inserts/s, one durable SQLite transaction each, no tree", r.baseline);
    say!("durable appends (SQLite WAL, synchronous=FULL, group commit, Merkle nodes included):");
    for (w, n, rate, p50, p99) in &r.appends {
        say!(
            "  {w:>3} writers: {n:>6} appends, {rate:>9.0} appends/s ({:.1}x baseline), p50 {:>7.2} ms, p99 {:>7.2} ms",
            rate / r.baseline,
            bench::ms(*p50),
            bench::ms(*p99)
        );
    }
    let [(p50, p99), (alone50, alone99)] = r.cosigned_percentiles();
    say!(
        "from an append to its checkpoint cosigned by 2 witnesses, each append after the last publication: p50 {:.1} ms, p99 {:.1} ms over {} appends",
        bench::ms(p50),
        bench::ms(p99),
        r.cosigned.len()
    );
    say!(
        "from an append to its checkpoint cosigned by 2 witnesses, a lone append: p50 {:.1} ms, p99 {:.1} ms over {} appends",
        bench::ms(alone50),
        bench::ms(alone99),
        r.cosigned_alone.len()
    );
    for (leaves, n, p50, p99) in &r.proofs {
        say!(
            "inclusion proof at {leaves} leaves: p50 {:.3} ms, p99 {:.3} ms over {n} proofs",
            bench::ms(*p50),
            bench::ms(*p99)
        );
    }
    Ok(())
}

async fn load(opts: concord_lab::load_bench::LoadOptions) -> Result<()> {
    use concord_lab::load_bench;
    if opts.analysts == 0 || opts.queries == 0 {
        bail!("--analysts and --queries must be at least 1");
    }
    let progress = crate::out::Progress::start("setting up");
    let members = load_bench::prepare(&opts).await?;
    let nodes = concord_lab::processes::NodeProcesses::start(&std::env::current_exe()?, &members).await?;
    // Witnesses cosign the set-up's entries first: the load starts on a settled federation.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let report = load_bench::drive(&members, &opts, &|s| progress.say(s)).await;
    let peaks: Vec<(String, Option<u64>)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.id.clone(), nodes.pid(i).and_then(load_bench::peak_memory)))
        .collect();
    drop(nodes);
    drop(progress);
    let answered = report.latencies.len();
    let failed: u64 = report.errors.values().map(|(n, _)| n).sum();
    say!(
        "{} analysts, {} queries ({} under differential privacy answered), each node in its own process",
        opts.analysts,
        opts.queries,
        report.dp_answered.values().sum::<u64>()
    );
    say!(
        "answered {answered}, failed {failed}; {:.1} queries/s over {:.1} s",
        answered as f64 / report.wall.as_secs_f64().max(1e-9),
        report.wall.as_secs_f64()
    );
    say!(
        "latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        bench::ms(bench::percentile(&report.latencies, 0.5)),
        bench::ms(bench::percentile(&report.latencies, 0.99)),
        bench::ms(report.latencies.iter().copied().max().unwrap_or_default())
    );
    for (code, (n, message)) in &report.errors {
        say!("  {n} failed with {code}, for example: {message}");
    }
    for (id, peak) in &peaks {
        match peak {
            Some(b) => say!("node {id}: peak memory {:.1} MiB", *b as f64 / (1024.0 * 1024.0)),
            None => say!("node {id}: peak memory unknown (no /proc on this system)"),
        }
    }
    let checks = load_bench::check_budgets(&members, &report)?;
    let broken: Vec<_> = checks.iter().filter(|c| !c.holds()).collect();
    for c in &checks {
        say!(
            "budget at {} for {}: charged rho {:.3} for answers costing {:.3}, of {:.3}",
            c.owner,
            c.requester,
            c.charged,
            c.expected,
            c.budget
        );
    }
    if !broken.is_empty() || failed > 0 {
        bail!("{failed} queries failed and {} budgets do not match their answers", broken.len());
    }
    Ok(())
}

async fn crash(opts: concord_lab::crash_bench::CrashOptions) -> Result<()> {
    if opts.cycles == 0 {
        bail!("--cycles must be at least 1");
    }
    let progress = crate::out::Progress::start("setting up");
    let report = concord_lab::crash_bench::run(&opts, &|s| progress.say(s)).await?;
    drop(progress);
    let kills: Vec<String> = report.kills.iter().map(|(m, n)| format!("{m} {n}")).collect();
    say!("{} kills with SIGKILL, each followed by a restart ({})", opts.cycles, kills.join(", "));
    say!(
        "from a kill until the node answered again (a random pause of up to 300 ms before its restart included): median {:.0} ms, max {:.0} ms",
        bench::ms(bench::percentile(&report.restarts, 0.5)),
        bench::ms(report.restarts.iter().copied().max().unwrap_or_default())
    );
    say!(
        "{} answers received, {} of them missing from a log; {} log entries in all; {} releases served but never received (named by the audit)",
        report.received,
        report.lost.len(),
        report.entries,
        report.unreceived
    );
    say!("audit of every member: {}", if report.audit_passed { "passed" } else { "did not pass" });
    say!("{:.1} s in all", report.wall.as_secs_f64());
    for l in report.lost.iter().take(10) {
        say!("  lost: {l}");
    }
    if !report.lost.is_empty() || !report.audit_passed {
        bail!(
            "{} answers are missing from a log and the audit {}: {}",
            report.lost.len(),
            if report.audit_passed { "passed" } else { "did not pass" },
            report.audit
        );
    }
    Ok(())
}
