//! The crate's layout as the crate docs (`src/lib.rs`) describe it, checked on the source: the
//! top-level modules import each other without cycles, and only `runtime/` names glommio.
//!
//! How: every `crate::<module>` path outside comments and `#[cfg(test)]` items is an edge from
//! the module whose file it is in (a test may use the test kit of a module that the code does
//! not depend on). Re-exports and `use crate::{a, b}` groups count too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

/// Import cycles that are known and owned elsewhere; each entry is one cycle's modules, sorted.
/// None today: a new cycle fails the test; break it rather than list it here.
const KNOWN_CYCLES: &[&[&str]] = &[];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `text` without comments and without the items marked `#[cfg(test)]`.
fn code_only(text: &str) -> String {
    let no_comments = Regex::new(r"//[^\n]*")
        .expect("regex")
        .replace_all(text, "");
    let mut out = String::with_capacity(no_comments.len());
    let mut rest: &str = &no_comments;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        // Skip the item: up to its `;` or the brace that closes its first `{`.
        let mut depth = 0usize;
        let mut end = rest.len();
        for (i, c) in rest[at..].char_indices() {
            match c {
                ';' if depth == 0 => {
                    end = at + i + 1;
                    break;
                }
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = at + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The files that only tests compile: `#[cfg(test)] mod name;` declarations.
fn test_only_files(files: &[PathBuf]) -> Vec<PathBuf> {
    let decl =
        Regex::new(r"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+(\w+)\s*;").expect("regex");
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).expect("read");
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let dir = f.parent().expect("parent");
        let base = if name == "mod.rs" || name == "lib.rs" {
            dir.to_path_buf()
        } else {
            dir.join(name.trim_end_matches(".rs"))
        };
        for c in decl.captures_iter(&text) {
            out.push(base.join(format!("{}.rs", &c[1])));
            out.push(base.join(&c[1]));
        }
    }
    out
}

/// The top-level module a file under `src/` belongs to (`None` for `lib.rs`, `main.rs`).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" => None,
        f => Some(f.trim_end_matches(".rs").to_owned()),
    }
}

/// Top-level module → the top-level modules its (non-test) code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let test_only = test_only_files(&files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    let path = Regex::new(r"crate::(\w+)").expect("regex");
    let group = Regex::new(r"crate::\{([^}]*)\}").expect("regex");
    let first_word = Regex::new(r"(?:^|,)\s*(\w+)").expect("regex");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(from) = module_of(f) else { continue };
        let edges = graph.entry(from.clone()).or_default();
        if test_only.iter().any(|t| f.starts_with(t)) {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(f).expect("read"));
        let named = path.captures_iter(&code).map(|c| c[1].to_owned()).chain(
            group.captures_iter(&code).flat_map(|g| {
                first_word
                    .captures_iter(&g[1])
                    .map(|c| c[1].to_owned())
                    .collect::<Vec<_>>()
            }),
        );
        edges.extend(named.filter(|m| *m != from && modules.contains(m)));
    }
    graph
}

