//! Allowlist conformance: pattern semantics (DESIGN.md section 5), URL canonicalisation, the
//! built-in SCM rule sets (shared/reference/scm-allowlists.md), extra constraints, compile-time
//! validation, and a property test of the compiled trie against a naive linear regex matcher.

use proptest::prelude::*;
use wgbroker::allowlist::scm::{self, ScmKind};
use wgbroker::allowlist::{
    Allowlist, CanonUrl, Decision, DenyReason, LogFlags, RuleOrigin, RuleSpec, Scheme,
    ValueConstraint,
};
use wgbroker::secret::Secret;

// ---------------------------------------------------------------------------------------------
// helpers

fn rule(url: &str, methods: &[&str]) -> RuleSpec {
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
        origin: RuleOrigin::User { index: 0 },
    }
}

fn numbered(mut specs: Vec<RuleSpec>) -> Vec<RuleSpec> {
    for (i, s) in specs.iter_mut().enumerate() {
        s.origin = RuleOrigin::User { index: i };
    }
    specs
}

fn compile(specs: Vec<RuleSpec>) -> Allowlist {
    match Allowlist::compile(numbered(specs)) {
        Ok(a) => a,
        Err(e) => panic!("rules must compile: {e:?}"),
    }
}

fn url(raw: &str) -> CanonUrl {
    CanonUrl::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
}

/// The allowing rule id, or the deny reason.
fn decide(a: &Allowlist, method: &str, raw: &str) -> Result<usize, DenyReason> {
    decide_with(a, method, raw, &[])
}

