//! The broker's job end to end through the real tunnel (in process): allowlist enforced,
//! credentials injected, bodies streamed byte-exact, upstream failures mapped to 502/504.

use std::time::Duration;

use wgbroker::testkit::client::{self, Exchange, Request, RunOptions};
use wgbroker::testkit::response::Response;
use wgbroker::testkit::scm::{FNV_INIT, MockScm, fnv1a, pattern_byte};

use crate::harness::{Tunnel, admin_get, metric, poll_until};

const TOKEN: &str = "ghp_testTOKEN0123456789abcdefABCDEF012345";

fn setup(extra: &str) -> (MockScm, Tunnel) {
    let scm = MockScm::start(TOKEN).expect("mock scm");
    let a = scm.addr();
    let cfg = format!(
        r#"
[[scm]]
type = "github"
base_url = "http://{a}/api/v3"
token = "{TOKEN}"
allow_code_access = true

[[allow]]
url = "http://{a}/download/:n"
methods = ["GET"]
remove_response_headers = ["Set-Cookie"]

[[allow]]
url = "http://{a}/chunked/:n"
methods = ["GET"]

[[allow]]
url = "http://{a}/upload"
methods = ["POST", "PUT"]

[[allow]]
url = "http://{a}/slow/:s"
methods = ["GET"]

[[allow]]
url = "http://{a}/redirect"
methods = ["GET"]

[[allow]]
url = "http://{a}/drop-next"
methods = ["GET"]

[[allow]]
url = "http://127.0.0.1:1/*"
methods = ["GET"]

{extra}
"#
    );
    let t = Tunnel::start(&cfg);
    (scm, t)
}

fn one(t: &mut Tunnel, req: Request, timeout: Duration) -> Exchange {
    let mut r = client::run(
        &mut t.gateway,
        vec![vec![req]],
        RunOptions {
            port: 80,
            timeout,
            keep_bodies: true,
        },
    );
    r.remove(0).remove(0)
}

fn ok(ex: &Exchange) -> &Response {
    ex.response
        .as_ref()
        .unwrap_or_else(|e| panic!("no response: {e}"))
}

#[test]
fn allowed_get_reaches_upstream_with_the_injected_token() {
    let (scm, mut t) = setup("");
    let url = format!(
        "/proxy/http://{}/api/v3/repos/acme/app?per_page=5&x=%2F",
        scm.addr()
    );
    let ex = one(
        &mut t,
        Request::get(&url)
            .header("Authorization", "Bearer vendor-supplied")
            .header("X-Forwarded-For", "192.0.2.7")
            .header("Connection", "keep-alive, X-Hop")
            .header("X-Hop", "must not pass")
            .header("X-Trace", "passes"),
        Duration::from_secs(10),
    );
    let r = ok(&ex);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"full_name\":\"acme/app\""));
    assert_eq!(r.header("x-semgrep-private-link"), Some("1"));
    assert!(r.header("x-request-id").is_some());
    let seen = scm.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(
        s.target, "/api/v3/repos/acme/app?per_page=5&x=%2F",
        "query forwarded verbatim"
    );
    assert_eq!(
        s.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str()),
        "rule header overrides the vendor's"
    );
    assert_eq!(s.header("host"), Some(scm.addr().to_string().as_str()));
    assert_eq!(s.header("x-forwarded-for"), Some("192.0.2.7, 10.77.0.1"));
    assert_eq!(s.header("x-trace"), Some("passes"));
    assert_eq!(
        s.header("x-hop"),
        None,
        "Connection-listed headers are hop-by-hop"
    );
    assert!(!r.text().contains(TOKEN));
}

