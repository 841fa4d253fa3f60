//! One proxied exchange: `METHOD /proxy/<absolute URL>` → canonicalise → allowlist → rewrite →
//! upstream → response streamed back.
//!
//! Where things happen:
//!
//! | file | concern |
//! |---|---|
//! | `mod.rs` (here) | the sequence: decide, connect, send (and retry once), relay, finish; the error answer or the abort; the log events of the exchange |
//! | `outcome.rs` | the one error type ([`ProxyError`]: side, kind, status, retry safety) and the record the log and metrics read ([`Outcome`]) |
//! | `request.rs` | the vendor's [`Request`] and the head the upstream gets instead |
//! | `response.rs` | reading and checking the upstream's response head, building the vendor's |
//! | `stream.rs` | request and response bodies, both ways, with their timeouts |
//! | `tests.rs` | every failure path, with scripted connections and a fake upstream set |
//!
//! Invariants:
//! * The URL is canonicalised once; the upstream request target is exactly the matched path and
//!   query ([`CanonUrl::request_target`]).
//! * Nothing reaches an upstream before the allowlist allowed it.
//! * Bodies stream both ways through fixed buffers with back-pressure: a multi-GB clone never
//!   sits in memory.
//! * The rule's `set_request_headers` override the vendor's; URL userinfo becomes
//!   `Authorization: Basic` unless the rule sets `Authorization`; hop-by-hop headers never pass.
//! * Until the response head is written, every failure becomes a JSON error response
//!   (400/403/408/502/504) with `X-Semgrep-Private-Link-Error: 1`; after it, the connection is
//!   aborted (the status line is already gone).
//! * A request is sent twice only when [`Request::replayable`] and the upstream closed a pooled
//!   connection before a byte of its answer ([`Retry::IfReused`]); then once, on a new connection.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Timer;
use super::buffered::Buffered;
use super::scrub::Scrubber;
use crate::allowlist::{Allowlist, CanonUrl, Decision, Rule};
use crate::http::BodyFraming;
use crate::upstream::{Pooled, Target, Upstreams};
use response::Final;

/// One `info` line about the exchange's destination: `event`, the request id, the method and
/// the URL's parts, then the event's own fields (the allowlist's reason, the rule).
macro_rules! log_exchange {
    ($event:literal, $x:expr, $method:expr, $url:expr, $($extra:tt)*) => {
        tracing::info!(
            event = $event,
            request_id = $x.request_id,
            method = $method,
            scheme = $url.scheme.as_str(),
            host = %$url.host,
            port = $url.port,
            path = %$url.path,
            $($extra)*
        )
    };
}

mod outcome;
mod request;
mod response;
mod stream;
#[cfg(test)]
mod tests;

pub use outcome::{Counted, ErrorKind, Outcome, ProxyError, Retry, Side, error_response};
pub use request::Request;

/// What the upstream response head parser made of a buffer, flattened for the `upstream_head`
/// fuzz target (through `wgbroker::bench_support`); not an API.
#[doc(hidden)]
#[derive(Debug)]
pub struct ParsedHeadSummary {
    /// Bytes of the upstream head (informational or final).
    pub len: usize,
    /// The final head's status; `None` for an informational head (skipped).
    pub status: Option<u16>,
    /// The head built for the vendor (without the final blank line); empty if informational.
    pub head: Vec<u8>,
    /// The body framing, `Debug`-printed (`None`, `Length(n)`, `Chunked`, `UntilClose`).
    pub framing: String,
    /// The upstream connection may be reused.
    pub keep_alive: bool,
}

/// Runs the upstream response head parser on `buf` (see `response.rs`) for the fuzz target.
#[doc(hidden)]
pub fn parse_response_head_summary(
    buf: &[u8],
    head_request: bool,
    rule: &crate::allowlist::Rule,
) -> Result<Option<ParsedHeadSummary>, &'static str> {
    Ok(
        response::parse_response_head(buf, head_request, rule, "fuzz")?.map(|p| match p {
            response::Parsed::Informational(len) => ParsedHeadSummary {
                len,
                status: None,
                head: Vec::new(),
                framing: String::new(),
                keep_alive: true,
            },
            response::Parsed::Final(f) => ParsedHeadSummary {
                len: f.len,
                status: Some(f.status),
                head: f.head,
                framing: format!("{:?}", f.framing),
                keep_alive: f.keep_alive,
            },
        }),
    )
}

