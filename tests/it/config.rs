//! Configuration: overlay semantics, secret sources, every error at once with file and key path.

use std::collections::HashMap;
use std::path::PathBuf;

use wgbroker::config::{self, ConfigErrors, LoadMode, Loaded, SecretSource};

const KEY_A: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
const PEER: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

fn base() -> String {
    format!(
        r#"
[wireguard]
private_key = "{KEY_A}"
address = "10.77.0.2"

[[wireguard.peers]]
public_key = "{PEER}"
endpoint = "gw.example.com:51820"
allowed_ips = ["10.77.0.1/32"]
"#
    )
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| m.get(k).cloned()
}

fn load(layers: &[(&str, &str)]) -> Result<Loaded, ConfigErrors> {
    load_env(layers, &env_of(&[]))
}

fn load_env(layers: &[(&str, &str)], env: &dyn config::SecretEnv) -> Result<Loaded, ConfigErrors> {
    let layers: Vec<(PathBuf, String)> = layers
        .iter()
        .map(|(n, t)| (PathBuf::from(n), t.to_string()))
        .collect();
    config::load_str(&layers, LoadMode::Full, env)
}

fn errors(layers: &[(&str, &str)]) -> Vec<String> {
    match load(layers) {
        Ok(_) => panic!("configuration unexpectedly valid"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let l = load(&[("a.toml", &base())]).expect("valid");
    let c = &l.config;
    assert_eq!(c.wireguard.listen_port, 0);
    assert_eq!(c.wireguard.mtu, 1320);
    assert_eq!(c.wireguard.peers[0].persistent_keepalive, 20);
    assert_eq!(c.wireguard.peers[0].endpoint.host, "gw.example.com");
    assert_eq!(c.wireguard.peers[0].endpoint.port, 51820);
    assert_eq!(c.inbound.listen_port, 80);
    assert!(c.heartbeat.is_none());
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9000");
}

#[test]
fn overlay_merges_tables_and_replaces_arrays() {
    let site = r#"
[wireguard]
mtu = 1380
[[wireguard.peers]]
public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
endpoint = "[2001:db8::1]:51820"
allowed_ips = ["10.77.0.1/32", "fd00::1/128"]
persistent_keepalive = 0
[inbound]
listen_port = 8080
"#;
    let l = load(&[("base.toml", &base()), ("site.toml", site)]).expect("valid");
    let wg = &l.config.wireguard;
    // Table merge: address from base, mtu from site.
    assert_eq!(wg.address.to_string(), "10.77.0.2");
    assert_eq!(wg.mtu, 1380);
    // Array replace: exactly the site's one peer.
    assert_eq!(wg.peers.len(), 1);
    assert_eq!(wg.peers[0].endpoint.host, "2001:db8::1");
    assert_eq!(wg.peers[0].allowed_ips.len(), 2);
    assert_eq!(wg.peers[0].persistent_keepalive, 0);
    assert_eq!(l.config.inbound.listen_port, 8080);
}

#[test]
fn every_error_is_reported_at_once_with_file_and_key() {
    let bad = r#"
[wireguard]
address = "10.77.0.300"
mtu = 70000
colour = "blue"
[[wireguard.peers]]
public_key = "short"
endpoint = "nohost"
allowed_ips = ["10.0.0.1/8"]
[inbound]
listen_port = "eighty"
[[scm]]
type = "perforce"
base_url = "https://p4.example.com"
[[allow]]
methods = ["GET"]
[upstream]
tls_min_version = "1.1"
[nonsense]
x = 1
"#;
    let errs = errors(&[("base.toml", &base()), ("site.toml", bad)]);
    let expect = [
        "site.toml: wireguard.address: invalid IP address",
        "site.toml: wireguard.mtu: 70000 is out of range",
        "site.toml: wireguard.colour: unknown key",
        "site.toml: wireguard.peers[0].public_key: key is not the correct length",
        "site.toml: wireguard.peers[0].endpoint: invalid endpoint",
        "site.toml: wireguard.peers[0].allowed_ips[0]: \"10.0.0.1/8\" has host bits set",
        "site.toml: inbound.listen_port: expected an integer",
        "site.toml: scm[0].type: unknown SCM type \"perforce\"",
        "site.toml: allow[0].url: missing required key",
        "site.toml: upstream.tls_min_version: \"1.1\" is not supported",
        "site.toml: nonsense: unknown key",
    ];
    for e in expect {
        assert!(
            errs.iter().any(|x| x.starts_with(e)),
            "missing {e:?} in {errs:#?}"
        );
    }
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    // The private key came from base.toml and is fine: nothing reported against it.
    assert!(!errs.iter().any(|e| e.contains("private_key")));
}

#[test]
fn toml_syntax_errors_name_the_file() {
    let errs = errors(&[("a.toml", &base()), ("broken.toml", "[wireguard\nx=1")]);
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("broken.toml:1:11: invalid TOML"),
        "{errs:?}"
    );
}

#[test]
fn toml_syntax_errors_give_place_and_key_never_the_source() {
    // (text, the secret on the broken line, where and at which key the error is reported)
    let cases = [
        (
            "[[scm]]\ntype = \"gitlab\"\ntoken = \"glpat-SECRET1\" x\n",
            "glpat-SECRET1",
            "s.toml:3:25: scm[0].token: invalid TOML: ",
        ),
        (
            "[wireguard]\nprivate_key = \"SECRET2/lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\naddress = \"10.0.0.1\"\n",
            "SECRET2",
            "s.toml:2:60: wireguard.private_key: invalid TOML: ",
        ),
        (
            "[wireguard]\nprivate_key = SECRET3+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n",
            "SECRET3",
            "s.toml:2:58: wireguard.private_key: invalid TOML: ",
        ),
        (
            "[[allow]]\nurl = \"https://j/\"\nset_request_headers = { Authorization = \"Basic SECRET4\" x }\n",
            "SECRET4",
            "s.toml:3:57: allow[0].set_request_headers.Authorization: invalid TOML: ",
        ),
        (
            "[[scm]]\ntype = \"github\"\n[[scm]]\ntype = \"gitlab\"\ntoken = 'glpat-SECRET5\n",
            "SECRET5",
            "s.toml:5:23: scm[1].token: invalid TOML: ",
        ),
        (
            "[wireguard]\naddress = \"10.0.0.1\"\n[[wireguard.peers]]\nendpoint = \"g:1\"\n[[wireguard.peers]]\npreshared_key = \"SECRET6\" \"\n",
            "SECRET6",
            "s.toml:6:27: wireguard.peers[1].preshared_key: invalid TOML: ",
        ),
        (
            "[[scm]]\ntoken = \"\"\"SECRET7\n[fake]\n",
            "SECRET7",
            "s.toml:3:7: scm[0].token: invalid TOML: ",
        ),
        // A token pasted on a line of its own: no key to name.
        (
            "[wireguard]\nglpat-SECRET8\n",
            "SECRET8",
            "s.toml:2:14: invalid TOML: ",
        ),
        (
            "[wireguard]\nprivate_key = \"SECRET9\"\nprivate_key = \"x\"\n",
            "SECRET9",
            "s.toml:3:1: wireguard.private_key: invalid TOML: duplicate key",
        ),
    ];
    for (text, secret, want) in cases {
        let errs = errors(&[("s.toml", text)]);
        assert_eq!(errs.len(), 1, "{text}: {errs:#?}");
        assert!(
            errs[0].starts_with(want),
            "{text}\nwant {want:?}\ngot  {:?}",
            errs[0]
        );
        assert!(
            !errs[0].contains(secret),
            "{text}\nleaks {secret}: {}",
            errs[0]
        );
        assert!(!errs[0].contains('\n'), "one line: {:?}", errs[0]);
    }
}

#[test]
fn missing_sections_and_keys_are_errors() {
    let errs = errors(&[("empty.toml", "")]);
    assert_eq!(
        errs,
        ["empty.toml: wireguard: missing required section [wireguard]"]
    );
    let errs = errors(&[("a.toml", "[wireguard]\n")]);
    for key in ["private_key", "address", "peers"] {
        assert!(
            errs.iter()
                .any(|e| e.contains(&format!("wireguard.{key}: "))),
            "{key}: {errs:?}"
        );
    }
}

#[test]
fn secrets_from_every_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("key"), format!("{KEY_A}\n")).expect("write");
    std::fs::write(dir.path().join("gl.token"), "glpat-fromfile\n").expect("write");
    std::fs::create_dir(dir.path().join("creds")).expect("mkdir");
    std::fs::write(dir.path().join("creds/gh"), "ghp-fromcredential").expect("write");
    let cfg = format!(
        r#"
[wireguard]
private_key = {{ file = "{key}" }}
address = "fd00::2"
[[wireguard.peers]]
public_key = "{PEER}"
endpoint = "gw.example.com:51820"
allowed_ips = ["fd00::1/128"]
[[scm]]
type = "github"
base_url = "https://ghe.example.com/api/v3"
token = {{ credential = "gh" }}
[[scm]]
type = "gitlab"
base_url = "https://gitlab.example.com/api/v4"
token = {{ file = "{gl}" }}
[[allow]]
url = "https://jira.example.com/rest/api/2/issue/:key"
methods = ["get"]
set_request_headers = {{ Authorization = {{ env = "JIRA_AUTH" }}, X-Inline = "inline-value" }}
"#,
        key = dir.path().join("key").display(),
        gl = dir.path().join("gl.token").display(),
    );
    let creds = dir.path().join("creds").display().to_string();
    let env = env_of(&[
        ("JIRA_AUTH", "Basic amlyYTpzZWNyZXQ="),
        ("CREDENTIALS_DIRECTORY", &creds),
    ]);
    let l = load_env(&[("a.toml", &cfg)], &env).expect("valid");
    let c = &l.config;
    assert_eq!(
        c.wireguard.private_key.to_base64(),
        KEY_A,
        "file secret, trailing newline trimmed"
    );
    assert!(matches!(
        c.wireguard.private_key_source,
        SecretSource::File(_)
    ));
    let gh = c.scm[0].token.as_ref().expect("token");
    assert_eq!(gh.value.expose(), "ghp-fromcredential");
    assert_eq!(*gh.source(), SecretSource::Credential("gh".into()));
    assert_eq!(
        c.scm[1].token.as_ref().expect("token").value.expose(),
        "glpat-fromfile"
    );
    let hdrs = &c.allow[0].set_request_headers;
    assert_eq!(c.allow[0].methods, ["GET"]);
    let get = |n: &str| {
        hdrs.iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.expose().to_owned())
    };
    assert_eq!(
        get("Authorization").as_deref(),
        Some("Basic amlyYTpzZWNyZXQ=")
    );
    assert_eq!(get("X-Inline").as_deref(), Some("inline-value"));

    // The dump shows sources, never values.
    let dump = config::dump::render(c);
    for secret in [
        "ghp-fromcredential",
        "glpat-fromfile",
        "amlyYTpzZWNyZXQ",
        "inline-value",
        KEY_A,
    ] {
        assert!(!dump.contains(secret), "{secret} leaked into dump:\n{dump}");
    }
    assert!(dump.contains("credential = \"gh\""), "{dump}");
    // A header value too: its source, or `<redacted>` when it is written inline.
    let doc: toml::Table = toml::from_str(&dump).expect("dump is TOML");
    let headers = &doc["rules"][0]["set_request_headers"];
    assert_eq!(
        headers["Authorization"]["env"].as_str(),
        Some("JIRA_AUTH"),
        "{dump}"
    );
    assert_eq!(headers["X-Inline"].as_str(), Some("<redacted>"), "{dump}");
}

