//! Onboarding: `wgbroker init` writes a first configuration and key, `wgbroker test` says what
//! works from this host and what does not.
//!
//! * [`init`]: asks for (or takes as flags) what the vendor gave — the gateway's public key and
//!   endpoint, the tunnel address — and each SCM; writes the key (0600) and the configuration
//!   (root:wgbroker 0640), never over existing files without `--force`; prints the public key.
//! * [`check`]: the checks of `wgbroker test`, each a [`check::Row`] with its fix.
//! * [`probe`]: one authenticated GET to an SCM from this host (blocking; no executor needed).
//! * [`credentials`]: `{ credential = NAME }` secrets outside systemd, from the unit's
//!   `LoadCredential=` lines, so `test` reads what the service would.

pub mod check;
pub mod credentials;
pub mod init;
pub mod probe;

use std::io::Write;
use std::path::PathBuf;

use crate::config::{self, LoadMode, SecretEnv};

/// The environment secrets are read from, with `$CREDENTIALS_DIRECTORY` standing in for
/// systemd's when it is unset (see [`credentials`]).
struct TestEnv {
    staged: Option<credentials::Staged>,
}

impl SecretEnv for TestEnv {
    fn var(&self, name: &str) -> Option<String> {
        match std::env::var(name).ok() {
            None if name == "CREDENTIALS_DIRECTORY" => {
                self.staged.as_ref().map(|s| s.path().display().to_string())
            }
            v => v,
        }
    }
}

/// `wgbroker test -c FILES`: loads, runs every check, prints the table (or JSON) on `out`;
/// true when every check passed.
pub fn run_test(files: &[PathBuf], json: bool, out: &mut dyn Write) -> bool {
    let staged = if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
        let dirs: Vec<&std::path::Path> = credentials::UNIT_DIRS
            .iter()
            .map(std::path::Path::new)
            .collect();
        let creds = credentials::from_units(&dirs);
        (!creds.is_empty())
            .then(|| credentials::Staged::new(&creds).ok())
            .flatten()
    } else {
        None
    };
    let env = TestEnv { staged };
    let rows = match config::load(files, LoadMode::Full, &env) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                crate::output::errln!("warning: {w}");
            }
            check::run(loaded, &|k| std::env::var(k).ok())
        }
        Err(errors) => {
            crate::output::err!("{errors}");
            vec![check::Row {
                check: "configuration loads".into(),
                ok: false,
                detail: format!("{} error(s), listed above", errors.0.len()),
                fix: Some("fix them; `wgbroker check -c FILE` lists them too".into()),
            }]
        }
    };
    let text = if json {
        check::json(&rows)
    } else {
        check::table(&rows)
    };
    let _ = out.write_all(text.as_bytes());
    rows.iter().all(|r| r.ok)
}

/// Standard output through [`crate::output`] (whose status `main` reports), as a writer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        crate::output::write_out_bytes(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
