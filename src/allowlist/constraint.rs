//! Per-rule checks beyond the URL pattern: the method bitmask, `path_files` globs, and `query` /
//! `headers` value constraints, all compiled at start-up.
//!
//! Invariants: checking never allocates on the common path (a `path_files` remainder longer than
//! [`STACK_DECODE`] bytes that contains escapes is the one exception) and never panics; a missing
//! query parameter or header fails its constraint; when a parameter or header occurs several times,
//! *every* occurrence must satisfy the constraint (an upstream may read either one).
//!
//! `path_files` glob subset, matched against the percent-decoded captured remainder:
//! `name` and `dir/name` (the whole remainder), `**/name` (the remainder or any `/`-suffix of it),
//! `*.ext` (a file directly in the remainder, no `/`), `**/*.ext` (any file ending in `.ext`).
//! All literals go into one Aho-Corasick automaton; a glob matches when one of its literals ends
//! exactly at the end of the remainder and the glob's kind accepts the position.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use super::ValueConstraint;
use crate::http::{Method, is_token, trim_ows};
use crate::percent::{self, byte_at};

/// A rule's methods as a bitmask over method slots (see [`MethodTable`]).
pub(crate) type MethodMask = u64;

/// Slot meaning "any method" (used to classify denials); no rule mask has this bit.
pub(crate) const ANY_SLOT: usize = 8;

/// The first slot of an extension method.
pub(crate) const FIRST_EXTENSION_SLOT: usize = ANY_SLOT + 1;

/// The most distinct extension methods one allowlist may name (the rest of a [`MethodMask`]).
pub(crate) const MAX_EXTENSIONS: usize = MethodMask::BITS as usize - FIRST_EXTENSION_SLOT;

/// Remainders up to this many bytes are percent-decoded on the stack.
pub(crate) const STACK_DECODE: usize = 1024;

/// The methods an allowlist can allow, each with a slot (a bit of a [`MethodMask`] and a column
/// of the trie's pruning table).
///
/// Design: the methods RFC 9110 defines have fixed slots 0..=7 (`GET`, `HEAD`, `POST`, `PUT`,
/// `PATCH`, `DELETE`, `OPTIONS`, `TRACE`), found by the same exact match the wire uses
/// ([`Method::of`]), so the common case costs what it did when only those existed. Every
/// distinct extension method some rule names (`PROPFIND`, `MKCOL`, `REPORT`, ...) is interned at
/// compile time and gets the next free slot from [`FIRST_EXTENSION_SLOT`]; a request with an
/// extension method finds its slot by a linear scan of those few names, and from then on is
/// matched exactly like a standard one (bit test, pruned walk). A method no rule names has no
/// slot and is denied without a walk of its own. `CONNECT` never has a slot: a rule cannot list it
/// and the HTTP layer refuses it with a 400 before asking.
#[derive(Debug, Default)]
pub(crate) struct MethodTable {
    /// Extension method names in slot order (slot = [`FIRST_EXTENSION_SLOT`] + index).
    extensions: Vec<Box<str>>,
}

impl MethodTable {
    /// The slot of a request method (exact, case-sensitive as HTTP says); `None` for a method no
    /// rule can allow: `CONNECT`, or an extension method no rule names.
    #[inline]
    pub fn slot(&self, method: &str) -> Option<usize> {
        Some(match Method::of(method) {
            Method::Get => 0,
            Method::Head => 1,
            Method::Post => 2,
            Method::Put => 3,
            Method::Patch => 4,
            Method::Delete => 5,
            Method::Options => 6,
            Method::Trace => 7,
            Method::Connect => return None,
            Method::Extension => {
                FIRST_EXTENSION_SLOT + self.extensions.iter().position(|e| **e == *method)?
            }
        })
    }

    /// Number of slots, [`ANY_SLOT`] included.
    pub fn slots(&self) -> usize {
        FIRST_EXTENSION_SLOT + self.extensions.len()
    }

