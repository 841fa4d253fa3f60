//! Rule URL patterns: `scheme://host[:port]/path-pattern` parsed into an origin and a list of
//! path elements, each of which consumes whole path segments.
//!
//! Syntax (DESIGN.md section 5): literal segments; `:name` = one non-empty segment; `:name(re)` =
//! one non-empty segment matching `^(?:re)$`; `*` = any run of characters including `/`, possibly
//! empty, anywhere inside a segment of the pattern; `{:name/}+` = one or more non-empty segments
//! each followed by `/`. `\:` and `\*` escape a literal `:` or `*` (a backslash can never appear in
//! a canonical path, so the escape is unambiguous).
//!
//! Invariant: every element consumes one or more *whole* path segments. A pattern segment with a
//! `*` (a [`Glob`]) is bounded by `/` or the ends of the pattern, so whatever it matches starts at a
//! segment start and ends at a segment end; a pattern is thus a sequence of elements over the
//! segment list of the canonical path, which is what the trie walks. A trailing `/` in a pattern is
//! an element matching the empty last segment, exactly as `/a/` splits into `["a", ""]`.

use super::canon::{self, Scheme};

/// The most elements (segments) one pattern may have.
pub(crate) const MAX_ELEMS: usize = 64;

/// A parsed rule URL pattern.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    pub elems: Vec<Elem>,
}

/// One path element of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Elem {
    /// Exactly one segment equal to this canonical text (upper-case escapes).
    Lit(String),
    /// `:name`: one non-empty segment.
    Param,
    /// `:name(re)`: one non-empty segment matching the regex source (anchored when compiled).
    Regex(String),
    /// `{:name/}+`: one or more non-empty segments, each followed by `/`.
    Group,
    /// A pattern segment containing `*`: whole segments whose joined text matches the glob.
    Glob(Glob),
}

impl Pattern {
    /// Index of the last non-literal element: what `path_files` constrains.
    pub fn capture(&self) -> Option<usize> {
        self.elems.iter().rposition(|e| !matches!(e, Elem::Lit(_)))
    }
}

/// A pattern segment with one or more `*`: the literal pieces between the stars.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Glob {
    pieces: Vec<String>,
}

impl Glob {
    /// Whether the glob is a bare `*` (matches any text).
    pub fn is_any(&self) -> bool {
        self.pieces.iter().all(String::is_empty)
    }

    /// Whether `text` matches; `*` matches any run of bytes, `/` included.
    pub fn matches(&self, text: &[u8]) -> bool {
        let (first, rest) = match self.pieces.split_first() {
            Some(x) => x,
            None => return true,
        };
        let Some(mut t) = text.strip_prefix(first.as_bytes()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return t.is_empty();
        };
        let Some(end) = t.len().checked_sub(last.len()) else {
            return false;
        };
        if !t[end..].eq(last.as_bytes()) {
            return false;
        }
        t = &t[..end];
        // Leftmost placement of each middle piece is optimal for `*`-only globs.
        for piece in middle {
            let p = piece.as_bytes();
            match find(t, p) {
                Some(i) => t = &t[i + p.len()..],
                None => return false,
            }
        }
        true
    }
}

/// A compiled `:name(re)` segment matcher. Regexes that are a single character class repeated
/// (`\d+`, `\w+`, `[a-z0-9_.-]+`, also with `*`: a segment is never empty) become a 256-bit
/// byte set, checked without the regex engine; anything else is an anchored [`regex::Regex`].
/// The byte set is ASCII-only, so on (non-canonical) non-ASCII input it is stricter than the
/// Unicode-aware regex, never looser.
#[derive(Debug, Clone)]
pub(crate) enum SegmentRegex {
    Class([u64; 4]),
    Regex(regex::Regex),
}

impl SegmentRegex {
    /// Compiles `^(?:src)$`; the error is a message for the operator.
    pub fn compile(src: &str) -> Result<SegmentRegex, String> {
        let re = regex::RegexBuilder::new(&format!("^(?:{src})$"))
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("bad regex in :name({src}): {e}"))?;
        Ok(match byte_class(src) {
            Some(set) => SegmentRegex::Class(set),
            None => SegmentRegex::Regex(re),
        })
    }

    /// Whether the whole (non-empty) segment matches.
    #[inline]
    pub fn is_match(&self, seg: &[u8]) -> bool {
        match self {
            SegmentRegex::Class(set) => {
                !seg.is_empty()
                    && seg
                        .iter()
                        .all(|&b| set[usize::from(b >> 6)] >> (b & 63) & 1 == 1)
            }
            SegmentRegex::Regex(re) => std::str::from_utf8(seg).is_ok_and(|s| re.is_match(s)),
        }
    }
}

