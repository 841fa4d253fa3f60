//! The compiled matcher: scheme+host+port → path segment trie → terminal rule ids, walked once
//! per request without allocating.
//!
//! Each origin (scheme, host, port) owns a root node. An edge consumes one or more whole path
//! segments: a literal segment (fingerprint-table lookup), `:name`, `:name(re)`, `{:name/}+`, a
//! bare `*`, or a glob segment. A node lists the rules whose pattern ends there (ascending ids)
//! and, per method slot, the lowest rule id anywhere at or below it.
//!
//! First match in rule order is preserved by a depth-first walk that tracks the best (lowest)
//! accepted rule id and never enters a subtree whose lowest id for the request's method is not
//! below it. Elements that span segments (`*`, globs, groups) make the walk branch; the number of
//! node visits per walk is capped by [`BUDGET`], and a walk that runs out reports `exhausted` so
//! the caller denies (fail closed) instead of guessing.
//!
//! Invariant: the walk never panics and never allocates, whatever the path (it does not assume
//! the path is canonical; a non-canonical path simply fails to match what it should not).

mod build;
mod table;

use regex::Regex;

use super::canon::Scheme;
use super::constraint::{ANY_SLOT, SLOTS};
use super::pattern::Glob;
pub(crate) use build::TrieBuilder;
use table::{Key, LitTable, Origins};

/// "No node" / "no rule".
pub(crate) const NONE: u32 = u32::MAX;

/// The most node visits one walk may make before it gives up (and the request is denied).
pub(crate) const BUDGET: u32 = 1 << 15;

/// Node flags: which kinds of edges leave the node.
const F_LITS: u8 = 1;
const F_PARAM: u8 = 2;
const F_REGEX: u8 = 4;
const F_GROUP: u8 = 8;
const F_STAR: u8 = 16;
const F_GLOB: u8 = 32;

#[derive(Debug)]
struct Node {
    /// Lowest rule id at or below this node, per method slot ([`NONE`] if none).
    min_rule: [u32; SLOTS],
    /// `F_*` bits; 0 for a leaf (only the end of the path can match here).
    flags: u8,
    param: u32,
    group: u32,
    star: u32,
    lits: LitTable,
    regexes: Box<[(u32, u32)]>,
    globs: Box<[(u32, u32)]>,
    terminals: Box<[u32]>,
}

/// The compiled matcher for a whole allowlist.
#[derive(Debug, Default)]
pub(crate) struct Trie {
    origins: Origins,
    nodes: Vec<Node>,
    regexes: Vec<Regex>,
    globs: Vec<Glob>,
}

/// A byte range of the path.
pub(crate) type Span = (usize, usize);

/// The result of a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalkResult {
    /// The lowest accepted rule id.
    pub best: Option<u32>,
    /// The walk ran out of [`BUDGET`]; `best` must not be trusted.
    pub exhausted: bool,
    /// Nodes entered (for tests and tuning).
    pub visits: u32,
}

impl Trie {
    /// The root node of an origin.
    #[inline]
    pub fn origin(&self, scheme: Scheme, port: u16, host: &str) -> Option<u32> {
        self.origins.get(scheme, port, host)
    }

    /// Walks `path` from `root`, calling `accept(rule_id, capture)` for each rule whose pattern
    /// matches and that could still beat the best so far (in no particular order); `capture` is
    /// the byte range matched by the last non-literal element on the way (the rule's
    /// `path_files` target). `accept` returns whether the rule is taken (method and constraints
    /// hold). Subtrees are pruned by the lowest rule id having `slot` in its mask (any rule for
    /// [`ANY_SLOT`]), so `accept` must still check the method itself.
    pub fn walk<F>(&self, root: u32, path: &str, slot: usize, accept: F) -> WalkResult
    where
        F: FnMut(u32, Span) -> bool,
    {
        let mut w = Walker {
            nodes: &self.nodes,
            regexes: &self.regexes,
            globs: &self.globs,
            path: path.as_bytes(),
            slot: slot.min(ANY_SLOT),
            best: NONE,
            budget: BUDGET,
            exhausted: false,
            accept,
        };
        // A path is "/" + segments joined by "/"; anything else matches nothing.
        if w.path.first() == Some(&b'/') {
            w.descend(root, 1, (0, 0));
        }
        WalkResult {
            best: (w.best != NONE).then_some(w.best),
            exhausted: w.exhausted,
            visits: BUDGET - w.budget,
        }
    }
}

/// Position meaning "every segment has been consumed".
const END: usize = usize::MAX;

