//! Overlay of several TOML files: tables merge key by key, arrays and scalars replace.
//!
//! Invariant: [`Provenance`] knows, for every key path present in the merged document, which file
//! set it last, so an error found later can name the file the user must edit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

/// Maps key paths (`wireguard.peers[0].endpoint`) to the index of the file that set them last.
#[derive(Debug, Default, Clone)]
pub struct Provenance {
    files: Vec<PathBuf>,
    origin: HashMap<String, usize>,
}

impl Provenance {
    /// The file that set `key`, or the nearest ancestor key that exists.
    pub fn file_of(&self, key: &str) -> Option<&Path> {
        let mut k = key;
        loop {
            if let Some(&i) = self.origin.get(k) {
                return Some(&self.files[i]);
            }
            match k.rfind(['.', '[']) {
                Some(cut) => k = &k[..cut],
                None => return self.files.last().map(PathBuf::as_path),
            }
        }
    }

    fn record(&mut self, path: &str, value: &Value, file: usize) {
        self.origin.insert(path.to_owned(), file);
        match value {
            Value::Table(t) => {
                for (k, v) in t {
                    self.record(&join_key(path, k), v, file);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    self.record(&format!("{path}[{i}]"), v, file);
                }
            }
            _ => {}
        }
    }
}

/// Joins a key to a parent path with a dot (no dot at the root).
pub fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// The merged document and where each key came from.
#[derive(Debug, Default, Clone)]
pub struct Overlay {
    pub merged: Table,
    pub provenance: Provenance,
}

impl Overlay {
    /// Lays `layer` (parsed from `file`) over what is there.
    pub fn push(&mut self, file: PathBuf, layer: Table) {
        let idx = self.provenance.files.len();
        self.provenance.files.push(file);
        merge_table(&mut self.merged, layer, "", &mut self.provenance, idx);
    }
}

fn merge_table(base: &mut Table, layer: Table, path: &str, prov: &mut Provenance, file: usize) {
    for (key, value) in layer {
        let child = join_key(path, &key);
        match (base.get_mut(&key), value) {
            (Some(Value::Table(b)), Value::Table(l)) => {
                prov.origin.insert(child.clone(), file);
                merge_table(b, l, &child, prov, file);
            }
            (_, value) => {
                prov.record(&child, &value, file);
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> Table {
        toml::from_str(s).expect("test toml parses")
    }

    #[test]
    fn tables_merge_arrays_and_scalars_replace() {
        let mut o = Overlay::default();
        o.push(
            "a.toml".into(),
            table("[x]\na = 1\nb = [1, 2, 3]\n[y]\nc = 'keep'\n"),
        );
        o.push("b.toml".into(), table("[x]\na = 2\nb = [9]\nd = true\n"));
        assert_eq!(
            o.merged,
            table("[x]\na = 2\nb = [9]\nd = true\n[y]\nc = 'keep'\n")
        );
        assert_eq!(o.provenance.file_of("x.a"), Some(Path::new("b.toml")));
        assert_eq!(o.provenance.file_of("y.c"), Some(Path::new("a.toml")));
        assert_eq!(o.provenance.file_of("x.b[0]"), Some(Path::new("b.toml")));
        // A key that does not exist is attributed to its nearest ancestor.
        assert_eq!(o.provenance.file_of("y.missing"), Some(Path::new("a.toml")));
    }
}
