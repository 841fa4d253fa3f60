//! Every way a proxied exchange can fail, one vendor connection at a time: the vendor is a
//! scripted stream, the upstream set is [`FakeUpstreams`], time is a timer that either never
//! fires or fires as soon as an operation would have to wait. Each test runs the whole
//! connection task ([`crate::server::serve`]), so it checks what the vendor receives, whether
//! the connection stays open, what the upstream set was asked for and which metric counted it.

use std::future::Future;
use std::io;
use std::time::Duration;

use futures_lite::future;

use crate::allowlist::{Allowlist, LogFlags, RuleOrigin, RuleSpec};
use crate::http::Limits;
use crate::secret::Secret;
use crate::server::{
    ProxyTimeouts, RequestIds, ServerConfig, ServerCtx, ServerStats, Timer, scrub, serve,
};
use crate::testkit::clock::FakeClock;
use crate::testkit::script::{Read, Steps};
use crate::testkit::upstreams::{Call, FakeUpstreams};
use crate::upstream::{Target, UpstreamError};

/// Sleeps never end: nothing times out.
struct Never;
impl Timer for Never {
    fn sleep(&self, _: Duration) -> impl Future<Output = ()> {
        future::pending()
    }
}

/// Sleeps end at once: any wait on a silent peer times out (an operation that is ready wins the
/// race, so only silence does).
struct Immediately;
impl Timer for Immediately {
    fn sleep(&self, _: Duration) -> impl Future<Output = ()> {
        future::ready(())
    }
}

/// The upstream every test request goes to.
fn target() -> Target {
    Target::new(true, "ghe.example.com", 443)
}

/// One rule allowing GET, HEAD, OPTIONS and POST on the test upstream, with these
/// `set_request_headers` and `remove_response_headers`.
pub(super) fn allowlist(set: &[(&str, &str)], remove: &[&str]) -> Allowlist {
    let spec = RuleSpec {
        url: "https://ghe.example.com/*".into(),
        methods: ["GET", "HEAD", "OPTIONS", "POST"]
            .map(String::from)
            .to_vec(),
        set_request_headers: set
            .iter()
            .map(|(n, v)| ((*n).to_owned(), Secret::new(*v)))
            .collect(),
        token_pool: None,
        remove_response_headers: remove.iter().map(|s| (*s).to_owned()).collect(),
        log: LogFlags::default(),
        path_files: vec![],
        query: vec![],
        headers: vec![],
        body: Vec::new(),
        origin: RuleOrigin::User { index: 0 },
    };
    Allowlist::compile(vec![spec]).expect("valid rule")
}

fn ctx() -> ServerCtx {
    let cfg = ServerConfig {
        limits: Limits {
            max_head_bytes: 4096,
            max_headers: 32,
        },
        head_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        proxy: ProxyTimeouts {
            body: Duration::from_secs(10),
            response: Duration::from_secs(20),
        },
        body_log_limit: 0,
        max_checked_body: 64,
    };
    ServerCtx::new(
        cfg,
        allowlist(&[], &[]),
        scrub::Scrubber::default(),
        RequestIds::new(1, 0),
    )
}

/// A proxied request head for `path` on the test upstream.
fn req(method: &str, path: &str, extra: &str) -> String {
    format!("{method} /proxy/https://ghe.example.com{path} HTTP/1.1\r\nHost: b\r\n{extra}\r\n")
}

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// What one vendor connection saw.
struct Seen {
    /// Everything the broker wrote to the vendor.
    out: String,
    /// The broker closed the vendor connection.
    closed: bool,
    stats: ServerStats,
    calls: Vec<Call>,
}

impl Seen {
    /// The number of responses (status lines) the vendor received.
    fn responses(&self) -> usize {
        self.out.matches("HTTP/1.1 ").count()
    }
}

fn run(vendor: Steps, up: &FakeUpstreams, timer: &impl Timer) -> Seen {
    run_on(ctx(), vendor, up, timer)
}

/// [`run`] with a context of one's own (another allowlist).
fn run_on(ctx: ServerCtx, vendor: Steps, up: &FakeUpstreams, timer: &impl Timer) -> Seen {
    let record = vendor.record();
    let mut vendor = vendor;
    future::block_on(serve(&mut vendor, &ctx, timer, up, None));
    let stats = ctx.stats.borrow().clone();
    let r = record.borrow();
    Seen {
        out: String::from_utf8_lossy(&r.written).into_owned(),
        closed: r.closed,
        stats,
        calls: up.calls(),
    }
}

