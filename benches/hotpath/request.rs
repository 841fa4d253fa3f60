//! Per request: parse the head (`http::parse_head`), canonicalise the `/proxy/` target
//! (`CanonUrl::parse`) and decide it against the built-in 4-SCM rule set, chained the way
//! `server::proxy` chains them (the allowlist's header view on the stack, the `RequestHead`
//! reused across requests as a connection reuses it).
//!
//! Three cumulative stages per request, so each stage's cost is the difference:
//! `head` → `head+canon` → `head+canon+decide`; `httparse` is the bare tokenizer `parse_head`
//! builds on (32 header slots), the floor for `head`. The decision alone, and its scaling with
//! the number of rules, is `benches/allowlist.rs`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use wgbroker::allowlist::{Allowlist, CanonUrl};
use wgbroker::bench_support::four_scm_rules;
use wgbroker::http::{Limits, RequestHead, parse_head};

/// `[inbound]` defaults.
const LIMITS: Limits = Limits {
    max_head_bytes: 16 << 10,
    max_headers: 100,
};

/// Realistic vendor requests, as they arrive inside the tunnel.
const REQUESTS: &[(&str, &str)] = &[
    (
        "short-get",
        "GET /proxy/https://ghe.example.com/api/v3/user HTTP/1.1\r\n\
         Host: 10.77.0.2\r\n\
         User-Agent: semgrep-app/1.0\r\n\
         Accept: application/vnd.github+json\r\n\
         \r\n",
    ),
    (
        "scm-api-long",
        "GET /proxy/https://gitlab.example.com/api/v4/projects/platform%2Fbackend%2Fpayments-service\
         /repository/files/src%2Fmain%2Fjava%2Fcom%2Facme%2Fpayments%2Fledger%2F\
         LedgerReconciliationService.java/raw?ref=3f9c2b7a1e5d4c6b8a0f2e1d3c5b7a9e0f1d2c3b&lfs=false \
         HTTP/1.1\r\n\
         Host: 10.77.0.2\r\n\
         User-Agent: semgrep-app/1.0\r\n\
         Accept: application/json\r\n\
         Accept-Encoding: gzip\r\n\
         X-Request-Id: 0b6f1f0e-8d52-4d8e-9a57-2f7f3c1b9e11\r\n\
         \r\n",
    ),
    (
        "git-upload-pack",
        "POST /proxy/https://gitlab.example.com/platform/backend/payments-service.git/git-upload-pack \
         HTTP/1.1\r\n\
         Host: 10.77.0.2\r\n\
         User-Agent: git/2.43.0\r\n\
         Accept-Encoding: deflate, gzip, br, zstd\r\n\
         Content-Type: application/x-git-upload-pack-request\r\n\
         Accept: application/x-git-upload-pack-result\r\n\
         Git-Protocol: version=2\r\n\
         Content-Length: 1234\r\n\
         \r\n",
    ),
    (
        "many-headers",
        "GET /proxy/https://ghe.example.com/api/v3/repos/acme/widget/pulls?state=open&per_page=100 \
         HTTP/1.1\r\n\
         Host: 10.77.0.2\r\n\
         User-Agent: semgrep-app/1.0 (+https://semgrep.example)\r\n\
         Accept: application/vnd.github+json\r\n\
         Accept-Encoding: gzip, deflate, br\r\n\
         Accept-Language: en-US,en;q=0.9\r\n\
         Cache-Control: no-cache\r\n\
         Pragma: no-cache\r\n\
         Connection: keep-alive\r\n\
         If-None-Match: W/\"5f1c2e3d4b6a79880a1b2c3d4e5f6a7b\"\r\n\
         X-GitHub-Api-Version: 2022-11-28\r\n\
         X-Request-Id: 0b6f1f0e-8d52-4d8e-9a57-2f7f3c1b9e11\r\n\
         X-Correlation-Id: 7d9a6a52-3c1e-4f0b-8e2d-5b4c3a2f1e0d\r\n\
         Traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
         Tracestate: rojo=00f067aa0ba902b7,congo=t61rcWkgMzE\r\n\
         Baggage: userId=alice,serverNode=DF%2028,isProduction=false\r\n\
         Sentry-Trace: 4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1\r\n\
         X-B3-TraceId: 4bf92f3577b34da6a3ce929d0e0e4736\r\n\
         X-B3-SpanId: 00f067aa0ba902b7\r\n\
         X-B3-Sampled: 1\r\n\
         X-Datadog-Trace-Id: 1234567890123456789\r\n\
         X-Datadog-Parent-Id: 9876543210987654321\r\n\
         X-Semgrep-Scan-Id: 48213\r\n\
         X-Semgrep-Deployment-Id: 1207\r\n\
         \r\n",
    ),
];

fn head(raw: &[u8], head: &mut RequestHead) -> usize {
    match parse_head(raw, &LIMITS, head) {
        Ok(Some(n)) => n,
        other => panic!("the bench request must parse: {other:?}"),
    }
}

/// httparse alone, no validation.
fn tokenize(raw: &[u8]) -> usize {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => 0,
    }
}

fn canon(raw: &[u8], head: &RequestHead) -> Option<CanonUrl> {
    let target = head.target(raw).strip_prefix("/proxy/")?;
    CanonUrl::parse(target).ok()
}

/// What `server::proxy` does after the head parsed: canonicalise, build the header view on the
/// stack, decide. Returns whether the request is allowed.
fn decide(allowlist: &Allowlist, raw: &[u8], head: &RequestHead) -> bool {
    let Some(url) = canon(raw, head) else {
        return false;
    };
    let mut stack = [httparse::Header {
        name: "",
        value: &[],
    }; 32];
    let mut n = 0;
    for (slot, (name, value)) in stack.iter_mut().zip(head.headers(raw)) {
        *slot = httparse::Header { name, value };
        n += 1;
    }
    allowlist
        .decide(head.method_str(raw), &url, &stack[..n])
        .is_allowed()
}

pub fn benches(c: &mut Criterion) {
    let allowlist = Allowlist::compile(four_scm_rules()).expect("rules compile");
    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Elements(1));
    for &(name, text) in REQUESTS {
        let raw = text.as_bytes();
        let mut reused = RequestHead::default();
        assert_eq!(head(raw, &mut reused), raw.len());
        assert!(
            decide(&allowlist, raw, &reused),
            "{name}: the bench request must be allowed"
        );

        assert_eq!(tokenize(raw), raw.len());

        group.bench_with_input(BenchmarkId::new("httparse", name), raw, |b, raw| {
            b.iter(|| tokenize(black_box(raw)))
        });
        group.bench_with_input(BenchmarkId::new("head", name), raw, |b, raw| {
            b.iter(|| head(black_box(raw), &mut reused))
        });
        group.bench_with_input(BenchmarkId::new("head+canon", name), raw, |b, raw| {
            b.iter(|| {
                head(black_box(raw), &mut reused);
                canon(raw, &reused).map(|u| u.path.len())
            })
        });
        group.bench_with_input(
            BenchmarkId::new("head+canon+decide", name),
            raw,
            |b, raw| {
                b.iter(|| {
                    head(black_box(raw), &mut reused);
                    decide(&allowlist, raw, &reused)
                })
            },
        );
    }
    group.finish();
}
