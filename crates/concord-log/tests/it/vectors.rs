//! `testdata/merkle`: copied unchanged from transparency-dev/merkle (see its README and LICENSE).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use concord_log::merkle::{MemoryTree, root, verify_consistency, verify_inclusion};
use serde::Deserialize;

fn dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/merkle").join(kind)
}

fn files(kind: &str) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(p).expect("testdata folder") {
            let e = e.expect("entry").path();
            if e.is_dir() {
                walk(&e, out);
            } else if e.extension().is_some_and(|x| x == "json") {
                out.push(e);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dir(kind), &mut out);
    out.sort();
    out
}

fn b64(s: &str) -> Vec<u8> {
    B64.decode(s).expect("test vector base64")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Inclusion {
    leaf_idx: u64,
    tree_size: u64,
    root: String,
    leaf_hash: String,
    proof: Option<Vec<String>>,
    desc: String,
    want_err: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Consistency {
    size1: u64,
    size2: u64,
    root1: String,
    root2: String,
    proof: Option<Vec<String>>,
    desc: String,
    want_err: bool,
}

#[test]
fn every_inclusion_vector() {
    let cases = files("inclusion");
    assert!(cases.len() > 50, "the vectors are there");
    let (mut good, mut bad) = (0, 0);
    for f in cases {
        let c: Inclusion = serde_json::from_slice(&std::fs::read(&f).expect("read")).expect("json");
        let proof: Vec<Vec<u8>> = c.proof.unwrap_or_default().iter().map(|p| b64(p)).collect();
        let got = verify_inclusion(c.leaf_idx, c.tree_size, &b64(&c.leaf_hash), &proof, &b64(&c.root));
        assert_eq!(got.is_err(), c.want_err, "{}: {} -> {got:?}", f.display(), c.desc);
        if c.want_err { bad += 1 } else { good += 1 }
    }
    assert!(good > 0 && bad > good, "{good} happy paths, {bad} negative cases");
}

#[test]
fn every_consistency_vector() {
    let cases = files("consistency");
    assert!(cases.len() > 50, "the vectors are there");
    for f in cases {
        let c: Consistency = serde_json::from_slice(&std::fs::read(&f).expect("read")).expect("json");
        let proof: Vec<Vec<u8>> = c.proof.unwrap_or_default().iter().map(|p| b64(p)).collect();
        let got = verify_consistency(c.size1, c.size2, &proof, &b64(&c.root1), &b64(&c.root2));
        assert_eq!(got.is_err(), c.want_err, "{}: {} -> {got:?}", f.display(), c.desc);
    }
}

#[test]
fn roots_of_the_reference_leaves() {
    let leaves: [&[u8]; 8] = [
        b"",
        &[0x00],
        &[0x10],
        &[0x20, 0x21],
        &[0x30, 0x31],
        &[0x40, 0x41, 0x42, 0x43],
        &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
        &[0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f],
    ];
    let want = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    let mut tree = MemoryTree::new();
    let hex = |h: [u8; 32]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(hex(tree.root()), want[0]);
    for (n, leaf) in leaves.iter().enumerate() {
        tree.append(leaf);
        assert_eq!(hex(tree.root()), want[n + 1], "root of {} leaves", n + 1);
        assert_eq!(
            hex(root(&tree, (n + 1) as u64).expect("root")),
            want[n + 1],
            "stored root of {} leaves",
            n + 1
        );
    }
}
