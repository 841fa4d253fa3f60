//! Semgrep Network Broker configurations (YAML), read as they are and translated into ours.
//!
//! An operator moving from the Semgrep Network Broker keeps their `config.yaml`: `-c` takes it
//! (by extension `.yaml`/`.yml`, or by content: a first key `inbound:`, `outbound:` or
//! `metrics:`), overlaid with TOML files in any order. Each YAML file is translated, key by key,
//! into a TOML layer of our schema ([`translate`]); the layers then overlay and validate exactly
//! as TOML files do, so every check, error and `dump` is the TOML one. `wgbroker import` prints
//! the merged translation as TOML, with a comment wherever a value was translated rather than
//! copied ([`render_import`]).
//!
//! # Rules of the translation
//!
//! * Every key of Semgrep's schema (`inbound`, `outbound`, `metrics`; keys matched
//!   case-insensitively, as viper does) maps to ours or is an error naming its YAML path — a key
//!   is never dropped silently. Keys that only change behaviour wgbroker already has (e.g.
//!   `heartbeat.firstHeartbeatMustSucceed`: `/readyz` is 503 until a heartbeat passes) are
//!   accepted and the import says what they map to.
//! * Overlays follow Semgrep: maps merge, lists replace, except `inbound.scms` and the
//!   single-provider keys (`inbound.github` ...), whose entries are identified by type and base
//!   URL and merge field by field across files (see [`merge_scm`]).
//! * Semgrep's defaults where they differ from ours: heartbeat interval 60 s, upstream TLS 1.3
//!   minimum; `SEMGREP_NETWORK_BROKER_PRIVATE_KEY` / `..._PATH` override the private key as in
//!   Semgrep ([`semgrep_defaults`]).
//! * Allowlist URL patterns are passed unchanged: Semgrep matches them as WHATWG URL patterns
//!   (`:name` one non-empty segment, `*` any run of characters, `{:name/}+` one or more segments,
//!   query unconstrained, first match wins), which is the syntax and order our allowlist compiles
//!   (DESIGN.md section 5). A pattern using URL-pattern syntax we do not compile (a wildcard host,
//!   `?` modifiers) is an error at its `inbound.allowlist[N].url`.
//! * Errors from validation are reported at the YAML path the value came from (`inbound.
//!   allowlist[2].url`), via the path table each translation keeps ([`Translations::rewrite`]).
//!   No error ever quotes a value: a YAML syntax error is reported by line, column and key path,
//!   like TOML's (config/syntax.rs).
//!
//! # Why yaml-rust2
//!
//! `serde_yaml` is archived. `yaml-rust2` is maintained, pure safe Rust (no libyaml through
//! FFI), YAML 1.2, and yields a plain tree: we walk that tree by hand anyway (every error at
//! once, each with its path, as config/reader.rs explains), so a serde front-end would add
//! nothing. Its anchors are expanded by copying, so a document with aliases is refused before it
//! is loaded (no "billion laughs"); files are capped at [`MAX_YAML_BYTES`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use toml::{Table, Value};
use yaml_rust2::Yaml;

use super::error::{ConfigError, Position};
use super::overlay::Overlay;
use super::secret_source::SecretEnv;

/// Largest YAML file read: a broker configuration is a few KiB.
pub const MAX_YAML_BYTES: usize = 1 << 20;

/// Whether the layer `name` with `text` is a Semgrep YAML configuration: by extension, else by a
/// first key of Semgrep's schema (a TOML file starts with a `[table]` or `key =`).
pub fn is_yaml(name: &Path, text: &str) -> bool {
    match name.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml") => true,
        Some(e) if e.eq_ignore_ascii_case("toml") => false,
        _ => text
            .lines()
            .map(str::trim_end)
            .find(|l| !l.trim_start().is_empty() && !l.trim_start().starts_with('#'))
            .is_some_and(|l| {
                l == "---"
                    || ["inbound:", "outbound:", "metrics:"]
                        .iter()
                        .any(|k| l.to_ascii_lowercase().starts_with(k))
            }),
    }
}

/// A comment for `import`: why the value at `key` (a TOML path) is what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub key: String,
    pub text: String,
}

/// What the YAML layers of one load translated to: where each TOML key came from, and the notes.
#[derive(Debug, Default, Clone)]
pub struct Translations {
    /// Per YAML file: (TOML key path, YAML key path) pairs.
    paths: HashMap<PathBuf, Vec<(String, String)>>,
    pub notes: Vec<Note>,
    /// Whether any layer was YAML.
    pub any: bool,
}

