//! The upstream's response head (`server::proxy` response parser) from arbitrary bytes: nothing
//! may panic, and the head built for the vendor is well-formed and safe:
//! * it parses again as an HTTP/1.1 response with the same status;
//! * it states its body framing exactly once (one `Content-Length` or `Transfer-Encoding:
//!   chunked`, never both), matching the framing the broker will use;
//! * headers the rule removes, hop-by-hop headers and the upstream's copies of our own headers
//!   are gone; ours appear once.
//!
//! Input: the first byte's low bit says whether the request was `HEAD`; the rest is what the
//! upstream sent.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wgbroker::allowlist::{Allowlist, LogFlags, RuleOrigin, RuleSpec};
use wgbroker::server::proxy::parse_response_head_summary;

fn allowlist() -> &'static Allowlist {
    static LIST: OnceLock<Allowlist> = OnceLock::new();
    LIST.get_or_init(|| {
        let spec = RuleSpec {
            url: "https://ghe.example.com/*".into(),
            methods: vec!["GET".into(), "HEAD".into()],
            set_request_headers: Vec::new(),
            token_pool: None,
            remove_response_headers: vec!["set-cookie".into(), "x-internal".into()],
            log: LogFlags::default(),
            path_files: Vec::new(),
            query: Vec::new(),
            headers: Vec::new(),
            body: Vec::new(),
            origin: RuleOrigin::User { index: 0 },
        };
        Allowlist::compile(vec![spec]).expect("valid rule")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, buf)) = data.split_first() else {
        return;
    };
    let head_request = flags & 1 == 1;
    let rule = &allowlist().rules()[0];
    let Ok(Some(p)) = parse_response_head_summary(buf, head_request, rule) else {
        return;
    };
    assert!(p.len <= buf.len());
    let Some(status) = p.status else {
        return;
    };
    let mut vendor = p.head.clone();
    vendor.extend_from_slice(b"\r\n");
    let mut headers = [httparse::EMPTY_HEADER; 160];
    let mut r = httparse::Response::new(&mut headers);
    let parsed = r.parse(&vendor);
    assert!(
        matches!(parsed, Ok(httparse::Status::Complete(n)) if n == vendor.len()),
        "the vendor's head does not parse back: {parsed:?} {:?}",
        String::from_utf8_lossy(&vendor)
    );
    assert_eq!(r.code, Some(status));
    let count = |name: &str| {
        r.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    let lengths = count("content-length");
    let codings = count("transfer-encoding");
    assert!(lengths + codings <= 1, "framing stated twice: {p:?}");
    match p.framing.as_str() {
        "Chunked" | "UntilClose" => assert_eq!(codings, 1, "{p:?}"),
        f if f.starts_with("Length") => assert_eq!(lengths, 1, "{p:?}"),
        _ => {}
    }
    for gone in [
        "set-cookie",
        "x-internal",
        "connection",
        "keep-alive",
        "upgrade",
    ] {
        assert_eq!(count(gone), 0, "{gone} reached the vendor: {p:?}");
    }
    assert_eq!(count("x-semgrep-private-link"), 1);
    assert_eq!(count("x-request-id"), 1);
});
