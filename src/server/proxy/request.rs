//! The vendor's request ([`Request`]) and the head the upstream gets instead
//! ([`upstream_head`]).
//!
//! Invariants of the rewrite: the request target is exactly the matched path and query
//! ([`CanonUrl::request_target`]) and `Host` is the URL's authority; hop-by-hop headers (the
//! fixed list and whatever `Connection` names), `Expect` and the vendor's `Content-Length` never
//! pass; the rule's `set_request_headers` replace the vendor's headers of the same name; URL
//! userinfo becomes `Authorization: Basic` unless the rule sets `Authorization`; the vendor's
//! tunnel address is appended to `X-Forwarded-For`; the body framing is restated and the upstream
//! connection is always asked to stay open.

use std::fmt::Write as _;
use std::net::IpAddr;

use base64::Engine as _;

use crate::allowlist::{CanonUrl, Rule};
use crate::http::{BodyFraming, Method, RequestHead};
use crate::secret::Secret;

/// Request headers that describe one hop and never pass through the broker.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A parsed request head and the bytes it indexes.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub head: &'a RequestHead,
    pub bytes: &'a [u8],
}

impl<'a> Request<'a> {
    /// The method token as sent (for the allowlist, the logs and the upstream request line).
    pub fn method(&self) -> &'a str {
        self.head.method_str(self.bytes)
    }

    /// The request target as sent (`/proxy/...`).
    pub fn target(&self) -> &'a str {
        self.head.target(self.bytes)
    }

    /// The header fields in order.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.head.headers(self.bytes)
    }

    /// Whether the request may be sent again on a new connection when a pooled one turns out
    /// closed before answering: no body (nothing was consumed from the vendor), no
    /// `Expect: 100-continue`, and a method that is safe (RFC 9110 section 9.2.1) — an upstream
    /// that saw it cannot have done anything.
    pub fn replayable(&self) -> bool {
        self.head.body == BodyFraming::None
            && !self.head.expect_continue
            && matches!(
                self.head.method,
                Method::Get | Method::Head | Method::Options
            )
    }
}

/// Whether header `name` is hop-by-hop: on the fixed list, or named by the `Connection` header
/// (`connection_tokens`). True for request and response headers alike.
pub(super) fn is_hop_by_hop(name: &str, connection_tokens: &[&str]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || connection_tokens
            .iter()
            .any(|t| name.eq_ignore_ascii_case(t))
}

