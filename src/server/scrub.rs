//! Scrubbing secrets out of what the broker logs.
//!
//! Two layers: header names that always carry credentials are redacted whatever their value
//! (`Authorization`, `Proxy-Authorization`, `Private-Token`, `Cookie`, `Set-Cookie`, ...), and
//! every configured secret value (tokens, header values from `set_request_headers`, their
//! base64 forms for Basic auth) is found by one multi-pattern automaton and replaced, wherever it
//! appears. Built once per configuration; matching is linear in the text.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;

/// Header names whose values are never logged.
const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "private-token",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
];

/// Replacement text.
pub const REDACTED: &str = "<redacted>";

/// The secret scrubber of one configuration.
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    automaton: Option<AhoCorasick>,
}

impl Scrubber {
    /// A scrubber for these secret values (empty and very short values are ignored: they would
    /// redact ordinary text). Each value is also matched in its base64 form.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut patterns: Vec<String> = Vec::new();
        for s in secrets {
            if s.len() < 6 {
                continue;
            }
            patterns.push(s.to_owned());
            patterns.push(base64::engine::general_purpose::STANDARD.encode(s));
            // A bearer/basic header value also appears without its scheme word.
            for prefix in ["Bearer ", "Basic ", "token "] {
                if let Some(rest) = s.strip_prefix(prefix) {
                    if rest.len() >= 6 {
                        patterns.push(rest.to_owned());
                    }
                }
            }
        }
        patterns.sort();
        patterns.dedup();
        let automaton = if patterns.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .ok()
        };
        Self { automaton }
    }

    /// `text` with every secret replaced.
    pub fn scrub(&self, text: &str) -> String {
        match &self.automaton {
            Some(ac) => ac.replace_all(text, &vec![REDACTED; ac.patterns_len()]),
            None => text.to_owned(),
        }
    }

    /// A header as it may be logged: credential headers redacted, secrets scrubbed.
    pub fn header(&self, name: &str, value: &[u8]) -> String {
        if CREDENTIAL_HEADERS
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
        {
            return REDACTED.to_owned();
        }
        self.scrub(&String::from_utf8_lossy(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credential_headers_and_secret_values_anywhere() {
        let s = Scrubber::new(["ghp_secret123456", "Basic dXNlcjpwYXNzd29yZA==", "short"]);
        assert_eq!(s.header("Authorization", b"Bearer anything"), REDACTED);
        assert_eq!(s.header("PRIVATE-TOKEN", b"x"), REDACTED);
        assert_eq!(
            s.header("X-Note", b"token=ghp_secret123456;"),
            "token=<redacted>;"
        );
        // The base64 form of a secret is caught too.
        let b64 = base64::engine::general_purpose::STANDARD.encode("ghp_secret123456");
        assert_eq!(s.scrub(&format!("h {b64} t")), "h <redacted> t");
        assert_eq!(
            s.scrub("auth dXNlcjpwYXNzd29yZA== end"),
            "auth <redacted> end"
        );
        // Short values are not patterns: ordinary words survive.
        assert_eq!(s.scrub("a short text"), "a short text");
        assert_eq!(Scrubber::default().scrub("as is"), "as is");
    }
}
