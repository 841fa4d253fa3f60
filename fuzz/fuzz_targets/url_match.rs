//! Fuzz target: arbitrary bytes → (method, URL, headers) → `CanonUrl::parse` → `decide` against
//! the built-in 4-SCM rule set plus user rules exercising every pattern and constraint kind.
//!
//! Input format (so the seed corpus stays readable): `METHOD SP URL [LF header-line]*`; bytes that
//! are not UTF-8 are fed to the parser as a lossy string. Checked, besides "never panics":
//! * an accepted URL re-parses to itself from its printed form (idempotent canonicalisation);
//! * its path starts with `/` and has no `//`, no dot segment (also percent-encoded), no
//!   backslash raw or encoded;
//! * an allowing rule is the one reported, lists the method, and `explain` agrees with `decide`;
//! * deciding on a hand-built, non-canonical URL (the raw text as the path) never panics.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wgbroker::allowlist::{
    Allowlist, CanonUrl, Decision, LogFlags, RuleOrigin, RuleSpec, ValueConstraint,
};
use wgbroker::bench_support::four_scm_rules;

fn user_rule(index: usize, url: &str, methods: &[&str]) -> RuleSpec {
    RuleSpec {
        url: url.to_owned(),
        methods: methods.iter().map(|m| (*m).to_owned()).collect(),
        set_request_headers: Vec::new(),
        token_pool: None,
        remove_response_headers: Vec::new(),
        log: LogFlags::default(),
        path_files: Vec::new(),
        query: Vec::new(),
        headers: Vec::new(),
        body: Vec::new(),
        origin: RuleOrigin::User { index },
    }
}

fn allowlist() -> &'static Allowlist {
    static ALLOWLIST: OnceLock<Allowlist> = OnceLock::new();
    ALLOWLIST.get_or_init(|| {
        let mut manifests = user_rule(
            0,
            "https://ghe.example.com/api/v3/repos/:o/:r/contents/*",
            &["GET"],
        );
        manifests.path_files = [
            "**/package.json",
            "**/pom.xml",
            ".snyk",
            "*.lock",
            "**/*.gradle",
        ]
        .map(String::from)
        .to_vec();
        let mut query = user_rule(1, "https://fuzz.example/info/refs", &["GET"]);
        query.query = vec![(
            "service".to_owned(),
            ValueConstraint::OneOf(vec![
                "git-upload-pack".to_owned(),
                "git-receive-pack".to_owned(),
            ]),
        )];
        let mut header = user_rule(2, "https://fuzz.example/api/*", &["POST", "PUT"]);
        header.headers = vec![(
            "content-type".to_owned(),
            ValueConstraint::Prefix("application/json".to_owned()),
        )];
        let mut specs = vec![
            manifests,
            query,
            header,
            user_rule(
                3,
                "https://fuzz.example/*/:repo/info/refs",
                &["GET", "OPTIONS"],
            ),
            user_rule(4, "https://fuzz.example/{:ns/}+:p/-/raw/*", &["GET"]),
            user_rule(
                5,
                r"https://fuzz.example/r/:id(\d+)/:name([a-z0-9_.-]+)",
                &["GET", "HEAD"],
            ),
            user_rule(6, "https://fuzz.example/a*b/*.json", &["GET"]),
            user_rule(7, "http://[::1]:8080/x/:y/", &["DELETE"]),
            user_rule(8, "https://10.0.0.1/", &["TRACE"]),
            // Extension methods: interned bits after the standard ones.
            user_rule(9, "https://fuzz.example/dav/*", &["PROPFIND", "MKCOL"]),
            user_rule(10, "https://fuzz.example/dav/:x/", &["REPORT", "GET"]),
        ];
        specs.extend(four_scm_rules());
        Allowlist::compile(specs).expect("fuzz rules compile")
    })
}

/// Percent-decodes (lossily: an invalid escape stays as it is).
fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn check_canonical(url: &CanonUrl) {
    let path = &url.path;
    assert!(path.starts_with('/'), "{path:?}");
    assert!(!path.contains("//"), "{path:?}");
    assert!(!path.contains('\\'), "{path:?}");
    assert!(!path.to_ascii_lowercase().contains("%5c"), "{path:?}");
    for seg in path[1..].split('/') {
        for part in decode(seg).split(|&b| b == b'/') {
            assert!(part != b"." && part != b"..", "dot segment in {path:?}");
        }
    }
    let printed = match &url.userinfo {
        Some(ui) => format!(
            "{}://{ui}@{}{}",
            url.scheme,
            url.authority(),
            url.request_target()
        ),
        None => url.to_string(),
    };
    let again =
        CanonUrl::parse(&printed).unwrap_or_else(|e| panic!("{printed:?} does not re-parse: {e}"));
    assert_eq!(&again, url, "canonicalisation is not idempotent");
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (head, header_text) = text.split_once('\n').unwrap_or((&text, ""));
    let (method, raw) = head.split_once(' ').unwrap_or(("GET", head));
    let headers: Vec<httparse::Header<'_>> = header_text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .take(16)
        .map(|(name, value)| httparse::Header {
            name,
            value: value.as_bytes(),
        })
        .collect();
    let al = allowlist();
    if let Ok(url) = CanonUrl::parse(raw) {
        check_canonical(&url);
        let decision = al.decide(method, &url, &headers);
        if let Decision::Allowed { rule_id, rule } = &decision {
            assert_eq!(rule.id, *rule_id);
            assert!(rule.allows_method(method));
        }
        let explained = al.explain(method, &url, &headers);
        assert_eq!(
            explained.decision.rule().map(|r| r.id),
            decision.rule().map(|r| r.id),
            "explain disagrees with decide"
        );
        if let Some(r) = decision.rule() {
            assert!(explained.path_matches.iter().any(|m| m.rule.id == r.id));
        }
    }
    // Hand-built, non-canonical URLs must not make the matcher panic either.
    let hand_built = CanonUrl {
        scheme: wgbroker::allowlist::Scheme::Https,
        host: "fuzz.example".to_owned(),
        port: 443,
        path: raw.to_owned(),
        query: None,
        userinfo: None,
    };
    let _ = al.decide(method, &hand_built, &headers);
});