#[test]
fn denied_and_malformed_requests_never_reach_the_upstream() {
    let (scm, mut t) = setup("");
    let a = scm.addr();
    let cases: Vec<(Request, u16)> = vec![
        (
            Request::new(
                "DELETE",
                &format!("/proxy/http://{a}/api/v3/repos/acme/app"),
            ),
            403,
        ),
        (
            Request::get(&format!("/proxy/http://{a}/api/v3/repos/acme/app/git/refs")),
            403,
        ),
        (
            Request::get("/proxy/http://169.254.169.254/latest/meta-data/"),
            403,
        ),
        (
            Request::get(&format!("/proxy/https://{a}/api/v3/repos/acme/app")),
            403,
        ),
        (
            Request::get(&format!(
                "/proxy/http://{a}/api/v3/repos/acme/app/../../admin"
            )),
            400,
        ),
        (
            Request::get(&format!("/proxy/http://{a}/api/v3/repos/acme/%2e%2e/admin")),
            400,
        ),
        (
            Request::get(&format!(
                "/proxy/http://{a}/api/v3/repos/acme/app/contents/..%2F..%2Fx"
            )),
            400,
        ),
        (
            Request::get(&format!("/proxy/http://{a}/api/v3/repos//app")),
            400,
        ),
        (
            Request::get(&format!(
                "/proxy/http://{a}/api/v3/repos/acme/app/contents/a%5Cb"
            )),
            400,
        ),
        (
            Request::get(&format!(
                "/proxy/http://{a}/api/v3/repos/acme/app/contents/a%00b"
            )),
            400,
        ),
        (Request::get("/proxy/not a url"), 400),
        (Request::get("/proxy/ftp://example.com/x"), 400),
    ];
    for (req, status) in cases {
        let target = req.target.clone();
        let ex = one(&mut t, req, Duration::from_secs(10));
        let r = ok(&ex);
        assert_eq!(r.status, status, "{target}: {}", r.text());
        assert_eq!(
            r.header("x-semgrep-private-link-error"),
            Some("1"),
            "{target}"
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        if status == 403 {
            assert!(
                r.text()
                    .starts_with(r#"{"error":"url is not in allowlist""#),
                "{}",
                r.text()
            );
        }
    }
    assert!(
        scm.seen().is_empty(),
        "nothing reached the upstream: {:?}",
        scm.seen()
    );
}

/// `wgbroker explain` on the broker's own configuration: (exit status, standard output).
fn explain(t: &Tunnel, method: &str, url: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("broker.toml");
    std::fs::write(&cfg, &t.config_text).expect("write config");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_wgbroker"))
        .arg("explain")
        .arg("-c")
        .arg(&cfg)
        .args([method, url])
        .output()
        .expect("run explain");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn explain_decides_methods_exactly_as_the_wire_does() {
    let (scm, mut t) = setup("");
    let url = format!("http://{}/api/v3/repos/acme/app", scm.addr());
    // (method, explain's exit status, the broker's answer to the same request)
    for (method, code, status) in [
        ("GET", 0, 200),
        ("get", 1, 403),
        ("Get", 1, 403),
        ("DELETE", 1, 403),
        ("PROPFIND", 1, 403),
        ("CONNECT", 2, 400),
        ("GE T", 2, 400),
        ("G\"ET", 2, 400),
    ] {
        let (got, out) = explain(&t, method, &url);
        assert_eq!(got, Some(code), "explain {method:?}:\n{out}");
        let ex = one(
            &mut t,
            Request::new(method, &format!("/proxy/{url}")),
            Duration::from_secs(10),
        );
        assert_eq!(ok(&ex).status, status, "{method:?} on the wire");
    }
    assert_eq!(scm.seen().len(), 1, "only the GET went upstream");
}

#[test]
fn a_rule_naming_an_extension_method_lets_it_through_the_broker() {
    let scm = MockScm::start(TOKEN).expect("mock scm");
    let a = scm.addr();
    let mut t = Tunnel::start(&format!(
        "[[allow]]\nurl = \"http://{a}/dav/*\"\nmethods = [\"PROPFIND\", \"MKCOL\"]\n"
    ));
    let body = br#"<?xml version="1.0"?><propfind xmlns="DAV:"><allprop/></propfind>"#.to_vec();
    let ex = one(
        &mut t,
        Request::new("PROPFIND", &format!("/proxy/http://{a}/dav/repo/"))
            .header("Depth", "1")
            .header("Content-Type", "application/xml")
            .body(body.clone()),
        Duration::from_secs(10),
    );
    // The mock SCM has no WebDAV: its 404 proves the request reached it.
    let r = ok(&ex);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.header("x-upstream"), Some("mock-scm"));
    let seen = scm.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "PROPFIND");
    assert_eq!(seen[0].target, "/dav/repo/");
    assert_eq!(seen[0].header("depth"), Some("1"));
    assert_eq!(seen[0].body_len, body.len() as u64);
    let ex = one(
        &mut t,
        Request::new("MKCOL", &format!("/proxy/http://{a}/dav/repo/new/")),
        Duration::from_secs(10),
    );
    assert_eq!(ok(&ex).status, 404);
    // Methods the rule does not name stay denied, extension or not.
    for m in ["GET", "REPORT", "propfind"] {
        let ex = one(
            &mut t,
            Request::new(m, &format!("/proxy/http://{a}/dav/repo/")),
            Duration::from_secs(10),
        );
        assert_eq!(ok(&ex).status, 403, "{m}");
    }
    assert_eq!(scm.seen().len(), 2, "only PROPFIND and MKCOL went upstream");
    // explain says the same as the wire.
    let (code, out) = explain(&t, "PROPFIND", &format!("http://{a}/dav/repo/"));
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = explain(&t, "REPORT", &format!("http://{a}/dav/repo/"));
    assert_eq!(code, Some(1), "{out}");
}

#[test]
fn ten_mib_download_and_five_mib_chunked_upload_are_byte_exact() {
    let (scm, mut t) = setup("");
    let a = scm.addr();
    let n: u64 = 10 << 20;
    let ex = one(
        &mut t,
        Request::get(&format!("/proxy/http://{a}/download/{n}")),
        Duration::from_secs(60),
    );
    let r = ok(&ex);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len() as u64, n);
    assert!(
        r.body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern_byte(i as u64)),
        "content differs"
    );
    assert_eq!(
        r.header("set-cookie"),
        None,
        "remove_response_headers applies"
    );
    assert_eq!(r.header("content-length"), Some(n.to_string().as_str()));

    // Chunked upload of 5 MiB in uneven chunks.
    let body: Vec<u8> = (0..(5u64 << 20)).map(|i| pattern_byte(i * 7)).collect();
    let mut wire = Vec::new();
    for part in body.chunks(65_537) {
        wire.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        wire.extend_from_slice(part);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let ex = one(
        &mut t,
        Request::new("POST", &format!("/proxy/http://{a}/upload"))
            .header("Transfer-Encoding", "chunked")
            .body(wire),
        Duration::from_secs(60),
    );
    let r = ok(&ex);
    assert_eq!(r.status, 200, "{}", r.text());
    let expect = format!(
        r#"{{"bytes":{},"fnv":"{:016x}"}}"#,
        body.len(),
        fnv1a(&body, FNV_INIT)
    );
    assert_eq!(r.text(), expect);

    // A chunked upstream response reaches the vendor intact.
    let ex = one(
        &mut t,
        Request::get(&format!("/proxy/http://{a}/chunked/100000")),
        Duration::from_secs(20),
    );
    let r = ok(&ex);
    assert_eq!(r.body.len(), 100_000);
    assert!(
        r.body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern_byte(i as u64))
    );
}