/// The byte set of a regex of the form `CLASS+` or `CLASS*`, where CLASS is `\d`, `\w` or a
/// bracket expression of ASCII characters, ranges, `\d`, `\w` and escaped punctuation.
fn byte_class(src: &str) -> Option<[u64; 4]> {
    let body = src.strip_suffix('+').or_else(|| src.strip_suffix('*'))?;
    let mut set = [0u64; 4];
    let mut add = |b: u8| set[usize::from(b >> 6)] |= 1 << (b & 63);
    let add_digits = |add: &mut dyn FnMut(u8)| (b'0'..=b'9').for_each(add);
    let add_word = |add: &mut dyn FnMut(u8)| {
        (b'0'..=b'9')
            .chain(b'a'..=b'z')
            .chain(b'A'..=b'Z')
            .chain([b'_'])
            .for_each(add)
    };
    match body {
        "\\d" => add_digits(&mut add),
        "\\w" => add_word(&mut add),
        _ => {
            let inner = body.strip_prefix('[')?.strip_suffix(']')?.as_bytes();
            // Negation and set operations (`--`, `&&`, `~~`) are left to the regex engine.
            if inner.is_empty() || inner[0] == b'^' || inner.windows(2).any(|w| w == b"--") {
                return None;
            }
            let mut i = 0;
            while i < inner.len() {
                let c = inner[i];
                let lit = match c {
                    b'\\' => match *inner.get(i + 1)? {
                        b'd' => {
                            add_digits(&mut add);
                            i += 2;
                            continue;
                        }
                        b'w' => {
                            add_word(&mut add);
                            i += 2;
                            continue;
                        }
                        e if e.is_ascii_punctuation() => {
                            i += 1;
                            e
                        }
                        _ => return None,
                    },
                    b'[' | b']' | b'&' | b'~' => return None, // nested classes, set operations
                    c if c.is_ascii_graphic() => c,
                    _ => return None,
                };
                // A range `lit-hi` (a '-' first or last is a literal).
                if inner.get(i + 1) == Some(&b'-') && i + 2 < inner.len() {
                    let hi = inner[i + 2];
                    if hi == b'\\' || hi == b'[' || hi == b']' || !hi.is_ascii_graphic() || hi < lit
                    {
                        return None;
                    }
                    (lit..=hi).for_each(&mut add);
                    i += 3;
                } else {
                    add(lit);
                    i += 1;
                }
            }
        }
    }
    Some(set)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses a rule URL pattern; the error is a message for the operator.
pub(crate) fn parse(url: &str) -> Result<Pattern, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "a pattern is an absolute url: scheme://host[:port]/path".to_owned())?;
    let scheme =
        Scheme::parse(scheme).ok_or_else(|| format!("scheme {scheme:?} is not http or https"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err("userinfo is not allowed in a pattern".to_owned());
    }
    if authority.contains('*') || authority.contains('{') {
        return Err("wildcards in the host are not supported".to_owned());
    }
    if authority.contains(['?', '#']) || path.contains(['?', '#']) {
        return Err("no query or fragment in a pattern (use `query` constraints)".to_owned());
    }
    let (host, port) = canon::split_host_port(authority, scheme).map_err(|e| e.0.to_owned())?;
    let elems = parse_path(path)?;
    Ok(Pattern {
        scheme,
        host,
        port,
        elems,
    })
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Parses the path part (starting with `/`) into elements.
pub(crate) fn parse_path(path: &str) -> Result<Vec<Elem>, String> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err("the path must start with '/'".to_owned());
    }
    let mut elems = Vec::new();
    let mut i = 1;
    loop {
        if elems.len() >= MAX_ELEMS {
            return Err(format!("more than {MAX_ELEMS} path segments"));
        }
        let at_end;
        if b.get(i) == Some(&b'{') {
            i = parse_group(path, i)?;
            elems.push(Elem::Group);
            // The group's own trailing '/' separates it from the next element.
            if i == b.len() {
                elems.push(Elem::Lit(String::new()));
                break;
            }
            continue;
        } else if b.get(i) == Some(&b':') {
            let (elem, next) = parse_param(path, i)?;
            elems.push(elem);
            i = next;
            at_end = i == b.len();
            if !at_end && b[i] != b'/' {
                return Err(format!(
                    "a :name must be a whole segment (at byte {i}); escape a literal ':' as '\\:'"
                ));
            }
        } else {
            let (elem, next) = parse_segment(path, i)?;
            i = next;
            at_end = i == b.len();
            if !at_end && matches!(&elem, Elem::Lit(s) if s.is_empty()) {
                return Err("empty path segment ('//')".to_owned());
            }
            elems.push(elem);
        }
        if at_end {
            break;
        }
        i += 1; // the '/'
    }
    Ok(elems)
}