#[test]
fn unreadable_secrets_are_errors_that_do_not_leak() {
    let cfg = format!(
        r#"
[wireguard]
private_key = {{ env = "NO_SUCH_VAR" }}
address = "10.77.0.2"
[[wireguard.peers]]
public_key = "{PEER}"
endpoint = "gw.example.com:51820"
allowed_ips = ["10.77.0.1/32"]
preshared_key = {{ credential = "psk" }}
[[scm]]
type = "gitlab"
base_url = "https://gitlab.example.com/api/v4"
token = {{ file = "/nonexistent/token", env = "X" }}
[[allow]]
url = "https://a.example.com/x"
methods = ["GET"]
set_request_headers = {{ X-Token = {{ vault = "x" }} }}
"#
    );
    let errs = errors(&[("a.toml", &cfg)]);
    let expect = [
        "a.toml: wireguard.private_key.env: environment variable NO_SUCH_VAR is not set",
        "a.toml: wireguard.peers[0].preshared_key.credential: credential \"psk\" requested but $CREDENTIALS_DIRECTORY is not set",
        "a.toml: scm[0].token: a secret table needs exactly one of",
        "a.toml: allow[0].set_request_headers.X-Token.vault: unknown secret source",
    ];
    for e in expect {
        assert!(
            errs.iter().any(|x| x.starts_with(e)),
            "missing {e:?} in {errs:#?}"
        );
    }
    // A wrong inline key is reported without echoing it.
    let errs = errors(&[(
        "b.toml",
        &base().replace(KEY_A, "c2VjcmV0LXRoYXQtaXMtbm90LWEta2V5LXNlY3JldA=="),
    )]);
    assert!(errs.iter().all(|e| !e.contains("c2VjcmV0")), "{errs:?}");
    assert!(
        errs.iter()
            .any(|e| e.contains("wireguard.private_key: key is not"))
    );
}