#[test]
fn a_vendor_that_abandons_a_download_is_counted_apart_from_upstream_errors() {
    let (scm, mut t) = setup("");
    let a = scm.addr();
    // The client gives up (RST) long before 256 MiB can arrive.
    let ex = one(
        &mut t,
        Request::get(&format!("/proxy/http://{a}/download/{}", 256u64 << 20)),
        Duration::from_millis(300),
    );
    assert!(ex.response.is_err(), "the download cannot finish in 300 ms");
    let status = t.broker.as_ref().expect("running").status().clone();
    let port = status.admin_port.load(std::sync::atomic::Ordering::Relaxed);
    // The broker sees it on its next write; shards publish their counters about every 100 ms.
    let aborted = r#"wgbroker_outcomes_total{outcome="vendor_aborted"}"#;
    poll_until(
        Duration::from_secs(10),
        "the abandoned download counted",
        || metric(port, aborted) >= Some(1.0),
    );
    assert_eq!(metric(port, aborted), Some(1.0));
    assert_eq!(
        metric(port, r#"wgbroker_outcomes_total{outcome="upstream_error"}"#),
        Some(0.0)
    );
}

#[test]
fn dead_upstream_is_502_slow_upstream_is_504_redirects_are_returned() {
    let (scm, mut t) = setup("[upstream]\nresponse_timeout = \"1s\"\nconnect_timeout = \"2s\"\n");
    let a = scm.addr();
    let ex = one(
        &mut t,
        Request::get("/proxy/http://127.0.0.1:1/anything"),
        Duration::from_secs(10),
    );
    let r = ok(&ex);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("x-semgrep-private-link-error"), Some("1"));
    let ex = one(
        &mut t,
        Request::get(&format!("/proxy/http://{a}/slow/3")),
        Duration::from_secs(10),
    );
    let r = ok(&ex);
    assert_eq!(r.status, 504, "{}", r.text());
    let ex = one(
        &mut t,
        Request::get(&format!("/proxy/http://{a}/redirect")),
        Duration::from_secs(10),
    );
    let r = ok(&ex);
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("https://elsewhere.example/"));
    // The broker keeps serving.
    let ex = one(
        &mut t,
        Request::get(&format!("/proxy/http://{a}/api/v3/repos/acme/app")),
        Duration::from_secs(10),
    );
    assert_eq!(ok(&ex).status, 200);
}

