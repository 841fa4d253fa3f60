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

mod import;
mod keys;
mod reader;

pub use import::{SecretsOut, import, import_with_secret_files, render_import};
use reader::{Tx, first_alias, key_at};

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

#[cfg(test)]
mod tests;
