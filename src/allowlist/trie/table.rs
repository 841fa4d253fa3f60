//! Lookup tables of the trie: literal-segment edges keyed by a fingerprint, and origins.
//!
//! Invariant: lookups never allocate or panic; a table is immutable once built. The hashes are
//! fixed-key and fast (not DoS-resistant), which is fine because the keys in a table come from
//! the operator's rules: a caller choosing a segment cannot lengthen any probe sequence beyond
//! the table's own clustering.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use super::NONE;
use crate::allowlist::canon::Scheme;

/// Multiplier of the FxHash family.
const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// A literal segment's fingerprint: its first and last (up to) 8 bytes and its length. For
/// segments of at most 16 bytes equal fingerprints mean equal bytes; longer ones are compared in
/// full after the fingerprint matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    head: u64,
    tail: u64,
    len: usize,
}

impl Key {
    /// The fingerprint of `path[pos..end]`, reading whole words from `path` where it can.
    #[inline]
    pub fn at(path: &[u8], pos: usize, end: usize) -> Key {
        let len = end.saturating_sub(pos);
        let head = match path.get(pos..pos + 8) {
            Some(w) if len >= 8 => word(w),
            Some(w) => word(w) & ((1u64 << (8 * len)) - 1),
            None => load(path.get(pos..end).unwrap_or_default()),
        };
        let tail = match end.checked_sub(8) {
            Some(i) if len > 8 => path.get(i..end).map_or(0, word),
            _ => 0,
        };
        Key { head, tail, len }
    }

    fn of(text: &[u8]) -> Key {
        Key::at(text, 0, text.len())
    }

    /// A well-mixed 64-bit hash (the table indexes by its top bits): keys that differ only in
    /// a few middle bytes (`s9996` vs `s9992`) must not cluster under linear probing.
    #[inline(always)]
    fn hash(self) -> u64 {
        let x = self.head ^ self.tail.rotate_left(29) ^ (self.len as u64).rotate_right(8);
        (x ^ (x >> 29)).wrapping_mul(0xd6e8_feb8_6659_fd93)
    }
}

/// Eight bytes, little-endian (`w` has exactly 8 bytes at the call sites).
#[inline(always)]
fn word(w: &[u8]) -> u64 {
    <[u8; 8]>::try_from(w).map_or(0, u64::from_le_bytes)
}

/// Up to 8 bytes, little-endian, zero-padded.
fn load(b: &[u8]) -> u64 {
    b.iter()
        .take(8)
        .enumerate()
        .fold(0u64, |acc, (i, &x)| acc | u64::from(x) << (8 * i))
}

const SLASHES: u64 = 0x2f2f_2f2f_2f2f_2f2f;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// 0x80 in every byte of `x` that is zero, 0 elsewhere (exact: no false positives).
#[inline(always)]
fn zero_bytes(x: u64) -> u64 {
    !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7)
}