fn decide_with(
    a: &Allowlist,
    method: &str,
    raw: &str,
    headers: &[httparse::Header<'_>],
) -> Result<usize, DenyReason> {
    match a.decide(method, &url(raw), headers) {
        Decision::Allowed { rule_id, rule } => {
            assert_eq!(rule.id, rule_id);
            Ok(rule_id)
        }
        Decision::Denied(r) => Err(r),
    }
}

// ---------------------------------------------------------------------------------------------
// pattern semantics

#[test]
fn pattern_conformance_table() {
    // (pattern path, request path, matches)
    let table: &[(&str, &str, bool)] = &[
        ("/api/v3/*", "/api/v3/", true),
        ("/api/v3/*", "/api/v3/x", true),
        ("/api/v3/*", "/api/v3/x/y/", true),
        ("/api/v3/*", "/api/v3", false),
        ("/api/v3/*", "/api/v3x", false),
        ("/p/:v", "/p/a", true),
        ("/p/:v", "/p/a/b", false),
        ("/p/:v", "/p/", false),
        ("/p/:v", "/p", false),
        ("/p/:v", "/p/group%2Fsub%2Fproj", true),
        ("/*/:repo/info/refs", "/group/sub/repo/info/refs", true),
        ("/*/:repo/info/refs", "/g/repo/info/refs", true),
        ("/*/:repo/info/refs", "/repo/info/refs", false),
        ("/{:ns/}+:proj/info/refs", "/a/p/info/refs", true),
        ("/{:ns/}+:proj/info/refs", "/a/b/c/p/info/refs", true),
        ("/{:ns/}+:proj/info/refs", "/p/info/refs", false),
        ("/{:ns/}+:proj/info/refs", "/a/p/info/refs/x", false),
        ("/x/{:ns/}+", "/x/a/", true),
        ("/x/{:ns/}+", "/x/a/b/", true),
        ("/x/{:ns/}+", "/x/a", false),
        ("/x/{:ns/}+", "/x/", false),
        (r"/r/:id(\d+)", "/r/123", true),
        (r"/r/:id(\d+)", "/r/12a", false),
        (r"/r/:id(\d+)", "/r/", false),
        (r"/r/:id(\d+)/x", "/r/7/x", true),
        ("/r/:id(a|b)", "/r/ab", false),
        ("/files/*.json", "/files/a.json", true),
        ("/files/*.json", "/files/a/b.json", true),
        ("/files/*.json", "/files/.json", true),
        ("/files/*.json", "/files/a.jsonx", false),
        ("/a*/x", "/abc/x", true),
        ("/a*/x", "/a/b/x", true),
        ("/a*/x", "/b/x", false),
        ("/*", "/", true),
        ("/*", "/anything/at/all", true),
        ("/", "/", true),
        ("/", "/a", false),
        ("/a/", "/a/", true),
        ("/a/", "/a", false),
        ("/a", "/a/", false),
        ("/Api", "/api", false),
        ("/a%2fb", "/a%2Fb", true),
        ("/a%2Fb", "/a%2fb", true),
        ("/a%2Fb", "/a/b", false),
        (r"/\:x/\*", "/:x/*", true),
        (r"/\:x/\*", "/:x/y", false),
        ("/a/*/b/*", "/a/1/b/2/b/3", true),
        ("/a/*/b/*", "/a/b/c", false),
    ];
    for &(pattern, path, expected) in table {
        let a = compile(vec![rule(&format!("https://h.example{pattern}"), &["GET"])]);
        let got = decide(&a, "GET", &format!("https://h.example{path}")).is_ok();
        assert_eq!(got, expected, "pattern {pattern} vs path {path}");
    }
}

#[test]
fn empty_segments_never_match_even_when_hand_built() {
    // Canonicalisation rejects `//`, and the matcher must too (defence in depth).
    assert!(CanonUrl::parse("https://h.example//evil/info/refs").is_err());
    let a = compile(vec![
        rule("https://h.example/{:ns/}+:proj/info/refs", &["GET"]),
        rule("https://h.example/p/:v", &["GET"]),
    ]);
    let mut u = url("https://h.example/x");
    for path in [
        "//evil/info/refs",
        "/a//p/info/refs",
        "/a/b//info/refs",
        "/p/",
        "/p//",
        "evil/info/refs",
        "",
    ] {
        u.path = path.to_owned();
        assert!(!a.decide("GET", &u, &[]).is_allowed(), "{path:?}");
    }
}

#[test]
fn scheme_host_and_port() {
    let a = compile(vec![
        rule("https://h.example/x", &["GET"]),
        rule("http://h.example:8080/y", &["GET"]),
        rule("https://[2001:db8::1]/v6", &["GET"]),
        rule("https://H.Example:8443/z", &["GET"]),
    ]);
    assert_eq!(decide(&a, "GET", "https://h.example/x"), Ok(0));
    assert_eq!(decide(&a, "GET", "https://H.EXAMPLE/x"), Ok(0));
    assert_eq!(decide(&a, "GET", "https://h.example:443/x"), Ok(0));
    assert_eq!(
        decide(&a, "GET", "http://h.example/x"),
        Err(DenyReason::NoRuleForOrigin)
    );
    assert_eq!(
        decide(&a, "GET", "https://h.example:8443/x"),
        Err(DenyReason::NoPathMatch)
    );
    assert_eq!(decide(&a, "GET", "https://h.example:8443/z"), Ok(3));
    assert_eq!(decide(&a, "GET", "http://h.example:8080/y"), Ok(1));
    assert_eq!(
        decide(&a, "GET", "http://h.example/y"),
        Err(DenyReason::NoRuleForOrigin)
    );
    assert_eq!(
        decide(&a, "GET", "https://g.example/x"),
        Err(DenyReason::NoRuleForOrigin)
    );
    assert_eq!(decide(&a, "GET", "https://[2001:DB8:0::1]/v6"), Ok(2));
    assert_eq!(
        decide(&a, "GET", "https://[2001:db8::2]/v6"),
        Err(DenyReason::NoRuleForOrigin)
    );
}

#[test]
fn many_origins_use_the_host_table() {
    let specs: Vec<_> = (0..40)
        .map(|i| {
            rule(
                &format!("https://h{i}.example:{}/r{i}", 8000 + i % 3),
                &["GET"],
            )
        })
        .collect();
    let a = compile(specs);
    for i in 0..40 {
        let raw = format!("https://h{i}.example:{}/r{i}", 8000 + i % 3);
        assert_eq!(decide(&a, "GET", &raw), Ok(i), "{raw}");
        let wrong_port = format!("https://h{i}.example:{}/r{i}", 8000 + (i + 1) % 3);
        assert_eq!(
            decide(&a, "GET", &wrong_port),
            Err(DenyReason::NoRuleForOrigin)
        );
    }
    let mut upper = url("https://h7.example:8001/r7");
    upper.host = "H7.EXAMPLE".to_owned();
    assert!(a.decide("GET", &upper, &[]).is_allowed());
}

#[test]
fn first_match_in_rule_order_wins() {
    let a = compile(vec![
        rule("https://h.example/a/:x", &["POST"]),
        rule("https://h.example/a/*", &["GET"]),
        rule("https://h.example/a/b", &["GET", "POST"]),
        rule("https://h.example/*", &["GET", "DELETE"]),
    ]);
    assert_eq!(decide(&a, "GET", "https://h.example/a/b"), Ok(1));
    assert_eq!(decide(&a, "POST", "https://h.example/a/b"), Ok(0));
    assert_eq!(decide(&a, "DELETE", "https://h.example/a/b"), Ok(3));
    assert_eq!(decide(&a, "GET", "https://h.example/z"), Ok(3));
    assert_eq!(
        decide(&a, "PUT", "https://h.example/a/b"),
        Err(DenyReason::MethodNotAllowed)
    );
    // Reversed order: the specific literal rule is now reached first for POST.
    let b = compile(vec![
        rule("https://h.example/a/b", &["GET", "POST"]),
        rule("https://h.example/a/:x", &["POST"]),
    ]);
    assert_eq!(decide(&b, "POST", "https://h.example/a/b"), Ok(0));
    assert_eq!(decide(&b, "POST", "https://h.example/a/c"), Ok(1));
}

#[test]
fn methods_are_a_bitmask_and_connect_is_never_allowed() {
    let a = compile(vec![
        rule("https://h.example/o", &["OPTIONS"]),
        rule(
            "https://h.example/all",
            &[
                "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
            ],
        ),
    ]);
    assert_eq!(decide(&a, "OPTIONS", "https://h.example/o"), Ok(0));
    assert_eq!(
        decide(&a, "GET", "https://h.example/o"),
        Err(DenyReason::MethodNotAllowed)
    );
    for m in [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
    ] {
        assert_eq!(decide(&a, m, "https://h.example/all"), Ok(1), "{m}");
    }
    for m in ["CONNECT", "get", "PROPFIND", ""] {
        assert_eq!(
            decide(&a, m, "https://h.example/all"),
            Err(DenyReason::MethodNotAllowed),
            "{m}"
        );
        assert_eq!(
            decide(&a, m, "https://h.example/none"),
            Err(DenyReason::NoPathMatch),
            "{m}"
        );
    }
}

#[test]
fn extension_methods_are_allowed_by_exactly_the_rules_that_name_them() {
    let a = compile(vec![
        rule("https://dav.example/repo/*", &["PROPFIND"]),
        rule("https://dav.example/repo/*", &["GET", "REPORT"]),
        rule(
            "https://dav.example/repo/:x",
            &["MKCOL", "PROPFIND", "VERSION-CONTROL"],
        ),
        rule("https://dav.example/*", &["PROPPATCH"]),
    ]);
    let d = |m: &str, u: &str| decide(&a, m, u);
    assert_eq!(d("PROPFIND", "https://dav.example/repo/a/b"), Ok(0));
    assert_eq!(d("PROPFIND", "https://dav.example/repo/a"), Ok(0));
    assert_eq!(d("GET", "https://dav.example/repo/a/b"), Ok(1));
    assert_eq!(d("REPORT", "https://dav.example/repo/a/b"), Ok(1));
    assert_eq!(d("MKCOL", "https://dav.example/repo/a"), Ok(2));
    assert_eq!(d("VERSION-CONTROL", "https://dav.example/repo/a"), Ok(2));
    assert_eq!(d("PROPPATCH", "https://dav.example/repo/a"), Ok(3));
    // Exactly the named methods: not GET on the PROPFIND-only path, not a case variant, not a
    // method no rule names.
    assert_eq!(
        d("GET", "https://dav.example/x"),
        Err(DenyReason::MethodNotAllowed)
    );
    for m in ["propfind", "Propfind", "MKCOL", "LOCK", "POST", "CONNECT"] {
        assert_eq!(
            d(m, "https://dav.example/repo/a/b"),
            Err(DenyReason::MethodNotAllowed),
            "{m}"
        );
    }
    assert_eq!(
        d("PROPFIND", "https://dav.example.org/"),
        Err(DenyReason::NoRuleForOrigin)
    );
    // explain agrees, rule by rule.
    let e = a.explain("PROPFIND", &url("https://dav.example/repo/a"), &[]);
    let listed: Vec<(usize, bool)> = e
        .path_matches
        .iter()
        .map(|m| (m.rule.id, m.method_allowed))
        .collect();
    assert_eq!(listed, [(0, true), (1, false), (2, true), (3, false)]);
}

#[test]
fn rule_methods_must_be_tokens_and_every_bad_one_is_reported() {
    let errors = Allowlist::compile(numbered(vec![
        rule(
            "https://h.example/a",
            &["GET", "GE T", "", "CONNECT", "PROPFIND", "get"],
        ),
        rule("https://h.example/b", &["OPTIONS"]),
    ]))
    .expect_err("must fail");
    let methods: Vec<(usize, &str, &str)> = errors
        .iter()
        .map(|e| (e.rule, e.field, e.message.as_str()))
        .collect();
    assert_eq!(methods.len(), 4, "{methods:#?}");
    assert!(methods.iter().all(|(r, f, _)| *r == 0 && *f == "methods"));
    for part in ["\"GE T\"", "\"\"", "CONNECT", "\"get\""] {
        assert!(
            methods.iter().any(|(_, _, m)| m.contains(part)),
            "{part} in {methods:#?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// canonicalisation

/// (raw, Display form, host, port, path, query)
type Accepted = (
    &'static str,
    &'static str,
    &'static str,
    u16,
    &'static str,
    Option<&'static str>,
);

#[rustfmt::skip]
const ACCEPTED: &[Accepted] = &[
    ("HTTPS://GHE.Example.COM:443/api/v3/", "https://ghe.example.com/api/v3/", "ghe.example.com", 443, "/api/v3/", None),
    ("https://h.example", "https://h.example/", "h.example", 443, "/", None),
    ("https://h.example?x=1", "https://h.example/?x=1", "h.example", 443, "/", Some("x=1")),
    ("http://h.example:8080/a%2fb?q=%2f", "http://h.example:8080/a%2Fb?q=%2f", "h.example", 8080, "/a%2Fb", Some("q=%2f")),
    ("http://h.example:80/a", "http://h.example/a", "h.example", 80, "/a", None),
    ("https://[::1]:8443/x", "https://[::1]:8443/x", "[::1]", 8443, "/x", None),
    ("https://[2001:DB8:0::1]/", "https://[2001:db8::1]/", "[2001:db8::1]", 443, "/", None),
    ("https://1.2.3.4/", "https://1.2.3.4/", "1.2.3.4", 443, "/", None),
    ("https://h.example/...a/b.c/~u/a;b/@x:y*", "https://h.example/...a/b.c/~u/a;b/@x:y*", "h.example", 443, "/...a/b.c/~u/a;b/@x:y*", None),
    ("https://h.example/a?", "https://h.example/a?", "h.example", 443, "/a", Some("")),
    ("https://h.example/g%2Fsub%2Fproj", "https://h.example/g%2Fsub%2Fproj", "h.example", 443, "/g%2Fsub%2Fproj", None),
    ("https://x-1.h.example/%7e", "https://x-1.h.example/%7E", "x-1.h.example", 443, "/%7E", None),
];

#[test]
fn canonicalisation_accepts_and_normalises() {
    for &(raw, display, host, port, path, query) in ACCEPTED {
        let u = url(raw);
        assert_eq!(u.to_string(), display, "{raw}");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            (host, port, path),
            "{raw}"
        );
        assert_eq!(u.query.as_deref(), query, "{raw}");
        assert_eq!(u.userinfo, None);
        assert_eq!(url(display), u, "idempotent: {raw}");
    }
    assert_eq!(
        url("https://h.example:8443/a?b").authority().to_string(),
        "h.example:8443"
    );
    assert_eq!(
        url("https://h.example:443/a?b").authority().to_string(),
        "h.example"
    );
    assert_eq!(
        url("https://h.example/a?b").request_target().to_string(),
        "/a?b"
    );
    assert_eq!(url("http://h.example/").scheme, Scheme::Http);
}

#[test]
fn userinfo_is_kept_raw_and_never_printed() {
    let u = url("https://bot:p%40ss@h.example/x");
    assert_eq!(u.userinfo.as_deref(), Some("bot:p%40ss"));
    assert_eq!(u.host, "h.example");
    for printed in [u.to_string(), format!("{u:?}")] {
        assert!(
            !printed.contains("p%40ss") && !printed.contains("bot"),
            "{printed}"
        );
    }
    // The classic confusion: the host is what follows the '@'.
    assert_eq!(
        url("https://ghe.example.com@evil.example/x").host,
        "evil.example"
    );
}

#[rustfmt::skip]
const HOSTILE: &[&str] = &[
    // dot segments, raw and encoded, and forms servers normalise to them
    "https://h.example/..", "https://h.example/a/../b", "https://h.example/a/./b",
    "https://h.example/.", "https://h.example/%2e%2e/x", "https://h.example/%2E./x",
    "https://h.example/.%2e/x", "https://h.example/%2e/x", "https://h.example/a/..%2F..%2Fetc",
    "https://h.example/a/%2e%2e%2f", "https://h.example/a%2F%2E%2E", "https://h.example/..;/x",
    "https://h.example/a/..%3B/x", "https://h.example/..%20/x", "https://h.example/.../x",
    "https://h.example/%252e%252e/x", "https://h.example/a%252Fb", "https://h.example/%C0%AE%C0%AE/x",
    // empty segments
    "https://h.example//a", "https://h.example/a//b", "https://h.example/a%2F%2Fb",
    "https://h.example/%2Fa", "https://h.example/a%2F", "https://h.example/;x/a",
    // backslashes, control bytes, NUL, spaces
    "https://h.example/a\\b", "https://h.example/a%5cb", "https://h.example/a%5Cb",
    "https://h.example/a%00b", "https://h.example/a%0ab", "https://h.example/a%0D", "https://h.example/a%7Fb",
    "https://h.example/a%1f", "https://h.example/a\u{1}b", "https://h.example/a\tb", "https://h.example/a\nb",
    "https://h.example/a\0b", "https://h.example/a b", "https://h.example/a?x=%00", "https://h.example/a?x=%0A",
    "https://h.example/a?x=\r",
    // invalid percent-encoding
    "https://h.example/%", "https://h.example/a%zz", "https://h.example/%G1", "https://h.example/a%2",
    "https://h.example/a?x=%zz", "https://h.example/a?x=%",
    // fragments, characters outside pchar, non-ASCII
    "https://h.example/a#x", "https://h.example/#", "https://h.example/a?b#c", "https://h.example/a\"b",
    "https://h.example/a<b", "https://h.example/{a}", "https://h.example/a|b", "https://h.example/a^b",
    "https://h.example/a`b", "https://h.example/a[0]", "https://h.example/é",
    // schemes and authority tricks
    "ftp://h.example/a", "https:h.example/a", "//h.example/a", "https:/h.example/a", "https:///a",
    "h.example/a", "", "https://", "https://a@b@h.example/", "https://@h.example/",
    "https://u\\@h.example/", "https://us er@h.example/",
    // hosts
    "https://h..example/", "https://h.example./", "https://-h.example/", "https://h-.example/",
    "https://h_x.example/", "https://h%2eexample/", "https://127.1/", "https://0x7f.0.0.1/",
    "https://2130706433/", "https://010.0.0.1/", "https://256.1.1.1/", "https://h.0x1/",
    "https://[fe80::1%25eth0]/", "https://[::1/", "https://[::1]x/", "https://[zz::1]/",
    // ports
    "https://h.example:/", "https://h.example:0/", "https://h.example:65536/", "https://h.example:08080/",
    "https://h.example:+80/", "https://h.example:80:80/", "https://h.example:ab/",
];

#[test]
fn canonicalisation_rejects_hostile_urls() {
    for raw in HOSTILE {
        assert!(CanonUrl::parse(raw).is_err(), "must reject {raw:?}");
    }
    let long = "a".repeat(wgbroker::allowlist::canon::MAX_URL_LEN);
    assert!(CanonUrl::parse(&format!("https://h.example/{long}")).is_err());
}

#[test]
fn malformed_reasons_are_human_and_url_free() {
    let e = CanonUrl::parse("https://h.example/%2e%2e/secret-token").expect_err("dot segment");
    assert_eq!(e.to_string(), "malformed url: dot segment");
    let e = CanonUrl::parse("https://h.example/a#frag").expect_err("fragment");
    assert!(e.to_string().contains("fragment"));
    assert!(!e.to_string().contains("#frag"));
}

// ---------------------------------------------------------------------------------------------
// built-in SCM rule sets

const GHE: &str = "https://ghe.example.com/api/v3";
const GITLAB: &str = "https://gitlab.example.com/api/v4";
const BITBUCKET: &str = "https://bitbucket.example.com/rest/api/latest";
const ADO: &str = "https://dev.azure.com";

fn scm_set(code: bool, tokens: bool) -> Allowlist {
    let t = |s: &str| tokens.then(|| Secret::new(s));
    let mut specs = Vec::new();
    let entries = [
        (ScmKind::Github, GHE, t("ghp_token")),
        (ScmKind::Gitlab, GITLAB, t("glpat-token")),
        (ScmKind::Bitbucket, BITBUCKET, t("bbtoken")),
        (ScmKind::Azuredevops, ADO, t(":adopat")),
    ];
    for (i, (kind, base, token)) in entries.iter().enumerate() {
        specs.extend(scm::rules(*kind, i, base, token.as_ref(), code).expect("valid base"));
    }
    Allowlist::compile(specs).expect("built-in rules compile")
}

/// Checks a block of `allow|deny METHOD URL` lines.
fn check_cases(a: &Allowlist, cases: &str) {
    let mut n = 0;
    for line in cases
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
    {
        let mut words = line.split_whitespace();
        let (Some(verdict), Some(method), Some(raw), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            panic!("bad case line {line:?}");
        };
        let want = match verdict {
            "allow" => true,
            "deny" => false,
            _ => panic!("bad verdict in {line:?}"),
        };
        let got = a.decide(method, &url(raw), &[]);
        assert_eq!(got.is_allowed(), want, "{line}: {got:?}");
        n += 1;
    }
    assert!(n > 0, "no cases");
}

#[test]
fn github_rules() {
    let a = scm_set(true, true);
    check_cases(
        &a,
        r"
        allow GET    https://ghe.example.com/api/v3/repos/o/r
        allow GET    https://ghe.example.com/api/v3/repositories/123
        deny  GET    https://ghe.example.com/api/v3/repositories/12a
        allow GET    https://ghe.example.com/api/v3/repositories/123/pulls
        allow GET    https://ghe.example.com/api/v3/user
        allow GET    https://ghe.example.com/api/v3/user/memberships/orgs/acme
        allow POST   https://ghe.example.com/api/v3/repos/o/r/pulls/7/comments
        allow GET    https://ghe.example.com/api/v3/repos/o/r/compare/main...feature
        allow PUT    https://ghe.example.com/api/v3/repos/o/r/actions/secrets/SEMGREP_APP_TOKEN
        allow PUT    https://ghe.example.com/api/v3/repositories/9/actions/secrets/SEMGREP_APP_TOKEN
        deny  PUT    https://ghe.example.com/api/v3/repos/o/r/actions/secrets/OTHER
        allow GET    https://ghe.example.com/api/v3/repos/o/r/contents/.github/workflows/semgrep.yml
        allow PUT    https://ghe.example.com/api/v3/repos/o/r/contents/.github/workflows/semgrep.yml
        deny  PUT    https://ghe.example.com/api/v3/repos/o/r/contents/src/main.rs
        allow PATCH  https://ghe.example.com/api/v3/app/hook/config
        allow DELETE https://ghe.example.com/api/v3/orgs/acme/hooks/5
        deny  PUT    https://ghe.example.com/api/v3/orgs/acme/hooks/5
        allow POST   https://ghe.example.com/api/v3/repos/o/r/git/refs
        // pinned negatives
        deny  GET    https://ghe.example.com/api/v3/repos/o/r/git/refs
        deny  POST   https://ghe.example.com/api/v3/repos/o/r/git/ref/heads/main
        deny  DELETE https://ghe.example.com/api/v3/repos/o/r/git/ref/heads/main
        deny  DELETE https://ghe.example.com/api/v3/repos/o/r/git/refs/heads/main
        deny  PUT    https://ghe.example.com/api/v3/repos/o/r/git/refs/heads/main
        deny  DELETE https://ghe.example.com/api/v3/repositories/1/git/refs/heads/main
        // code access
        allow GET    https://ghe.example.com/api/v3/repos/o/r/contents
        allow GET    https://ghe.example.com/api/v3/repos/o/r/contents/src/a/b.rs
        allow GET    https://ghe.example.com/api/v3/repos/o/r/git/ref/heads/main
        allow PATCH  https://ghe.example.com/api/v3/repos/o/r/git/refs/heads/main
        allow GET    https://ghe.example.com/o/r/info/refs?service=git-upload-pack
        allow POST   https://ghe.example.com/o/r/git-upload-pack
        allow POST   https://ghe.example.com/o/r/git-receive-pack
        deny  GET    https://ghe.example.com/o/r/objects/info/packs
        allow POST   https://ghe.example.com/api/v3/repos/o/r/pulls
        allow POST   https://ghe.example.com/api/v3/repositories/5/git/blobs
        // outside the base path, other schemes and ports
        deny  GET    https://ghe.example.com/repos/o/r
        deny  GET    http://ghe.example.com/api/v3/repos/o/r
        deny  GET    https://ghe.example.com:8443/api/v3/repos/o/r
        deny  GET    https://ghe.example.com/api/v3/admin/users
    ",
    );
    check_cases(
        &scm_set(false, true),
        r"
        allow GET    https://ghe.example.com/api/v3/repos/o/r
        allow POST   https://ghe.example.com/api/v3/repos/o/r/git/refs
        deny  GET    https://ghe.example.com/api/v3/repos/o/r/contents
        deny  GET    https://ghe.example.com/api/v3/repos/o/r/contents/src/a.rs
        deny  GET    https://ghe.example.com/api/v3/repositories/4/contents/a.rs
        deny  GET    https://ghe.example.com/o/r/info/refs
        deny  POST   https://ghe.example.com/o/r/git-upload-pack
        deny  POST   https://ghe.example.com/api/v3/repos/o/r/pulls
        deny  PATCH  https://ghe.example.com/api/v3/repos/o/r/git/refs/heads/main
    ",
    );
}

#[test]
fn gitlab_rules() {
    check_cases(
        &scm_set(true, true),
        r"
        allow GET    https://gitlab.example.com/api/v4/projects/42
        allow GET    https://gitlab.example.com/api/v4/projects/group%2Fsub%2Fproj
        deny  GET    https://gitlab.example.com/api/v4/projects/group/sub/proj
        allow PUT    https://gitlab.example.com/api/v4/groups/acme/hooks
        allow DELETE https://gitlab.example.com/api/v4/groups/acme/hooks/3
        allow GET    https://gitlab.example.com/api/v4/groups/acme/projects
        allow GET    https://gitlab.example.com/api/v4/users/bob/projects
        allow PUT    https://gitlab.example.com/api/v4/projects/1/merge_requests/2/discussions/d/notes/9
        allow GET    https://gitlab.example.com/api/v4/personal_access_tokens/self
        deny  DELETE https://gitlab.example.com/api/v4/projects/1
        allow GET    https://gitlab.example.com/api/v4/projects/1/repository/files/src%2Fmain.rs/raw
        allow GET    https://gitlab.example.com/group/sub/proj/info/refs?service=git-upload-pack
        allow GET    https://gitlab.example.com/group/proj.git/info/refs
        deny  GET    https://gitlab.example.com/proj/info/refs
        allow POST   https://gitlab.example.com/group/sub/proj/git-upload-pack
        allow POST   https://gitlab.example.com/group/sub/proj/git-receive-pack
        allow POST   https://gitlab.example.com/api/v4/projects/1/merge_requests
        allow GET    https://gitlab.example.com/api/v4/projects/1/repository/commits
        allow POST   https://gitlab.example.com/api/v4/projects/1/repository/commits
    ",
    );
    assert!(CanonUrl::parse("https://gitlab.example.com//evil/info/refs").is_err());
    check_cases(
        &scm_set(false, true),
        r"
        allow GET    https://gitlab.example.com/api/v4/projects/42
        deny  GET    https://gitlab.example.com/api/v4/projects/1/repository/files/a/raw
        deny  GET    https://gitlab.example.com/group/sub/proj/info/refs
        deny  POST   https://gitlab.example.com/api/v4/projects/1/merge_requests
    ",
    );
}

#[test]
fn bitbucket_rules() {
    let a = scm_set(true, true);
    check_cases(
        &a,
        r"
        allow GET    https://bitbucket.example.com/rest/api/latest/application-properties
        allow PUT    https://bitbucket.example.com/rest/api/latest/projects/P/repos/r/pull-requests/1/comments/2
        deny  DELETE https://bitbucket.example.com/rest/api/latest/projects/P/repos/r/pull-requests/1/comments/2
        allow DELETE https://bitbucket.example.com/rest/api/latest/projects/P/webhooks/9
        allow GET    https://bitbucket.example.com/rest/api/latest/projects/P/repos/r/browse/src/a.py
        allow PUT    https://bitbucket.example.com/rest/api/latest/projects/P/repos/r/browse/src/a.py
        deny  DELETE https://bitbucket.example.com/rest/api/latest/projects/P/repos/r/browse/src/a.py
        deny  GET    https://bitbucket.example.com/rest/api/latest/admin/groups
        allow GET    https://bitbucket.example.com/scm/P/r/info/refs
        allow POST   https://bitbucket.example.com/scm/P/r/git-upload-pack
        deny  POST   https://bitbucket.example.com/scm/P/r/git-receive-pack
    ",
    );
    assert_eq!(
        decide(
            &a,
            "GET",
            "https://bitbucket.example.com/rest/api/latest/admin/groups"
        ),
        Err(DenyReason::NoPathMatch)
    );
    check_cases(
        &scm_set(false, true),
        r"
        allow GET    https://bitbucket.example.com/rest/api/latest/projects/P/repos/r
        deny  GET    https://bitbucket.example.com/rest/api/latest/projects/P/repos/r/browse/a
        deny  GET    https://bitbucket.example.com/scm/P/r/info/refs
    ",
    );
}

#[test]
fn azure_devops_rules() {
    check_cases(
        &scm_set(true, true),
        r"
        allow GET    https://dev.azure.com/org/_apis/connectionData
        allow GET    https://dev.azure.com/org/_apis/projects/p
        allow GET    https://dev.azure.com/org/p/_apis/git/repositories
        allow GET    https://dev.azure.com/org/p/_apis/git/repositories/r
        allow POST   https://dev.azure.com/org/p/_apis/git/repositories/r/refs
        allow GET    https://dev.azure.com/org/p/_apis/git/repositories/r/pullRequests/1/iterations/2/changes
        allow PATCH  https://dev.azure.com/org/p/_apis/git/repositories/r/pullRequests/1/threads
        allow PATCH  https://dev.azure.com/org/p/_apis/git/repositories/r/pullRequests/1/threads/2/comments/3
        allow PUT    https://dev.azure.com/org/p/_apis/hooks/subscriptions
        deny  PUT    https://dev.azure.com/org/_apis/hooks/subscriptions
        allow DELETE https://dev.azure.com/org/_apis/hooks/subscriptions/abc
        allow GET    https://vsaex.dev.azure.com/org/_apis/groupentitlements
        deny  GET    https://dev.azure.com/org/_apis/groupentitlements
        deny  GET    https://vsaex.dev.azure.com/org/_apis/connectionData
        allow GET    https://dev.azure.com/org/p/_apis/git/repositories/r/items?path=/a
        allow GET    https://dev.azure.com/org/p/_git/r/info/refs
        allow POST   https://dev.azure.com/org/p/_git/r/git-upload-pack
        deny  POST   https://dev.azure.com/org/p/_git/r/git-receive-pack
        allow POST   https://dev.azure.com/org/p/_apis/git/repositories/r/pushes
        allow GET    https://dev.azure.com/org/p/_apis/git/pullrequests/5
    ",
    );
    check_cases(
        &scm_set(false, true),
        r"
        allow GET    https://dev.azure.com/org/p/_apis/git/repositories/r
        deny  GET    https://dev.azure.com/org/p/_apis/git/repositories/r/items
        deny  POST   https://dev.azure.com/org/p/_apis/git/repositories/r/pushes
    ",
    );
    // On-prem collections keep their own host for the entitlements rule.
    let onprem = scm::rules(
        ScmKind::Azuredevops,
        0,
        "https://ado.corp.example/tfs",
        None,
        false,
    );
    let onprem = Allowlist::compile(onprem.expect("valid")).expect("compiles");
    check_cases(
        &onprem,
        "allow GET https://ado.corp.example/tfs/coll/_apis/groupentitlements",
    );
}

fn header_of<'a>(a: &'a Allowlist, method: &str, raw: &str) -> Vec<(&'a str, &'a str)> {
    let d = a.decide(method, &url(raw), &[]);
    let rule = d
        .rule()
        .unwrap_or_else(|| panic!("{method} {raw} must be allowed: {d:?}"));
    rule.spec
        .set_request_headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.expose()))
        .collect()
}