/// The cycles of `graph`: its strongly connected components with more than one module.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Two modules are in one cycle when each reaches the other.
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(m) = todo.pop() {
            for n in graph.get(&m).into_iter().flatten() {
                if seen.insert(n.clone()) {
                    todo.push(n.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    for (m, r) in &reaches {
        let component: Vec<String> = reaches
            .iter()
            .filter(|(n, rn)| r.contains(**n) && rn.contains(*m))
            .map(|(n, _)| (*n).clone())
            .collect();
        if component.len() > 1 && !out.contains(&component) {
            out.push(component);
        }
    }
    out
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let graph = graph();
    assert!(
        graph.len() > 10 && graph["runtime"].contains("tunnel"),
        "the graph was read: {graph:?}"
    );
    let found = cycles(&graph);
    let known: Vec<Vec<String>> = KNOWN_CYCLES
        .iter()
        .map(|c| c.iter().map(|m| (*m).to_owned()).collect())
        .collect();
    let edges: Vec<String> = graph
        .iter()
        .map(|(m, deps)| format!("{m} -> {deps:?}"))
        .collect();
    assert_eq!(
        found,
        known,
        "import cycles among top-level modules (a module in a cycle cannot be understood or \
         tested without the others); the graph:\n{}",
        edges.join("\n")
    );
}

#[test]
fn cycles_are_found_in_a_graph_that_has_them() {
    let g = |edges: &[(&str, &str)]| {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            graph.entry((*a).into()).or_default().insert((*b).into());
            graph.entry((*b).into()).or_default();
        }
        graph
    };
    assert_eq!(
        cycles(&g(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])),
        vec![vec!["a".to_owned(), "b".into(), "c".into()]]
    );
    assert!(cycles(&g(&[("a", "b"), ("b", "c"), ("a", "c")])).is_empty());
    assert_eq!(
        code_only("use crate::a; // crate::b\n#[cfg(test)]\nmod t { use crate::c; }\nfn f() {}"),
        "use crate::a; \n\nfn f() {}"
    );
}

#[test]
fn only_the_runtime_names_glommio() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let runtime = src().join("runtime");
    let outside: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(&runtime))
        .filter(|f| code_only(&std::fs::read_to_string(f).expect("read")).contains("glommio"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        outside.is_empty(),
        "glommio outside src/runtime/ (the sans-IO cores and the application run without \
         io_uring): {outside:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Sizes: no function outside tests over ~100 lines and no file of logic over ~800 lines without
// a written reason (issue 13). A newcomer reads a function whole; past a screenful or two it
// should be split by concern, or say why it is not.

/// The most lines a function may span (its signature to its closing brace, comments included).
const MAX_FN_LINES: usize = 100;
/// The most lines of code a file may hold outside its tests (blank and comment lines not counted).
const MAX_FILE_CODE_LINES: usize = 800;

/// Functions (`path::name`, path under `src/`) and files (`path`) allowed over the limits, each
/// with its reason; an entry ending in `/` covers a folder. An entry that is no longer over its
/// limit fails the test: take it out.
const ALLOWED_SIZES: &[(&str, &str)] = &[
    (
        "netstack/tcp/conn/input.rs::on_synchronized",
        "RFC 9293 3.10.7.4's checks in the RFC's order (PAWS, window, RST, SYN, ACK), each an early return",
    ),
    (
        "netstack/tcp/conn/input.rs::on_ack",
        "one ACK's loss recovery in RFC order (SACK, RACK-TLP, PRR, RTO) over shared prior una/pipe; fuzzed: tcp_segments",
    ),
    (
        "http/chunked.rs::decode",
        "the chunked-body state machine, one arm per state; hot path, fuzzed as one unit",
    ),
    (
        "http/request.rs::parse_head",
        "request line then headers in one pass over the buffer (hot path, fuzzed: http_head)",
    ),
    (
        "tunnel/table.rs::receive",
        "classifies a datagram before any crypto, then one arm per boringtun result",
    ),
    (
        "loadtest/driver.rs::step",
        "tool: one load-test connection's state machine, one arm per state",
    ),
    (
        "loadtest/mod.rs::validate",
        "tool: one short, independent check per option, in the order of the flags",
    ),
];

/// `text` with every comment, string literal and char literal blanked (newlines kept), so that
/// braces and keywords can be counted on what is left.
fn blank_non_code(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to.min(b.len())] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |n| i + n);
            blank(&mut out, i, end);
            i = end;
        } else if rest.starts_with(b"/*") {
            // Block comments nest in Rust.
            let (mut depth, mut j) = (0usize, i);
            while j < b.len() {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if b[i] == b'r'
            && (i == 0 || !ident(b[i - 1]) || (b[i - 1] == b'b' && (i == 1 || !ident(b[i - 2]))))
            && rest[1..].iter().take_while(|&&c| c == b'#').count() + 1 < rest.len()
            && rest[1 + rest[1..].iter().take_while(|&&c| c == b'#').count()] == b'"'
        {
            // r"...", r#"..."#: ends at `"` and as many `#`.
            let hashes = rest[1..].iter().take_while(|&&c| c == b'#').count();
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let start = i + 2 + hashes;
            let end = b[start..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(b.len(), |n| start + n + close.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j + 1);
            i = j + 1;
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a): only the first is blanked.
            if rest.get(1) == Some(&b'\\') {
                // The escaped character may itself be `'`: the closing quote comes after it.
                let end = rest
                    .get(3..)
                    .and_then(|r| r.iter().position(|&c| c == b'\''))
                    .map_or(b.len(), |n| i + 3 + n + 1);
                blank(&mut out, i, end);
                i = end;
            } else if rest.get(2) == Some(&b'\'') {
                blank(&mut out, i, i + 3);
                i += 3;
            } else {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The index of the brace that closes the one at `open` in `code` (already blanked).
fn closing_brace(code: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, &c) in code.iter().enumerate().skip(open) {
        match c {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// `code` (already blanked) with the items marked `#[cfg(test)]` blanked too, lines kept.
fn without_test_items(code: &str) -> String {
    let mut out = code.as_bytes().to_vec();
    let b = code.as_bytes();
    let mut from = 0;
    while let Some(at) = code[from..].find("#[cfg(test)]").map(|n| from + n) {
        let body = b[at..].iter().position(|&c| c == b'{' || c == b';');
        let end = match body {
            Some(n) if b[at + n] == b'{' => closing_brace(b, at + n) + 1,
            Some(n) => at + n + 1,
            None => b.len(),
        };
        for c in &mut out[at..end.min(b.len())] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
        from = end.min(b.len());
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every function with a body in `code` (blanked, tests removed): its name and how many lines it
/// spans, from the line of `fn` to the line of its closing brace.
fn function_spans(code: &str) -> Vec<(String, usize)> {
    let b = code.as_bytes();
    let re = Regex::new(r"\bfn\s+(\w+)").expect("regex");
    let mut out = Vec::new();
    for c in re.captures_iter(code) {
        let whole = c.get(0).expect("match");
        // The body starts at the first `{` outside brackets; a `;` there first means no body.
        let mut depth = 0i32;
        let mut open = None;
        for (i, &ch) in b.iter().enumerate().skip(whole.end()) {
            match ch {
                b'(' | b'[' => depth += 1,
                b')' | b']' => depth -= 1,
                b';' if depth == 0 => break,
                b'{' if depth == 0 => {
                    open = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(open) = open else { continue };
        let close = closing_brace(b, open);
        let lines = code[whole.start()..close.min(code.len())]
            .matches('\n')
            .count()
            + 1;
        out.push((c[1].to_owned(), lines));
    }
    out
}

/// The reason `key` (`path` or `path::fn`) may be over its limit, if it has one.
fn size_reason(key: &str) -> Option<&'static str> {
    ALLOWED_SIZES
        .iter()
        .find(|(k, _)| *k == key || (k.ends_with('/') && key.starts_with(k)))
        .map(|(_, reason)| *reason)
}

/// What is over the limits in `src/`, outside tests: `path::fn` and `path` keys with their size.
fn oversized() -> Vec<(String, usize)> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let test_only = test_only_files(&files);
    let mut out = Vec::new();
    for f in &files {
        if test_only.iter().any(|t| f.starts_with(t)) {
            continue;
        }
        let rel = f
            .strip_prefix(src())
            .expect("under src")
            .to_string_lossy()
            .into_owned();
        let code = without_test_items(&blank_non_code(&std::fs::read_to_string(f).expect("read")));
        for (name, lines) in function_spans(&code) {
            if lines > MAX_FN_LINES {
                out.push((format!("{rel}::{name}"), lines));
            }
        }
        let code_lines = code.lines().filter(|l| !l.trim().is_empty()).count();
        if code_lines > MAX_FILE_CODE_LINES {
            out.push((rel, code_lines));
        }
    }
    out
}

#[test]
fn long_functions_and_files_have_a_written_reason() {
    let over = oversized();
    let unexplained: Vec<String> = over
        .iter()
        .filter(|(key, _)| size_reason(key).is_none())
        .map(|(key, lines)| format!("{key}: {lines} lines"))
        .collect();
    assert!(
        unexplained.is_empty(),
        "over {MAX_FN_LINES} lines (a function) or {MAX_FILE_CODE_LINES} lines of code (a file), \
         with no reason in ALLOWED_SIZES: split it by concern, or write down why not:\n{}",
        unexplained.join("\n")
    );
    let stale: Vec<&str> = ALLOWED_SIZES
        .iter()
        .map(|(key, _)| *key)
        .filter(|key| !key.ends_with('/') && !over.iter().any(|(k, _)| k == key))
        .collect();
    assert!(
        stale.is_empty(),
        "ALLOWED_SIZES entries no longer over their limit (take them out): {stale:?}"
    );
}

#[test]
fn the_size_scanner_counts_what_it_should() {
    let text = "fn a() {\n    let s = \"}\"; // }\n    let c = '{';\n    /* { */\n}\n\
                #[cfg(test)]\nmod t {\n    fn hidden() {\n    }\n}\n\
                trait T { fn no_body(&self) -> [u8; 2]; }\n\
                fn b<'a>(x: &'a str) -> [u8; 2] where 'a: 'a {\n    let r = (r#\"{\"#, br\"\\\", '\\'', b'{');\n    [0; 2]\n}\n";
    let code = without_test_items(&blank_non_code(text));
    assert_eq!(
        function_spans(&code),
        vec![("a".to_owned(), 5), ("b".to_owned(), 4)]
    );
    assert_eq!(code.lines().count(), text.lines().count(), "lines kept");
    assert!(size_reason("netstack/tcp/conn/input.rs::on_ack").is_some());
    // An entry names one function, not its file's others.
    assert_eq!(size_reason("netstack/tcp/conn/input.rs::on_segment"), None);
    assert_eq!(size_reason("server/conn.rs"), None);
}
