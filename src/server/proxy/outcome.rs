//! What became of a proxied exchange: the one error type of the exchange ([`ProxyError`]) and the
//! record the log line and the metrics read ([`Outcome`]).
//!
//! The shape follows pingora's error: each failure knows **which side** failed ([`Side`]), its
//! **kind** from a closed set ([`ErrorKind`]), the **status** the vendor gets while it can still
//! get one, and whether sending the request again is **safe** ([`Retry`]). Every property of a
//! kind is an exhaustive `match` here — the vendor-facing status, the log label, the metric it is
//! counted under — so adding a kind does not compile until each of them is decided.
//!
//! Invariants: a [`ProxyError`] message is what the vendor reads in the JSON `error` field; it
//! names at most an upstream `host:port` (see [`UpstreamError`]), never a URL, a header value or
//! a secret.

use std::borrow::Cow;

use super::ERROR_HEADER;
use crate::http::ResponseHead;
use crate::server::{ErrorBody, REQUEST_ID_HEADER};
use crate::upstream::UpstreamError;

/// Which side of the exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The vendor: its request was refused or malformed, or it went away.
    Vendor,
    /// The upstream: unreachable, too slow, or it broke the exchange off.
    Upstream,
}

/// Whether the request may be sent again on another connection after this failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Nothing of the request reached the upstream. The proxy does not retry these itself: the
    /// connector already tried every address within its timeout.
    Safe,
    /// The upstream closed the connection before a byte of its answer. Safe only when the
    /// connection came from the pool (it was closed while idle and the request found it dead)
    /// and the request is replayable ([`super::Request::replayable`]): then the proxy sends it
    /// once more on a new connection.
    IfReused,
    /// The upstream may have acted on the request, or the failure is not the upstream's.
    Never,
}

/// What went wrong, from a closed set. Each kind has one status, one log label and one metric
/// outcome (the methods below); the labels are the `error` / `kind` fields of the log events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No rule allows the request: 403, `denied`.
    Denied,
    /// The `/proxy/` target is not an absolute URL the broker accepts: 400, `malformed`.
    MalformedDestination,
    /// The chunked request body is malformed: 400, `body`.
    MalformedBody,
    /// The vendor's request body ended before its declared end: 400, `body_incomplete`.
    BodyIncomplete,
    /// A body a rule's `[[allow.body]]` must check is over `[inbound] max_checked_body`: 413,
    /// `body_too_large`.
    BodyTooLarge,
    /// The vendor's request body stalled longer than `[inbound] body_timeout`: 408,
    /// `timeout_request_body`.
    RequestBodyTimeout,
    /// Writing to the vendor failed: it closed or reset its connection. Nothing can be answered;
    /// `vendor_closed`.
    VendorClosed,
    /// The upstream's name did not resolve: 502, `dns`.
    Dns,
    /// The upstream (or the CONNECT proxy) refused the connection or was unreachable: 502,
    /// `connect`.
    Connect,
    /// No connection within `[upstream] connect_timeout`: 504, `timeout_connect`.
    ConnectTimeout,
    /// The upstream's certificate was refused: 502, `tls_certificate`.
    TlsCertificate,
    /// The TLS handshake failed otherwise: 502, `tls`.
    Tls,
    /// No TLS session within `[upstream] tls_timeout`: 504, `timeout_tls`.
    TlsTimeout,
    /// The CONNECT proxy refused the tunnel: 502, `proxy`.
    Proxy,
    /// The upstream closed or reset the connection mid-exchange: 502, `reset`.
    Reset,
    /// The upstream's answer is not HTTP/1.1 the broker can forward: 502, `bad_response`.
    BadResponse,
    /// No response head within `[upstream] response_timeout`: 504, `timeout_response`.
    ResponseTimeout,
    /// The response body stalled longer than `[upstream] response_timeout` (always after the
    /// head, so the exchange is aborted): 504, `timeout_body`.
    ResponseBodyTimeout,
}

/// The `outcome` label of `wgbroker_outcomes_total` a failed exchange is counted under (a
/// completed one is `proxied`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// `denied`.
    Denied,
    /// `malformed`: the request could not be understood.
    Malformed,
    /// `vendor_aborted`: the vendor went away mid-response or its request body stopped.
    VendorAborted,
    /// `upstream_error`.
    UpstreamError,
}

