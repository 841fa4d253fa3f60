//! Allowlist decision time: the compiled trie against a naive baseline (a linear scan of
//! per-rule precompiled regexes, which is what the reference brokers do — or worse, they compile
//! per request).
//!
//! Cases: the built-in 4-SCM set (github + gitlab + bitbucket + azuredevops, code access on) and
//! generated rule sets of 10, 1,000 and 10,000 rules; hits (on a rule near the end of the list)
//! and misses; decision on an already canonicalised URL and parse + decide.
//!
//! Run: `cargo bench --bench allowlist -- --warm-up-time 1 --measurement-time 3`
//! Targets: ≤ 100 ns per decision on the 4-SCM set, ≤ 250 ns at 10,000 rules, ≥ 20× faster than
//! the regex baseline at 1,000 rules.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use wgbroker::allowlist::{Allowlist, CanonUrl, LogFlags, RuleOrigin, RuleSpec, Scheme};
use wgbroker::bench_support::four_scm_rules;

fn spec(url: String, methods: &[&str], index: usize) -> RuleSpec {
    RuleSpec {
        url,
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

/// `n` rules over 10 hosts, mixing literals, `:name`, `:name(\d+)`, `*` and `{:ns/}+`.
fn generated_specs(n: usize) -> Vec<RuleSpec> {
    (0..n)
        .map(|i| {
            let host = format!("https://h{}.example", i % 10);
            let (path, methods): (String, &[&str]) = match i % 4 {
                0 => (format!("/api/s{i}/items/:id"), &["GET"]),
                1 => (format!("/api/s{i}/items/:id/sub/*"), &["GET", "POST"]),
                2 => (format!(r"/org/:org/s{i}/:id(\d+)"), &["GET", "PUT"]),
                _ => (format!("/{{:ns/}}+s{i}/info/refs"), &["GET"]),
            };
            spec(format!("{host}{path}"), methods, i)
        })
        .collect()
}

/// Requests against a generated set of `n` rules: hits on rules near the end, and misses.
fn generated_requests(n: usize) -> Vec<(&'static str, &'static str, String)> {
    // The last rule of each of the four shapes (shape = id % 4).
    let id = |k: usize| (0..n).rev().find(|i| i % 4 == k).expect("n >= 4");
    let host = |i: usize| format!("https://h{}.example", i % 10);
    vec![
        (
            "hit",
            "GET",
            format!("{}/api/s{}/items/42", host(id(0)), id(0)),
        ),
        (
            "hit",
            "POST",
            format!("{}/api/s{}/items/42/sub/a/b.json", host(id(1)), id(1)),
        ),
        (
            "hit",
            "PUT",
            format!("{}/org/acme/s{}/12345", host(id(2)), id(2)),
        ),
        (
            "hit",
            "GET",
            format!("{}/grp/sub/s{}/info/refs", host(id(3)), id(3)),
        ),
        (
            "miss",
            "GET",
            format!("{}/api/s{}/items/42/x", host(id(0)), id(0)),
        ),
        (
            "miss",
            "DELETE",
            format!("{}/api/s{}/items/42", host(id(0)), id(0)),
        ),
        (
            "miss",
            "GET",
            format!("{}/org/acme/s{}/12a", host(id(2)), id(2)),
        ),
        (
            "miss",
            "GET",
            "https://unknown.example/api/s1/items/42".to_owned(),
        ),
    ]
}

fn scm_requests() -> Vec<(&'static str, &'static str, String)> {
    [
        ("hit", "GET", "https://ghe.example.com/api/v3/repos/acme/widget/pulls?state=open"),
        ("hit", "GET", "https://ghe.example.com/api/v3/repositories/1234/contents/src/main.rs"),
        ("hit", "POST", "https://ghe.example.com/acme/widget/git-upload-pack"),
        ("hit", "GET", "https://gitlab.example.com/api/v4/projects/grp%2Fsub%2Fproj/repository/files/a%2Fb.c/raw"),
        ("hit", "GET", "https://gitlab.example.com/grp/sub/proj/info/refs?service=git-upload-pack"),
        ("hit", "PUT", "https://bitbucket.example.com/rest/api/latest/projects/P/repos/r/browse/src/a.py"),
        ("hit", "GET", "https://dev.azure.com/org/proj/_apis/git/repositories/r/pullRequests/7/iterations/2/changes"),
        ("miss", "DELETE", "https://ghe.example.com/api/v3/repos/acme/widget/git/refs/heads/main"),
        ("miss", "GET", "https://bitbucket.example.com/rest/api/latest/admin/groups"),
        ("miss", "GET", "https://unknown.example.com/api/v3/repos/acme/widget"),
    ]
    .into_iter()
    .map(|(k, m, u)| (k, m, u.to_owned()))
    .collect()
}

/// The naive baseline: each rule's pattern as an anchored regex, scanned in order.
struct RegexScan {
    rules: Vec<(Scheme, String, u16, regex::Regex, Vec<String>)>,
}

impl RegexScan {
    fn new(specs: &[RuleSpec]) -> RegexScan {
        let rules = specs
            .iter()
            .map(|s| {
                let (origin, path) = split_origin(&s.url);
                let o = CanonUrl::parse(origin).expect("origin");
                let re = regex::Regex::new(&pattern_regex(path)).expect("pattern regex");
                (o.scheme, o.host, o.port, re, s.methods.clone())
            })
            .collect();
        RegexScan { rules }
    }

    fn decide(&self, method: &str, url: &CanonUrl) -> Option<usize> {
        self.rules
            .iter()
            .position(|(scheme, host, port, re, methods)| {
                *scheme == url.scheme
                    && *port == url.port
                    && *host == url.host
                    && methods.iter().any(|m| m == method)
                    && re.is_match(&url.path)
            })
    }
}

fn split_origin(url: &str) -> (&str, &str) {
    let start = url.find("://").map_or(0, |i| i + 3);
    match url[start..].find('/') {
        Some(i) => url.split_at(start + i),
        None => (url, "/"),
    }
}

/// Translates a pattern path to an anchored regex (the subset the benchmark rules use).
fn pattern_regex(path: &str) -> String {
    let mut re = String::from("^");
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('*') {
            re.push_str(".*");
            rest = r;
        } else if rest.starts_with("{:") {
            let end = rest.find("/}+").expect("group end") + 3;
            re.push_str("(?:[^/]+/)+");
            rest = &rest[end..];
        } else if let Some(r) = rest.strip_prefix(':') {
            let name_end = r
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(r.len());
            let r = &r[name_end..];
            if let Some(inner) = r.strip_prefix('(') {
                let close = inner.find(")").expect("regex end");
                re.push_str(&format!("(?:{})", &inner[..close]));
                rest = &inner[close + 1..];
            } else {
                re.push_str("[^/]+");
                rest = r;
            }
        } else {
            let next = rest.find(['*', ':', '{']).unwrap_or(rest.len());
            re.push_str(&regex::escape(&rest[..next]));
            rest = &rest[next..];
        }
    }
    re.push('$');
    re
}

fn bench_set(
    c: &mut Criterion,
    name: &str,
    specs: Vec<RuleSpec>,
    requests: &[(&str, &str, String)],
    baseline: bool,
) {
    let allowlist = Allowlist::compile(specs.clone()).expect("rules compile");
    let scan = baseline.then(|| RegexScan::new(&specs));
    let mut group = c.benchmark_group(name);
    for (i, (kind, method, raw)) in requests.iter().enumerate() {
        let url = CanonUrl::parse(raw).expect("canonical");
        let expect_hit = *kind == "hit";
        let decision = allowlist.decide(method, &url, &[]);
        assert_eq!(
            decision.is_allowed(),
            expect_hit,
            "{method} {raw}: {decision:?}"
        );
        if let Some(scan) = &scan {
            assert_eq!(
                scan.decide(method, &url),
                decision.rule().map(|r| r.id),
                "{method} {raw}"
            );
        }
        let id = format!("{kind}{i}");
        group.bench_with_input(BenchmarkId::new("decide", &id), &url, |b, url| {
            b.iter(|| {
                black_box(allowlist.decide(black_box(method), black_box(url), &[])).is_allowed()
            })
        });
        group.bench_with_input(BenchmarkId::new("parse+decide", &id), raw, |b, raw| {
            b.iter(|| match CanonUrl::parse(black_box(raw)) {
                Ok(u) => allowlist.decide(black_box(method), &u, &[]).is_allowed(),
                Err(_) => false,
            })
        });
        if let Some(scan) = &scan {
            group.bench_with_input(BenchmarkId::new("regex-scan", &id), &url, |b, url| {
                b.iter(|| scan.decide(black_box(method), black_box(url)))
            });
        }
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_set(c, "scm4", four_scm_rules(), &scm_requests(), true);
    for n in [10, 1_000, 10_000] {
        bench_set(
            c,
            &format!("gen{n}"),
            generated_specs(n),
            &generated_requests(n),
            n <= 1_000,
        );
    }
}

criterion_group!(allowlist, benches);
criterion_main!(allowlist);
