//! Nodes killed with SIGKILL at random moments while analysts query, twelve times over (the
//! benchmark `concord bench crash` runs the same a hundred times): every answer an analyst
//! received is in both logs, and the audit afterwards passes, naming the accesses that were
//! served but never received instead of calling them hidden.

use std::path::PathBuf;

use concord_lab::crash_bench::{CrashOptions, run};

/// Six free ports from 20000 to 32699: below Linux's ephemeral range (from 32768), where the
/// nodes' and the analysts' own outgoing connections take their source ports and could take a
/// killed node's port before it restarts; above the 15000–19999 of the other tests here.
fn base_port() -> u16 {
    let mut base = 20_000 + (std::process::id() % 120) as u16 * 100;
    loop {
        if (base..base + 6).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
        base += 6;
        if base > 32_700 {
            base = 20_000;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_killed_at_random_while_analysts_query_leave_logs_that_tell_one_story() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = CrashOptions {
        dir: tmp.path().join("federation"),
        cycles: 12,
        port_base: base_port(),
        exe: PathBuf::from(env!("CARGO_BIN_EXE_concord")),
        seed: 0x5eed_cafe,
    };
    let report = run(&opts, &|_| {}).await.expect("every node came back after each kill");
    assert_eq!(report.kills.values().sum::<usize>(), 12);
    assert!(report.received > 20, "the analysts received answers throughout ({})", report.received);
    assert!(report.lost.is_empty(), "answers received but not in both logs: {:?}", report.lost);
    assert!(report.audit_passed, "the audit never passed: {}", report.audit);
    eprintln!("{} answers received; {} releases served but not received", report.received, report.unreceived);
}
