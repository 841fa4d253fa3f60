//! The upstream's response head: read it ([`Exchange::read_response_head`]), check it and build
//! the head the vendor gets ([`parse_response_head`]).
//!
//! Invariants: informational (1xx) heads are skipped, never forwarded (the broker never forwards
//! `Expect`), and `101 Switching Protocols` is refused; the head is bounded
//! ([`MAX_RESPONSE_HEAD`], [`MAX_RESPONSE_HEADERS`]); conflicting or invalid lengths and transfer
//! codings other than `chunked` are refused rather than guessed; hop-by-hop headers, the rule's
//! `remove_response_headers` and any upstream copy of our own headers are dropped; the body
//! framing is restated (a close-delimited body is re-framed as chunked, so the vendor connection
//! survives it).

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;

use futures_lite::{AsyncRead, AsyncWrite};

use super::outcome::{ErrorKind, ProxyError, Retry};
use super::request::is_hop_by_hop;
use super::{Exchange, PROXIED_HEADER};
use crate::allowlist::Rule;
use crate::http::Method;
use crate::server::buffered::Buffered;
use crate::server::{REQUEST_ID_HEADER, Timer};
use crate::upstream::Upstreams;

/// Largest upstream response head accepted (also the size of a connection's response buffer).
pub(super) const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Most upstream response header lines.
const MAX_RESPONSE_HEADERS: usize = 128;

/// How the upstream response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body: a response to `HEAD`, a 204 or a 304.
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body ends when the upstream closes the connection.
    UntilClose,
}

impl Framing {
    /// The framing of a final response with `status` to a request that was `HEAD` or not, given
    /// what its `Transfer-Encoding` and `Content-Length` said.
    fn of(status: u16, head_request: bool, chunked: bool, content_length: Option<u64>) -> Self {
        if head_request || status == 204 || status == 304 {
            Framing::None
        } else if chunked {
            Framing::Chunked
        } else if let Some(n) = content_length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        }
    }

    /// Writes the framing header of the vendor's head: the length, or chunked for a chunked or
    /// close-delimited body; a response to `HEAD` keeps the length it advertised.
    fn restate(self, out: &mut Vec<u8>, head_request: bool, content_length: Option<u64>) {
        match self {
            Framing::Length(n) => {
                let _ = write!(Wrap(out), "Content-Length: {n}\r\n");
            }
            Framing::Chunked | Framing::UntilClose => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n")
            }
            Framing::None => {
                if let (true, Some(n)) = (head_request, content_length) {
                    let _ = write!(Wrap(out), "Content-Length: {n}\r\n");
                }
            }
        }
    }
}

/// A final response head, checked.
#[derive(Debug)]
pub(super) struct Final {
    pub status: u16,
    /// Length of the upstream's head in the buffer.
    pub len: usize,
    pub framing: Framing,
    /// The upstream connection may carry another exchange after this one.
    pub keep_alive: bool,
    /// The head for the vendor, without its final blank line.
    pub head: Vec<u8>,
}

/// What [`parse_response_head`] found at the front of the buffer.
#[derive(Debug)]
pub(super) enum Parsed {
    /// An informational (1xx) head of this many bytes, to skip.
    Informational(usize),
    Final(Final),
}

impl<C, T, U> Exchange<'_, '_, C, T, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: Timer,
    U: Upstreams,
{
    /// Reads until `up` starts with a complete final response head, skipping informational ones;
    /// returns it checked, with `up` positioned after it.
    /// Every read is raced against the same `deadline` (one `response_timeout` for the head).
    pub(super) async fn read_response_head<R: AsyncRead + Unpin>(
        &self,
        up: &mut Buffered<'_, R>,
        rule: &Rule,
        mut deadline: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Final, ProxyError> {
        let head_request = self.request.head.method == Method::Head;
        loop {
            match parse_response_head(up.buffered(), head_request, rule, self.ctx.request_id) {
                Ok(Some(Parsed::Final(f))) => {
                    up.consume(f.len);
                    return Ok(f);
                }
                // What followed it in the same read (often the final head) is parsed before
                // reading again.
                Ok(Some(Parsed::Informational(len))) => {
                    up.consume(len);
                    continue;
                }
                Ok(None) => {}
                Err(msg) => return Err(ProxyError::new(ErrorKind::BadResponse, msg)),
            }
            if up.is_full() {
                return Err(ProxyError::new(
                    ErrorKind::BadResponse,
                    "upstream response head too large",
                ));
            }
            // Part of the answer came: the request is not sent again whatever happens now.
            let read = up.fill();
            self.read_answer(deadline.as_mut(), read)
                .await
                .map_err(|e| ProxyError {
                    retry: Retry::Never,
                    ..e
                })?;
        }
    }
}

/// Parses the upstream response head at the front of `buf` and builds the one sent to the vendor
/// (without the final blank line); `Ok(None)` while it is incomplete. `head_request`: the
/// request was `HEAD` (no body, whatever the head says).
pub(super) fn parse_response_head(
    buf: &[u8],
    head_request: bool,
    rule: &Rule,
    request_id: &str,
) -> Result<Option<Parsed>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(n)) => n,
        Err(_) => return Err("malformed upstream response head"),
    };
    let status = r.code.unwrap_or(0);
    // httparse takes any three digits; the vendor's client would not take `HTTP/1.1 0 OK`.
    if !(100..=599).contains(&status) {
        return Err("malformed upstream response head");
    }
    if (100..200).contains(&status) {
        if status == 101 {
            return Err("upstream tried to switch protocols");
        }
        return Ok(Some(Parsed::Informational(len)));
    }
    let tokens: Vec<&str> = r
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| std::str::from_utf8(h.value).unwrap_or_default().split(','))
        .map(str::trim)
        .collect();
    let close = r.version == Some(0) || tokens.iter().any(|t| t.eq_ignore_ascii_case("close"));
    let mut out = Vec::with_capacity(len + 128);
    let reason = r.reason.unwrap_or("");
    let _ = write!(Wrap(&mut out), "HTTP/1.1 {status} {reason}\r\n");
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    for h in r.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).unwrap_or_default().trim();
            let n: u64 = v.parse().map_err(|_| "invalid upstream Content-Length")?;
            if content_length.is_some_and(|c| c != n) {
                return Err("conflicting upstream Content-Length");
            }
            content_length = Some(n);
            continue;
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            let v = std::str::from_utf8(h.value).unwrap_or_default();
            chunked = v
                .rsplit(',')
                .map(str::trim)
                .next()
                .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
            if !chunked {
                return Err("unsupported upstream transfer-coding");
            }
            continue;
        }
        if is_hop_by_hop(name, &tokens)
            || rule
                .spec
                .remove_response_headers
                .iter()
                .any(|r| r.eq_ignore_ascii_case(name))
            || name.eq_ignore_ascii_case(PROXIED_HEADER)
            || name.eq_ignore_ascii_case(REQUEST_ID_HEADER)
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    let framing = Framing::of(status, head_request, chunked, content_length);
    framing.restate(&mut out, head_request, content_length);
    let _ = write!(
        Wrap(&mut out),
        "{PROXIED_HEADER}: 1\r\n{REQUEST_ID_HEADER}: {request_id}\r\n"
    );
    Ok(Some(Parsed::Final(Final {
        status,
        len,
        framing,
        keep_alive: !close && framing != Framing::UntilClose,
        head: out,
    })))
}

