//! TOML syntax errors, reported by file, line, column and key path — never by quoting the source.
//!
//! The toml crate's `Display` of a parse error prints the offending source line under a caret. In
//! a configuration file that line is as likely as any other to hold an inline token or private
//! key (`token = "glpat-..." x`, a private key missing its closing quote), and the text would
//! reach the terminal of `check`, the journal through `ExecStartPre=`, and the log of a SIGHUP
//! reload. So a syntax error keeps only what locates it:
//!
//! * the 1-based line and column of the error's span;
//! * the key path of the key-value pair the error falls in (`scm[1].token`), found by walking the
//!   same `toml_parser` events the toml crate parses with: table headers, `[[array]]` indices,
//!   dotted keys and inline tables are followed exactly, and a string's contents are never taken
//!   for a key (a line scan would read `[x]` inside a multi-line string as a header);
//! * the parser's description of the problem ([`toml::de::Error::message`]): fixed texts naming
//!   token kinds (`invalid basic string, expected '"'`) or, for `cannot extend value of type X`, a
//!   type name. The source text only ever enters the rendering of `Display`, which is not used.
//!
//! Invariant: nothing in the [`ConfigError`] built here is taken from the source except key names,
//! and only keys that are plainly keys (bare, or quoted without escapes or control characters).

use std::collections::HashMap;
use std::path::Path;

use toml_parser::decoder::Encoding;
use toml_parser::parser::{Event, EventKind};

use super::error::{ConfigError, Position};

/// The configuration error for a TOML document `text` (read from `file`) that does not parse.
pub(super) fn parse_error(file: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let (at, key) = match e.span() {
        Some(span) => (
            Some(position(text, span.start)),
            key_at(text, span.start).unwrap_or_default(),
        ),
        None => (None, String::new()),
    };
    ConfigError {
        file: Some(file.to_path_buf()),
        at,
        key,
        message: format!("invalid TOML: {}", e.message()),
    }
}

