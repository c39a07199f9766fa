//! C2SP tlog-tiles: tile coordinates and paths, tile contents, entry bundles; and C2SP
//! tlog-proof offline receipts.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::checkpoint::Checkpoint;
use crate::merkle::{Hash, HashReader, leaf_hash, verify_inclusion};
use crate::{LogError, Note, NoteVerifier};

/// Hashes in a full tile.
pub const TILE_WIDTH: u64 = 256;

/// Largest log entry accepted: an entry bundle's length prefix is a u16.
pub const MAX_ENTRY_BYTES: usize = 65_535;

/// What a tile path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileKind {
    /// Merkle tree hashes at tile level `L` (tree level `8 L`).
    Hashes(u8),
    /// Entry bundles.
    Entries,
}

/// A tile: kind, index and width (256 for a full tile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    /// Whether the tile holds hashes (and of which tile level) or entry bundles.
    pub kind: TileKind,
    /// Index of the tile among the tiles of its level.
    pub index: u64,
    /// Number of hashes or entries in the tile, from 1 to 256.
    pub width: u64,
}

/// `1234067` as `x001/x234/067`.
pub fn encode_index(n: u64) -> String {
    let digits = n.to_string();
    let pad = (3 - digits.len() % 3) % 3;
    let padded = format!("{}{digits}", "0".repeat(pad));
    let parts: Vec<&str> =
        padded.as_bytes().chunks(3).map(|c| std::str::from_utf8(c).unwrap_or("000")).collect();
    let last = parts.len() - 1;
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| if i < last { format!("x{p}") } else { (*p).to_owned() })
        .collect::<Vec<_>>()
        .join("/")
}

impl Tile {
    /// The path below the log prefix, without a leading slash: `tile/0/x001/234.p/17`.
    pub fn path(&self) -> String {
        let level = match self.kind {
            TileKind::Hashes(l) => l.to_string(),
            TileKind::Entries => "entries".into(),
        };
        let mut p = format!("tile/{level}/{}", encode_index(self.index));
        if self.width < TILE_WIDTH {
            p.push_str(&format!(".p/{}", self.width));
        }
        p
    }

    /// Parses a path below the log prefix (`tile/...`).
    pub fn parse(path: &str) -> Result<Self, LogError> {
        let bad = || LogError::BadTilePath(path.to_owned());
        let rest = path.strip_prefix("tile/").ok_or_else(bad)?;
        let (level, rest) = rest.split_once('/').ok_or_else(bad)?;
        let kind = if level == "entries" {
            TileKind::Entries
        } else {
            if level.is_empty()
                || (level.len() > 1 && level.starts_with('0'))
                || !level.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(bad());
            }
            let l: u8 = level.parse().map_err(|_| bad())?;
            if l > 63 {
                return Err(bad());
            }
            TileKind::Hashes(l)
        };
        let (index_part, width) = match rest.split_once(".p/") {
            Some((i, w)) => {
                if w.is_empty() || w.starts_with('0') || !w.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let w: u64 = w.parse().map_err(|_| bad())?;
                if !(1..TILE_WIDTH).contains(&w) {
                    return Err(bad());
                }
                (i, w)
            }
            None => (rest, TILE_WIDTH),
        };
        let parts: Vec<&str> = index_part.split('/').collect();
        let mut index: u64 = 0;
        for (i, p) in parts.iter().enumerate() {
            let digits = if i + 1 < parts.len() { p.strip_prefix('x').ok_or_else(bad)? } else { p };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let d: u64 = digits.parse().map_err(|_| bad())?;
            index = index.checked_mul(1000).and_then(|x| x.checked_add(d)).ok_or_else(bad)?;
        }
        let tile = Self { kind, index, width };
        if tile.path() != path {
            return Err(bad());
        }
        Ok(tile)
    }

    /// The tree level of the tile's hashes: 8 per tile level, so tile levels 8 to 63, which the
    /// path syntax allows, hold no node of any 64-bit tree.
    fn tree_level(&self) -> u32 {
        match self.kind {
            TileKind::Hashes(l) => u32::from(l) * 8,
            TileKind::Entries => 0,
        }
    }

    /// Whether this tile exists in a tree of `size` leaves: every hash it holds is of a complete
    /// subtree. Hashes never change once complete, so partial tiles of earlier sizes stay
    /// servable.
    pub fn exists_in(&self, size: u64) -> bool {
        let nodes = size.checked_shr(self.tree_level()).unwrap_or(0);
        let end = self.index.checked_mul(TILE_WIDTH).and_then(|s| s.checked_add(self.width));
        end.is_some_and(|end| end <= nodes)
    }

    /// The tile's hashes, read from complete subtrees.
    pub fn hashes(&self, reader: &dyn HashReader) -> Result<Vec<u8>, LogError> {
        let level = u8::try_from(self.tree_level())
            .ok()
            .filter(|l| *l < 64)
            .ok_or_else(|| LogError::BadTilePath(self.path()))?;
        let first = self.index.checked_mul(TILE_WIDTH).ok_or_else(|| LogError::BadTilePath(self.path()))?;
        let mut out = Vec::with_capacity(self.width as usize * 32);
        for i in 0..self.width {
            out.extend_from_slice(&reader.hash(level, first + i)?);
        }
        Ok(out)
    }
}