#[test]
fn keep_alive_connection_carries_many_proxied_requests() {
    let (scm, mut t) = setup("");
    let a = scm.addr();
    let reqs: Vec<Request> = (0..20)
        .map(|i| Request::get(&format!("/proxy/http://{a}/api/v3/repos/acme/app{i}")))
        .collect();
    let res = client::run(
        &mut t.gateway,
        vec![reqs],
        RunOptions {
            port: 80,
            timeout: Duration::from_secs(20),
            keep_bodies: true,
        },
    );
    assert_eq!(res[0].len(), 20);
    for ex in &res[0] {
        assert_eq!(ok(ex).status, 200);
    }
    assert_eq!(scm.seen().len(), 20);
    // The admin listener counts them (shards publish about every 100 ms).
    let status = t.broker.as_ref().expect("running").status().clone();
    let port = status.admin_port.load(std::sync::atomic::Ordering::Relaxed);
    let latency_count = "wgbroker_proxy_latency_seconds_count";
    poll_until(Duration::from_secs(3), "20 latencies counted", || {
        metric(port, latency_count) >= Some(20.0)
    });
    let (_, metrics) = admin_get(port, "/metrics");
    assert!(
        metrics.contains("wgbroker_outcomes_total{outcome=\"proxied\"} 20"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wgbroker_proxied_responses_total{class=\"2xx\"} 20"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wgbroker_proxy_latency_seconds_count 20"),
        "{metrics}"
    );
}

#[test]
fn drain_lets_in_flight_requests_finish_and_refuses_new_connections() {
    let (scm, mut t) = setup("");
    let a = scm.addr();
    let broker = t.broker.take().expect("running");
    let status = broker.status().clone();
    // Drain starts while a 2 s upstream request is in flight: once the SCM has its head.
    let seen = scm.seen_handle();
    let drainer = std::thread::spawn(move || {
        poll_until(
            Duration::from_secs(10),
            "the slow request at the SCM",
            || !seen.is_empty(),
        );
        let started = std::time::Instant::now();
        let left = broker.drain(Duration::from_secs(10)).expect("clean stop");
        (left, started.elapsed())
    });
    let ex = one(
        &mut t,
        Request::get(&format!("/proxy/http://{a}/slow/2")),
        Duration::from_secs(10),
    );
    let r = ok(&ex);
    assert_eq!(
        r.status,
        200,
        "the in-flight request finished: {}",
        r.text()
    );
    assert_eq!(r.text(), "late");
    // The gateway keeps pumping so the broker's FINs and ACKs flow until the drain completes.
    while !drainer.is_finished() {
        t.gateway.pump(Duration::from_millis(20)).expect("pump");
    }
    let (left, took) = drainer.join().expect("drain thread");
    assert_eq!(left, 0, "every connection finished before the deadline");
    assert!(took < Duration::from_secs(5), "drain took {took:?}");
    assert!(status.draining.load(std::sync::atomic::Ordering::Relaxed));
    // Nothing accepts any more: a new connection fails.
    let ex = one(&mut t, Request::get("/healthcheck"), Duration::from_secs(3));
    assert!(
        ex.response.is_err(),
        "a drained broker answered: {:?}",
        ex.response
    );
}

#[test]
fn reload_swaps_the_allowlist_without_dropping_the_tunnel() {
    let (scm, mut t) = setup("");
    let a = scm.addr();
    let download = format!("/proxy/http://{a}/download/10");
    let fresh = format!("/proxy/http://{a}/brand-new");
    assert_eq!(
        ok(&one(
            &mut t,
            Request::get(&download),
            Duration::from_secs(10)
        ))
        .status,
        200
    );
    assert_eq!(
        ok(&one(&mut t, Request::get(&fresh), Duration::from_secs(10))).status,
        403
    );
    let status = t.broker.as_ref().expect("running").status().clone();
    // Let the start-up handshake(s) settle and be published (one timer tick).
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while status.handshakes.load(std::sync::atomic::Ordering::Relaxed) == 0
        && std::time::Instant::now() < deadline
    {
        t.gateway.pump(Duration::from_millis(20)).expect("pump");
    }
    for _ in 0..15 {
        t.gateway.pump(Duration::from_millis(20)).expect("pump");
    }
    let handshakes = status.handshakes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(handshakes >= 1);

    // The same configuration with the download rule replaced by one for a new path.
    let old_rule = format!("url = \"http://{a}/download/:n\"");
    assert!(t.config_text.contains(&old_rule));
    let new_text = t
        .config_text
        .replace(&old_rule, &format!("url = \"http://{a}/brand-new\""));
    let new = t.reload_config(&new_text);
    t.broker
        .as_ref()
        .expect("running")
        .reload(&new)
        .expect("every shard applies it");

    let r = one(&mut t, Request::get(&download), Duration::from_secs(10));
    assert_eq!(ok(&r).status, 403, "the removed rule no longer allows");
    let r = one(&mut t, Request::get(&fresh), Duration::from_secs(10));
    let r = ok(&r);
    assert_eq!(
        r.status, 404,
        "now proxied: the mock upstream has no such route"
    );
    assert_eq!(r.header("x-semgrep-private-link"), Some("1"));
    assert_eq!(
        status.handshakes.load(std::sync::atomic::Ordering::Relaxed),
        handshakes,
        "the tunnel was not re-established"
    );
}

#[test]
fn header_constraints_see_the_vendor_request_headers() {
    let scm = MockScm::start(TOKEN).expect("mock scm");
    let a = scm.addr();
    let mut t = crate::harness::Tunnel::start(&format!(
        "[[allow]]\nurl = \"http://{a}/gated\"\nmethods = [\"GET\"]\nheaders = {{ X-Scan = {{ equals = \"yes\" }} }}\n"
    ));
    let url = format!("/proxy/http://{a}/gated");
    let without = one(&mut t, Request::get(&url), Duration::from_secs(10));
    assert_eq!(ok(&without).status, 403);
    let with = one(
        &mut t,
        Request::get(&url).header("X-Scan", "yes"),
        Duration::from_secs(10),
    );
    assert_eq!(ok(&with).status, 404, "allowed: the mock has no such route");
    // More headers than the stack view holds (32) take the heap path and still match.
    let mut req = Request::get(&url);
    for i in 0..40 {
        req = req.header(&format!("X-Filler-{i}"), "v");
    }
    let many = one(&mut t, req.header("X-Scan", "yes"), Duration::from_secs(10));
    assert_eq!(ok(&many).status, 404);
    let other = one(
        &mut t,
        Request::get(&url).header("X-Scan", "no"),
        Duration::from_secs(10),
    );
    assert_eq!(ok(&other).status, 403);
}

#[test]
fn a_pooled_connection_closed_by_the_upstream_is_retried_once_for_a_bodiless_get() {
    let (scm, mut t) = setup("");
    let a = scm.addr();
    // One vendor connection, so each request takes the pooled upstream connection the one before
    // released. /drop-next arms it: the upstream reads the next request on it and closes.
    let get = |p: &str| Request::get(&format!("/proxy/http://{a}{p}"));
    let res = client::run(
        &mut t.gateway,
        vec![vec![
            get("/drop-next"),
            get("/api/v3/repos/acme/app"),
            get("/drop-next"),
            Request::new("POST", &format!("/proxy/http://{a}/upload")).body(vec![7u8; 100]),
        ]],
        RunOptions {
            port: 80,
            timeout: Duration::from_secs(10),
            keep_bodies: true,
        },
    );
    let statuses: Vec<u16> = res[0].iter().map(|ex| ok(ex).status).collect();
    // The GET went again on a new connection and got its answer; the POST has a body, so it is
    // not sent twice: the vendor gets the 502 instead.
    assert_eq!(statuses, [200, 200, 200, 502], "{:?}", res[0]);
    assert!(ok(&res[0][1]).text().contains("acme/app"));
    assert_eq!(
        ok(&res[0][3]).header("x-semgrep-private-link-error"),
        Some("1")
    );
    assert!(
        ok(&res[0][3]).text().contains("closed the connection"),
        "{}",
        ok(&res[0][3]).text()
    );
    let targets: Vec<String> = scm.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(
        targets,
        [
            "/drop-next",
            "/api/v3/repos/acme/app",
            "/api/v3/repos/acme/app",
            "/drop-next",
            "/upload",
        ],
        "the GET reached the upstream twice (the first copy was dropped), the POST once"
    );
}
