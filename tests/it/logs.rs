//! What the broker logs: structured events for each decision, per-rule header and body logging,
//! and never a secret — configured tokens, credential headers and URL userinfo are scrubbed.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use wgbroker::testkit::client::{self, Request, RunOptions};
use wgbroker::testkit::scm::MockScm;

use crate::harness::{Tunnel, spread_args};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything captured so far (every test's events: filter by something of your own).
pub(crate) fn captured() -> String {
    let cap = capture();
    String::from_utf8_lossy(&cap.0.lock().expect("lock")).into_owned()
}

/// Installs (once) a JSON subscriber capturing every event of the process.
fn capture() -> Capture {
    static CAP: OnceLock<Capture> = OnceLock::new();
    CAP.get_or_init(|| {
        let cap = Capture::default();
        let writer = cap.clone();
        let sub = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(sub).expect("first subscriber");
        cap
    })
    .clone()
}

const TOKEN: &str = "glpat-LOGTEST-0123456789abcdef";
const HEADER_SECRET: &str = "Bearer jira-LOGTEST-secret-value";

#[test]
fn decisions_are_logged_and_secrets_never_are() {
    let cap = capture();
    let scm = MockScm::start("unused").expect("mock");
    let a = scm.addr();
    let mut t = Tunnel::start(&format!(
        r#"
[[scm]]
type = "gitlab"
base_url = "http://{a}/api/v4"
token = "{TOKEN}"

[[allow]]
url = "http://{a}/upload"
methods = ["POST"]
set_request_headers = {{ Authorization = "{HEADER_SECRET}" }}
log_request_headers = true
log_response_headers = true
log_request_body = true
log_response_body = true
"#
    ));
    let reqs = vec![
        vec![Request::get(&format!(
            "/proxy/http://{a}/api/v4/projects/42"
        ))],
        vec![
            Request::new(
                "POST",
                &format!("/proxy/http://user:pa55word-LOGTEST@{a}/upload"),
            )
            .header("Authorization", "Bearer vendor-LOGTEST-credential")
            .header("X-Echo", TOKEN)
            .body(format!("payload mentioning {TOKEN} and more").into_bytes()),
        ],
        vec![Request::new(
            "DELETE",
            &format!("/proxy/http://{a}/api/v4/projects/42?private_token={TOKEN}"),
        )],
    ];
    let res = client::run(
        &mut t.gateway,
        reqs,
        RunOptions {
            port: 80,
            timeout: Duration::from_secs(15),
            keep_bodies: true,
        },
    );
    assert_eq!(
        res[0][0].response.as_ref().expect("response").status,
        404,
        "mock has no GitLab routes"
    );
    assert_eq!(res[1][0].response.as_ref().expect("response").status, 200);
    assert_eq!(res[2][0].response.as_ref().expect("response").status, 403);
    // The upstream did get the injected GitLab token.
    assert!(
        scm.seen()
            .iter()
            .any(|s| s.header("private-token") == Some(TOKEN))
    );
    drop(t);

    let text = String::from_utf8_lossy(&cap.0.lock().expect("lock")).into_owned();
    for event in [
        "proxy.request",
        "proxy.response",
        "allowlist.reject",
        "proxy.request_headers",
        "proxy.response_headers",
        "proxy.request_body",
        "proxy.response_body",
    ] {
        assert!(
            text.contains(&format!("\"event\":\"{event}\"")),
            "no {event} in logs"
        );
    }
    assert!(
        text.contains("payload mentioning <redacted> and more"),
        "body logged, secret scrubbed"
    );
    for secret in [
        TOKEN,
        "jira-LOGTEST-secret-value",
        "pa55word-LOGTEST",
        "vendor-LOGTEST-credential",
        "dXNlcjpwYTU1d29yZC1MT0dURVNU",
    ] {
        assert!(!text.contains(secret), "{secret} leaked into the logs");
    }
}

/// A secret that straddles `[log] body_limit` must not leave its prefix in the sample: the body is
/// scrubbed before it is cut, and the logged sample still respects the cap.
#[test]
fn body_samples_are_scrubbed_before_the_cap() {
    const CUT_TOKEN: &str = "glpat-CUTTEST-abcdefghijklmnopqrstuvwxyz";
    const LIMIT: usize = 64;
    let cap = capture();
    let scm = MockScm::start("unused").expect("mock");
    let a = scm.addr();
    let mut t = Tunnel::start(&format!(
        r#"
[log]
body_limit = {LIMIT}

[[scm]]
type = "gitlab"
base_url = "http://{a}/api/v4"
token = "{CUT_TOKEN}"

[[allow]]
url = "http://{a}/upload"
methods = ["POST"]
log_request_body = true
"#
    ));
    // The token starts 20 bytes before the cap and ends well after it.
    let body = format!(
        "{}{CUT_TOKEN} and the rest of a long body",
        "p".repeat(LIMIT - 20)
    );
    let res = client::run(
        &mut t.gateway,
        vec![vec![
            Request::new("POST", &format!("/proxy/http://{a}/upload")).body(body.into_bytes()),
        ]],
        RunOptions {
            port: 80,
            timeout: Duration::from_secs(15),
            keep_bodies: true,
        },
    );
    assert_eq!(res[0][0].response.as_ref().expect("response").status, 200);
    drop(t);

    let text = String::from_utf8_lossy(&cap.0.lock().expect("lock")).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("\"event\":\"proxy.request_body\"") && l.contains("pppp"))
        .expect("the request body sample is logged");
    // Not even the start of the token survives the cut ("glpat-CUT" is 9 bytes of it).
    assert!(!line.contains("glpat-CUT"), "token prefix leaked: {line}");
    let v: serde_json::Value = serde_json::from_str(line).expect("json line");
    let logged = v["fields"]["body"].as_str().expect("body field");
    assert!(logged.len() <= LIMIT, "sample over the cap: {logged:?}");
    assert!(logged.starts_with(&"p".repeat(LIMIT - 20)), "{logged:?}");
}

