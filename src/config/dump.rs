//! `wgbroker dump`: the merged, validated configuration and every generated rule, as TOML, with
//! every secret redacted.
//!
//! The document is the validated [`Config`]'s own `Serialize` (derived next to each field, in
//! `config/mod.rs`), so a key the readers learn is dumped without a line here. Values are shown
//! in a form the readers take back: durations as `"1m 30s"`, sizes in bytes, a secret as its
//! source. To that, [`render`] adds what is derived, not configured — the keys the round-trip
//! test (`config/tests.rs`) takes off again before loading a dump:
//!
//! * `wireguard.public_key`: the key to hand to the vendor (or why it is unavailable);
//! * `scm[N].generated_rules`: how many rules the entry generated;
//! * `[[rules]]`: every rule in decision order (the user's `[[allow]]` rules, then the generated
//!   ones), each with its `origin`.
//!
//! Invariant: no secret value is ever read here. A [`crate::secret::Secret`] serializes as its
//! source (`{ file = "..." }`, `{ env = "..." }`, `{ credential = "..." }`) or `"<redacted>"`; a
//! private key has no `Serialize` at all; a proxy URL is shown without its userinfo.

use std::fmt::Display;
use std::time::Duration;

use serde::Serializer;
use toml::{Table, Value};

use super::Config;

/// Renders the configuration as TOML (keys sorted within each table).
pub fn render(c: &Config) -> String {
    match document(c) {
        Ok(root) => toml::to_string_pretty(&root),
        Err(e) => Err(e),
    }
    .unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

fn document(c: &Config) -> Result<Table, toml::ser::Error> {
    let mut root = Table::try_from(c)?;
    if let Some(Value::Table(wg)) = root.get_mut("wireguard") {
        // The key an operator hands to the vendor: never one derived from a stand-in key.
        let public_key = match &c.wireguard.private_key_unavailable {
            Some(why) => format!("unavailable: {why}"),
            None => c.wireguard.private_key.public_key().to_string(),
        };
        wg.insert("public_key".into(), public_key.into());
    }
    if let Some(Value::Array(entries)) = root.get_mut("scm") {
        for (t, s) in entries.iter_mut().zip(&c.scm) {
            if let Value::Table(t) = t {
                let n = i64::try_from(s.rules.len()).unwrap_or(i64::MAX);
                t.insert("generated_rules".into(), n.into());
            }
        }
    }
    root.insert("rules".into(), Value::try_from(c.rules())?);
    Ok(root)
}

/// A duration as the readers take it back (`"1m 30s"`, `"250ms"`, `"0s"`).
pub(super) fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// A value as its `Display` text (keys, endpoints).
pub(super) fn display<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// An optional value as its `Display` text (optional endpoints).
pub(super) fn opt_display<T: Display, S: Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// A list of values as their `Display` texts (CIDRs).
pub(super) fn displays<T: Display, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(ToString::to_string))
}

/// A URL without the credentials of its userinfo (`[upstream] proxy`).
pub(super) fn without_userinfo<S: Serializer>(
    url: &Option<String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_str(&crate::secret::redact_userinfo(u)),
        None => s.serialize_none(),
    }
}
