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
