//! The HTTP CONNECT handshake with a forward proxy, over any async byte stream.
//!
//! Responsibility: write `CONNECT host:port HTTP/1.1` (with `Proxy-Authorization` when the proxy
//! URL had credentials), read the proxy's response head, and succeed only on a 2xx. The sans-IO
//! halves ([`request`], [`parse_reply`]) are plain functions; [`handshake`] drives them over a
//! stream and carries no timer — the caller bounds it (the runtime counts it in the connect
//! timeout).
//!
//! Invariants:
//! * the response head read is bounded by [`MAX_RESPONSE_HEAD`];
//! * nothing after the proxy's 2xx head is consumed: a proxy that sends tunnel bytes before the
//!   client spoke (neither HTTP nor TLS servers do) is treated as a protocol error rather than
//!   silently losing those bytes;
//! * the target host is checked to be a plain host name or IP literal before it is written, so a
//!   hand-made [`Target`] cannot inject header lines;
//! * the `Proxy-Authorization` value goes to the socket and nowhere else.

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::proxy::ProxyEndpoint;
use super::{Target, UpstreamError};

/// Largest CONNECT response head accepted, bytes.
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// Most header lines accepted in a CONNECT response.
const MAX_HEADERS: usize = 32;

/// The CONNECT request head for `target` through `proxy`, or `None` when the target's host cannot
/// be written into a request line safely.
pub fn request(target: &Target, proxy: &ProxyEndpoint) -> Option<Vec<u8>> {
    let h = target.host.as_bytes();
    let safe = !h.is_empty()
        && h.len() <= 255
        && h.iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        });
    if !safe {
        return None;
    }
    let authority = format!("{}:{}", target.host, target.port);
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"CONNECT ");
    out.extend_from_slice(authority.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(auth) = proxy.authorization() {
        out.extend_from_slice(b"Proxy-Authorization: ");
        out.extend_from_slice(auth.expose().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Some(out)
}

/// What a (partial) CONNECT response says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The head is not complete yet.
    Incomplete,
    /// 2xx: the tunnel is open; the head was `head_len` bytes.
    Established {
        /// Length of the response head including the blank line.
        head_len: usize,
    },
    /// Any other status.
    Refused {
        /// The status code.
        status: u16,
        /// The reason phrase: printable ASCII kept, anything else turned into a space, at most 64
        /// bytes.
        reason: String,
    },
}

/// Parses the proxy's reply; `Err` names what is malformed.
pub fn parse_reply(buf: &[u8]) -> Result<Reply, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(Reply::Incomplete),
        Ok(httparse::Status::Complete(head_len)) => {
            let status = resp.code.ok_or("no status code")?;
            if (200..300).contains(&status) {
                Ok(Reply::Established { head_len })
            } else {
                let reason: String = resp
                    .reason
                    .unwrap_or("")
                    .chars()
                    .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
                    .take(64)
                    .collect();
                Ok(Reply::Refused { status, reason })
            }
        }
        Err(httparse::Error::TooManyHeaders) => Err("too many header lines"),
        Err(_) => Err("not an HTTP response"),
    }
}

