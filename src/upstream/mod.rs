//! Upstream connections: where an allowed request goes, how the broker reaches it, and what can go
//! wrong on the way.
//!
//! Responsibility: everything about the private upstream side that does not need an executor —
//! the pool key ([`Target`]), the one error type of the upstream side ([`UpstreamError`]), the
//! rustls client configuration ([`tls::client_config`]), the CONNECT proxy settings and their
//! environment semantics ([`proxy::ProxySettings`]), the HTTP CONNECT handshake over any async
//! stream ([`connect::handshake`]), the idle-connection pool's decisions — which idle connection a
//! request gets, when one expires, how many are kept — given `now` ([`pool::Pool`]), and the seam
//! the in-tunnel server talks to ([`Upstreams`]). The glommio implementation of that seam
//! (sockets, DNS off the executor, dialling, TLS, timers, the liveness peek, the clock) lives in
//! `runtime::upstream`; this module never imports glommio and never reads a clock.
//!
//! Invariants:
//! * a connection is only ever reused for the exact [`Target`] (scheme, host and port) it was
//!   opened for: [`Pooled`] remembers its target and [`pool::Pool::release`] hands back (to be
//!   dropped) a connection released under another key;
//! * no `Display` or `Debug` output of this module contains a secret: proxy credentials live in a
//!   [`crate::secret::Secret`], errors name hosts and ports only, never URLs with userinfo;
//! * every read from the network here is bounded (the CONNECT response head is capped at
//!   [`connect::MAX_RESPONSE_HEAD`]).

pub mod connect;
mod error;
pub mod pool;
pub mod proxy;
pub mod tls;

use std::fmt;
use std::future::Future;

use crate::allowlist::{CanonUrl, Scheme};

pub use error::UpstreamError;

/// Where a request goes: the pool key. Two requests share pooled connections exactly when their
/// targets are equal.
///
/// `host` is what the URL said, lower-case, IPv6 literals in brackets (as in [`CanonUrl`]); it is
/// both the TLS server name (SNI, certificate check) and, for names, what DNS resolves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Connect with TLS (`https`).
    pub tls: bool,
    /// Host name or IP literal; IPv6 in brackets.
    pub host: String,
    /// TCP port (the scheme's default when the URL had none).
    pub port: u16,
}

impl Target {
    /// A target from its parts (tests, heartbeat); `host` as in [`CanonUrl::host`].
    pub fn new(tls: bool, host: impl Into<String>, port: u16) -> Self {
        Self {
            tls,
            host: host.into(),
            port,
        }
    }

    /// The target of a canonical URL. The URL's userinfo is not part of it (it becomes a header).
    pub fn from_url(url: &CanonUrl) -> Self {
        Self {
            tls: url.scheme == Scheme::Https,
            host: url.host.clone(),
            port: url.port,
        }
    }

    /// The scheme the target speaks.
    pub fn scheme(&self) -> Scheme {
        if self.tls {
            Scheme::Https
        } else {
            Scheme::Http
        }
    }

    /// `host[:port]` for the upstream `Host` header (and a CONNECT request line's default-port
    /// form): the port is left out when it is the scheme's default.
    pub fn authority(&self) -> HostHeader<'_> {
        HostHeader(self)
    }

    /// The host without IPv6 brackets: what DNS resolves or what parses as an [`std::net::IpAddr`].
    pub fn bare_host(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }

    /// The host as an IP address, when it is a literal.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        self.bare_host().parse().ok()
    }
}

/// `scheme://host:port` — safe to log (a target never holds credentials).
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme(), self.host, self.port)
    }
}

/// The `Host` header value of a [`Target`]: `host[:port]`, default port omitted.
#[derive(Debug, Clone, Copy)]
pub struct HostHeader<'a>(&'a Target);

impl fmt::Display for HostHeader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.host)?;
        if self.0.port != self.0.scheme().default_port() {
            write!(f, ":{}", self.0.port)?;
        }
        Ok(())
    }
}

