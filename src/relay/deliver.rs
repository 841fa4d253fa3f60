//! One delivery to the vendor, sans-IO: the request bytes and the reading of the answer.
//!
//! The request is `POST <destination path>` with the body unchanged, `Content-Length`, the
//! headers the intake kept ([`super::FORWARDED`]), `X-Wgbroker-Relay: <name>` and
//! `Connection: close` (one connection per attempt: webhooks are few, and a fresh connection
//! never fails because the vendor timed out an idle one). Only the response head is read, capped
//! at [`MAX_RESPONSE_HEAD`]: its status decides ([`super::schedule::Outcome`]) and its
//! `Retry-After` lengthens the back-off.

use std::time::Duration;

use super::Destination;
use super::schedule::parse_retry_after;
use super::spool::Event;

/// Largest response head read from the vendor.
pub const MAX_RESPONSE_HEAD: usize = 16 << 10;

/// The request head for `ev` (the body follows it unchanged).
pub fn request_head(dest: &Destination, relay: &str, ev: &Event) -> Vec<u8> {
    let mut h = Vec::with_capacity(512);
    h.extend_from_slice(b"POST ");
    h.extend_from_slice(dest.path.as_bytes());
    h.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    h.extend_from_slice(dest.authority.as_bytes());
    h.extend_from_slice(b"\r\n");
    for (name, value) in &ev.headers {
        // Values were taken from a parsed request head: they hold no CR/LF; checked again.
        if value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            continue;
        }
        h.extend_from_slice(name.as_bytes());
        h.extend_from_slice(b": ");
        h.extend_from_slice(value);
        h.extend_from_slice(b"\r\n");
    }
    if !ev
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("user-agent"))
    {
        h.extend_from_slice(
            format!("User-Agent: wgbroker/{}\r\n", env!("CARGO_PKG_VERSION")).as_bytes(),
        );
    }
    h.extend_from_slice(b"X-Wgbroker-Relay: ");
    h.extend_from_slice(relay.as_bytes());
    h.extend_from_slice(
        format!(
            "\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            ev.body.len()
        )
        .as_bytes(),
    );
    h
}

/// What the vendor answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub retry_after: Option<Duration>,
}

/// Parses the response head at the start of `buf`: `Ok(None)` when more bytes are needed, an
/// error when it is malformed or too large.
pub fn parse_response(buf: &[u8]) -> Result<Option<Response>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let status = resp.code.ok_or("no status code")?;
            // A 1xx (vendors send none without `Expect`) is returned as is: not a 2xx, so the
            // event is retried, never dropped.
            let retry_after = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("retry-after"))
                .and_then(|h| parse_retry_after(h.value));
            Ok(Some(Response {
                status,
                retry_after,
            }))
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => Ok(None),
        Ok(httparse::Status::Partial) => Err("response head too large".into()),
        Err(e) => Err(format!("malformed response: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_carries_the_body_unchanged_and_the_relay_name() {
        let dest = Destination::parse("https://hooks.vendor.example:8443/gh?k=1").expect("ok");
        let ev = Event {
            received_ms: 0,
            event: Some("push".into()),
            delivery: Some("d".into()),
            headers: vec![
                ("X-GitHub-Event".into(), b"push".to_vec()),
                ("X-Evil".into(), b"a\r\nInjected: 1".to_vec()),
            ],
            body: b"{\"a\":1}".to_vec(),
        };
        let head = String::from_utf8(request_head(&dest, "github", &ev)).expect("utf-8");
        assert!(head.starts_with("POST /gh?k=1 HTTP/1.1\r\nHost: hooks.vendor.example:8443\r\n"));
        assert!(head.contains("\r\nX-GitHub-Event: push\r\n"));
        assert!(head.contains("\r\nX-Wgbroker-Relay: github\r\n"));
        assert!(head.contains("\r\nContent-Length: 7\r\n"));
        assert!(!head.contains("Injected"));
        assert!(head.ends_with("\r\n\r\n"));
    }

    #[test]
    fn responses() {
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n"), Ok(None));
        assert_eq!(
            parse_response(b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\n\r\n"),
            Ok(Some(Response {
                status: 503,
                retry_after: Some(Duration::from_secs(7))
            }))
        );
        assert!(parse_response(b"NOPE\r\n\r\n").is_err());
        assert!(parse_response(&vec![b'a'; MAX_RESPONSE_HEAD]).is_err());
    }
}