/// Opens a tunnel to `target` through `proxy` over `io` (already connected to the proxy).
pub async fn handshake<S>(
    io: &mut S,
    target: &Target,
    proxy: &ProxyEndpoint,
) -> Result<(), UpstreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer = || format!("{}:{}", target.host, target.port);
    let refused = |status: Option<u16>, detail: String| UpstreamError::ProxyRefused {
        proxy: proxy.peer(),
        peer: peer(),
        status,
        detail,
    };
    let req = request(target, proxy).ok_or_else(|| refused(None, "invalid target host".into()))?;
    io.write_all(&req)
        .await
        .map_err(|e| refused(None, format!("writing CONNECT: {e}")))?;
    io.flush()
        .await
        .map_err(|e| refused(None, format!("writing CONNECT: {e}")))?;
    let mut buf = vec![0u8; MAX_RESPONSE_HEAD];
    let mut filled = 0usize;
    loop {
        let n = io
            .read(&mut buf[filled..])
            .await
            .map_err(|e| refused(None, format!("reading the CONNECT response: {e}")))?;
        if n == 0 {
            return Err(refused(None, "proxy closed the connection".into()));
        }
        filled += n;
        match parse_reply(&buf[..filled]) {
            Ok(Reply::Incomplete) if filled == buf.len() => {
                return Err(refused(None, "CONNECT response head too large".into()));
            }
            Ok(Reply::Incomplete) => {}
            Ok(Reply::Established { head_len }) if head_len == filled => return Ok(()),
            Ok(Reply::Established { .. }) => {
                return Err(refused(
                    None,
                    "proxy sent data after its CONNECT response".into(),
                ));
            }
            Ok(Reply::Refused { status, reason }) => {
                return Err(refused(
                    Some(status),
                    format!("{status} {reason}").trim_end().to_owned(),
                ));
            }
            Err(what) => return Err(refused(None, what.into())),
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    use crate::testkit::script::Script;

    fn run(reply: &[u8], chunk: usize, proxy: &str) -> (Result<(), UpstreamError>, Vec<u8>) {
        let proxy = ProxyEndpoint::parse(proxy, "t").expect("proxy");
        let target = Target::new(true, "git.example.com", 443);
        let mut s = Script::new(reply, chunk);
        let r = futures_lite::future::block_on(handshake(&mut s, &target, &proxy));
        (r, s.output)
    }

    #[test]
    fn request_has_authority_and_credentials() {
        let (r, written) = run(
            b"HTTP/1.1 200 Connection established\r\n\r\n",
            1,
            "http://u:p@proxy:3128",
        );
        assert!(r.is_ok(), "{r:?}");
        let text = String::from_utf8(written).expect("ascii");
        assert_eq!(
            text,
            "CONNECT git.example.com:443 HTTP/1.1\r\nHost: git.example.com:443\r\n\
             Proxy-Authorization: Basic dTpw\r\n\r\n"
        );
    }

    #[test]
    fn no_credentials_no_header() {
        let (r, written) = run(
            b"HTTP/1.0 200 OK\r\nVia: squid\r\n\r\n",
            7,
            "http://proxy:3128",
        );
        assert!(r.is_ok(), "{r:?}");
        assert!(!String::from_utf8_lossy(&written).contains("Proxy-Authorization"));
    }

    #[test]
    fn non_2xx_is_refused_with_status() {
        let (r, _) = run(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n",
            1000,
            "http://u:pw@proxy:3128",
        );
        let e = r.expect_err("refused");
        assert!(
            matches!(
                e,
                UpstreamError::ProxyRefused {
                    status: Some(407),
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!((e.kind(), e.status(), e.retry_safe()), ("proxy", 502, true));
        let shown = e.to_string();
        assert!(
            shown.contains("proxy:3128") && shown.contains("407") && !shown.contains("pw"),
            "{shown}"
        );
    }

    #[test]
    fn eof_garbage_oversize_and_trailing_data_fail() {
        let (r, _) = run(b"HTTP/1.1 200 OK\r\n", 1000, "http://proxy:1");
        assert!(matches!(
            r,
            Err(UpstreamError::ProxyRefused { status: None, .. })
        ));
        let (r, _) = run(b"SSH-2.0-OpenSSH\r\n\r\n", 1000, "http://proxy:1");
        assert!(matches!(
            r,
            Err(UpstreamError::ProxyRefused { status: None, .. })
        ));
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() <= MAX_RESPONSE_HEAD {
            big.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let (r, _) = run(&big, 4096, "http://proxy:1");
        assert!(r.is_err());
        let (r, _) = run(b"HTTP/1.1 200 OK\r\n\r\nextra", 1000, "http://proxy:1");
        assert!(r.is_err());
    }

    #[test]
    fn unsafe_target_host_is_not_written() {
        let proxy = ProxyEndpoint::parse("http://proxy:1", "t").expect("proxy");
        let evil = Target::new(true, "a.example\r\nX-Evil: 1", 443);
        assert!(request(&evil, &proxy).is_none());
        let v6 = Target::new(true, "[::1]", 8443);
        let req = request(&v6, &proxy).expect("ok");
        assert!(req.starts_with(b"CONNECT [::1]:8443 HTTP/1.1\r\n"));
    }

    #[test]
    fn parse_reply_sanitises_reason() {
        assert_eq!(
            parse_reply(b"HTTP/1.1 403 Forbidden\tby policy\r\n\r\n"),
            Ok(Reply::Refused {
                status: 403,
                reason: "Forbidden by policy".into()
            })
        );
        assert_eq!(parse_reply(b"HTTP/1.1 2"), Ok(Reply::Incomplete));
        let long = format!("HTTP/1.1 502 {}\r\n\r\n", "x".repeat(500));
        match parse_reply(long.as_bytes()) {
            Ok(Reply::Refused {
                status: 502,
                reason,
            }) => assert_eq!(reason.len(), 64),
            other => panic!("{other:?}"),
        }
    }
}