/// A connection handed out by [`Upstreams::connect`].
///
/// Use `conn` for exactly one exchange; then either give the whole value back with
/// [`Upstreams::release`] (only when the exchange ended cleanly: full response read, both sides
/// agreed on keep-alive) or drop it, which closes the connection.
#[derive(Debug)]
pub struct Pooled<C> {
    /// The byte stream (TLS already negotiated when the target is `https`).
    pub conn: C,
    /// True when the connection was taken from the idle pool. A reused connection can turn out
    /// dead on first use (the peer closed it while the request was on its way); a caller may then
    /// retry an idempotent request once on a fresh connection.
    pub reused: bool,
    target: Target,
    exchanges: u32,
}

impl<C> Pooled<C> {
    /// Wraps a connection to `target`; `exchanges` counts the exchanges it already carried
    /// (0 for a new connection).
    pub fn new(conn: C, target: Target, exchanges: u32) -> Self {
        Self {
            conn,
            reused: exchanges > 0,
            target,
            exchanges,
        }
    }

    /// The target this connection was opened for.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// How many exchanges the connection carried before this one.
    pub fn exchanges(&self) -> u32 {
        self.exchanges
    }

    /// Takes the stream and its bookkeeping apart (for an [`Upstreams`] implementation filing the
    /// connection as idle).
    pub fn into_parts(self) -> (C, Target, u32) {
        (self.conn, self.target, self.exchanges)
    }
}

/// The seam between the in-tunnel server (which must stay executor-free) and the runtime's
/// connection pool.
///
/// Implementations are per shard and single-threaded: the futures need not be `Send`.
pub trait Upstreams {
    /// The byte stream to an upstream.
    type Conn: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin;

    /// A connection to `target`: an idle pooled one if any (checked not closed by the peer), else a
    /// new one (via the CONNECT proxy if configured), TLS if `target.tls`. Connect and TLS
    /// timeouts apply; every error it returns has [`UpstreamError::retry_safe`] true.
    fn connect(
        &self,
        target: &Target,
    ) -> impl Future<Output = Result<Pooled<Self::Conn>, UpstreamError>>;

    /// A new connection to `target`, never one from the pool: for sending a request again after
    /// a pooled connection turned out closed. Same timeouts and errors as [`Upstreams::connect`].
    fn connect_new(
        &self,
        target: &Target,
    ) -> impl Future<Output = Result<Pooled<Self::Conn>, UpstreamError>>;

    /// Gives back a connection whose last exchange ended cleanly and may be reused. A connection
    /// whose own target differs from `target` is dropped, never filed under `target`.
    fn release(&self, target: &Target, conn: Pooled<Self::Conn>);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(scheme: Scheme, host: &str, port: u16) -> CanonUrl {
        CanonUrl {
            scheme,
            host: host.into(),
            port,
            path: "/".into(),
            query: None,
            userinfo: Some("user:secret".into()),
        }
    }

    #[test]
    fn target_from_url_drops_userinfo_and_path() {
        let t = Target::from_url(&url(Scheme::Https, "git.example.com", 443));
        assert_eq!(t, Target::new(true, "git.example.com", 443));
        assert_eq!(t.to_string(), "https://git.example.com:443");
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[test]
    fn authority_omits_the_default_port() {
        assert_eq!(
            Target::new(true, "a.example", 443).authority().to_string(),
            "a.example"
        );
        assert_eq!(
            Target::new(true, "a.example", 80).authority().to_string(),
            "a.example:80"
        );
        assert_eq!(
            Target::new(false, "a.example", 80).authority().to_string(),
            "a.example"
        );
        assert_eq!(
            Target::new(false, "[::1]", 8080).authority().to_string(),
            "[::1]:8080"
        );
    }

    #[test]
    fn bare_host_and_ip() {
        let t = Target::new(true, "[2001:db8::1]", 443);
        assert_eq!(t.bare_host(), "2001:db8::1");
        assert!(t.ip().is_some_and(|ip| ip.is_ipv6()));
        assert_eq!(Target::new(true, "example.com", 443).ip(), None);
        assert!(Target::new(false, "10.0.0.1", 80).ip().is_some());
    }

    #[test]
    fn pooled_counts_exchanges() {
        let p = Pooled::new((), Target::new(false, "h", 80), 0);
        assert!(!p.reused);
        let p = Pooled::new((), Target::new(false, "h", 80), 2);
        assert!(p.reused);
        assert_eq!(p.exchanges(), 2);
    }
}
