//! One proxied exchange: `METHOD /proxy/<absolute URL>` → canonicalise → allowlist → rewrite →
//! upstream → response streamed back.
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
//!   (400/403/502/504) with `X-Semgrep-Private-Link-Error: 1`; after it, the connection is
//!   aborted (the status line is already gone).

use std::fmt::Write as _;
use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, future};

use super::body::Inbound;
use super::{REQUEST_ID_HEADER, Timer, json_string};
use crate::allowlist::{Allowlist, CanonUrl, Decision, Rule};
use crate::http::{BodyFraming, ChunkedDecoder, RequestHead, ResponseHead};
use crate::upstream::{Target, UpstreamError, Upstreams};

/// Header on proxied responses.
pub const PROXIED_HEADER: &str = "X-Semgrep-Private-Link";
/// Header on broker-generated errors.
pub const ERROR_HEADER: &str = "X-Semgrep-Private-Link-Error";
/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// `Outcome::error` when writing the response to the vendor failed: the vendor closed or reset
/// its connection.
pub(crate) const VENDOR_CLOSED: &str = "vendor_closed";
/// `Outcome::error` kinds that are the vendor's doing, not the upstream's: its connection went
/// away mid-response, or its request body stopped or stalled.
pub(crate) const VENDOR_SIDE: [&str; 3] =
    [VENDOR_CLOSED, "body_incomplete", "timeout_request_body"];
/// Most upstream response header lines.
const MAX_RESPONSE_HEADERS: usize = 128;

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

/// Timeouts of one exchange.
#[derive(Debug, Clone, Copy)]
pub struct ProxyTimeouts {
    /// Vendor body stalls (`[inbound] body_timeout`).
    pub body: Duration,
    /// Upstream response head after the request was sent (`[upstream] response_timeout`); also
    /// the longest pause between upstream body reads.
    pub response: Duration,
}

/// What happened, for the log line and metrics.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: u16,
    /// Rule index that allowed the request.
    pub rule: Option<usize>,
    /// Bounded error kind (`denied`, `malformed`, `connect`, `timeout_response`, ...).
    pub error: Option<&'static str>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Whether the vendor connection may carry another request.
    pub keep_alive: bool,
    /// The first bytes of the request body, for rules with `log_request_body` (capped).
    pub request_sample: Option<Vec<u8>>,
    /// The first bytes of the response body, for rules with `log_response_body` (capped).
    pub response_sample: Option<Vec<u8>>,
    /// Cap of the samples.
    sample_limit: usize,
    /// The request body was read to its end (trivially so for a bodiless request).
    body_read: bool,
    /// From the complete request head to the end of the response, microseconds.
    pub elapsed_us: u64,
}

impl Outcome {
    fn sample(slot: &mut Option<Vec<u8>>, limit: usize, data: &[u8]) {
        if let Some(v) = slot {
            let room = limit.saturating_sub(v.len());
            v.extend_from_slice(&data[..room.min(data.len())]);
        }
    }
}

