//! Every fuzz target's corpus (`fuzz/corpus/<target>/`), replayed on the stable toolchain:
//! what the fuzzers found or were seeded with must never panic again.

#[test]
fn every_fuzz_corpus_replays_without_a_panic() {
    // The fuzzers ran optimised, on an 8 MiB main thread; unoptimised frames are several times
    // larger, so the replay gets a stack to match (the node's runtime threads have 16 MiB).
    std::thread::Builder::new()
        .stack_size(64 * 1024 * 1024)
        .spawn(replay)
        .expect("thread")
        .join()
        .expect("replay");
}

fn replay() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (target, run) in concord_lab::fuzz::TARGETS {
        let dir = root.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        assert!(files.len() >= 2, "{target} has a corpus ({} files)", files.len());
        for (i, f) in files.iter().enumerate() {
            let data = std::fs::read(f).expect("read");
            run(&data);
            // Prefixes too (cut input is what a peer that hangs up sends), of the first few.
            if i < 200 {
                for cut in [0, data.len() / 2, data.len().saturating_sub(1)] {
                    run(&data[..cut]);
                }
            }
        }
    }
}