/// A vendor that sends `text` and then closes its side.
fn vendor(text: &str) -> Steps {
    Steps::new([Read::data(text)])
}

/// Asserts an error answer: status line, the error header, the JSON message, and that the
/// connection was closed after it.
fn assert_error_answer(s: &Seen, status: &str, message: &str) {
    assert!(
        s.out.starts_with(&format!("HTTP/1.1 {status}\r\n")),
        "{}",
        s.out
    );
    assert!(
        s.out.contains("X-Semgrep-Private-Link-Error: 1\r\n"),
        "{}",
        s.out
    );
    assert!(s.out.contains(message), "{message:?} not in {}", s.out);
    assert!(s.out.contains("Connection: close\r\n"), "{}", s.out);
    assert_eq!(s.responses(), 1, "{}", s.out);
    assert!(s.closed, "the connection closes after an upstream error");
}

/// Only `upstream_errors` (and the request count) moved.
fn assert_counted_as_upstream_error(st: &ServerStats) {
    assert_eq!(
        (
            st.upstream_errors,
            st.vendor_aborted,
            st.proxied,
            st.denied,
            st.rejected
        ),
        (1, 0, 0, 0, 0),
        "{st:?}"
    );
}

#[test]
fn a_clean_exchange_hands_the_connection_back_and_keeps_the_vendor_connection() {
    let up = FakeUpstreams::default();
    let got = up.fresh([Read::data(OK)]);
    let s = run(
        vendor(&(req("GET", "/a", "") + "GET /healthcheck HTTP/1.1\r\nHost: b\r\n\r\n")),
        &up,
        &Never,
    );
    assert!(s.out.starts_with("HTTP/1.1 200 OK\r\n"), "{}", s.out);
    assert!(s.out.contains("X-Semgrep-Private-Link: 1\r\n"));
    assert_eq!(
        s.responses(),
        2,
        "the next request is served too: {}",
        s.out
    );
    assert_eq!(s.calls, [Call::Connect(target()), Call::Release(target())]);
    assert!(
        String::from_utf8_lossy(&got.borrow().written).starts_with("GET /a HTTP/1.1\r\n"),
        "the upstream got the request"
    );
    assert_eq!((s.stats.proxied, s.stats.proxied_by_class[1]), (1, 1));
    assert_eq!(s.stats.bytes_out, 2);
}

#[test]
fn connect_refused_is_502() {
    let up = FakeUpstreams::default();
    up.fails(UpstreamError::Connect {
        peer: "ghe.example.com:443".into(),
        source: io::ErrorKind::ConnectionRefused.into(),
    });
    let s = run(vendor(&req("GET", "/a", "")), &up, &Never);
    assert_error_answer(
        &s,
        "502 Bad Gateway",
        "cannot connect to ghe.example.com:443",
    );
    assert_counted_as_upstream_error(&s.stats);
    assert_eq!(s.calls, [Call::Connect(target())], "no second attempt");
}

#[test]
fn connect_timeout_is_504() {
    let up = FakeUpstreams::default();
    up.fails(UpstreamError::ConnectTimeout {
        peer: "ghe.example.com:443".into(),
        after: Duration::from_secs(10),
    });
    let s = run(vendor(&req("GET", "/a", "")), &up, &Never);
    assert_error_answer(&s, "504 Gateway Timeout", "timed out after 10s");
    assert_counted_as_upstream_error(&s.stats);
}

#[test]
fn tls_failures_are_502() {
    for e in [
        UpstreamError::TlsCertificate {
            peer: "ghe.example.com:443".into(),
            detail: "UnknownIssuer".into(),
        },
        UpstreamError::TlsHandshake {
            peer: "ghe.example.com:443".into(),
            detail: "connection closed during the handshake".into(),
        },
    ] {
        let up = FakeUpstreams::default();
        up.fails(e);
        let s = run(vendor(&req("GET", "/a", "")), &up, &Never);
        assert_error_answer(&s, "502 Bad Gateway", "TLS");
        assert_counted_as_upstream_error(&s.stats);
    }
}