/// Index of the first `/` in `path` at or after `from`, or `path.len()`: eight bytes at a time,
/// so a segment end costs one predictable branch instead of one per byte.
#[inline]
pub(crate) fn find_slash(path: &[u8], from: usize) -> usize {
    let len = path.len();
    let mut i = from;
    while let Some(w) = path.get(i..i + 8) {
        let z = zero_bytes(word(w) ^ SLASHES);
        if z != 0 {
            return i + (z.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    if i >= len {
        return len;
    }
    match len.checked_sub(8) {
        // Re-read the last word and ignore the bytes before `i` (1..=7 of them).
        Some(base) => {
            let z = zero_bytes(path.get(base..).map_or(0, word) ^ SLASHES)
                & (!0u64 << (8 * (i - base)));
            if z != 0 {
                base + (z.trailing_zeros() / 8) as usize
            } else {
                len
            }
        }
        None => path
            .get(i..)
            .and_then(|rest| rest.iter().position(|&b| b == b'/'))
            .map_or(len, |k| i + k),
    }
}

/// The end of the segment starting at `pos` and its fingerprint, from one pass: the first word
/// read for the `/` search is also the fingerprint's head.
#[inline(always)]
pub(crate) fn segment(path: &[u8], pos: usize) -> (usize, Key) {
    let Some(first) = path.get(pos..pos + 8) else {
        let end = find_slash(path, pos);
        return (end, Key::at(path, pos, end));
    };
    let w0 = word(first);
    let z = zero_bytes(w0 ^ SLASHES);
    if z != 0 {
        let len = (z.trailing_zeros() / 8) as usize; // 0..=7
        let head = w0 & ((1u64 << (8 * len)) - 1);
        return (pos + len, Key { head, tail: 0, len });
    }
    let end = find_slash(path, pos + 8);
    let len = end - pos;
    let tail = match end.checked_sub(8) {
        Some(i) if len > 8 => path.get(i..end).map_or(0, word),
        _ => 0,
    };
    (
        end,
        Key {
            head: w0,
            tail,
            len,
        },
    )
}

#[derive(Debug)]
pub(crate) struct LitEntry {
    key: Key,
    child: u32,
    /// The full text, compared only for segments longer than 16 bytes.
    text: Box<[u8]>,
}

impl LitEntry {
    /// Whether this is the segment `path[pos..pos + key.len]` with fingerprint `key`.
    #[inline(always)]
    fn is(&self, key: Key, path: &[u8], pos: usize) -> bool {
        self.key == key && (key.len <= 16 || self.is_long(path, pos))
    }

    /// The full comparison, only for segments longer than 16 bytes (kept out of the hot loop).
    #[cold]
    #[inline(never)]
    fn is_long(&self, path: &[u8], pos: usize) -> bool {
        path.get(pos..pos + self.text.len()) == Some(&*self.text)
    }
}

/// Literal-segment edges of a node: a few entries compared in turn, or an open-addressing table
/// of fingerprints (load factor ≤ 1/2, linear probing).
#[derive(Debug, Default)]
pub(crate) enum LitTable {
    #[default]
    Empty,
    Few(Box<[LitEntry]>),
    Hashed {
        /// Index into `entries`, or [`NONE`].
        slots: Box<[u32]>,
        shift: u32,
        entries: Box<[LitEntry]>,
    },
}

/// Up to this many literal edges are scanned rather than hashed.
const FEW_LITS: usize = 4;

impl LitTable {
    pub fn from(lits: Vec<(Box<[u8]>, u32)>) -> LitTable {
        let entries: Vec<LitEntry> = lits
            .into_iter()
            .map(|(text, child)| LitEntry {
                key: Key::of(&text),
                child,
                text,
            })
            .collect();
        if entries.is_empty() {
            return LitTable::Empty;
        }
        if entries.len() <= FEW_LITS {
            return LitTable::Few(entries.into_boxed_slice());
        }
        let bits = (entries.len() * 2).next_power_of_two().trailing_zeros();
        let mut slots = vec![NONE; 1 << bits];
        let mask = slots.len() - 1;
        for (i, e) in entries.iter().enumerate() {
            let mut at = (e.key.hash() >> (64 - bits)) as usize;
            while slots[at] != NONE {
                at = (at + 1) & mask;
            }
            slots[at] = i as u32;
        }
        LitTable::Hashed {
            slots: slots.into_boxed_slice(),
            shift: 64 - bits,
            entries: entries.into_boxed_slice(),
        }
    }

    /// The child for the segment `path[pos..]` whose fingerprint is `key`.
    #[inline(always)]
    pub fn get(&self, key: Key, path: &[u8], pos: usize) -> Option<u32> {
        match self {
            LitTable::Empty => None,
            LitTable::Few(list) => list.iter().find(|e| e.is(key, path, pos)).map(|e| e.child),
            LitTable::Hashed {
                slots,
                shift,
                entries,
            } => {
                let mask = slots.len() - 1;
                let mut at = (key.hash() >> shift) as usize;
                loop {
                    let e = entries.get(*slots.get(at)? as usize)?;
                    if e.is(key, path, pos) {
                        return Some(e.child);
                    }
                    at = (at + 1) & mask;
                }
            }
        }
    }

    pub fn children(&self) -> impl Iterator<Item = u32> + '_ {
        let entries: &[LitEntry] = match self {
            LitTable::Empty => &[],
            LitTable::Few(e) => e,
            LitTable::Hashed { entries, .. } => entries,
        };
        entries.iter().map(|e| e.child)
    }
}

/// FxHash-style hasher for the host table.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FxBuild;

pub(crate) struct Fx(u64);

impl Fx {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
    }
}

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(word(c));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            self.add(load(rest));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl BuildHasher for FxBuild {
    type Hasher = Fx;

    fn build_hasher(&self) -> Fx {
        Fx(0)
    }
}

/// Roots by host: `(scheme, port, root node)` for each origin of that host.
type HostTable = HashMap<Box<str>, Vec<(Scheme, u16, u32)>, FxBuild>;

/// Origins → root nodes: a short list scanned linearly (hosts compared by fingerprint), or a
/// host-keyed table when there are many.
#[derive(Debug, Default)]
pub(crate) struct Origins {
    list: Vec<(Scheme, u16, Key, Box<str>, u32)>,
    by_host: Option<HostTable>,
}

const SMALL_ORIGINS: usize = 8;

impl Origins {
    pub fn from(list: Vec<(Scheme, u16, String, u32)>) -> Origins {
        let by_host = (list.len() > SMALL_ORIGINS).then(|| {
            let mut map = HostTable::default();
            for (s, p, h, r) in &list {
                map.entry(h.as_str().into()).or_default().push((*s, *p, *r));
            }
            map
        });
        Origins {
            list: list
                .into_iter()
                .map(|(s, p, h, r)| (s, p, Key::of(h.as_bytes()), h.into_boxed_str(), r))
                .collect(),
            by_host,
        }
    }

    #[inline]
    pub fn get(&self, scheme: Scheme, port: u16, host: &str) -> Option<u32> {
        let exact = match &self.by_host {
            Some(map) => map
                .get(host)
                .and_then(|v| v.iter().find(|(s, p, _)| *s == scheme && *p == port))
                .map(|&(_, _, r)| r),
            None => {
                let key = Key::of(host.as_bytes());
                self.list
                    .iter()
                    .find(|(s, p, k, h, _)| {
                        *k == key && *p == port && *s == scheme && (key.len <= 16 || **h == *host)
                    })
                    .map(|&(.., r)| r)
            }
        };
        if exact.is_some() {
            return exact;
        }
        // Only a hand-built, non-canonical host can still match: compare case-insensitively.
        self.list
            .iter()
            .find(|(s, p, _, h, _)| {
                *p == port && *s == scheme && h.len() == host.len() && h.eq_ignore_ascii_case(host)
            })
            .map(|&(.., r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_read_in_place_equal_standalone_ones() {
        let path = b"/abc/defghijk/01234567/0123456789abcdefXYZ/0123456789abcdef/q/";
        let mut pos = 1;
        for seg in path[1..].split(|&b| b == b'/') {
            let end = pos + seg.len();
            assert_eq!(Key::at(path, pos, end), Key::of(seg), "{seg:?}");
            assert_eq!(segment(path, pos), (end, Key::of(seg)), "{seg:?}");
            pos = end + 1;
        }
        assert_ne!(Key::of(b"ab"), Key::of(b"ab\0"));
    }

    #[test]
    fn find_slash_matches_a_byte_scan() {
        let paths: [&[u8]; 6] = [
            b"",
            b"/",
            b"abc",
            b"/a/bc/def/ghij/klmno/pqrstuvwxyz0123/",
            b"..../.../..//.",
            b"xxxxxxxxxxxxxxxxxxxxxxx/",
        ];
        for p in paths {
            for from in 0..=p.len() {
                let naive = p[from..]
                    .iter()
                    .position(|&b| b == b'/')
                    .map_or(p.len(), |k| from + k);
                assert_eq!(find_slash(p, from), naive, "{p:?} from {from}");
            }
        }
    }

    /// Average number of slots probed for a successful lookup.
    fn mean_probe(keys: &[Box<[u8]>]) -> f64 {
        let LitTable::Hashed {
            slots,
            shift,
            entries,
        } = LitTable::from(keys.iter().cloned().zip(0..).collect())
        else {
            panic!("expected a hashed table");
        };
        let mask = slots.len() - 1;
        let mut total = 0usize;
        for k in keys {
            let key = Key::of(k);
            let mut at = (key.hash() >> shift) as usize;
            total += 1;
            while entries[slots[at] as usize].key != key {
                at = (at + 1) & mask;
                total += 1;
            }
        }
        total as f64 / keys.len() as f64
    }

    #[test]
    fn similar_keys_do_not_cluster() {
        let families: [Box<dyn Fn(usize) -> String>; 4] = [
            Box::new(|i| format!("s{i}")),
            Box::new(|i| format!("{i}")),
            Box::new(|i| format!("repo-{i:05}")),
            Box::new(|i| format!("a-very-long-segment-name-{i}")),
        ];
        for f in &families {
            for step in [1, 4, 20, 100] {
                let keys: Vec<Box<[u8]>> = (0..500 * step)
                    .step_by(step)
                    .map(|i| f(i).into_bytes().into())
                    .collect();
                let m = mean_probe(&keys);
                assert!(m < 2.0, "{:?}, step {step}: mean probe {m}", f(0));
            }
        }
    }

    #[test]
    fn large_tables_find_every_key_and_nothing_else() {
        let keys: Vec<Box<[u8]>> = (0..200)
            .map(|i| {
                format!("segment-{i}-{}", "x".repeat(i % 23))
                    .into_bytes()
                    .into()
            })
            .collect();
        let table = LitTable::from(keys.iter().cloned().zip(0..).collect());
        assert!(matches!(table, LitTable::Hashed { .. }));
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(table.get(Key::of(k), k, 0), Some(i as u32));
        }
        for miss in [
            &b"segment-1"[..],
            b"",
            b"segment-1-xx",
            b"segment-24-xxxxxxxxxxxxxxxxxxxxxxxy",
        ] {
            assert_eq!(table.get(Key::of(miss), miss, 0), None);
        }
    }
}