impl ErrorKind {
    /// Which side failed.
    pub fn side(self) -> Side {
        match self {
            Self::Denied
            | Self::MalformedDestination
            | Self::MalformedBody
            | Self::BodyIncomplete
            | Self::BodyTooLarge
            | Self::RequestBodyTimeout
            | Self::VendorClosed => Side::Vendor,
            Self::Dns
            | Self::Connect
            | Self::ConnectTimeout
            | Self::TlsCertificate
            | Self::Tls
            | Self::TlsTimeout
            | Self::Proxy
            | Self::Reset
            | Self::BadResponse
            | Self::ResponseTimeout
            | Self::ResponseBodyTimeout => Side::Upstream,
        }
    }

    /// The status the vendor gets if no response head went out yet; `None` when nothing can be
    /// answered.
    pub fn status(self) -> Option<u16> {
        match self {
            Self::Denied => Some(403),
            Self::MalformedDestination | Self::MalformedBody | Self::BodyIncomplete => Some(400),
            Self::BodyTooLarge => Some(413),
            Self::RequestBodyTimeout => Some(408),
            Self::VendorClosed => None,
            Self::Dns
            | Self::Connect
            | Self::TlsCertificate
            | Self::Tls
            | Self::Proxy
            | Self::Reset
            | Self::BadResponse => Some(502),
            Self::ConnectTimeout
            | Self::TlsTimeout
            | Self::ResponseTimeout
            | Self::ResponseBodyTimeout => Some(504),
        }
    }

    /// The label in log events (`proxy.response` `error`, `upstream.error` `kind`). Upstream
    /// connect failures keep [`UpstreamError::kind`]'s labels.
    pub fn label(self) -> &'static str {
        match self {
            Self::Denied => "denied",
            Self::MalformedDestination => "malformed",
            Self::MalformedBody => "body",
            Self::BodyIncomplete => "body_incomplete",
            Self::BodyTooLarge => "body_too_large",
            Self::RequestBodyTimeout => "timeout_request_body",
            Self::VendorClosed => "vendor_closed",
            Self::Dns => "dns",
            Self::Connect => "connect",
            Self::ConnectTimeout => "timeout_connect",
            Self::TlsCertificate => "tls_certificate",
            Self::Tls => "tls",
            Self::TlsTimeout => "timeout_tls",
            Self::Proxy => "proxy",
            Self::Reset => "reset",
            Self::BadResponse => "bad_response",
            Self::ResponseTimeout => "timeout_response",
            Self::ResponseBodyTimeout => "timeout_body",
        }
    }

    /// The metric outcome the exchange is counted under: every failure of the upstream's side
    /// is `upstream_error` (so [`Self::side`] decides it, once); the vendor's side is split by
    /// what went wrong.
    pub fn counted(self) -> Counted {
        match (self.side(), self) {
            (Side::Upstream, _) => Counted::UpstreamError,
            (Side::Vendor, Self::Denied) => Counted::Denied,
            (
                Side::Vendor,
                Self::MalformedDestination | Self::MalformedBody | Self::BodyTooLarge,
            ) => Counted::Malformed,
            (Side::Vendor, _) => Counted::VendorAborted,
        }
    }
}

impl From<&UpstreamError> for ErrorKind {
    fn from(e: &UpstreamError) -> Self {
        match e {
            UpstreamError::Dns { .. } => Self::Dns,
            UpstreamError::Connect { .. } => Self::Connect,
            UpstreamError::ConnectTimeout { .. } => Self::ConnectTimeout,
            UpstreamError::TlsCertificate { .. } => Self::TlsCertificate,
            UpstreamError::TlsHandshake { .. } => Self::Tls,
            UpstreamError::TlsTimeout { .. } => Self::TlsTimeout,
            UpstreamError::ProxyRefused { .. } => Self::Proxy,
            UpstreamError::Reset { .. } => Self::Reset,
            UpstreamError::BadResponse { .. } => Self::BadResponse,
            UpstreamError::ResponseTimeout { .. } => Self::ResponseTimeout,
            UpstreamError::BodyTimeout { .. } => Self::ResponseBodyTimeout,
        }
    }
}