#[test]
fn policy_mode_tolerates_unavailable_secrets() {
    let layers = vec![(PathBuf::from("ex.toml"), config::EXAMPLE.to_owned())];
    let l = config::load_str(&layers, LoadMode::Policy, &env_of(&[]))
        .expect("the shipped example loads in policy mode");
    assert!(!l.warnings.is_empty());
    assert!(
        config::load_str(&layers, LoadMode::Full, &env_of(&[])).is_err(),
        "full mode needs the credentials"
    );
}

#[test]
fn heartbeat_must_be_reachable_through_the_tunnel() {
    let hb = "[heartbeat]\nurl = \"http://192.0.2.1/ping\"\n";
    let errs = errors(&[("a.toml", &base()), ("hb.toml", hb)]);
    assert!(
        errs.iter().any(|e| e
            .starts_with("hb.toml: heartbeat.url: 192.0.2.1 is not inside any peer's allowed_ips")),
        "{errs:?}"
    );
    let ok = "[heartbeat]\nurl = \"http://10.77.0.1/ping\"\ninterval = \"15s\"\n";
    let l = load(&[("a.toml", &base()), ("hb.toml", ok)]).expect("valid");
    let hb = l.config.heartbeat.expect("heartbeat");
    assert_eq!(hb.interval.as_secs(), 15);
}

