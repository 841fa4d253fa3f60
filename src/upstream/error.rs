//! [`UpstreamError`]: everything that can go wrong between the broker and an upstream, recorded
//! the way the proxy needs it — which phase failed (a bounded [`UpstreamError::kind`] label for
//! logs and metrics), the vendor-facing status (502 or 504), and whether a retry on a fresh
//! connection is safe (nothing of the request was sent).
//!
//! Invariant: the `Display` form names a `host:port` (or the proxy's `host:port`) and a cause,
//! never a URL, a path, a query or credentials.

use std::io;
use std::time::Duration;

/// A failure on the upstream side of a proxied request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The host name did not resolve to any address.
    #[error("cannot resolve {peer}: {detail}")]
    Dns {
        /// `host:port` that was looked up.
        peer: String,
        /// The resolver's reason.
        detail: String,
    },
    /// Every address of the host (or of the CONNECT proxy) refused the connection or was
    /// unreachable.
    #[error("cannot connect to {peer}: {source}")]
    Connect {
        /// `host:port` (or `proxy host:port via proxy`).
        peer: String,
        /// The last connect error.
        source: io::Error,
    },
    /// No TCP connection (and, through a proxy, no CONNECT tunnel) within `connect_timeout`.
    #[error("connecting to {peer} timed out after {after:?}")]
    ConnectTimeout {
        /// `host:port` being connected to.
        peer: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The upstream's certificate was refused: unknown issuer, wrong name, expired, ...
    #[error("TLS certificate of {peer} rejected: {detail}")]
    TlsCertificate {
        /// `host:port` of the upstream.
        peer: String,
        /// rustls's reason.
        detail: String,
    },
    /// The TLS handshake failed for another reason: no common protocol version or cipher suite, an
    /// alert, a malformed message, the connection closed mid-handshake.
    #[error("TLS handshake with {peer} failed: {detail}")]
    TlsHandshake {
        /// `host:port` of the upstream.
        peer: String,
        /// The reason.
        detail: String,
    },
    /// The TLS handshake did not finish within `tls_timeout`.
    #[error("TLS handshake with {peer} timed out after {after:?}")]
    TlsTimeout {
        /// `host:port` of the upstream.
        peer: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The HTTP CONNECT proxy refused the tunnel (non-2xx status) or answered something that is not
    /// an HTTP response.
    #[error("proxy {proxy} refused CONNECT to {peer}: {detail}")]
    ProxyRefused {
        /// The proxy's `host:port` (never its credentials).
        proxy: String,
        /// The `host:port` the tunnel was for.
        peer: String,
        /// The proxy's status code, when it sent one.
        status: Option<u16>,
        /// What was wrong (a fixed phrase or the status line's reason, sanitised).
        detail: String,
    },
    /// The connection was reset, or closed, or failed with an I/O error in the middle of an
    /// exchange.
    #[error("connection to {peer} failed mid-exchange: {detail}")]
    Reset {
        /// `host:port` of the upstream.
        peer: String,
        /// True when any byte of the request had been written.
        request_sent: bool,
        /// What happened.
        detail: String,
    },
    /// The upstream answered something that is not a valid HTTP/1.1 response.
    #[error("invalid response from {peer}: {detail}")]
    BadResponse {
        /// `host:port` of the upstream.
        peer: String,
        /// A fixed phrase naming the problem.
        detail: &'static str,
    },
    /// No response head within `response_timeout` after the request was sent.
    #[error("{peer} sent no response head within {after:?}")]
    ResponseTimeout {
        /// `host:port` of the upstream.
        peer: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The response body stalled longer than the body idle timeout.
    #[error("response body from {peer} stalled for {after:?}")]
    BodyTimeout {
        /// `host:port` of the upstream.
        peer: String,
        /// The timeout that elapsed.
        after: Duration,
    },
}

impl UpstreamError {
    /// The status the vendor gets: 504 for any timeout, 502 for everything else.
    pub fn status(&self) -> u16 {
        if self.is_timeout() { 504 } else { 502 }
    }

    /// True for the per-phase timeouts.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Self::ConnectTimeout { .. }
                | Self::TlsTimeout { .. }
                | Self::ResponseTimeout { .. }
                | Self::BodyTimeout { .. }
        )
    }

    /// A short label from a fixed set, for log fields and metric labels: `dns`, `connect`,
    /// `timeout_connect`, `tls_certificate`, `tls`, `timeout_tls`, `proxy`, `reset`,
    /// `bad_response`, `timeout_response`, `timeout_body`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Dns { .. } => "dns",
            Self::Connect { .. } => "connect",
            Self::ConnectTimeout { .. } => "timeout_connect",
            Self::TlsCertificate { .. } => "tls_certificate",
            Self::TlsHandshake { .. } => "tls",
            Self::TlsTimeout { .. } => "timeout_tls",
            Self::ProxyRefused { .. } => "proxy",
            Self::Reset { .. } => "reset",
            Self::BadResponse { .. } => "bad_response",
            Self::ResponseTimeout { .. } => "timeout_response",
            Self::BodyTimeout { .. } => "timeout_body",
        }
    }

    /// True only when nothing of the request reached the upstream, so the same request may be
    /// sent again on another connection without being executed twice.
    pub fn retry_safe(&self) -> bool {
        match self {
            Self::Dns { .. }
            | Self::Connect { .. }
            | Self::ConnectTimeout { .. }
            | Self::TlsCertificate { .. }
            | Self::TlsHandshake { .. }
            | Self::TlsTimeout { .. }
            | Self::ProxyRefused { .. } => true,
            Self::Reset { request_sent, .. } => !request_sent,
            Self::BadResponse { .. } | Self::ResponseTimeout { .. } | Self::BodyTimeout { .. } => {
                false
            }
        }
    }

    /// Classifies an I/O error in the middle of an exchange with `peer` (`host:port`).
    pub fn reset(peer: impl Into<String>, request_sent: bool, e: &io::Error) -> Self {
        let detail = match e.kind() {
            io::ErrorKind::UnexpectedEof => "connection closed by the upstream".to_owned(),
            io::ErrorKind::ConnectionReset => "connection reset by the upstream".to_owned(),
            io::ErrorKind::BrokenPipe => {
                "connection closed by the upstream (broken pipe)".to_owned()
            }
            io::ErrorKind::ConnectionAborted => "connection aborted".to_owned(),
            _ => e.to_string(),
        };
        Self::Reset {
            peer: peer.into(),
            request_sent,
            detail,
        }
    }

    /// Classifies a failed TLS handshake with `peer`: certificate problems apart from the rest.
    /// `e` is what `futures-rustls` returns (rustls errors arrive wrapped in an `io::Error`).
    pub fn tls(peer: impl Into<String>, e: &io::Error) -> Self {
        let peer = peer.into();
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidCertificate(c)) => Self::TlsCertificate {
                peer,
                detail: format!("{c:?}"),
            },
            Some(other) => Self::TlsHandshake {
                peer,
                detail: other.to_string(),
            },
            None => Self::TlsHandshake {
                peer,
                detail: match e.kind() {
                    io::ErrorKind::UnexpectedEof => {
                        "connection closed during the handshake".to_owned()
                    }
                    io::ErrorKind::ConnectionReset => {
                        "connection reset during the handshake".to_owned()
                    }
                    _ => e.to_string(),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<UpstreamError> {
        let peer = || "git.example.com:443".to_owned();
        let d = Duration::from_secs(1);
        vec![
            UpstreamError::Dns {
                peer: peer(),
                detail: "no such host".into(),
            },
            UpstreamError::Connect {
                peer: peer(),
                source: io::Error::from(io::ErrorKind::ConnectionRefused),
            },
            UpstreamError::ConnectTimeout {
                peer: peer(),
                after: d,
            },
            UpstreamError::TlsCertificate {
                peer: peer(),
                detail: "UnknownIssuer".into(),
            },
            UpstreamError::TlsHandshake {
                peer: peer(),
                detail: "alert".into(),
            },
            UpstreamError::TlsTimeout {
                peer: peer(),
                after: d,
            },
            UpstreamError::ProxyRefused {
                proxy: "proxy:3128".into(),
                peer: peer(),
                status: Some(407),
                detail: "Proxy Authentication Required".into(),
            },
            UpstreamError::reset(
                peer(),
                false,
                &io::Error::from(io::ErrorKind::ConnectionReset),
            ),
            UpstreamError::reset(peer(), true, &io::Error::from(io::ErrorKind::UnexpectedEof)),
            UpstreamError::BadResponse {
                peer: peer(),
                detail: "head too large",
            },
            UpstreamError::ResponseTimeout {
                peer: peer(),
                after: d,
            },
            UpstreamError::BodyTimeout {
                peer: peer(),
                after: d,
            },
        ]
    }

    #[test]
    fn timeouts_are_504_everything_else_502() {
        for e in all() {
            let want = if e.kind().starts_with("timeout_") {
                504
            } else {
                502
            };
            assert_eq!(e.status(), want, "{e}");
            assert_eq!(e.is_timeout(), want == 504);
        }
    }

    #[test]
    fn kinds_are_a_small_fixed_set() {
        let mut kinds: Vec<_> = all().iter().map(UpstreamError::kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), 11);
        assert!(
            kinds
                .iter()
                .all(|k| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
    }

    #[test]
    fn retry_safe_only_before_the_request_went_out() {
        for e in all() {
            let sent = matches!(
                e,
                UpstreamError::Reset {
                    request_sent: true,
                    ..
                } | UpstreamError::BadResponse { .. }
                    | UpstreamError::ResponseTimeout { .. }
                    | UpstreamError::BodyTimeout { .. }
            );
            assert_eq!(e.retry_safe(), !sent, "{e}");
        }
    }

    #[test]
    fn rustls_certificate_errors_are_told_apart() {
        let cert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(UpstreamError::tls("h:443", &cert).kind(), "tls_certificate");
        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion),
        );
        assert_eq!(UpstreamError::tls("h:443", &alert).kind(), "tls");
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(UpstreamError::tls("h:443", &eof).kind(), "tls");
    }

    #[test]
    fn display_names_host_and_port_only() {
        let e = UpstreamError::ConnectTimeout {
            peer: "git.example.com:443".into(),
            after: Duration::from_millis(1500),
        };
        assert_eq!(
            e.to_string(),
            "connecting to git.example.com:443 timed out after 1.5s"
        );
    }
}
