//! Semgrep YAML configurations: translation, overlays, errors, and the promise of `import` —
//! the imported TOML decides every request as the YAML does and dumps identically.

use std::path::{Path, PathBuf};

use super::*;
use crate::allowlist::{CanonUrl, Decision};
use crate::config::{ConfigErrors, LoadMode, Loaded, dump, load_str};

fn no_env(_: &str) -> Option<String> {
    None
}

fn example(name: &str) -> (PathBuf, String) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/semgrep")
        .join(name);
    let text = std::fs::read_to_string(&p).expect("example");
    (p, text)
}

fn load(layers: &[(PathBuf, String)]) -> Result<Loaded, ConfigErrors> {
    load_str(layers, LoadMode::Policy, &no_env)
}

fn errors(layers: &[(PathBuf, String)]) -> Vec<String> {
    match load(layers) {
        Ok(_) => panic!("expected errors"),
        Err(e) => {
            e.0.iter()
                .map(|e| format!("{}: {}", e.key, e.message))
                .collect()
        }
    }
}

fn yaml(text: &str) -> (PathBuf, String) {
    ("broker.yaml".into(), text.to_owned())
}

/// The decision on one request, as `explain` prints it: the rule (by origin) or the reason.
fn decide(l: &Loaded, method: &str, url: &str) -> String {
    let canon = CanonUrl::parse(url).expect("test url parses");
    match l.allowlist.explain(method, &canon, &[]).decision {
        Decision::Allowed { rule_id, rule } => {
            let headers: Vec<&str> = rule
                .spec
                .set_request_headers
                .iter()
                .map(|(n, _)| n.as_str())
                .collect();
            format!("ALLOWED #{rule_id} {} {headers:?}", rule.spec.origin)
        }
        Decision::Denied(r) => format!("DENIED {r}"),
    }
}

const REQUESTS: &[(&str, &str)] = &[
    ("GET", "https://ghe.example.com/api/v3/repos/acme/app"),
    (
        "POST",
        "https://ghe.example.com/api/v3/repos/acme/app/pulls/7/comments",
    ),
    ("DELETE", "https://ghe.example.com/api/v3/repos/acme/app"),
    (
        "GET",
        "https://ghe.example.com/api/v3/repos/acme/app/contents/src/main.rs",
    ),
    ("GET", "https://jira.example.com/rest/api/2/issue/ABC-1"),
    ("PUT", "https://jira.example.com/rest/api/2/issue/ABC-1"),
    (
        "GET",
        "https://jira.example.com/rest/api/2/issue/ABC-1/comments",
    ),
    ("GET", "https://wiki.example.com/"),
    ("GET", "https://wiki.example.com/a/b/c?x=1"),
    ("GET", "https://wiki.example.com"),
    ("GET", "https://gitlab.example.com/api/v4/projects/1"),
    (
        "GET",
        "https://gitlab.example.com/api/v4/projects/1/repository/files/a%2Fb.txt",
    ),
    (
        "GET",
        "https://gitlab.example.com/grp/sub/proj.git/info/refs?service=git-upload-pack",
    ),
    (
        "GET",
        "https://github.example.com/api/v3/repos/acme/app/contents/x",
    ),
    (
        "GET",
        "https://github-eu.example.com/api/v3/repos/acme/app/contents/x",
    ),
    (
        "GET",
        "https://bitbucket.example.com/rest/api/latest/projects/P/repos/r",
    ),
    (
        "GET",
        "https://ado.example.com/tfs/coll/proj/_apis/git/repositories",
    ),
    ("GET", "https://evil.example.com/"),
];

/// The TOML `import` prints for `layers`, as a layer of its own.
fn imported(layers: &[(PathBuf, String)]) -> (PathBuf, String) {
    let (overlay, tr) = overlay(layers, &no_env).expect("overlay");
    let files: Vec<PathBuf> = layers.iter().map(|(p, _)| p.clone()).collect();
    (
        "imported.toml".into(),
        render_import(&overlay.merged, &tr.notes, &files),
    )
}

