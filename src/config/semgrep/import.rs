//! `wgbroker import`: the merged translation printed as TOML, each translation note a comment
//! above the key it is about.

use std::collections::HashMap;
use std::path::PathBuf;

use toml::Table;

use super::{Note, overlay};
use crate::config::error::ConfigError;
use crate::config::secret_source::SecretEnv;

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
/// `dump` does ([`crate::config::LoadMode::Policy`]: secrets need not be readable here) and renders the
/// merged configuration as TOML with the translation notes. Returns the TOML and the warnings.
pub fn import(
    files: &[PathBuf],
    env: &dyn SecretEnv,
) -> Result<(String, Vec<ConfigError>), crate::config::ConfigErrors> {
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
        return Err(crate::config::ConfigErrors(errors));
    }
    let loaded = crate::config::load_str(&layers, crate::config::LoadMode::Policy, env)?;
    let (overlay, tr) = overlay(&layers, env).map_err(crate::config::ConfigErrors)?;
    Ok((
        render_import(&overlay.merged, &tr.notes, files),
        loaded.warnings,
    ))
}
