//! [`Relays::decide`] against webhooks of GitHub, GitLab and Bitbucket Data Center: the payloads
//! in `fixtures/` are trimmed from the examples of each vendor's public webhook documentation
//! (GitHub "Webhook events and payloads", GitLab "Webhook events", Bitbucket Data Center "Event
//! payload"); the GitHub push gained a second commit touching a manifest. Signatures are
//! computed here.

use std::path::PathBuf;

use super::*;
use crate::secret::Secret;

const GITHUB_PUSH: &str = include_str!("fixtures/github-push.json");
const GITHUB_PR: &str = include_str!("fixtures/github-pull_request.json");
const GITHUB_PING: &str = include_str!("fixtures/github-ping.json");
const GITLAB_PUSH: &str = include_str!("fixtures/gitlab-push.json");
const GITLAB_MR: &str = include_str!("fixtures/gitlab-merge_request.json");
const BB_REFS: &str = include_str!("fixtures/bitbucket-refs_changed.json");
const BB_PR: &str = include_str!("fixtures/bitbucket-pr_opened.json");

const SECRET: &str = "It's a Secret to Everybody";

fn spec(name: &str, scm: WebhookScm) -> RelaySpec {
    RelaySpec {
        name: name.to_owned(),
        destination_url: "https://hooks.vendor.example/in".to_owned(),
        scm,
        secret: (scm != WebhookScm::None).then(|| Secret::new(SECRET)),
        secret_unavailable: None,
        events: Vec::new(),
        touches: Vec::new(),
        when: Vec::new(),
    }
}

fn relays(specs: Vec<RelaySpec>) -> Relays {
    let o = Outbound {
        listen: "127.0.0.1:8080".parse().expect("addr"),
        spool_dir: PathBuf::from("/nonexistent"),
        spool_max: 1 << 20,
        max_body: 64 << 10,
        retry_min: Outbound::DEFAULT_RETRY_MIN,
        retry_max: Outbound::DEFAULT_RETRY_MAX,
        delivery_timeout: Outbound::DEFAULT_DELIVERY_TIMEOUT,
        relay: specs,
    };
    Relays::compile(&o).expect("relays compile")
}

/// A GitHub delivery of `body` for `event`, signed with `secret`.
fn github(event: &str, body: &str, secret: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        ("Content-Type".into(), b"application/json".to_vec()),
        ("X-GitHub-Event".into(), event.as_bytes().to_vec()),
        (
            "X-GitHub-Delivery".into(),
            b"72d3162e-cc78-11e3-81ab-4c9367dc0958".to_vec(),
        ),
        (
            "X-Hub-Signature-256".into(),
            verify::sign_sha256(secret, body.as_bytes()).into_bytes(),
        ),
    ]
}

fn decide(r: &Relays, path: &str, headers: &[(String, Vec<u8>)], body: &str) -> Verdict {
    let h: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    r.decide(&Webhook {
        method: "POST",
        path,
        headers: &h,
        body: body.as_bytes(),
    })
}

fn reason(v: &Verdict) -> &str {
    match v {
        Verdict::Filtered { reason, .. } | Verdict::Refused { reason, .. } => reason,
        Verdict::Accept(_) => "accepted",
    }
}

/// The Snyk-style relay of the issue: pushes touching a manifest, pull requests being opened.
fn snyk_like() -> Relays {
    let mut s = spec("github", WebhookScm::Github);
    s.events = vec!["push".into(), "pull_request".into()];
    s.touches = vec![
        "**/package.json".into(),
        "**/pom.xml".into(),
        "**/.snyk".into(),
    ];
    relays(vec![s])
}

