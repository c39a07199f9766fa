//! RFC 6962 / RFC 9162 Merkle trees: hashing, inclusion and consistency proofs.
//!
//! Proofs are generated from a [`HashReader`] that returns the hash of any *complete* subtree
//! (`level`, `index`): the node covering leaves `[index << level, (index + 1) << level)`. Storage
//! keeps those nodes; incomplete subtrees on the right edge are recomputed from them.

use sha2::{Digest, Sha256};

use crate::LogError;

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &[u8], right: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Reads hashes of complete subtrees.
pub trait HashReader {
    /// The hash of the complete subtree at `level` and `index`.
    fn hash(&self, level: u8, index: u64) -> Result<Hash, LogError>;
}

/// Largest power of two strictly below `n` (n > 1).
fn split_point(n: u64) -> u64 {
    debug_assert!(n > 1);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// `MTH(D[start:end])` from stored complete subtrees.
pub fn subtree_hash(reader: &dyn HashReader, start: u64, end: u64) -> Result<Hash, LogError> {
    let n = end - start;
    if n == 0 {
        return Ok(empty_root());
    }
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return reader.hash(n.trailing_zeros() as u8, start / n);
    }
    let k = split_point(n);
    Ok(node_hash(&subtree_hash(reader, start, start + k)?, &subtree_hash(reader, start + k, end)?))
}