#[test]
fn no_response_head_in_time_is_504() {
    let up = FakeUpstreams::default();
    let got = up.fresh([Read::Silent]);
    let s = run(vendor(&req("GET", "/a", "")), &up, &Immediately);
    assert_error_answer(&s, "504 Gateway Timeout", "upstream did not answer in time");
    assert_counted_as_upstream_error(&s.stats);
    assert!(!got.borrow().written.is_empty(), "the request went out");
    assert_eq!(
        s.calls,
        [Call::Connect(target())],
        "a timeout is never retried"
    );
}

/// An upstream whose response head comes in three pieces, `gap` of `clock` apart (the first
/// `gap` after the request went out).
fn head_in_pieces(up: &FakeUpstreams, clock: &FakeClock, gap: Duration) {
    up.fresh_steps(
        Steps::new([
            Read::Pause(gap),
            Read::data("HTTP/1.1 200 OK\r\n"),
            Read::Pause(gap),
            Read::data("Content-Length: 2\r\n"),
            Read::Pause(gap),
            Read::data("\r\nok"),
        ])
        .clocked(clock),
    );
}

#[test]
fn the_response_head_has_one_deadline_however_many_reads_it_takes() {
    // Each piece comes 12 s after the last, within `response_timeout` (20 s); the whole head
    // does not.
    let (clock, up) = (FakeClock::default(), FakeUpstreams::default());
    head_in_pieces(&up, &clock, Duration::from_secs(12));
    let s = run(vendor(&req("GET", "/a", "")), &up, &clock);
    assert_error_answer(&s, "504 Gateway Timeout", "upstream did not answer in time");
    assert_eq!(
        clock.now(),
        Duration::from_secs(20),
        "answered at the deadline, response_timeout after the request went out"
    );
    assert_counted_as_upstream_error(&s.stats);
}

#[test]
fn a_response_head_in_pieces_within_the_deadline_is_relayed() {
    let (clock, up) = (FakeClock::default(), FakeUpstreams::default());
    head_in_pieces(&up, &clock, Duration::from_secs(6));
    let s = run(vendor(&req("GET", "/a", "")), &up, &clock);
    assert!(s.out.starts_with("HTTP/1.1 200 OK\r\n"), "{}", s.out);
    assert!(s.out.ends_with("\r\n\r\nok"), "{}", s.out);
    assert_eq!(clock.now(), Duration::from_secs(18));
}

#[test]
fn a_timeout_on_a_pooled_connection_is_not_retried() {
    let up = FakeUpstreams::default();
    up.pooled([Read::Silent]);
    let s = run(vendor(&req("GET", "/a", "")), &up, &Immediately);
    assert_error_answer(&s, "504 Gateway Timeout", "upstream did not answer in time");
    assert_eq!(s.calls, [Call::Connect(target())]);
}

#[test]
fn a_reset_before_the_head_on_a_new_connection_is_502_without_a_retry() {
    for end in [Read::Reset, Read::Eof] {
        let up = FakeUpstreams::default();
        up.fresh([end]);
        let s = run(vendor(&req("GET", "/a", "")), &up, &Never);
        assert_error_answer(
            &s,
            "502 Bad Gateway",
            "upstream closed the connection before answering",
        );
        assert_counted_as_upstream_error(&s.stats);
        assert_eq!(s.calls, [Call::Connect(target())]);
    }
}

#[test]
fn a_bodiless_safe_request_on_a_closed_pooled_connection_goes_once_more_on_a_new_one() {
    for (method, end) in [
        ("GET", Read::Eof),
        ("HEAD", Read::Reset),
        ("OPTIONS", Read::Eof),
    ] {
        let up = FakeUpstreams::default();
        let first = up.pooled([end]);
        // A response to HEAD has no body.
        let reply = if method == "HEAD" {
            &OK[..OK.len() - 2]
        } else {
            OK
        };
        let second = up.fresh([Read::data(reply)]);
        let s = run(vendor(&req(method, "/a", "")), &up, &Never);
        assert!(
            s.out.starts_with("HTTP/1.1 200 OK\r\n"),
            "{method}: {}",
            s.out
        );
        assert_eq!(s.responses(), 1);
        assert_eq!(
            s.calls,
            [
                Call::Connect(target()),
                Call::ConnectNew(target()),
                Call::Release(target())
            ],
            "{method}"
        );
        let line = format!("{method} /a HTTP/1.1\r\n");
        for conn in [first, second] {
            assert!(String::from_utf8_lossy(&conn.borrow().written).starts_with(&line));
        }
        assert_eq!((s.stats.proxied, s.stats.upstream_errors), (1, 0));
    }
}