    /// The mask of a rule's method list, interning its extension methods; the error lists every
    /// bad method of the list.
    pub fn mask(&mut self, methods: &[String]) -> Result<MethodMask, Vec<String>> {
        if methods.is_empty() {
            return Err(vec!["the method list is empty".to_owned()]);
        }
        let mut mask: MethodMask = 0;
        let mut errors = Vec::new();
        for m in methods {
            match self.rule_slot(m) {
                Ok(slot) => mask |= 1 << slot,
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(mask)
        } else {
            Err(errors)
        }
    }

    /// The slot of one method a rule lists, interning a new extension method.
    fn rule_slot(&mut self, m: &str) -> Result<usize, String> {
        match Method::of(m) {
            Method::Connect => return Err("CONNECT can never be allowed".to_owned()),
            Method::Extension => {}
            _ => return self.slot(m).ok_or_else(|| format!("{m:?}: no slot")),
        }
        if !is_token(m) {
            return Err(format!(
                "{m:?} is not a method (a method is a token: letters, digits and !#$%&'*+-.^_`|~)"
            ));
        }
        // A case variant of a standard method would be an extension method that no client
        // sends: almost certainly a typo for the real one.
        if let Some((known, _)) = Method::KNOWN
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(m))
        {
            return Err(format!(
                "{m:?} is not {known:?}: methods are case-sensitive"
            ));
        }
        if let Some(slot) = self.slot(m) {
            return Ok(slot);
        }
        if self.extensions.len() >= MAX_EXTENSIONS {
            return Err(format!(
                "{m:?}: more than {MAX_EXTENSIONS} distinct extension methods in the allowlist"
            ));
        }
        self.extensions.push(m.into());
        Ok(FIRST_EXTENSION_SLOT + self.extensions.len() - 1)
    }
}

/// Glob kinds, as bit flags on a literal.
const EXACT: u8 = 1;
const ANY_DEPTH: u8 = 2;
const FILE_SUFFIX: u8 = 4;
const ANY_SUFFIX: u8 = 8;

/// A compiled `path_files` set.
#[derive(Debug, Clone)]
pub(crate) struct FileSet {
    automaton: AhoCorasick,
    /// Per automaton pattern id: the [`EXACT`]/... flags of the globs using that literal.
    kinds: Vec<u8>,
}

impl FileSet {
    /// Compiles globs; the error lists each bad glob with the reason.
    pub fn compile(globs: &[String]) -> Result<FileSet, Vec<String>> {
        let mut literals: Vec<&str> = Vec::new();
        let mut kinds: Vec<u8> = Vec::new();
        let mut errors = Vec::new();
        for g in globs {
            match parse_glob(g) {
                Ok((lit, kind)) => match literals.iter().position(|l| *l == lit) {
                    Some(i) => kinds[i] |= kind,
                    None => {
                        literals.push(lit);
                        kinds.push(kind);
                    }
                },
                Err(e) => errors.push(format!("{g:?}: {e}")),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let automaton = AhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .build(&literals)
            .map_err(|e| vec![format!("cannot build the file automaton: {e}")])?;
        Ok(FileSet { automaton, kinds })
    }

    /// Whether the raw (still percent-encoded) remainder names an allowed file.
    pub fn matches(&self, raw: &[u8]) -> bool {
        if !raw.contains(&b'%') {
            return self.matches_decoded(raw);
        }
        let mut buf = [0u8; STACK_DECODE];
        if raw.len() <= STACK_DECODE {
            let n = percent::decode_into(raw, &mut buf);
            self.matches_decoded(&buf[..n])
        } else {
            let mut heap = vec![0u8; raw.len()];
            let n = percent::decode_into(raw, &mut heap);
            self.matches_decoded(&heap[..n])
        }
    }

    /// Whether a plain (not percent-encoded) path names an allowed file: the file lists of a
    /// webhook ([`crate::relay`]) and the values of `[[allow.body]]` globs.
    pub fn matches_path(&self, path: &[u8]) -> bool {
        self.matches_decoded(path)
    }

    fn matches_decoded(&self, hay: &[u8]) -> bool {
        let has_slash = hay.contains(&b'/');
        self.automaton.find_overlapping_iter(hay).any(|m| {
            if m.end() != hay.len() {
                return false;
            }
            let start = m.start();
            let kind = self.kinds.get(m.pattern().as_usize()).copied().unwrap_or(0);
            (kind & EXACT != 0 && start == 0)
                || (kind & ANY_DEPTH != 0 && (start == 0 || hay.get(start - 1) == Some(&b'/')))
                || (kind & FILE_SUFFIX != 0 && !has_slash)
                || kind & ANY_SUFFIX != 0
        })
    }
}

/// One glob of the supported subset → (literal, kind).
fn parse_glob(g: &str) -> Result<(&str, u8), &'static str> {
    const UNSUPPORTED: &str =
        "unsupported glob (supported: name, dir/name, **/name, *.ext, **/*.ext)";
    if g.is_empty() {
        return Err("empty glob");
    }
    if g.contains(['?', '[', ']', '{', '}', '\\']) {
        return Err(UNSUPPORTED);
    }
    let (any_depth, rest) = match g.strip_prefix("**/") {
        Some(r) => (true, r),
        None => (false, g),
    };
    if rest.contains("**") {
        return Err(UNSUPPORTED);
    }
    if let Some(suffix) = rest.strip_prefix('*') {
        if suffix.is_empty() {
            return Err("matches every file; drop `path_files` instead");
        }
        if suffix.contains(['*', '/']) {
            return Err(UNSUPPORTED);
        }
        return Ok((suffix, if any_depth { ANY_SUFFIX } else { FILE_SUFFIX }));
    }
    if rest.contains('*') {
        return Err(UNSUPPORTED);
    }
    if rest
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err("empty, '.' or '..' path component");
    }
    Ok((rest, if any_depth { ANY_DEPTH } else { EXACT }))
}

