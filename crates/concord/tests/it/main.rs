//! The `concord` command as a member's operators and analysts use it: two members set up from
//! scratch with init, genesis, signatures, datasets and tokens, nodes run, queried, stopped.

mod cluster;
mod crashes;
mod netns;
mod postgres;

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

fn concord_bin() -> &'static str {
    env!("CARGO_BIN_EXE_concord")
}

fn concord(args: &[&str], cwd: &Path) -> Output {
    Command::new(concord_bin()).args(args).current_dir(cwd).output().expect("concord runs")
}

fn ok(args: &[&str], cwd: &Path) -> String {
    let out = concord(args, cwd);
    assert!(
        out.status.success(),
        "concord {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// `concord` with only `env` for its connection settings (none inherited), and `stdin`.
fn concord_env(args: &[&str], cwd: &Path, env: &[(&str, &str)], stdin: &str) -> Output {
    use std::io::Write as _;
    let mut cmd = Command::new(concord_bin());
    cmd.args(args).current_dir(cwd).env_remove("CONCORD_NODE").env_remove("CONCORD_TOKEN");
    cmd.env("CONCORD_PROFILE", cwd.join("no-profile.toml"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("concord runs");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("writes");
    child.wait_with_output().expect("concord ends")
}

fn fails(args: &[&str], cwd: &Path) -> String {
    let out = concord(args, cwd);
    assert!(!out.status.success(), "concord {args:?} should fail");
    String::from_utf8(out.stderr).expect("utf8")
}

/// `concord query --format csv` against a node that is starting: retried for up to 60 s.
fn query_when_up(url: &str, token: &str, sql: &str, cwd: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = concord(&["query", "--node", url, "--token", token, "--format", "csv", sql], cwd);
        if out.status.success() {
            return String::from_utf8(out.stdout).expect("utf8");
        }
        assert!(Instant::now() < deadline, "{url} never answered: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free port below Linux's ephemeral range (from 32768), where the nodes' own outgoing
/// connections take their source ports; each call gives another.
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    loop {
        let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 15_000 + ((std::process::id() as u16 % 40) * 100).wrapping_add(i) % 5_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A one-member federation `solo` in `d/alpha`, its genesis charter signed and accepted;
/// returns its local API's port.
fn solo_member(d: &Path) -> u16 {
    let (local, peer) = (free_port(), free_port());
    ok(
        &[
            "init",
            "alpha",
            "--member",
            "alpha",
            "--federation",
            "solo",
            "--local-listen",
            &format!("127.0.0.1:{local}"),
            "--peer-listen",
            &format!("127.0.0.1:{peer}"),
        ],
        d,
    );
    ok(
        &[
            "charter",
            "genesis",
            "--federation",
            "solo",
            "--card",
            "alpha/member-card.json",
            "-o",
            "charter.note",
        ],
        d,
    );
    ok(&["charter", "sign", "alpha", "charter.note"], d);
    ok(&["charter", "accept", "alpha", "charter.note"], d);
    local
}

struct Node(Child);

impl Node {
    /// `concord node run DIR` in `cwd`, as a child process, its log lines in `cwd/DIR.log`.
    fn run(dir: &str, cwd: &Path) -> Self {
        let log = std::fs::File::create(cwd.join(format!("{dir}.log"))).expect("log file");
        Node(
            Command::new(env!("CARGO_BIN_EXE_concord"))
                .args(["node", "run", dir])
                .current_dir(cwd)
                .env("CONCORD_LOG", "info")
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .expect("node starts"),
        )
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        assert!(sent.success());
        self.0.wait().expect("node exits")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

#[test]
fn two_members_from_init_to_query_and_shutdown() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let card = init_two_members(d, &ports);
    genesis_signed_by_both(d);
    datasets_registered(d);
    csv_options_kept(d);
    let token = ok(&["token", "create", "alpha", "--role", "analyst"], d).trim().to_owned();
    let auditor = ok(&["token", "create", "alpha", "--role", "auditor"], d).trim().to_owned();
    let steward = ok(&["token", "create", "bravo", "--role", "steward"], d).trim().to_owned();
    let delegates: Vec<String> = ["alpha", "bravo"]
        .iter()
        .map(|m| ok(&["token", "create", m, "--role", "delegate"], d).trim().to_owned())
        .collect();

    let mut nodes: Vec<Node> = ["alpha", "bravo"].iter().map(|m| Node::run(m, d)).collect();
    let url = format!("http://127.0.0.1:{}", ports[0]);
    let sql = "SELECT region, count(*) AS n, sum(days) AS d FROM cases GROUP BY region ORDER BY region";
    first_federated_query(&url, &token, sql, d);
    analyst_habits(&url, &token, d);
    policies_checked_and_set(d);
    let bravo_url = format!("http://127.0.0.1:{}", ports[2]);
    bravo_cases_need_a_grant(&url, &bravo_url, &token, &steward, d);
    access_request_approved(&url, &bravo_url, &token, &steward, d);
    clear_refusals(&url, &token, sql, d);
    audit_for_auditors_only(&url, &token, &auditor, d);
    logs_shown_and_receipt_verified(&url, &auditor, &card, d);
    let urls = [url.clone(), format!("http://127.0.0.1:{}", ports[2])];
    proposal_adopted_as_version_2(&urls, &token, &delegates, d);
    let shown = version_2_shown(&urls, &auditor, &delegates, d);
    let c_local = charlie_initialised(d);
    charlie_added_and_joined(&urls, &ports, &shown, &delegates, d);
    nodes.push(charlie_queries_and_is_queried(c_local, &url, &token, d));
    backup_while_running(d);
    for n in nodes {
        let status = n.stop();
        assert!(status.success(), "a node stops cleanly on SIGTERM: {status}");
    }
    restored_backup_answers(&url, &token, d);
}

/// `concord init` for alpha and bravo; alpha's member card holds every public field.
fn init_two_members(d: &Path, ports: &[u16]) -> serde_json::Value {
    for (i, m) in ["alpha", "bravo"].iter().enumerate() {
        let out = ok(
            &[
                "init",
                m,
                "--member",
                m,
                "--federation",
                "test",
                "--name",
                &format!("Member {m}"),
                "--jurisdiction",
                "XX",
                "--local-listen",
                &format!("127.0.0.1:{}", ports[2 * i]),
                "--peer-listen",
                &format!("127.0.0.1:{}", ports[2 * i + 1]),
            ],
            d,
        );
        assert!(out.contains("verifier key: test/") && !out.contains("PRIVATE"), "{out}");
    }
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("alpha/member-card.json")).expect("card"))
            .expect("json");
    for key in ["id", "name", "jurisdiction", "vkey", "tls_pin", "peer_endpoint"] {
        assert!(card.get(key).is_some(), "member card lacks {key}: {card}");
    }
    card
}

/// The genesis charter: written, refused until both have signed, then accepted by both.
fn genesis_signed_by_both(d: &Path) {
    std::fs::write(
        d.join("cases.json"),
        r#"{"name": "cases", "columns": [{"name": "region", "type": "utf8"}, {"name": "days", "type": "int64"}]}"#,
    )
    .expect("schema");
    ok(
        &[
            "charter",
            "genesis",
            "--federation",
            "test",
            "--card",
            "alpha/member-card.json",
            "--card",
            "bravo/member-card.json",
            "--schema",
            "cases.json",
            "-o",
            "charter.note",
        ],
        d,
    );
    let err = fails(&["charter", "accept", "alpha", "charter.note"], d);
    assert!(err.contains("alpha") && err.contains("bravo") && err.contains("charter sign"), "{err}");
    ok(&["charter", "sign", "alpha", "charter.note"], d);
    let err = fails(&["charter", "accept", "alpha", "charter.note"], d);
    assert!(err.contains("[\"bravo\"]"), "{err}");
    ok(&["charter", "sign", "bravo", "charter.note"], d);
    for m in ["alpha", "bravo"] {
        ok(&["charter", "accept", m, "charter.note"], d);
    }
}

/// Both members' `cases` datasets: added, listed, shown, and not replaced without `--replace`.
fn datasets_registered(d: &Path) {
    std::fs::write(d.join("a.csv"), "region,days\nnorth,3\nsouth,5\nnorth,\n").expect("csv");
    std::fs::write(d.join("b.csv"), "region,days,extra\nnorth,10,x\neast,,y\n").expect("csv");
    ok(&["dataset", "add", "alpha", "cases", "--file", "a.csv", "--schema", "cases", "--allow", "*"], d);
    ok(&["dataset", "add", "bravo", "cases", "--file", "b.csv", "--schema", "cases", "--allow", "alpha"], d);
    let list: serde_json::Value =
        serde_json::from_str(&ok(&["dataset", "list", "bravo", "--format", "json"], d)).expect("json");
    assert_eq!(list[0]["name"], "cases");
    assert_eq!(list[0]["shared_schema"], "cases");
    assert_eq!(list[0]["rows"], 2);
    let shown = ok(&["dataset", "show", "bravo", "cases"], d);
    assert!(shown.contains("dataset cases (csv, 2 rows)") && shown.contains("  days BIGINT"), "{shown}");
    let err = fails(&["dataset", "add", "bravo", "cases", "--file", "b.csv", "--schema", "cases"], d);
    assert!(err.contains("--replace"), "{err}");
}

/// CSV options given at registration, shown, kept by a replacement; missing names named.
fn csv_options_kept(d: &Path) {
    // CSV options: given at registration, shown, kept by a replacement that gives none.
    std::fs::write(d.join("semi.csv"), "region;days\nnorth;NA\nsouth;4\n").expect("csv");
    let err = fails(&["dataset", "add", "bravo", "semi", "--file", "semi.csv", "--schema", "cases"], d);
    assert!(err.contains("is the delimiter ';'?") && err.contains("--delimiter"), "{err}");
    let added = ok(
        &[
            "dataset",
            "add",
            "bravo",
            "semi",
            "--file",
            "semi.csv",
            "--schema",
            "cases",
            "--delimiter",
            ";",
            "--null",
            "NA",
        ],
        d,
    );
    assert!(added.contains("2 rows") && added.contains("now has 2 datasets"), "{added}");
    let replaced =
        ok(&["dataset", "add", "bravo", "semi", "--file", "semi.csv", "--schema", "cases", "--replace"], d);
    assert!(replaced.contains("changed: nothing"), "the options stay: {replaced}");
    let shown = ok(&["dataset", "show", "bravo", "semi"], d);
    assert!(shown.contains("read with: delimiter ';', null \"NA\""), "{shown}");
    ok(&["dataset", "remove", "bravo", "semi"], d);
    let err = fails(&["dataset", "show", "bravo", "nope"], d);
    assert!(err.contains("no dataset nope"), "{err}");
    let err = fails(&["dataset", "add", "bravo", "gone", "--file", "missing.csv"], d);
    assert!(err.contains("missing.csv"), "{err}");
}

/// The first federated query, as CSV, as JSON with provenance, and as a table.
fn first_federated_query(url: &str, token: &str, sql: &str, d: &Path) {
    let csv = query_when_up(url, token, sql, d);
    assert_eq!(csv, "region,n,d\neast,1,\nnorth,3,13\nsouth,1,5\n");

    let json: serde_json::Value = serde_json::from_str(&ok(
        &["query", "--node", url, "--token", token, "--format", "json", "--provenance", sql],
        d,
    ))
    .expect("json");
    assert_eq!(json["rows"][1], serde_json::json!({"region": "north", "n": 3, "d": 13}));
    let prov = json["provenance"].as_array().expect("provenance");
    assert_eq!(prov.len(), 2);
    assert_eq!(prov[1]["member"], "bravo");
    assert_eq!(prov[1]["rows_scanned"], 2);
    assert!(prov[1]["receipt_digest"].as_str().is_some_and(|s| s.starts_with("sha256:")));

    let table = ok(&["query", "--node", url, "--token", token, "--provenance", sql], d);
    assert!(table.contains("| north  | 3 | 13 |") && table.contains("provenance:"), "{table}");
}

/// Policies checked offline and set on bravo's `cases`; a bad one changes nothing.
fn policies_checked_and_set(d: &Path) {
    // Policies, while the nodes run: checked offline, set, shown; a bad one names its line and
    // changes nothing.
    let policy = r#"classification = "important"
[columns]
region = "group"
days = "aggregate"
[access]
rules = '''
permit (principal, action == Action::"aggregate", resource) when { context.granted_actions.contains("aggregate") };
permit (principal, action == Action::"describe", resource);
'''
"#;
    std::fs::write(d.join("cases.policy.toml"), policy).expect("policy");
    std::fs::write(d.join("bad.policy.toml"), policy.replace("\"group\"", "\"groop\"")).expect("policy");
    let checked = ok(&["policy", "check", "cases.policy.toml"], d);
    assert!(checked.contains("valid (important"), "{checked}");
    let err = fails(&["policy", "check", "bad.policy.toml"], d);
    assert!(err.contains("bad.policy.toml line 3") && err.contains("groop"), "{err}");
    let before = ok(&["policy", "show", "bravo", "cases"], d);
    let err = fails(&["policy", "set", "bravo", "cases", "bad.policy.toml"], d);
    assert!(err.contains("line 3"), "{err}");
    assert_eq!(ok(&["policy", "show", "bravo", "cases"], d), before, "nothing half-applied");
    let set = ok(&["policy", "set", "bravo", "cases", "cases.policy.toml"], d);
    assert!(set.contains("policy of cases set: important"), "{set}");
    assert!(ok(&["policy", "show", "bravo", "cases"], d).contains("classification = \"important\""));
}

/// The query of bravo's `cases` that needs an approved access request.
const BRAVO_SQL: &str = "SELECT region, count(*) AS n FROM bravo.cases GROUP BY region ORDER BY region";

/// Bravo's important `cases` refuses alpha's aggregate until an access request is approved.
fn bravo_cases_need_a_grant(url: &str, bravo_url: &str, token: &str, steward: &str, d: &Path) {
    // Bravo's cases is important: alpha's analyst files an access request, bravo's steward
    // approves it, and the query that needed it works.
    let err = fails(&["query", "--node", url, "--token", token, BRAVO_SQL], d);
    assert!(err.contains("approved access request"), "{err}");
    let tested = ok(
        &[
            "policy",
            "test",
            "--node",
            bravo_url,
            "--token",
            steward,
            "--as",
            "alpha",
            "cases",
            "SELECT count(*) FROM cases",
        ],
        d,
    );
    assert!(tested.contains("action aggregate: refused") && tested.contains("access request"), "{tested}");
}

/// Alpha's analyst files an access request; bravo's steward lists and approves it; the query works.
fn access_request_approved(url: &str, bravo_url: &str, token: &str, steward: &str, d: &Path) {
    let filed = ok(
        &[
            "access",
            "request",
            "--node",
            url,
            "--token",
            token,
            "--dataset",
            "bravo.cases",
            "--action",
            "aggregate",
            "--purpose",
            "analysis",
            "--legal-basis",
            "the federation's charter",
        ],
        d,
    );
    let id = filed.lines().last().and_then(|l| l.split_whitespace().last()).expect("id").to_owned();
    let listed = ok(&["access", "list", "--node", bravo_url, "--token", steward], d);
    assert!(listed.contains(&id) && listed.contains("pending"), "{listed}");
    let err = fails(&["access", "approve", "--node", bravo_url, "--token", steward, "nope"], d);
    assert!(err.contains("no access request nope"), "{err}");
    let approved = ok(&["access", "approve", "--node", bravo_url, "--token", steward, &id, "--days", "1"], d);
    assert!(approved.contains("(aggregate)") && approved.contains("status approved"), "{approved}");
    let table = ok(&["query", "--node", url, "--token", token, "--provenance", BRAVO_SQL], d);
    assert!(table.contains(&format!("under grant {id}")), "{table}");
}

/// Reading rows and an unknown token are refused with clear errors.
fn clear_refusals(url: &str, token: &str, sql: &str, d: &Path) {
    let err = fails(&["query", "--node", url, "--token", token, "SELECT * FROM cases"], d);
    assert!(
        err.lines().any(|l| l.starts_with("error: "))
            && err.contains("read_rows")
            && err.contains("What works"),
        "{err}"
    );
    let err = fails(&["query", "--node", url, "--token", "concord_wrong", sql], d);
    assert!(err.contains("unknown token"), "{err}");
}

/// `concord audit`: refused to an analyst, passed for alpha's auditor once bravo's log is in.
fn audit_for_auditors_only(url: &str, token: &str, auditor: &str, d: &Path) {
    // The transparency logs: audited, shown, and an offline receipt checked; only by an auditor.
    let err = fails(&["audit", "--node", url, "--token", token, "--all"], d);
    assert!(err.contains("role analyst may not") && err.contains("auditor"), "{err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = concord(&["audit", "--node", url, "--token", auditor, "--all"], d);
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(text.contains("audit passed") && text.contains("bravo"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "audit never passed: {}", String::from_utf8_lossy(&out.stdout));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `concord log show` with its filters, and a receipt verified offline (a tampered one fails).
fn logs_shown_and_receipt_verified(url: &str, auditor: &str, card: &serde_json::Value, d: &Path) {
    let shown = ok(&["log", "show", "alpha"], d);
    assert!(shown.contains("keys_set") && shown.contains("access_made"), "{shown}");
    assert!(shown.contains("receipt verified") && !shown.contains("DOES NOT VERIFY"), "{shown}");
    assert!(
        shown.lines().nth(1).is_some_and(|l| l.contains("T") && l.contains("Z ")),
        "RFC 3339 times: {shown}"
    );
    let made =
        ok(&["log", "show", "alpha", "--kind", "access_made", "--member", "bravo", "--format", "json"], d);
    let lines: Vec<serde_json::Value> =
        made.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert!(
        !lines.is_empty()
            && lines.iter().all(|l| l["kind"] == "access_made" && l["receipt_verified"] == true),
        "{made}"
    );
    assert!(lines.iter().all(|l| l["parties"] == serde_json::json!(["bravo"])), "{made}");
    let none = ok(&["log", "show", "alpha", "--since", "2999-01-01", "--format", "json"], d);
    assert!(none.is_empty(), "{none}");
    let err = fails(&["log", "show", "alpha", "--kind", "nonsense"], d);
    assert!(err.contains("access_made"), "{err}");
    let raw = ok(&["log", "show", "alpha", "--raw"], d);
    assert!(raw.contains("\"kind\":\"keys_set\""), "{raw}");
    let receipt = ok(&["log", "receipt", "--node", url, "--token", auditor, "0"], d);
    std::fs::write(d.join("r.tlog-proof"), &receipt).expect("write");
    let vkey = card["vkey"].as_str().expect("vkey").to_owned();
    let verified = ok(&["log", "verify-receipt", "r.tlog-proof", "--vkey", &vkey], d);
    assert!(verified.contains("valid: entry 0"), "{verified}");
    std::fs::write(d.join("bad.tlog-proof"), receipt.replacen("index 0", "index 1", 1)).expect("write");
    let err = fails(&["log", "verify-receipt", "bad.tlog-proof", "--vkey", &vkey], d);
    assert!(err.contains("proof failed"), "{err}");
}

/// A proposal only a delegate may make, voted yes by both delegates and adopted as version 2.
fn proposal_adopted_as_version_2(urls: &[String], token: &str, delegates: &[String], d: &Path) {
    // Governance: a proposal, votes from both delegates, version 2 on both nodes.
    let err = fails(&["propose", "--node", &urls[0], "--token", token, "--min-group-size", "12"], d);
    assert!(err.contains("delegate"), "{err}");
    for bad in ["0", "many"] {
        let err =
            fails(&["propose", "--node", &urls[0], "--token", &delegates[0], "--witnesses-per-log", bad], d);
        assert!(err.contains("--witnesses-per-log") && err.contains("`all`"), "{err}");
    }
    let out = ok(
        &[
            "propose",
            "--node",
            &urls[0],
            "--token",
            &delegates[0],
            "--min-group-size",
            "12",
            "--expires",
            "1d",
        ],
        d,
    );
    let id = out.split_whitespace().last().expect("an id").to_owned();
    assert!(out.contains("minimum group size 12") && id.len() == 64, "{out}");
    assert!(
        out.contains("this member voted yes: 1 of 2 yes votes; 1 more needed"),
        "the proposer's own yes: {out}"
    );
    let err = fails(&["vote", "--node", &urls[0], "--token", &delegates[0], &id, "yes"], d);
    assert!(err.contains("already known"), "{err}");
    let err = fails(&["propose", "--node", &urls[0], "--token", &delegates[0], "--min-group-size", "10"], d);
    assert!(err.contains("changes nothing"), "a proposal that changes nothing: {err}");
    let listed = ok(&["proposals", "--node", &urls[1], "--token", &delegates[1]], d);
    assert!(
        listed.contains(&id) && listed.contains("[live]") && listed.contains("yes 1 of 2 (alpha)"),
        "{listed}"
    );
    let voted =
        ok(&["vote", "--node", &urls[1], "--token", &delegates[1], &id, "yes", "--reason", "agreed"], d);
    assert!(voted.contains("adopted") && voted.contains("version 2"), "{voted}");
}

/// Charter version 2 shown on bravo's node, chained to the genesis, and in alpha's history.
fn version_2_shown(urls: &[String], auditor: &str, delegates: &[String], d: &Path) -> serde_json::Value {
    let shown: serde_json::Value = serde_json::from_str(&ok(
        &["charter", "show", "--node", &urls[1], "--token", &delegates[1], "--format", "json"],
        d,
    ))
    .expect("json");
    assert_eq!(shown["version"], 2);
    assert_eq!(shown["min_group_size"], 12);
    assert_eq!((shown["witnesses_per_log"].as_u64(), shown["witness_quorum"].as_u64()), (Some(1), Some(1)));
    let text = ok(&["charter", "show", "--node", &urls[1], "--token", &delegates[1]], d);
    assert!(text.contains("witness quorum 1 of the 1 witnesses of each log"), "{text}");
    assert_eq!(shown["members"].as_array().map(Vec::len), Some(2));
    let first: serde_json::Value = serde_json::from_str(&ok(
        &[
            "charter",
            "show",
            "--node",
            &urls[1],
            "--token",
            &delegates[1],
            "--version",
            "1",
            "--format",
            "json",
        ],
        d,
    ))
    .expect("json");
    assert_eq!(shown["genesis"], first["digest"]);
    let history = ok(&["charter", "history", "--node", &urls[0], "--token", auditor], d);
    assert!(history.contains("version 1 of test") && history.contains("version 2 of test"), "{history}");
    assert!(history.contains("changed from version 1: minimum group size 12"), "{history}");
    assert!(history.contains("shared schemas:") && history.contains("cases v1: region"), "{history}");
    shown
}

/// `concord init charlie`: an unspecified peer address needs `--advertise`; returns its local port.
fn charlie_initialised(d: &Path) -> u16 {
    // A third member: its card, a version that names it, `join`, and a node that queries.
    let (c_local, c_peer) = (free_port(), free_port());
    let err = fails(
        &["init", "charlie", "--member", "charlie", "--federation", "test", "--peer-listen", "0.0.0.0:7101"],
        d,
    );
    assert!(err.contains("unspecified address") && err.contains("--advertise"), "{err}");
    ok(
        &[
            "init",
            "charlie",
            "--member",
            "charlie",
            "--federation",
            "test",
            "--local-listen",
            &format!("127.0.0.1:{c_local}"),
            "--peer-listen",
            &format!("0.0.0.0:{c_peer}"),
            "--advertise",
            &format!("127.0.0.1:{c_peer}"),
        ],
        d,
    );
    c_local
}

/// Charlie's `join` waits for a version naming it; once adopted, it joins at version 3.
fn charlie_added_and_joined(
    urls: &[String],
    ports: &[u16],
    shown: &serde_json::Value,
    delegates: &[String],
    d: &Path,
) {
    let alpha_peer = format!("https://127.0.0.1:{}", ports[1]);
    let genesis = shown["genesis"].as_str().expect("genesis").to_owned();
    let err = fails(&["join", "charlie", "--peer", &alpha_peer, "--genesis", &genesis], d);
    assert!(err.contains("--add-member"), "{err}");
    let out = ok(
        &[
            "propose",
            "--node",
            &urls[0],
            "--token",
            &delegates[0],
            "--add-member",
            "charlie/member-card.json",
        ],
        d,
    );
    let id = out.split_whitespace().last().expect("an id").to_owned();
    let voted = ok(&["vote", "--node", &urls[1], "--token", &delegates[1], &id, "yes"], d);
    assert!(voted.contains("adopted") && voted.contains("version 3"), "{voted}");
    let joined = ok(&["join", "charlie", "--peer", &alpha_peer, "--genesis", &genesis], d);
    assert!(joined.contains("charter version 3 (3 members)"), "{joined}");
    // Another process reads what the running node committed: offline commands beside a live
    // node see its charter versions (the node never drops SQLite's locks on its database).
    let err = fails(&["dataset", "add", "alpha", "x", "--file", "a.csv", "--allow", "zed"], d);
    assert!(err.contains("charter version 3") && err.contains("alpha, bravo, charlie"), "{err}");
}

/// Charlie's node runs, queries alpha's data and is queried by alpha; returns the running node.
fn charlie_queries_and_is_queried(c_local: u16, url: &str, token: &str, d: &Path) -> Node {
    std::fs::write(
        d.join("c.csv"),
        "region,days
west,4
",
    )
    .expect("csv");
    ok(&["dataset", "add", "charlie", "cases", "--file", "c.csv", "--schema", "cases", "--allow", "*"], d);
    let c_token = ok(&["token", "create", "charlie", "--role", "analyst"], d).trim().to_owned();
    let charlie = Node::run("charlie", d);
    let c_url = format!("http://127.0.0.1:{c_local}");
    let c_sql = "SELECT count(*) AS n FROM alpha.cases";
    let out = query_when_up(&c_url, &c_token, c_sql, d);
    assert_eq!(out, "n\n3\n");
    let out = ok(
        &[
            "query",
            "--node",
            url,
            "--token",
            token,
            "--format",
            "csv",
            "SELECT count(*) AS n FROM charlie.cases",
        ],
        d,
    );
    assert_eq!(out, "n\n1\n");
    charlie
}

/// A backup of alpha while its node runs: whole, not overwritten, its secrets private.
fn backup_while_running(d: &Path) {
    // A backup while the node runs: whole, private, and a node runs from it.
    let out = ok(&["backup", "alpha", "--to", "alpha-backup"], d);
    assert!(
        out.contains("alpha-backup/state.db") && out.contains("not copied") && out.contains("a.csv"),
        "{out}"
    );
    let err = fails(&["backup", "alpha", "--to", "alpha-backup"], d);
    assert!(err.contains("exists"), "{err}");
    use std::os::unix::fs::PermissionsExt as _;
    for f in ["state.db", "keys/member.key", "keys/tls.key", "concord.toml"] {
        let mode = std::fs::metadata(d.join("alpha-backup").join(f)).expect(f).permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
}

/// Alpha restored from its backup: the three nodes run again and answer as before.
fn restored_backup_answers(url: &str, token: &str, d: &Path) {
    // Restored: the backup in place of the folder, and the node answers as before.
    std::fs::rename(d.join("alpha"), d.join("alpha-old")).expect("move");
    std::fs::rename(d.join("alpha-backup"), d.join("alpha")).expect("restore");
    let nodes: Vec<Node> = ["alpha", "bravo", "charlie"].iter().map(|m| Node::run(m, d)).collect();
    let out = query_when_up(url, token, "SELECT count(*) AS n FROM cases", d);
    assert_eq!(out, "n\n6\n", "3 + 2 + 1 rows, the restored charter naming all three");
    for n in nodes {
        assert!(n.stop().success());
    }
}

/// What an analyst does every day: the node and token from the environment or a profile, SQL
/// from a file or standard input, what a query may name, output fit for pipes and log files.
fn analyst_habits(url: &str, token: &str, d: &Path) {
    let text = |o: &Output| {
        (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let env = [("CONCORD_NODE", url), ("CONCORD_TOKEN", token)];
    let sql = "SELECT count(*) AS n FROM cases";
    let (expected, _) = text(&concord_env(&["query", "--format", "csv", sql], d, &env, ""));
    assert_eq!(expected, "n\n5\n");
    let (out, err) = text(&concord_env(&["query", "--format", "csv", sql], d, &env, ""));
    assert_eq!((out.as_str(), err.as_str()), (expected.as_str(), ""), "no warning with CONCORD_TOKEN");
    let (out, err) =
        text(&concord_env(&["query", "--node", url, "--token", token, "--format", "csv", sql], d, &[], ""));
    assert_eq!(out, expected);
    assert!(err.contains("process list"), "a token on the command line is warned about: {err}");
    let (out, _) = text(&concord_env(&["query", "--format", "csv", "-"], d, &env, sql));
    assert_eq!(out, expected, "SQL from standard input");
    std::fs::write(d.join("q.sql"), format!("-- a saved query\n{sql}\n")).expect("sql file");
    let (out, _) = text(&concord_env(&["query", "--format", "csv", "-f", "q.sql"], d, &env, ""));
    assert_eq!(out, expected, "SQL from a file");
    let o = concord_env(&["query", sql], d, &[], "");
    assert!(!o.status.success() && text(&o).1.contains("CONCORD_NODE"), "{}", text(&o).1);

    // A profile, readable by its owner only.
    let profile = d.join("profile.toml");
    let penv = [("CONCORD_PROFILE", profile.to_str().expect("utf8"))];
    let o = concord_env(&["login", "--node", url, "--token-stdin"], d, &penv, &format!("{token}\n"));
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.contains("as analyst"), "{}", text(&o).0);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&profile).expect("profile").permissions().mode() & 0o777, 0o600);
    let (out, _) = text(&concord_env(&["query", "--format", "csv", sql], d, &penv, ""));
    assert_eq!(out, expected, "node and token from the profile");
    std::fs::set_permissions(&profile, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let o = concord_env(&["query", sql], d, &penv, "");
    assert!(!o.status.success() && text(&o).1.contains("chmod 600"), "{}", text(&o).1);
    let o = concord_env(&["login", "--node", url, "--token-stdin"], d, &penv, "concord_wrong\n");
    assert!(!o.status.success() && text(&o).1.contains("unknown token"), "{}", text(&o).1);

    // What a query may name: SHOW TABLES, SHOW COLUMNS, information_schema, `concord tables`.
    let (out, _) = text(&concord_env(&["query", "--format", "csv", "SHOW TABLES"], d, &env, ""));
    for t in [",public,cases,", ",bravo,cases,", ",local,cases,"] {
        assert!(out.contains(t), "SHOW TABLES lists {t}: {out}");
    }
    let (out, _) =
        text(&concord_env(&["query", "--format", "csv", "SHOW COLUMNS FROM bravo.cases"], d, &env, ""));
    assert!(out.contains("region") && out.contains("days"), "{out}");
    let cols = "SELECT column_name FROM information_schema.columns WHERE table_schema = 'bravo' AND table_name = 'cases' ORDER BY column_name";
    let (out, _) = text(&concord_env(&["query", "--format", "csv", cols], d, &env, ""));
    assert_eq!(out, "column_name\ndays\nextra\nregion\n", "bravo's dataset has a column of its own");
    let (out, _) = text(&concord_env(&["tables", "--format", "json"], d, &env, ""));
    let tables: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(tables["warnings"], serde_json::json!([]), "every member's catalog was read");
    let find =
        |name: &str| tables["tables"].as_array().and_then(|a| a.iter().find(|t| t["name"] == name).cloned());
    let shared = find("cases").expect("the shared schema");
    assert_eq!(shared["kind"], "federated");
    assert_eq!(
        shared["columns"][1],
        serde_json::json!({"name": "days", "sql_type": "BIGINT", "nullable": true})
    );
    assert_eq!(find("bravo.cases").expect("bravo's dataset")["kind"], "member_dataset");
    assert_eq!(find("local.cases").expect("alpha's own")["kind"], "local");
    let (out, _) = text(&concord_env(&["tables"], d, &env, ""));
    assert!(
        out.contains("bravo.cases") && out.contains("member dataset") && out.contains("days BIGINT"),
        "{out}"
    );
    let o = concord_env(&["query", "SELECT * FROM bravo.casez"], d, &env, "");
    assert!(text(&o).1.contains("bravo.cases"), "did you mean: {}", text(&o).1);

    // Nothing coloured where no terminal reads it: not the CLI's errors, not the node's log,
    // which has one line per query and neither its SQL nor its values.
    let o = concord_env(&["query", "SELEC 1"], d, &env, "");
    assert!(!text(&o).1.contains('\u{1b}'), "{:?}", text(&o).1);
    let log = std::fs::read_to_string(d.join("alpha.log")).expect("alpha's log");
    assert!(log.contains("query answered") && log.contains("query failed"), "{log}");
    assert!(!log.contains('\u{1b}') && !log.contains("SELECT") && !log.contains("SELEC 1"), "{log}");

    // `| head`: a closed pipe ends the command quietly.
    let mut child = Command::new(concord_bin())
        .args(["api", "openapi"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    drop(child.stdout.take());
    let o = child.wait_with_output().expect("ends");
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "{:?} {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}
