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

use super::canon::Scheme;
use super::pattern::{Glob, SegmentRegex};
pub(crate) use build::TrieBuilder;
use table::{LitTable, Origins};

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
    /// `min_rule[slot][node]`: the lowest rule id at or below `node` whose methods include
    /// `slot` (any rule for [`ANY_SLOT`](super::constraint::ANY_SLOT)), [`NONE`] if none. One column per slot keeps the
    /// pruning check of a walk to one load; extension methods add a column each, only when some
    /// rule names them (see `constraint::MethodTable`).
    min_rule: Vec<Box<[u32]>>,
    regexes: Vec<SegmentRegex>,
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
    /// [`ANY_SLOT`](super::constraint::ANY_SLOT)), so `accept` must still check the method itself. A slot the trie was not
    /// built with matches nothing.
    pub fn walk<F>(&self, root: u32, path: &str, slot: usize, accept: F) -> WalkResult
    where
        F: FnMut(u32, Span) -> bool,
    {
        let Some(min_rule) = self.min_rule.get(slot) else {
            return WalkResult {
                best: None,
                exhausted: false,
                visits: 0,
            };
        };
        let mut w = Walker {
            nodes: &self.nodes,
            min_rule,
            regexes: &self.regexes,
            globs: &self.globs,
            path: path.as_bytes(),
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
    /// The walk's method column of `Trie::min_rule`.
    min_rule: &'t [u32],
    regexes: &'t [SegmentRegex],
    globs: &'t [Glob],
    path: &'p [u8],
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
        self.min_rule
            .get(node as usize)
            .is_some_and(|&m| m < self.best)
    }

    /// Walks from `node` with the segment starting at `pos` next (or [`END`]); `capture` is the
    /// range matched by the last non-literal element so far. The common shape (a literal and/or
    /// a `:name` edge) continues in the loop instead of recursing; recursion depth is bounded
    /// by the trie depth (at most `MAX_ELEMS`).
    fn descend(&mut self, mut node: u32, mut pos: usize, mut capture: Span) {
        loop {
            if !self.live(node) {
                return;
            }
            let Some(n) = self.nodes.get(node as usize) else {
                return;
            };
            if self.budget == 0 {
                self.exhausted = true;
                return;
            }
            self.budget -= 1;
            if pos == END {
                self.terminals(n, capture);
                return;
            }
            if n.flags == 0 {
                return;
            }
            let (end, key) = table::segment(self.path, pos);
            let next = self.after(end);
            let lit = if n.flags & F_LITS != 0 {
                n.lits.get(key, self.path, pos)
            } else {
                None
            };
            let param = (n.flags & F_PARAM != 0 && end > pos).then_some(n.param);
            if n.flags & (F_REGEX | F_GROUP | F_STAR | F_GLOB) != 0 {
                if let Some(child) = lit {
                    self.descend(child, next, capture);
                }
                if let Some(child) = param {
                    self.descend(child, next, (pos, end));
                }
                self.expand_rare(n, pos, end, next);
                return;
            }
            match (lit, param) {
                (Some(l), Some(p)) => {
                    self.descend(l, next, capture);
                    node = p;
                    capture = (pos, end);
                }
                (Some(l), None) => node = l,
                (None, Some(p)) => {
                    node = p;
                    capture = (pos, end);
                }
                (None, None) => return,
            }
            pos = next;
        }
    }

    /// At the end of the path: accept the lowest terminal rule that holds.
    #[inline]
    fn terminals(&mut self, n: &Node, capture: Span) {
        for &id in n.terminals.iter() {
            if id >= self.best {
                break;
            }
            if (self.accept)(id, capture) {
                self.best = id;
                break;
            }
        }
    }

    /// Regex, group, star and glob edges of `n` (the segment is `pos..end`).
    fn expand_rare(&mut self, n: &Node, pos: usize, end: usize, next: usize) {
        let seg = self.path.get(pos..end).unwrap_or_default();
        if !seg.is_empty() {
            if n.flags & F_REGEX != 0 {
                for &(re, child) in n.regexes.iter() {
                    let is_match = self
                        .regexes
                        .get(re as usize)
                        .is_some_and(|r| r.is_match(seg));
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