/// Encodes entries as an entry bundle: each a big-endian u16 length, then the bytes.
pub fn encode_bundle<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<u8>, LogError> {
    let mut out = Vec::new();
    for e in entries {
        let len = u16::try_from(e.len()).map_err(|_| LogError::EntryTooLarge(e.len()))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(e);
    }
    Ok(out)
}

/// Decodes an entry bundle; a truncated bundle is an error.
pub fn decode_bundle(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, LogError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 2 {
            return Err(LogError::MalformedBundle("a length prefix is cut short".into()));
        }
        let len = u16::from_be_bytes([bytes[0], bytes[1]]) as usize;
        bytes = &bytes[2..];
        if bytes.len() < len {
            return Err(LogError::MalformedBundle(format!("an entry of {len} bytes is cut short")));
        }
        out.push(bytes[..len].to_vec());
        bytes = &bytes[len..];
    }
    Ok(out)
}

/// A C2SP tlog-proof: an offline receipt that an entry is in a checkpointed tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlogProof {
    /// Optional opaque data carried on the receipt's `extra` line.
    pub extra: Option<Vec<u8>>,
    /// Index of the entry's leaf in the log.
    pub index: u64,
    /// Inclusion proof hashes from the entry's leaf to the checkpoint's root.
    pub proof: Vec<Hash>,
    /// The signed checkpoint, verbatim.
    pub checkpoint: Note,
}

/// First line of every tlog-proof's text.
pub const TLOG_PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";

impl TlogProof {
    /// The receipt's text: header, optional extra line, index, proof hashes, a blank line, then the signed checkpoint.
    pub fn to_text(&self) -> String {
        let mut s = format!("{TLOG_PROOF_HEADER}\n");
        if let Some(extra) = &self.extra {
            s.push_str(&format!("extra {}\n", B64.encode(extra)));
        }
        s.push_str(&format!("index {}\n", self.index));
        for h in &self.proof {
            s.push_str(&B64.encode(h));
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.checkpoint.to_string());
        s
    }