#[test]
fn the_retry_happens_once() {
    let up = FakeUpstreams::default();
    up.pooled([Read::Eof]);
    up.fresh([Read::Eof]);
    let s = run(vendor(&req("GET", "/a", "")), &up, &Never);
    assert_error_answer(
        &s,
        "502 Bad Gateway",
        "upstream closed the connection before answering",
    );
    assert_eq!(
        s.calls,
        [Call::Connect(target()), Call::ConnectNew(target())]
    );
}

#[test]
fn a_request_with_a_body_on_a_closed_pooled_connection_is_not_sent_twice() {
    let up = FakeUpstreams::default();
    let got = up.pooled([Read::Eof]);
    let s = run(
        vendor(&(req("POST", "/a", "Content-Length: 3\r\n") + "abc")),
        &up,
        &Never,
    );
    assert_error_answer(&s, "502 Bad Gateway", "closed the connection");
    assert_eq!(s.calls, [Call::Connect(target())]);
    assert!(String::from_utf8_lossy(&got.borrow().written).ends_with("\r\n\r\nabc"));
}

#[test]
fn a_reset_after_the_head_aborts_without_a_second_response() {
    for end in [Read::Reset, Read::Eof] {
        let up = FakeUpstreams::default();
        up.fresh([
            Read::data("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"),
            end,
        ]);
        let s = run(vendor(&req("GET", "/a", "")), &up, &Never);
        assert!(s.out.starts_with("HTTP/1.1 200 OK\r\n"), "{}", s.out);
        assert!(s.out.contains("Content-Length: 100\r\n"));
        assert!(s.out.ends_with("\r\n\r\n0123456789"), "{}", s.out);
        assert_eq!(
            s.responses(),
            1,
            "no error answer after the head: {}",
            s.out
        );
        assert!(
            s.closed,
            "the vendor sees the connection end short of the length"
        );
        assert_counted_as_upstream_error(&s.stats);
        assert_eq!(s.stats.proxied_by_class[1], 1, "the status that went out");
        assert_eq!(s.calls, [Call::Connect(target())], "not handed back");
    }
}

#[test]
fn a_response_body_that_stalls_aborts() {
    let up = FakeUpstreams::default();
    up.fresh([
        Read::data("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123"),
        Read::Silent,
    ]);
    let s = run(vendor(&req("GET", "/a", "")), &up, &Immediately);
    assert_eq!(s.responses(), 1, "{}", s.out);
    assert!(s.out.ends_with("\r\n\r\n0123"), "{}", s.out);
    assert!(s.closed);
    assert_counted_as_upstream_error(&s.stats);
}

#[test]
fn a_malformed_chunked_response_body_aborts() {
    let up = FakeUpstreams::default();
    up.fresh([Read::data(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n",
    )]);
    let s = run(vendor(&req("GET", "/a", "")), &up, &Never);
    assert_eq!(s.responses(), 1, "{}", s.out);
    assert!(s.out.ends_with("\r\n\r\n2\r\nok\r\n"), "{}", s.out);
    assert!(s.closed);
    assert_counted_as_upstream_error(&s.stats);
}

#[test]
fn a_vendor_that_closes_mid_response_is_vendor_aborted() {
    let up = FakeUpstreams::default();
    let body = "x".repeat(10_000);
    up.fresh([Read::data(format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ))]);
    let s = run(vendor(&req("GET", "/a", "")).write_limit(1000), &up, &Never);
    assert!(s.out.starts_with("HTTP/1.1 200 OK\r\n"), "{}", s.out);
    assert_eq!(
        (
            s.stats.vendor_aborted,
            s.stats.upstream_errors,
            s.stats.proxied
        ),
        (1, 0, 0),
        "{:?}",
        s.stats
    );
    assert_eq!(s.calls, [Call::Connect(target())], "not handed back");
}

