//! Two members in two network namespaces, joined by a virtual Ethernet pair: each node listens
//! for peers on every address and advertises the one the other member reaches it at, and a
//! federated query crosses between them. Needs root (to make namespaces); where that is not
//! allowed the test says so and passes without running.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{concord_bin, ok};

/// Runs `ip ARGS`, returning its error output when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip cannot run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Two namespaces joined by a veth pair; removed (with the pair) when dropped.
struct Namespaces {
    names: [String; 2],
}

impl Namespaces {
    fn make(subnet: &str) -> Result<Self, String> {
        let id = std::process::id();
        let names = [format!("cc{id}a"), format!("cc{id}b")];
        ip(&["netns", "add", &names[0]])?;
        let made = Self { names: names.clone() };
        ip(&["netns", "add", &names[1]])?;
        let (va, vb) = (format!("v{id}a"), format!("v{id}b"));
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        for (ns, dev, host) in [(&names[0], &va, 1), (&names[1], &vb, 2)] {
            ip(&["link", "set", dev, "netns", ns])?;
            ip(&["-n", ns, "addr", "add", &format!("{subnet}.{host}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(made)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = ip(&["netns", "del", n]);
        }
    }
}

/// `concord ARGS` inside namespace `ns`.
fn in_ns(ns: &str, args: &[&str], cwd: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, concord_bin()]).args(args).current_dir(cwd);
    c
}

struct NsNode(Child);

impl Drop for NsNode {
    fn drop(&mut self) {
        // `ip netns exec` execs the node itself, so this is the node's pid.
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_members_in_two_network_namespaces_answer_a_federated_query() {
    let Some((subnet, nets)) = namespaces_if_allowed() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    init_members_advertising(&subnet, d);
    genesis_signed_and_accepted(d);
    datasets_added(d);
    let token = ok(&["token", "create", "alpha", "--role", "analyst"], d).trim().to_owned();

    let _alpha = spawn(&nets.names[0], "alpha", d);
    let _bravo = spawn(&nets.names[1], "bravo", d);
    // Neither address is one of this namespace's own: the query's way runs between the two.
    let here = Command::new("ip").args(["-o", "addr", "show"]).output().expect("ip runs");
    assert!(!String::from_utf8_lossy(&here.stdout).contains(&format!("{subnet}.")), "the pair is not ours");

    let csv = query_until_answered(&nets.names[0], &token, d);
    assert_eq!(csv, "region,n,total\neast,1,\nnorth,2,11.30\nsouth,1,2.50\n");
}

/// The subnet and the two namespaces, or `None` (having said why) where they cannot be made.
fn namespaces_if_allowed() -> Option<(String, Namespaces)> {
    let root =
        Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !matches!(root, Ok(true)) {
        eprintln!("skipped: the two-namespace federation needs root to make network namespaces (ip netns)");
        return None;
    }
    let subnet = format!("10.77.{}", std::process::id() % 250);
    match Namespaces::make(&subnet) {
        Ok(n) => Some((subnet, n)),
        Err(why) => {
            eprintln!("skipped: network namespaces are not allowed here: {why}");
            None
        }
    }
}

/// `concord init` for both members, each advertising its namespace's address for peers.
fn init_members_advertising(subnet: &str, d: &Path) {
    // Each node takes peers on every address of its namespace and advertises the address the
    // other member reaches it at.
    for (i, m) in ["alpha", "bravo"].iter().enumerate() {
        ok(
            &[
                "init",
                m,
                "--member",
                m,
                "--federation",
                "netns",
                "--local-listen",
                "127.0.0.1:7000",
                "--peer-listen",
                "0.0.0.0:7001",
                "--advertise",
                &format!("{subnet}.{}:7001", i + 1),
            ],
            d,
        );
    }
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("bravo/member-card.json")).expect("card"))
            .expect("json");
    assert_eq!(card["peer_endpoint"], format!("{subnet}.2:7001"), "the card carries the advertised address");
}

/// The genesis charter with the shared schema `cases`, signed and accepted by both.
fn genesis_signed_and_accepted(d: &Path) {
    std::fs::write(
        d.join("cases.json"),
        r#"{"name": "cases", "columns": [{"name": "region", "type": "utf8"}, {"name": "amount", "type": "decimal(12,2)"}]}"#,
    )
    .expect("schema");
    ok(
        &[
            "charter",
            "genesis",
            "--federation",
            "netns",
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
    for m in ["alpha", "bravo"] {
        ok(&["charter", "sign", m, "charter.note"], d);
    }
    for m in ["alpha", "bravo"] {
        ok(&["charter", "accept", m, "charter.note"], d);
    }
}

/// Each member's `cases`: alpha's plain CSV, bravo's with `;` and `NA` for null.
fn datasets_added(d: &Path) {
    std::fs::write(d.join("a.csv"), "region,amount\nnorth,1.25\nsouth,2.50\n").expect("csv");
    std::fs::write(d.join("b.csv"), "region;amount\nnorth;10.05\neast;NA\n").expect("csv");
    ok(&["dataset", "add", "alpha", "cases", "--file", "a.csv", "--schema", "cases", "--allow", "*"], d);
    ok(
        &[
            "dataset",
            "add",
            "bravo",
            "cases",
            "--file",
            "b.csv",
            "--schema",
            "cases",
            "--allow",
            "*",
            "--delimiter",
            ";",
            "--null",
            "NA",
        ],
        d,
    );
}

/// Member `m`'s node, run in namespace `ns`.
fn spawn(ns: &str, m: &str, d: &Path) -> NsNode {
    NsNode(
        in_ns(ns, &["node", "run", m], d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node starts"),
    )
}

/// Alpha's analyst queries from inside namespace `ns` until an answer comes (60 s at most).
fn query_until_answered(ns: &str, token: &str, d: &Path) -> String {
    let sql = "SELECT region, count(*) AS n, sum(amount) AS total FROM cases GROUP BY region ORDER BY region";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = in_ns(
            ns,
            &["query", "--node", "http://127.0.0.1:7000", "--token", token, "--format", "csv", sql],
            d,
        )
        .output()
        .expect("query runs");
        if out.status.success() {
            break String::from_utf8(out.stdout).expect("utf8");
        }
        assert!(
            Instant::now() < deadline,
            "no answer across namespaces: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