/// Why a proxied exchange did not complete.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub retry: Retry,
    /// What the vendor reads (the JSON `error` field).
    pub message: Cow<'static, str>,
}

impl ProxyError {
    /// A failure that is not retried.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            retry: Retry::Never,
            message: message.into(),
        }
    }

    /// The upstream closed the connection before a byte of its answer (see [`Retry::IfReused`]).
    pub fn closed_before_answer(message: &'static str) -> Self {
        Self {
            kind: ErrorKind::Reset,
            retry: Retry::IfReused,
            message: message.into(),
        }
    }

    /// The vendor's connection failed while the broker wrote to it.
    pub fn vendor_closed() -> Self {
        Self::new(ErrorKind::VendorClosed, "vendor closed the connection")
    }
}

impl From<UpstreamError> for ProxyError {
    fn from(e: UpstreamError) -> Self {
        Self {
            kind: ErrorKind::from(&e),
            retry: if e.retry_safe() {
                Retry::Safe
            } else {
                Retry::Never
            },
            message: e.to_string().into(),
        }
    }
}

/// What happened in one exchange, for the log line and the metrics.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The status sent to the vendor (0 when none was).
    pub status: u16,
    /// Rule index that allowed the request.
    pub rule: Option<usize>,
    /// Why the exchange did not complete; `None` when it did.
    pub error: Option<ErrorKind>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Whether the vendor connection may carry another request.
    pub keep_alive: bool,
    /// The first bytes of the request body, for rules with `log_request_body` (capped).
    pub request_sample: Option<Vec<u8>>,
    /// The first bytes of the response body, for rules with `log_response_body` (capped).
    pub response_sample: Option<Vec<u8>>,
    /// Cap of the samples.
    pub(super) sample_limit: usize,
    /// The request body was read to its end (trivially so for a bodiless request).
    pub(super) body_read: bool,
    /// The response head was written (or its write was attempted): from here a failure can only
    /// abort the connection, the status line is gone.
    pub(super) head_sent: bool,
    /// From the complete request head to the end of the response, microseconds.
    pub elapsed_us: u64,
    /// The upstream answered 401 to a pooled token, which was set aside for it.
    pub token_set_aside: bool,
}

impl Outcome {
    /// The record of an exchange that has not started: `keep_alive` is what the vendor asked
    /// for, `body_read` whether there is no body to read.
    pub(super) fn new(keep_alive: bool, body_read: bool, sample_limit: usize) -> Self {
        Self {
            status: 0,
            rule: None,
            error: None,
            request_bytes: 0,
            response_bytes: 0,
            keep_alive,
            request_sample: None,
            response_sample: None,
            sample_limit,
            body_read,
            token_set_aside: false,
            head_sent: false,
            elapsed_us: 0,
        }
    }

    /// Keeps the first bytes of the request body for rules with `log_request_body`.
    pub(super) fn sample_request(&mut self, data: &[u8]) {
        Self::sample(&mut self.request_sample, self.sample_limit, data);
    }

    /// Keeps the first bytes of the response body for rules with `log_response_body`.
    pub(super) fn sample_response(&mut self, data: &[u8]) {
        Self::sample(&mut self.response_sample, self.sample_limit, data);
    }

    fn sample(slot: &mut Option<Vec<u8>>, limit: usize, data: &[u8]) {
        if let Some(v) = slot {
            let room = limit.saturating_sub(v.len());
            v.extend_from_slice(&data[..room.min(data.len())]);
        }
    }
}

