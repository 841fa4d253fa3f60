//! Building the trie: patterns are inserted rule by rule (ascending ids), then frozen into the
//! compact read-only [`Trie`] with per-node minimum rule ids for pruning.
//!
//! Invariants: a child node always has a higher index than its parent (nodes are appended as
//! edges are created), which lets `finish` fold the per-slot minima bottom-up in one reverse
//! pass; equal elements at the same node share one edge (`:owner` and `:org` are the same edge,
//! identical regex sources and globs are interned once).

use std::collections::HashMap;

use super::table::{LitTable, Origins};
use super::{F_GLOB, F_GROUP, F_LITS, F_PARAM, F_REGEX, F_STAR, NONE, Node, Trie};
use crate::allowlist::canon::Scheme;
use crate::allowlist::constraint::{ANY_SLOT, MethodMask};
use crate::allowlist::pattern::{Elem, Glob, Pattern, SegmentRegex};

/// A pattern element with its regex or glob interned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Edge {
    Lit(Box<[u8]>),
    Param,
    Regex(u32),
    Group,
    Star,
    Glob(u32),
}

#[derive(Debug, Default)]
struct BuildNode {
    edges: HashMap<Edge, u32>,
    /// Edges in insertion order, for a deterministic layout.
    order: Vec<(Edge, u32)>,
    terminals: Vec<u32>,
}

/// Builds a [`Trie`] rule by rule.
#[derive(Debug, Default)]
pub(crate) struct TrieBuilder {
    nodes: Vec<BuildNode>,
    origins: Vec<(Scheme, u16, String, u32)>,
    regexes: Vec<SegmentRegex>,
    regex_ids: HashMap<String, u32>,
    globs: Vec<Glob>,
    glob_ids: HashMap<Glob, u32>,
}

impl TrieBuilder {
    /// Interns the regexes and globs of a pattern; the error is a message about a bad regex.
    pub fn prepare(&mut self, pattern: &Pattern) -> Result<Vec<Edge>, String> {
        pattern
            .elems
            .iter()
            .map(|e| {
                Ok(match e {
                    Elem::Lit(s) => Edge::Lit(s.as_bytes().into()),
                    Elem::Param => Edge::Param,
                    Elem::Group => Edge::Group,
                    Elem::Glob(g) if g.is_any() => Edge::Star,
                    Elem::Glob(g) => Edge::Glob(self.intern_glob(g)?),
                    Elem::Regex(src) => Edge::Regex(self.intern_regex(src)?),
                })
            })
            .collect()
    }

    fn intern_regex(&mut self, src: &str) -> Result<u32, String> {
        if let Some(&id) = self.regex_ids.get(src) {
            return Ok(id);
        }
        let re = SegmentRegex::compile(src)?;
        let id = u32::try_from(self.regexes.len()).map_err(|_| "too many regexes".to_owned())?;
        self.regexes.push(re);
        self.regex_ids.insert(src.to_owned(), id);
        Ok(id)
    }

    fn intern_glob(&mut self, g: &Glob) -> Result<u32, String> {
        if let Some(&id) = self.glob_ids.get(g) {
            return Ok(id);
        }
        let id = u32::try_from(self.globs.len()).map_err(|_| "too many globs".to_owned())?;
        self.globs.push(g.clone());
        self.glob_ids.insert(g.clone(), id);
        Ok(id)
    }

    fn new_node(&mut self) -> u32 {
        self.nodes.push(BuildNode::default());
        (self.nodes.len() - 1) as u32
    }