/// `fmt::Write` into a byte vector.
struct Wrap<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Wrap<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(
        raw: &str,
        head_request: bool,
        remove: &[&str],
    ) -> Result<Option<Parsed>, &'static str> {
        let list = super::super::tests::allowlist(&[], remove);
        parse_response_head(raw.as_bytes(), head_request, &list.rules()[0], "rid")
    }

    /// The final head of `raw`, which must be one.
    fn final_head(raw: &str, head_request: bool, remove: &[&str]) -> Final {
        match response(raw, head_request, remove) {
            Ok(Some(Parsed::Final(f))) => f,
            other => panic!("final response expected, got {other:?}"),
        }
    }

    #[test]
    fn response_head_filtering_and_framing() {
        let f = final_head(
            "HTTP/1.1 200 OK\r\nSet-Cookie: s=1\r\nConnection: close\r\nContent-Length: 5\r\nX-Semgrep-Private-Link: 0\r\nX-A: b\r\n\r\nhello",
            false,
            &["set-cookie"],
        );
        let head = String::from_utf8(f.head).expect("utf-8");
        assert_eq!(f.status, 200);
        assert_eq!(f.framing, Framing::Length(5));
        assert!(!f.keep_alive, "upstream asked to close");
        assert!(!head.contains("Set-Cookie") && !head.contains("Connection"));
        assert!(head.contains("X-A: b\r\n") && head.contains("Content-Length: 5\r\n"));
        assert!(head.contains("X-Semgrep-Private-Link: 1\r\nX-Request-Id: rid\r\n"));
        assert_eq!(
            head.matches("X-Semgrep-Private-Link").count(),
            1,
            "the upstream cannot forge it"
        );

        // Close-delimited bodies are re-framed as chunked for the vendor; the upstream
        // connection is then not reusable.
        let f = final_head("HTTP/1.0 200 OK\r\n\r\n", false, &[]);
        assert_eq!(f.framing, Framing::UntilClose);
        assert!(!f.keep_alive);
        assert!(String::from_utf8_lossy(&f.head).contains("Transfer-Encoding: chunked"));

        // HEAD keeps the advertised length but has no body.
        let f = final_head("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", true, &[]);
        assert_eq!(f.framing, Framing::None);
        assert!(String::from_utf8_lossy(&f.head).contains("Content-Length: 99"));

        assert!(matches!(
            response("HTTP/1.1 100 Continue\r\n\r\n", false, &[]),
            Ok(Some(Parsed::Informational(25)))
        ));
        assert!(matches!(
            response("HTTP/1.1 200 OK\r\nContent-Le", false, &[]),
            Ok(None)
        ));
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert!(response(bad, false, &[]).is_err(), "{bad:?} accepted");
        }
    }

    /// Found by the `upstream_head` fuzz target: httparse takes any three digits as a status,
    /// and `HTTP/1.1 000 OK` reached the vendor as `HTTP/1.1 0 OK`, a status line no client
    /// parses. A status outside 100–599 is not HTTP: the upstream answer is malformed.
    #[test]
    fn a_status_outside_100_to_599_is_a_malformed_upstream_head() {
        for bad in ["000", "001", "099", "600", "999"] {
            let raw = format!("HTTP/1.1 {bad} OK\r\nContent-Length: 0\r\n\r\n");
            assert_eq!(
                response(&raw, false, &[]).err(),
                Some("malformed upstream response head"),
                "{raw:?}"
            );
        }
        assert_eq!(final_head("HTTP/1.1 599 X\r\n\r\n", false, &[]).status, 599);
    }
}