/// The root of the tree of `size` leaves.
pub fn root(reader: &dyn HashReader, size: u64) -> Result<Hash, LogError> {
    subtree_hash(reader, 0, size)
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves (RFC 6962 PATH).
pub fn inclusion_proof(reader: &dyn HashReader, index: u64, size: u64) -> Result<Vec<Hash>, LogError> {
    if index >= size {
        return Err(LogError::Proof(format!("leaf {index} is not in a tree of {size} leaves")));
    }
    let mut proof = Vec::new();
    path(reader, index, 0, size, &mut proof)?;
    Ok(proof)
}

fn path(reader: &dyn HashReader, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) -> Result<(), LogError> {
    let n = end - start;
    if n <= 1 {
        return Ok(());
    }
    let k = split_point(n);
    if m < k {
        path(reader, m, start, start + k, out)?;
        out.push(subtree_hash(reader, start + k, end)?);
    } else {
        path(reader, m - k, start + k, end, out)?;
        out.push(subtree_hash(reader, start, start + k)?);
    }
    Ok(())
}

/// The consistency proof from `size1` to `size2` (RFC 6962 PROOF).
pub fn consistency_proof(reader: &dyn HashReader, size1: u64, size2: u64) -> Result<Vec<Hash>, LogError> {
    if size1 > size2 {
        return Err(LogError::Proof(format!("no consistency proof from {size1} down to {size2}")));
    }
    let mut proof = Vec::new();
    if size1 == 0 || size1 == size2 {
        return Ok(proof);
    }
    subproof(reader, size1, 0, size2, true, &mut proof)?;
    Ok(proof)
}

fn subproof(
    reader: &dyn HashReader,
    m: u64,
    start: u64,
    end: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), LogError> {
    let n = end - start;
    if m == n {
        if !whole {
            out.push(subtree_hash(reader, start, end)?);
        }
        return Ok(());
    }
    let k = split_point(n);
    if m <= k {
        subproof(reader, m, start, start + k, whole, out)?;
        out.push(subtree_hash(reader, start + k, end)?);
    } else {
        subproof(reader, m - k, start + k, end, false, out)?;
        out.push(subtree_hash(reader, start, start + k)?);
    }
    Ok(())
}

fn as_hash(what: &str, b: &[u8]) -> Result<Hash, LogError> {
    b.try_into().map_err(|_| LogError::Proof(format!("{what} is {} bytes, not a 32-byte hash", b.len())))
}

/// Verifies that `leaf` (a leaf hash) is at `index` in the tree of `size` leaves with `root`
/// (RFC 9162, 2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &[u8],
    proof: &[Vec<u8>],
    root: &[u8],
) -> Result<(), LogError> {
    let fail =
        |why: &str| Err(LogError::Proof(format!("inclusion proof of leaf {index} in size {size}: {why}")));
    if index >= size {
        return fail("the index is outside the tree");
    }
    let root = as_hash("root", root)?;
    let mut r = as_hash("leaf hash", leaf)?;
    let (mut f, mut s) = (index, size - 1);
    for p in proof {
        let p = as_hash("proof hash", p)?;
        if s == 0 {
            return fail("the proof is too long");
        }
        if f & 1 == 1 || f == s {
            r = node_hash(&p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, &p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return fail("the proof is too short");
    }
    if r != root {
        return fail("the computed root does not match");
    }
    Ok(())
}

/// Verifies that the tree of `size2` leaves with `root2` extends the tree of `size1` leaves with
/// `root1` (RFC 9162, 2.1.4.2).
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    proof: &[Vec<u8>],
    root1: &[u8],
    root2: &[u8],
) -> Result<(), LogError> {
    let fail = |why: &str| Err(consistency_error(size1, size2, why));
    if size1 > size2 {
        return fail("the tree shrank (a rollback)");
    }
    if size1 == size2 {
        return verify_equal_sizes(size1, proof, root1, root2);
    }
    if size1 == 0 {
        return fail("every tree extends the empty tree; such a check proves nothing");
    }
    if proof.is_empty() {
        return fail("the proof is empty");
    }
    let root1 = as_hash("first root", root1)?;
    let root2 = as_hash("second root", root2)?;
    let hashes = proof.iter().map(|p| as_hash("proof hash", p)).collect::<Result<Vec<_>, _>>()?;
    let (fr, sr) = consistency_roots(size1, size2, &hashes, root1)?;
    if fr != root1 {
        return fail("the first root does not match");
    }
    if sr != root2 {
        return fail("the second root does not match");
    }
    Ok(())
}

/// The error of a consistency proof from `size1` to `size2` that fails for `why`.
fn consistency_error(size1: u64, size2: u64, why: &str) -> LogError {
    LogError::Proof(format!("consistency proof from {size1} to {size2}: {why}"))
}

/// Checks a consistency proof between two trees of `size` leaves: no proof, and one root.
fn verify_equal_sizes(size: u64, proof: &[Vec<u8>], root1: &[u8], root2: &[u8]) -> Result<(), LogError> {
    let fail = |why: &str| Err(consistency_error(size, size, why));
    if !proof.is_empty() {
        return fail("equal sizes need an empty proof");
    }
    if size == 0 && root1 != empty_root() {
        return fail("the empty tree has another root");
    }
    if root1 != root2 {
        return fail("two different roots for one size (a fork)");
    }
    Ok(())
}

/// Recomputes the first and second roots from a non-empty proof (0 < `size1` < `size2`),
/// refusing a proof too long or too short.
fn consistency_roots(size1: u64, size2: u64, hashes: &[Hash], root1: Hash) -> Result<(Hash, Hash), LogError> {
    let fail = |why: &str| Err(consistency_error(size1, size2, why));
    let mut path: &[Hash] = hashes;
    let seed;
    if size1.is_power_of_two() {
        seed = root1;
    } else {
        seed = path[0];
        path = &path[1..];
    }
    let (mut f, mut s) = (size1 - 1, size2 - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (seed, seed);
    for c in path {
        if s == 0 {
            return fail("the proof is too long");
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return fail("the proof is too short");
    }
    Ok((fr, sr))
}

/// The right edge of a tree while it grows: the roots of its complete subtrees, largest first.
/// Appending a leaf returns every complete node it completes, to be stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactRange {
    size: u64,
    /// (level, hash) from the left, levels strictly decreasing.
    peaks: Vec<(u8, Hash)>,
}

impl CompactRange {
    /// The compact range of a stored tree of `size` leaves.
    pub fn from_reader(reader: &dyn HashReader, size: u64) -> Result<Self, LogError> {
        let mut peaks = Vec::new();
        let mut start = 0u64;
        for level in (0..64u8).rev() {
            if size & (1u64 << level) != 0 {
                peaks.push((level, reader.hash(level, start >> level)?));
                start += 1u64 << level;
            }
        }
        Ok(Self { size, peaks })
    }

    /// A compact range from its size and the hashes of its peaks, largest subtree first (what
    /// [`CompactRange::peaks`] gives): how an audit resumes where it stopped.
    pub fn from_peaks(size: u64, hashes: &[Hash]) -> Result<Self, LogError> {
        if hashes.len() != size.count_ones() as usize {
            return Err(LogError::Proof(format!(
                "a tree of {size} leaves has {} peaks, not {}",
                size.count_ones(),
                hashes.len()
            )));
        }
        let levels = (0..64u8).rev().filter(|l| size & (1u64 << l) != 0);
        Ok(Self { size, peaks: levels.zip(hashes.iter().copied()).collect() })
    }

    /// The hashes of the complete subtrees on the right edge, largest first.
    pub fn peaks(&self) -> Vec<Hash> {
        self.peaks.iter().map(|(_, h)| *h).collect()
    }

    /// Number of leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; returns the new complete nodes as (level, index, hash).
    pub fn append(&mut self, leaf: Hash) -> Vec<(u8, u64, Hash)> {
        let index = self.size;
        let mut nodes = vec![(0u8, index, leaf)];
        let (mut level, mut hash) = (0u8, leaf);
        while let Some(&(l, left)) = self.peaks.last() {
            if l != level {
                break;
            }
            self.peaks.pop();
            hash = node_hash(&left, &hash);
            level += 1;
            nodes.push((level, index >> level, hash));
        }
        self.peaks.push((level, hash));
        self.size += 1;
        nodes
    }

    /// The root of the tree so far.
    pub fn root(&self) -> Hash {
        let mut it = self.peaks.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return empty_root();
        };
        for (_, h) in it {
            acc = node_hash(h, &acc);
        }
        acc
    }
}

/// Complete subtree hashes in memory, for tests and tools.
#[derive(Clone, Debug, Default)]
pub struct MemoryTree {
    /// levels[l][i]: hash of complete subtree (l, i).
    levels: Vec<Vec<Hash>>,
    range: CompactRange,
}

impl MemoryTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `data` as a new leaf, hashed with [`leaf_hash`].
    pub fn append(&mut self, data: &[u8]) {
        self.append_hash(leaf_hash(data));
    }

    /// Appends an already hashed leaf and stores every complete subtree it completes.
    pub fn append_hash(&mut self, leaf: Hash) {
        for (level, index, hash) in self.range.append(leaf) {
            let l = level as usize;
            if self.levels.len() <= l {
                self.levels.resize(l + 1, Vec::new());
            }
            debug_assert_eq!(self.levels[l].len() as u64, index);
            self.levels[l].push(hash);
        }
    }

    /// Number of leaves in the tree.
    pub fn size(&self) -> u64 {
        self.range.size()
    }

    /// The root hash of the tree so far.
    pub fn root(&self) -> Hash {
        self.range.root()
    }
}

impl HashReader for MemoryTree {
    fn hash(&self, level: u8, index: u64) -> Result<Hash, LogError> {
        self.levels
            .get(level as usize)
            .and_then(|l| l.get(index as usize))
            .copied()
            .ok_or_else(|| LogError::Proof(format!("no complete subtree at level {level}, index {index}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compact_range_resumes_from_its_peaks() {
        let mut whole = MemoryTree::new();
        let mut range = CompactRange::default();
        for i in 0..1000u32 {
            let leaf = leaf_hash(&i.to_be_bytes());
            whole.append_hash(leaf);
            range.append(leaf);
            // Stopped and resumed at every size, the range still gives the whole tree's root.
            let resumed = CompactRange::from_peaks(range.size(), &range.peaks()).expect("resumes");
            assert_eq!(resumed, range);
            assert_eq!(resumed.root(), whole.root(), "size {}", range.size());
        }
        assert!(CompactRange::from_peaks(3, &[empty_root()]).is_err(), "3 leaves have 2 peaks");
        assert!(CompactRange::from_peaks(u64::MAX, &[]).is_err());
    }
}