#[test]
fn token_headers_per_scm() {
    let a = scm_set(true, true);
    assert_eq!(
        header_of(&a, "GET", "https://ghe.example.com/o/r/info/refs"),
        vec![("Authorization", "Bearer ghp_token")]
    );
    assert_eq!(
        header_of(&a, "GET", "https://gitlab.example.com/api/v4/projects/1"),
        vec![("PRIVATE-TOKEN", "glpat-token")]
    );
    assert_eq!(
        header_of(
            &a,
            "GET",
            "https://bitbucket.example.com/rest/api/latest/projects/P"
        ),
        vec![("Authorization", "Bearer bbtoken")]
    );
    // base64(":adopat")
    assert_eq!(
        header_of(&a, "GET", "https://dev.azure.com/org/_apis/connectionData"),
        vec![("Authorization", "Basic OmFkb3BhdA==")]
    );
    assert_eq!(
        header_of(
            &a,
            "GET",
            "https://vsaex.dev.azure.com/org/_apis/groupentitlements"
        ),
        vec![("Authorization", "Basic OmFkb3BhdA==")]
    );
    let none = scm_set(true, false);
    assert!(header_of(&none, "GET", "https://ghe.example.com/api/v3/user").is_empty());
    // Specs never print the token.
    let specs = scm::rules(
        ScmKind::Github,
        0,
        GHE,
        Some(&Secret::new("ghp_token")),
        false,
    )
    .expect("ok");
    assert!(!format!("{specs:?}").contains("ghp_token"));
}

