//! `wgbroker import`: the merged translation printed as TOML, each translation note a comment
//! above the key it is about.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::{Note, overlay};
use crate::config::error::ConfigError;
use crate::config::secret_source::SecretEnv;

/// Renders the merged translation as TOML for `wgbroker import`, each note as a comment above
/// the key (or table) it is about; notes about keys not in the output go at the top.
pub fn render_import(merged: &Table, notes: &[Note], sources: &[PathBuf]) -> String {
    render(merged, notes, sources, None)
}

/// [`render_import`], saying in the header where the secrets went (`secrets_dir`) or that the
/// output holds them.
fn render(
    merged: &Table,
    notes: &[Note],
    sources: &[PathBuf],
    secrets_dir: Option<&Path>,
) -> String {
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
    match secrets_dir {
        None => out.push_str(
            "# It holds the same secrets as its source: store it as carefully (root:wgbroker 0640).\n",
        ),
        Some(dir) => out.push_str(&format!(
            "# Its secrets were written to files in {} (0600; make them readable by the wgbroker\n\
             # user, e.g. chown wgbroker, or use LoadCredential=), not here.\n",
            dir.display()
        )),
    }
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

/// Why `wgbroker import --secrets-dir` stopped.
#[derive(Debug)]
pub enum SecretsOut {
    /// The input does not validate.
    Config(crate::config::ConfigErrors),
    /// A secret's file already exists (never overwritten).
    Exists(PathBuf),
    /// A secret's file (or the directory) cannot be written.
    Write(PathBuf, std::io::Error),
}

/// Every inline secret of a merged configuration, with a file name for it: the string values
/// at `wireguard.private_key`, `wireguard.peers[i].preshared_key`, `scm[i].token` /
/// `scm[i].tokens[j]`, `allow[i].set_request_headers.<name>` (or its pool's `[j]`) and
/// `outbound.relay[i].secret` — what the configuration reader treats as secrets. A value that
/// is already `{ file | env | credential }` is left alone.
fn inline_secrets(merged: &mut Table) -> Vec<(String, &mut Value)> {
    /// A header name as a file name: letters, digits and `-` kept, anything else `_`.
    fn file_part(s: &str) -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
    /// `v` itself when it is a string, or each string of it when it is an array.
    fn strings<'a>(name: String, v: &'a mut Value, out: &mut Vec<(String, &'a mut Value)>) {
        match v {
            Value::String(_) => out.push((name, v)),
            Value::Array(items) => {
                for (j, item) in items.iter_mut().enumerate() {
                    if item.is_str() {
                        out.push((format!("{name}.{j}"), item));
                    }
                }
            }
            _ => {}
        }
    }
    fn array_of_tables(t: Option<&mut Value>) -> impl Iterator<Item = (usize, &mut Table)> {
        t.and_then(Value::as_array_mut)
            .into_iter()
            .flat_map(|a| a.iter_mut())
            .filter_map(Value::as_table_mut)
            .enumerate()
    }
    let mut out = Vec::new();
    let (mut wireguard, mut scm, mut allow, mut outbound) = (None, None, None, None);
    for (k, v) in merged.iter_mut() {
        match k.as_str() {
            "wireguard" => wireguard = v.as_table_mut(),
            "scm" => scm = Some(v),
            "allow" => allow = Some(v),
            "outbound" => outbound = v.as_table_mut(),
            _ => {}
        }
    }
    if let Some(w) = wireguard {
        let mut peers = None;
        for (k, v) in w.iter_mut() {
            match k.as_str() {
                "private_key" => strings("private_key".into(), v, &mut out),
                "peers" => peers = Some(v),
                _ => {}
            }
        }
        for (i, p) in array_of_tables(peers) {
            if let Some(v) = p.get_mut("preshared_key") {
                strings(format!("peer{i}.preshared_key"), v, &mut out);
            }
        }
    }
    for (i, s) in array_of_tables(scm) {
        for (k, v) in s.iter_mut() {
            if k == "token" || k == "tokens" {
                strings(format!("scm{i}.{k}"), v, &mut out);
            }
        }
    }
    for (i, a) in array_of_tables(allow) {
        if let Some(h) = a
            .get_mut("set_request_headers")
            .and_then(Value::as_table_mut)
        {
            for (name, v) in h.iter_mut() {
                strings(format!("allow{i}.{}", file_part(name)), v, &mut out);
            }
        }
    }
    if let Some(o) = outbound {
        for (i, r) in array_of_tables(o.get_mut("relay")) {
            if let Some(v) = r.get_mut("secret") {
                strings(format!("relay{i}.secret"), v, &mut out);
            }
        }
    }
    out
}

/// Moves every inline secret of `merged` into a file of its own in `dir` (created 0700 when
/// missing; each file created 0600, never over an existing one), replacing it with
/// `{ file = "<dir>/<name>" }`. `dir` is made absolute (the broker runs from `/`).
fn secrets_to_files(merged: &mut Table, dir: &Path) -> Result<(), SecretsOut> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = std::path::absolute(dir).map_err(|e| SecretsOut::Write(dir.to_owned(), e))?;
    let secrets = inline_secrets(merged);
    if secrets.is_empty() {
        return Ok(());
    }
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| SecretsOut::Write(dir.clone(), e))?;
    }
    // Every name checked first: nothing is written when one of them exists.
    let paths: Vec<PathBuf> = secrets.iter().map(|(n, _)| dir.join(n)).collect();
    if let Some(p) = paths.iter().find(|p| p.symlink_metadata().is_ok()) {
        return Err(SecretsOut::Exists(p.clone()));
    }
    for ((_, value), path) in secrets.into_iter().zip(paths) {
        let text = value.as_str().unwrap_or_default().to_owned();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => SecretsOut::Exists(path.clone()),
                _ => SecretsOut::Write(path.clone(), e),
            })?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.write_all(b"\n"))
            .and_then(|()| f.sync_all())
            .map_err(|e| SecretsOut::Write(path.clone(), e))?;
        let mut source = Table::new();
        source.insert("file".into(), Value::String(path.display().to_string()));
        *value = Value::Table(source);
    }
    Ok(())
}