#[test]
fn import_with_a_secrets_dir_moves_every_secret_to_a_0600_file_and_decides_the_same() {
    use std::os::unix::fs::PermissionsExt;
    let secrets: &[(&str, &[&str])] = &[
        (
            "github.yaml",
            &[
                "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=",
                "ghp_exampleexampleexample",
                "Bearer jira-example-token",
            ],
        ),
        (
            "multiple-scms.yaml",
            &[
                "ghp_first",
                "ghp_second",
                "glpat-third",
                "bb-fourth",
                "ado-fifth",
            ],
        ),
    ];
    for (name, values) in secrets {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("secrets");
        let (path, _) = example(name);
        let (toml, _) = import_with_secret_files(std::slice::from_ref(&path), &no_env, &out)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let mut written = Vec::new();
        for entry in std::fs::read_dir(&out).expect("secrets dir") {
            let p = entry.expect("entry").path();
            let mode = p.metadata().expect("metadata").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
            assert!(
                toml.contains(&format!("file = {:?}", p.display().to_string())),
                "{name}: {} referenced\n{toml}",
                p.display()
            );
            written.push(std::fs::read_to_string(&p).expect("read"));
        }
        let dir_mode = out.metadata().expect("metadata").permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        for v in *values {
            assert!(!toml.contains(v), "{name}: {v} printed\n{toml}");
            assert!(
                written.contains(&format!("{v}\n")),
                "{name}: {v} not in a file: {written:?}"
            );
        }
        // The secrets, read back from their files, give the same configuration.
        let from_yaml = load(&[example(name)]).expect("yaml");
        let from_files = load_str(&[("imported.toml".into(), toml)], LoadMode::Full, &no_env)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for (m, u) in REQUESTS {
            assert_eq!(
                decide(&from_yaml, m, u),
                decide(&from_files, m, u),
                "{m} {u}"
            );
        }
        assert_eq!(
            from_yaml.config.wireguard.private_key,
            from_files.config.wireguard.private_key
        );
        // A second import into the same place overwrites nothing.
        match import_with_secret_files(&[path], &no_env, &out) {
            Err(SecretsOut::Exists(p)) => assert!(p.starts_with(&out), "{}", p.display()),
            other => panic!("{name}: expected Exists, got {other:?}"),
        }
        assert_eq!(std::fs::read_dir(&out).expect("dir").count(), written.len());
    }
}

#[test]
fn semgrep_examples_decide_and_dump_as_their_imported_toml() {
    for name in [
        "github.yaml",
        "gitlab-code-access.yaml",
        "multiple-scms.yaml",
    ] {
        let layers = vec![example(name)];
        let from_yaml = load(&layers).unwrap_or_else(|e| panic!("{name}: {e}"));
        let toml = imported(&layers);
        let from_toml = load(std::slice::from_ref(&toml))
            .unwrap_or_else(|e| panic!("{name} imported: {e}\n{}", toml.1));
        assert_eq!(
            dump::render(&from_yaml.config),
            dump::render(&from_toml.config),
            "{name}"
        );
        for (m, u) in REQUESTS {
            assert_eq!(
                decide(&from_yaml, m, u),
                decide(&from_toml, m, u),
                "{name}: {m} {u}"
            );
        }
    }
    // And the decisions are the ones Semgrep's semantics give: first match wins, `:param` is
    // one segment, `*` any rest, user rules before the SCM's.
    let gh = load(&[example("github.yaml")]).expect("github");
    assert!(
        decide(
            &gh,
            "PUT",
            "https://jira.example.com/rest/api/2/issue/ABC-1"
        )
        .starts_with("ALLOWED #0 [[allow]] entry 0")
    );
    assert!(
        decide(
            &gh,
            "GET",
            "https://jira.example.com/rest/api/2/issue/ABC-1/comments"
        )
        .starts_with("DENIED")
    );
    assert!(decide(&gh, "GET", "https://wiki.example.com/a/b/c?x=1").starts_with("ALLOWED #1"));
    // An empty path is `/` (WHATWG URL parsing, as Semgrep's matcher does), so `/*` holds.
    assert!(decide(&gh, "GET", "https://wiki.example.com").starts_with("ALLOWED #1"));
    let comment = decide(
        &gh,
        "POST",
        "https://ghe.example.com/api/v3/repos/acme/app/pulls/7/comments",
    );
    assert!(
        comment.contains("scm[0]") && comment.contains("Authorization"),
        "{comment}"
    );
    assert!(
        decide(
            &gh,
            "GET",
            "https://ghe.example.com/api/v3/repos/acme/app/contents/src/main.rs"
        )
        .starts_with("DENIED"),
        "no code access"
    );
    let gl = load(&[example("gitlab-code-access.yaml")]).expect("gitlab");
    assert!(
        decide(
            &gl,
            "GET",
            "https://gitlab.example.com/grp/sub/proj.git/info/refs?service=git-upload-pack"
        )
        .starts_with("ALLOWED")
    );
    let many = load(&[example("multiple-scms.yaml")]).expect("multiple");
    assert!(
        decide(
            &many,
            "GET",
            "https://github.example.com/api/v3/repos/acme/app/contents/x"
        )
        .starts_with("DENIED")
    );
    assert!(
        decide(
            &many,
            "GET",
            "https://github-eu.example.com/api/v3/repos/acme/app/contents/x"
        )
        .starts_with("ALLOWED")
    );
}