#[test]
fn scm_origins_name_the_entry_and_template() {
    let a = scm_set(true, true);
    let d = a.decide(
        "GET",
        &url("https://ghe.example.com/api/v3/repositories/7/pulls"),
        &[],
    );
    let rule = d.rule().expect("allowed");
    assert_eq!(
        rule.spec.origin,
        RuleOrigin::Scm {
            index: 0,
            kind: ScmKind::Github,
            template: "/repos/:owner/:repo/pulls"
        }
    );
    assert_eq!(
        rule.spec.url,
        r"https://ghe.example.com/api/v3/repositories/:id(\d+)/pulls"
    );
}

#[test]
fn two_gitlab_instances_with_different_bases() {
    let mut specs = scm::rules(
        ScmKind::Gitlab,
        0,
        "https://gl-a.example/api/v4",
        Some(&Secret::new("a")),
        true,
    )
    .expect("valid");
    specs.extend(
        scm::rules(
            ScmKind::Gitlab,
            1,
            "https://gl-b.example:8443/gitlab/api/v4/",
            Some(&Secret::new("b")),
            true,
        )
        .expect("valid"),
    );
    let a = Allowlist::compile(specs).expect("compiles");
    let pick = |raw: &str| {
        let d = a.decide("GET", &url(raw), &[]);
        let r = d.rule().unwrap_or_else(|| panic!("{raw}: {d:?}"));
        match r.spec.origin {
            RuleOrigin::Scm { index, .. } => {
                (index, r.spec.set_request_headers[0].1.expose().to_owned())
            }
            RuleOrigin::User { .. } => panic!("unexpected user rule"),
        }
    };
    assert_eq!(
        pick("https://gl-a.example/api/v4/projects/1"),
        (0, "a".to_owned())
    );
    assert_eq!(
        pick("https://gl-b.example:8443/gitlab/api/v4/projects/1"),
        (1, "b".to_owned())
    );
    // Git smart-HTTP lives under the web root (the base without `/api/v4`), not the host root.
    assert_eq!(
        pick("https://gl-b.example:8443/gitlab/g/p/info/refs"),
        (1, "b".to_owned())
    );
    assert!(
        !a.decide("GET", &url("https://gl-b.example:8443/g/p/info/refs"), &[])
            .is_allowed()
    );
    assert!(
        !a.decide(
            "GET",
            &url("https://gl-b.example:8443/api/v4/projects/1"),
            &[]
        )
        .is_allowed()
    );
    assert!(
        !a.decide(
            "GET",
            &url("https://gl-b.example/gitlab/api/v4/projects/1"),
            &[]
        )
        .is_allowed()
    );
}