/// `{:name/}+` starting at `i`; returns the index after `+`.
fn parse_group(path: &str, i: usize) -> Result<usize, String> {
    let b = path.as_bytes();
    let bad = || "only `{:name/}+` groups are supported".to_owned();
    let mut j = i + 1;
    if b.get(j) != Some(&b':') {
        return Err(bad());
    }
    j += 1;
    if !b.get(j).copied().is_some_and(is_ident_start) {
        return Err(bad());
    }
    while b.get(j).copied().is_some_and(is_ident) {
        j += 1;
    }
    if b.get(j..j + 3) != Some(b"/}+".as_slice()) {
        return Err(bad());
    }
    Ok(j + 3)
}

/// `:name` or `:name(regex)` starting at `i`; returns the element and the index after it.
fn parse_param(path: &str, i: usize) -> Result<(Elem, usize), String> {
    let b = path.as_bytes();
    let mut j = i + 1;
    if !b.get(j).copied().is_some_and(is_ident_start) {
        return Err(format!(
            "':' at byte {i} does not start a :name; escape a literal ':' as '\\:'"
        ));
    }
    while b.get(j).copied().is_some_and(is_ident) {
        j += 1;
    }
    if b.get(j) != Some(&b'(') {
        return Ok((Elem::Param, j));
    }
    let start = j + 1;
    let end = regex_end(b, start).ok_or_else(|| format!("unclosed '(' at byte {j}"))?;
    let src = &path[start..end];
    if src.is_empty() {
        return Err("empty regex in :name()".to_owned());
    }
    Ok((Elem::Regex(src.to_owned()), end + 1))
}

/// Index of the `)` closing a regex that starts at `start`, honouring escapes, nested groups and
/// character classes.
fn regex_end(b: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_class = false;
    let mut j = start;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 1,
            b'[' if !in_class => {
                in_class = true;
                // `[]...]` and `[^]...]`: a leading ']' is literal.
                if b.get(j + 1) == Some(&b'^') {
                    j += 1;
                }
                if b.get(j + 1) == Some(&b']') {
                    j += 1;
                }
            }
            b']' if in_class => in_class = false,
            b'(' if !in_class => depth += 1,
            b')' if !in_class => {
                if depth == 0 {
                    return Some(j);
                }
                depth -= 1;
            }
            _ => {}
        }
        j += 1;
    }
    None
}

/// A literal or glob segment starting at `i`, up to the next unescaped `/` or the end.
fn parse_segment(path: &str, i: usize) -> Result<(Elem, usize), String> {
    let b = path.as_bytes();
    let mut pieces = vec![String::new()];
    let mut j = i;
    while j < b.len() && b[j] != b'/' {
        let c = b[j];
        match c {
            b'\\' => match b.get(j + 1) {
                Some(&e @ (b':' | b'*')) => {
                    push_byte(&mut pieces, e);
                    j += 2;
                    continue;
                }
                _ => return Err("'\\' only escapes ':' or '*'".to_owned()),
            },
            b'*' => pieces.push(String::new()),
            b'{' | b'}' => {
                return Err("'{' only starts a `{:name/}+` group at a segment start".to_owned());
            }
            b'%' => {
                // Copy the escape upper-cased; validity is checked below.
                push_byte(&mut pieces, c);
                j += 1;
                for _ in 0..2 {
                    if let Some(&h) = b.get(j).filter(|h| h.is_ascii_hexdigit()) {
                        push_byte(&mut pieces, h.to_ascii_uppercase());
                        j += 1;
                    }
                }
                continue;
            }
            _ => push_byte(&mut pieces, c),
        }
        j += 1;
    }
    let j = j.min(b.len());
    for piece in &pieces {
        canon::check_segment_chars(piece.as_bytes())
            .map_err(|e| format!("segment {:?}: {}", &path[i..j], e.0))?;
    }
    if pieces.len() == 1 {
        let lit = pieces.pop().unwrap_or_default();
        canon::check_segment(&lit).map_err(|e| {
            format!(
                "literal segment {lit:?} can never match a canonical url: {}",
                e.0
            )
        })?;
        Ok((Elem::Lit(lit), j))
    } else {
        Ok((Elem::Glob(Glob { pieces }), j))
    }
}