#[test]
fn heartbeat_urls_are_taken_apart_at_load() {
    use wgbroker::config::HeartbeatUrl;
    let p = |u: &str| HeartbeatUrl::parse(u);
    let t = p("https://10.77.0.1/ping?x=1").expect("valid");
    assert!(t.tls);
    assert_eq!(t.addr, "10.77.0.1:443".parse().expect("addr"));
    assert_eq!(
        (t.authority.as_str(), t.path.as_str()),
        ("10.77.0.1", "/ping?x=1")
    );
    let t = p("http://10.77.0.1:8080").expect("valid");
    assert!(!t.tls);
    assert_eq!(t.addr, "10.77.0.1:8080".parse().expect("addr"));
    assert_eq!(t.path, "/");
    let t = p("https://[fd00::1]:8443/hb").expect("valid");
    assert_eq!(t.addr, "[fd00::1]:8443".parse().expect("addr"));
    assert_eq!(t.authority, "[fd00::1]:8443");
    assert_eq!(p("http://[fd00::1]").expect("valid").addr.port(), 80);
    for (bad, why) in [
        ("ftp://10.77.0.1/", "http:// or https://"),
        ("https://gateway.example/ping", "must be an IP address"),
        ("http://10.77.0.1:0/", "not a port number"),
        ("http://10.77.0.1:http/", "not a port number"),
        ("http://10.77.0.1/ping#top", "fragment"),
    ] {
        let e = p(bad).expect_err(bad);
        assert!(e.contains(why), "{bad}: {e}");
    }
    // At load, the error names the key.
    let hb = "[heartbeat]\nurl = \"https://10.77.0.1:99999/\"\n";
    let errs = errors(&[("a.toml", &base()), ("hb.toml", hb)]);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("hb.toml: heartbeat.url: \"99999\" is not a port number")),
        "{errs:?}"
    );
}