/// Line and column (1-based, columns in characters) of byte `offset` of `text`. An offset at the
/// very end of a text ending in a newline points at that newline: the end of the last line, not
/// a line the editor does not show.
pub fn position(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    if offset == text.len() && text.ends_with('\n') {
        offset -= 1;
    }
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Position {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

/// A key as it may be shown: bare, or quoted without escapes and control characters; `None` for
/// anything else (the path it is part of is then not shown at all).
fn key_name(text: &str, e: &Event) -> Option<String> {
    let raw = text.get(e.span().start()..e.span().end())?;
    let inner = match e.encoding() {
        None => raw,
        Some(Encoding::BasicString) => raw.strip_prefix('"')?.strip_suffix('"')?,
        Some(Encoding::LiteralString) => raw.strip_prefix('\'')?.strip_suffix('\'')?,
        Some(_) => return None,
    };
    let plain = match e.encoding() {
        None => {
            !inner.is_empty()
                && inner
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }
        _ => !inner.contains(['\\', '"', '\'']) && !inner.chars().any(char::is_control),
    };
    plain.then(|| inner.to_owned())
}

/// What encloses the events being read inside a value.
enum Nest {
    /// An inline table; keys inside it are under this path (`None`: not showable).
    Inline(Option<String>),
    /// An array of values.
    Array,
}

/// Joins key segments under `prefix`; `None` when the prefix or a segment is not showable.
fn join(prefix: Option<&str>, keys: &[Option<String>]) -> Option<String> {
    let mut path = prefix?.to_owned();
    for k in keys {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(k.as_deref()?);
    }
    Some(path)
}

/// toml_parser's events for `text` (it recovers from errors: there are events past them).
fn parse_events(text: &str) -> Vec<Event> {
    let tokens = toml_parser::Source::new(text).lex().into_vec();
    let mut events: Vec<Event> = Vec::with_capacity(tokens.len());
    toml_parser::parser::parse_document(&tokens, &mut events, &mut ());
    events
}

/// The key path of the key-value pair (or of the key) at byte `offset` of `text`, in the
/// configuration's notation (`wireguard.peers[1].preshared_key`), or `None` when the offset is
/// in a table header, between entries, or on a key that cannot be shown.
pub fn key_at(text: &str, offset: usize) -> Option<String> {
    let events = parse_events(text);
    // The current table's path (`wireguard.peers[1]`); `None` when a header key is not showable.
    let mut table: Option<String> = Some(String::new());
    // The index of every array of tables seen so far, by its dotted name.
    let mut arrays: HashMap<String, usize> = HashMap::new();
    // Keys of a `[header]` / `[[header]]` being read.
    let mut header: Option<Vec<Option<String>>> = None;
    // Keys of a key being read, before its `=`; `after_dot` when the next one continues it.
    let mut pending: Vec<Option<String>> = Vec::new();
    let mut after_dot = false;
    let mut nesting: Vec<Nest> = Vec::new();
    // The path of the key-value pair being read, once past its `=`.
    let mut value: Option<Option<String>> = None;
    // The offset is on a key: it is named only if the key turns out to be a whole key followed
    // by `=` (a duplicate key, say), never when the parser read junk as a key.
    let mut in_key = false;

    for e in &events {
        let (span, kind) = (e.span(), e.kind());
        if in_key {
            match kind {
                EventKind::SimpleKey | EventKind::KeySep | EventKind::Whitespace => {}
                // A real `=` (the parser makes up an empty one when recovering).
                EventKind::KeyValSep if !span.is_empty() => {
                    match join(enclosing(&nesting, &table), &pending) {
                        Some(path) => return Some(path),
                        None => break,
                    }
                }
                _ => break,
            }
        } else if span.start() > offset || (span.start() == offset && kind != EventKind::SimpleKey)
        {
            break;
        }
        match kind {
            EventKind::StdTableOpen | EventKind::ArrayTableOpen => {
                header = Some(Vec::new());
                pending.clear();
                value = None;
            }
            EventKind::StdTableClose | EventKind::ArrayTableClose => {
                let keys = header.take().unwrap_or_default();
                table = render_header(&keys, kind == EventKind::ArrayTableClose, &mut arrays);
            }
            EventKind::SimpleKey => {
                // Two keys not joined by a dot are junk the parser recovered from, not a key.
                let name = if pending.is_empty() || after_dot {
                    key_name(text, e)
                } else {
                    None
                };
                after_dot = false;
                match &mut header {
                    Some(keys) => keys.push(name),
                    None => {
                        pending.push(name);
                        in_key |= value.is_none() && span.start() <= offset && offset < span.end();
                    }
                }
            }
            EventKind::KeySep => after_dot = true,
            EventKind::KeyValSep => {
                value = Some(join(enclosing(&nesting, &table), &pending));
                pending.clear();
            }
            EventKind::InlineTableOpen => {
                nesting.push(Nest::Inline(value.take().flatten()));
            }
            EventKind::InlineTableClose => {
                if let Some(Nest::Inline(p)) = nesting.pop() {
                    value = Some(p);
                }
            }
            EventKind::ArrayOpen => nesting.push(Nest::Array),
            EventKind::ArrayClose => {
                nesting.pop();
            }
            EventKind::ValueSep => {
                if matches!(nesting.last(), Some(Nest::Inline(_))) {
                    value = None;
                    pending.clear();
                }
            }
            EventKind::Newline if nesting.is_empty() => {
                value = None;
                pending.clear();
            }
            _ => {}
        }
    }
    if header.is_some() {
        return None;
    }
    value.flatten().or_else(|| inline_table_key(&nesting))
}

/// Between the entries of an inline table: the key whose value the innermost table is.
fn inline_table_key(nesting: &[Nest]) -> Option<String> {
    nesting.iter().rev().find_map(|n| match n {
        Nest::Inline(p) => p.clone(),
        Nest::Array => None,
    })
}

/// The path keys are read under: the innermost inline table's, else the current table's.
fn enclosing<'a>(nesting: &'a [Nest], table: &'a Option<String>) -> Option<&'a str> {
    nesting
        .iter()
        .rev()
        .find_map(|n| match n {
            Nest::Inline(p) => Some(p),
            Nest::Array => None,
        })
        .unwrap_or(table)
        .as_deref()
}

/// The path of a table header in the configuration's notation: each array of tables on the way
/// carries its current index. An `[[array]]` header opens its next element (and restarts the
/// arrays nested in it).
fn render_header(
    keys: &[Option<String>],
    is_array: bool,
    arrays: &mut HashMap<String, usize>,
) -> Option<String> {
    let names: Vec<&str> = keys
        .iter()
        .map(Option::as_deref)
        .collect::<Option<Vec<_>>>()?;
    if is_array {
        let name = names.join(".");
        let next = arrays.get(&name).map_or(0, |i| i + 1);
        let nested = format!("{name}.");
        arrays.retain(|k, _| !k.starts_with(&nested));
        arrays.insert(name, next);
    }
    let mut path = String::new();
    for i in 0..names.len() {
        if i > 0 {
            path.push('.');
        }
        path.push_str(names[i]);
        if let Some(idx) = arrays.get(&names[..=i].join(".")) {
            path.push_str(&format!("[{idx}]"));
        }
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn positions_are_one_based_in_characters() {
        let t = "a = 1\nbé = \"x\" y\n";
        assert_eq!(position(t, 0), Position { line: 1, column: 1 });
        let y = t.find('y').expect("y");
        assert_eq!(
            position(t, y),
            Position {
                line: 2,
                column: 10
            }
        );
        // The end of a text with a final newline is the end of its last line.
        assert_eq!(
            position(t, t.len()),
            Position {
                line: 2,
                column: 11
            }
        );
        assert_eq!(position("a", 1), Position { line: 1, column: 2 });
    }

    #[test]
    fn key_paths_follow_headers_arrays_dotted_keys_and_inline_tables() {
        let t = "top = 1\n[a]\nb.c = 2\n[[x]]\ny = 1\n[[x]]\ny = { z = [1, 2], \"q r\" = 3 }\n\
                 [[x.w]]\nv = 4\n[[x]]\n[[x.w]]\nv = 5\n";
        let at = |needle: &str| key_at(t, t.find(needle).expect(needle));
        assert_eq!(at("1\n[a]").as_deref(), Some("top"));
        assert_eq!(at("2\n").as_deref(), Some("a.b.c"));
        assert_eq!(at("[1, 2]").as_deref(), Some("x[1].y.z"));
        assert_eq!(at("2]").as_deref(), Some("x[1].y.z"));
        assert_eq!(at("3 }").as_deref(), Some("x[1].y.q r"));
        assert_eq!(at("4").as_deref(), Some("x[1].w[0].v"));
        assert_eq!(at("5").as_deref(), Some("x[2].w[0].v"));
        // On a key: that key; in a header or on junk: nothing.
        assert_eq!(at("c = 2").as_deref(), Some("a.b.c"));
        assert_eq!(at("b.c").as_deref(), Some("a.b.c"));
        assert_eq!(key_at(t, t.find("[a]").expect("header") + 1), None);
    }

    #[test]
    fn junk_the_parser_reads_as_keys_is_never_shown() {
        for (t, junk) in [
            ("[w]\nglpat-SECRET glpat-TWO = 1\n", "glpat-TWO"),
            ("[w]\nglpat-SECRET glpat-TWO\n", "glpat-TWO"),
            ("[w]\nglpat-SECRET\n", "\n"),
        ] {
            assert_eq!(key_at(t, t.find(junk).expect(junk)), None, "{t}");
        }
        // Junk after a value belongs to that value's key; between the entries of an inline
        // table, to the key whose value the table is (cases proptest found below).
        for (t, junk, key) in [
            ("[w]\ntoken = \"glpat-\" SECRET\n", "SECRET", "w.token"),
            ("[w]\ntoken = { file = \"x\" \\ }\n", "\\", "w.token.file"),
            ("[w]\ntoken = { file = \"x\" ,: }\n", ":", "w.token"),
        ] {
            assert_eq!(
                key_at(t, t.find(junk).expect(junk)).as_deref(),
                Some(key),
                "{t}"
            );
        }
    }

    #[test]
    fn keys_with_escapes_are_not_shown() {
        let t = "\"t\\u006fken\" = \"x\" y\n";
        assert_eq!(key_at(t, t.find('y').expect("y")), None);
    }

    proptest! {
        /// Whatever junk follows or breaks a secret, the error names the key and never the
        /// secret.
        #[test]
        fn a_broken_secret_line_never_reaches_the_error(
            secret in "S3CR3T[A-Za-z0-9+/_-]{8,40}",
            shape in 0usize..6,
            junk in "[ -~]{1,8}",
        ) {
            let line = match shape {
                0 => format!("token = \"{secret}\" {junk}"),
                1 => format!("token = \"{secret}"),
                2 => format!("token = {secret}"),
                3 => format!("token = '{secret}{junk}"),
                4 => format!("token = {{ file = \"{secret}\" {junk} }}"),
                _ => format!("token = \"\"\"{secret}"),
            };
            let text = format!("[[scm]]\ntype = \"gitlab\"\n{line}\n");
            if let Err(e) = toml::from_str::<toml::Table>(&text) {
                let shown = parse_error(Path::new("f.toml"), &text, &e).to_string();
                prop_assert!(!shown.contains(&secret), "{shown}");
                prop_assert!(shown.starts_with("f.toml:3:"), "{shown}");
                prop_assert!(shown.contains(": scm[0].token"), "{shown}");
            }
        }
    }
}
