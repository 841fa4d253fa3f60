//! Secret values: tokens, private keys and credential header values.
//!
//! Invariant: a [`Secret`] never prints itself. `Debug` and `Display` render `<redacted>`, so a
//! secret that slips into a log line, a `dump` or an error message shows nothing. The only way to
//! the bytes is [`Secret::expose`], which call sites use exactly where the value goes on the wire.

use std::fmt;

/// A secret string, resolved from the configuration (inline, file, environment or credential).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a resolved secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret's value, for the one place that needs it (a header on the wire, a key parser).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
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
    use super::{Secret, redact_userinfo};

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
}