fn push_byte(pieces: &mut [String], b: u8) {
    if let Some(last) = pieces.last_mut() {
        last.push(char::from(b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elems(p: &str) -> Vec<Elem> {
        parse_path(p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    fn glob(p: &str) -> Glob {
        match elems(&format!("/{p}")).pop() {
            Some(Elem::Glob(g)) => g,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn elements() {
        use Elem::*;
        assert_eq!(elems("/"), vec![Lit(String::new())]);
        assert_eq!(
            elems("/a/:b/:c(\\d+)/"),
            vec![
                Lit("a".into()),
                Param,
                Regex("\\d+".into()),
                Lit(String::new())
            ]
        );
        assert_eq!(
            elems("/{:ns/}+:p/info"),
            vec![Group, Param, Lit("info".into())]
        );
        assert_eq!(
            elems("/x/{:ns/}+"),
            vec![Lit("x".into()), Group, Lit(String::new())]
        );
        assert_eq!(
            elems("/a%2fb/\\:x"),
            vec![Lit("a%2Fb".into()), Lit(":x".into())]
        );
        assert_eq!(elems("/:r([a-z/)]+)"), vec![Regex("[a-z/)]+".into())]);
        assert!(matches!(elems("/api/*").as_slice(), [Lit(_), Glob(g)] if g.is_any()));
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "a",
            "/a//b",
            "/:",
            "/:1",
            "/a:b:c/x:y/:n-x",
            "/:n(",
            "/:n()",
            "/{:a}+",
            "/{x/}+",
            "/a{",
            "/..",
            "/%2e",
            "/a\\b",
            "/a b",
            "/%zz",
            "/%0a",
            "/%/x",
        ] {
            assert!(parse_path(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse("https://h/a?x=1").is_err());
        assert!(parse("https://u@h/a").is_err());
        assert!(parse("ftp://h/a").is_err());
        assert!(parse("https://*.h/a").is_err());
    }

    #[test]
    fn globs() {
        let g = glob("a*b*c");
        assert!(g.matches(b"abc"));
        assert!(g.matches(b"a/x/b/y/c"));
        assert!(!g.matches(b"ab"));
        assert!(!g.matches(b"acb"));
        let g = glob("*.json");
        assert!(g.matches(b".json"));
        assert!(g.matches(b"x/y.json"));
        assert!(!g.matches(b"json"));
        let g = glob("ab*ba");
        assert!(!g.matches(b"aba"));
        assert!(g.matches(b"abba"));
        assert!(glob("*").matches(b""));
    }

    #[test]
    fn byte_classes_agree_with_the_regex_engine() {
        let sources = [
            r"\d+",
            r"\w+",
            "[a-z]+",
            "[a-z0-9_.-]+",
            "[-a]+",
            r"[\d\-]*",
            "[A-Fa-f0-9]+",
            r"[\w.]+",
            "[ab]+",
            "a|x",
            "[^a]+",
            r"\d{2}",
            "[a-]+",
            "[:@]+",
            "(ab)+",
            "[[:alpha:]]+",
            "[a-z--b]+",
            "[+--]+",
        ];
        let inputs = [
            "", "a", "ab", "abc", "0", "123", "12a", "a-b", "-", "_", ".", "A9f", "x.y", "%2F",
            ":@", "zz", "b", "+,",
        ];
        for src in sources {
            let fast = SegmentRegex::compile(src).expect("valid");
            let slow = regex::Regex::new(&format!("^(?:{src})$")).expect("valid");
            for input in inputs {
                let want = !input.is_empty() && slow.is_match(input);
                assert_eq!(fast.is_match(input.as_bytes()), want, "{src} on {input:?}");
            }
        }
        assert!(matches!(
            SegmentRegex::compile(r"\d+"),
            Ok(SegmentRegex::Class(_))
        ));
        assert!(matches!(
            SegmentRegex::compile("[a-z0-9_.-]+"),
            Ok(SegmentRegex::Class(_))
        ));
        assert!(matches!(
            SegmentRegex::compile("a|x"),
            Ok(SegmentRegex::Regex(_))
        ));
        assert!(SegmentRegex::compile("[").is_err());
    }

    #[test]
    fn capture_is_last_wildcard() {
        let p = parse("https://h/a/:b/c/*/d").expect("valid");
        assert_eq!(p.capture(), Some(3));
        assert_eq!(parse("https://h/a").expect("valid").capture(), None);
    }
}
