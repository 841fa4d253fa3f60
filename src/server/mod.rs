//! The HTTP/1.1 server inside the tunnel: one async task per tunnel connection.
//!
//! The connection is any `AsyncRead + AsyncWrite` (a smoltcp socket in production, an in-memory
//! pipe in tests) and time comes from a [`Timer`], so this module runs on any executor; the
//! runtime supplies glommio's. Requests on a connection are answered strictly in order
//! (pipelining), heads are parsed in place from the connection's one read buffer, and every
//! response carries an `X-Request-Id`.
//!
//! Where things happen:
//!
//! | file | concern |
//! |---|---|
//! | `mod.rs` (here) | what a shard's connection tasks share: settings ([`ServerConfig`]), the allowlist and scrubber, request ids ([`ServerCtx`]) |
//! | [`conn`] | one connection: head deadlines, routing, health check and 404, pipelining, close ([`serve`]) |
//! | [`proxy`] | one proxied exchange (its own map of files) |
//! | [`stats`] | the counters, and the one place a proxied outcome is classified for them |
//! | [`buffered`] | a connection as a buffered reader (vendor and upstream side alike) |
//! | [`drain`], [`scrub`] | closing connections on SIGTERM; keeping secrets out of logged headers and bodies |

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use crate::allowlist::Allowlist;
use crate::http::Limits;

pub mod buffered;
pub mod conn;
pub mod drain;
pub mod proxy;
pub mod scrub;
pub mod stats;

pub use conn::serve;
pub use proxy::{ERROR_HEADER, PROXIED_HEADER, ProxyTimeouts};
pub use stats::{LATENCY_BUCKETS_MS, ServerStats};

/// Header carrying the per-request id on every response.
pub const REQUEST_ID_HEADER: &str = "X-Request-Id";

/// The body of `GET /healthcheck`: the JSON string `"OK"` (with `Content-Type: application/json`),
/// byte for byte what the Semgrep broker answers, since a Semgrep gateway may check it.
pub const HEALTHCHECK_BODY: &[u8] = b"\"OK\"";

/// A source of sleeps (glommio's timer in production).
pub trait Timer {
    /// A future that completes after `d`.
    fn sleep(&self, d: Duration) -> impl Future<Output = ()>;
}

/// Server settings, from `[inbound]` and `[upstream]`.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    pub limits: Limits,
    pub head_timeout: Duration,
    pub idle_timeout: Duration,
    pub proxy: ProxyTimeouts,
    /// Cap on logged body bytes for rules with body logging (`[log] body_limit`).
    pub body_log_limit: usize,
    /// Most body bytes read to check `[[allow.body]]` (`[inbound] max_checked_body`).
    pub max_checked_body: usize,
}

impl ServerConfig {
    /// From the validated configuration.
    pub fn from_config(c: &crate::config::Config) -> Self {
        let i = &c.inbound;
        Self {
            limits: Limits {
                max_head_bytes: i.max_head_bytes,
                max_headers: i.max_headers,
            },
            head_timeout: i.head_timeout,
            idle_timeout: i.idle_timeout,
            proxy: ProxyTimeouts {
                body: i.body_timeout,
                response: c.upstream.response_timeout,
            },
            body_log_limit: c.log.body_limit,
            max_checked_body: i.max_checked_body,
        }
    }

    /// Every secret value of the configuration, for the [`scrub::Scrubber`].
    pub fn secrets(c: &crate::config::Config) -> Vec<String> {
        let mut out: Vec<String> = c
            .rules()
            .iter()
            .flat_map(|r| {
                let pool = r.token_pool.iter().flat_map(|p| p.values());
                r.set_request_headers
                    .iter()
                    .map(|(_, v)| v)
                    .chain(pool)
                    .map(|v| v.expose().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        out.extend(
            c.scm
                .iter()
                .filter_map(|s| s.token.as_ref().map(|t| t.value.expose().to_owned())),
        );
        out.extend(
            c.scm
                .iter()
                .flat_map(|s| s.tokens.iter().map(|t| t.value.expose().to_owned())),
        );
        out
    }
}

/// Generates request ids: a per-process prefix, the shard, a per-shard counter. No shared state.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u32,
    shard: u16,
    next: u64,
}

impl RequestIds {
    /// Ids for shard `shard`; `prefix` should differ between broker runs (e.g. random).
    pub fn new(prefix: u32, shard: u16) -> Self {
        Self {
            prefix,
            shard,
            next: 0,
        }
    }

    /// The next id, formatted into `out` (cleared first).
    pub fn next_into(&mut self, out: &mut String) {
        use std::fmt::Write as _;
        self.next += 1;
        out.clear();
        let _ = write!(out, "{:08x}-{}-{}", self.prefix, self.shard, self.next);
    }
}

/// The JSON body of every error the broker answers itself (403, 404, 408, 502, ...):
/// `{"error":"...","request_id":"..."}`. serde writes fields in declaration order, and clients
/// (and the tests) read `error` first, so keep that order.
#[derive(Debug, serde::Serialize)]
pub struct ErrorBody<'a> {
    pub error: &'a str,
    pub request_id: &'a str,
}

impl ErrorBody<'_> {
    /// The body as bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        // Serialising two strings cannot fail (no maps with non-string keys, no I/O); the
        // fallback keeps a well-formed body rather than a panic should serde ever say otherwise.
        serde_json::to_vec(self).unwrap_or_else(|_| br#"{"error":"internal error"}"#.to_vec())
    }
}

/// What the connection tasks of one shard share: settings, the id generator and counters.
/// Single-threaded (one per shard); borrows are never held across an await.
#[derive(Debug)]
pub struct ServerCtx {
    /// Timeouts and limits; a reload replaces them, each connection takes them when it opens.
    pub cfg: std::cell::Cell<ServerConfig>,
    /// This shard's own compiled allowlist (replaced whole on reload; no sharing across cores).
    pub allowlist: RefCell<Rc<Allowlist>>,
    pub ids: RefCell<RequestIds>,
    pub stats: RefCell<ServerStats>,
    /// Removes configured secrets from whatever per-rule header and body logging prints.
    pub scrubber: RefCell<Rc<scrub::Scrubber>>,
    /// Set on SIGTERM: idle connections close, busy ones close after their exchange.
    pub drain: drain::Drain,
}

impl ServerCtx {
    /// A context for one shard.
    pub fn new(
        cfg: ServerConfig,
        allowlist: Allowlist,
        scrubber: scrub::Scrubber,
        ids: RequestIds,
    ) -> Self {
        Self {
            cfg: std::cell::Cell::new(cfg),
            scrubber: RefCell::new(Rc::new(scrubber)),
            drain: drain::Drain::default(),
            allowlist: RefCell::new(Rc::new(allowlist)),
            ids: RefCell::new(ids),
            stats: RefCell::new(ServerStats::default()),
        }
    }
}