/// An error response, JSON body, always with the error header; `close` adds `Connection: close`.
pub fn error_response(status: u16, message: &str, request_id: &str, close: bool) -> Vec<u8> {
    let body = ErrorBody {
        error: message,
        request_id,
    }
    .to_vec();
    let mut h = ResponseHead::default();
    h.start(status)
        .header("Content-Type", "application/json")
        .header_u64("Content-Length", body.len() as u64)
        .header(ERROR_HEADER, "1")
        .header(REQUEST_ID_HEADER, request_id);
    if close {
        h.header("Connection", "close");
    }
    let mut out = h.finish().to_vec();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::time::Duration;

    /// One of each [`UpstreamError`] variant.
    fn upstream_errors() -> Vec<UpstreamError> {
        let peer = || "h:443".to_owned();
        let after = Duration::from_secs(1);
        vec![
            UpstreamError::Dns {
                peer: peer(),
                detail: "x".into(),
            },
            UpstreamError::Connect {
                peer: peer(),
                source: io::ErrorKind::ConnectionRefused.into(),
            },
            UpstreamError::ConnectTimeout {
                peer: peer(),
                after,
            },
            UpstreamError::TlsCertificate {
                peer: peer(),
                detail: "x".into(),
            },
            UpstreamError::TlsHandshake {
                peer: peer(),
                detail: "x".into(),
            },
            UpstreamError::TlsTimeout {
                peer: peer(),
                after,
            },
            UpstreamError::ProxyRefused {
                proxy: "p:3128".into(),
                peer: peer(),
                status: Some(403),
                detail: "x".into(),
            },
            UpstreamError::reset(peer(), false, &io::ErrorKind::ConnectionReset.into()),
            UpstreamError::BadResponse {
                peer: peer(),
                detail: "x",
            },
            UpstreamError::ResponseTimeout {
                peer: peer(),
                after,
            },
            UpstreamError::BodyTimeout {
                peer: peer(),
                after,
            },
        ]
    }

    #[test]
    fn upstream_errors_keep_their_label_status_and_retry_safety() {
        for e in upstream_errors() {
            let (kind, label, status, safe) =
                (ErrorKind::from(&e), e.kind(), e.status(), e.retry_safe());
            let p = ProxyError::from(e);
            assert_eq!(kind.label(), label);
            assert_eq!(kind.status(), Some(status), "{label}");
            assert_eq!(kind.side(), Side::Upstream, "{label}");
            assert_eq!(kind.counted(), Counted::UpstreamError, "{label}");
            assert_eq!(p.retry == Retry::Safe, safe, "{label}");
        }
    }

    #[test]
    fn vendor_kinds_are_counted_apart_from_upstream_errors() {
        use ErrorKind::*;
        for (kind, status, counted) in [
            (Denied, Some(403), Counted::Denied),
            (MalformedDestination, Some(400), Counted::Malformed),
            (MalformedBody, Some(400), Counted::Malformed),
            (BodyIncomplete, Some(400), Counted::VendorAborted),
            (RequestBodyTimeout, Some(408), Counted::VendorAborted),
            (VendorClosed, None, Counted::VendorAborted),
        ] {
            assert_eq!(kind.side(), Side::Vendor, "{kind:?}");
            assert_eq!(kind.status(), status, "{kind:?}");
            assert_eq!(kind.counted(), counted, "{kind:?}");
        }
    }

    #[test]
    fn error_responses_are_json_with_the_error_header() {
        let r = String::from_utf8(error_response(403, "url is not in allowlist", "r-1", false))
            .expect("utf-8");
        assert!(r.starts_with("HTTP/1.1 403 Forbidden\r\n"));
        assert!(r.contains("X-Semgrep-Private-Link-Error: 1\r\n"));
        assert!(r.contains("X-Request-Id: r-1\r\n"));
        assert!(!r.contains("Connection: close"));
        assert!(r.ends_with(r#"{"error":"url is not in allowlist","request_id":"r-1"}"#));
    }

    #[test]
    fn error_bodies_escape_what_json_needs() {
        let message = "upstream said \"no\" \\ twice\n";
        let r = error_response(502, message, "r-2", true);
        let at = r
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head end")
            + 4;
        let body: serde_json::Value = serde_json::from_slice(&r[at..]).expect("valid JSON");
        assert_eq!(body["error"], message);
        assert_eq!(body["request_id"], "r-2");
        let text = std::str::from_utf8(&r[at..]).expect("utf-8");
        assert!(
            text.starts_with(r#"{"error":"upstream said \"no\" \\ twice\n","#),
            "{text}"
        );
    }
}
