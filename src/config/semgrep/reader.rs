//! Reading Semgrep's YAML tree: typed values with their YAML paths, keys matched as viper
//! matches them, every key not read reported, and the translated TOML written with the path
//! it came from. [`super::keys`] walks Semgrep's schema with these.

use std::collections::HashMap;
use std::path::Path;

use toml::Value;
use yaml_rust2::Yaml;

use super::{Note, Translated};
use crate::config::error::{ConfigError, Position};

/// The position of the first alias (`*name`) in `text`, if any.
pub(super) fn first_alias(text: &str) -> Option<Position> {
    use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
    use yaml_rust2::scanner::Marker;
    struct Find(Option<Position>);
    impl MarkedEventReceiver for Find {
        fn on_event(&mut self, ev: Event, mark: Marker) {
            if self.0.is_none() && matches!(ev, Event::Alias(_)) {
                self.0 = Some(Position {
                    line: mark.line(),
                    column: mark.col() + 1,
                });
            }
        }
    }
    let mut find = Find(None);
    // A syntax error is reported by the loader that runs next.
    let _ = Parser::new_from_str(text).load(&mut find, true);
    find.0
}

/// The key path of block-style YAML at 1-based `line`: the keys of the enclosing mappings by
/// indentation, with `[i]` for list items. Only plain keys (letters, digits, `_`, `-`) are shown,
/// never a value.
pub(super) fn key_at(text: &str, line: usize) -> String {
    // (indent, key or list index)
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut items: HashMap<(String, usize), usize> = HashMap::new();
    for l in text.lines().take(line) {
        let trimmed = l.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut indent = l.len() - trimmed.len();
        let mut rest = trimmed;
        while let Some(r) = rest.strip_prefix("- ") {
            stack.retain(|(i, _)| *i < indent);
            let parent = render_path(&stack);
            let n = items.entry((parent.clone(), indent)).or_insert(0);
            let idx = *n;
            *n += 1;
            items.retain(|(p, _), _| !p.starts_with(&format!("{parent}[")) || p == &parent);
            stack.push((indent, format!("[{idx}]")));
            indent += 2;
            rest = r.trim_start();
        }
        let key_end = rest.find(':');
        let key = key_end.map(|e| &rest[..e]).filter(|k| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        if let Some(k) = key {
            stack.retain(|(i, _)| *i < indent);
            stack.push((indent, k.to_owned()));
        }
    }
    render_path(&stack)
}

fn render_path(stack: &[(usize, String)]) -> String {
    let mut s = String::new();
    for (_, k) in stack {
        if !k.starts_with('[') && !s.is_empty() {
            s.push('.');
        }
        s.push_str(k);
    }
    s
}

/// Human name of a YAML value's type.
pub(super) fn yaml_type(v: &Yaml) -> &'static str {
    match v {
        Yaml::Real(_) => "a number",
        Yaml::Integer(_) => "an integer",
        Yaml::String(_) => "a string",
        Yaml::Boolean(_) => "a boolean",
        Yaml::Array(_) => "a list",
        Yaml::Hash(_) => "a mapping",
        Yaml::Alias(_) => "an alias",
        Yaml::Null => "null",
        Yaml::BadValue => "an invalid value",
    }
}

/// One YAML mapping being read: keys are matched case-insensitively (viper lower-cases them) and
/// whatever is not read is an unknown key.
pub(super) struct Map<'y> {
    path: String,
    pub(super) entries: Vec<(&'y str, &'y Yaml)>,
    used: Vec<bool>,
}

impl<'y> Map<'y> {
    /// The YAML path of a key as written.
    pub(super) fn key(&self, k: &str) -> String {
        if self.path.is_empty() {
            k.to_owned()
        } else {
            format!("{}.{k}", self.path)
        }
    }

    /// The value of `key` (any case) and its path; `null` counts as absent, as in Semgrep.
    pub(super) fn get(&mut self, key: &str) -> Option<(String, &'y Yaml)> {
        let i = self
            .entries
            .iter()
            .position(|(k, _)| k.eq_ignore_ascii_case(key))?;
        self.used[i] = true;
        let (k, v) = self.entries[i];
        (!matches!(v, Yaml::Null)).then(|| (self.key(k), v))
    }
}