impl Translations {
    /// Rewrites the key of each error found in a YAML file to the YAML path it came from.
    pub fn rewrite(&self, errors: &mut [ConfigError]) {
        for e in errors {
            let Some(pairs) = e.file.as_ref().and_then(|f| self.paths.get(f)) else {
                continue;
            };
            if let Some(k) = yaml_path(pairs, &e.key) {
                e.key = k;
            }
        }
    }
}

/// The YAML path of TOML `key`: the longest recorded TOML prefix of it, with the rest appended.
fn yaml_path(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs
        .iter()
        .filter(|(t, _)| {
            key == t
                || (key.starts_with(t.as_str())
                    && matches!(key.as_bytes().get(t.len()), Some(b'.' | b'[')))
        })
        .max_by_key(|(t, _)| t.len())
        .map(|(t, y)| format!("{y}{}", &key[t.len()..]))
}

/// Parses and overlays `layers` (TOML or YAML, in order), then applies Semgrep's defaults when
/// any layer was YAML. Syntax and translation errors are collected across all files.
pub(super) fn overlay(
    layers: &[(PathBuf, String)],
    env: &dyn SecretEnv,
) -> Result<(Overlay, Translations), Vec<ConfigError>> {
    let mut overlay = Overlay::default();
    let mut tr = Translations::default();
    let mut errors = Vec::new();
    for (name, text) in layers {
        if is_yaml(name, text) {
            tr.any = true;
            match translate(name, text) {
                Ok(mut t) => {
                    let mut pairs = std::mem::take(&mut t.paths);
                    if let Some(Value::Array(entries)) = t.table.remove("scm") {
                        let merged = merge_scm(&overlay.merged, entries, &mut t.scm_paths);
                        pairs.append(&mut t.scm_paths);
                        t.table.insert("scm".into(), Value::Array(merged));
                    }
                    tr.notes.append(&mut t.notes);
                    tr.paths.insert(name.clone(), pairs);
                    overlay.push(name.clone(), t.table);
                }
                Err(mut e) => errors.append(&mut e),
            }
        } else {
            match toml::from_str::<Table>(text) {
                Ok(t) => overlay.push(name.clone(), t),
                // Never `e.to_string()`: it quotes the source line, secrets and all.
                Err(e) => errors.push(super::syntax::parse_error(name, text, &e)),
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if tr.any {
        semgrep_defaults(&mut overlay.merged, &mut tr.notes, env);
    }
    Ok((overlay, tr))
}

/// A translated YAML file.
#[derive(Debug, Default)]
struct Translated {
    table: Table,
    notes: Vec<Note>,
    /// (TOML path, YAML path) of every translated key but the SCM entries.
    paths: Vec<(String, String)>,
    /// Per `scm` entry of `table` (by its index there): (TOML suffix, YAML path) pairs, turned
    /// into full paths once the entry's final index is known ([`merge_scm`]).
    scm_paths: Vec<(String, String)>,
}

/// Merges the translated `incoming` `[[scm]]` entries into those already overlaid, Semgrep's
/// way: an entry with the type and base URL of an earlier one updates it key by key, any other
/// is appended. `paths` holds `scm[i]` paths by incoming index; they are renumbered in place.
fn merge_scm(base: &Table, incoming: Vec<Value>, paths: &mut [(String, String)]) -> Vec<Value> {
    let mut out: Vec<Value> = match base.get("scm") {
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let mut index = Vec::with_capacity(incoming.len());
    for entry in incoming {
        let id = scm_identity(&entry);
        let at = out
            .iter()
            .position(|e| id.is_some() && scm_identity(e) == id);
        match (at, entry) {
            (Some(i), Value::Table(new)) => {
                if let Some(Value::Table(old)) = out.get_mut(i) {
                    old.extend(new);
                }
                index.push(i);
            }
            (_, entry) => {
                index.push(out.len());
                out.push(entry);
            }
        }
    }
    for (t, _) in paths.iter_mut() {
        // `scm[N]...` with N the incoming index.
        if let Some(rest) = t.strip_prefix("scm[") {
            if let Some((n, tail)) = rest.split_once(']') {
                if let Some(i) = n.parse::<usize>().ok().and_then(|n| index.get(n)) {
                    *t = format!("scm[{i}]{tail}");
                }
            }
        }
    }
    out
}

/// An SCM entry's identity: type and base URL, scheme and host lower-cased, no trailing `/`.
fn scm_identity(v: &Value) -> Option<(String, String)> {
    let t = v.as_table()?;
    let kind = t.get("type")?.as_str()?.to_ascii_lowercase();
    let url = t.get("base_url")?.as_str()?.trim_end_matches('/');
    let url = match url.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            format!(
                "{}://{}{path}",
                scheme.to_ascii_lowercase(),
                host.to_ascii_lowercase()
            )
        }
        None => url.to_owned(),
    };
    Some((kind, url))
}

/// Environment variables Semgrep reads the private key from; they override the file.
const KEY_ENV: &str = "SEMGREP_NETWORK_BROKER_PRIVATE_KEY";
const KEY_PATH_ENV: &str = "SEMGREP_NETWORK_BROKER_PRIVATE_KEY_PATH";

/// Semgrep's defaults where they differ from ours, applied once to the merged document.
fn semgrep_defaults(merged: &mut Table, notes: &mut Vec<Note>, env: &dyn SecretEnv) {
    if let Some(Value::Table(hb)) = merged.get_mut("heartbeat") {
        if !hb.contains_key("interval") {
            hb.insert("interval".into(), "60s".into());
            notes.push(Note {
                key: "heartbeat.interval".into(),
                text: "Semgrep's default intervalSeconds (ours is 30s)".into(),
            });
        }
    }
    let upstream = merged
        .entry("upstream")
        .or_insert_with(|| Value::Table(Table::new()));
    if let Value::Table(u) = upstream {
        if !u.contains_key("tls_min_version") {
            u.insert("tls_min_version".into(), "1.3".into());
            notes.push(Note {
                key: "upstream.tls_min_version".into(),
                text: "Semgrep's default httpClient.tlsMinVersion (ours is 1.2)".into(),
            });
        }
    }
    let source = if env.var(KEY_ENV).is_some_and(|v| !v.trim().is_empty()) {
        Some(("env", KEY_ENV.to_owned()))
    } else {
        env.var(KEY_PATH_ENV)
            .filter(|p| !p.is_empty())
            .map(|p| ("file", p))
    };
    if let Some((kind, arg)) = source {
        let wg = merged
            .entry("wireguard")
            .or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(wg) = wg {
            let mut t = Table::new();
            t.insert(kind.into(), arg.into());
            wg.insert("private_key".into(), Value::Table(t));
            notes.push(Note {
                key: "wireguard.private_key".into(),
                text: format!(
                    "from ${} (overrides inbound.wireguard.privateKey, as in Semgrep)",
                    if kind == "env" { KEY_ENV } else { KEY_PATH_ENV }
                ),
            });
        }
    }
}

/// Translates one Semgrep YAML file into a TOML layer of our schema.
fn translate(file: &Path, text: &str) -> Result<Translated, Vec<ConfigError>> {
    let err = |at: Option<Position>, key: String, message: String| ConfigError {
        file: Some(file.to_path_buf()),
        at,
        key,
        message,
    };
    if text.len() > MAX_YAML_BYTES {
        return Err(vec![err(
            None,
            String::new(),
            format!("larger than {MAX_YAML_BYTES} bytes"),
        )]);
    }
    if let Some(at) = first_alias(text) {
        return Err(vec![err(
            Some(at),
            key_at(text, at.line),
            "YAML aliases (*name) are not supported; write the value out".into(),
        )]);
    }
    let docs = match yaml_rust2::YamlLoader::load_from_str(text) {
        Ok(d) => d,
        Err(e) => {
            let at = Position {
                line: e.marker().line(),
                column: e.marker().col() + 1,
            };
            // The scanner's message may quote a character of the source: keep only fixed text.
            let info = e.info();
            let msg = if info.contains(['`', '\'', '"']) {
                "invalid YAML syntax".to_owned()
            } else {
                format!("invalid YAML: {info}")
            };
            return Err(vec![err(Some(at), key_at(text, at.line), msg)]);
        }
    };
    let root = match docs.as_slice() {
        [] => Yaml::Hash(Default::default()),
        [one] => one.clone(),
        _ => {
            return Err(vec![err(
                None,
                String::new(),
                "more than one YAML document (---); use one per file".into(),
            )]);
        }
    };
    let mut tx = Tx {
        file,
        errors: Vec::new(),
        out: Translated::default(),
    };
    tx.root(&root);
    if tx.errors.is_empty() {
        Ok(tx.out)
    } else {
        Err(tx.errors)
    }
}

/// The position of the first alias (`*name`) in `text`, if any.
fn first_alias(text: &str) -> Option<Position> {
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
fn key_at(text: &str, line: usize) -> String {
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
fn yaml_type(v: &Yaml) -> &'static str {
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
struct Map<'y> {
    path: String,
    entries: Vec<(&'y str, &'y Yaml)>,
    used: Vec<bool>,
}

impl<'y> Map<'y> {
    /// The YAML path of a key as written.
    fn key(&self, k: &str) -> String {
        if self.path.is_empty() {
            k.to_owned()
        } else {
            format!("{}.{k}", self.path)
        }
    }

    /// The value of `key` (any case) and its path; `null` counts as absent, as in Semgrep.
    fn get(&mut self, key: &str) -> Option<(String, &'y Yaml)> {
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
struct Tx<'f> {
    file: &'f Path,
    errors: Vec<ConfigError>,
    out: Translated,
}

impl<'f> Tx<'f> {
    fn error(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: Some(self.file.to_path_buf()),
            at: None,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn note(&mut self, key: &str, text: impl Into<String>) {
        self.out.notes.push(Note {
            key: key.to_owned(),
            text: text.into(),
        });
    }

    /// Opens the mapping at `v` (path `path`).
    fn map<'y>(&mut self, path: &str, v: &'y Yaml) -> Option<Map<'y>> {
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
    fn finish(&mut self, m: Map<'_>) {
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
    fn from(&mut self, toml: &str, yaml: &str) {
        self.out.paths.push((toml.to_owned(), yaml.to_owned()));
    }

    fn string(&mut self, path: &str, v: &Yaml) -> Option<String> {
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

    fn int(&mut self, path: &str, v: &Yaml) -> Option<i64> {
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
    fn bool(&mut self, path: &str, v: &Yaml) -> Option<bool> {
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
    fn strings(&mut self, path: &str, v: &Yaml) -> Option<Vec<String>> {
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
    fn seconds(&mut self, path: &str, v: &Yaml) -> Option<Value> {
        let n = self.int(path, v)?;
        if n < 0 {
            self.error(path, "must not be negative");
            return None;
        }
        Some(Value::String(format!("{n}s")))
    }

    fn root(&mut self, root: &Yaml) {
        let Some(mut m) = self.map("", root) else {
            return;
        };
        if let Some((p, v)) = m.get("inbound") {
            self.inbound(&p, v);
        }
        if let Some((p, v)) = m.get("outbound") {
            self.outbound(&p, v);
        }
        if let Some((p, v)) = m.get("metrics") {
            self.metrics(&p, v);
        }
        self.finish(m);
    }

    /// Sets `section.key` in the output.
    fn set(&mut self, section: &str, key: &str, value: Value, yaml: &str) {
        let t = self
            .out
            .table
            .entry(section)
            .or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(t) = t {
            t.insert(key.to_owned(), value);
        }
        self.from(&format!("{section}.{key}"), yaml);
    }

    fn inbound(&mut self, path: &str, v: &Yaml) {
        let Some(mut m) = self.map(path, v) else {
            return;
        };
        if let Some((p, v)) = m.get("wireguard") {
            self.wireguard(&p, v);
        }
        if let Some((p, v)) = m.get("allowlist") {
            self.allowlist(&p, v);
        }
        if let Some((p, v)) = m.get("proxyListenPort") {
            match self.int(&p, v) {
                // 0: Semgrep's default, 80, which is ours.
                Some(0) => {}
                Some(n) => self.set("inbound", "listen_port", Value::Integer(n), &p),
                None => {}
            }
        }
        if let Some((p, v)) = m.get("logging") {
            self.logging(&p, v);
        }
        if let Some((p, v)) = m.get("heartbeat") {
            self.heartbeat(&p, v);
        }
        let mut scms = Vec::new();
        if let Some((p, v)) = m.get("scms") {
            match v {
                Yaml::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let ip = format!("{p}[{i}]");
                        if let Some(e) = self.scm(&ip, item, None) {
                            scms.push(e);
                        }
                    }
                }
                other => self.error(&p, format!("expected a list, found {}", yaml_type(other))),
            }
        }
        for kind in ["github", "gitlab", "bitbucket", "azuredevops"] {
            if let Some((p, v)) = m.get(kind) {
                if let Some(e) = self.scm(&p, v, Some(kind)) {
                    scms.push(e);
                }
            }
        }
        if !scms.is_empty() {
            let mut entries = Vec::with_capacity(scms.len());
            for (i, (t, pairs)) in scms.into_iter().enumerate() {
                for (suffix, yaml) in pairs {
                    self.out.scm_paths.push((format!("scm[{i}]{suffix}"), yaml));
                }
                entries.push(Value::Table(t));
            }
            self.out.table.insert("scm".into(), Value::Array(entries));
        }
        if let Some((p, v)) = m.get("httpClient") {
            self.http_client(&p, v);
        }
        self.finish(m);
    }

    fn wireguard(&mut self, path: &str, v: &Yaml) {
        let Some(mut m) = self.map(path, v) else {
            return;
        };
        if let Some((p, v)) = m.get("localAddress") {
            if let Some(s) = self.string(&p, v) {
                // An address, sometimes written with the tunnel's prefix length.
                let addr = match s.split_once('/') {
                    Some((a, _)) => {
                        self.note("wireguard.address", "the prefix length of localAddress is not needed: peers' allowed_ips route");
                        a.to_owned()
                    }
                    None => s,
                };
                self.set("wireguard", "address", addr.into(), &p);
            }
        }
        if let Some((p, v)) = m.get("privateKey") {
            if let Some(s) = self.string(&p, v) {
                self.set("wireguard", "private_key", s.into(), &p);
            }
        }
        if let Some((p, v)) = m.get("listenPort") {
            if let Some(n) = self.int(&p, v) {
                self.set("wireguard", "listen_port", Value::Integer(n), &p);
            }
        }
        if let Some((p, v)) = m.get("mtu") {
            match self.int(&p, v) {
                // 0: Semgrep's default, 1320, which is ours.
                Some(0) | None => {}
                Some(n) => self.set("wireguard", "mtu", Value::Integer(n), &p),
            }
        }
        if let Some((p, v)) = m.get("dns") {
            if self.strings(&p, v).is_some_and(|d| !d.is_empty()) {
                self.note(
                    "wireguard",
                    "inbound.wireguard.dns is not needed: nothing is resolved inside the tunnel \
                     (the heartbeat URL names an address)",
                );
            }
        }
        if let Some((p, v)) = m.get("verbose") {
            if self.bool(&p, v) == Some(true) {
                self.out
                    .table
                    .entry("log")
                    .or_insert_with(|| Value::Table(Table::new()));
                if let Some(Value::Table(log)) = self.out.table.get_mut("log") {
                    log.insert("level".into(), "debug".into());
                }
                self.from("log.level", &p);
                self.note("log.level", "from inbound.wireguard.verbose: true");
            }
        }
        if let Some((p, v)) = m.get("disablePeerSettingsDnsLookup") {
            // wgbroker never looks peer settings up in DNS TXT records: true is what it does,
            // and with false every peer key must be written out anyway (a missing one is an
            // error of its own).
            let _ = self.bool(&p, v);
        }
        if let Some((p, v)) = m.get("peers") {
            match v {
                Yaml::Array(items) => {
                    let mut peers = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        let ip = format!("{p}[{i}]");
                        if let Some(t) = self.peer(&ip, i, item) {
                            peers.push(Value::Table(t));
                        }
                    }
                    if let Value::Table(wg) = self
                        .out
                        .table
                        .entry("wireguard")
                        .or_insert_with(|| Value::Table(Table::new()))
                    {
                        wg.insert("peers".into(), Value::Array(peers));
                    }
                    self.from("wireguard.peers", &p);
                }
                other => self.error(&p, format!("expected a list, found {}", yaml_type(other))),
            }
        }
        self.finish(m);
    }

    fn peer(&mut self, path: &str, index: usize, v: &Yaml) -> Option<Table> {
        let mut m = self.map(path, v)?;
        let mut t = Table::new();
        let tp = format!("wireguard.peers[{index}]");
        if let Some((p, v)) = m.get("publicKey") {
            if let Some(s) = self.string(&p, v) {
                t.insert("public_key".into(), s.into());
                self.from(&format!("{tp}.public_key"), &p);
            }
        }
        if let Some((p, v)) = m.get("endpoint") {
            if let Some(s) = self.string(&p, v) {
                t.insert("endpoint".into(), s.into());
                self.from(&format!("{tp}.endpoint"), &p);
            }
        }
        if let Some((p, v)) = m.get("allowedIps") {
            if let Some(list) = self.strings(&p, v) {
                // Semgrep takes one CIDR in a string; a comma-separated list reads the same.
                let nets: Vec<Value> = list
                    .iter()
                    .flat_map(|s| s.split(','))
                    .map(|s| Value::String(s.trim().to_owned()))
                    .collect();
                t.insert("allowed_ips".into(), Value::Array(nets));
                self.from(&format!("{tp}.allowed_ips"), &p);
            }
        }
        let mut keepalive = None;
        if let Some((p, v)) = m.get("persistentKeepaliveInterval") {
            match self.int(&p, v) {
                Some(n) if n > 0 => keepalive = Some((Value::Integer(n), p)),
                Some(_) => self.error(&p, "must be greater than zero (to turn keepalives off, set disablePersistentKeepalive: true)"),
                None => {}
            }
        }
        if let Some((p, v)) = m.get("disablePersistentKeepalive") {
            if self.bool(&p, v) == Some(true) {
                keepalive = Some((Value::Integer(0), p));
                self.note(
                    &format!("{tp}.persistent_keepalive"),
                    "disablePersistentKeepalive: true",
                );
            }
        }
        if let Some((value, p)) = keepalive {
            t.insert("persistent_keepalive".into(), value);
            self.from(&format!("{tp}.persistent_keepalive"), &p);
        }
        self.from(&tp, path);
        self.finish(m);
        Some(t)
    }

    fn allowlist(&mut self, path: &str, v: &Yaml) {
        let Yaml::Array(items) = v else {
            self.error(path, format!("expected a list, found {}", yaml_type(v)));
            return;
        };
        let mut rules = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{path}[{i}]");
            self.from(&format!("allow[{i}]"), &ip);
            let Some(mut m) = self.map(&ip, item) else {
                continue;
            };
            let mut t = Table::new();
            let tp = format!("allow[{i}]");
            if let Some((p, v)) = m.get("url") {
                if let Some(s) = self.string(&p, v) {
                    t.insert("url".into(), s.into());
                    self.from(&format!("{tp}.url"), &p);
                }
            }
            if let Some((p, v)) = m.get("methods") {
                if let Some(list) = self.strings(&p, v) {
                    let list: Vec<Value> = list
                        .into_iter()
                        .map(|s| Value::String(s.to_ascii_uppercase()))
                        .collect();
                    t.insert("methods".into(), Value::Array(list));
                    self.from(&format!("{tp}.methods"), &p);
                }
            } else {
                // Semgrep: no methods, nothing allowed. Ours requires the key; say so at the
                // YAML path.
                self.error(
                    &ip,
                    "missing methods (a rule without methods allows nothing)",
                );
            }
            if let Some((p, v)) = m.get("setRequestHeaders") {
                if let Some(mut h) = self.map(&p, v) {
                    let mut headers = Table::new();
                    let names: Vec<&str> = h.entries.iter().map(|(k, _)| *k).collect();
                    for name in names {
                        if let Some((hp, hv)) = h.get(name) {
                            if let Some(s) = self.string(&hp, hv) {
                                headers.insert(name.to_owned(), s.into());
                            }
                        }
                    }
                    self.finish(h);
                    t.insert("set_request_headers".into(), Value::Table(headers));
                    self.from(&format!("{tp}.set_request_headers"), &p);
                }
            }
            if let Some((p, v)) = m.get("removeResponseHeaders") {
                if let Some(list) = self.strings(&p, v) {
                    let list = list.into_iter().map(Value::String).collect();
                    t.insert("remove_response_headers".into(), Value::Array(list));
                    self.from(&format!("{tp}.remove_response_headers"), &p);
                }
            }
            for (yk, tk) in [
                ("logRequestBody", "log_request_body"),
                ("logRequestHeaders", "log_request_headers"),
                ("logResponseBody", "log_response_body"),
                ("logResponseHeaders", "log_response_headers"),
            ] {
                if let Some((p, v)) = m.get(yk) {
                    if let Some(b) = self.bool(&p, v) {
                        t.insert(tk.into(), Value::Boolean(b));
                        self.from(&format!("{tp}.{tk}"), &p);
                    }
                }
            }
            self.finish(m);
            rules.push(Value::Table(t));
        }
        self.out.table.insert("allow".into(), Value::Array(rules));
        self.from("allow", path);
    }

    fn logging(&mut self, path: &str, v: &Yaml) {
        let Some(mut m) = self.map(path, v) else {
            return;
        };
        if let Some((p, v)) = m.get("skipPaths") {
            if self.strings(&p, v).is_some_and(|s| !s.is_empty()) {
                self.error(
                    &p,
                    "not supported: wgbroker does not leave requests out of its log by path",
                );
            }
        }
        for k in [
            "logRequestBody",
            "logRequestHeaders",
            "logResponseBody",
            "logResponseHeaders",
        ] {
            if let Some((p, v)) = m.get(k) {
                if self.bool(&p, v) == Some(true) {
                    self.error(
                        &p,
                        format!(
                            "not supported for every request: wgbroker logs bodies and headers \
                             per rule; set {k}: true on the inbound.allowlist entries that need it \
                             (the rules generated for SCMs cannot log them)"
                        ),
                    );
                }
            }
        }
        self.finish(m);
    }

    fn heartbeat(&mut self, path: &str, v: &Yaml) {
        let Some(mut m) = self.map(path, v) else {
            return;
        };
        if let Some((p, v)) = m.get("url") {
            if let Some(s) = self.string(&p, v) {
                self.set("heartbeat", "url", s.into(), &p);
            }
        }
        if let Some((p, v)) = m.get("intervalSeconds") {
            match self.int(&p, v) {
                // 0: Semgrep's default (60 s), applied once the files are merged.
                Some(0) | None => {}
                Some(_) => {
                    if let Some(d) = self.seconds(&p, v) {
                        self.set("heartbeat", "interval", d, &p);
                    }
                }
            }
        }
        if let Some((p, v)) = m.get("timeoutSeconds") {
            match self.int(&p, v) {
                Some(0) | None => {}
                Some(_) => {
                    if let Some(d) = self.seconds(&p, v) {
                        self.set("heartbeat", "timeout", d, &p);
                    }
                }
            }
        }
        if let Some((p, v)) = m.get("panicAfterFailureCount") {
            if self.int(&p, v).is_some_and(|n| n > 0) {
                self.note(
                    "heartbeat",
                    "inbound.heartbeat.panicAfterFailureCount: wgbroker never exits on failed \
                     heartbeats; each failure is logged (heartbeat.failure) and /readyz answers \
                     503 until one passes: point the supervisor's probe at /readyz to restart",
                );
            }
        }
        if let Some((p, v)) = m.get("firstHeartbeatMustSucceed") {
            if self.bool(&p, v) == Some(true) {
                self.note(
                    "heartbeat",
                    "inbound.heartbeat.firstHeartbeatMustSucceed: wgbroker does not exit; /readyz \
                     answers 503 (\"no heartbeat has completed yet\") until the first one passes",
                );
            }
        }
        self.finish(m);
    }

    /// One SCM: an `inbound.scms[]` entry (`kind` None: it has a `type`) or a single-provider
    /// key. Returns the `[[scm]]` table and its (TOML suffix, YAML path) pairs.
    #[allow(clippy::type_complexity)]
    fn scm(
        &mut self,
        path: &str,
        v: &Yaml,
        kind: Option<&str>,
    ) -> Option<(Table, Vec<(String, String)>)> {
        let mut m = self.map(path, v)?;
        let mut t = Table::new();
        let mut pairs = vec![(String::new(), path.to_owned())];
        match kind {
            Some(k) => {
                t.insert("type".into(), k.into());
            }
            None => match m.get("type") {
                Some((p, v)) => {
                    if let Some(s) = self.string(&p, v) {
                        t.insert("type".into(), s.to_ascii_lowercase().into());
                        pairs.push((".type".into(), p));
                    }
                }
                None => self.error(
                    path,
                    "missing type (github, gitlab, bitbucket or azuredevops)",
                ),
            },
        }
        match m.get("baseUrl") {
            Some((p, v)) => {
                if let Some(s) = self.string(&p, v) {
                    t.insert("base_url".into(), s.into());
                    pairs.push((".base_url".into(), p));
                }
            }
            None => self.error(
                path,
                "missing baseUrl (it identifies the instance, also when files are overlaid)",
            ),
        }
        if let Some((p, v)) = m.get("token") {
            if let Some(s) = self.string(&p, v) {
                // Semgrep: an empty token adds no header.
                if !s.is_empty() {
                    t.insert("token".into(), s.into());
                    pairs.push((".token".into(), p));
                }
            }
        }
        if let Some((p, v)) = m.get("allowCodeAccess") {
            if let Some(b) = self.bool(&p, v) {
                t.insert("allow_code_access".into(), Value::Boolean(b));
                pairs.push((".allow_code_access".into(), p));
            }
        }
        self.finish(m);
        Some((t, pairs))
    }

    fn http_client(&mut self, path: &str, v: &Yaml) {
        let Some(mut m) = self.map(path, v) else {
            return;
        };
        if let Some((p, v)) = m.get("additionalCACerts") {
            if let Some(list) = self.strings(&p, v) {
                let list = list.into_iter().map(Value::String).collect();
                self.set("upstream", "ca_files", Value::Array(list), &p);
            }
        }
        if let Some((p, v)) = m.get("tlsMinVersion") {
            if let Some(s) = self.string(&p, v) {
                self.set("upstream", "tls_min_version", s.into(), &p);
            }
        }
        self.finish(m);
    }

    fn outbound(&mut self, path: &str, v: &Yaml) {
        let Some(mut m) = self.map(path, v) else {
            return;
        };
        if let Some((p, v)) = m.get("relay") {
            match v {
                Yaml::Hash(h) if h.is_empty() => {}
                _ => self.error(
                    &p,
                    "webhook relays are not available in this version of wgbroker",
                ),
            }
        }
        // Only Semgrep's `relay` command reads these; with no relay they change nothing.
        for k in ["listenPort", "logging"] {
            let _ = m.get(k);
        }
        self.finish(m);
    }

    fn metrics(&mut self, path: &str, v: &Yaml) {
        let Some(mut m) = self.map(path, v) else {
            return;
        };
        if let Some((p, v)) = m.get("disabled") {
            if let Some(b) = self.bool(&p, v) {
                self.set("admin", "enabled", Value::Boolean(!b), &p);
                self.note("admin.enabled", format!("metrics.disabled: {b}"));
            }
        }
        if let Some((p, v)) = m.get("addr") {
            if let Some(s) = self.string(&p, v) {
                // Go's ":9000" is every interface.
                let listen = match s.strip_prefix(':') {
                    Some(port) => {
                        self.note(
                            "admin.listen",
                            format!("metrics.addr {s:?}: every IPv4 interface"),
                        );
                        format!("0.0.0.0:{port}")
                    }
                    None => s,
                };
                self.set("admin", "listen", listen.into(), &p);
            }
        }
        if let Some((p, v)) = m.get("healthcheckGracePeriodSeconds") {
            if self.int(&p, v).is_some() {
                self.note(
                    "admin",
                    "metrics.healthcheckGracePeriodSeconds: /healthz answers 200 from the start; \
                     /readyz says when the tunnel and heartbeat are up",
                );
            }
        }
        self.finish(m);
    }
}

/// Renders the merged translation as TOML for `wgbroker import`, each note as a comment above
/// the key (or table) it is about; notes about keys not in the output go at the top.
pub fn render_import(merged: &Table, notes: &[Note], sources: &[PathBuf]) -> String {
    let body = toml::to_string_pretty(merged).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
    let mut placed = vec![false; notes.len()];
    let mut out = String::new();
    let mut lines_out = Vec::new();
    let mut table = String::new();
    let mut arrays: HashMap<String, usize> = HashMap::new();
    for line in body.lines() {
        let path = if let Some(h) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            arrays
                .entry(h.to_owned())
                .and_modify(|n| *n += 1)
                .or_insert(0);
            let nested = format!("{h}.");
            arrays.retain(|k, _| !k.starts_with(&nested));
            table = header_path(h, &arrays);
            Some(table.clone())
        } else if let Some(h) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = header_path(h, &arrays);
            Some(table.clone())
        } else {
            line.split_once(" = ").map(|(k, _)| {
                let k = k.trim();
                if table.is_empty() {
                    k.to_owned()
                } else {
                    format!("{table}.{k}")
                }
            })
        };
        if let Some(p) = path {
            for (i, n) in notes.iter().enumerate() {
                if !placed[i] && n.key == p {
                    placed[i] = true;
                    lines_out.extend(comment(&n.text));
                }
            }
        }
        lines_out.push(line.to_owned());
    }
    out.push_str(
        "# wgbroker configuration imported from a Semgrep Network Broker configuration:\n",
    );
    for s in sources {
        out.push_str(&format!("#   {}\n", s.display()));
    }
    out.push_str(
        "# It holds the same secrets as its source: store it as carefully (root:wgbroker 0640).\n",
    );
    for (i, n) in notes.iter().enumerate() {
        if !placed[i] {
            for l in comment(&format!("{}: {}", n.key, n.text)) {
                out.push_str(&l);
                out.push('\n');
            }
        }
    }
    out.push('\n');
    for l in lines_out {
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// `text` as `# ` comment lines of at most about 100 characters.
fn comment(text: &str) -> Vec<String> {
    let mut lines = vec![String::from("#")];
    for word in text.split_whitespace() {
        if lines.last().is_some_and(|l| l.len() + word.len() > 98) {
            lines.push(String::from("#"));
        }
        if let Some(l) = lines.last_mut() {
            l.push(' ');
            l.push_str(word);
        }
    }
    lines
}

/// The key path of a table header (`wireguard.peers`), each array of tables on the way with
/// its current index.
fn header_path(h: &str, arrays: &HashMap<String, usize>) -> String {
    let names: Vec<&str> = h.split('.').collect();
    let mut path = String::new();
    for i in 0..names.len() {
        if i > 0 {
            path.push('.');
        }
        path.push_str(names[i]);
        if let Some(n) = arrays.get(&names[..=i].join(".")) {
            path.push_str(&format!("[{n}]"));
        }
    }
    path
}

/// `wgbroker import`: reads `files` (Semgrep YAML, TOML overlays), validates the result as
/// `dump` does ([`super::LoadMode::Policy`]: secrets need not be readable here) and renders the
/// merged configuration as TOML with the translation notes. Returns the TOML and the warnings.
pub fn import(
    files: &[PathBuf],
    env: &dyn SecretEnv,
) -> Result<(String, Vec<ConfigError>), super::ConfigErrors> {
    let mut layers = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for f in files {
        match std::fs::read_to_string(f) {
            Ok(text) => layers.push((f.clone(), text)),
            Err(e) => errors.push(ConfigError {
                file: Some(f.clone()),
                at: None,
                key: String::new(),
                message: format!("cannot read: {e}"),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(super::ConfigErrors(errors));
    }
    let loaded = super::load_str(&layers, super::LoadMode::Policy, env)?;
    let (overlay, tr) = overlay(&layers, env).map_err(super::ConfigErrors)?;
    Ok((
        render_import(&overlay.merged, &tr.notes, files),
        loaded.warnings,
    ))
}

#[cfg(test)]
#[path = "semgrep_tests.rs"]
mod tests;
