//! Secrets given as `{ credential = "NAME" }` outside systemd.
//!
//! Under systemd, `LoadCredential=NAME:PATH` copies each file into `$CREDENTIALS_DIRECTORY`. An
//! operator running `wgbroker test` (or `init`, which runs it) from a shell has no such
//! directory, so the configuration the service reads would not load. [`Staged`] builds one: a
//! private temporary directory with a link `NAME → PATH` for every `LoadCredential=` line of the
//! installed unit and its drop-ins. Nothing is copied; the links go when it is dropped.

use std::path::{Path, PathBuf};

/// Where the unit and its drop-ins may be, most specific first.
pub const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// `(NAME, PATH)` of every `LoadCredential=NAME:PATH` line in `text`.
pub fn load_credentials(text: &str) -> Vec<(String, PathBuf)> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("LoadCredential="))
        .filter_map(|v| v.split_once(':'))
        .filter(|(n, p)| !n.is_empty() && !n.contains('/') && p.starts_with('/'))
        .map(|(n, p)| (n.to_owned(), PathBuf::from(p.trim())))
        .collect()
}

/// The `LoadCredential=` lines of `wgbroker.service` in `dirs` (the first unit found, then
/// every drop-in `wgbroker.service.d/*.conf`; a later line for a name wins).
pub fn from_units(dirs: &[&Path]) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    let mut add = |text: &str| {
        for (n, p) in load_credentials(text) {
            out.retain(|(m, _)| *m != n);
            out.push((n, p));
        }
    };
    if let Some(t) = dirs
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join("wgbroker.service")).ok())
    {
        add(&t);
    }
    for d in dirs {
        if let Ok(entries) = std::fs::read_dir(d.join("wgbroker.service.d")) {
            let mut files: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            for f in files
                .iter()
                .filter(|f| f.extension().is_some_and(|e| e == "conf"))
            {
                if let Ok(t) = std::fs::read_to_string(f) {
                    add(&t);
                }
            }
        }
    }
    out
}

/// A `$CREDENTIALS_DIRECTORY` stand-in, removed on drop.
#[derive(Debug)]
pub struct Staged {
    dir: PathBuf,
}

impl Staged {
    /// Links each `(NAME, PATH)` into a new private (0700) directory under the temporary
    /// directory.
    pub fn new(creds: &[(String, PathBuf)]) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).map_err(|e| std::io::Error::other(e.to_string()))?;
        let dir =
            std::env::temp_dir().join(format!("wgbroker-creds-{:016x}", u64::from_le_bytes(r)));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let staged = Self { dir };
        for (n, p) in creds {
            std::os::unix::fs::symlink(p, staged.dir.join(n))?;
        }
        Ok(staged)
    }

    /// The directory to use as `$CREDENTIALS_DIRECTORY`.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_credential_lines_are_read_from_the_unit_and_its_drop_ins() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            d.path().join("wgbroker.service"),
            "[Service]\nLoadCredential=wgbroker.key:/etc/wgbroker/private.key\n\
             LoadCredential=github.token:/etc/wgbroker/github.token\nLoadCredential=bad\n",
        )
        .expect("write");
        std::fs::create_dir(d.path().join("wgbroker.service.d")).expect("mkdir");
        std::fs::write(
            d.path().join("wgbroker.service.d/10-gl.conf"),
            "[Service]\nLoadCredential=github.token:/srv/gh\n",
        )
        .expect("write");
        let got = from_units(&[d.path()]);
        assert_eq!(
            got,
            [
                (
                    "wgbroker.key".to_owned(),
                    PathBuf::from("/etc/wgbroker/private.key")
                ),
                ("github.token".to_owned(), PathBuf::from("/srv/gh")),
            ]
        );
        let key = d.path().join("k");
        std::fs::write(&key, "v\n").expect("write");
        let staged = Staged::new(&[("wgbroker.key".into(), key)]).expect("stage");
        assert_eq!(
            std::fs::read_to_string(staged.path().join("wgbroker.key")).expect("read"),
            "v\n"
        );
    }
}
