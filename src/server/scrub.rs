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
    /// Length of the longest pattern: how far past a cut a secret that starts before it can reach.
    longest: usize,
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
        let longest = patterns.iter().map(String::len).max().unwrap_or(0);
        let automaton = if patterns.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .ok()
        };
        Self { automaton, longest }
    }

    /// How many bytes past a sample's cap must be collected so that [`Scrubber::sample`] sees
    /// every secret that starts inside the cap whole.
    pub fn lookahead(&self) -> usize {
        self.longest.saturating_sub(1)
    }

    /// A body sample as it may be logged: the first `limit` bytes of `body`, with every secret
    /// that *starts* inside them replaced whole. `body` should hold `limit + lookahead()` bytes
    /// where the body had them: the secret is found before the cut, so no prefix of a secret
    /// that straddles the cap survives (cutting first, then scrubbing, would leave it). The
    /// result is never longer than the first `limit` bytes once each secret there is replaced.
    pub fn sample(&self, body: &[u8], limit: usize) -> String {
        let cap = limit.min(body.len());
        let mut out = Vec::with_capacity(cap);
        let mut at = 0;
        if let Some(ac) = &self.automaton {
            for m in ac.find_iter(body) {
                if m.start() >= cap {
                    break;
                }
                out.extend_from_slice(&body[at..m.start()]);
                out.extend_from_slice(REDACTED.as_bytes());
                at = m.end();
            }
        }
        if at < cap {
            out.extend_from_slice(&body[at..cap]);
        }
        String::from_utf8_lossy(&out).into_owned()
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

    #[test]
    fn samples_are_cut_after_scrubbing() {
        let s = Scrubber::new(["SECRET-0123456789", "OTHER-abcdefghij"]);
        // The longest pattern is the base64 form of the 17-byte secret: 24 bytes.
        assert_eq!(s.lookahead(), 23);
        // A secret across the cap goes whole, not as a prefix.
        assert_eq!(s.sample(b"abcSECRET-0123456789 tail", 6), "abc<redacted>");
        // A secret shortened by its replacement does not pull later bytes in past the cap, nor
        // the prefix of a second secret that the sample cut off.
        let body = b"SECRET-0123456789xy OTHER-abcde";
        assert_eq!(s.sample(body, 19), "<redacted>xy");
        // Without secrets the cap is plain, also for bodies shorter than it.
        assert_eq!(Scrubber::default().sample(b"0123456789", 4), "0123");
        assert_eq!(s.sample(b"abc", 100), "abc");
    }
}