#[test]
fn runtime_profiles_validate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("perf/profiles");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("perf/profiles exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).expect("read");
            let name = path.display().to_string();
            if let Err(e) = load(&[("base.toml", &base()), (&name, &text)]) {
                panic!("{e}");
            }
            n += 1;
        }
    }
    assert!(n >= 1, "no profile found in {}", dir.display());
}

#[test]
fn the_default_profile_is_the_built_in_runtime_written_out() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("perf/profiles/default.toml");
    let text = std::fs::read_to_string(&path).expect("perf/profiles/default.toml");
    let built_in = load(&[("base.toml", &base())]).expect("base");
    let written = load(&[("base.toml", &base()), ("default.toml", &text)]).expect("profile");
    assert_eq!(
        format!("{:?}", written.config.runtime),
        format!("{:?}", built_in.config.runtime),
        "perf/profiles/default.toml and the defaults in src/config/sections.rs disagree"
    );
    assert_eq!(built_in.config.runtime.tcp_tx_buffer, 256 << 10);
    assert_eq!(built_in.config.runtime.tcp_rx_buffer, 64 << 10);
}

#[test]
fn spin_without_pinning_is_a_warning_naming_the_file() {
    let rt = "[runtime]\npin = false\nspin_before_park = \"50us\"\n";
    let l = load(&[("a.toml", &base()), ("rt.toml", rt)]).expect("still valid");
    let w: Vec<String> = l.warnings.iter().map(ToString::to_string).collect();
    assert!(
        w.iter()
            .any(|w| w.starts_with("rt.toml: runtime.spin_before_park: has no effect")),
        "{w:?}"
    );
    let pinned = "[runtime]\npin = true\nspin_before_park = \"50us\"\n";
    let l = load(&[("a.toml", &base()), ("rt.toml", pinned)]).expect("valid");
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[test]
fn tcp_ack_delay_defaults_to_5ms_zero_acks_at_once_and_is_capped() {
    let l = load(&[("a.toml", &base())]).expect("valid");
    assert_eq!(
        l.config.runtime.tcp_ack_delay,
        std::time::Duration::from_millis(5)
    );
    let off = "[runtime]\ntcp_ack_delay = \"0s\"\n";
    let l = load(&[("a.toml", &base()), ("rt.toml", off)]).expect("0s is valid");
    assert!(l.config.runtime.tcp_ack_delay.is_zero());
    let long = "[runtime]\ntcp_ack_delay = \"600ms\"\n";
    let e = errors(&[("a.toml", &base()), ("rt.toml", long)]);
    assert!(
        e.iter()
            .any(|e| e.contains("runtime.tcp_ack_delay: must be at most 500ms")),
        "{e:?}"
    );
}

#[test]
fn value_errors_never_echo_a_secret() {
    // A secret of the wrong type, or a secret table of the wrong shape: the error names the key
    // and the type, never the value.
    for (layer, secret) in [
        ("[wireguard]\nprivate_key = [\"SECRETa\"]\n", "SECRETa"),
        (
            "[[scm]]\ntype = \"gitlab\"\nbase_url = \"https://g.example/api/v4\"\ntoken = { value = \"SECRETb\" }\n",
            "SECRETb",
        ),
        (
            "[[scm]]\ntype = \"gitlab\"\nbase_url = \"https://g.example/api/v4\"\ntoken = { file = [\"SECRETc\"] }\n",
            "SECRETc",
        ),
        (
            "[[allow]]\nurl = \"https://j.example/\"\nmethods = [\"GET\"]\nset_request_headers = { Authorization = 7, X = \"a\\nSECRETd\" }\n",
            "SECRETd",
        ),
        // Credentials in a base URL that does not parse.
        (
            "[[scm]]\ntype = \"gitlab\"\nbase_url = \"https://user:SECRETe@g.example/api/../v4\"\n",
            "SECRETe",
        ),
        (
            "[[scm]]\ntype = \"gitlab\"\nbase_url = \"https://user:SECRETf@g.example/api/v4\"\n",
            "SECRETf",
        ),
        // A proxy URL with a password and an unsupported scheme.
        (
            "[upstream]\nproxy = \"socks5://u:SECRETg@p:1\"\n",
            "SECRETg",
        ),
        // The same for the stream transports' proxy.
        (
            "[wireguard]\nproxy = \"socks5://u:SECRETh@p:1\"\n",
            "SECRETh",
        ),
    ] {
        let errs = errors(&[("a.toml", &base()), ("s.toml", layer)]);
        assert!(!errs.is_empty());
        for e in &errs {
            assert!(!e.contains(secret), "{layer}\nleaks {secret}: {e}");
            assert!(e.starts_with("s.toml: "), "{e}");
        }
    }
}

#[test]
fn upstream_proxy_is_parsed_at_load_http_and_https() {
    for ok in [
        "http://proxy.corp:3128",
        "https://u:p@proxy.corp",
        "proxy.corp:8080",
    ] {
        let layer = format!("[upstream]\nproxy = \"{ok}\"\n");
        assert!(
            load(&[("a.toml", &base()), ("p.toml", &layer)]).is_ok(),
            "{ok}"
        );
    }
    for (bad, why) in [
        ("socks5://u:SECRETp@proxy:1080", "unsupported proxy scheme"),
        ("http://u:SECRETp@proxy:99999", "invalid proxy host or port"),
        ("https://u:SECRETp@proxy/path", "a proxy URL has no path"),
    ] {
        let layer = format!("[upstream]\nproxy = \"{bad}\"\n");
        let errs = errors(&[("a.toml", &base()), ("p.toml", &layer)]);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("p.toml: upstream.proxy: ") && errs[0].contains(why),
            "{bad}: {errs:?}"
        );
        assert!(!errs[0].contains("SECRETp"), "{errs:?}");
    }
}

#[test]
fn every_bad_method_of_a_rule_is_reported() {
    let rules = r#"
[[allow]]
url = "https://dav.example.com/repo/*"
methods = ["PROPFIND", "GE T", "get", "CONNECT", "MKCOL"]
[[allow]]
url = "https://dav.example.com/other"
methods = []
"#;
    let errs = errors(&[("base.toml", &base()), ("rules.toml", rules)]);
    let expect = [
        "rules.toml: allow[0].methods: \"GE T\" is not a method",
        "rules.toml: allow[0].methods: CONNECT can never be allowed",
        "rules.toml: allow[1].methods: the method list is empty",
    ];
    for e in expect {
        assert!(
            errs.iter().any(|x| x.starts_with(e)),
            "missing {e:?} in {errs:#?}"
        );
    }
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    // Extension methods are rule methods like any other; names are upper-cased as before.
    let ok = r#"
[[allow]]
url = "https://dav.example.com/repo/*"
methods = ["PROPFIND", "report", "MKCOL", "GET"]
"#;
    let l = load(&[("base.toml", &base()), ("rules.toml", ok)]).expect("valid");
    assert_eq!(
        l.config.allow[0].methods,
        ["PROPFIND", "REPORT", "MKCOL", "GET"]
    );
}
