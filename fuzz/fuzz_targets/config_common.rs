//! Shared by `config_toml` and `config_yaml`: loads one layer of arbitrary text as the broker's
//! configuration (`config::load_str`, policy mode: what `dump`/`explain` do) and checks what must
//! hold whatever the text: nothing panics, an error names what is wrong, and the value of a
//! secret read from the environment never reaches an error, a warning or the `dump` rendering.

use std::path::PathBuf;

use wgbroker::config::{self, LoadMode, dump};

/// What every environment variable holds: a secret that must never be printed.
pub const SECRET: &str = "zQ9fuzz-secret-value-7Hk";

pub fn check(name: &str, data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains(SECRET) {
        return; // the input itself quotes it; errors may then legitimately point at it
    }
    let env = |_: &str| Some(SECRET.to_owned());
    let layers = vec![(PathBuf::from(name), text.to_owned())];
    match config::load_str(&layers, LoadMode::Policy, &env) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                assert!(!w.to_string().contains(SECRET), "a warning quotes a secret");
            }
            let out = dump::render(&loaded.config);
            assert!(!out.contains(SECRET), "dump prints a secret");
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error without a finding");
            for e in &errors.0 {
                assert!(!e.message.is_empty(), "an error without a message");
                assert!(
                    !e.to_string().contains(SECRET),
                    "an error quotes a secret: {e}"
                );
            }
        }
    }
}
