use concord_log::merkle::{
    MemoryTree, consistency_proof, inclusion_proof, root, verify_consistency, verify_inclusion,
};
use proptest::prelude::*;

fn tree(n: u64) -> MemoryTree {
    let mut t = MemoryTree::new();
    for i in 0..n {
        t.append(&i.to_be_bytes());
    }
    t
}

fn bytes(p: &[[u8; 32]]) -> Vec<Vec<u8>> {
    p.iter().map(|h| h.to_vec()).collect()
}

#[test]
fn all_proofs_verify_for_every_index_and_size_up_to_1024_leaves() {
    const N: u64 = 1024;
    let t = tree(N);
    let roots: Vec<[u8; 32]> = (0..=N).map(|n| root(&t, n).expect("root")).collect();
    for size in 1..=N {
        for index in 0..size {
            let p = inclusion_proof(&t, index, size).expect("proof");
            let leaf = concord_log::merkle::leaf_hash(&index.to_be_bytes());
            verify_inclusion(index, size, &leaf, &bytes(&p), &roots[size as usize])
                .expect("inclusion verifies");
        }
        for old in 1..=size {
            let p = consistency_proof(&t, old, size).expect("proof");
            verify_consistency(old, size, &bytes(&p), &roots[old as usize], &roots[size as usize])
                .expect("consistency verifies");
        }
    }
}

fn flip(v: &mut [u8], bit: usize) {
    v[bit / 8 % v.len()] ^= 1 << (bit % 8);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn proofs_verify_and_any_bit_flip_fails(size in 1u64..4000, a in any::<u64>(), b in any::<u64>(), bit in any::<usize>()) {
        let t = tree(size);
        let index = a % size;
        let leaf = concord_log::merkle::leaf_hash(&index.to_be_bytes());
        let r = root(&t, size).expect("root");
        let p = bytes(&inclusion_proof(&t, index, size).expect("proof"));
        prop_assert!(verify_inclusion(index, size, &leaf, &p, &r).is_ok());
        // Flip one bit of the leaf, the root, or one proof hash.
        let mut l2 = leaf.to_vec(); flip(&mut l2, bit);
        prop_assert!(verify_inclusion(index, size, &l2, &p, &r).is_err());
        let mut r2 = r.to_vec(); flip(&mut r2, bit);
        prop_assert!(verify_inclusion(index, size, &leaf, &p, &r2).is_err());
        if !p.is_empty() {
            let mut p2 = p.clone();
            let k = bit % p2.len();
            flip(&mut p2[k], bit / 7);
            prop_assert!(verify_inclusion(index, size, &leaf, &p2, &r).is_err());
        }

        let old = 1 + b % size;
        let r1 = root(&t, old).expect("root");
        let c = bytes(&consistency_proof(&t, old, size).expect("proof"));
        prop_assert!(verify_consistency(old, size, &c, &r1, &r).is_ok());
        let mut r1b = r1.to_vec(); flip(&mut r1b, bit);
        prop_assert!(verify_consistency(old, size, &c, &r1b, &r).is_err());
        prop_assert!(verify_consistency(old, size, &c, &r1, &r2).is_err());
        if !c.is_empty() {
            let mut c2 = c.clone();
            let k = bit % c2.len();
            flip(&mut c2[k], bit / 7);
            prop_assert!(verify_consistency(old, size, &c2, &r1, &r).is_err());
        }
    }
}