struct Walker<'t, 'p, F> {
    nodes: &'t [Node],
    regexes: &'t [Regex],
    globs: &'t [Glob],
    path: &'p [u8],
    slot: usize,
    best: u32,
    budget: u32,
    exhausted: bool,
    accept: F,
}

impl<F> Walker<'_, '_, F>
where
    F: FnMut(u32, Span) -> bool,
{
    /// End of the segment starting at `pos` (index of the next `/` or the path length).
    #[inline]
    fn seg_end(&self, pos: usize) -> usize {
        table::find_slash(self.path, pos)
    }

    /// Where the next segment starts after a segment ending at `end`.
    #[inline]
    fn after(&self, end: usize) -> usize {
        if end >= self.path.len() { END } else { end + 1 }
    }

    /// Whether `node` can still hold a better rule than the best so far.
    #[inline]
    fn live(&self, node: u32) -> bool {
        self.nodes
            .get(node as usize)
            .is_some_and(|n| n.min_rule[self.slot] < self.best)
    }

    /// Enters `node` with the segment starting at `pos` next (or [`END`]); `capture` is the
    /// range matched by the last non-literal element so far.
    #[inline]
    fn descend(&mut self, node: u32, pos: usize, capture: Span) {
        let Some(n) = self.nodes.get(node as usize) else {
            return;
        };
        if n.min_rule[self.slot] >= self.best {
            return;
        }
        if self.budget == 0 {
            self.exhausted = true;
            return;
        }
        self.budget -= 1;
        if pos == END {
            for &id in n.terminals.iter() {
                if id >= self.best {
                    break;
                }
                if (self.accept)(id, capture) {
                    self.best = id;
                    break;
                }
            }
        } else if n.flags != 0 {
            self.expand(n, pos, capture);
        }
    }

    /// Follows every edge of `n` that matches the segment(s) starting at `pos`. Recursion
    /// depth is bounded by the trie depth (at most `MAX_ELEMS`).
    fn expand(&mut self, n: &Node, pos: usize, capture: Span) {
        let end = self.seg_end(pos);
        let next = self.after(end);
        let seg = self.path.get(pos..end).unwrap_or_default();
        if n.flags & F_LITS != 0 {
            if let Some(child) = n.lits.get(Key::at(self.path, pos, end), seg) {
                self.descend(child, next, capture);
            }
        }
        if seg.is_empty() {
            // Only `*` and globs can match an empty (trailing) segment.
            if n.flags & (F_STAR | F_GLOB) == 0 {
                return;
            }
        } else {
            if n.flags & F_PARAM != 0 {
                self.descend(n.param, next, (pos, end));
            }
            if n.flags & F_REGEX != 0 {
                for &(re, child) in n.regexes.iter() {
                    let is_match = std::str::from_utf8(seg)
                        .ok()
                        .zip(self.regexes.get(re as usize))
                        .is_some_and(|(s, re)| re.is_match(s));
                    if is_match {
                        self.descend(child, next, (pos, end));
                    }
                }
            }
            if n.flags & F_GROUP != 0 {
                self.group(n.group, pos);
            }
        }
        if n.flags & F_STAR != 0 {
            self.spanning(n.star, None, pos);
        }
        if n.flags & F_GLOB != 0 {
            for &(g, child) in n.globs.iter() {
                self.spanning(child, self.globs.get(g as usize), pos);
            }
        }
    }

    /// `{:name/}+`: one or more non-empty segments, each followed by `/`.
    fn group(&mut self, child: u32, pos: usize) {
        let mut s = pos;
        while self.live(child) && !self.exhausted {
            let e = self.seg_end(s);
            if e == s || e >= self.path.len() {
                return;
            }
            self.descend(child, e + 1, (pos, e));
            s = e + 1;
        }
    }

    /// `*` or a glob: segments `pos..=k` whose joined text matches, for every possible `k`.
    fn spanning(&mut self, child: u32, glob: Option<&Glob>, pos: usize) {
        let len = self.path.len();
        let leaf = self.nodes.get(child as usize).is_none_or(|c| c.flags == 0);
        // A leaf child only matches at the end of the path: jump there.
        let mut e = if leaf { len } else { self.seg_end(pos) };
        while self.live(child) && !self.exhausted {
            let text = self.path.get(pos..e).unwrap_or_default();
            if glob.is_none_or(|g| g.matches(text)) {
                self.descend(child, self.after(e), (pos, e));
            }
            if e >= len {
                return;
            }
            e = self.seg_end(e + 1);
        }
    }
}