/// Header on proxied responses.
pub const PROXIED_HEADER: &str = "X-Semgrep-Private-Link";
/// Header on broker-generated errors.
pub const ERROR_HEADER: &str = "X-Semgrep-Private-Link-Error";

/// Timeouts of one exchange.
#[derive(Debug, Clone, Copy)]
pub struct ProxyTimeouts {
    /// Vendor body stalls (`[inbound] body_timeout`).
    pub body: Duration,
    /// The whole upstream response head after the request was sent, one deadline for all its
    /// reads (`[upstream] response_timeout`); also the longest pause between upstream body reads.
    pub response: Duration,
}

/// What an exchange is given by its connection: the shard's settings and this request's id.
#[derive(Debug)]
pub struct Context<'a> {
    pub allowlist: &'a Allowlist,
    pub scrubber: &'a Scrubber,
    /// Cap on logged body bytes.
    pub body_limit: usize,
    /// Most body bytes read to check a rule's `[[allow.body]]` (413 above).
    pub max_checked_body: usize,
    pub timeouts: ProxyTimeouts,
    /// The vendor's tunnel address, for `X-Forwarded-For`.
    pub peer: Option<IpAddr>,
    pub request_id: &'a str,
}

/// Handles `request` (whose target starts with `/proxy/`). The request body, if any, is read
/// from `vendor`; on return `vendor` is positioned after this request's body (when the connection
/// may continue). `response_buf` is the connection's upstream read buffer, kept between its
/// exchanges.
pub async fn proxy<C, T, U>(
    ctx: &Context<'_>,
    request: Request<'_>,
    vendor: &mut Buffered<'_, C>,
    response_buf: &mut Vec<u8>,
    timer: &T,
    upstreams: &U,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: Timer,
    U: Upstreams,
{
    let out = Outcome::new(
        request.head.keep_alive,
        request.head.body == BodyFraming::None,
        // Collect past the cap by the longest secret, so one that straddles it is scrubbed whole.
        ctx.body_limit.saturating_add(ctx.scrubber.lookahead()),
    );
    Exchange {
        ctx,
        request,
        vendor,
        response_buf,
        timer,
        upstreams,
        out,
        checked_body: None,
    }
    .run()
    .await
}

/// What goes to the upstream: where, the request head as rewritten for it, and the rule that
/// allowed it (its header and logging settings apply to the answer too).
struct Outgoing<'a> {
    target: &'a Target,
    head: &'a [u8],
    rule: &'a Rule,
}

/// One proxied exchange in progress: what it works with, and the record of what happened so far.
/// Its steps are methods, by concern: the sequence here, the response head in `response.rs`, the
/// bodies in `stream.rs`.
struct Exchange<'x, 'v, C, T, U> {
    ctx: &'x Context<'x>,
    request: Request<'x>,
    /// The vendor's connection, positioned after the request head.
    vendor: &'x mut Buffered<'v, C>,
    /// The connection's upstream read buffer: allocated on its first proxied request, reused after.
    response_buf: &'x mut Vec<u8>,
    timer: &'x T,
    upstreams: &'x U,
    out: Outcome,
    /// The request body, read whole before the upstream is contacted because the rule checks
    /// it (`[[allow.body]]`); sent from here instead of streamed.
    checked_body: Option<Vec<u8>>,
}