/// A compiled value constraint.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Equals(Box<[u8]>),
    Prefix(Box<[u8]>),
    OneOf(Box<[Box<[u8]>]>),
}

impl Value {
    pub fn compile(v: &ValueConstraint) -> Result<Value, String> {
        let check = |s: &str| {
            if s.bytes().any(|b| b < 0x20 || b == 0x7f) {
                Err("a value constraint contains a control character".to_owned())
            } else {
                Ok(Box::<[u8]>::from(s.as_bytes()))
            }
        };
        Ok(match v {
            ValueConstraint::Equals(s) => Value::Equals(check(s)?),
            ValueConstraint::Prefix(s) => Value::Prefix(check(s)?),
            ValueConstraint::OneOf(list) => {
                if list.is_empty() {
                    return Err("one-of with an empty list can never hold".to_owned());
                }
                Value::OneOf(list.iter().map(|s| check(s)).collect::<Result<_, _>>()?)
            }
        })
    }

    /// Whether the (decoded) value bytes satisfy the constraint.
    fn holds<I: Iterator<Item = u8> + Clone>(&self, value: I) -> bool {
        match self {
            Value::Equals(e) => value.eq(e.iter().copied()),
            Value::Prefix(p) => {
                let mut v = value;
                p.iter().all(|&b| v.next() == Some(b))
            }
            Value::OneOf(list) => list.iter().any(|e| value.clone().eq(e.iter().copied())),
        }
    }
}

/// Which constraint of a rule failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failed {
    /// The captured remainder is not an allowed file.
    PathFiles,
    /// The `i`-th query constraint.
    Query(usize),
    /// The `i`-th header constraint.
    Header(usize),
}

/// All extra constraints of one rule.
#[derive(Debug, Clone, Default)]
pub(crate) struct Constraints {
    /// The file set; it constrains the match of the pattern's last non-literal element.
    pub files: Option<FileSet>,
    pub query: Box<[(Box<[u8]>, Value)]>,
    pub headers: Box<[(Box<str>, Value)]>,
}

impl Constraints {
    pub fn is_empty(&self) -> bool {
        self.files.is_none() && self.query.is_empty() && self.headers.is_empty()
    }

    /// Checks every constraint; `capture` is the byte range of `path` matched by the pattern's
    /// last non-literal element.
    pub fn check(
        &self,
        path: &str,
        capture: (usize, usize),
        query: Option<&str>,
        headers: &[httparse::Header<'_>],
    ) -> Result<(), Failed> {
        if let Some(files) = &self.files {
            let remainder = path
                .as_bytes()
                .get(capture.0..capture.1)
                .unwrap_or_default();
            if !files.matches(remainder) {
                return Err(Failed::PathFiles);
            }
        }
        for (i, (name, value)) in self.query.iter().enumerate() {
            if !query_holds(query.unwrap_or(""), name, value) {
                return Err(Failed::Query(i));
            }
        }
        for (i, (name, value)) in self.headers.iter().enumerate() {
            if !header_holds(headers, name, value) {
                return Err(Failed::Header(i));
            }
        }
        Ok(())
    }
}

/// Form-style decoding of a query component: `%XX` → byte, `+` → space.
#[derive(Clone)]
struct FormDecode<'a> {
    bytes: &'a [u8],
    i: usize,
}

impl Iterator for FormDecode<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.i)?;
        if let Some(v) = byte_at(self.bytes, self.i) {
            self.i += 3;
            return Some(v);
        }
        self.i += 1;
        Some(if b == b'+' { b' ' } else { b })
    }
}

fn form(bytes: &[u8]) -> FormDecode<'_> {
    FormDecode { bytes, i: 0 }
}