#[test]
fn user_rules_come_before_scm_rules() {
    let mut user = rule("https://ghe.example.com/api/v3/repos/:o/:r", &["GET"]);
    user.set_request_headers = vec![("Authorization".to_owned(), Secret::new("Bearer user"))];
    let mut specs = vec![user];
    specs.extend(
        scm::rules(ScmKind::Github, 0, GHE, Some(&Secret::new("scm")), false).expect("valid"),
    );
    let a = Allowlist::compile(specs).expect("compiles");
    assert_eq!(
        header_of(&a, "GET", "https://ghe.example.com/api/v3/repos/o/r"),
        vec![("Authorization", "Bearer user")]
    );
    assert_eq!(
        header_of(&a, "GET", "https://ghe.example.com/api/v3/repos/o/r/pulls"),
        vec![("Authorization", "Bearer scm")]
    );
}

// ---------------------------------------------------------------------------------------------
// extra constraints

#[test]
fn path_files_allow_only_manifests() {
    let mut r = rule(
        "https://ghe.example.com/api/v3/repos/:o/:r/contents/*",
        &["GET"],
    );
    r.path_files = [
        "**/package.json",
        "**/pom.xml",
        ".snyk",
        "*.lock",
        "**/*.gradle",
    ]
    .map(String::from)
    .to_vec();
    let mut last_var = rule(
        "https://gl.example/api/v4/projects/:p/repository/files/:file/raw",
        &["GET"],
    );
    last_var.path_files = vec!["**/package.json".to_owned()];
    let a = compile(vec![r, last_var]);
    let base = "https://ghe.example.com/api/v3/repos/o/r/contents";
    for (path, ok) in [
        ("package.json", true),
        ("web/app/package.json", true),
        ("pom.xml", true),
        ("a/pom.xml", true),
        (".snyk", true),
        ("sub/.snyk", false),
        ("yarn.lock", true),
        ("sub/yarn.lock", false),
        ("x/build.gradle", true),
        ("src/main.rs", false),
        ("package.json.bak", false),
        ("package.json/evil", false),
        ("notpackage.json", false),
        ("web%2Fpackage.json", true),
        ("package%2Ejson", true),
        ("", false),
    ] {
        let raw = format!("{base}/{path}");
        assert_eq!(decide(&a, "GET", &raw).is_ok(), ok, "{raw}");
    }
    let files = "https://gl.example/api/v4/projects/1/repository/files";
    assert_eq!(
        decide(&a, "GET", &format!("{files}/app%2Fpackage.json/raw")),
        Ok(1)
    );
    let denied = decide(&a, "GET", &format!("{files}/secrets.env/raw"));
    match denied {
        Err(DenyReason::ConstraintFailed(m)) => {
            assert!(m.contains("#1") && m.contains("path_files"), "{m}");
        }
        other => panic!("expected a constraint failure, got {other:?}"),
    }
}

