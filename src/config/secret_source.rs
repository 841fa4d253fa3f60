//! Secret sources: a secret field holds an inline string, or a table naming where to read it.
//!
//! ```toml
//! token = "glpat-..."                            # inline
//! token = { file = "/etc/wgbroker/gitlab.token" } # file contents, trailing newline trimmed
//! token = { env = "GITLAB_TOKEN" }               # environment variable
//! token = { credential = "gitlab.token" }        # $CREDENTIALS_DIRECTORY/gitlab.token (systemd)
//! ```
//!
//! Invariant: error messages name the source (path, variable, credential), never the value.

use std::path::PathBuf;

use toml::Value;

use super::reader::{Ctx, type_name};
use crate::secret::Secret;

/// The value standing in for a secret that could not be read in lenient (policy) mode.
pub const PLACEHOLDER: &str = "<unavailable>";

pub use crate::secret::SecretSource;

/// A resolved secret (which knows its source) and whether it could be read at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretValue {
    pub value: Secret,
    /// Why the secret could not be read ([`super::LoadMode::Policy`] only): `value` is then
    /// [`PLACEHOLDER`], to be neither used nor shown. The reason names the source, never a value.
    pub unavailable: Option<String>,
}

impl SecretValue {
    /// Where the secret came from (safe to show).
    pub fn source(&self) -> &SecretSource {
        self.value.source()
    }
}

impl serde::Serialize for SecretValue {
    /// Its source, never its value (see [`Secret`]'s `Serialize`).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

/// How secrets are looked up: the process environment in production, a fixed map in tests.
pub trait SecretEnv {
    /// An environment variable.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl SecretEnv for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> SecretEnv for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

fn read_trimmed(path: &std::path::Path) -> std::io::Result<String> {
    let mut s = std::fs::read_to_string(path)?;
    let trimmed = s.trim_end_matches(['\n', '\r']).len();
    s.truncate(trimmed);
    Ok(s)
}

/// Reads a secret field at `path`; errors go to `ctx`.
pub fn resolve(
    v: &Value,
    ctx: &mut Ctx<'_>,
    path: &str,
    env: &dyn SecretEnv,
) -> Option<SecretValue> {
    let t = match v {
        Value::String(s) => {
            return Some(SecretValue {
                value: Secret::new(s.clone()),
                unavailable: None,
            });
        }
        Value::Table(t) => t,
        other => {
            ctx.error(
                path,
                format!(
                    "expected a string or a table with one of `file`, `env`, `credential`, found {}",
                    type_name(other)
                ),
            );
            return None;
        }
    };
    let mut keys = t.iter();
    let (kind, arg) = match (keys.next(), keys.next()) {
        (Some((k, Value::String(arg))), None) => (k.as_str(), arg.as_str()),
        (Some((k, other)), None) => {
            ctx.error(
                &format!("{path}.{k}"),
                format!("expected a string, found {}", type_name(other)),
            );
            return None;
        }
        _ => {
            ctx.error(
                path,
                "a secret table needs exactly one of `file`, `env`, `credential`",
            );
            return None;
        }
    };
    let key = format!("{path}.{kind}");
    let (source, read) = match kind {
        "file" => {
            let p = PathBuf::from(arg);
            let r = read_trimmed(&p).map_err(|e| format!("cannot read {}: {e}", p.display()));
            (SecretSource::File(p), r)
        }
        "env" => {
            let r = env
                .var(arg)
                .ok_or_else(|| format!("environment variable {arg} is not set"));
            (SecretSource::Env(arg.to_owned()), r)
        }
        "credential" => {
            let r = if arg.is_empty() || arg.contains('/') || arg == "." || arg == ".." {
                Err(format!("invalid credential name {arg:?}"))
            } else {
                match env.var("CREDENTIALS_DIRECTORY") {
                    Some(dir) => {
                        let p = PathBuf::from(dir).join(arg);
                        read_trimmed(&p).map_err(|e| {
                            format!("cannot read credential {arg:?} ({}): {e}", p.display())
                        })
                    }
                    None => Err(format!(
                        "credential {arg:?} requested but $CREDENTIALS_DIRECTORY is not set \
                         (use LoadCredential= in the systemd unit)"
                    )),
                }
            };
            (SecretSource::Credential(arg.to_owned()), r)
        }
        other => {
            ctx.error(
                &format!("{path}.{other}"),
                "unknown secret source (expected `file`, `env` or `credential`)",
            );
            return None;
        }
    };
    match read {
        Ok(s) if s.is_empty() => {
            ctx.error(&key, "the secret is empty");
            None
        }
        Ok(s) => Some(SecretValue {
            value: Secret::from_source(s, source),
            unavailable: None,
        }),
        Err(msg) => ctx
            .secret_unavailable(&key, msg.clone())
            .then(|| SecretValue {
                value: Secret::from_source(PLACEHOLDER, source),
                unavailable: Some(msg),
            }),
    }
}