#[test]
fn the_relay_example_is_refused_at_its_key() {
    let e = errors(&[example("relay.yaml")]);
    assert_eq!(
        e,
        [
            "outbound.relay: Semgrep's webhook relays are not translated (a JSONPath whose \
          `equals` or `contains` value matches, answered synchronously); write them as \
          [[outbound.relay]] in a TOML file (README: [outbound])"
        ]
    );
}

#[test]
fn every_semgrep_key_translates() {
    let (o, tr) = overlay(&[example("gitlab-code-access.yaml")], &no_env).expect("overlay");
    let m = &o.merged;
    let get = |p: &str| -> toml::Value {
        let mut v = toml::Value::Table(m.clone());
        for k in p.split('.') {
            v = match k.split_once('[') {
                Some((k, i)) => v[k][i.trim_end_matches(']').parse::<usize>().expect("i")].clone(),
                None => v[k].clone(),
            };
        }
        v
    };
    assert_eq!(get("wireguard.address").as_str(), Some("10.44.0.7"));
    assert_eq!(get("wireguard.mtu").as_integer(), Some(1280));
    assert_eq!(
        get("wireguard.peers[0].persistent_keepalive").as_integer(),
        Some(25)
    );
    assert_eq!(get("heartbeat.interval").as_str(), Some("45s"));
    assert_eq!(get("heartbeat.timeout").as_str(), Some("3s"));
    assert_eq!(get("inbound.listen_port").as_integer(), Some(8080));
    assert_eq!(get("upstream.tls_min_version").as_str(), Some("1.2"));
    assert_eq!(get("admin.listen").as_str(), Some("0.0.0.0:9100"));
    assert_eq!(get("scm[0].allow_code_access").as_bool(), Some(true));
    assert!(
        tr.notes
            .iter()
            .any(|n| n.text.contains("panicAfterFailureCount"))
    );
    // disablePersistentKeepalive is keepalive 0; Semgrep's defaults where ours differ.
    let (o, _) = super::overlay(&[example("multiple-scms.yaml")], &no_env).expect("overlay");
    let wg = &o.merged["wireguard"]["peers"][0];
    assert_eq!(wg["persistent_keepalive"].as_integer(), Some(0));
    assert_eq!(
        o.merged["upstream"]["tls_min_version"].as_str(),
        Some("1.3")
    );
    let (o, _) = super::overlay(&[example("github.yaml")], &no_env).expect("overlay");
    assert_eq!(o.merged["heartbeat"]["interval"].as_str(), Some("60s"));
}