/// `wgbroker import --secrets-dir`: [`import`], each inline secret written to its own file in
/// `dir` and referenced as `{ file = ... }`. The printed TOML is validated again as `dump`
/// validates it (the same checks as [`import`]'s input; the secret files' contents are what
/// the test of this function reads back).
pub fn import_with_secret_files(
    files: &[PathBuf],
    env: &dyn SecretEnv,
    dir: &Path,
) -> Result<(String, Vec<ConfigError>), SecretsOut> {
    let layers = crate::config::read_layers(files).map_err(SecretsOut::Config)?;
    let loaded = crate::config::load_str(&layers, crate::config::LoadMode::Policy, env)
        .map_err(SecretsOut::Config)?;
    let (mut overlay, tr) =
        overlay(&layers, env).map_err(|e| SecretsOut::Config(crate::config::ConfigErrors(e)))?;
    secrets_to_files(&mut overlay.merged, dir)?;
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    let text = render(&overlay.merged, &tr.notes, files, Some(&dir));
    let out = PathBuf::from("imported.toml");
    crate::config::load_str(&[(out, text.clone())], crate::config::LoadMode::Policy, env)
        .map_err(SecretsOut::Config)?;
    Ok((text, loaded.warnings))
}

/// `wgbroker import`: reads `files` (Semgrep YAML, TOML overlays), validates the result as
/// `dump` does ([`crate::config::LoadMode::Policy`]: secrets need not be readable here) and renders the
/// merged configuration as TOML with the translation notes. Returns the TOML and the warnings.
pub fn import(
    files: &[PathBuf],
    env: &dyn SecretEnv,
) -> Result<(String, Vec<ConfigError>), crate::config::ConfigErrors> {
    let layers = crate::config::read_layers(files)?;
    let loaded = crate::config::load_str(&layers, crate::config::LoadMode::Policy, env)?;
    let (overlay, tr) = overlay(&layers, env).map_err(crate::config::ConfigErrors)?;
    Ok((
        render_import(&overlay.merged, &tr.notes, files),
        loaded.warnings,
    ))
}