enum Failure {
    /// Nothing sent to the vendor yet: answer with this status and error.
    Respond(u16, &'static str, String),
    /// The response head is already out: abort the connection.
    Abort(&'static str),
}

impl From<UpstreamError> for Failure {
    fn from(e: UpstreamError) -> Self {
        Failure::Respond(e.status(), e.kind(), e.to_string())
    }
}

async fn timed<T: Timer, F: Future>(timer: &T, d: Duration, f: F) -> Option<F::Output> {
    future::or(async { Some(f.await) }, async {
        timer.sleep(d).await;
        None
    })
    .await
}

/// An error response, JSON body, always with the error header; `close` adds `Connection: close`.
pub fn error_response(status: u16, message: &str, request_id: &str, close: bool) -> Vec<u8> {
    let body = format!(
        "{{\"error\":{},\"request_id\":\"{request_id}\"}}",
        json_string(message)
    );
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
    out.extend_from_slice(body.as_bytes());
    out
}

/// Context of one proxied exchange.
#[derive(Debug)]
pub struct Exchange<'a> {
    pub allowlist: &'a Allowlist,
    pub scrubber: &'a super::scrub::Scrubber,
    /// Cap on logged body bytes.
    pub body_limit: usize,
    pub timeouts: ProxyTimeouts,
    /// The vendor's tunnel address, for `X-Forwarded-For`.
    pub peer: Option<IpAddr>,
    pub request_id: &'a str,
}

/// Handles `head` (whose target starts with `/proxy/`). The request body, if any, is read from
/// `inbound`; on return `inbound` is positioned after this request's body (when the connection
/// may continue).
pub async fn proxy<C, T, U>(
    x: &Exchange<'_>,
    head: &RequestHead,
    head_bytes: &[u8],
    inbound: &mut Inbound<'_, C>,
    ubuf: &mut Vec<u8>,
    timer: &T,
    upstreams: &U,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: Timer,
    U: Upstreams,
{
    let started = Instant::now();
    let mut outcome = Outcome {
        status: 0,
        rule: None,
        error: None,
        request_bytes: 0,
        response_bytes: 0,
        keep_alive: head.keep_alive,
        request_sample: None,
        response_sample: None,
        sample_limit: x.body_limit,
        body_read: head.body == BodyFraming::None,
        elapsed_us: 0,
    };
    let target = head.target(head_bytes);
    let raw = target.strip_prefix("/proxy/").unwrap_or_default();
    let method = head.method_str(head_bytes);
    let result = match CanonUrl::parse(raw) {
        Err(e) => Err(Failure::Respond(
            400,
            "malformed",
            format!("malformed destination: {e}"),
        )),
        Ok(url) => {
            // The header view the allowlist reads: on the stack for ordinary heads, no
            // allocation per request.
            let mut stack = [httparse::Header {
                name: "",
                value: &[],
            }; 32];
            let mut heap = Vec::new();
            let count = head.headers(head_bytes).count();
            let headers: &mut [httparse::Header<'_>] = if count <= stack.len() {
                &mut stack[..count]
            } else {
                heap.resize(
                    count,
                    httparse::Header {
                        name: "",
                        value: &[],
                    },
                );
                &mut heap
            };
            for (slot, (name, value)) in headers.iter_mut().zip(head.headers(head_bytes)) {
                *slot = httparse::Header { name, value };
            }
            match x.allowlist.decide(method, &url, headers) {
                Decision::Denied(reason) => {
                    tracing::info!(
                        event = "allowlist.reject",
                        request_id = x.request_id,
                        method,
                        scheme = url.scheme.as_str(),
                        host = %url.host,
                        port = url.port,
                        path = %url.path,
                        reason = %reason,
                    );
                    Err(Failure::Respond(
                        403,
                        "denied",
                        "url is not in allowlist".into(),
                    ))
                }
                Decision::Allowed { rule_id, rule } => {
                    outcome.rule = Some(rule_id);
                    tracing::info!(
                        event = "proxy.request",
                        request_id = x.request_id,
                        method,
                        scheme = url.scheme.as_str(),
                        host = %url.host,
                        port = url.port,
                        path = %url.path,
                        rule = rule_id,
                    );
                    if rule.spec.log.request_headers {
                        let mut text = String::new();
                        for (n, v) in head.headers(head_bytes) {
                            let _ = writeln!(text, "{n}: {}", x.scrubber.header(n, v));
                        }
                        tracing::info!(event = "proxy.request_headers", request_id = x.request_id, headers = %text);
                    }
                    forward(
                        x,
                        head,
                        head_bytes,
                        &url,
                        rule,
                        inbound,
                        ubuf,
                        timer,
                        upstreams,
                        &mut outcome,
                    )
                    .await
                }
            }
        }
    };
    match result {
        Ok(()) => {}
        Err(Failure::Respond(status, kind, message)) => {
            outcome.status = status;
            outcome.error = Some(kind);
            // The rest of an unread or half-read request body would be parsed as the next
            // request, and a vendor whose body stalled would hold the connection: close instead
            // (the answer says so with `Connection: close`).
            if !outcome.body_read || status >= 500 {
                outcome.keep_alive = false;
            }
            let resp = error_response(status, &message, x.request_id, !outcome.keep_alive);
            if status >= 500 {
                tracing::warn!(event = "upstream.error", request_id = x.request_id, status, kind, error = %message);
            }
            if inbound.conn.write_all(&resp).await.is_err() {
                outcome.keep_alive = false;
            }
        }
        Err(Failure::Abort(kind)) => {
            outcome.error = Some(kind);
            outcome.keep_alive = false;
            if kind == VENDOR_CLOSED {
                // The vendor went away mid-response (a cancelled clone, a client timeout): not
                // the upstream's fault, and nothing to answer.
                tracing::info!(
                    event = "proxy.vendor_closed",
                    request_id = x.request_id,
                    response_bytes = outcome.response_bytes
                );
            } else {
                tracing::warn!(
                    event = "upstream.error",
                    request_id = x.request_id,
                    kind,
                    phase = "streaming"
                );
            }
        }
    }
    outcome.elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    for (event, sample) in [
        ("proxy.request_body", &outcome.request_sample),
        ("proxy.response_body", &outcome.response_sample),
    ] {
        if let Some(bytes) = sample {
            let text = x.scrubber.scrub(&String::from_utf8_lossy(bytes));
            tracing::info!(event, request_id = x.request_id, bytes = bytes.len(), body = %text);
        }
    }
    if outcome.rule.is_some() {
        tracing::info!(
            event = "proxy.response",
            request_id = x.request_id,
            status = outcome.status,
            error = outcome.error.unwrap_or(""),
            request_bytes = outcome.request_bytes,
            response_bytes = outcome.response_bytes,
            us = outcome.elapsed_us,
        );
    }
    outcome
}

fn is_hop_by_hop(name: &str, connection_tokens: &[&str]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || connection_tokens
            .iter()
            .any(|t| name.eq_ignore_ascii_case(t))
}

fn connection_tokens<'b>(headers: impl Iterator<Item = (&'b str, &'b [u8])>) -> Vec<&'b str> {
    headers
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| std::str::from_utf8(v).unwrap_or_default().split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// Builds the upstream request head.
fn upstream_head(
    x: &Exchange<'_>,
    head: &RequestHead,
    head_bytes: &[u8],
    url: &CanonUrl,
    rule: &Rule,
) -> Vec<u8> {
    let method = head.method_str(head_bytes);
    let mut out = String::with_capacity(512);
    let _ = write!(
        out,
        "{method} {} HTTP/1.1\r\nHost: {}\r\n",
        url.request_target(),
        url.authority()
    );
    let tokens = connection_tokens(head.headers(head_bytes));
    let set = &rule.spec.set_request_headers;
    let overridden = |name: &str| set.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut xff: Option<String> = None;
    let mut out_bytes = out.into_bytes();
    for (name, value) in head.headers(head_bytes) {
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
    if let Some(peer) = x.peer {
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
            let decoded = percent_decode(userinfo);
            let b64 = base64::engine::general_purpose::STANDARD.encode(decoded);
            let _ = write!(tail, "Authorization: Basic {b64}\r\n");
        }
    }
    for (name, value) in set {
        let v = value.expose();
        if !v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            let _ = write!(tail, "{name}: {v}\r\n");
        }
    }
    match head.body {
        BodyFraming::None => {
            if matches!(method, "POST" | "PUT" | "PATCH") {
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

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn forward<C, T, U>(
    x: &Exchange<'_>,
    head: &RequestHead,
    head_bytes: &[u8],
    url: &CanonUrl,
    rule: &Rule,
    inbound: &mut Inbound<'_, C>,
    ubuf: &mut Vec<u8>,
    timer: &T,
    upstreams: &U,
    outcome: &mut Outcome,
) -> Result<(), Failure>
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: Timer,
    U: Upstreams,
{
    let target = Target::from_url(url);
    let request = upstream_head(x, head, head_bytes, url, rule);
    if rule.spec.log.request_body {
        outcome.request_sample = Some(Vec::new());
    }
    if rule.spec.log.response_body {
        outcome.response_sample = Some(Vec::new());
    }
    // A reused connection the upstream closed while it sat in the pool (after the pool's
    // check) fails before a byte of the answer arrives; a request without a body and with a safe
    // method cannot have done anything, so it goes once more on a new connection.
    let retryable = head.body == BodyFraming::None
        && !head.expect_continue
        && matches!(head.method_str(head_bytes), "GET" | "HEAD" | "OPTIONS");
    let mut pooled = upstreams.connect(&target).await?;
    if head.expect_continue {
        // The allowlist said yes and an upstream is ready: let the vendor send the body.
        inbound
            .conn
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| Failure::Abort(VENDOR_CLOSED))?;
    }

    // The connection's response buffer: allocated on its first proxied request, reused after.
    // Allocated zeroed rather than resized: a resize writes every byte, making the whole 64 KiB
    // resident, while a zeroed block this large comes untouched from the kernel (see
    // `runtime::alloc`) and only the pages a response head fills cost memory.
    if ubuf.len() < MAX_RESPONSE_HEAD {
        *ubuf = vec![0u8; MAX_RESPONSE_HEAD];
    }
    let mut retried = false;
    let mut first = loop {
        let answered = send_request(
            &mut pooled.conn,
            &request,
            head.body,
            inbound,
            timer,
            x,
            &mut ubuf[..],
            outcome,
        )
        .await;
        match answered {
            Ok(n) => break n,
            Err(Unanswered::Closed(_)) if pooled.reused && retryable && !retried => {
                retried = true;
                tracing::info!(
                    event = "proxy.retry",
                    request_id = x.request_id,
                    upstream = %target,
                    "a pooled upstream connection was closed: sending again on a new one"
                );
                drop(pooled);
                pooled = upstreams.connect_new(&target).await?;
            }
            Err(e) => return Err(e.failure()),
        }
    };
    let up = &mut pooled.conn;

    // Response head. The first read's bytes are in `ubuf[..first]`, not parsed yet.
    let mut ufilled = 0usize;
    let (status, head_len, framing, upstream_keep_alive, resp_head) = loop {
        let n = if first > 0 {
            std::mem::take(&mut first)
        } else {
            read_answer(up, &mut ubuf[ufilled..], timer, x.timeouts.response)
                .await
                .map_err(Unanswered::failure)?
        };
        ufilled += n;
        match parse_response_head(
            &ubuf[..ufilled],
            head.method_str(head_bytes) == "HEAD",
            rule,
            x.request_id,
        ) {
            Ok(None) => {
                if ufilled == ubuf.len() {
                    return Err(Failure::Respond(
                        502,
                        "bad_response",
                        "upstream response head too large".into(),
                    ));
                }
            }
            Ok(Some(Parsed::Informational(len))) => {
                // 1xx from upstream (we never forward Expect): skip it.
                ubuf.copy_within(len..ufilled, 0);
                ufilled -= len;
            }
            Ok(Some(Parsed::Final(p))) => break p,
            Err(msg) => return Err(Failure::Respond(502, "bad_response", msg.into())),
        }
    };
    outcome.status = status;
    if rule.spec.log.response_headers {
        let text = String::from_utf8_lossy(&resp_head);
        let mut lines = String::new();
        for line in text.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
            let (n, v) = line.split_once(": ").unwrap_or((line, ""));
            let _ = writeln!(lines, "{n}: {}", x.scrubber.header(n, v.as_bytes()));
        }
        tracing::info!(event = "proxy.response_headers", request_id = x.request_id, status, headers = %lines);
    }
    let vendor_close = !outcome.keep_alive;
    let mut resp_head = resp_head;
    if vendor_close {
        resp_head.extend_from_slice(b"Connection: close\r\n");
    }
    resp_head.extend_from_slice(b"\r\n");
    inbound
        .conn
        .write_all(&resp_head)
        .await
        .map_err(|_| Failure::Abort(VENDOR_CLOSED))?;

    // Response body.
    let reusable = stream_response(
        framing,
        ubuf,
        head_len,
        ufilled,
        up,
        inbound.conn,
        timer,
        x.timeouts.response,
        outcome,
    )
    .await?;
    inbound
        .conn
        .flush()
        .await
        .map_err(|_| Failure::Abort(VENDOR_CLOSED))?;
    if reusable && upstream_keep_alive {
        upstreams.release(&target, pooled);
    }
    Ok(())
}

/// Why [`send_request`] got no answer.
enum Unanswered {
    /// The upstream closed or reset the connection before a byte of the answer: nothing it
    /// received can have been acted on if the request had no body and a safe method.
    Closed(Failure),
    /// Anything else (the vendor's body stalled, the answer timed out...): not retried.
    Other(Failure),
}

impl Unanswered {
    fn failure(self) -> Failure {
        match self {
            Unanswered::Closed(f) | Unanswered::Other(f) => f,
        }
    }
}

/// Writes the request head and body to `up` and reads the first bytes of the answer into
/// `ubuf`; returns how many.
#[allow(clippy::too_many_arguments)]
async fn send_request<C, W, T>(
    up: &mut W,
    request: &[u8],
    body: BodyFraming,
    inbound: &mut Inbound<'_, C>,
    timer: &T,
    x: &Exchange<'_>,
    ubuf: &mut [u8],
    outcome: &mut Outcome,
) -> Result<usize, Unanswered>
where
    C: AsyncRead + Unpin,
    W: AsyncRead + AsyncWrite + Unpin,
    T: Timer,
{
    let closed = || {
        Unanswered::Closed(Failure::Respond(
            502,
            "reset",
            "upstream closed the connection".into(),
        ))
    };
    up.write_all(request).await.map_err(|_| closed())?;
    send_body(body, inbound, up, timer, x.timeouts.body, outcome)
        .await
        .map_err(Unanswered::Other)?;
    up.flush().await.map_err(|_| closed())?;
    read_answer(up, ubuf, timer, x.timeouts.response).await
}

/// One read of the upstream's answer (head not complete yet): 504 when it does not come within
/// `timeout`, 502 when the connection closes first.
async fn read_answer<W, T>(
    up: &mut W,
    buf: &mut [u8],
    timer: &T,
    timeout: Duration,
) -> Result<usize, Unanswered>
where
    W: AsyncRead + Unpin,
    T: Timer,
{
    match timed(timer, timeout, up.read(buf)).await {
        None => Err(Unanswered::Other(Failure::Respond(
            504,
            "timeout_response",
            "upstream did not answer in time".into(),
        ))),
        Some(Err(_)) | Some(Ok(0)) => Err(Unanswered::Closed(Failure::Respond(
            502,
            "reset",
            "upstream closed the connection before answering".into(),
        ))),
        Some(Ok(n)) => Ok(n),
    }
}

/// How the upstream response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RespFraming {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

enum Parsed {
    Informational(usize),
    Final((u16, usize, RespFraming, bool, Vec<u8>)),
}

/// Parses the upstream response head and builds the one sent to the vendor (without the final
/// blank line).
fn parse_response_head(
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
    if (100..200).contains(&status) {
        if status == 101 {
            return Err("upstream tried to switch protocols");
        }
        return Ok(Some(Parsed::Informational(len)));
    }
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut close = r.version == Some(0);
    let tokens: Vec<&str> = r
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| std::str::from_utf8(h.value).unwrap_or_default().split(','))
        .map(str::trim)
        .collect();
    close |= tokens.iter().any(|t| t.eq_ignore_ascii_case("close"));
    let mut out = Vec::with_capacity(len + 128);
    let reason = r.reason.unwrap_or("");
    let _ = write!(Wrap(&mut out), "HTTP/1.1 {status} {reason}\r\n");
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
    let no_body = head_request || status == 204 || status == 304;
    let framing = if no_body {
        RespFraming::None
    } else if chunked {
        RespFraming::Chunked
    } else if let Some(n) = content_length {
        RespFraming::Length(n)
    } else {
        RespFraming::UntilClose
    };
    match framing {
        RespFraming::Length(n) => {
            let _ = write!(Wrap(&mut out), "Content-Length: {n}\r\n");
        }
        RespFraming::Chunked | RespFraming::UntilClose => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n")
        }
        RespFraming::None => {
            if let (true, Some(n)) = (head_request, content_length) {
                let _ = write!(Wrap(&mut out), "Content-Length: {n}\r\n");
            }
        }
    }
    let _ = write!(
        Wrap(&mut out),
        "{PROXIED_HEADER}: 1\r\n{REQUEST_ID_HEADER}: {request_id}\r\n"
    );
    let keep = !close && framing != RespFraming::UntilClose;
    Ok(Some(Parsed::Final((status, len, framing, keep, out))))
}

/// `fmt::Write` into a byte vector.
struct Wrap<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Wrap<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Streams the vendor's request body to the upstream.
async fn send_body<C, W, T>(
    framing: BodyFraming,
    inbound: &mut Inbound<'_, C>,
    up: &mut W,
    timer: &T,
    stall: Duration,
    outcome: &mut Outcome,
) -> Result<(), Failure>
where
    C: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    T: Timer,
{
    let up_err = || {
        Failure::Respond(
            502,
            "reset",
            "upstream closed the connection while receiving the body".into(),
        )
    };
    match framing {
        BodyFraming::None => Ok(()),
        BodyFraming::Length(mut left) => {
            while left > 0 {
                if inbound.buffered().is_empty() {
                    fill_body(inbound, timer, stall).await?;
                }
                let take = (left.min(inbound.buffered().len() as u64)) as usize;
                Outcome::sample(
                    &mut outcome.request_sample,
                    outcome.sample_limit,
                    &inbound.buffered()[..take],
                );
                up.write_all(&inbound.buffered()[..take])
                    .await
                    .map_err(|_| up_err())?;
                inbound.consume(take);
                left -= take as u64;
                outcome.request_bytes += take as u64;
            }
            outcome.body_read = true;
            Ok(())
        }
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            let mut frame = String::with_capacity(16);
            loop {
                let step = decoder.decode(inbound.buffered()).map_err(|e| {
                    Failure::Respond(400, "body", format!("malformed chunked body: {e}"))
                })?;
                if !step.data.is_empty() {
                    let data = &inbound.buffered()[step.data.clone()];
                    Outcome::sample(&mut outcome.request_sample, outcome.sample_limit, data);
                    write_chunk(up, &mut frame, data)
                        .await
                        .map_err(|_| up_err())?;
                    outcome.request_bytes += data.len() as u64;
                }
                inbound.consume(step.consumed);
                if step.done {
                    outcome.body_read = true;
                    up.write_all(b"0\r\n\r\n").await.map_err(|_| up_err())?;
                    return Ok(());
                }
                if step.consumed == 0 || inbound.buffered().is_empty() {
                    fill_body(inbound, timer, stall).await?;
                }
            }
        }
    }
}

/// Streams the upstream response body to the vendor; returns whether the upstream connection
/// ended the exchange cleanly (reusable).
#[allow(clippy::too_many_arguments)]
async fn stream_response<R, W, T>(
    framing: RespFraming,
    ubuf: &mut [u8],
    head_len: usize,
    mut filled: usize,
    up: &mut R,
    vendor: &mut W,
    timer: &T,
    stall: Duration,
    outcome: &mut Outcome,
) -> Result<bool, Failure>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    T: Timer,
{
    let mut pos = head_len;
    let mut frame = String::with_capacity(16);
    let mut decoder = ChunkedDecoder::new();
    let mut left = match framing {
        RespFraming::Length(n) => n,
        _ => 0,
    };
    if framing == RespFraming::None {
        return Ok(pos == filled);
    }
    loop {
        // Forward what is buffered.
        let avail = &ubuf[pos..filled];
        match framing {
            RespFraming::None => return Ok(true),
            RespFraming::Length(_) => {
                let take = (left.min(avail.len() as u64)) as usize;
                Outcome::sample(
                    &mut outcome.response_sample,
                    outcome.sample_limit,
                    &avail[..take],
                );
                if take > 0 {
                    vendor
                        .write_all(&avail[..take])
                        .await
                        .map_err(|_| Failure::Abort(VENDOR_CLOSED))?;
                }
                pos += take;
                left -= take as u64;
                outcome.response_bytes += take as u64;
                if left == 0 {
                    return Ok(pos == filled);
                }
            }
            RespFraming::UntilClose => {
                if !avail.is_empty() {
                    Outcome::sample(&mut outcome.response_sample, outcome.sample_limit, avail);
                    write_chunk(vendor, &mut frame, avail)
                        .await
                        .map_err(|_| Failure::Abort(VENDOR_CLOSED))?;
                    outcome.response_bytes += avail.len() as u64;
                }
                pos = filled;
            }
            RespFraming::Chunked => loop {
                let step = decoder
                    .decode(&ubuf[pos..filled])
                    .map_err(|_| Failure::Abort("bad_response"))?;
                let data = (pos + step.data.start)..(pos + step.data.end);
                if !data.is_empty() {
                    let n = data.len();
                    Outcome::sample(
                        &mut outcome.response_sample,
                        outcome.sample_limit,
                        &ubuf[data.clone()],
                    );
                    write_chunk(vendor, &mut frame, &ubuf[data])
                        .await
                        .map_err(|_| Failure::Abort(VENDOR_CLOSED))?;
                    outcome.response_bytes += n as u64;
                }
                pos += step.consumed;
                if step.done {
                    vendor
                        .write_all(b"0\r\n\r\n")
                        .await
                        .map_err(|_| Failure::Abort(VENDOR_CLOSED))?;
                    return Ok(pos == filled);
                }
                if step.consumed == 0 || pos == filled {
                    break;
                }
            },
        }
        // Read more.
        if pos > 0 {
            ubuf.copy_within(pos..filled, 0);
            filled -= pos;
            pos = 0;
        }
        let n = match timed(timer, stall, up.read(&mut ubuf[filled..])).await {
            None => return Err(Failure::Abort("timeout_body")),
            Some(Err(_)) => return Err(Failure::Abort("reset")),
            Some(Ok(n)) => n,
        };
        if n == 0 {
            if framing == RespFraming::UntilClose {
                vendor
                    .write_all(b"0\r\n\r\n")
                    .await
                    .map_err(|_| Failure::Abort(VENDOR_CLOSED))?;
                return Ok(false);
            }
            return Err(Failure::Abort("reset"));
        }
        filled += n;
    }
}

/// Writes `data` as one chunk of a chunked body.
async fn write_chunk<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &mut String,
    data: &[u8],
) -> std::io::Result<()> {
    frame.clear();
    let _ = write!(frame, "{:x}\r\n", data.len());
    w.write_all(frame.as_bytes()).await?;
    w.write_all(data).await?;
    w.write_all(b"\r\n").await
}