const MINIMAL: &str = "inbound:
  wireguard:
    localAddress: 10.44.0.7
    privateKey: yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=
    peers:
      - publicKey: xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
        endpoint: gw.example:51820
        allowedIps: 10.44.0.1/32
";

#[test]
fn unknown_and_unsupported_keys_are_errors_naming_their_path() {
    let text = format!(
        "{MINIMAL}        presharedKey: x\n  logging:\n    skipPaths: [/healthcheck]\n    \
         logRequestBody: true\n  bogus: 1\n  allowlist:\n    - url: https://a.example/x\n      \
         methods: [GET]\n      Methodz: [POST]\nextra:\n  a: 1\n"
    );
    let e = errors(&[yaml(&text)]);
    let keys: Vec<&str> = e
        .iter()
        .map(|e| e.split(": ").next().unwrap_or(""))
        .collect();
    for k in [
        "inbound.wireguard.peers[0].presharedKey",
        "inbound.logging.skipPaths",
        "inbound.logging.logRequestBody",
        "inbound.bogus",
        "inbound.allowlist[0].Methodz",
        "extra",
    ] {
        assert!(keys.contains(&k), "{k} not in {e:?}");
    }
    assert_eq!(e.len(), 6, "{e:?}");
}

#[test]
fn keys_match_in_any_case_as_in_viper() {
    let text = MINIMAL
        .replace("localAddress", "LOCALADDRESS")
        .replace("allowedIps", "allowedips");
    let l = load(&[yaml(&text)]).expect("loads");
    assert_eq!(l.config.wireguard.address.to_string(), "10.44.0.7");
}

#[test]
fn validation_errors_name_the_yaml_key_they_came_from() {
    let text = format!(
        "{MINIMAL}  allowlist:\n    - url: https://*.example.com/x\n      methods: [GET]\n  \
         scms:\n    - type: github\n      baseUrl: not-a-url\n"
    )
    .replace("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=", "short");
    let e = errors(&[yaml(&text)]);
    let keys: Vec<&str> = e
        .iter()
        .map(|e| e.split(": ").next().unwrap_or(""))
        .collect();
    assert!(keys.contains(&"inbound.allowlist[0].url"), "{e:?}");
    assert!(
        keys.contains(&"inbound.wireguard.peers[0].publicKey"),
        "{e:?}"
    );
    assert!(keys.contains(&"inbound.scms[0].baseUrl"), "{e:?}");
}

#[test]
fn yaml_and_toml_overlay_in_any_order() {
    let over_toml = (
        PathBuf::from("over.toml"),
        "[inbound]\nlisten_port = 8081\n[wireguard]\nmtu = 1300\n".to_owned(),
    );
    let l = load(&[yaml(MINIMAL), over_toml.clone()]).expect("yaml then toml");
    assert_eq!(
        (l.config.inbound.listen_port, l.config.wireguard.mtu),
        (8081, 1300)
    );
    let base_toml = (
        PathBuf::from("base.toml"),
        "[inbound]\nlisten_port = 8081\n".to_owned(),
    );
    let over_yaml = yaml(&format!("{MINIMAL}  proxyListenPort: 9090\n"));
    let l = load(&[base_toml, over_yaml]).expect("toml then yaml");
    assert_eq!(l.config.inbound.listen_port, 9090);
}

#[test]
fn scms_merge_by_type_and_base_url_across_files() {
    let a = yaml(&format!(
        "{MINIMAL}  scms:\n    - type: github\n      baseUrl: https://ghe.example.com/api/v3\n      \
         token: t1\n    - type: gitlab\n      baseUrl: https://gl.example.com/api/v4\n"
    ));
    let b = (
        PathBuf::from("b.yaml"),
        "inbound:\n  scms:\n    - type: GitHub\n      baseUrl: https://GHE.example.com/api/v3/\n      \
         allowCodeAccess: true\n"
            .to_owned(),
    );
    let l = load(&[a, b]).expect("loads");
    let scm: Vec<(String, bool, bool)> = l
        .config
        .scm
        .iter()
        .map(|s| (s.base_url.clone(), s.allow_code_access, s.token.is_some()))
        .collect();
    assert_eq!(
        scm,
        [
            ("https://GHE.example.com/api/v3/".to_owned(), true, true),
            ("https://gl.example.com/api/v4".to_owned(), false, false),
        ]
    );
}