/// The field names a `Connection` header lists (they are hop-by-hop too).
pub(super) fn connection_tokens<'b>(
    headers: impl Iterator<Item = (&'b str, &'b [u8])>,
) -> Vec<&'b str> {
    headers
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| std::str::from_utf8(v).unwrap_or_default().split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// The upstream request head for `request`, allowed by `rule` for `url`; `peer` is the vendor's
/// tunnel address (for `X-Forwarded-For`); `pooled` the token picked from the rule's pool, which
/// is set like a `set_request_headers` entry.
pub fn upstream_head(
    request: Request<'_>,
    url: &CanonUrl,
    rule: &Rule,
    peer: Option<IpAddr>,
    pooled: Option<&Secret>,
) -> Vec<u8> {
    let mut out = String::with_capacity(512);
    let _ = write!(
        out,
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        request.method(),
        url.request_target(),
        url.authority()
    );
    let tokens = connection_tokens(request.headers());
    let set = &rule.spec.set_request_headers;
    let pool = rule
        .spec
        .token_pool
        .as_deref()
        .zip(pooled)
        .map(|(p, v)| (p.header(), v));
    let overridden = |name: &str| {
        set.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
            || pool.is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    let mut xff: Option<String> = None;
    let mut out_bytes = out.into_bytes();
    for (name, value) in request.headers() {
        if is_hop_by_hop(name, &tokens)
            || name.eq_ignore_ascii_case("host")
            || name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("expect")
            || overridden(name)
            || (url.userinfo.is_some() && name.eq_ignore_ascii_case("authorization"))
        {
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            let v = String::from_utf8_lossy(value);
            xff = Some(match xff {
                Some(prev) => format!("{prev}, {v}"),
                None => v.into_owned(),
            });
            continue;
        }
        out_bytes.extend_from_slice(name.as_bytes());
        out_bytes.extend_from_slice(b": ");
        out_bytes.extend_from_slice(value);
        out_bytes.extend_from_slice(b"\r\n");
    }
    let mut tail = String::with_capacity(256);
    if let Some(peer) = peer {
        match xff {
            Some(prev) => {
                let _ = write!(tail, "X-Forwarded-For: {prev}, {peer}\r\n");
            }
            None => {
                let _ = write!(tail, "X-Forwarded-For: {peer}\r\n");
            }
        }
    } else if let Some(prev) = xff {
        let _ = write!(tail, "X-Forwarded-For: {prev}\r\n");
    }
    if let Some(userinfo) = &url.userinfo {
        if !overridden("authorization") {
            // Canonicalisation rejected invalid escapes in userinfo.
            let decoded = crate::percent::decode(userinfo.as_bytes());
            let b64 = base64::engine::general_purpose::STANDARD.encode(decoded);
            let _ = write!(tail, "Authorization: Basic {b64}\r\n");
        }
    }
    for (name, value) in set.iter().map(|(n, v)| (n.as_str(), v)).chain(pool) {
        let v = value.expose();
        if !v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            let _ = write!(tail, "{name}: {v}\r\n");
        }
    }
    match request.head.body {
        BodyFraming::None => {
            if matches!(
                request.head.method,
                Method::Post | Method::Put | Method::Patch
            ) {
                tail.push_str("Content-Length: 0\r\n");
            }
        }
        BodyFraming::Length(n) => {
            let _ = write!(tail, "Content-Length: {n}\r\n");
        }
        BodyFraming::Chunked => tail.push_str("Transfer-Encoding: chunked\r\n"),
    }
    tail.push_str("Connection: keep-alive\r\n\r\n");
    out_bytes.extend_from_slice(tail.as_bytes());
    out_bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Limits, parse_head};

    /// `raw`'s parsed head (a complete, valid request head).
    fn head_of(raw: &str) -> RequestHead {
        let mut head = RequestHead::default();
        let limits = Limits {
            max_head_bytes: 8192,
            max_headers: 64,
        };
        parse_head(raw.as_bytes(), &limits, &mut head)
            .expect("valid")
            .expect("complete");
        head
    }

    fn rewrite(raw: &str, set: &[(&str, &str)]) -> String {
        let head = head_of(raw);
        let request = Request {
            head: &head,
            bytes: raw.as_bytes(),
        };
        let url = CanonUrl::parse(request.target().strip_prefix("/proxy/").expect("proxy"))
            .expect("canonical");
        let list = super::super::tests::allowlist(set, &[]);
        let peer = Some("10.77.0.1".parse().expect("ip"));
        String::from_utf8(upstream_head(request, &url, &list.rules()[0], peer, None))
            .expect("utf-8")
    }

    #[test]
    fn request_head_rewrite() {
        let out = rewrite(
            "POST /proxy/https://u%40x:p%3Aw@GHE.example.com:443/api/v3/x?a=1&b=%2F HTTP/1.1\r\n\
             Host: 10.77.0.2\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n\
             Proxy-Authorization: Basic eA==\r\nTE: trailers\r\nAuthorization: Bearer vendor\r\n\
             X-Forwarded-For: 192.0.2.1\r\nPrivate-Token: vendor\r\nX-Keep: yes\r\n\
             Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
            &[("PRIVATE-TOKEN", "injected")],
        );
        let lines: Vec<&str> = out.split("\r\n").collect();
        assert_eq!(
            lines[0], "POST /api/v3/x?a=1&b=%2F HTTP/1.1",
            "matched target forwarded verbatim"
        );
        assert_eq!(
            lines[1], "Host: ghe.example.com",
            "default port omitted, host lower-cased"
        );
        for gone in [
            "X-Hop",
            "Keep-Alive",
            "Proxy-Authorization",
            "TE:",
            "Expect",
            "Bearer vendor",
            "Private-Token: vendor",
        ] {
            assert!(!out.contains(gone), "{gone} passed through:\n{out}");
        }
        assert!(out.contains("X-Keep: yes\r\n"));
        assert!(out.contains("X-Forwarded-For: 192.0.2.1, 10.77.0.1\r\n"));
        // userinfo (percent-decoded) became Basic auth: "u@x:p:w".
        assert!(
            out.contains("Authorization: Basic dUB4OnA6dw==\r\n"),
            "{out}"
        );
        assert!(out.contains("PRIVATE-TOKEN: injected\r\n"));
        assert!(out.contains("Transfer-Encoding: chunked\r\n"));
        assert!(out.ends_with("Connection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn rule_authorization_beats_userinfo_and_bodiless_posts_get_a_length() {
        let out = rewrite(
            "POST /proxy/https://u:p@ghe.example.com/api HTTP/1.1\r\nHost: b\r\n\r\n",
            &[("Authorization", "Bearer rule")],
        );
        assert!(out.contains("Authorization: Bearer rule\r\n"));
        assert!(!out.contains("Basic"));
        assert!(out.contains("Content-Length: 0\r\n"));
    }

    #[test]
    fn only_bodiless_requests_with_a_safe_method_are_replayable() {
        for (method, extra, want) in [
            ("GET", "", true),
            ("HEAD", "", true),
            ("OPTIONS", "", true),
            ("DELETE", "", false),
            ("POST", "", false),
            // Methods are case-sensitive: `get` is an extension method, not GET.
            ("get", "", false),
            ("GET", "Content-Length: 1\r\n", false),
        ] {
            let raw = format!(
                "{method} /proxy/https://ghe.example.com/a HTTP/1.1\r\nHost: b\r\n{extra}\r\n"
            );
            let head = head_of(&raw);
            let request = Request {
                head: &head,
                bytes: raw.as_bytes(),
            };
            assert_eq!(request.replayable(), want, "{method} {extra:?}");
        }
    }
}