#[test]
fn query_and_header_constraints() {
    let mut q = rule("https://h.example/info/refs", &["GET"]);
    q.query = vec![(
        "service".to_owned(),
        ValueConstraint::Equals("git-upload-pack".to_owned()),
    )];
    let mut h = rule("https://h.example/api/*", &["POST"]);
    h.headers = vec![
        (
            "Content-Type".to_owned(),
            ValueConstraint::Prefix("application/json".to_owned()),
        ),
        (
            "X-Kind".to_owned(),
            ValueConstraint::OneOf(vec!["a".to_owned(), "b".to_owned()]),
        ),
    ];
    let fallback = rule("https://h.example/api/*", &["POST"]);
    let a = compile(vec![q, h]);
    assert_eq!(
        decide(
            &a,
            "GET",
            "https://h.example/info/refs?service=git-upload-pack"
        ),
        Ok(0)
    );
    assert_eq!(
        decide(
            &a,
            "GET",
            "https://h.example/info/refs?x=1&service=git%2Dupload%2Dpack"
        ),
        Ok(0)
    );
    for bad in [
        "https://h.example/info/refs",
        "https://h.example/info/refs?service=git-receive-pack",
        "https://h.example/info/refs?service=git-upload-pack&service=git-receive-pack",
        "https://h.example/info/refs?services=git-upload-pack",
    ] {
        match decide(&a, "GET", bad) {
            Err(DenyReason::ConstraintFailed(m)) => assert!(m.contains("\"service\""), "{m}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    let hdr = |pairs: &[(&'static str, &'static [u8])]| -> Vec<httparse::Header<'static>> {
        pairs
            .iter()
            .map(|&(name, value)| httparse::Header { name, value })
            .collect()
    };
    let good = hdr(&[
        ("content-type", b"application/json; charset=utf-8"),
        ("x-kind", b" b "),
    ]);
    assert_eq!(
        decide_with(&a, "POST", "https://h.example/api/x", &good),
        Ok(1)
    );
    for bad in [
        hdr(&[("content-type", b"text/plain"), ("x-kind", b"a")]),
        hdr(&[("content-type", b"application/json")]),
        hdr(&[
            ("content-type", b"application/json"),
            ("x-kind", b"a"),
            ("X-Kind", b"c"),
        ]),
        hdr(&[]),
    ] {
        assert!(
            matches!(
                decide_with(&a, "POST", "https://h.example/api/x", &bad),
                Err(DenyReason::ConstraintFailed(_))
            ),
            "{bad:?}"
        );
    }
    // A failed constraint falls through to the next rule that holds.
    let b = compile(vec![
        {
            let mut r = rule("https://h.example/api/*", &["POST"]);
            r.headers = vec![("X-Kind".to_owned(), ValueConstraint::Equals("a".to_owned()))];
            r
        },
        fallback,
    ]);
    assert_eq!(
        decide_with(
            &b,
            "POST",
            "https://h.example/api/x",
            &hdr(&[("x-kind", b"a")])
        ),
        Ok(0)
    );
    assert_eq!(
        decide_with(
            &b,
            "POST",
            "https://h.example/api/x",
            &hdr(&[("x-kind", b"z")])
        ),
        Ok(1)
    );
}

#[test]
fn compile_reports_every_bad_rule_at_once() {
    let mut bad_glob = rule("https://h.example/a/*", &["GET"]);
    bad_glob.path_files = vec![
        "src/**/x".to_owned(),
        "ok.json".to_owned(),
        "[ab].txt".to_owned(),
    ];
    let mut no_capture = rule("https://h.example/a", &["GET"]);
    no_capture.path_files = vec!["package.json".to_owned()];
    let mut empty_one_of = rule("https://h.example/b", &["GET"]);
    empty_one_of.query = vec![("x".to_owned(), ValueConstraint::OneOf(Vec::new()))];
    let mut bad_header = rule("https://h.example/c", &["GET"]);
    bad_header.headers = vec![(
        "Bad Header".to_owned(),
        ValueConstraint::Equals("v".to_owned()),
    )];
    let mut crlf = rule("https://h.example/d", &["GET"]);
    crlf.set_request_headers = vec![("X-Token".to_owned(), Secret::new("sekrit\r\nX-Evil: 1"))];
    let specs = vec![
        rule("https://h.example/ok", &["GET"]),
        rule("https://h.example/a//b", &["GET"]),
        rule("https://h.example/x", &["FE TCH"]),
        rule("https://h.example/x", &[]),
        rule(r"https://h.example/r/:id(\d+", &["GET"]),
        rule(r"https://h.example/r/:id([)", &["GET"]),
        bad_glob,
        no_capture,
        empty_one_of,
        bad_header,
        crlf,
        rule("https://h.example/x", &["CONNECT"]),
        rule("gopher://h.example/x", &["GET"]),
        rule("https://h.example/x?y=1", &["GET"]),
        rule("https://h.example/%2e%2e/x", &["GET"]),
        rule("https://h.example/ok2", &["GET"]),
    ];
    let errors = Allowlist::compile(specs).expect_err("must fail");
    let found: Vec<(usize, &str)> = errors.iter().map(|e| (e.rule, e.field)).collect();
    let expected = [
        (1, "url"),
        (2, "methods"),
        (3, "methods"),
        (4, "url"),
        (5, "url"),
        (6, "path_files"),
        (7, "path_files"),
        (8, "query"),
        (9, "headers"),
        (10, "set_request_headers"),
        (11, "methods"),
        (12, "url"),
        (13, "url"),
        (14, "url"),
    ];
    for e in expected {
        assert!(found.contains(&e), "missing {e:?} in {errors:?}");
    }
    assert!(
        !found.iter().any(|(i, _)| *i == 0 || *i == 15),
        "{errors:?}"
    );
    // Two bad globs in one rule are two errors.
    assert_eq!(found.iter().filter(|e| **e == (6, "path_files")).count(), 2);
    assert!(!format!("{errors:?}").contains("sekrit"));
    for e in &errors {
        assert!(!e.message.is_empty());
        assert!(
            e.to_string()
                .starts_with(&format!("rule {}: {}: ", e.rule, e.field))
        );
    }
}

#[test]
fn explain_lists_the_rules_that_match_the_path() {
    let mut constrained = rule("https://h.example/a/*", &["GET"]);
    constrained.query = vec![(
        "ref".to_owned(),
        ValueConstraint::Prefix("refs/".to_owned()),
    )];
    let a = compile(vec![
        rule("https://h.example/a/:x", &["POST"]),
        constrained,
        rule("https://h.example/other", &["GET"]),
    ]);
    let e = a.explain("GET", &url("https://h.example/a/b?ref=main"), &[]);
    assert!(!e.decision.is_allowed());
    let ids: Vec<usize> = e.path_matches.iter().map(|m| m.rule.id).collect();
    assert_eq!(ids, vec![0, 1]);
    assert!(!e.path_matches[0].method_allowed);
    assert!(e.path_matches[1].method_allowed);
    assert!(
        e.path_matches[1]
            .constraint_failure
            .as_deref()
            .is_some_and(|m| m.contains("\"ref\""))
    );
    let text = e.to_string();
    assert!(
        text.contains("denied: constraint failed") && text.contains("#0") && text.contains("#1"),
        "{text}"
    );
    let ok = a.explain("GET", &url("https://h.example/a/b?ref=refs/heads/x"), &[]);
    assert!(ok.decision.is_allowed());
    assert!(ok.to_string().starts_with("allowed by rule #1"));
    let none = a.explain("GET", &url("https://elsewhere.example/"), &[]);
    assert!(none.path_matches.is_empty());
    assert_eq!(
        DenyReason::NoRuleForOrigin.to_string(),
        "no rule for this scheme, host and port"
    );
}

/// A deterministic cost guard (timings belong to the benchmark): on the built-in set a decision
/// enters about one trie node per path segment, whatever the number of rules.
#[test]
fn decisions_walk_about_one_node_per_segment() {
    let a = scm_set(true, true);
    for (method, raw) in [
        (
            "GET",
            "https://ghe.example.com/api/v3/repos/acme/widget/pulls",
        ),
        (
            "GET",
            "https://ghe.example.com/api/v3/repositories/1234/contents/src/main.rs",
        ),
        (
            "POST",
            "https://ghe.example.com/acme/widget/git-upload-pack",
        ),
        (
            "GET",
            "https://gitlab.example.com/api/v4/projects/g%2Fp/repository/files/a%2Fb/raw",
        ),
        ("GET", "https://gitlab.example.com/grp/sub/proj/info/refs"),
        (
            "PUT",
            "https://bitbucket.example.com/rest/api/latest/projects/P/repos/r/browse/a/b.py",
        ),
        (
            "GET",
            "https://dev.azure.com/o/p/_apis/git/repositories/r/pullRequests/7/iterations/2/changes",
        ),
    ] {
        let u = url(raw);
        let segments = u.path.split('/').count() as u32 - 1;
        let e = a.explain(method, &u, &[]);
        assert!(e.decision.is_allowed(), "{method} {raw}");
        assert!(
            e.visits <= segments + 4,
            "{method} {raw}: {} visits for {segments} segments",
            e.visits
        );
    }
    // Ten thousand rules on one host: still a handful of visits.
    let specs = (0..10_000)
        .map(|i| rule(&format!("https://big.example/api/s{i}/items/:id"), &["GET"]))
        .collect();
    let big = compile(specs);
    let e = big.explain("GET", &url("https://big.example/api/s9876/items/1"), &[]);
    assert_eq!(e.decision.rule().map(|r| r.id), Some(9876));
    assert!(e.visits <= 6, "{} visits", e.visits);
}

#[test]
fn pathological_paths_stay_bounded_and_fail_closed() {
    let a = compile(vec![rule("https://h.example/*/*/*/:a/*/*/z", &["GET"])]);
    let deep = format!("https://h.example/{}y", "a/".repeat(2000));
    // The walk's work is counted, not timed: the splits five `*` can try over 2,000 segments
    // would be astronomically many; the walk stops at its budget of 2^15 node visits (the
    // trie's `BUDGET`) and denies rather than guess.
    let e = a.explain("GET", &url(&deep), &[]);
    assert!(!e.decision.is_allowed());
    assert_eq!(e.visits, 1 << 15, "the walk stops at its visit budget");
    // A path the pattern can settle within the budget is not cut short.
    let shallow = format!("https://h.example/{}y", "a/".repeat(8));
    let e = a.explain("GET", &url(&shallow), &[]);
    assert!(!e.decision.is_allowed());
    assert!(e.visits < 1 << 15, "{} visits for 9 segments", e.visits);
    assert_eq!(decide(&a, "GET", "https://h.example/1/2/3/4/5/6/z"), Ok(0));
}

// ---------------------------------------------------------------------------------------------
// property test: compiled trie == naive linear regex scan

const ORIGINS: [&str; 5] = [
    "https://a.example",
    "https://a.example:8443",
    "http://a.example",
    "https://b.example",
    "https://unlisted.example",
];
const SEGS: [&str; 6] = ["a", "b", "x", "1", "42", "a%2Fb"];
const REGEXES: [&str; 3] = [r"\d+", "[ab]+", "a|x"];
const PIECES: [&str; 4] = ["", "a", "b", "x"];
// Extension methods take the same path as standard ones once compiled (interned bits, pruned
// walk): both kinds are in the mix, plus requests with methods no rule lists.
const RULE_METHODS: [&str; 6] = ["GET", "POST", "PUT", "OPTIONS", "PROPFIND", "MKCOL"];
const REQ_METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "OPTIONS", "DELETE", "CONNECT", "PROPFIND", "MKCOL", "REPORT", "propfind",
];

#[derive(Debug, Clone)]
enum El {
    Lit(&'static str),
    Param,
    Re(&'static str),
    Star,
    Glob(&'static str, &'static str),
    Group,
}

#[derive(Debug, Clone)]
struct GenRule {
    origin: usize,
    elems: Vec<El>,
    trailing_slash: bool,
    methods: Vec<&'static str>,
    /// `X-K` must equal this value.
    header: Option<&'static str>,
}

const HEADER_VALUES: [&str; 2] = ["a", "b"];

impl GenRule {
    /// The pattern text, and the equivalent anchored regex over the path (written independently
    /// of the crate's parser, straight from the DESIGN.md semantics).
    fn render(&self) -> (String, String) {
        let (mut pat, mut re) = (String::from("/"), String::from("^/"));
        for (i, e) in self.elems.iter().enumerate() {
            let sep = i + 1 < self.elems.len() && !matches!(e, El::Group);
            let (p, r) = match e {
                El::Lit(s) => (s.to_string(), regex::escape(s)),
                El::Param => (format!(":p{i}"), "[^/]+".to_owned()),
                El::Re(x) => (format!(":r{i}({x})"), format!("(?:{x})")),
                El::Star => ("*".to_owned(), ".*".to_owned()),
                El::Glob(a, b) => (
                    format!("{a}*{b}"),
                    format!("{}.*{}", regex::escape(a), regex::escape(b)),
                ),
                El::Group => (format!("{{:g{i}/}}+"), "(?:[^/]+/)+".to_owned()),
            };
            pat.push_str(&p);
            re.push_str(&r);
            if sep {
                pat.push('/');
                re.push('/');
            }
        }
        let ends_in_group = matches!(self.elems.last(), Some(El::Group));
        if self.trailing_slash && !ends_in_group {
            pat.push('/');
            re.push('/');
        }
        re.push('$');
        (format!("{}{pat}", ORIGINS[self.origin]), re)
    }
}

fn el() -> impl Strategy<Value = El> {
    prop_oneof![
        5 => prop::sample::select(&SEGS[..]).prop_map(El::Lit),
        3 => Just(El::Param),
        1 => prop::sample::select(&REGEXES[..]).prop_map(El::Re),
        1 => Just(El::Star),
        1 => (prop::sample::select(&PIECES[..]), prop::sample::select(&PIECES[..]))
            .prop_map(|(a, b)| El::Glob(a, b)),
        1 => Just(El::Group),
    ]
}

fn gen_rule() -> impl Strategy<Value = GenRule> {
    (
        0..4usize,
        prop::collection::vec(el(), 1..5),
        any::<bool>(),
        prop::sample::subsequence(&RULE_METHODS[..], 1..=3),
        prop::option::weighted(0.25, prop::sample::select(&HEADER_VALUES[..])),
    )
        .prop_map(|(origin, elems, trailing_slash, methods, header)| GenRule {
            origin,
            elems,
            trailing_slash,
            methods,
            header,
        })
}

type GenRequest = (String, &'static str, Option<&'static str>);

fn gen_request() -> impl Strategy<Value = GenRequest> {
    (
        0..5usize,
        prop::collection::vec(prop::sample::select(&SEGS[..]), 1..7),
        any::<bool>(),
        prop::sample::select(&REQ_METHODS[..]),
        prop::option::of(prop::sample::select(&HEADER_VALUES[..])),
    )
        .prop_map(|(o, segs, slash, m, header)| {
            let slash = if slash { "/" } else { "" };
            (
                format!("{}/{}{slash}", ORIGINS[o], segs.join("/")),
                m,
                header,
            )
        })
}

/// A decision, with the constraint-failure message left out (the naive matcher has none).
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Allowed(usize),
    NoOrigin,
    NoPath,
    Method,
    Constraint,
}

impl From<Decision<'_>> for Expect {
    fn from(d: Decision<'_>) -> Expect {
        match d {
            Decision::Allowed { rule_id, .. } => Expect::Allowed(rule_id),
            Decision::Denied(DenyReason::NoRuleForOrigin) => Expect::NoOrigin,
            Decision::Denied(DenyReason::NoPathMatch) => Expect::NoPath,
            Decision::Denied(DenyReason::MethodNotAllowed) => Expect::Method,
            Decision::Denied(DenyReason::ConstraintFailed(_)) => Expect::Constraint,
        }
    }
}

struct NaiveRule {
    origin: usize,
    path: regex::Regex,
    methods: Vec<&'static str>,
    header: Option<&'static str>,
}

/// First rule in order whose origin, path regex, method and header constraint hold.
fn naive(
    rules: &[NaiveRule],
    origin: usize,
    path: &str,
    method: &str,
    header: Option<&str>,
) -> Expect {
    let (mut origin_seen, mut path_seen, mut constraint_failed) = (false, false, false);
    for (i, r) in rules.iter().enumerate() {
        if r.origin != origin {
            continue;
        }
        origin_seen = true;
        if !r.path.is_match(path) {
            continue;
        }
        path_seen = true;
        if !r.methods.contains(&method) {
            continue;
        }
        match r.header {
            Some(want) if header != Some(want) => constraint_failed = true,
            _ => return Expect::Allowed(i),
        }
    }
    match (origin_seen, path_seen, constraint_failed) {
        (false, _, _) => Expect::NoOrigin,
        (true, _, true) => Expect::Constraint,
        (true, false, false) => Expect::NoPath,
        (true, true, false) => Expect::Method,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn compiled_trie_agrees_with_naive_regex_scan(
        rules in prop::collection::vec(gen_rule(), 1..14),
        requests in prop::collection::vec(gen_request(), 24),
    ) {
        let mut specs = Vec::new();
        let mut reference = Vec::new();
        for r in &rules {
            let (pattern, re) = r.render();
            let mut spec = rule(&pattern, &r.methods);
            if let Some(v) = r.header {
                spec.headers = vec![("X-K".to_owned(), ValueConstraint::Equals(v.to_owned()))];
            }
            specs.push(spec);
            let path = regex::Regex::new(&re).map_err(|e| TestCaseError::fail(format!("{re}: {e}")))?;
            reference.push(NaiveRule { origin: r.origin, path, methods: r.methods.clone(), header: r.header });
        }
        let allowlist = Allowlist::compile(specs.clone())
            .map_err(|e| TestCaseError::fail(format!("{e:?} for {specs:#?}")))?;
        for (raw, method, header) in &requests {
            let u = url(raw);
            let origin = ORIGINS.iter().position(|o| raw.starts_with(&format!("{o}/"))).unwrap_or(usize::MAX);
            let expected = naive(&reference, origin, &u.path, method, *header);
            let headers: Vec<httparse::Header<'_>> = header
                .iter()
                .map(|v| httparse::Header { name: "x-k", value: v.as_bytes() })
                .collect();
            let got = Expect::from(allowlist.decide(method, &u, &headers));
            prop_assert_eq!(got, expected, "{} {} {:?} with {:#?}", method, raw, header,
                specs.iter().map(|s| (&s.url, &s.methods, &s.headers)).collect::<Vec<_>>());
        }
    }

    #[test]
    fn compiling_arbitrary_patterns_never_panics(
        parts in prop::collection::vec(prop::sample::select(&[
            "/", "a", ":", ":n", "(", ")", "\\d+", "[", "]", "{", "}", "+", "*", "\\", "%", "%2F", "%zz",
            "{:g/}+", ":id(\\d+)", ".", "..", "?", "#", "@", "é", "\\:", "\\*", " ", "|", "(?", "^", "$",
        ][..]), 0..14),
        globs in prop::collection::vec(prop::sample::select(&[
            "**/package.json", "*.lock", "a", "**", "*", "**/*", "a/*.x", "[x]", "", "/a", "a//b",
        ][..]), 0..3),
    ) {
        let mut r = rule(&format!("https://h.example/{}", parts.concat()), &["GET"]);
        r.path_files = globs.iter().map(|g| g.to_string()).collect();
        match Allowlist::compile(vec![r]) {
            Ok(a) => {
                // Whatever compiled must also decide without panicking.
                let _ = a.decide("GET", &url("https://h.example/a/b"), &[]);
            }
            Err(errors) => prop_assert!(errors.iter().all(|e| e.rule == 0 && !e.message.is_empty())),
        }
    }

    #[test]
    fn canonicalisation_is_idempotent_and_clean(
        host in prop::sample::select(&["h.example", "H.EXAMPLE:8443", "[::1]", "1.2.3.4", "u:p@h.example"][..]),
        parts in prop::collection::vec(prop::sample::select(&[
            "a", "/", ".", "..", "%2e", "%2E", "%2f", "%2F", "%", "%25", "%5c", "\\", ";", "@", ":",
            "%00", "%0a", "A", "~", "*", " ", "?", "#", "=", "&", "%41", "%zz", "+", "é",
        ][..]), 0..12),
    ) {
        let raw = format!("https://{host}{}", parts.concat());
        if let Ok(u) = CanonUrl::parse(&raw) {
            prop_assert!(u.path.starts_with('/'));
            prop_assert!(!u.path.contains("//"), "{}", u.path);
            prop_assert!(!u.path.contains('\\'));
            prop_assert!(!u.path.to_ascii_lowercase().contains("%5c"));
            let body = &u.path[1..];
            for seg in body.split('/') {
                let lower = seg.to_ascii_lowercase();
                prop_assert!(!matches!(lower.as_str(), "." | ".." | "%2e" | "%2e%2e" | ".%2e" | "%2e."), "{}", u.path);
            }
            let again = match &u.userinfo {
                Some(ui) => format!("{}://{ui}@{}{}", u.scheme, u.authority(), u.request_target()),
                None => u.to_string(),
            };
            prop_assert_eq!(CanonUrl::parse(&again), Ok(u));
        }
    }
}