#[test]
fn a_request_body_that_stalls_is_408_and_closes() {
    let up = FakeUpstreams::default();
    let got = up.fresh([Read::data(OK)]);
    let s = run(
        Steps::new([
            Read::data(req("POST", "/a", "Content-Length: 10\r\n") + "abc"),
            Read::Silent,
        ]),
        &up,
        &Immediately,
    );
    assert!(
        s.out.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{}",
        s.out
    );
    assert!(s.out.contains("request body timeout"));
    assert!(s.out.contains("Connection: close\r\n"));
    assert_eq!(s.responses(), 1);
    assert!(s.closed);
    assert_eq!(
        (s.stats.vendor_aborted, s.stats.upstream_errors),
        (1, 0),
        "{:?}",
        s.stats
    );
    assert!(String::from_utf8_lossy(&got.borrow().written).ends_with("\r\n\r\nabc"));
    assert_eq!(s.calls, [Call::Connect(target())], "not handed back");
}

/// `request`, whose body the broker cannot forward, through the proxy to an upstream that would
/// answer 200: the vendor gets a 400 naming `problem`, and its connection is closed.
fn bad_request_body(request: String, problem: &str) -> Seen {
    let up = FakeUpstreams::default();
    up.fresh([Read::data(OK)]);
    let s = run(vendor(&request), &up, &Never);
    assert!(
        s.out.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{}",
        s.out
    );
    assert!(s.out.contains(problem), "{}", s.out);
    assert!(s.closed);
    s
}

#[test]
fn a_request_body_cut_short_is_400_and_closes() {
    let s = bad_request_body(
        req("POST", "/a", "Content-Length: 10\r\n") + "abc",
        "request body incomplete",
    );
    assert_eq!((s.stats.vendor_aborted, s.stats.rejected), (1, 0));
}

#[test]
fn a_malformed_chunked_request_body_is_400_and_counted_malformed() {
    let s = bad_request_body(
        req("POST", "/a", "Transfer-Encoding: chunked\r\n") + "zz\r\n",
        "malformed chunked body",
    );
    assert!(s.out.contains("Connection: close\r\n"));
    assert_eq!((s.stats.rejected, s.stats.vendor_aborted), (1, 0));
}

#[test]
fn a_malformed_upstream_head_is_502() {
    for (reply, message) in [
        ("garbage\r\n\r\n", "malformed upstream response head"),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "conflicting upstream Content-Length",
        ),
        (
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "upstream tried to switch protocols",
        ),
    ] {
        let up = FakeUpstreams::default();
        up.fresh([Read::data(reply)]);
        let s = run(vendor(&req("GET", "/a", "")), &up, &Never);
        assert_error_answer(&s, "502 Bad Gateway", message);
        assert_counted_as_upstream_error(&s.stats);
    }
}

#[test]
fn an_upstream_head_too_large_is_502() {
    let up = FakeUpstreams::default();
    let huge = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n", "a".repeat(70_000));
    up.fresh([Read::data(huge), Read::Silent]);
    let s = run(vendor(&req("GET", "/a", "")), &up, &Never);
    assert_error_answer(&s, "502 Bad Gateway", "upstream response head too large");
    assert_counted_as_upstream_error(&s.stats);
}

