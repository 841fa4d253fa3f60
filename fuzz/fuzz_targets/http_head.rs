//! Request heads and `/proxy/` destinations from arbitrary bytes: the parser, the destination
//! canonicaliser and the chunked decoder must never panic, and what they accept must be
//! self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgbroker::allowlist::CanonUrl;
use wgbroker::http::{BodyFraming, ChunkedDecoder, Limits, RequestHead, parse_head};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_head_bytes: 8192,
        max_headers: 64,
    };
    let mut head = RequestHead::default();
    let Ok(Some(len)) = parse_head(data, &limits, &mut head) else {
        return;
    };
    assert!(len <= data.len() && len == head.head_len);
    let target = head.target(data);
    assert!(target.starts_with('/') || target == "*");
    // A body is framed exactly one way.
    if head.body == BodyFraming::Chunked {
        assert!(head.header(data, "content-length").is_none());
    }
    if let Some(dest) = target.strip_prefix("/proxy/") {
        if let Ok(url) = CanonUrl::parse(dest) {
            let again = CanonUrl::parse(&url.to_string()).expect("a canonical URL re-parses");
            assert_eq!(again.path, url.path);
            assert!(!url.path.contains("//") && !url.path.contains('\\'));
        }
    }
    // Whatever follows the head, read as a chunked body.
    let mut rest = &data[len..];
    let mut decoder = ChunkedDecoder::new();
    for _ in 0..rest.len() + 1 {
        match decoder.decode(rest) {
            Ok(step) => {
                assert!(step.consumed <= rest.len() && step.data.end <= step.consumed);
                if step.done || step.consumed == 0 {
                    break;
                }
                rest = &rest[step.consumed..];
            }
            Err(_) => break,
        }
    }
});