/// The translation of one file: errors and output.
pub(super) struct Tx<'f> {
    pub(super) file: &'f Path,
    pub(super) errors: Vec<ConfigError>,
    pub(super) out: Translated,
}

impl<'f> Tx<'f> {
    pub(super) fn error(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: Some(self.file.to_path_buf()),
            at: None,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    pub(super) fn note(&mut self, key: &str, text: impl Into<String>) {
        self.out.notes.push(Note {
            key: key.to_owned(),
            text: text.into(),
        });
    }

    /// Opens the mapping at `v` (path `path`).
    pub(super) fn map<'y>(&mut self, path: &str, v: &'y Yaml) -> Option<Map<'y>> {
        match v {
            Yaml::Hash(h) => {
                let mut entries = Vec::with_capacity(h.len());
                for (k, v) in h {
                    match k {
                        Yaml::String(k) => entries.push((k.as_str(), v)),
                        other => self.error(
                            path,
                            format!("a key is {}, expected a string", yaml_type(other)),
                        ),
                    }
                }
                let used = vec![false; entries.len()];
                Some(Map {
                    path: path.to_owned(),
                    entries,
                    used,
                })
            }
            other => {
                self.error(
                    path,
                    format!("expected a mapping, found {}", yaml_type(other)),
                );
                None
            }
        }
    }

    /// Reports every key of `m` not read.
    pub(super) fn finish(&mut self, m: Map<'_>) {
        for (i, (k, _)) in m.entries.iter().enumerate() {
            if !m.used[i] {
                let path = m.key(k);
                self.error(
                    &path,
                    "unknown key (not in the Semgrep Network Broker's configuration schema)",
                );
            }
        }
    }

    /// Records that TOML `toml` came from YAML `yaml`.
    pub(super) fn from(&mut self, toml: &str, yaml: &str) {
        self.out.paths.push((toml.to_owned(), yaml.to_owned()));
    }

    pub(super) fn string(&mut self, path: &str, v: &Yaml) -> Option<String> {
        match v {
            Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
            Yaml::Integer(i) => Some(i.to_string()),
            Yaml::Boolean(b) => Some(b.to_string()),
            other => {
                self.error(
                    path,
                    format!("expected a string, found {}", yaml_type(other)),
                );
                None
            }
        }
    }

    pub(super) fn int(&mut self, path: &str, v: &Yaml) -> Option<i64> {
        match v {
            Yaml::Integer(i) => Some(*i),
            Yaml::String(s) if s.trim().parse::<i64>().is_ok() => s.trim().parse().ok(),
            other => {
                self.error(
                    path,
                    format!("expected an integer, found {}", yaml_type(other)),
                );
                None
            }
        }
    }

    /// Go's `strconv.ParseBool` forms, as viper's weak decoding accepts.
    pub(super) fn bool(&mut self, path: &str, v: &Yaml) -> Option<bool> {
        match v {
            Yaml::Boolean(b) => Some(*b),
            Yaml::Integer(1) => Some(true),
            Yaml::Integer(0) => Some(false),
            Yaml::String(s) => match s.as_str() {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
                "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
                _ => {
                    self.error(path, "expected a boolean (true or false)");
                    None
                }
            },
            other => {
                self.error(
                    path,
                    format!("expected a boolean, found {}", yaml_type(other)),
                );
                None
            }
        }
    }

    /// A list of strings; a single string is a list of one (viper's weak decoding).
    pub(super) fn strings(&mut self, path: &str, v: &Yaml) -> Option<Vec<String>> {
        match v {
            Yaml::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    out.push(self.string(&format!("{path}[{i}]"), item)?);
                }
                Some(out)
            }
            other => self.string(path, other).map(|s| vec![s]),
        }
    }

    /// A whole number of seconds as our duration string.
    pub(super) fn seconds(&mut self, path: &str, v: &Yaml) -> Option<Value> {
        let n = self.int(path, v)?;
        if n < 0 {
            self.error(path, "must not be negative");
            return None;
        }
        Some(Value::String(format!("{n}s")))
    }
}