/// Reads more of the vendor's request body, or says why it cannot.
async fn fill_body<C: AsyncRead + Unpin, T: Timer>(
    inbound: &mut Inbound<'_, C>,
    timer: &T,
    stall: Duration,
) -> Result<(), Failure> {
    match timed(timer, stall, inbound.fill()).await {
        None => Err(Failure::Respond(
            408,
            "timeout_request_body",
            "request body timeout".into(),
        )),
        Some(Ok(0)) | Some(Err(_)) => Err(Failure::Respond(
            400,
            "body_incomplete",
            "request body incomplete".into(),
        )),
        Some(Ok(_)) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allowlist::{LogFlags, RuleOrigin, RuleSpec};
    use crate::http::{Limits, parse_head};
    use crate::secret::Secret;

    fn rule(set: &[(&str, &str)], remove: &[&str]) -> Allowlist {
        let spec = RuleSpec {
            url: "https://ghe.example.com/*".into(),
            methods: vec!["GET".into(), "POST".into()],
            set_request_headers: set
                .iter()
                .map(|(n, v)| ((*n).to_owned(), Secret::new(*v)))
                .collect(),
            remove_response_headers: remove.iter().map(|s| (*s).to_owned()).collect(),
            log: LogFlags::default(),
            path_files: vec![],
            query: vec![],
            headers: vec![],
            origin: RuleOrigin::User { index: 0 },
        };
        Allowlist::compile(vec![spec]).expect("valid rule")
    }

    fn rewrite(raw: &str, set: &[(&str, &str)]) -> String {
        let mut head = RequestHead::default();
        let limits = Limits {
            max_head_bytes: 8192,
            max_headers: 64,
        };
        parse_head(raw.as_bytes(), &limits, &mut head)
            .expect("valid")
            .expect("complete");
        let target = head.target(raw.as_bytes());
        let url =
            CanonUrl::parse(target.strip_prefix("/proxy/").expect("proxy")).expect("canonical");
        let list = rule(set, &[]);
        let scrubber = super::super::scrub::Scrubber::default();
        let x = Exchange {
            allowlist: &list,
            scrubber: &scrubber,
            body_limit: 0,
            timeouts: ProxyTimeouts {
                body: Duration::from_secs(1),
                response: Duration::from_secs(1),
            },
            peer: Some("10.77.0.1".parse().expect("ip")),
            request_id: "id",
        };
        String::from_utf8(upstream_head(
            &x,
            &head,
            raw.as_bytes(),
            &url,
            &list.rules()[0],
        ))
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

    fn response(
        raw: &str,
        head_request: bool,
        remove: &[&str],
    ) -> Result<Option<Parsed>, &'static str> {
        let list = rule(&[], remove);
        parse_response_head(raw.as_bytes(), head_request, &list.rules()[0], "rid")
    }

    #[test]
    fn response_head_filtering_and_framing() {
        let Ok(Some(Parsed::Final((status, _, framing, keep, head)))) = response(
            "HTTP/1.1 200 OK\r\nSet-Cookie: s=1\r\nConnection: close\r\nContent-Length: 5\r\nX-Semgrep-Private-Link: 0\r\nX-A: b\r\n\r\nhello",
            false,
            &["set-cookie"],
        ) else {
            panic!("final response expected")
        };
        let head = String::from_utf8(head).expect("utf-8");
        assert_eq!(status, 200);
        assert_eq!(framing, RespFraming::Length(5));
        assert!(!keep, "upstream asked to close");
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
        let Ok(Some(Parsed::Final((_, _, framing, keep, head)))) =
            response("HTTP/1.0 200 OK\r\n\r\n", false, &[])
        else {
            panic!("final")
        };
        assert_eq!(framing, RespFraming::UntilClose);
        assert!(!keep);
        assert!(String::from_utf8_lossy(&head).contains("Transfer-Encoding: chunked"));

        // HEAD keeps the advertised length but has no body.
        let Ok(Some(Parsed::Final((_, _, framing, _, head)))) =
            response("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", true, &[])
        else {
            panic!("final")
        };
        assert_eq!(framing, RespFraming::None);
        assert!(String::from_utf8_lossy(&head).contains("Content-Length: 99"));

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
}