/// Every event name the broker's source uses: the string literals shaped like `area.name` whose
/// area is one the `event = "area...."` fields use.
fn broker_events() -> std::collections::BTreeSet<String> {
    fn walk(dir: &std::path::Path, out: &mut String) {
        for e in std::fs::read_dir(dir).expect("src dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push_str(&std::fs::read_to_string(&p).expect("source"));
            }
        }
    }
    let mut src = String::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut src,
    );
    let literal = regex::Regex::new(r#""([a-z]+)\.([a-z_]+)""#).expect("regex");
    let areas: std::collections::BTreeSet<&str> = regex::Regex::new(r#"event = "([a-z]+)\."#)
        .expect("regex")
        .captures_iter(&src)
        .filter_map(|c| c.get(1).map(|m| m.as_str()))
        .collect();
    literal
        .captures_iter(&src)
        .filter(|c| c.get(1).is_some_and(|a| areas.contains(a.as_str())))
        .filter_map(|c| c.get(0).map(|m| m.as_str().trim_matches('"').to_owned()))
        .collect()
}

/// While the gateway does not answer, boringtun retries the handshake every 5 s and logs about
/// it on its own (`HANDSHAKE(REKEY_TIMEOUT)`, no `event` field). What reaches the log must be
/// the broker's own event instead, and nothing else.
#[test]
fn an_unreachable_gateway_logs_a_handshake_timeout_event_and_no_foreign_lines() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use wgbroker::keys::PrivateKey;
    use wgbroker::testkit::toml::{PeerToml, WireguardToml};

    let events = broker_events();
    assert!(events.contains("wireguard.handshake"), "{events:?}");
    // Bound and never read: datagrams land here and nobody answers (no ICMP either).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let gateway = silent.local_addr().expect("addr");
    let broker = PrivateKey::generate().expect("rng");
    let vendor = PrivateKey::generate().expect("rng");
    let wireguard = WireguardToml::new(&broker, "10.77.0.2")
        .peer(PeerToml::new(vendor.public_key(), gateway, "10.77.0.1/32").persistent_keepalive(0))
        .render();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("broker.toml");
    std::fs::write(
        &file,
        format!(
            "{wireguard}[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"info\"\nformat = \"json\"\n"
        ),
    )
    .expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wgbroker"))
        .args(["run", "-c"])
        .arg(&file)
        .args(spread_args(&file))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn broker");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let check = |line: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        let event = v["event"]
            .as_str()
            .unwrap_or_else(|| panic!("a line without an event field: {line}"));
        assert!(events.contains(event), "not a broker event: {line}");
        event.to_owned()
    };
    // boringtun's REKEY_TIMEOUT is 5 s (plus up to 333 ms of jitter).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut timeout_line = None;
    while timeout_line.is_none() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if check(&line) == "wireguard.handshake_timeout" {
                    timeout_line = Some(line);
                }
            }
            Err(_) => break,
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    reader.join().expect("reader");
    for line in rx.try_iter() {
        check(&line);
    }
    assert!(status.success(), "{status:?}");
    let line = timeout_line.expect("a wireguard.handshake_timeout event within 15 s");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(v["level"], "WARN", "{line}");
    assert_eq!(v["endpoint"], gateway.to_string(), "{line}");
    assert!(v["attempts"].as_u64().is_some_and(|n| n >= 1), "{line}");
}