    /// Adds rule `id`; ids must be inserted in ascending order.
    pub fn insert(&mut self, pattern: &Pattern, edges: Vec<Edge>, id: u32) {
        let found = self
            .origins
            .iter()
            .find(|(s, p, h, _)| *s == pattern.scheme && *p == pattern.port && *h == pattern.host);
        let root = match found {
            Some(&(_, _, _, r)) => r,
            None => {
                let r = self.new_node();
                let origin = (pattern.scheme, pattern.port, pattern.host.clone(), r);
                self.origins.push(origin);
                r
            }
        };
        let mut node = root;
        for edge in edges {
            let existing = self.nodes[node as usize].edges.get(&edge).copied();
            node = match existing {
                Some(child) => child,
                None => {
                    let child = self.new_node();
                    let n = &mut self.nodes[node as usize];
                    n.edges.insert(edge.clone(), child);
                    n.order.push((edge, child));
                    child
                }
            };
        }
        self.nodes[node as usize].terminals.push(id);
    }

    /// Freezes the trie; `masks[id]` is rule `id`'s method bitmask over `slots` method slots
    /// ([`ANY_SLOT`] included).
    pub fn finish(self, masks: &[MethodMask], slots: usize) -> Trie {
        let nodes: Vec<Node> = self.nodes.into_iter().map(freeze).collect();
        // Children have higher indices than their parent: fold the minima bottom-up. Row `i` of
        // `mins` (`slots` entries) holds node `i`'s minimum per slot.
        let mut mins = vec![NONE; nodes.len() * slots];
        for i in (0..nodes.len()).rev() {
            let mut min = vec![NONE; slots];
            for &id in nodes[i].terminals.iter() {
                let mask = masks.get(id as usize).copied().unwrap_or(0);
                for (slot, m) in min.iter_mut().enumerate() {
                    let listed = slot == ANY_SLOT || (slot < 64 && mask & (1 << slot) != 0);
                    if listed && id < *m {
                        *m = id;
                    }
                }
            }
            for c in children(&nodes[i]) {
                let c = c as usize;
                if let Some(child) = mins.get(c * slots..(c + 1) * slots) {
                    for (m, cm) in min.iter_mut().zip(child) {
                        *m = (*m).min(*cm);
                    }
                }
            }
            mins[i * slots..(i + 1) * slots].copy_from_slice(&min);
        }
        let min_rule = (0..slots)
            .map(|slot| mins.iter().skip(slot).step_by(slots).copied().collect())
            .collect();
        Trie {
            origins: Origins::from(self.origins),
            nodes,
            min_rule,
            regexes: self.regexes,
            globs: self.globs,
        }
    }
}

fn freeze(b: BuildNode) -> Node {
    let mut node = Node {
        flags: 0,
        param: NONE,
        group: NONE,
        star: NONE,
        lits: LitTable::Empty,
        regexes: Box::default(),
        globs: Box::default(),
        terminals: b.terminals.into_boxed_slice(),
    };
    let (mut lits, mut regexes, mut globs) = (Vec::new(), Vec::new(), Vec::new());
    for (edge, child) in b.order {
        match edge {
            Edge::Lit(s) => lits.push((s, child)),
            Edge::Param => node.param = child,
            Edge::Group => node.group = child,
            Edge::Star => node.star = child,
            Edge::Regex(r) => regexes.push((r, child)),
            Edge::Glob(g) => globs.push((g, child)),
        }
    }
    let flag = |present: bool, f: u8| if present { f } else { 0 };
    node.flags = flag(!lits.is_empty(), F_LITS)
        | flag(node.param != NONE, F_PARAM)
        | flag(!regexes.is_empty(), F_REGEX)
        | flag(node.group != NONE, F_GROUP)
        | flag(node.star != NONE, F_STAR)
        | flag(!globs.is_empty(), F_GLOB);
    node.lits = LitTable::from(lits);
    node.regexes = regexes.into_boxed_slice();
    node.globs = globs.into_boxed_slice();
    node
}

fn children(n: &Node) -> Vec<u32> {
    let mut out: Vec<u32> = n.lits.children().collect();
    out.extend(
        [n.param, n.group, n.star]
            .into_iter()
            .filter(|&c| c != NONE),
    );
    out.extend(n.regexes.iter().map(|&(_, c)| c));
    out.extend(n.globs.iter().map(|&(_, c)| c));
    out
}
