//! Secret values: tokens, private keys and credential header values.
//!
//! Invariant: a [`Secret`] never prints itself. `Debug` and `Display` render `<redacted>`, and
//! `Serialize` (what `dump` is made of) renders the secret's [`SecretSource`] — `{ file = "..." }`,
//! `{ env = "..." }`, `{ credential = "..." }`, or `"<redacted>"` for an inline value — so a secret
//! that slips into a log line, a `dump` or an error message shows nothing. The only way to the
//! bytes is [`Secret::expose`], which call sites use exactly where the value goes on the wire.

use std::fmt;
use std::path::PathBuf;

use serde::ser::{SerializeMap, Serializer};

/// What stands in for a secret's value wherever a secret is shown.
pub const REDACTED: &str = "<redacted>";

/// Where a secret came from: what `dump` shows in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written into the configuration file itself.
    Inline,
    /// `{ file = "..." }`: the file's contents, trailing newline trimmed.
    File(PathBuf),
    /// `{ env = "..." }`: an environment variable.
    Env(String),
    /// `{ credential = "..." }`: a systemd credential (`$CREDENTIALS_DIRECTORY/<name>`).
    Credential(String),
}

impl serde::Serialize for SecretSource {
    /// The form the configuration takes back: the source table, or `"<redacted>"` for an inline
    /// value (which no source can name).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (kind, arg) = match self {
            SecretSource::Inline => return s.serialize_str(REDACTED),
            SecretSource::File(p) => ("file", p.display().to_string()),
            SecretSource::Env(v) => ("env", v.clone()),
            SecretSource::Credential(c) => ("credential", c.clone()),
        };
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(kind, &arg)?;
        m.end()
    }
}

/// A secret string, resolved from the configuration (inline, file, environment or credential),
/// and where it came from. Two secrets are equal when value and source are.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    source: SecretSource,
}

impl Secret {
    /// Wraps a secret value written inline (or made up from other secrets, like an SCM's
    /// `Authorization` header built from its token).
    pub fn new(value: impl Into<String>) -> Self {
        Self::from_source(value, SecretSource::Inline)
    }

    /// Wraps a secret value read from `source`.
    pub fn from_source(value: impl Into<String>, source: SecretSource) -> Self {
        Self {
            value: value.into(),
            source,
        }
    }

    /// Where the value came from (safe to show).
    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// The secret's value, for the one place that needs it (a header on the wire, a key parser).
    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl serde::Serialize for Secret {
    /// Its source, never its value.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.source.serialize(s)
    }
}

/// `scheme://user:pass@host/...` → `scheme://<redacted>@host/...`: a URL someone typed may be
/// echoed (in an error, by `explain` or `dump`), but never the credentials in its userinfo.
pub fn redact_userinfo(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@') {
        Some(at) => format!("{}<redacted>{}", &url[..start], &url[start + at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{Secret, SecretSource, redact_userinfo};

    #[test]
    fn userinfo_is_redacted_up_to_the_last_at_of_the_authority() {
        assert_eq!(
            redact_userinfo("https://u:p@ss@host:1/a@b?c@d"),
            "https://<redacted>@host:1/a@b?c@d"
        );
        assert_eq!(redact_userinfo("http://host/a@b"), "http://host/a@b");
        assert_eq!(redact_userinfo("host:1"), "host:1");
    }

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("ghp_supersecret");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert!(!format!("{:?}", vec![s.clone()]).contains("supersecret"));
        assert_eq!(s.expose(), "ghp_supersecret");
    }

    #[test]
    fn serializes_its_source_never_its_value() {
        let shown = |s: &Secret| toml::Value::try_from(s).expect("serializes").to_string();
        assert_eq!(shown(&Secret::new("ghp_supersecret")), r#""<redacted>""#);
        let from = |source| Secret::from_source("ghp_supersecret", source);
        assert_eq!(
            shown(&from(SecretSource::File("/etc/t".into()))),
            r#"{ file = "/etc/t" }"#
        );
        assert_eq!(
            shown(&from(SecretSource::Env("TOKEN".into()))),
            r#"{ env = "TOKEN" }"#
        );
        assert_eq!(
            shown(&from(SecretSource::Credential("gh".into()))),
            r#"{ credential = "gh" }"#
        );
        let json = serde_json::to_string(&vec![from(SecretSource::Inline)]).expect("json");
        assert!(!json.contains("supersecret"), "{json}");
    }
}