#[test]
fn yaml_syntax_errors_give_line_and_key_never_the_source() {
    let text = format!("{MINIMAL}  github:\n    token: \"ghp_S3CR3TVALUE\n    baseUrl: x\n");
    let e = load(&[yaml(&text)]).expect_err("syntax error").0;
    let shown = e[0].to_string();
    assert!(!shown.contains("S3CR3T"), "{shown}");
    assert!(shown.starts_with("broker.yaml:"), "{shown}");
    let text = format!("{MINIMAL}  github:\n    token: ghp_S3CR3TVALUE: [\n");
    let shown = load(&[yaml(&text)]).expect_err("syntax error").0[0].to_string();
    assert!(!shown.contains("S3CR3T"), "{shown}");
    assert!(shown.contains("inbound.github"), "{shown}");
}

#[test]
fn aliases_are_refused_before_they_expand() {
    let text = format!(
        "{MINIMAL}  allowlist: &a\n    - url: https://a.example/x\n      methods: [GET]\nmetrics: *a\n"
    );
    let e = errors(&[yaml(&text)]);
    assert!(e[0].contains("aliases"), "{e:?}");
}

#[test]
fn the_private_key_environment_variables_override_as_in_semgrep() {
    let env = |k: &str| {
        (k == "SEMGREP_NETWORK_BROKER_PRIVATE_KEY")
            .then(|| "wDXiFFuXE/Mo2fq41v4KSyuRJg/XBSvTYX76wBwH91c=".to_owned())
    };
    let l = load_str(&[yaml(MINIMAL)], LoadMode::Full, &env).expect("loads");
    assert_eq!(
        l.config.wireguard.private_key.to_base64(),
        "wDXiFFuXE/Mo2fq41v4KSyuRJg/XBSvTYX76wBwH91c="
    );
}

#[test]
fn yaml_is_recognised_by_extension_or_content() {
    assert!(is_yaml(Path::new("a.yml"), ""));
    assert!(is_yaml(
        Path::new("broker.conf"),
        "# c\n\ninbound:\n  x: 1\n"
    ));
    assert!(!is_yaml(Path::new("broker.conf"), "[wireguard]\n"));
    assert!(!is_yaml(Path::new("x.toml"), "inbound:\n"));
}

/// Semgrep's `inbound.wireguard.preferTcpTransport: true` (its WireGuard-over-TCP framing, which
/// ours is) is `[wireguard] transport = "tcp"`; `false` (Semgrep's UDP) keeps our `auto`, which
/// starts on UDP too, with a note.
#[test]
fn prefer_tcp_transport_maps_to_the_tcp_transport() {
    let with = |v: &str| {
        MINIMAL.replace(
            "    privateKey:",
            &format!("    preferTcpTransport: {v}\n    privateKey:"),
        )
    };
    let l = load(&[yaml(&with("true"))]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        l.config.wireguard.transport,
        crate::transport::Transport::Tcp
    );
    let (_, tr) = overlay(&[yaml(&with("false"))], &no_env).expect("overlay");
    assert!(
        tr.notes
            .iter()
            .any(|n| n.text.contains("preferTcpTransport")),
        "{:?}",
        tr.notes
    );
    let l = load(&[yaml(&with("false"))]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        l.config.wireguard.transport,
        crate::transport::Transport::Auto
    );
    let e = errors(&[yaml(&with("sometimes"))]);
    assert!(
        e.iter()
            .any(|e| e.starts_with("inbound.wireguard.preferTcpTransport")),
        "{e:?}"
    );
}