fn query_holds(query: &str, name: &[u8], value: &Value) -> bool {
    let mut seen = false;
    for pair in query.as_bytes().split(|&b| b == b'&') {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        if form(k).eq(name.iter().copied()) {
            if !value.holds(form(v)) {
                return false;
            }
            seen = true;
        }
    }
    seen
}

fn header_holds(headers: &[httparse::Header<'_>], name: &str, value: &Value) -> bool {
    let mut seen = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case(name) {
            if !value.holds(trim_ows(h.value).iter().copied()) {
                return false;
            }
            seen = true;
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(globs: &[&str]) -> FileSet {
        FileSet::compile(&globs.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("valid globs")
    }

    #[test]
    fn file_globs() {
        let s = set(&[
            "**/package.json",
            ".snyk",
            "*.lock",
            "**/*.gradle",
            "ci/config.yml",
        ]);
        for ok in [
            "package.json",
            "a/b/package.json",
            "a%2Fpackage.json",
            ".snyk",
            "yarn.lock",
            "build.gradle",
            "x/y/settings.gradle",
            "ci/config.yml",
            "package%2Ejson",
        ] {
            assert!(s.matches(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "xpackage.json",
            "package.json/x",
            "a/.snyk",
            "x/yarn.lock",
            "lock",
            "a/ci/config.yml",
            "package.json.evil",
            "secrets.txt",
        ] {
            assert!(!s.matches(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn bad_globs() {
        for g in [
            "",
            "*",
            "**/*",
            "a/*.x",
            "a*b",
            "[ab].json",
            "**/a/**/b",
            "/abs",
            "a//b",
            "../x",
        ] {
            assert!(FileSet::compile(&[g.to_string()]).is_err(), "{g}");
        }
    }

    #[test]
    fn query_values() {
        let eq = Value::Equals(b"a b".to_vec().into());
        assert!(query_holds("x=1&ref=a+b", b"ref", &eq));
        assert!(query_holds("ref=a%20b", b"ref", &eq));
        assert!(!query_holds("ref=a+b&ref=c", b"ref", &eq));
        assert!(!query_holds("x=1", b"ref", &eq));
        let pre = Value::Prefix(b"refs/".to_vec().into());
        assert!(query_holds("r=refs%2Fheads", b"r", &pre));
        assert!(!query_holds("r=ref", b"r", &pre));
        let one = Value::OneOf(vec![b"x".to_vec().into(), b"".to_vec().into()].into());
        assert!(query_holds("flag", b"flag", &one));
    }

    #[test]
    fn methods() {
        let mut t = MethodTable::default();
        assert_eq!(t.mask(&["GET".into(), "OPTIONS".into()]), Ok(0b100_0001));
        assert_eq!(t.slots(), FIRST_EXTENSION_SLOT);
        // Extension methods are interned once, in order of appearance, after ANY_SLOT.
        assert_eq!(
            t.mask(&["PROPFIND".into(), "GET".into()]),
            Ok((1 << FIRST_EXTENSION_SLOT) | 1)
        );
        assert_eq!(
            t.mask(&["MKCOL".into(), "PROPFIND".into()]),
            Ok(0b11 << FIRST_EXTENSION_SLOT)
        );
        assert_eq!(t.slot("MKCOL"), Some(FIRST_EXTENSION_SLOT + 1));
        assert_eq!(t.slot("REPORT"), None);
        assert_eq!(t.slot("propfind"), None);
        assert_eq!(t.slots(), FIRST_EXTENSION_SLOT + 2);
        // Every bad method is reported, and nothing bad is interned.
        let errs = t
            .mask(&[
                "get".into(),
                "A B".into(),
                "CONNECT".into(),
                "".into(),
                "X".into(),
            ])
            .expect_err("bad methods");
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(t.mask(&[]).is_err());
        assert_eq!(t.slot("CONNECT"), None);
        assert_eq!(t.slots(), FIRST_EXTENSION_SLOT + 3, "X only");
        // The mask has room for MAX_EXTENSIONS extension methods, no more.
        let many: Vec<String> = (0..MAX_EXTENSIONS).map(|i| format!("M{i}")).collect();
        let mut full = MethodTable::default();
        assert!(full.mask(&many).is_ok());
        assert_eq!(full.slot(&many[MAX_EXTENSIONS - 1]), Some(63));
        assert!(full.mask(&["ONE-MORE".into()]).is_err());
    }

    #[test]
    fn header_trim() {
        assert_eq!(trim_ows(b"  a b \t"), b"a b");
        assert_eq!(trim_ows(b"   "), b"");
    }
}