#[test]
fn denied_and_malformed_destinations_never_reach_the_upstream() {
    let up = FakeUpstreams::default();
    let s = run(
        vendor(
            "GET /proxy/https://elsewhere.example/x HTTP/1.1\r\nHost: b\r\n\r\n\
             GET /proxy/not-a-url HTTP/1.1\r\nHost: b\r\n\r\n",
        ),
        &up,
        &Never,
    );
    assert!(s.out.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{}", s.out);
    assert!(s.out.contains("HTTP/1.1 400 Bad Request\r\n"), "{}", s.out);
    assert_eq!(s.responses(), 2, "both answered on one connection");
    assert_eq!((s.stats.denied, s.stats.rejected), (1, 1));
    assert!(s.calls.is_empty());
}

#[test]
fn expect_continue_gets_100_once_the_upstream_is_ready() {
    let up = FakeUpstreams::default();
    let got = up.fresh([Read::data(OK)]);
    let s = run(
        vendor(
            &(req(
                "POST",
                "/a",
                "Content-Length: 3\r\nExpect: 100-continue\r\n",
            ) + "abc"),
        ),
        &up,
        &Never,
    );
    assert!(
        s.out
            .starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{}",
        s.out
    );
    let sent = String::from_utf8_lossy(&got.borrow().written).into_owned();
    assert!(!sent.contains("Expect"), "{sent}");
    assert!(sent.ends_with("\r\n\r\nabc"));
}

#[test]
fn a_final_head_behind_informational_ones_in_the_same_read_is_answered_at_once() {
    for early in [
        "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n",
    ] {
        let up = FakeUpstreams::default();
        // Everything arrives in one read; the upstream then waits for the next request
        // (silent), so only the bytes already read can complete the answer.
        up.fresh([Read::data(early.to_owned() + OK), Read::Silent]);
        let s = run(vendor(&req("GET", "/a", "")), &up, &Immediately);
        assert!(s.out.starts_with("HTTP/1.1 200 OK\r\n"), "{}", s.out);
        assert!(s.out.ends_with("\r\n\r\nok"), "{}", s.out);
        assert_eq!(s.responses(), 1, "1xx are not forwarded: {}", s.out);
        assert_eq!(s.stats.proxied, 1, "{:?}", s.stats);
    }
}

#[test]
fn a_close_delimited_body_reaches_the_vendor_as_chunks_and_the_connection_is_not_pooled() {
    let up = FakeUpstreams::default();
    up.fresh([
        Read::data("HTTP/1.0 200 OK\r\n\r\nhel"),
        Read::data("lo"),
        Read::Eof,
    ]);
    let s = run(vendor(&req("GET", "/a", "")), &up, &Never);
    assert!(
        s.out.contains("Transfer-Encoding: chunked\r\n"),
        "{}",
        s.out
    );
    assert!(
        s.out.ends_with("\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"),
        "{}",
        s.out
    );
    assert_eq!(s.calls, [Call::Connect(target())], "it ended by closing");
    assert_eq!((s.stats.proxied, s.stats.bytes_out), (1, 5));
}

#[test]
fn a_chunked_body_is_relayed_chunk_by_chunk_and_the_connection_pooled() {
    let up = FakeUpstreams::default();
    up.fresh([
        Read::data("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n"),
        Read::data("2\r\nde\r\n0\r\nTrailer: x\r\n\r\n"),
    ]);
    let s = run(vendor(&req("GET", "/a", "")), &up, &Never);
    assert!(
        s.out.ends_with("\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
        "extensions and trailers do not pass: {}",
        s.out
    );
    assert_eq!(s.calls, [Call::Connect(target()), Call::Release(target())]);
    assert_eq!((s.stats.proxied, s.stats.bytes_out), (1, 5));
}

#[test]
fn a_token_pool_rotates_per_request_and_sets_a_401_token_aside_without_retrying() {
    use crate::allowlist::pool::{SET_ASIDE, TokenPool};
    let tokens = ["Bearer tok-A", "Bearer tok-B", "Bearer tok-C"];
    let pool = std::sync::Arc::new(TokenPool::new(
        "Authorization",
        tokens.iter().map(|t| Secret::new(*t)).collect(),
        SET_ASIDE,
    ));
    let mut spec = allowlist(&[], &[]).rules()[0].spec.clone();
    spec.token_pool = Some(pool.clone());
    let ctx = ctx();
    *ctx.allowlist.borrow_mut() = std::rc::Rc::new(Allowlist::compile(vec![spec]).expect("valid"));
    let unauthorized = "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
    let up = FakeUpstreams::default();
    let answers = [OK, unauthorized, OK, OK, OK];
    let seen: Vec<_> = answers.iter().map(|a| up.fresh([Read::data(a)])).collect();
    let requests: String = (0..5).map(|i| req("GET", &format!("/r{i}"), "")).collect();
    let s = run_on(ctx, vendor(&requests), &up, &Never);
    let sent: Vec<String> = seen
        .iter()
        .map(|r| {
            let w = String::from_utf8_lossy(&r.borrow().written).into_owned();
            tokens
                .iter()
                .find(|t| w.contains(&format!("Authorization: {t}\r\n")))
                .map_or_else(|| format!("none in {w}"), |t| (*t).to_owned())
        })
        .collect();
    // A, B (401: set aside), then C, A, C: B stays out of the rotation.
    assert_eq!(
        sent,
        [
            "Bearer tok-A",
            "Bearer tok-B",
            "Bearer tok-C",
            "Bearer tok-A",
            "Bearer tok-C"
        ]
    );
    assert_eq!(
        s.out.matches("HTTP/1.1 401 ").count(),
        1,
        "the 401 went back as it came: {}",
        s.out
    );
    let connects = s
        .calls
        .iter()
        .filter(|c| matches!(c, Call::Connect(_)))
        .count();
    assert_eq!(
        connects, 5,
        "one upstream exchange per request: never retried with another token"
    );
    assert_eq!(s.stats.tokens_set_aside, 1);
    assert_eq!(pool.set_aside_count(std::time::Instant::now()), 1);
    assert!(!s.out.contains("tok-"), "no token reaches the vendor");
}

/// Like [`run`], with a rule whose POSTs must create only manifest files (`[[allow.body]]`,
/// `max_checked_body` 64 bytes).
fn run_checked(vendor: Steps, up: &FakeUpstreams) -> Seen {
    let mut spec = allowlist(&[], &[]).rules()[0].spec.clone();
    spec.body = vec![crate::allowlist::WhenSpec {
        pointer: Some("/tree/*/path".into()),
        glob: Some(vec!["**/package.json".into()]),
        ..Default::default()
    }];
    let base = ctx();
    let ctx = ServerCtx::new(
        base.cfg.get(),
        Allowlist::compile(vec![spec]).expect("valid rule"),
        scrub::Scrubber::default(),
        RequestIds::new(1, 0),
    );
    let record = vendor.record();
    let mut vendor = vendor;
    future::block_on(serve(&mut vendor, &ctx, &Never, up, None));
    let stats = ctx.stats.borrow().clone();
    let r = record.borrow();
    Seen {
        out: String::from_utf8_lossy(&r.written).into_owned(),
        closed: r.closed,
        stats,
        calls: up.calls(),
    }
}

fn post_json(body: &str, extra: &str) -> String {
    req(
        "POST",
        "/api/v3/repos/a/b/git/trees",
        &format!("Content-Length: {}\r\n{extra}", body.len()),
    ) + body
}

#[test]
fn a_body_that_satisfies_every_constraint_is_forwarded_unchanged() {
    let up = FakeUpstreams::default();
    let got = up.fresh([Read::data(OK)]);
    let body = r#"{"tree":[{"path":"web/package.json"}]}"#;
    let s = run_checked(vendor(&post_json(body, "")), &up);
    assert!(s.out.starts_with("HTTP/1.1 200 OK\r\n"), "{}", s.out);
    let sent = String::from_utf8_lossy(&got.borrow().written).into_owned();
    assert!(sent.ends_with(&format!("\r\n\r\n{body}")), "{sent}");
    assert!(
        sent.contains(&format!("Content-Length: {}\r\n", body.len())),
        "{sent}"
    );
}

#[test]
fn a_body_that_breaks_a_constraint_is_denied_before_the_upstream_is_contacted() {
    for body in [
        r#"{"tree":[{"path":"web/package.json"},{"path":"evil.sh"}]}"#,
        r#"{"tree":[]}"#,
        "not json at all",
    ] {
        let up = FakeUpstreams::default();
        let s = run_checked(vendor(&post_json(body, "")), &up);
        assert!(
            s.out.starts_with("HTTP/1.1 403 Forbidden\r\n"),
            "{body}: {}",
            s.out
        );
        assert!(s.out.contains("request body is not allowed"), "{}", s.out);
        assert!(s.calls.is_empty(), "{body}: the upstream was contacted");
        assert_eq!(s.stats.denied, 1);
    }
}

#[test]
fn a_checked_body_over_the_cap_is_413_and_a_chunked_one_is_read_whole() {
    let up = FakeUpstreams::default();
    let big = format!(r#"{{"tree":[{{"path":"{}"}}]}}"#, "a".repeat(80));
    let s = run_checked(vendor(&post_json(&big, "")), &up);
    assert!(s.out.starts_with("HTTP/1.1 413 "), "{}", s.out);
    assert!(s.calls.is_empty());
    assert!(s.closed);

    let up = FakeUpstreams::default();
    let got = up.fresh([Read::data(OK)]);
    let body = r#"{"tree":[{"path":"package.json"}]}"#;
    let (a, b) = body.split_at(9);
    let chunked = req(
        "POST",
        "/api/v3/repos/a/b/git/trees",
        "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n",
    ) + &format!("{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len());
    let s = run_checked(vendor(&chunked), &up);
    assert!(
        s.out
            .starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{}",
        s.out
    );
    let sent = String::from_utf8_lossy(&got.borrow().written).into_owned();
    assert!(
        sent.ends_with(&format!("\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", body.len())),
        "{sent}"
    );
}