    /// Parses a receipt's text without verifying it; call [`TlogProof::verify`] for that.
    pub fn parse(text: &str) -> Result<Self, LogError> {
        let bad = |why: &str| LogError::MalformedProof(why.to_owned());
        let (head, checkpoint) =
            text.split_once("\n\n").ok_or_else(|| bad("no empty line before the checkpoint"))?;
        let mut lines = head.split('\n');
        if lines.next() != Some(TLOG_PROOF_HEADER) {
            return Err(bad("first line must be c2sp.org/tlog-proof@v1"));
        }
        let mut line = lines.next().ok_or_else(|| bad("the index line is missing"))?;
        let mut extra = None;
        if let Some(e) = line.strip_prefix("extra ") {
            extra = Some(B64.decode(e).map_err(|_| bad("extra is not base64"))?);
            line = lines.next().ok_or_else(|| bad("the index line is missing"))?;
        }
        let idx = line.strip_prefix("index ").ok_or_else(|| bad("expected `index N`"))?;
        if idx.is_empty()
            || (idx.len() > 1 && idx.starts_with('0'))
            || !idx.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad("the index must be a decimal number without leading zeroes"));
        }
        let index = idx.parse().map_err(|_| bad("the index does not fit 64 bits"))?;
        let proof = lines
            .map(|l| {
                B64.decode(l)
                    .ok()
                    .and_then(|h| Hash::try_from(h).ok())
                    .ok_or_else(|| bad("a proof line is not a 32-byte base64 hash"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let checkpoint = Note::parse(checkpoint.as_bytes())?;
        Ok(Self { extra, index, proof, checkpoint })
    }

    /// Verifies the receipt for `entry` against the log's key: the checkpoint's signature and
    /// the inclusion proof. Returns the checkpoint.
    pub fn verify(&self, entry: &[u8], log_key: &NoteVerifier) -> Result<Checkpoint, LogError> {
        let (cp, _) = Checkpoint::open(&self.checkpoint.to_bytes(), log_key)?;
        let proof: Vec<Vec<u8>> = self.proof.iter().map(|h| h.to_vec()).collect();
        verify_inclusion(self.index, cp.size, &leaf_hash(entry), &proof, &cp.root)?;
        Ok(cp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::MemoryTree;

    #[test]
    fn tile_paths() {
        assert_eq!(encode_index(1_234_067), "x001/x234/067");
        assert_eq!(encode_index(5), "005");
        let t = Tile { kind: TileKind::Hashes(1), index: 1_234_067, width: 17 };
        assert_eq!(t.path(), "tile/1/x001/x234/067.p/17");
        assert_eq!(Tile::parse(&t.path()).expect("parses"), t);
        let e = Tile { kind: TileKind::Entries, index: 0, width: 256 };
        assert_eq!(Tile::parse("tile/entries/000").expect("parses"), e);
        for bad in [
            "tile/0/1",
            "tile/00/000",
            "tile/0/000.p/0",
            "tile/0/000.p/256",
            "tile/64/000",
            "tile/0/001/002",
            "tile/0/x001",
            "tile/a/000",
            "x/0/000",
        ] {
            assert!(Tile::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tiles_in_a_tree_of_70000() {
        // The spec's example: 273 full level-0 tiles, one of width 112, ...
        let s = 70_000;
        assert!(Tile { kind: TileKind::Hashes(0), index: 272, width: 256 }.exists_in(s));
        assert!(Tile { kind: TileKind::Hashes(0), index: 273, width: 112 }.exists_in(s));
        assert!(!Tile { kind: TileKind::Hashes(0), index: 273, width: 113 }.exists_in(s));
        assert!(
            Tile { kind: TileKind::Hashes(0), index: 273, width: 111 }.exists_in(s),
            "an earlier partial tile"
        );
        assert!(!Tile { kind: TileKind::Hashes(0), index: 274, width: 1 }.exists_in(s));
        assert!(Tile { kind: TileKind::Hashes(1), index: 0, width: 256 }.exists_in(s));
        assert!(Tile { kind: TileKind::Hashes(1), index: 1, width: 17 }.exists_in(s));
        assert!(Tile { kind: TileKind::Hashes(2), index: 0, width: 1 }.exists_in(s));
        assert!(!Tile { kind: TileKind::Hashes(3), index: 0, width: 1 }.exists_in(s));
    }

    #[test]
    fn high_tile_levels_hold_nothing_in_any_tree() {
        // Levels 8 to 63 parse (the path syntax allows them) but no 64-bit tree has such nodes;
        // 32 to 63 once wrapped around to level 0's leaves.
        let tree = MemoryTree::new();
        for level in [7u8, 8, 31, 32, 33, 40, 63] {
            let t = Tile::parse(&format!("tile/{level}/000.p/1")).expect("valid path");
            if level >= 8 {
                assert!(!t.exists_in(u64::MAX), "level {level} exists in no tree");
                assert!(t.hashes(&tree).is_err(), "level {level} has no hashes");
            }
            assert!(!t.exists_in(1), "level {level} of a one-leaf tree");
        }
        let big = Tile { kind: TileKind::Hashes(0), index: u64::MAX, width: 255 };
        assert!(!big.exists_in(u64::MAX));
        assert!(big.hashes(&tree).is_err(), "an index past 2^64 leaves is an error, not a wrap");
    }

    #[test]
    fn bundles_and_tile_hashes() {
        let mut tree = MemoryTree::new();
        let entries: Vec<Vec<u8>> = (0..300u32).map(|i| format!("entry {i}").into_bytes()).collect();
        for e in &entries {
            tree.append(e);
        }
        let bundle = encode_bundle(entries[..256].iter().map(Vec::as_slice)).expect("bundle");
        assert_eq!(decode_bundle(&bundle).expect("decodes"), entries[..256]);
        assert!(decode_bundle(&bundle[..bundle.len() - 1]).is_err(), "truncated");
        assert!(encode_bundle([vec![0u8; 70_000].as_slice()]).is_err());
        let t0 = Tile { kind: TileKind::Hashes(0), index: 1, width: 44 };
        let h = t0.hashes(&tree).expect("hashes");
        assert_eq!(&h[..32], &leaf_hash(&entries[256]));
        let t1 = Tile { kind: TileKind::Hashes(1), index: 0, width: 1 };
        assert_eq!(
            t1.hashes(&tree).expect("hashes"),
            crate::merkle::subtree_hash(&tree, 0, 256).expect("root").to_vec()
        );
    }
}
