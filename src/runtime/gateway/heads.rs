//! HTTP/1.1 heads as the gateway reads them: a request head (front door, heartbeat) and a
//! broker's response head (requests, health checks), both bounded in size and header count.

use super::*;

/// Reads until `buf` holds a complete, valid request head; returns it and its length.
pub(super) async fn read_request_head<S: AsyncRead + Unpin>(
    conn: &mut S,
    buf: &mut Vec<u8>,
) -> Result<(RequestHead, usize), HeadFailure> {
    let limits = Limits {
        max_head_bytes: MAX_HEAD,
        max_headers: MAX_HEADERS,
    };
    let mut head = RequestHead::default();
    loop {
        if !buf.is_empty() {
            match parse_head(buf, &limits, &mut head) {
                Ok(Some(len)) => return Ok((head, len)),
                Ok(None) => {}
                Err(e) => return Err(HeadFailure::Bad(e.status(), e.to_string())),
            }
        }
        if buf.len() >= MAX_HEAD {
            return Err(HeadFailure::Bad(431, "request head too large".into()));
        }
        let mut chunk = [0u8; 4096];
        let n = conn
            .read(&mut chunk)
            .await
            .map_err(|_| HeadFailure::Closed)?;
        if n == 0 {
            return Err(HeadFailure::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Why no request head was read.
#[derive(Debug)]
pub(super) enum HeadFailure {
    /// The client closed or reset.
    Closed,
    /// Not a valid head: the status and the reason.
    Bad(u16, String),
}

/// A response head from a broker.
#[derive(Debug)]
pub(super) struct ResponseHead {
    pub(super) status: u16,
    /// The head as received, without `Connection`/`Keep-Alive` lines and the blank line.
    pub(super) lines: Vec<u8>,
    /// How the body ends: what the gateway reads of it before the connection can carry the
    /// next request.
    pub(super) body: ResponseBody,
    /// The broker said `Connection: close`.
    pub(super) close: bool,
}

/// How a response body from a broker is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ResponseBody {
    /// None by status (1xx, 204, 304); a response to `HEAD` is treated so by the caller.
    Empty,
    Length(u64),
    Chunked,
    /// Until the broker closes: the connection cannot be kept.
    UntilClose,
}

/// Reads a response head from `conn` (after `buf`'s bytes); returns it and the body bytes that
/// came with it. An empty read before the head completes is an error.
pub(super) async fn read_response_head<S: AsyncRead + Unpin>(
    conn: &mut S,
    mut buf: Vec<u8>,
) -> io::Result<(ResponseHead, Vec<u8>)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = resp.code.unwrap_or(0);
                let mut lines =
                    format!("HTTP/1.1 {} {}\r\n", status, resp.reason.unwrap_or("")).into_bytes();
                let no_body = matches!(status, 100..=199 | 204 | 304);
                let (mut length, mut chunked, mut close) = (None, false, false);
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("connection") {
                        close |= h
                            .value
                            .split(|&b| b == b',')
                            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
                        continue;
                    }
                    if h.name.eq_ignore_ascii_case("keep-alive") {
                        continue;
                    }
                    if h.name.eq_ignore_ascii_case("content-length") {
                        let n = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<u64>().ok());
                        // Two lengths that differ, or one that is no number: not framed for reuse.
                        length = match (length, n) {
                            (None, Some(n)) => Some(Some(n)),
                            (Some(Some(a)), Some(b)) if a == b => Some(Some(a)),
                            _ => Some(None),
                        };
                    }
                    if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = h
                            .value
                            .rsplit(|&b| b == b',')
                            .next()
                            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                    }
                    lines.extend_from_slice(h.name.as_bytes());
                    lines.extend_from_slice(b": ");
                    lines.extend_from_slice(h.value);
                    lines.extend_from_slice(b"\r\n");
                }
                let rest = buf.split_off(len);
                let body = match (no_body, chunked, length) {
                    (true, _, _) => ResponseBody::Empty,
                    (false, true, _) => ResponseBody::Chunked,
                    (false, false, Some(Some(n))) => ResponseBody::Length(n),
                    _ => ResponseBody::UntilClose,
                };
                return Ok((
                    ResponseHead {
                        status,
                        lines,
                        body,
                        close,
                    },
                    rest,
                ));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response head too large",
                ));
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