impl<C, T, U> Exchange<'_, '_, C, T, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: Timer,
    U: Upstreams,
{
    async fn run(mut self) -> Outcome {
        let started = Instant::now();
        if let Err(e) = self.decide_and_forward().await {
            self.fail(e).await;
        }
        self.out.elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.log_end();
        self.out
    }

    /// Canonicalises the destination, asks the allowlist, forwards what it allows.
    async fn decide_and_forward(&mut self) -> Result<(), ProxyError> {
        let raw = self
            .request
            .target()
            .strip_prefix("/proxy/")
            .unwrap_or_default();
        let url = CanonUrl::parse(raw).map_err(|e| {
            ProxyError::new(
                ErrorKind::MalformedDestination,
                format!("malformed destination: {e}"),
            )
        })?;
        let (x, method) = (self.ctx, self.request.method());
        let (rule_id, rule) = match decide(x.allowlist, self.request, &url) {
            Decision::Denied(reason) => {
                log_exchange!("allowlist.reject", x, method, url, reason = %reason);
                return Err(ProxyError::new(
                    ErrorKind::Denied,
                    "url is not in allowlist",
                ));
            }
            Decision::Allowed { rule_id, rule } => (rule_id, rule),
        };
        if rule.checks_body() {
            let body = self.read_checked_body().await?;
            if let Err(reason) = rule.check_body(&body) {
                tracing::info!(
                    event = "allowlist.reject",
                    request_id = x.request_id,
                    method,
                    scheme = url.scheme.as_str(),
                    host = %url.host,
                    port = url.port,
                    path = %url.path,
                    rule = rule_id,
                    reason = %reason,
                );
                return Err(ProxyError::new(
                    ErrorKind::Denied,
                    "request body is not allowed",
                ));
            }
            self.checked_body = Some(body);
        }
        self.out.rule = Some(rule_id);
        log_exchange!("proxy.request", x, method, url, rule = rule_id);
        if rule.spec.log.request_headers {
            let mut text = String::new();
            for (n, v) in self.request.headers() {
                let _ = writeln!(text, "{n}: {}", x.scrubber.header(n, v));
            }
            tracing::info!(event = "proxy.request_headers", request_id = x.request_id, headers = %text);
        }
        self.forward(&url, rule).await
    }

    /// Connects, sends the request, relays the answer, and hands the upstream connection back
    /// when the exchange left it clean.
    async fn forward(&mut self, url: &CanonUrl, rule: &Rule) -> Result<(), ProxyError> {
        let target = Target::from_url(url);
        // A pooled token: picked per request, never retried with another (allowlist/pool.rs).
        let pick = rule
            .spec
            .token_pool
            .as_deref()
            .map(|p| (p, p.pick(Instant::now())));
        let head = request::upstream_head(
            self.request,
            url,
            rule,
            self.ctx.peer,
            pick.map(|(_, (_, v))| v),
        );
        if rule.spec.log.request_body {
            self.out.request_sample = Some(Vec::new());
        }
        if rule.spec.log.response_body {
            self.out.response_sample = Some(Vec::new());
        }
        let mut pooled = self.upstreams.connect(&target).await?;
        if self.request.head.expect_continue && self.checked_body.is_none() {
            // The allowlist said yes and an upstream is ready: let the vendor send the body.
            self.vendor
                .conn
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(|_| ProxyError::vendor_closed())?;
        }
        // The buffer leaves `self` for the exchange, so the upstream end can borrow it while
        // the exchange's other parts are in use; it goes back whatever the result.
        let mut buf = std::mem::take(&mut *self.response_buf);
        // Allocated zeroed rather than resized: a resize writes every byte, making the whole
        // 64 KiB resident, while a zeroed block this large comes untouched from the kernel (see
        // `runtime::alloc`) and only the pages a response head fills cost memory.
        if buf.len() < response::MAX_RESPONSE_HEAD {
            buf = vec![0u8; response::MAX_RESPONSE_HEAD];
        }
        let outgoing = Outgoing {
            target: &target,
            head: &head,
            rule,
        };
        let relayed = self.relay(&mut pooled, &outgoing, &mut buf).await;
        *self.response_buf = buf;
        if let Some((pool, (i, _))) = pick {
            if self.out.status == 401 && pool.reject(i, Instant::now()) {
                self.out.token_set_aside = true;
                tracing::warn!(
                    event = "token.set_aside",
                    request_id = self.ctx.request_id,
                    rule = %rule.spec.origin,
                    header = pool.header(),
                    token_index = i,
                    set_aside_for = ?crate::allowlist::pool::SET_ASIDE,
                    "the upstream answered 401 to this token of the pool"
                );
            }
        }
        if relayed? {
            self.upstreams.release(&target, pooled);
        }
        Ok(())
    }

    /// Sends the request on `pooled` (once more on a new connection if [`Self::send`] says so),
    /// reads the response head, writes the vendor's, streams the body. Returns whether the
    /// upstream connection may carry another exchange.
    async fn relay(
        &mut self,
        pooled: &mut Pooled<U::Conn>,
        out: &Outgoing<'_>,
        buf: &mut [u8],
    ) -> Result<bool, ProxyError> {
        let (answer, pos, filled) = self.send(pooled, out, buf).await?;
        let rule = out.rule;
        let mut up = Buffered {
            conn: &mut pooled.conn,
            buf,
            pos,
            filled,
        };
        self.out.status = answer.status;
        if rule.spec.log.response_headers {
            self.log_response_headers(&answer.head);
        }
        let mut vendor_head = answer.head;
        if !self.out.keep_alive {
            vendor_head.extend_from_slice(b"Connection: close\r\n");
        }
        vendor_head.extend_from_slice(b"\r\n");
        self.out.head_sent = true;
        self.vendor
            .conn
            .write_all(&vendor_head)
            .await
            .map_err(|_| ProxyError::vendor_closed())?;
        let clean = self.stream_response(&mut up, answer.framing).await?;
        self.vendor
            .conn
            .flush()
            .await
            .map_err(|_| ProxyError::vendor_closed())?;
        Ok(clean && answer.keep_alive)
    }

    /// [`Self::attempt`]s the exchange's request and response head on `pooled`, and once more
    /// on a new connection when that is safe: a pooled connection the upstream closed while it
    /// sat idle (after the pool's check) fails before a byte of the answer arrives; a replayable
    /// request cannot have done anything there, so it goes again, on a new connection, which
    /// replaces `pooled`. Returns the head and where the rest of the answer lies in `buf`.
    async fn send(
        &mut self,
        pooled: &mut Pooled<U::Conn>,
        out: &Outgoing<'_>,
        buf: &mut [u8],
    ) -> Result<(Final, usize, usize), ProxyError> {
        let mut retried = false;
        loop {
            match self.attempt(&mut pooled.conn, out, buf).await {
                Ok(answered) => return Ok(answered),
                Err(e)
                    if e.retry == Retry::IfReused
                        && pooled.reused
                        && self.request.replayable()
                        && !retried =>
                {
                    retried = true;
                    tracing::info!(
                        event = "proxy.retry",
                        request_id = self.ctx.request_id,
                        upstream = %out.target,
                        "a pooled upstream connection was closed: sending again on a new one"
                    );
                    *pooled = self.upstreams.connect_new(out.target).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends the request on `conn` and reads the response head into `buf`: the whole head within
    /// one `response_timeout` from the moment the request is out, however many reads it takes.
    /// Returns the head, and the start and end of what followed it in `buf`.
    async fn attempt(
        &mut self,
        conn: &mut U::Conn,
        out: &Outgoing<'_>,
        buf: &mut [u8],
    ) -> Result<(Final, usize, usize), ProxyError> {
        self.send_request(conn, out.head).await?;
        let timer = self.timer;
        let mut deadline = std::pin::pin!(timer.sleep(self.ctx.timeouts.response));
        let first = self.read_answer(deadline.as_mut(), conn.read(buf)).await?;
        let mut up = Buffered {
            conn,
            buf,
            pos: 0,
            filled: first,
        };
        let answer = self.read_response_head(&mut up, out.rule, deadline).await?;
        Ok((answer, up.pos, up.filled))
    }

    /// Records `e`, then answers it while no response head went out, else aborts.
    async fn fail(&mut self, e: ProxyError) {
        self.out.error = Some(e.kind);
        match e.kind.status().filter(|_| !self.out.head_sent) {
            Some(status) => self.answer_error(status, &e).await,
            None => self.abort(&e),
        }
    }

    /// The JSON error answer.
    async fn answer_error(&mut self, status: u16, e: &ProxyError) {
        let request_id = self.ctx.request_id;
        self.out.status = status;
        // The rest of an unread or half-read request body would be parsed as the next request,
        // and a vendor whose body stalled would hold the connection: close instead (the answer
        // says so with `Connection: close`).
        if !self.out.body_read || status >= 500 {
            self.out.keep_alive = false;
        }
        let resp = error_response(status, &e.message, request_id, !self.out.keep_alive);
        if e.kind.side() == Side::Upstream {
            tracing::warn!(event = "upstream.error", request_id, status, kind = e.kind.label(), error = %e.message);
        }
        if self.vendor.conn.write_all(&resp).await.is_err() {
            self.out.keep_alive = false;
        }
    }

    /// The status line is gone (or the vendor is): all that is left is to drop the connection.
    fn abort(&mut self, e: &ProxyError) {
        let request_id = self.ctx.request_id;
        self.out.keep_alive = false;
        match e.kind.side() {
            // The vendor went away mid-response (a cancelled clone, a client timeout): not the
            // upstream's fault, and nothing to answer.
            Side::Vendor => tracing::info!(
                event = "proxy.vendor_closed",
                request_id,
                response_bytes = self.out.response_bytes
            ),
            Side::Upstream => tracing::warn!(
                event = "upstream.error",
                request_id,
                kind = e.kind.label(),
                phase = "streaming"
            ),
        }
    }

    /// The upstream's response headers as the vendor gets them, credentials scrubbed.
    fn log_response_headers(&self, head: &[u8]) {
        let text = String::from_utf8_lossy(head);
        let mut lines = String::new();
        for line in text.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
            let (n, v) = line.split_once(": ").unwrap_or((line, ""));
            let _ = writeln!(lines, "{n}: {}", self.ctx.scrubber.header(n, v.as_bytes()));
        }
        tracing::info!(event = "proxy.response_headers", request_id = self.ctx.request_id, status = self.out.status, headers = %lines);
    }

    /// The body samples and the `proxy.response` line.
    fn log_end(&self) {
        let (x, out) = (self.ctx, &self.out);
        for (event, sample) in [
            ("proxy.request_body", &out.request_sample),
            ("proxy.response_body", &out.response_sample),
        ] {
            if let Some(bytes) = sample {
                let text = x.scrubber.sample(bytes, x.body_limit);
                let shown = bytes.len().min(x.body_limit);
                tracing::info!(event, request_id = x.request_id, bytes = shown, body = %text);
            }
        }
        if out.rule.is_some() {
            tracing::info!(
                event = "proxy.response",
                request_id = x.request_id,
                status = out.status,
                error = out.error.map_or("", ErrorKind::label),
                request_bytes = out.request_bytes,
                response_bytes = out.response_bytes,
                us = out.elapsed_us,
            );
        }
    }
}

/// Asks the allowlist about `request` for `url`. The header view it reads is on the stack for
/// ordinary heads: no allocation per request.
fn decide<'a>(allowlist: &'a Allowlist, request: Request<'_>, url: &CanonUrl) -> Decision<'a> {
    const EMPTY: httparse::Header<'static> = httparse::Header {
        name: "",
        value: &[],
    };
    let mut stack = [EMPTY; 32];
    let mut heap = Vec::new();
    let count = request.headers().count();
    let headers: &mut [httparse::Header<'_>] = if count <= stack.len() {
        &mut stack[..count]
    } else {
        heap.resize(count, EMPTY);
        &mut heap
    };
    for (slot, (name, value)) in headers.iter_mut().zip(request.headers()) {
        *slot = httparse::Header { name, value };
    }
    allowlist.decide(request.method(), url, headers)
}