#[test]
fn github_push_touching_a_manifest_is_accepted_with_its_headers() {
    let r = snyk_like();
    let v = decide(
        &r,
        "/relay/github",
        &github("push", GITHUB_PUSH, SECRET),
        GITHUB_PUSH,
    );
    let Verdict::Accept(a) = v else {
        panic!("expected accepted, got {v:?}")
    };
    assert_eq!(a.event.as_deref(), Some("push"));
    assert_eq!(
        a.delivery.as_deref(),
        Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
    );
    let names: Vec<&str> = a.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "Content-Type",
            "X-GitHub-Event",
            "X-GitHub-Delivery",
            "X-Hub-Signature-256"
        ]
    );
}

#[test]
fn github_push_touching_no_manifest_is_filtered() {
    let r = snyk_like();
    let body = GITHUB_PUSH.replace("web/package.json", "web/index.js");
    let v = decide(&r, "/relay/github", &github("push", &body, SECRET), &body);
    assert_eq!(v.status(), 200, "{v:?}");
    assert!(reason(&v).starts_with("touches: none of the 3"), "{v:?}");
    assert!(v.body().contains(r#""relayed":false"#));
}

#[test]
fn github_pull_request_lists_no_files_so_touches_does_not_filter_it() {
    let r = snyk_like();
    let v = decide(
        &r,
        "/relay/github",
        &github("pull_request", GITHUB_PR, SECRET),
        GITHUB_PR,
    );
    assert_eq!(v.status(), 202, "{v:?}");
}

#[test]
fn github_ping_is_not_a_relayed_event() {
    let r = snyk_like();
    let v = decide(
        &r,
        "/relay/github",
        &github("ping", GITHUB_PING, SECRET),
        GITHUB_PING,
    );
    assert_eq!(v.status(), 200);
    assert_eq!(reason(&v), "events: not one of the relayed events");
}

#[test]
fn when_one_of_on_the_action() {
    let mut s = spec("github", WebhookScm::Github);
    s.when = vec![WhenSpec {
        pointer: Some("/action".into()),
        one_of: Some(vec![
            "opened".into(),
            "synchronize".into(),
            "reopened".into(),
        ]),
        ..WhenSpec::default()
    }];
    let r = relays(vec![s]);
    let h = github("pull_request", GITHUB_PR, SECRET);
    assert_eq!(decide(&r, "/relay/github", &h, GITHUB_PR).status(), 202);
    let closed = GITHUB_PR.replace(r#""action": "opened""#, r#""action": "closed""#);
    let v = decide(
        &r,
        "/relay/github",
        &github("pull_request", &closed, SECRET),
        &closed,
    );
    assert_eq!(v.status(), 200);
    assert!(
        reason(&v).starts_with(r#"when[0] pointer "/action" one_of"#),
        "{v:?}"
    );
}

#[test]
fn answers_for_bad_requests() {
    let r = snyk_like();
    let h = github("push", GITHUB_PUSH, SECRET);
    assert_eq!(decide(&r, "/relay/gitlab", &h, GITHUB_PUSH).status(), 404);
    assert_eq!(decide(&r, "/hooks/github", &h, GITHUB_PUSH).status(), 404);
    assert_eq!(
        decide(&r, "/relay/github?x=1", &h, GITHUB_PUSH).status(),
        202
    );
    let wrong = github("push", GITHUB_PUSH, "not the secret");
    let v = decide(&r, "/relay/github", &wrong, GITHUB_PUSH);
    assert_eq!(v.status(), 401);
    assert_eq!(reason(&v), "X-Hub-Signature-256 does not match the secret");
    let unsigned: Vec<_> = h.iter().take(3).cloned().collect();
    assert_eq!(
        decide(&r, "/relay/github", &unsigned, GITHUB_PUSH).status(),
        401
    );
    let big = format!("{GITHUB_PUSH}{}", " ".repeat(64 << 10));
    assert_eq!(
        decide(&r, "/relay/github", &github("push", &big, SECRET), &big).status(),
        413
    );
    let not_json = "not json";
    assert_eq!(
        decide(
            &r,
            "/relay/github",
            &github("push", not_json, SECRET),
            not_json
        )
        .status(),
        400
    );
    let hv: Vec<(&str, &[u8])> = h.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
    let get = r.decide(&Webhook {
        method: "GET",
        path: "/relay/github",
        headers: &hv,
        body: b"",
    });
    assert_eq!(get.status(), 405);
}

#[test]
fn a_bad_signature_is_refused_before_any_filter_says_anything() {
    // An unauthenticated caller must not learn which events pass.
    let r = snyk_like();
    let v = decide(&r, "/relay/github", &github("ping", "{}", "wrong"), "{}");
    assert_eq!(v.status(), 401);
}

#[test]
fn form_encoded_github_deliveries_are_read_for_filters_and_relayed_as_sent() {
    let r = snyk_like();
    let mut form = String::from("payload=");
    for b in GITHUB_PUSH.bytes() {
        if b.is_ascii_alphanumeric() {
            form.push(b as char);
        } else {
            form.push_str(&format!("%{b:02X}"));
        }
    }
    let mut h = github("push", &form, SECRET);
    h[0].1 = b"application/x-www-form-urlencoded".to_vec();
    assert_eq!(decide(&r, "/relay/github", &h, &form).status(), 202);
}

fn gitlab(event: &str, token: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        ("Content-Type".into(), b"application/json".to_vec()),
        ("X-Gitlab-Event".into(), event.as_bytes().to_vec()),
        ("X-Gitlab-Token".into(), token.as_bytes().to_vec()),
        (
            "X-Gitlab-Event-UUID".into(),
            b"13792a34-cac6-4fda-95a8-c58e00a3954e".to_vec(),
        ),
    ]
}

#[test]
fn gitlab_push_and_merge_request() {
    let mut s = spec("gl", WebhookScm::Gitlab);
    s.events = vec!["Push Hook".into(), "Merge Request Hook".into()];
    s.touches = vec!["CHANGELOG".into()];
    let r = relays(vec![s]);
    let v = decide(&r, "/relay/gl", &gitlab("Push Hook", SECRET), GITLAB_PUSH);
    let Verdict::Accept(a) = &v else {
        panic!("{v:?}")
    };
    assert_eq!(
        a.delivery.as_deref(),
        Some("13792a34-cac6-4fda-95a8-c58e00a3954e")
    );
    assert!(
        a.headers.iter().all(|(n, _)| n != "X-Gitlab-Token"),
        "the token is the secret itself: never forwarded"
    );
    assert_eq!(
        decide(
            &r,
            "/relay/gl",
            &gitlab("Merge Request Hook", SECRET),
            GITLAB_MR
        )
        .status(),
        202
    );
    assert_eq!(
        decide(&r, "/relay/gl", &gitlab("Note Hook", SECRET), GITLAB_MR).status(),
        200
    );
    assert_eq!(
        decide(&r, "/relay/gl", &gitlab("Push Hook", "guess"), GITLAB_PUSH).status(),
        401
    );
}

fn bitbucket(event: &str, body: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "Content-Type".into(),
            b"application/json; charset=utf-8".to_vec(),
        ),
        ("X-Event-Key".into(), event.as_bytes().to_vec()),
        (
            "X-Request-Id".into(),
            b"fbee1a7c-3f1e-4d1b-9a0c-0d4b5e6f7a8b".to_vec(),
        ),
        (
            "X-Hub-Signature".into(),
            verify::sign_sha256(SECRET, body.as_bytes()).into_bytes(),
        ),
    ]
}

#[test]
fn bitbucket_data_center_refs_changed_and_pr_opened() {
    let mut s = spec("bb", WebhookScm::Bitbucket);
    s.events = vec!["repo:refs_changed".into(), "pr:opened".into()];
    s.touches = vec!["**/pom.xml".into()];
    s.when = vec![WhenSpec {
        pointer: Some("/changes/*/refId".into()),
        prefix: Some("refs/heads/".into()),
        ..WhenSpec::default()
    }];
    let r = relays(vec![s.clone()]);
    // refs_changed lists no files: touches does not filter it; the branch filter holds.
    assert_eq!(
        decide(
            &r,
            "/relay/bb",
            &bitbucket("repo:refs_changed", BB_REFS),
            BB_REFS
        )
        .status(),
        202
    );
    let tag = BB_REFS.replace(
        r#""refId": "refs/heads/master""#,
        r#""refId": "refs/tags/v1""#,
    );
    let v = decide(&r, "/relay/bb", &bitbucket("repo:refs_changed", &tag), &tag);
    assert_eq!(v.status(), 200, "{v:?}");
    // A pull request has no `changes`: the `when` selects nothing and filters it out.
    let v = decide(&r, "/relay/bb", &bitbucket("pr:opened", BB_PR), BB_PR);
    assert!(reason(&v).contains("selects nothing"), "{v:?}");
    s.when.clear();
    let r = relays(vec![s]);
    assert_eq!(
        decide(&r, "/relay/bb", &bitbucket("pr:opened", BB_PR), BB_PR).status(),
        202
    );
}

#[test]
fn azure_devops_event_type_comes_from_the_body() {
    let mut s = spec("ado", WebhookScm::AzureDevops);
    s.secret = Some(Secret::new("hook:pa55"));
    s.events = vec!["git.push".into()];
    let r = relays(vec![s]);
    let body =
        r#"{"id":"03c164c2-8912-4d5e-8009-3707d5f83734","eventType":"git.push","resource":{}}"#;
    let h = vec![("Authorization".to_owned(), b"Basic aG9vazpwYTU1".to_vec())];
    let v = decide(&r, "/relay/ado", &h, body);
    let Verdict::Accept(a) = &v else {
        panic!("{v:?}")
    };
    assert_eq!(
        a.delivery.as_deref(),
        Some("03c164c2-8912-4d5e-8009-3707d5f83734")
    );
    let pr = body.replace("git.push", "git.pullrequest.created");
    assert_eq!(decide(&r, "/relay/ado", &h, &pr).status(), 200);
}

#[test]
fn header_conditions_and_scm_none() {
    let mut s = spec("any", WebhookScm::None);
    s.when = vec![WhenSpec {
        header: Some("X-GitHub-Event".into()),
        equals: Some("issue_comment".into()),
        ..WhenSpec::default()
    }];
    let r = relays(vec![s]);
    let h = github("issue_comment", "{}", "unused");
    assert_eq!(decide(&r, "/relay/any", &h, "not even json").status(), 202);
    let h = github("push", "{}", "unused");
    assert_eq!(decide(&r, "/relay/any", &h, "{}").status(), 200);
}

#[test]
fn compile_errors_name_every_bad_key() {
    let mut s = spec("bad name", WebhookScm::AzureDevops);
    s.destination_url = "ftp://x".into();
    s.touches = vec!["a?".into()];
    s.when = vec![WhenSpec::default()];
    let e = Relay::compile(&s).expect_err("an error");
    let keys: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "name",
            "destination_url",
            "secret",
            "touches",
            "when[0]",
            "when[0]"
        ]
    );
}

#[test]
fn destinations() {
    let d = Destination::parse("https://hooks.vendor.example/github?x=1").expect("ok");
    assert_eq!(
        (d.tls, d.host.as_str(), d.port, d.path.as_str()),
        (true, "hooks.vendor.example", 443, "/github?x=1")
    );
    let d = Destination::parse("http://[fd00::1]:8080").expect("ok");
    assert_eq!(
        (d.host.as_str(), d.port, d.path.as_str()),
        ("fd00::1", 8080, "/")
    );
    assert_eq!(d.ip(), "fd00::1".parse().ok());
    for bad in [
        "hooks.example/x",
        "https://u:p@h/",
        "https://h:0/",
        "https://h/#f",
        "https://bad host/",
        "https://[nope]/",
    ] {
        assert!(Destination::parse(bad).is_err(), "{bad}");
    }
}
